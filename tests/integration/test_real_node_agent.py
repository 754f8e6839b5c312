"""katalyst-agent on the real kubelet node, installed by the agent role: OOM priority on the processes of real pods,
and a real OOM in the kubelet's Burstable tier that kills in priority order, where the kubelet's formula alone kills
the biggest pod first.

The pods: batch (reclaimed_cores, oom_priority -100) holds 8 MiB, web (shared_cores, 50) 16 MiB, and system
(system_cores, 250) 40 MiB and keeps growing, all Burstable with small requests (the kubelet gives each ~999, so
the kernel picks the biggest). The test limits the tier's memory (`<cgroup root>/kubepods/burstable`) to what it uses
plus 96 MiB, so memory runs out from inside the most important pod.
"""

import contextlib
import itertools
import json
import os
import subprocess
import time

import pytest

from sandbox.kube import images, node as kube_node
from tests.integration import realnode
from tests.integration.ansible_runner import run_playbook
from tests.integration.oomlib import KernelLog
from tests.integration.realcluster import wait_for

kubernetes = pytest.importorskip("kubernetes")

pytestmark = realnode.marks
NAMESPACE = "default"
ENHANCEMENT = "katalyst.kubewharf.io/memory_enhancement"
QOS_LEVEL = "katalyst.kubewharf.io/qos_level"
PRIORITY = {"reclaimed_cores": -100, "shared_cores": 0, "dedicated_cores": 100, "system_cores": 200}
OOM_HOOK_PLAY = """
- hosts: localhost
  gather_facts: false
  roles:
    - role: katalyst.colocation.oom_hook
"""
TIER = "/sys/fs/cgroup/memory%s/kubepods/burstable" % kube_node.CGROUP_ROOT


def pod(name, qos_level, oom_priority, command, memory_request="4Mi"):
    annotations = {QOS_LEVEL: qos_level}
    if oom_priority is not None:
        annotations[ENHANCEMENT] = '{"oom_priority": "%d"}' % oom_priority
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"test": "oom"},
                                                            "annotations": annotations},
            "spec": {"nodeName": realnode.NODE_NAME, "terminationGracePeriodSeconds": 0, "restartPolicy": "Never",
                     "containers": [{"name": "main", "image": images.WORKLOAD_IMAGE, "imagePullPolicy": "Never",
                                     "command": ["sh", "-c", command],
                                     "resources": {"requests": {"cpu": "10m", "memory": memory_request}}}]}}


@pytest.fixture(name="api")
def api_fixture(real_node):
    core = kubernetes.client.CoreV1Api(kubernetes.config.new_client_from_config(real_node.kubeconfig))
    yield core
    core.delete_collection_namespaced_pod(NAMESPACE, label_selector="test=oom", grace_period_seconds=0)
    wait_for("the test's pods gone", lambda: not core.list_namespaced_pod(NAMESPACE, label_selector="test=oom").items)


@pytest.fixture(name="agent")
def agent_fixture(real_node, tmp_path):
    workdir = tmp_path / "agent"
    rc, _tasks, output = realnode.install_agent(real_node, workdir)
    assert rc == 0, output[-3000:]
    yield workdir
    realnode.stop_agent(real_node, workdir)


def running(api, name):
    found = api.read_namespaced_pod(name, NAMESPACE)
    return found if found.status.phase == "Running" else None


def effective_priorities(pods):
    """What each pod's priority is after AlignOOMPriority (the QoS level's range)."""
    ranges = {"reclaimed_cores": (-100, 0), "shared_cores": (0, 100), "dedicated_cores": (100, 200), "system_cores": (200, 300)}
    result = {}
    for name, level, wanted in pods:
        low, high = ranges[level]
        result[name] = PRIORITY[level] if wanted is None else min(max(wanted, low), high - 1)
    return result


def ordered(adjs, priorities):
    """Whether oom_score_adj follows priority strictly: a pod of lower priority has a higher oom_score_adj."""
    return all(adjs[a] > adjs[b] for a, b in itertools.permutations(adjs, 2) if priorities[a] < priorities[b])


