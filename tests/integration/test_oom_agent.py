"""End to end: pods in the emulator, their processes in real memory cgroups, katalyst-agent running.

The agent reads the pods' annotations, finds their cgroups (kubelet layout under --cgroup-root),
writes oom_score_adj, and the kernel's OOM kills then follow OOM priority; a bad annotation becomes
a Warning Event on the pod.
"""

import os
import re
import subprocess
import sys
import time

import pytest
from kubernetes import client

from tests.integration import oomlib
from tests.integration.ansible_runner import REPO

pytestmark = pytest.mark.skipif(oomlib.usable() is not None, reason=str(oomlib.usable()))
NODE = "oom-node"
MEM = "katalyst.kubewharf.io/memory_enhancement"
QOS = "katalyst.kubewharf.io/qos_level"


def pod_body(name, annotations):
    return {"metadata": {"name": name, "annotations": annotations},
            "spec": {"nodeName": NODE, "containers": [{"name": "main", "image": "x", "resources": {"requests": {"memory": "8Mi"}}}]}}


def test_agent_orders_real_oom_kills(kubeapi, kube_client, tmp_path):
    core = client.CoreV1Api(kube_client)
    core.create_node({"metadata": {"name": NODE}})
    domain = oomlib.Domain("katalyst-agent-oom-%d" % os.getpid(), 128 << 20)
    log = oomlib.KernelLog()
    agent = None
    try:
        specs = [("batch", {QOS: "reclaimed_cores"}, 8, 0), ("web", {MEM: '{"oom_priority": "50"}'}, 16, 0),
                 ("system", {QOS: "system_cores", MEM: '{"oom_priority": 250}'}, 40, 300)]
        processes = {}
        for name, annotations, size, grow in specs:
            pod = core.create_namespaced_pod("default", pod_body(name, annotations))
            core.patch_namespaced_pod_status(name, "default", {"status": {"phase": "Running", "qosClass": "Burstable"}})
            processes[name] = domain.start("kubepods/burstable/pod%s" % pod.metadata.uid, size, grow)
        cgroup_root = domain.path[len(oomlib.MEMORY_ROOT):]
        config = tmp_path / "agent.yaml"
        config.write_text('{"node_name": "%s", "kubeconfig": "%s", "port": 0, "cgroup_root": "%s", "qos_cgroups_enabled": false,'
                          ' "oom_priority_period_seconds": 0.005}' % (NODE, kubeapi.kubeconfig, cgroup_root))
        agent_log = open(tmp_path / "agent.log", "w+")
        agent = subprocess.Popen([sys.executable, "-m", "ansible_collections.katalyst.colocation.plugins.module_utils.daemons.agent",
                                  "--config", str(config)], stdout=agent_log, stderr=subprocess.STDOUT,
                                 env=dict(os.environ, PYTHONPATH="%s/.build/collections" % REPO))

        def adj(name):
            with open("/proc/%d/oom_score_adj" % processes[name].pid) as handle:
                return int(handle.read())

        deadline = time.time() + 20
        while time.time() < deadline and not adj("batch") > adj("web") > adj("system"):
            time.sleep(0.05)
        assert adj("batch") > adj("web") > adj("system"), open(agent_log.name).read()[-2000:]
        processes["system"].stdin.write("grow\n")
        processes["system"].stdin.flush()
        processes["system"].wait(60)
        by_pid = {p.pid: name for name, p in processes.items()}
        order = [by_pid[pid] for pid in log.killed_pids() if pid in by_pid]
        assert order == ["batch", "web", "system"]
        # oom_priority 250 was written as a number, not a string: reported on the pod, QoS default used
        events = core.list_namespaced_event("default", field_selector="involvedObject.name=system").items
        assert [e.reason for e in events] == ["InvalidOOMPriority"] and "must be a string" in events[0].message
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(15)
        log.close()
        domain.close()
        assert re.search(r"stopped", open(tmp_path / "agent.log").read()) if agent is not None else True
