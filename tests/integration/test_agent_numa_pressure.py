"""The agent's memory provision loop (NumaLoops.memory_provision, in-process) on a sandbox sysroot, cgroup v1 and v2
(2 sockets x 2 NUMA x 16Gi, vm.watermark_scale_factor 10): the pressure states of each pass, page-cache drops of the
reclaimed containers on a NUMA node in DropCache (v1 memory.force_empty <- 0, v2 memory.reclaim <- the target bounded
by the file cache) at most once per cool-down, memory.high on the v2 reclaim roots, reserved memory per NUMA zone.

The loop's clock is passed in (``now``), so the cool-down is crossed without sleeping."""

import json
import os

import pytest

from ansible_collections.katalyst.colocation.plugins.module_utils import cgroups, nodeinfo
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons import agent_numa
from ansible_collections.katalyst.colocation.plugins.module_utils.sysfs import SysFS
from sandbox.sysroot import build_sysroot

GI = 1 << 30
NODE = "pressure-node"
CONFIG = {"cgroup_driver": "cgroupfs", "cgroup_root": "", "reclaim_root": "/kubepods/besteffort", "reclaim_enabled": True,
          "reserved_memory_for_allocate": "5Gi", "memory_guard_enabled": True, "memory_provision_floor": "1Gi",
          "memory_provision_floor_ratio": 0.05, "memory_drop_cache_cooldown_seconds": 60}
RECLAIMED = {"katalyst.kubewharf.io/qos_level": "reclaimed_cores"}


