"""The agent's eviction loop under memory pressure (daemons/agent_eviction.py, node spec §5.4): the NUMA, system memory and
reclaimed-resource plugins in the same pass as the rootfs one, each behind its own switch.

The agent runs in-process against both backends with a sandbox sysroot (cgroup v1, 4 NUMA nodes of 16 GiB): the test
writes the kernel's files (a NUMA node's ``meminfo`` and ``/proc/zoneinfo``, ``/proc/meminfo``) and the pods' container
cgroups with their ``memory.numa_stat``, and the CNR with its reclaimed allocatable.

* NUMA: node 1's Normal zone below its low watermark: after T_rec passes the reclaimed pod using most memory on NUMA 1
  is evicted (Eviction API, an Event naming numa-memory-pressure-eviction-plugin), not the shared pod though it uses more,
  nor the reclaimed pod on NUMA 0 only; with the pressure gone a while the counter is back under T_non, and the shared
  pod is evicted only once the pressure lasted T_non passes (action eviction). system_cores pods never.
* System: MemFree below MemTotal x watermark_scale_factor / 10000: the taint
  ``node.katalyst.kubewharf.io/MemoryPressure:NoSchedule`` (and a MemoryPressure Event; the status condition of that
  name is the kubelet's and is not written), the reclaimed pod evicted, the shared one not; the pressure gone, the taint
  goes after the transition period.
* Reclaimed resources: the reclaimed pods' reclaimed_millicpu requests over 5x the CNR's allocatable: the reclaimed pod
  with the largest request is evicted, and then the sum fits.
"""

import os

import pytest
from kubernetes import client

from sandbox.sysroot import build_sysroot
from tests.integration import oomlib
from tests.integration.backends import install_crds
from tests.integration.ansible_runner import run_playbook
from tests.integration.test_agent_eviction import NODE, events, evicted, eviction_passes, plan_playbook, start_agent, stop_agent, taint_keys
from tests.integration.waiting import wait_until

QOS = "katalyst.kubewharf.io/qos_level"
GI = 1 << 30
PAGE = 4096
NUMA_PAGES = 16 * GI // PAGE
MEMORY_TAINT = "node.katalyst.kubewharf.io/MemoryPressure"
NUMA_PLUGIN = "numa-memory-pressure-eviction-plugin"
SYSTEM_PLUGIN = "system-memory-pressure-eviction-plugin"
RECLAIMED_PLUGIN = "reclaimed-resource-pressure-eviction-plugin"
RECLAIMED_CPU = "resource.katalyst.kubewharf.io/reclaimed_millicpu"
CNR = ("node.katalyst.kubewharf.io", "v1alpha1", "customnoderesources")
T_NON = 40          # passes below low before any pod may go (Katalyst's 12; more here, so that the test's phases are not a race)

pytestmark = pytest.mark.slow


def write(sysroot, path, text):
    with open(sysroot + path, "w") as handle:
        handle.write(text)


def zoneinfo(free_pages):
    """Every node's Normal zone: min 10000, low 12000 pages, little inactive file (so the agent's low is 4 GiB of pages and
    its min 1 GiB + 10000 pages); node ``n`` has ``free_pages[n]`` free."""
    return "".join("Node %d, zone   Normal\n  pages free     %d\n        min      10000\n        low      12000\n"
                   "        high     14000\n      nr_zone_inactive_file 1000\n" % (numa, free) for numa, free in enumerate(free_pages))


# node 1 under its low watermark (4 GiB of pages) but above min, and not deep enough to count twice a pass
UNDER_LOW = [3000000, 800000, 3000000, 3000000]
NO_PRESSURE = [3000000] * 4