def test_real_pods_get_oom_score_adj_in_priority_order(real_node, api, agent):  # pylint: disable=unused-argument
    pods = [("batch-a", "reclaimed_cores", -100), ("batch-b", "reclaimed_cores", -50), ("web", "shared_cores", 50),
            ("db", "dedicated_cores", None), ("system", "system_cores", 250)]
    priorities = effective_priorities(pods)
    latencies, uids, adjs = [], {}, {}
    for name, level, wanted in pods:
        api.create_namespaced_pod(NAMESPACE, pod(name, level, wanted, "exec katalyst-workload sleep"))
        uids[name] = wait_for("pod %s Running" % name, lambda n=name: running(api, n), timeout=180, interval=0.05).metadata.uid
        seen_running = time.monotonic()

        def in_order():
            found = {}
            for other, uid in uids.items():
                values = {realnode.oom_score_adj(pid) for pid in realnode.pod_pids(uid)}
                if len(values) != 1:
                    return False        # not started yet, or only part of the pod adjusted
                found[other] = values.pop()
            return found if ordered(found, priorities) else False
        adjs = wait_for("oom_score_adj ordered with %s running" % name, in_order, timeout=60, interval=0.02)
        latencies.append(time.monotonic() - seen_running)
    print("pod Running -> oom_score_adj ordered: %s s; final %s" % (", ".join("%.2f" % v for v in latencies), adjs))


def kill_order(log, pids_by_pod, count, timeout=180):
    """The first `count` pods whose processes the kernel OOM-killed, in kill order (fewer after `timeout`)."""
    deadline = time.monotonic() + timeout
    order = []
    owner = {pid: name for name, pids in pids_by_pod.items() for pid in pids}
    while time.monotonic() < deadline and len(order) < count:
        for pid in log.killed_pids():
            if pid in owner and owner[pid] not in order:
                order.append(owner[pid])
        time.sleep(0.05)
    return order


def oom_hook(tmp_path, bpffs, state):
    """The oom_hook role on this host's kernel (bpffs and pins under tmp_path): the observer that records OOM kills."""
    extra = {"oom_hook_state": state, "oom_hook_build_on": "node", "oom_hook_install_packages": False, "oom_hook_bpffs": str(bpffs),
             "oom_hook_pin_dir": str(bpffs / "katalyst"), "oom_hook_source_dir": str(tmp_path / "src"), "oom_hook_build_dir": str(tmp_path / "build")}
    code, _tasks, output = run_playbook(OOM_HOOK_PLAY, tmp_path, extra_vars=extra)
    assert code == 0, output[-3000:]


def agent_kills(workdir):
    """The oom_observer's kill explanations in the agent's JSON log (the sandbox service's log file)."""
    path = os.path.join(str(workdir), "services", "services", "katalyst-agent-%s.log" % realnode.NODE_NAME)
    kills = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if record.get("loop") == "oom_observer" and record.get("msg", "").startswith("OOM kill"):
                    kills.append(record)
    return kills


def run_oom_episode(api, tag):
    """Start the three pods, cap the tier, and return the kill order from the kernel log."""
    # system grows ~20 MiB/s until the tier's limit (set once all run) stops it
    pods = [("batch", "reclaimed_cores", -100, "--mib 8"), ("web", "shared_cores", 50, "--mib 16"),
            ("system", "system_cores", 250, "--mib 1024 --step-mib 1 --interval 50ms")]
    for name, level, wanted, grow in pods:
        api.create_namespaced_pod(NAMESPACE, pod("%s-%s" % (tag, name), level, wanted, "exec katalyst-workload grow-memory %s --hold" % grow))
    uids = {}
    for name, *_rest in pods:
        found = wait_for("pod %s-%s Running" % (tag, name), lambda n=name: running(api, "%s-%s" % (tag, n)), timeout=180)
        uids[name] = found.metadata.uid
    pids = {name: wait_for("%s's processes" % name, lambda u=uid: realnode.pod_pids(u)) for name, uid in uids.items()}
    return uids, pids


