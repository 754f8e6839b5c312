"""End to end: pods in the emulator, their processes in real memory cgroups, katalyst-agent running.

The agent reads the pods' annotations, finds their cgroups (kubelet layout under --cgroup-root),
writes oom_score_adj, and the kernel's OOM kills then follow OOM priority; a bad annotation becomes
a Warning Event on the pod. The real BPF OOM observer (compiled here with clang, loaded through
libbpf into a private bpffs) records each kill; the agent keeps the priority map in sync, explains
each kill in its log and counts kills and priority inversions in its metrics.
"""

import os
import re
import subprocess
import sys
import urllib.request

import pytest
from kubernetes import client

from ansible_collections.katalyst.colocation.plugins.module_utils import bpf, oom, qos
from tests.integration import oomlib
from tests.integration.waiting import wait_until
from tests.integration.ansible_runner import REPO

pytestmark = pytest.mark.skipif(oomlib.usable() is not None, reason=str(oomlib.usable()))
NODE = "oom-node"
MEM = "katalyst.kubewharf.io/memory_enhancement"
QOS = "katalyst.kubewharf.io/qos_level"
# batch (reclaimed) 8 MiB, web (shared, 50) 16 MiB, system (system_cores; 250 as a number is invalid
# -> the QoS default) 40 MiB and growing: the kubelet's formula would kill system first.
SPECS = [("batch", {QOS: "reclaimed_cores"}, 8, 0), ("web", {MEM: '{"oom_priority": "50"}'}, 16, 0),
         ("system", {QOS: "system_cores", MEM: '{"oom_priority": 250}'}, 40, 300)]


@pytest.fixture
def pin_dir(tmp_path):
    """The observer loaded into a private bpffs (links and maps pinned there; unmounting detaches)."""
    observer = oomlib.Observer(str(tmp_path), str(tmp_path / "bpf-build"))
    assert "on_mark_victim" in observer.programs
    yield observer.pins
    observer.close()


def pod_body(name, annotations):
    return {"metadata": {"name": name, "annotations": annotations},
            "spec": {"nodeName": NODE, "containers": [{"name": "main", "image": "x", "resources": {"requests": {"memory": "8Mi"}}}]}}


def metric(text, name, labels=""):
    found = re.search(r"^%s%s (\S+)$" % (re.escape(name), re.escape(labels)), text, re.M)
    return float(found.group(1)) if found else 0.0


