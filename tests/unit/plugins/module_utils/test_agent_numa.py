# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""The agent's NUMA readings: memory.numa_stat (v1 pages, v2 bytes), /proc/stat busy ratios, kubelet topology policy,
container dicts from pods and cgroups, the reclaim pool, cpusets of a NUMA binding; on a sandbox sysroot."""

from __future__ import annotations

import json
import os

from ansible_collections.katalyst.colocation.plugins.module_utils import nodeinfo
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons import agent_numa
from ansible_collections.katalyst.colocation.plugins.module_utils.sysfs import SysFS
from sandbox.sysroot import build_sysroot

GI = 1 << 30


def test_numa_stat_v1_pages_and_v2_bytes():
    assert agent_numa.parse_numa_stat("total=300 N0=100 N1=200\nfile=10 N0=5 N1=5\nhierarchical_total=1 N0=1 N1=0", "v1") == {
        0: 100 * 4096, 1: 200 * 4096}
    assert agent_numa.parse_numa_stat("anon N0=10 N1=20\nfile N0=1 N1=2\nshmem N0=100 N1=100", "v2") == {0: 11, 1: 22}
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