def add_pod(core, sysroot, name, annotations, numa_bytes, requests=None):
    """A Running pod with one container whose v1 memory cgroup reports ``numa_bytes`` ({numa: bytes}) in memory.numa_stat."""
    resources = {"requests": requests, "limits": requests} if requests else {}
    pod = core.create_namespaced_pod("default", {"metadata": {"name": name, "annotations": annotations},
                                                 "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "x", "resources": resources}]}})
    uid = pod.metadata.uid
    cid = "c" + uid.replace("-", "")[:12]
    directory = "%s/sys/fs/cgroup/memory/kubepods/besteffort/pod%s/%s" % (sysroot, uid, cid)
    os.makedirs(directory, exist_ok=True)
    pages = [numa_bytes.get(numa, 0) // PAGE for numa in range(4)]
    write(sysroot, directory[len(sysroot):] + "/memory.numa_stat", "total=%d %s\nhierarchical_total=%d %s\n" % (
        sum(pages), " ".join("N%d=%d" % item for item in enumerate(pages)), sum(pages), " ".join("N%d=%d" % item for item in enumerate(pages))))
    write(sysroot, directory[len(sysroot):] + "/memory.usage_in_bytes", "%d\n" % sum(numa_bytes.values()))
    core.patch_namespaced_pod_status(name, "default", {"status": {"phase": "Running", "qosClass": "BestEffort", "containerStatuses": [
        {"name": "c", "containerID": "containerd://" + cid, "ready": True, "restartCount": 0, "image": "x", "imageID": ""}]}})
    return uid


@pytest.fixture
def node(kube_client, tmp_path):
    """The node (no taints) and its sysroot; returns (core API, sysroot)."""
    core = client.CoreV1Api(kube_client)
    core.create_node({"metadata": {"name": NODE}})
    return core, build_sysroot(str(tmp_path / "sysroot"), cgroup="v1")


def memory_agent(kubeapi, sysroot, tmp_path, **settings):
    """The agent with only the memory plugins asked for (no rootfs threshold), fast passes."""
    return start_agent(kubeapi, sysroot, tmp_path, **dict({
        "eviction_rootfs_minimum_free": "", "eviction_rootfs_reclaimed_pod_used_priority": "", "eviction_period_seconds": 0.2,
        "eviction_max_per_period": 10, "eviction_pod_cooldown_seconds": 1, "cgroup_driver": "cgroupfs"}, **settings))


def evicted_by(core, name, plugin):
    found = [event for event in events(core, "Evicted", "Pod", name) if plugin in event.message]
    return found[0].message if found else None


def sample(agent, name, labels):
    return agent.daemon.registry.get_sample_value(name, labels) or 0


def wait_passes(agent, passes=5):
    start = eviction_passes(agent)
    wait_until(lambda: eviction_passes(agent) >= start + passes, timeout=60, what="%d more eviction passes" % passes)


def test_numa_pressure_evicts_reclaimed_after_t_rec_and_shared_only_at_t_non(kubeapi, kube_client, node, tmp_path):
    core, sysroot = node
    write(sysroot, "/proc/zoneinfo", zoneinfo(UNDER_LOW))
    add_pod(core, sysroot, "batch", {QOS: "reclaimed_cores"}, {1: 2 * GI})
    add_pod(core, sysroot, "batch-a-small", {QOS: "reclaimed_cores"}, {1: 1 * GI})
    add_pod(core, sysroot, "batch-numa0", {QOS: "reclaimed_cores"}, {0: 6 * GI})
    add_pod(core, sysroot, "web", {}, {1: 4 * GI})
    add_pod(core, sysroot, "system", {QOS: "system_cores"}, {1: 8 * GI})
    agent = memory_agent(kubeapi, sysroot, tmp_path, eviction_numa_memory_enabled=True, eviction_numa_free_below_watermark_times_threshold=T_NON)
    try:
        wait_until(lambda: evicted(core, "batch") and evicted_by(core, "batch", NUMA_PLUGIN), timeout=60,
                   what="the reclaimed pod using most on NUMA 1 evicted, with its Event")
        message = evicted_by(core, "batch", NUMA_PLUGIN)
        assert "NUMA 1 memory pressure, action reclaimed_eviction" in message and "free/min/low pages=800000/" in message, message
        assert sample(agent, "katalyst_agent_eviction_threshold_met", {"plugin": NUMA_PLUGIN, "threshold": "numa1"}) == 1
        assert sample(agent, "katalyst_agent_eviction_threshold_met", {"plugin": NUMA_PLUGIN, "threshold": "numa0"}) == 0
        # one pod a pass per NUMA node: the other reclaimed pod on NUMA 1 next
        wait_until(lambda: evicted(core, "batch-a-small"), timeout=60, what="the second reclaimed pod on NUMA 1 evicted")
        # the pressure goes: the counter cools down under T_rec; nobody else goes
        write(sysroot, "/proc/zoneinfo", zoneinfo(NO_PRESSURE))
        wait_until(lambda: sample(agent, "katalyst_agent_eviction_threshold_met", {"plugin": NUMA_PLUGIN, "threshold": "numa1"}) == 0,
                   what="the NUMA 1 threshold no longer met")
        wait_passes(agent)
        for name in ("web", "batch-numa0", "system"):
            assert not evicted(core, name), "%s was evicted" % name
        # the pressure again, lasting: only at T_non the shared pod (the only candidate left on NUMA 1 but system_cores) goes
        write(sysroot, "/proc/zoneinfo", zoneinfo(UNDER_LOW))
        wait_until(lambda: evicted(core, "web") and evicted_by(core, "web", NUMA_PLUGIN), timeout=90, what="the shared pod evicted")
        assert "action eviction" in evicted_by(core, "web", NUMA_PLUGIN)
        assert not evicted(core, "batch-numa0") and not evicted(core, "system")
        assert sample(agent, "katalyst_agent_evictions_total", {"plugin": NUMA_PLUGIN, "result": "evicted"}) == 3
        healthy, loops = agent.daemon.health()
        assert loops["eviction"]["failures"] == 0, loops["eviction"]
    finally:
        stop_agent(agent)


def meminfo(total, free):
    return "MemTotal:       %d kB\nMemFree:        %d kB\nMemAvailable:   %d kB\n" % (total // 1024, free // 1024, free // 1024)


def test_system_memory_pressure_taints_the_node_and_evicts_reclaimed_first(kubeapi, kube_client, node, tmp_path):
    core, sysroot = node
    # 64 GiB with watermark_scale_factor 10: the threshold is 64 MiB free
    write(sysroot, "/proc/meminfo", meminfo(64 * GI, 32 << 20))
    add_pod(core, sysroot, "batch", {QOS: "reclaimed_cores"}, {0: 1 * GI})
    add_pod(core, sysroot, "web", {}, {0: 8 * GI})
    agent = memory_agent(kubeapi, sysroot, tmp_path, eviction_system_memory_enabled=True, eviction_condition_transition_seconds=1)
    try:
        wait_until(lambda: MEMORY_TAINT in taint_keys(core), timeout=60, what="the MemoryPressure taint")
        assert [t.effect for t in core.read_node(NODE).spec.taints] == ["NoSchedule"]
        wait_until(lambda: events(core, "MemoryPressure", "Node", NODE), what="a MemoryPressure Event on the node")
        assert "mem.free.system<" in events(core, "MemoryPressure", "Node", NODE)[0].message
        wait_until(lambda: evicted(core, "batch") and evicted_by(core, "batch", SYSTEM_PLUGIN), timeout=60, what="the reclaimed pod evicted")
        message = evicted_by(core, "batch", SYSTEM_PLUGIN)
        assert "mem.free.system=%d" % (32 << 20) in message and "action reclaimed_eviction" in message, message
        # under the watermark only reclaimed pods go: the shared pod stays though it uses more
        wait_passes(agent)
        assert not evicted(core, "web")
        # the kubelet owns the MemoryPressure status condition: not written by the agent
        status = core.read_node(NODE).status
        assert not [c for c in (status.conditions if status else None) or [] if c.type == "MemoryPressure"]
        write(sysroot, "/proc/meminfo", meminfo(64 * GI, 32 * GI))
        wait_until(lambda: MEMORY_TAINT not in taint_keys(core), timeout=60, what="the MemoryPressure taint gone")
        wait_until(lambda: events(core, "NoMemoryPressure", "Node", NODE), what="a NoMemoryPressure Event on the node")
        healthy, loops = agent.daemon.health()
        assert loops["eviction"]["failures"] == 0, loops["eviction"]
    finally:
        stop_agent(agent)


def cnr_with_reclaimed_allocatable(kube_client, millicpu):
    """The node's CNR (its CRD installed) with ``millicpu`` reclaimed_millicpu allocatable."""
    install_crds(kube_client, ["customnoderesources"])
    custom = client.CustomObjectsApi(kube_client)
    custom.create_cluster_custom_object(*CNR, {"apiVersion": "node.katalyst.kubewharf.io/v1alpha1", "kind": "CustomNodeResource",
                                               "metadata": {"name": NODE}})
    custom.patch_cluster_custom_object_status(*CNR, NODE, {"status": {"resources": {"allocatable": {RECLAIMED_CPU: millicpu}}}})


def test_reclaimed_requests_over_the_cnr_allocatable_evict_the_largest(kubeapi, kube_client, node, tmp_path):
    core, sysroot = node
    cnr_with_reclaimed_allocatable(kube_client, "1000")
    # 3000 + 4000 requested > 5 x 1000: the 4000 one goes, then 3000 fits
    add_pod(core, sysroot, "batch-a", {QOS: "reclaimed_cores"}, {}, {RECLAIMED_CPU: "3000"})
    add_pod(core, sysroot, "batch-b", {QOS: "reclaimed_cores"}, {}, {RECLAIMED_CPU: "4000"})
    add_pod(core, sysroot, "web", {}, {})
    agent = memory_agent(kubeapi, sysroot, tmp_path, eviction_reclaimed_resources_enabled=True)
    try:
        wait_until(lambda: evicted(core, "batch-b") and evicted_by(core, "batch-b", RECLAIMED_PLUGIN), timeout=60,
                   what="the reclaimed pod with the largest request evicted")
        message = evicted_by(core, "batch-b", RECLAIMED_PLUGIN)
        assert "reclaimed_millicpu > 5 x allocatable 1000" in message and "requested 7000" in message, message
        wait_until(lambda: sample(agent, "katalyst_agent_eviction_threshold_met",
                                  {"plugin": RECLAIMED_PLUGIN, "threshold": "reclaimed_millicpu"}) == 0, what="the threshold no longer met")
        wait_passes(agent)
        assert not evicted(core, "batch-a") and not evicted(core, "web")
        assert sample(agent, "katalyst_agent_evictions_total", {"plugin": RECLAIMED_PLUGIN, "result": "evicted"}) == 1
    finally:
        stop_agent(agent)


def test_system_memory_pressure_on_the_real_kernel(kubeapi, kube_client, tmp_path):
    """The real /proc/meminfo and watermark_scale_factor, pods' usage from real memory cgroups where real processes hold
    memory (the agent's sysroot is /, its cgroup root a private one): with the free-memory floor
    (eviction_system_free_memory_threshold_minimum) above what this host has free, the host is under pressure; the
    reclaimed pod holding the most memory goes first, the shared pod holding more stays."""
    problem = oomlib.usable()
    if problem:
        pytest.skip(problem)
    core = client.CoreV1Api(kube_client)
    core.create_node({"metadata": {"name": NODE}})
    with open("/proc/meminfo") as handle:
        total = int(next(line.split()[1] for line in handle if line.startswith("MemTotal:"))) << 10
    domain = oomlib.Domain("katalyst-evict-%d" % os.getpid(), 2 * GI)
    agent = None
    try:
        # the smaller reclaimed pod first: only the real usage puts the bigger one ahead of it
        pods = (("batch-a-small", {QOS: "reclaimed_cores"}, "besteffort", 16), ("web", {}, "burstable", 160),
                ("batch-z-big", {QOS: "reclaimed_cores"}, "besteffort", 96))
        for name, annotations, klass, mib in pods:
            resources = {"requests": {"memory": "64Mi"}} if klass == "burstable" else {}
            pod = core.create_namespaced_pod("default", {"metadata": {"name": name, "annotations": annotations},
                                                         "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "x", "resources": resources}]}})
            cid = "c" + pod.metadata.uid.replace("-", "")[:12]
            domain.start("kubepods/%s/pod%s/%s" % (klass, pod.metadata.uid, cid), mib)
            core.patch_namespaced_pod_status(name, "default", {"status": {
                "phase": "Running", "qosClass": "BestEffort" if klass == "besteffort" else "Burstable", "containerStatuses": [
                    {"name": "c", "containerID": "containerd://" + cid, "ready": True, "restartCount": 0, "image": "x", "imageID": ""}]}})
        agent = memory_agent(kubeapi, "/", tmp_path, eviction_system_memory_enabled=True, cgroup_root=domain.path[len(oomlib.MEMORY_ROOT):],
                             eviction_system_free_memory_threshold_minimum=str(2 * total),
                             eviction_max_per_period=1, eviction_rate_period_seconds=3600)     # one eviction: which one tells the order
        wait_until(lambda: evicted(core, "batch-z-big") and evicted_by(core, "batch-z-big", SYSTEM_PLUGIN), timeout=60,
                   what="the reclaimed pod holding the most memory evicted")
        message = evicted_by(core, "batch-z-big", SYSTEM_PLUGIN)
        assert "mem.free.system=" in message, message
        wait_until(lambda: MEMORY_TAINT in taint_keys(core), timeout=60, what="the MemoryPressure taint")
        wait_passes(agent)
        assert not evicted(core, "batch-a-small") and not evicted(core, "web"), "another pod was evicted first or as well"
        assert sample(agent, "katalyst_agent_evictions_total", {"plugin": SYSTEM_PLUGIN, "result": "evicted"}) == 1
    finally:
        if agent is not None:
            stop_agent(agent)
        domain.close()


MEMORY_PREVIEW = plan_playbook({"plugins": "[numa_memory, system_memory, reclaimed_resources]"},
                               {"plugins": "[system_memory]", "system_free_memory_threshold_minimum": "lots"})


def test_the_eviction_plan_module_previews_the_memory_plugins_then_evicts(kubeapi, kube_client, node, tmp_path):
    """eviction_plan with the memory plugins, through ansible-playbook: NUMA 1 under its low watermark (one reading stands
    for a lasting one), MemFree under the watermark, reclaimed requests over 5x the CNR's allocatable. Each plugin's
    first choice once (merged), the shared pod never; --check --diff only previews, then `evict: true` evicts them."""
    core, sysroot = node
    cnr_with_reclaimed_allocatable(kube_client, "1000")
    write(sysroot, "/proc/zoneinfo", zoneinfo(UNDER_LOW))
    write(sysroot, "/proc/meminfo", meminfo(64 * GI, 32 << 20))
    add_pod(core, sysroot, "batch-numa1", {QOS: "reclaimed_cores"}, {1: 2 * GI})
    add_pod(core, sysroot, "batch-big", {QOS: "reclaimed_cores"}, {0: 6 * GI})
    add_pod(core, sysroot, "batch-requests", {QOS: "reclaimed_cores"}, {}, {RECLAIMED_CPU: "6000"})
    add_pod(core, sysroot, "web", {}, {1: 8 * GI})
    variables = {"kc": kubeapi.kubeconfig, "sysroot": sysroot}
    rc, tasks, out = run_playbook(MEMORY_PREVIEW, tmp_path, ["--check", "--diff"], variables)
    assert rc == 0, out
    preview = tasks["preview"]
    planned = {e["pod"]: e["plugin"] for e in preview["evictions"]}
    assert planned == {"default/batch-numa1": NUMA_PLUGIN, "default/batch-big": SYSTEM_PLUGIN, "default/batch-requests": RECLAIMED_PLUGIN}, preview
    plugins = preview["plugins"]
    assert plugins["system_memory"]["met"] and plugins["system_memory"]["readings"]["free"] == 32 << 20, plugins
    assert plugins["numa_memory"]["met"] and plugins["numa_memory"]["readings"]["1"]["free_pages"] == UNDER_LOW[1], plugins
    assert plugins["reclaimed_resources"]["readings"]["over"] == RECLAIMED_CPU and "threshold_met" not in preview
    assert "default/web" in preview["diff"]["after"] and "default/batch-big" not in preview["diff"]["after"], preview["diff"]
    assert preview["changed"] and preview["evicted"] == [] and not evicted(core, "batch-big")
    refused = tasks["refused"]
    assert refused["failed"] and refused["msg"].startswith("system_free_memory_threshold_minimum: "), refused

    rc, tasks, out = run_playbook(MEMORY_PREVIEW, tmp_path, [], variables)
    assert rc == 0 and sorted(tasks["preview"]["evicted"]) == ["default/batch-big", "default/batch-numa1", "default/batch-requests"], out
    assert all(evicted(core, name) for name in ("batch-big", "batch-numa1", "batch-requests")) and not evicted(core, "web")