def test_a_real_oom_in_the_tier_kills_by_priority_with_the_agent_and_by_size_without(real_node, api, tmp_path):
    """Without the agent the kubelet's values stand (all ~999): the kernel kills the biggest, `system`, first. With
    the agent the kernel kills batch, then web, and system survives; the agent explains each kill from what the BPF
    observer (the oom_hook role) recorded."""
    with open(os.path.join(TIER, "memory.limit_in_bytes"), encoding="utf-8") as handle:
        old_limit = handle.read().strip()
    orders = {}
    try:
        for tag, with_agent in (("plain", False), ("agent", True)):
            workdir = tmp_path / tag
            if with_agent:      # with the oom_hook role's BPF observer, as site.yml installs both
                bpffs = tmp_path / "bpffs"
                bpffs.mkdir()
                oom_hook(tmp_path, bpffs, "present")
                rc, _tasks, output = realnode.install_agent(real_node, workdir, agent_oom_bpf_pin_dir=str(bpffs / "katalyst"))
                assert rc == 0, output[-3000:]
            try:
                uids, pids = run_oom_episode(api, tag)
                if with_agent:   # the agent has ordered them before memory runs out
                    wait_for("the agent's order", lambda: realnode.oom_score_adj(pids["batch"][-1]) > realnode.oom_score_adj(pids["web"][-1])
                             > realnode.oom_score_adj(pids["system"][-1]), timeout=60, interval=0.05)
                with open(os.path.join(TIER, "memory.usage_in_bytes"), encoding="utf-8") as handle:
                    usage = int(handle.read())
                log = KernelLog()
                try:
                    with open(os.path.join(TIER, "memory.limit_in_bytes"), "w", encoding="utf-8") as handle:
                        handle.write(str(usage + (96 << 20)))
                    orders[tag] = kill_order(log, pids, 2 if with_agent else 1)
                finally:
                    log.close()
                    with open(os.path.join(TIER, "memory.limit_in_bytes"), "w", encoding="utf-8") as handle:
                        handle.write(old_limit)
                if with_agent:  # the agent explains every kill the observer recorded, naming the pod
                    def explained():
                        kills = agent_kills(workdir)
                        return kills if {"%s/%s-%s" % (NAMESPACE, tag, name) for name in orders[tag]} <= {k["pod"] for k in kills} else None
                    kills = wait_for("the agent's explanation of each kill, naming its pod", explained, timeout=60)
                    print("the agent on the kills:\n  " + "\n  ".join(k["msg"] for k in kills))
                    batch_kill = [k for k in kills if k["pod"] == "%s/%s-batch" % (NAMESPACE, tag)][0]
                    assert batch_kill["inversion"] is False and batch_kill["priority"] == -100
                    # batch's container died first: its pause process left in the pod cgroup is not a pod to kill first
                    web_kill = [k for k in kills if k["pod"] == "%s/%s-web" % (NAMESPACE, tag)][0]
                    assert web_kill["inversion"] is False, kills
                print("%s: kill order %s; oom_score_adj %s" % (tag, orders[tag], {
                    n: [realnode.oom_score_adj(p) for p in ps if os.path.exists("/proc/%d" % p)] for n, ps in pids.items()}))
                del uids
            finally:
                if with_agent:
                    realnode.stop_agent(real_node, workdir)
                    oom_hook(tmp_path, bpffs, "absent")
                    subprocess.run(["umount", "-l", str(bpffs)], check=False)
                api.delete_collection_namespaced_pod(NAMESPACE, label_selector="test=oom", grace_period_seconds=0)
                wait_for("the episode's pods gone", lambda: not api.list_namespaced_pod(NAMESPACE, label_selector="test=oom").items)
    finally:
        with open(os.path.join(TIER, "memory.limit_in_bytes"), "w", encoding="utf-8") as handle:
            handle.write(old_limit)
    assert orders["plain"][:1] == ["system"], "the kubelet's formula kills the biggest first: %s" % orders["plain"]
    # In a tier OOM the kernel's bonus is oom_score_adj x the TIER's pages / 1000: the agent plans for the smallest
    # domain its pods share (here the tier), so web (16 MiB) still goes before system (~170 MiB by then).
    assert orders["agent"] == ["batch", "web"], "with the agent: reclaimed, then shared, the protected pod last: %s" % orders["agent"]
