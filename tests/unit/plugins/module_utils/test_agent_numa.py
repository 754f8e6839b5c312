# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""The agent's NUMA readings: memory.numa_stat (v1 pages, v2 bytes), /proc/stat busy ratios, kubelet topology policy,
container dicts from pods and cgroups, the reclaim pool, cpusets of a NUMA binding; on a sandbox sysroot."""

from __future__ import annotations

import json
import os

import pytest

from ansible_collections.katalyst.colocation.plugins.module_utils import nodeinfo
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons import agent_numa
from ansible_collections.katalyst.colocation.plugins.module_utils.sysfs import SysFS
from sandbox.sysroot import build_sysroot

GI = 1 << 30


def test_numa_stat_v1_pages_and_v2_bytes():
    assert agent_numa.parse_numa_stat("total=300 N0=100 N1=200\nfile=10 N0=5 N1=5\nhierarchical_total=1 N0=1 N1=0", "v1") == {
        0: 100 * 4096, 1: 200 * 4096}
    assert agent_numa.parse_numa_stat("anon N0=10 N1=20\nfile N0=1 N1=2\nshmem N0=100 N1=100", "v2") == {0: 11, 1: 22}
    # v2 adds unevictable (mlocked) memory where the kernel reports it, as malachite does
    assert agent_numa.parse_numa_stat("anon N0=10 N1=20\nfile N0=1 N1=2\nunevictable N0=1000 N1=0", "v2") == {0: 1011, 1: 22}
    assert agent_numa.parse_numa_stat("", "v1") == {}


def test_proc_stat_busy_ratios():
    before = agent_numa.parse_proc_stat("cpu  1 2 3 4\ncpu0 100 0 0 100 0 0 0 0\ncpu1 0 0 0 200 0 0 0 0\nintr 5")
    after = agent_numa.parse_proc_stat("cpu0 150 0 0 150 0 0 0 0\ncpu1 0 0 0 300 0 0 0 0\ncpu2 1 1 1 1")
    assert before == {0: (100, 200), 1: (0, 200)}
    assert agent_numa.usage_ratios(before, after) == {0: 0.5, 1: 0.0}      # cpu2 has no earlier sample: left out (idle)


def test_topology_policy_from_the_kubelet_configuration(tmp_path):
    assert agent_numa.generate_topology_policy("single-numa-node", "pod") == "SingleNUMANodePodLevel"
    assert agent_numa.generate_topology_policy("numeric", None) == "NumericContainerLevel"
    assert agent_numa.generate_topology_policy("none", "container") == "None"
    assert agent_numa.generate_topology_policy("bogus", "container") == "None"
    root = build_sysroot(str(tmp_path / "s"), cgroup="v1")
    fs = SysFS(root)
    assert agent_numa.kubelet_topology_policy(fs) == "None"
    with open(root + "/var/lib/kubelet/config.yaml", "a") as handle:
        handle.write("topologyManagerPolicy: single-numa-node\ntopologyManagerScope: 'container'\n")
    assert agent_numa.kubelet_topology_policy(fs) == "SingleNUMANodeContainerLevel"


def pod(name, qos, numa=None, cpu="4", binding=False, phase="Running"):
    annotations = {"katalyst.kubewharf.io/qos_level": qos}
    if binding:
        annotations["katalyst.kubewharf.io/memory_enhancement"] = json.dumps({"numa_binding": "true"})
    if numa is not None:
        annotations["katalyst.kubewharf.io/numa_bind_result"] = str(numa)
    return {"metadata": {"name": name, "namespace": "default", "uid": "u-" + name, "annotations": annotations},
            "spec": {"containers": [{"name": "main", "resources": {"requests": {"cpu": cpu, "memory": "2Gi"}}}]},
            "status": {"phase": phase, "containerStatuses": [{"name": "main", "containerID": "containerd://c-" + name}]}}


def test_container_dicts_read_cgroup_metrics_and_the_reclaim_pool(tmp_path):
    root = build_sysroot(str(tmp_path / "s"), cgroup="v1")
    fs = SysFS(root)
    facts = nodeinfo.gather(fs)
    cgroup = root + "/sys/fs/cgroup/memory/kubepods/burstable/podu-web/c-web"
    os.makedirs(cgroup)
    with open(cgroup + "/memory.stat", "w") as handle:
        handle.write("rss 100\ncache 50\nshmem 7\ntotal_rss 1000\ntotal_cache 500\ntotal_shmem 70\n")
    with open(cgroup + "/memory.usage_in_bytes", "w") as handle:
        handle.write("2000")
    pods = [pod("web", "shared_cores"), pod("db", "dedicated_cores", numa=1, binding=True), pod("new", "dedicated_cores", binding=True),
            pod("batch", "reclaimed_cores", numa=2)]
    containers = {c["pod_uid"]: c for c in agent_numa.container_dicts(pods, facts, fs)}
    assert containers["u-web"]["metrics"] == {"rss": 1000, "cache": 500, "shmem": 70, "usage": 2000, "numa_total": {0: 0, 1: 0, 2: 0, 3: 0}}
    assert containers["u-web"]["numa_assignments"] == [0, 1, 2, 3] and containers["u-web"]["memory_request"] == 2 * GI
    assert containers["u-db"]["numa_assignments"] == [1] and not containers["u-db"]["ramp_up"]
    assert containers["u-new"]["numa_assignments"] is None and containers["u-new"]["ramp_up"]     # not pinned yet
    assert containers["u-batch"]["numa_hint"] == [2] and containers["u-batch"]["metrics"]["numa_total"] == {0: 0, 1: 0, 2: 0, 3: 0}
    pool = agent_numa.reclaim_pool_cpus(facts, pods)
    assert pool[1] == [20, 21, 22, 23] and pool[0] == [0, 1, 2, 3, 16, 17, 18, 19]      # db holds 4 whole CPUs of NUMA 1
    assert agent_numa.binding_numas(pods) == {1, 2}


def test_cpuset_plan_narrows_containers_first_and_only_what_differs(tmp_path):
    root = build_sysroot(str(tmp_path / "s"), cgroup="v1")
    fs = SysFS(root)
    p = pod("db", "dedicated_cores", binding=True)
    p["status"]["qosClass"] = "Guaranteed"
    os.makedirs(root + "/sys/fs/cgroup/cpuset/kubepods/podu-db/c-db")
    config = {"cgroup_root": "/", "cgroup_driver": "cgroupfs"}
    choice = {"cpuset_cpus": "4-7,20-23", "cpuset_mems": "1"}
    plan = agent_numa.plan_cpuset(fs, p, "v1", config, choice)
    expected = [["c-db", "cpuset.cpus"], ["c-db", "cpuset.mems"], ["podu-db", "cpuset.cpus"], ["podu-db", "cpuset.mems"]]
    assert [c.target.rsplit("/", 2)[-2:] for c in plan] == expected
    for change in plan:
        fs.write_text(change.target, change.after)
    assert not agent_numa.plan_cpuset(fs, p, "v1", config, choice)


# -- malformed readings and annotations: reported, the last good state kept, the other cgroups and pods go on -----
BESTEFFORT = "/sys/fs/cgroup/memory/kubepods/besteffort"


@pytest.mark.parametrize("text, version, why", [
    ("garbage", "v1", "line 1 starts with 'garbage', not name=<pages>"),
    ("total=3 N0=1 N1=x", "v1", "line 1: 'N1=x' is not N<id>=<amount>"),
    ("total=3 N0=3\nfile=1 N0=1 N1", "v1", "line 2: 'N1' is not N<id>=<amount>"),
    ("file=1 N0=1\nanon=2 N0=2", "v1", "no total line"),
    ("anon N0=1\nfile N0=1", "v1", "line 1 starts with 'anon'"),          # a v2 file read as v1
    ("total=1 N0=1", "v2", "line 1 starts with 'total=1', not a name"),
    ("anon N0=1\nshmem N0=2", "v2", "no file line"),
    ("anon N0=-1\nfile N0=1", "v2", "'N0=-1' is not N<id>=<amount>"),
])
def test_malformed_numa_stat_is_an_error_naming_the_file_and_quoting_it(text, version, why):
    source = BESTEFFORT + "/memory.numa_stat"
    with pytest.raises(agent_numa.NumaStatError) as raised:
        agent_numa.parse_numa_stat(text, version, source)
    message = str(raised.value)
    assert message.startswith(source + ": malformed memory.numa_stat") and why in message and repr(text) in message


def write(root, path, text):
    os.makedirs(os.path.dirname(root + path), exist_ok=True)
    with open(root + path, "w") as handle:
        handle.write(text)


def test_malformed_numa_stat_keeps_the_cgroups_last_good_reading_and_the_others_go_on(tmp_path, caplog):
    root = build_sysroot(str(tmp_path / "s"), cgroup="v1")
    fs = SysFS(root)
    facts = nodeinfo.gather(fs)
    pods = [pod(name, "shared_cores") for name in ("a", "b", "c")]
    cgroup = "/sys/fs/cgroup/memory/kubepods/burstable/podu-%s/c-%s"
    for name, pages in (("a", 10), ("b", 20)):
        write(root, cgroup % (name, name) + "/memory.numa_stat", "total=%d N0=%d N1=0 N2=0 N3=0\n" % (pages, pages))
    write(root, cgroup % ("c", "c") + "/memory.numa_stat", "total=?\n")        # never readable
    loops = agent_numa.NumaLoops("n1")

    def numa_totals():
        return {c["pod_uid"]: c["metrics"]["numa_total"][0] for c in agent_numa.container_dicts(pods, facts, fs, numa_stat=loops.numa_stat)}

    assert numa_totals() == {"u-a": 10 * 4096, "u-b": 20 * 4096, "u-c": 0}
    write(root, cgroup % ("a", "a") + "/memory.numa_stat", "total=5 N0=five\n")
    write(root, cgroup % ("b", "b") + "/memory.numa_stat", "total=30 N0=30 N1=0 N2=0 N3=0\n")
    assert numa_totals() == {"u-a": 10 * 4096, "u-b": 30 * 4096, "u-c": 0}      # a: last good; b: read on
    assert numa_totals() == {"u-a": 10 * 4096, "u-b": 30 * 4096, "u-c": 0}
    warnings = [r.getMessage() for r in caplog.records if "malformed memory.numa_stat" in r.getMessage()]
    assert len(warnings) == 2                                                   # once per file and content
    assert any("podu-a/c-a/memory.numa_stat" in w and "'total=5 N0=five'" in w and "last good reading is kept" in w for w in warnings)
    assert any("podu-c/c-c/memory.numa_stat" in w and "counts as not readable" in w for w in warnings)
    write(root, cgroup % ("a", "a") + "/memory.numa_stat", "total=7 N0=7 N1=0 N2=0 N3=0\n")
    assert numa_totals()["u-a"] == 7 * 4096
    # without the agent's state the reading is simply an error
    with pytest.raises(agent_numa.NumaStatError, match="podu-c/c-c/memory.numa_stat"):
        agent_numa.container_dicts(pods, facts, fs)


def test_memory_guard_keeps_the_last_good_numa_stat(tmp_path, caplog):
    root = build_sysroot(str(tmp_path / "s"), cgroup="v1")
    fs = SysFS(root)
    facts = nodeinfo.gather(fs)
    config = {"cgroup_driver": "cgroupfs", "reclaim_root": "/kubepods/besteffort"}
    for cgroup in ["besteffort"] + ["besteffort-%d" % n for n in range(4)]:
        write(root, "/sys/fs/cgroup/memory/kubepods/%s/memory.numa_stat" % cgroup, "total=262144 N0=262144 N1=0 N2=0 N3=0\n")
    loops = agent_numa.NumaLoops("n1")
    metrics = agent_numa.numa_metrics_from_facts(facts)

    def guard(numa_loops):
        return numa_loops.guard(fs, facts, config, [0, 1, 2, 3], [], metrics, 10)

    good = guard(loops)
    assert good is not None and good["numa"][0]["limit"] > good["numa"][1]["limit"]      # 1Gi used on NUMA 0
    write(root, BESTEFFORT + "/memory.numa_stat", "total=262144 N0=262144 N1=0 N2=0 N3=0 N4\n")
    assert guard(loops) == good
    assert len([r for r in caplog.records if BESTEFFORT + "/memory.numa_stat: malformed" in r.getMessage()]) == 1
    assert guard(agent_numa.NumaLoops("n1")) is None          # no good reading yet: the guard is skipped, as without the file


class FakeKube:
    def __init__(self):
        self.events, self.patches = [], []

    def emit_event(self, involved, reason, message, event_type="Normal", component="", host=None):
        assert host == "n1", host           # the agent names its node (the node isolation policy checks it)
        self.events.append((involved["metadata"]["name"], reason, message, event_type, component))

    def patch(self, api_version, kind, name, body, namespace=None, **_kwargs):
        self.patches.append((kind, name, body, namespace))


def test_malformed_bind_result_is_reported_once_and_that_pod_left_alone(tmp_path):
    root = build_sysroot(str(tmp_path / "s"), cgroup="v1")
    fs = SysFS(root)
    broken, good = pod("broken", "dedicated_cores", numa="one", binding=True), pod("good", "dedicated_cores", binding=True)
    for p in (broken, good):
        p["status"]["qosClass"] = "Guaranteed"
        os.makedirs(root + "/sys/fs/cgroup/cpuset/kubepods/pod%s/c-%s" % (p["metadata"]["uid"], p["metadata"]["name"]))
    config = {"cgroup_root": "/", "cgroup_driver": "cgroupfs"}
    kube, loops = FakeKube(), agent_numa.NumaLoops("n1")
    loops.numa_binding(fs, [broken, good], kube, config)
    assert kube.patches == [("Pod", "good", {"metadata": {"annotations": {"katalyst.kubewharf.io/numa_bind_result": "0"}}}, "default")]
    assert open(root + "/sys/fs/cgroup/cpuset/kubepods/podu-good/cpuset.mems").read() == "0"
    assert not os.path.exists(root + "/sys/fs/cgroup/cpuset/kubepods/podu-broken/cpuset.mems")      # neither pinned nor moved
    problem = "katalyst.kubewharf.io/numa_bind_result='one' is not a NUMA id or a comma-separated list of NUMA ids"
    assert kube.events == [("broken", "InvalidNUMABindResult", problem, "Warning", "katalyst-agent")]
    good = pod("good", "dedicated_cores", numa=0, binding=True)
    loops.numa_binding(fs, [broken, good], kube, config)
    loops.report_bind_results(kube, [broken, good])           # what the reclaimed-resources pass does first
    assert len(kube.events) == 1 and len(kube.patches) == 1
    assert agent_numa.bind_result(broken) is None and agent_numa.bind_result(good) == [0]
    broken["metadata"]["annotations"]["katalyst.kubewharf.io/numa_bind_result"] = ""              # another bad value
    loops.report_bind_results(kube, [broken])
    assert kube.events[1][2] == "katalyst.kubewharf.io/numa_bind_result='' is not a NUMA id or a comma-separated list of NUMA ids"