def set_meminfo(sysroot, numa, free_bytes, total_bytes=16 * GI):
    kib, free = total_bytes // 1024, free_bytes // 1024
    with open(sysroot + "/sys/devices/system/node/node%d/meminfo" % numa, "w") as handle:
        handle.write("\n".join("Node %d %-15s %8d kB" % (numa, name + ":", value) for name, value in (
            ("MemTotal", kib), ("MemFree", free), ("MemUsed", kib - free), ("Inactive(file)", kib // 16))) + "\n")


def reclaimed_pod(name, annotations=None):
    return {"metadata": {"name": name, "namespace": "default", "uid": "u-" + name, "annotations": dict(RECLAIMED, **(annotations or {}))},
            "spec": {"nodeName": NODE, "containers": [{"name": "main", "image": "x"}]},
            "status": {"phase": "Running", "qosClass": "BestEffort",
                       "containerStatuses": [{"name": "main", "containerID": "containerd://c-" + name}]}}


def node(tmp_path, version):
    """A sysroot with the QoS cgroups, NUMA 0 under its critical watermark (3Gi free of 16Gi: critical max(4Gi,
    2*16Gi*10/10000) = 4Gi, DropCache, target 2*4Gi - 3Gi = 5Gi), NUMA 2 in TuneMemCg (6Gi < 8Gi), NUMA 1 and 3 at 12Gi free;
    reclaimed pods a (2Gi of cache, every NUMA), b (bound to NUMA 1, 4Gi of cache) and c (6Gi of cache, every NUMA)."""
    sysroot = build_sysroot(str(tmp_path / version), cgroup=version)
    fs = SysFS(sysroot)
    cgroups.converge(fs, cgroups.desired_qos_cgroups(nodeinfo.gather(fs)))
    set_meminfo(sysroot, 0, 3 * GI)
    set_meminfo(sysroot, 2, 6 * GI)
    pods = [reclaimed_pod("a"), reclaimed_pod("b", {"katalyst.kubewharf.io/numa_bind_result": "1"}), reclaimed_pod("c")]
    base = ("/sys/fs/cgroup" if version == "v2" else "/sys/fs/cgroup/memory") + "/kubepods/besteffort"
    dirs = {}
    for pod, cache in zip(pods, (2 * GI, 4 * GI, 6 * GI)):
        path = "%s/pod%s/c-%s" % (base, pod["metadata"]["uid"], pod["metadata"]["name"])
        os.makedirs(sysroot + path)
        with open(sysroot + path + "/memory.stat", "w") as handle:
            handle.write("anon 0\nfile %d\n" % cache if version == "v2" else "cache %d\nrss 0\ntotal_cache %d\n" % (cache, cache))
        dirs[pod["metadata"]["name"]] = path
    return fs, pods, dirs


def drop_file(version):
    return "/memory.reclaim" if version == "v2" else "/memory.force_empty"


def dropped(fs, dirs, version):
    """{pod name: what the last drop wrote}, the files removed (the sandbox keeps the written text; the kernel's do not)."""
    out = {}
    for name, path in sorted(dirs.items()):
        if fs.exists(path + drop_file(version)):
            out[name] = fs.read_text(path + drop_file(version)).strip()
            os.unlink(fs.path(path + drop_file(version)))
    return out


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_dropcache_numa_drops_reclaimed_cache_once_per_cooldown(tmp_path, version):
    fs, pods, dirs = node(tmp_path, version)
    loops = agent_numa.NumaLoops(NODE)
    applied = loops.memory_provision(fs, pods, CONFIG, now=1000.0)
    assert loops.last_limits["pressure"] == {0: "DropCache", 1: "NoRisk", 2: "TuneMemCg", 3: "NoRisk"}
    assert loops.last_pressure["numa"][0].target_reclaimed == 5 * GI
    # b is bound to NUMA 1 (not in DropCache): left alone. v2: the 5Gi target goes to a (all of its 2Gi of cache) and c (the 3Gi left)
    expected = {"a": str(2 * GI), "c": str(3 * GI)} if version == "v2" else {"a": "0", "c": "0"}
    drops = [c for c in applied if c.target.endswith(drop_file(version))]
    assert sorted((c.target, c.after) for c in drops) == sorted((dirs[n] + drop_file(version), v) for n, v in expected.items())
    assert dropped(fs, dirs, version) == expected
    # within the cool-down (60 s here): the limits pass goes on, nothing is dropped again
    for now in (1001.0, 1030.0, 1059.9):
        again = loops.memory_provision(fs, pods, CONFIG, now=now)
        assert not [c for c in again if c.target.endswith(drop_file(version))]
        assert loops.last_limits["pressure"][0] == "DropCache"
    assert dropped(fs, dirs, version) == {}
    # the cool-down is over: dropped again; then NUMA 0 recovers (12Gi free): no more drops
    loops.memory_provision(fs, pods, CONFIG, now=1060.0)
    assert dropped(fs, dirs, version) == expected
    set_meminfo(fs.root, 0, 12 * GI)
    loops.memory_provision(fs, pods, CONFIG, now=2000.0)
    assert loops.last_limits["pressure"][0] == "NoRisk" and dropped(fs, dirs, version) == {}


def test_v2_reclaim_roots_get_memory_high_and_v1_none(tmp_path):
    for version in ("v2", "v1"):
        fs, pods, _dirs = node(tmp_path, version)
        loops = agent_numa.NumaLoops(NODE)
        loops.memory_provision(fs, pods, CONFIG, now=0.0)
        limits = loops.last_limits
        if version == "v1":
            assert not fs.exists("/sys/fs/cgroup/memory/kubepods/besteffort/memory.high")
            assert fs.read_text("/sys/fs/cgroup/memory/kubepods/besteffort/memory.limit_in_bytes") == str(limits["root"] // 4096 * 4096)
            continue
        for relative, value in [("/kubepods/besteffort", limits["root"])] + [("/kubepods/besteffort-%d" % n, limits["numa"][n]) for n in range(4)]:
            assert fs.read_text("/sys/fs/cgroup%s/memory.max" % relative) == str(value // 4096 * 4096)
            assert fs.read_text("/sys/fs/cgroup%s/memory.high" % relative) == str(int(float(value) * 0.95) // 4096 * 4096)
        # NUMA 1: 12Gi free - 5Gi/4 - int(4*16Gi*2*10/10000)/4 = 12884901888 - 1342177280 - 34359738 = 11508364870;
        # the guard has no memory.numa_stat here, so that is the limit: max 2809659 pages, high int(x*0.95) = 10932946626 -> 2669176 pages
        assert fs.read_text("/sys/fs/cgroup/kubepods/besteffort-1/memory.max") == str(2809659 * 4096)
        assert fs.read_text("/sys/fs/cgroup/kubepods/besteffort-1/memory.high") == str(2669176 * 4096)


def test_reserved_memory_per_numa_comes_off_the_numa_zones_allocatable(tmp_path):
    fs = SysFS(build_sysroot(str(tmp_path / "r"), cgroup="v1"))
    facts = nodeinfo.gather(fs)
    status = {"topologyZone": [{"name": "0", "children": [{"name": "0"}, {"name": "1"}]}]}
    agent_numa.add_numa_capacity(status, facts, agent_numa.memprovision.reserved_memory_per_numa(10, [0, 1, 2, 3]))
    zones = {z["name"]: z["resources"] for z in status["topologyZone"][0]["children"]}
    # ceil(10 / 4) = 3Gi per NUMA node off the allocatable memory; the capacity keeps 16Gi
    assert json.loads(json.dumps(zones["0"])) == {"allocatable": {"cpu": "8", "memory": str(13 * GI)}, "capacity": {"cpu": "8", "memory": str(16 * GI)}}
    agent_numa.add_numa_capacity(status, facts)
    assert zones["1"]["allocatable"]["memory"] == str(16 * GI)
