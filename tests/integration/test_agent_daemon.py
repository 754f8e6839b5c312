"""katalyst-agent as a real process: keeps QoS cgroups converged, sets TCP memory from pod specs,
serves /healthz and /metrics, reloads on SIGHUP, stops cleanly on SIGTERM."""

import json
import os
import re
import signal
import subprocess
import sys

import pytest
from kubernetes import client

from sandbox.sysroot import build_sysroot
from tests.integration.ansible_runner import REPO
from tests.integration.waiting import wait_until
from tests.unit.plugins.module_utils.test_service import http_get

NODE = "agent-node"


def write_config(path, sysroot, kubeconfig, **extra):
    config = {"node_name": NODE, "kubeconfig": kubeconfig, "sysroot": sysroot, "port": 0, "qos_cgroups_period_seconds": 1,
              "tcp_memory_enabled": True, "tcp_memory_period_seconds": 1, "resync_seconds": 5}
    config.update(extra)
    path.write_text(json.dumps(config))


@pytest.fixture
def agent(kubeapi, tmp_path):
    sysroot = build_sysroot(str(tmp_path / "sysroot"), cgroup="v1")
    config = tmp_path / "agent.yaml"
    write_config(config, sysroot, kubeapi.kubeconfig)
    log = open(tmp_path / "agent.log", "w+")
    env = dict(os.environ, PYTHONPATH="%s/.build/collections" % REPO)
    process = subprocess.Popen([sys.executable, "-m", "ansible_collections.katalyst.colocation.plugins.module_utils.daemons.agent",
                                "--config", str(config)], stdout=log, stderr=subprocess.STDOUT, env=env)
    port = {}

    def started():
        log.seek(0)
        match = re.search(r"on 127\.0\.0\.1:(\d+)", log.read())
        if match:
            port["value"] = int(match.group(1))
        return bool(match)

    wait_until(started, timeout=180, what="the agent to start")
    yield {"process": process, "sysroot": sysroot, "config": config, "port": port["value"], "log": log}
    if process.poll() is None:
        process.terminate()
        process.wait(10)
    log.close()


def read(sysroot, path):
    with open(sysroot + path) as handle:
        return handle.read().strip()


def test_agent_keeps_cgroups_converged_and_reports(agent):
    sysroot = agent["sysroot"]
    shares = "/sys/fs/cgroup/cpu/kubepods/besteffort/cpu.shares"
    wait_until(lambda: os.path.exists(sysroot + "/sys/fs/cgroup/cpuset/kubepods/besteffort-3/cpuset.mems")
               and read(sysroot, shares) == "2", what="the QoS cgroups")
    with open(sysroot + shares, "w") as handle:   # someone changes it behind our back
        handle.write("1024")
    wait_until(lambda: read(sysroot, shares) == "2", what="the drift to be corrected")
    status, body = http_get(agent["port"], "/healthz")
    assert status == 200 and json.loads(body)["ok"]
    status, body = http_get(agent["port"], "/metrics")
    assert 'katalyst_agent_writes_total{loop="qos_cgroups"}' in body


def test_tcp_memory_from_each_containers_own_limit(agent, kube_client):
    core = client.CoreV1Api(kube_client)
    core.create_node({"metadata": {"name": NODE}})
    pod = core.create_namespaced_pod("default", {"metadata": {"name": "web"}, "spec": {"nodeName": NODE, "containers": [
        {"name": "a", "image": "x", "resources": {"limits": {"memory": "3Gi", "cpu": "1"}, "requests": {"memory": "1Gi"}}},
        {"name": "b", "image": "x", "resources": {"limits": {"memory": "5Gi"}}}]}})
    uid = pod.metadata.uid
    for name in ("aaa", "bbb"):
        os.makedirs(agent["sysroot"] + "/sys/fs/cgroup/memory/kubepods/burstable/pod%s/%s" % (uid, name))
    core.patch_namespaced_pod_status("web", "default", {"status": {"phase": "Running", "qosClass": "Burstable", "containerStatuses": [
        {"name": "a", "containerID": "containerd://aaa", "ready": True, "restartCount": 0, "image": "x", "imageID": ""},
        {"name": "b", "containerID": "containerd://bbb", "ready": True, "restartCount": 0, "image": "x", "imageID": ""}]}})
    base = agent["sysroot"] + "/sys/fs/cgroup/memory/kubepods/burstable/pod%s/" % uid
    # a sysroot file exists from its creation on: wait for both contents, not for the name (a loaded machine saw "")
    wait_until(lambda: all(os.path.exists(base + c + "/memory.kmem.tcp.limit_in_bytes") and read("", base + c + "/memory.kmem.tcp.limit_in_bytes")
                           for c in ("aaa", "bbb")), what="TCP limits")
    assert read("", base + "aaa/memory.kmem.tcp.limit_in_bytes") == str(3 << 30)     # its own 3Gi, not the pod's 8Gi
    assert read("", base + "bbb/memory.kmem.tcp.limit_in_bytes") == str(5 << 30)


def test_sighup_reload_and_graceful_stop(agent):
    write_config(agent["config"], agent["sysroot"], "unused", node_name="renamed")
    agent["process"].send_signal(signal.SIGHUP)
    wait_until(lambda: "node_name cannot change on reload" in open(agent["log"].name).read(), what="the refused reload")
    assert agent["process"].poll() is None                          # a bad reload keeps the agent running
    write_config(agent["config"], agent["sysroot"], "unused", log_level="debug")
    agent["process"].send_signal(signal.SIGHUP)
    wait_until(lambda: "configuration reloaded" in open(agent["log"].name).read(), what="the reload")
    agent["process"].send_signal(signal.SIGTERM)
    assert agent["process"].wait(15) == 0
    assert "katalyst-agent stopped" in open(agent["log"].name).read()