def run_scenario(kubeapi, kube_client, tmp_path, pins, oom_score_adj_enabled=True):
    """Create the pods, start their processes and the agent, let system grow; returns what happened."""
    core = client.CoreV1Api(kube_client)
    core.create_node({"metadata": {"name": NODE}})
    domain = oomlib.Domain("katalyst-agent-oom-%d-%d" % (os.getpid(), int(oom_score_adj_enabled)), 128 << 20)
    log = oomlib.KernelLog()
    agent = None
    agent_log_path = tmp_path / "agent.log"
    try:
        processes, cgroup_ids = {}, {}
        for name, annotations, size, grow in SPECS:
            pod = core.create_namespaced_pod("default", pod_body(name, annotations))
            core.patch_namespaced_pod_status(name, "default", {"status": {"phase": "Running", "qosClass": "Burstable"}})
            processes[name] = domain.start("kubepods/burstable/pod%s" % pod.metadata.uid, size, grow)
            cgroup_ids[name] = os.stat(os.path.join(domain.path, processes[name].pod)).st_ino
            if not oom_score_adj_enabled:   # what the kubelet writes for these Burstable pods on a large node
                with open("/proc/%d/oom_score_adj" % processes[name].pid, "w") as handle:
                    handle.write(str(oom.kubelet_oom_score_adj("Burstable", size << 20, 64 << 30)))
        config = tmp_path / "agent.yaml"
        config.write_text('{"node_name": "%s", "kubeconfig": "%s", "port": 0, "cgroup_root": "%s", "qos_cgroups_enabled": false,'
                          ' "oom_priority_period_seconds": 0.005, "oom_observer_period_seconds": 0.2, "oom_bpf_pin_dir": "%s",'
                          ' "oom_score_adj_enabled": %s}'
                          % (NODE, kubeapi.kubeconfig, domain.path[len(oomlib.MEMORY_ROOT):], pins, str(oom_score_adj_enabled).lower()))
        agent_log = open(agent_log_path, "w+")
        agent = subprocess.Popen([sys.executable, "-m", "ansible_collections.katalyst.colocation.plugins.module_utils.daemons.agent",
                                  "--config", str(config)], stdout=agent_log, stderr=subprocess.STDOUT,
                                 env=dict(os.environ, PYTHONPATH="%s/.build/collections" % REPO))

        def adj(name):
            return oomlib.oom_score_adj(processes[name].pid)

        # the agent is ready when the priority map holds every pod (and, with the plan, the order is in place)
        expected_map = {cgroup_ids[name]: qos.pod_oom_priority(annotations)[0] for name, annotations, _s, _g in SPECS}
        with bpf.PinnedMap(os.path.join(pins, bpf.PRIORITY_MAP)) as priority_map:
            def ready():
                ordered = not oom_score_adj_enabled or adj("batch") > adj("web") > adj("system")
                return ordered and priority_map.items() == expected_map
            # a loaded machine can take tens of seconds to start the agent and load the observer
            wait_until(ready, timeout=120, what="the agent's priority map and order (log: %s)" % agent_log_path)
        processes["system"].stdin.write("grow\n")
        processes["system"].stdin.flush()
        processes["system"].wait(60)
        for process in processes.values():
            try:
                process.wait(2)
            except subprocess.TimeoutExpired:
                process.kill()          # not OOM-killed: it outlived the memory pressure
        by_pid = {p.pid: name for name, p in processes.items()}
        order = [by_pid[pid] for pid in log.killed_pids() if pid in by_pid]
        port = int(re.search(r"on 127\.0\.0\.1:(\d+)", open(agent_log_path).read()).group(1))
        scraped = {}

        def counted_every_kill():
            scraped["metrics"] = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10).read().decode()
            return sum(metric(scraped["metrics"], "katalyst_oom_kills_total", '{qos_level="%s"}' % level)
                       for level in ("reclaimed_cores", "shared_cores", "system_cores")) >= len(order)
        wait_until(counted_every_kill, timeout=120, interval=0.2, what="the observer to count %d kills" % len(order))
        metrics = scraped["metrics"]
        events = core.list_namespaced_event("default", field_selector="involvedObject.name=system").items
        return {"order": order, "metrics": metrics, "events": events, "by_pid": by_pid}
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(15)
        log.close()
        domain.close()


def test_agent_orders_real_oom_kills_and_the_observer_explains_them(kubeapi, kube_client, tmp_path, pin_dir):
    result = run_scenario(kubeapi, kube_client, tmp_path, pin_dir)
    assert result["order"] == ["batch", "web", "system"]
    metrics = result["metrics"]
    for level in ("reclaimed_cores", "shared_cores", "system_cores"):
        assert metric(metrics, "katalyst_oom_kills_total", '{qos_level="%s"}' % level) == 1, metrics
    assert metric(metrics, "katalyst_oom_priority_inversions_total") == 0
    agent_log = open(tmp_path / "agent.log").read()
    for name, priority in (("batch", -100), ("web", 50), ("system", 200)):
        assert re.search(r"OOM kill of pid \d+ .*pod default/%s \(\w+, priority %d\).*no lower-priority pod was alive" % (name, priority),
                         agent_log), agent_log[-3000:]
    # oom_priority 250 was written as a number, not a string: reported on the pod, QoS default used
    assert [e.reason for e in result["events"]] == ["InvalidOOMPriority"] and "must be a string" in result["events"][0].message
    assert re.search(r"stopped", agent_log)


def test_observer_counts_the_inversions_of_the_kubelet_formula(kubeapi, kube_client, tmp_path, pin_dir):
    result = run_scenario(kubeapi, kube_client, tmp_path, pin_dir, oom_score_adj_enabled=False)
    assert result["order"] and result["order"][0] == "system"
    assert metric(result["metrics"], "katalyst_oom_priority_inversions_total") >= 1, result["metrics"]
    assert "PRIORITY INVERSION, lower-priority pods were alive: default/batch, default/web" in open(tmp_path / "agent.log").read()
