# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""Memory provisioning: Katalyst's TestPolicyCanonical cases (with our wrap-around fix), memory guard, limits on cgroups."""

from __future__ import annotations

import pytest

from ansible_collections.katalyst.colocation.plugins.module_utils import cgroups, nodeinfo
from ansible_collections.katalyst.colocation.plugins.module_utils.memprovision import (
    ProvisionError, canonical_memory_provision, desired_memory_limits, guard_limit_for, memory_guard_limits,
    reclaimed_cgroup_limits, reserved_memory_per_numa,
)
from ansible_collections.katalyst.colocation.plugins.module_utils.sysfs import SysFS
from sandbox.sysroot import build_sysroot

GI = 1 << 30
RUNNING = {"status": {"phase": "Running"}}
SOCKETS = {0: 0, 1: 0}
METRICS = {0: {"total": 250 * GI, "free": 100 * GI}, 1: {"total": 250 * GI, "free": 100 * GI}}
BASE = (100 << 30) - (5 << 30) // 2 - ((250 << 30) + (250 << 30)) * 2 * 500 // 10000 // 2


def container(uid, qos, numas, request, **extra):
    return dict({"pod_uid": uid, "container_name": "c", "qos_level": qos, "main": True, "numa_assignments": numas,
                 "memory_request": request}, **extra)


# -- provision.canonical (policy_canonical_test.go TestPolicyCanonical) ---------------------------
def test_provision_no_containers():
    assert canonical_memory_provision([], {}, [0, 1], SOCKETS, METRICS, 500, 5 * GI) == {0: BASE, 1: BASE}


def test_provision_reclaimed_without_assignments_spread_evenly():
    containers = [container("pod1", "reclaimed_cores", None, 20 * GI)]
    got = canonical_memory_provision(containers, {"pod1": RUNNING}, [0, 1], SOCKETS, METRICS, 500, 5 * GI)
    assert got == {0: BASE + (20 << 30) // 2, 1: BASE + (20 << 30) // 2}


def test_provision_with_numa_exclusive_container():
    containers = [container("pod1", "reclaimed_cores", [1], 20 * GI),
                  container("pod2", "dedicated_cores", [0], 30 * GI, numa_exclusive=True)]
    got = canonical_memory_provision(containers, {"pod1": RUNNING, "pod2": RUNNING}, [0, 1], SOCKETS, METRICS, 500, 5 * GI,
                                     enable_reclaim=False)
    one = (100 << 30) - (5 << 30) - (250 << 30) * 2 * 500 // 10000 + (20 << 30)
    assert got == {0: 0, 1: one}


def test_provision_short_numa_gets_zero_not_the_whole_numa():
    metrics = {0: {"total": 16 * GI, "free": 1 * GI}, 1: {"total": 16 * GI, "free": 12 * GI}}
    got = canonical_memory_provision([], {}, [0, 1], SOCKETS, metrics, 500, 5 * GI)
    watermark_avg = int(32 * GI * 2 * 500 / 10000) // 2
    assert got[0] == 0                                  # Katalyst: uint64 wrap-around -> 16Gi
    assert got[1] == 12 * GI - (5 * GI) // 2 - watermark_avg


def test_provision_no_available_numa_and_non_contiguous_ids():
    containers = [container("p", "shared_cores", [0], GI, enable_reclaim=False, disable_reclaim_level="Node")]
    assert canonical_memory_provision(containers, {"p": RUNNING}, [0, 2], {0: 0, 2: 1}, {}, 500) == {0: 0, 2: 0}


def test_provision_errors():
    with pytest.raises(ProvisionError, match="free"):
        canonical_memory_provision([], {}, [0, 1], SOCKETS, {0: {"total": GI}, 1: {"total": GI}}, 500)
    with pytest.raises(ProvisionError, match="scale.factor"):
        canonical_memory_provision([], {}, [0, 1], SOCKETS, METRICS, None)
    with pytest.raises(ProvisionError, match="empty"):
        canonical_memory_provision([container("r", "reclaimed_cores", [], GI)], {"r": RUNNING}, [0, 1], SOCKETS, METRICS, 500)


# -- memory_guard.* ---------------------------------------------------------------------------------
def test_guard_limit_for_watermarks_and_zoneinfo():
    # crit = max(4Gi, 100Gi x 500/10000 = 5Gi) = 5Gi; used 2Gi + (20Gi - 5Gi)
    assert guard_limit_for(2 * GI, 100 * GI, 20 * GI, 500) == 17 * GI
    assert guard_limit_for(2 * GI, 10 * GI, 20 * GI, 500) == 2 * GI + 16 * GI      # min critical watermark 4Gi
    assert guard_limit_for(2 * GI, 100 * GI, 3 * GI, 500) == 2 * GI                  # free below crit -> just usage
    zone = {"free_pages": (10 * GI) // 4096, "low_pages": (6 * GI) // 4096}
    assert guard_limit_for(0, 100 * GI, 50 * GI, 500, zone=zone) == 4 * GI


def test_memory_guard_limits_root_skips_bound_numas():
    metrics = {n: {"total": 100 * GI, "free": 20 * GI} for n in range(3)}
    usage = {"root": {0: GI, 1: GI, 2: GI}, 0: {0: 0}, 1: {1: 3 * GI}}
    bound = [container("r", "reclaimed_cores", [1], GI, numa_hint=[1])]
    got = memory_guard_limits([0, 1, 2], bound, metrics, 500, usage, numa_cgroups=[0, 1])
    assert got["root"]["limit"] == 2 * (GI + 15 * GI)
    assert got["root"]["high"] == int(got["root"]["limit"] * 0.95)
    assert got["numa"] == {0: {"limit": 15 * GI, "high": int(15 * GI * 0.95)}, 1: {"limit": 18 * GI, "high": int(18 * GI * 0.95)}}
    assert memory_guard_limits([0], [], metrics, 500, usage, numa_cgroups=[0], enable=False) == {
        "root": {"limit": -1, "high": -1}, "numa": {0: {"limit": -1, "high": -1}}}
    with pytest.raises(ProvisionError, match="mem.total.numa.cgroup"):
        memory_guard_limits([0, 1], [], metrics, 500, {"root": {0: 0}})


# -- limits with a floor ------------------------------------------------------------------------------
def test_limits_floor_protects_reclaimed_pods_from_spikes():
    totals = {0: 16 * GI, 1: 16 * GI}
    calm = reclaimed_cgroup_limits({0: 6 * GI, 1: 8 * GI}, totals)
    assert calm["numa"] == {0: 6 * GI, 1: 8 * GI} and calm["root"] == 14 * GI
    spike = reclaimed_cgroup_limits({0: 0, 1: 8 * GI}, totals, reclaimed_requests={1: 10 * GI})
    assert spike["numa"][0] == spike["floors"][0] == max(GI, int(16 * GI * 0.05))
    assert spike["numa"][1] == 10 * GI                       # never below what reclaimed pods requested there
    capped = reclaimed_cgroup_limits({0: 40 * GI}, {0: 16 * GI})
    assert capped["numa"][0] == 16 * GI
    guarded = reclaimed_cgroup_limits({0: 6 * GI, 1: 8 * GI}, totals, bound_numas=[1],
                                      guard={"root": {"limit": 5 * GI}, "numa": {0: {"limit": 4 * GI}, 1: {"limit": -1}}})
    assert guarded["numa"] == {0: 4 * GI, 1: 8 * GI} and guarded["root"] == 4 * GI


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_limits_are_written_by_the_cgroup_plan_and_idempotent(tmp_path, version):
    fs = SysFS(build_sysroot(str(tmp_path), cgroup=version))
    facts = nodeinfo.gather(fs)
    qos = cgroups.desired_qos_cgroups(facts)
    cgroups.plan_qos_cgroups(qos, cgroups.read_cgroup_state(fs, qos)).apply(cgroups.applier(fs))
    limits = reclaimed_cgroup_limits({0: 6 * GI, 1: 0, 2: 3 * GI, 3: 2 * GI}, {n["id"]: n["memory_bytes"] for n in facts["numa_nodes"]})
    desired = desired_memory_limits(facts, limits)
    plan = cgroups.plan_qos_cgroups(desired, cgroups.read_cgroup_state(fs, desired))
    assert plan.changed
    plan.apply(cgroups.applier(fs))
    if version == "v2":
        assert fs.read_text("/sys/fs/cgroup/kubepods/besteffort-0/memory.max") == str(6 * GI)
        assert fs.read_text("/sys/fs/cgroup/kubepods/besteffort-1/memory.max") == str(GI)         # the floor
        assert fs.read_text("/sys/fs/cgroup/kubepods/besteffort/memory.high") == str(int(limits["root"] * 0.95) // 4096 * 4096)  # the kernel keeps whole pages
    else:
        assert fs.read_text("/sys/fs/cgroup/memory/kubepods/besteffort-2/memory.limit_in_bytes") == str(3 * GI)
        assert fs.read_text("/sys/fs/cgroup/memory/kubepods/besteffort/memory.limit_in_bytes") == str(limits["root"])
    assert not cgroups.plan_qos_cgroups(desired, cgroups.read_cgroup_state(fs, desired)).changed
    with pytest.raises(ProvisionError):
        desired_memory_limits(dict(facts, cgroup={"mode": "none"}), limits)


def test_v2_memory_high_is_95_percent_of_the_limit_in_cgroupv2_encodings(tmp_path):
    facts = nodeinfo.gather(SysFS(build_sysroot(str(tmp_path), cgroup="v2")))
    # 10Gi: high = int(10737418240 * 0.95) = 10200547328 = 2490368 pages exactly; 1Gi + 1 byte: max 262144 pages,
    # high int(1073741825 * 0.95) = 1020054733 -> 249036 pages = 1020051456; -1 (unlimited): max for both
    desired = desired_memory_limits(facts, {"root": 10 * GI, "numa": {0: GI + 1, 1: -1}})
    files = {}
    for cgroup in desired["cgroups"]:
        files.update(cgroup["files"])
    base = "/sys/fs/cgroup/kubepods/besteffort"
    assert files[base + "/memory.max"] == "10737418240" and files[base + "/memory.high"] == "10200547328"
    assert files[base + "-0/memory.max"] == "1073741824" and files[base + "-0/memory.high"] == "1020051456"
    assert files[base + "-1/memory.max"] == "max" and files[base + "-1/memory.high"] == "max"
    v1 = desired_memory_limits(dict(facts, cgroup={"mode": "v1"}), {"root": 10 * GI, "numa": {}})
    assert [sorted(c["files"]) for c in v1["cgroups"]] == [["/sys/fs/cgroup/memory/kubepods/besteffort/memory.limit_in_bytes"]]


@pytest.mark.parametrize("reserved_gb, numas, expected", [
    (0, [0, 1, 2, 3], {0: 0, 1: 0, 2: 0, 3: 0}),            # Katalyst's default
    (10, [0, 1, 2, 3], {n: 3 * GI for n in range(4)}),      # ceil(10 / 4) = ceil(2.5) = 3
    (8, [0, 1, 2, 3], {n: 2 * GI for n in range(4)}),       # exactly 2
    (1, [1, 3], {1: GI, 3: GI}),                            # ceil(0.5) = 1, NUMA ids kept
    (5, [], {}),
])
def test_reserved_memory_per_numa_is_ceil_of_gb_over_numa_count(reserved_gb, numas, expected):
    assert reserved_memory_per_numa(reserved_gb, numas) == expected


@pytest.mark.parametrize("bad", [-1, "x", None, True, float("inf")])
def test_reserved_memory_per_numa_refuses_bad_amounts(bad):
    with pytest.raises(ValueError, match="memory_resource_plugin_reserved_gb"):
        reserved_memory_per_numa(bad, [0])
