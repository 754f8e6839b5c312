# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""Headroom engine: Katalyst's policy_numa_aware_test / policy_canonical_test cases, §4.1, CPU, windows."""

from __future__ import annotations

import pytest

from ansible_collections.katalyst.colocation.plugins.module_utils.cnr import RECLAIMED_MEMORY, RECLAIMED_MILLICPU, revise_reclaimed
from ansible_collections.katalyst.colocation.plugins.module_utils.headroom import (
    CappedWindow, HeadroomError, ReclaimedReporter, cpu_headroom, get_available_numas_and_reclaimed, memory_headroom_canonical,
    memory_headroom_numa_aware, pod_is_active, reclaim_supply, reclaimed_report_maps, util_based_capacity,
)
from ansible_collections.katalyst.colocation.plugins.module_utils.quantity import parse_quantity

GI = 1 << 30
RUNNING = {"status": {"phase": "Running"}}
SOCKETS = {0: 0, 1: 0}
NUMA_METRICS = {0: {"total": 250 * GI, "free": 100 * GI, "inactive_file": 50 * GI},
                1: {"total": 250 * GI, "free": 100 * GI, "inactive_file": 50 * GI}}
NUMA_AWARE_CONF = {"cache_based_ratio": 0.5, "request_based_ratio": 0.1, "max_oversold_rate": 0}


def container(uid, qos, numas, request, **extra):
    return dict({"pod_uid": uid, "container_name": "c-" + uid, "qos_level": qos, "main": True,
                 "numa_assignments": numas, "memory_request": request}, **extra)


def gi(text):
    return parse_quantity(text).value()


# -- headroom.memory_numa_aware (policy_numa_aware_test.go TestPolicyNUMAAware) -----------------
def test_numa_aware_no_containers():
    got = memory_headroom_numa_aware([], {}, [0, 1], SOCKETS, NUMA_METRICS, 500, 4 * GI, config=NUMA_AWARE_CONF)
    assert got == {"total": gi("221Gi"), "numa": {0: gi("110.5Gi"), 1: gi("110.5Gi")}}


def test_numa_aware_reclaimed_containers_only():
    containers = [container("pod1", "reclaimed_cores", [0, 1], 20 * GI)]
    got = memory_headroom_numa_aware(containers, {"pod1": RUNNING}, [0, 1], SOCKETS, NUMA_METRICS, 500, 4 * GI, config=NUMA_AWARE_CONF)
    assert got == {"total": gi("241Gi"), "numa": {0: gi("120.5Gi"), 1: gi("120.5Gi")}}


def test_numa_aware_with_numa_exclusive_container():
    containers = [container("pod1", "reclaimed_cores", [1], 20 * GI),
                  container("pod2", "dedicated_cores", [0], 30 * GI, numa_exclusive=True)]
    pods = {"pod1": RUNNING, "pod2": RUNNING}
    got = memory_headroom_numa_aware(containers, pods, [0, 1], SOCKETS, NUMA_METRICS, 500, 4 * GI, config=NUMA_AWARE_CONF,
                                     node_enable_reclaim=False)
    assert got == {"total": gi("130.5Gi"), "numa": {0: 0, 1: gi("130.5Gi")}}


def test_numa_aware_missing_metrics_is_an_error():
    with pytest.raises(HeadroomError, match="total"):
        memory_headroom_numa_aware([], {}, [0], {0: 0}, {0: {"free": 100 * GI, "inactive_file": 0}}, 500, 4 * GI)
    with pytest.raises(HeadroomError, match="scale.factor"):
        memory_headroom_numa_aware([], {}, [0], {0: 0}, NUMA_METRICS, None, 4 * GI)


def test_numa_aware_max_oversold_rate_caps_by_cgroup_limits():
    containers = [container("pod1", "reclaimed_cores", [1], 20 * GI, numa_hint=[1])]
    conf = dict(NUMA_AWARE_CONF, max_oversold_rate=2.0)
    got = memory_headroom_numa_aware(containers, {"pod1": RUNNING}, [0, 1], SOCKETS, NUMA_METRICS, 500, 4 * GI, config=conf,
                                     reclaim_limits={"root": 30 * GI, 1: 50 * GI})
    # NUMA 0 (not bound) gets root/1 x 2 = 60Gi; NUMA 1 gets min(130.5Gi, 100Gi)
    assert got["numa"] == {0: 60 * GI, 1: 100 * GI}
    assert got["total"] == 160 * GI
    with pytest.raises(HeadroomError, match="root"):
        memory_headroom_numa_aware(containers, {"pod1": RUNNING}, [0, 1], SOCKETS, NUMA_METRICS, 500, 4 * GI, config=conf,
                                   reclaim_limits={1: 50 * GI})


# -- headroom.memory_canonical (policy_canonical_test.go) -----------------------------------------
CANONICAL_CONTAINERS = [
    container("pod1", "shared_cores", [0], 0, metrics={"rss": 10 * GI, "cache": 10 * GI}),
    container("pod2", "system_cores", [0], 0, metrics={"rss": 10 * GI, "cache": 10 * GI}),
]
CANONICAL_PODS = {"pod1": RUNNING, "pod2": RUNNING}
CANONICAL_NUMA = {0: {"free": 8 * GI, "inactive_file": 2 * GI}, 1: {"free": 2 * GI, "inactive_file": 8 * GI}}


def test_canonical_disable_buffer():
    got = memory_headroom_canonical(CANONICAL_CONTAINERS, CANONICAL_PODS, [0, 1], SOCKETS, CANONICAL_NUMA, 100 * GI,
                                    {0: 50 * GI, 1: 50 * GI}, 4 * GI)
    assert got["total"] == int((96 * GI) - (20 * GI) * 1.1 - (10 * GI))
    # per NUMA: split by free (cache ratio 0): 8:2
    assert got["numa"] == {0: int(got["total"] * 0.8), 1: int(got["total"] * 0.2)}


def test_canonical_enable_buffer():
    system = {"total": 100 * GI, "free": 60 * GI, "scale_factor": 500, "used": 40 * GI}
    got = memory_headroom_canonical(CANONICAL_CONTAINERS, CANONICAL_PODS, [0, 1], SOCKETS, CANONICAL_NUMA, 100 * GI,
                                    {0: 50 * GI, 1: 50 * GI}, 4 * GI, config={"util_based_enable": True, "static_based_capacity": 20 * GI},
                                    system_metrics=system, num_cores=16)
    want = (96 * GI) - ((20 * GI) * 1.1 + (10 * GI)) + ((60 * GI) * 0.6 - (10 * GI) - ((20 * GI) * 1.1 + (10 * GI) - (20 * GI) + (10 * GI)) + (20 * GI))
    assert got["total"] == int(want)
    system["free"] = 30 * GI   # "enable buffer but memory free is not enough": only the static capacity
    got = memory_headroom_canonical(CANONICAL_CONTAINERS, CANONICAL_PODS, [0, 1], SOCKETS, CANONICAL_NUMA, 100 * GI,
                                    {0: 50 * GI, 1: 50 * GI}, 4 * GI, config={"util_based_enable": True, "static_based_capacity": 20 * GI},
                                    system_metrics=system, num_cores=16)
    assert got["total"] == int((96 * GI) - ((20 * GI) * 1.1 + (10 * GI)) + (20 * GI))


def test_canonical_exclusive_dedicated_counts_whole_numa_and_request_without_reclaim():
    containers = [container("p1", "dedicated_cores", [1], 10 * GI, numa_exclusive=True),
                  container("p1", "dedicated_cores", [1], 10 * GI, numa_exclusive=True, main=False),
                  container("p2", "shared_cores", None, 3 * GI, ramp_up=True)]
    got = memory_headroom_canonical(containers, {"p1": RUNNING, "p2": RUNNING}, [0, 1], SOCKETS, CANONICAL_NUMA, 100 * GI,
                                    {0: 50 * GI, 1: 50 * GI}, 4 * GI, enable_reclaim=False)
    assert got["total"] == 96 * GI - 50 * GI - 3 * GI
    assert got["numa"] == {0: got["total"]}     # NUMA 1 is exclusive: not available for reclaim


# -- helper.get_available_numas_and_reclaimed_cores ------------------------------------------------
def test_available_numas_levels_and_errors():
    sockets = {0: 0, 1: 0, 2: 1, 3: 1}
    pods = {"a": RUNNING, "b": RUNNING, "r": RUNNING, "gone": {"status": {"phase": "Succeeded"}}}
    reclaimed = container("r", "reclaimed_cores", [0], GI)
    finished = container("gone", "reclaimed_cores", [0], GI)
    avail, got = get_available_numas_and_reclaimed([reclaimed, finished], pods, [0, 1, 2, 3], sockets, True)
    assert avail == [0, 1, 2, 3] and got == [reclaimed]
    levels = {"NUMA": [0, 2, 3], "Socket": [2, 3], "Node": [], "Pod": [0, 1, 2, 3]}
    for level, want in levels.items():
        c = container("a", "shared_cores", [1], GI, enable_reclaim=False, disable_reclaim_level=level)
        assert get_available_numas_and_reclaimed([c], pods, [0, 1, 2, 3], sockets, True)[0] == want, level
    exclusive = container("b", "dedicated_cores", [2], GI, numa_exclusive=True)
    assert get_available_numas_and_reclaimed([exclusive], pods, [0, 1, 2, 3], sockets, False)[0] == [0, 1, 3]
    assert get_available_numas_and_reclaimed([exclusive], pods, [0, 1, 2, 3], sockets, True)[0] == [0, 1, 2, 3]
    pool = container("a", "shared_cores", [0], GI, shared_numa_binding=True, owner_pool="batch-NUMA3", numa_bind_result=3)
    assert get_available_numas_and_reclaimed([pool], pods, [0, 1, 2, 3], sockets, True, ["batch-NUMA"])[0] == [0, 1]
    with pytest.raises(HeadroomError, match="TopologyAwareAssignments is empty"):
        get_available_numas_and_reclaimed([container("a", "shared_cores", None, GI)], pods, [0, 1], sockets, False)
    with pytest.raises(HeadroomError, match="not found"):
        get_available_numas_and_reclaimed([container("zz", "reclaimed_cores", [0], GI)], pods, [0, 1], sockets, True)


def test_pod_is_active():
    assert pod_is_active(RUNNING)
    assert not pod_is_active(None)
    assert not pod_is_active({"status": {"phase": "Failed"}})
    deleting = {"metadata": {"deletionTimestamp": "2024-01-01T00:00:00Z"}, "status": {"phase": "Running"}}
    assert not pod_is_active(deleting)
    deleting["status"]["containerStatuses"] = [{"state": {"running": {}}}]
    assert pod_is_active(deleting)


# -- headroom.cpu_assembler / cpu_util_based_capacity ---------------------------------------------
def test_reclaim_supply_and_quota():
    usage = {0: 0.5, 1: 0.5, 2: 1.0, 3: 0.0}
    assert reclaim_supply([0, 1, 2, 3], usage, 1.0) == 3.0
    assert reclaim_supply([0, 1, 2, 3], usage, 1.0, 150000, 100000) == 1.5
    assert reclaim_supply([0, 1], {0: 1.0, 1: 1.0}, 0.0) == 0.0


def test_cpu_headroom_default_binding_and_non_binding():
    pool = {0: [0, 1, 2, 3], 1: [4, 5, 6, 7], 2: [8, 9, 10, 11]}
    readings = {"cpu_usage_ratio": {c: 0.25 for c in range(12)},
                "cgroups": {"root": {"usage": 1.0}, 0: {"usage": 0.5}}}
    got = cpu_headroom(True, pool, [0, 1, 2], [0], readings)
    # NUMA 0 bound: ceil(4 - 1 + 0.5) = 4; NUMAs 1, 2: int((8 - 2 + 1) / 2) = 3 each
    assert {n: q.value() for n, q in got["numa"].items()} == {0: 4, 1: 3, 2: 3}
    assert got["total"].value() == 10
    assert cpu_headroom(False, pool, [0, 1, 2], [0], readings)["total"].value() == 0
    assert set(cpu_headroom(True, pool, [1], [], readings)["numa"]) == {1}


def test_util_based_capacity():
    # usage 2 of supply 10: 20% < target 60% -> +4 over last 0 -> max(4, 10) = 10 -> cap 12
    assert util_based_capacity(10.0, 2.0, 0.0) == 10.0
    assert util_based_capacity(10.0, 2.0, 9.0) == 12.0            # 9 + 4 = 13, capped at 1.2 x supply
    assert util_based_capacity(10.0, 2.0, 9.0, max_capacity=11.0) == 11.0
    assert util_based_capacity(10.0, 9.0, 11.0, config={"max_reclaimed_core_utilization": 0.8}) == 10.0
    assert util_based_capacity(0.0, 1.0, 3.0) == 0.0


def test_cpu_headroom_util_based_splits_non_binding_by_cpus():
    pool = {0: [0, 1, 2, 3], 1: [4, 5]}
    readings = {"cpu_usage_ratio": {}, "cgroups": {"root": {"usage": 0.0}}}
    got = cpu_headroom(True, pool, [0, 1], [], readings, util_based=True, last_reclaimed_by_numa={0: 4, 1: 2},
                       numa_cpu_count={0: 4, 1: 2})
    # supply 6, last 6, +3.6 (target 60%) -> 9.6 -> min(1.2 x 6 = 7.2) -> min(capacity 6) -> 6 cores split 4:2
    assert {n: q.value() for n, q in got["numa"].items()} == {0: 4, 1: 2}
    got = cpu_headroom(True, pool, [0, 1], [], readings, util_based=True, last_reclaimed_by_numa={0: 4, 1: 2},
                       numa_cpu_count={0: 4, 1: 2}, config={"max_headroom_capacity_rate": 2.0})
    # 7.2 -> Value() = 8 cores -> int(8 x 4/6) = 5 and int(8 x 2/6) = 2
    assert {n: q.value() for n, q in got["numa"].items()} == {0: 5, 1: 2}


def test_cpu_headroom_util_based_splits_non_binding_by_machine_numa_cpus():
    # 2 NUMA nodes of 8 CPUs; the reclaim pool holds 6 CPUs of NUMA 0 and 2 of NUMA 1 (dedicated pods on NUMA 1)
    pool = {0: [0, 1, 2, 3, 4, 5], 1: [8, 9]}
    readings = {"cpu_usage_ratio": {}, "cgroups": {"root": {"usage": 0.0}}}
    got = cpu_headroom(True, pool, [0, 1], [], readings, util_based=True, last_reclaimed_by_numa={0: 5, 1: 4},
                       numa_cpu_count={0: 8, 1: 8})
    # supply 8 (8 idle pool CPUs); last 9 + 8 x (0.6 - 0) = 13.8 -> min(1.2 x 8 = 9.6) -> min(MaxCap 1.0 x 16) = 9.6
    # h = MilliQuantity(9600), Value() = 10; each NUMA int64(10 x 8 / 16) = 5 (the pool's CPUs would give 7 and 2)
    assert {n: q.value() for n, q in got["numa"].items()} == {0: 5, 1: 5}
    assert got["total"].value() == 10


def test_cpu_headroom_util_based_caps_by_machine_numa_cpus():
    pool = {0: [0, 1], 1: [8, 9]}
    readings = {"cpu_usage_ratio": {}, "cgroups": {"root": {"usage": 0.0}, 0: {"usage": 0.0}}}
    got = cpu_headroom(True, pool, [0, 1], [0], readings, util_based=True, last_reclaimed_by_numa={0: 9, 1: 9},
                       numa_cpu_count={0: 8, 1: 8}, config={"max_oversold_rate": 10.0})
    # supply 2 per NUMA; 9 + 1.2 = 10.2 -> min(2 x 10) -> min(MaxCap 1.0 x 8 machine CPUs, not 2 pool CPUs) = 8
    assert {n: q.value() for n, q in got["numa"].items()} == {0: 8, 1: 8}


def test_cpu_headroom_util_based_needs_the_machine_numa_cpus():
    pool = {0: [0, 1], 1: [8, 9]}
    readings = {"cpu_usage_ratio": {}, "cgroups": {"root": {"usage": 0.0}}}
    with pytest.raises(HeadroomError, match="CPU count of NUMA 1 is missing"):
        cpu_headroom(True, pool, [0, 1], [], readings, util_based=True, numa_cpu_count={0: 8})
    with pytest.raises(HeadroomError, match="have no CPUs"):
        cpu_headroom(True, pool, [0, 1], [], readings, util_based=True, numa_cpu_count={0: 0, 1: 0})
    # the default (not util-based) policy splits evenly and needs no machine CPU counts
    assert {n: q.value() for n, q in cpu_headroom(True, pool, [0, 1], [], readings)["numa"].items()} == {0: 2, 1: 2}


# -- window.* and the reporter (cluster §3.3) -------------------------------------------------------
def test_capped_window_needs_full_window_then_caps_steps():
    window = CappedWindow("300Mi", "5Gi", size=4, ttl=240)
    assert [window.push("10Gi", t) for t in (0, 30, 60)] == [None, None, None]
    assert window.push("10Gi", 90).value() == 10 * GI
    assert window.push("10.1Gi", 120).value() == 10 * GI                       # +25.6Mi avg step < min step
    window = CappedWindow("300Mi", "5Gi", size=1, ttl=240)
    window.push("10Gi", 0)
    assert window.push("30Gi", 30).value() == 15 * GI                           # capped at +5Gi
    assert window.push("1Gi", 60).value() == 10 * GI                            # capped at -5Gi
    assert window.push("9Gi", 90).value() == 9 * GI
    stale = CappedWindow("300Mi", "5Gi", size=2, ttl=60)
    stale.push("1Gi", 0)
    assert stale.push("1Gi", 100) is None                                        # first sample expired


def test_capped_window_percentile_and_milli():
    window = CappedWindow("300m", "4", size=4, ttl=240, used_milli_value=True, percentile=50)
    got = [window.push(v, t) for v, t in (("8", 0), ("2", 30), ("4", 60), ("6", 90))]
    assert got[-1] == parse_quantity("4")


def test_capped_window_average_is_exact_not_a_float_sum():
    # floats: 0.1 + 0.6 + 1.4 + 1.9 = 3.9999999999999996 -> 0.999; Go adds the quantities (40 x 10^-1) -> 1.0
    window = CappedWindow("300m", "4", size=4, ttl=240, used_milli_value=True)
    got = [window.push(v, t) for v, t in (("0.1", 0), ("0.6", 30), ("1.4", 60), ("1.9", 90))]
    assert got[-1].milli_value() == 1000
    memory = CappedWindow("300Mi", "5Gi", size=4, ttl=240)
    got = [memory.push(v, t) for v, t in (("0.1", 0), ("0.6", 30), ("1.4", 60), ("1.9", 90))]
    assert got[-1].value() == 1
    # exact where Go's one float64 conversion still loses a milli (16.028 x 0.001 / 4 x 1000 = 4006.9999...)
    window = CappedWindow("300m", "4", size=4, ttl=240, used_milli_value=True)
    got = [window.push("4.007", t) for t in (0, 30, 60, 90)]
    assert got[-1].milli_value() == 4007


def test_capped_window_katalyst_sequence():
    # window_test.go TestCappedSmoothWindow_GetWindowedResources: 3 samples, TTL 100 ms, steps 0.3 .. 4 (time in ms)
    window = CappedWindow("0.3", "4", size=3, ttl=100, used_milli_value=True)
    pushes = [("0.6", 10, None), ("0.8", 20, None), ("0.4", 30, 600), ("1.2", 40, 600), ("1.4", 50, 1000),
              ("15", 60, 5000), ("0", 150, 5000), ("0", 160, 5000), ("0", 190, 1000)]
    for value, now, want in pushes:
        got = window.push(value, now)
        assert (got if got is None else got.milli_value()) == want, (value, now)


def test_reporter_minimum_rescale_and_milli_transform():
    cpu = ReclaimedReporter("cpu", size=1, max_step="100")
    got = cpu.sync("2", {0: "1", 1: "1"}, now=0)
    # node below the 4-core minimum -> 4; NUMA values rescaled to sum 4 (whole cores), then milli
    assert str(got["total"]) == "4k" and {n: str(q) for n, q in got["numa"].items()} == {0: "2k", 1: "2k"}
    got = cpu.sync("12.5", {0: "7.5", 1: "5"}, now=30)
    assert got["total"].value() == 12500
    # 12500m.Value() = 13 cores; NUMA Value(): 8 and 5 (sum 13) -> ratio 1
    assert {n: q.value() for n, q in got["numa"].items()} == {0: 8000, 1: 5000}
    capped = ReclaimedReporter("cpu", size=1)
    capped.sync("6", {0: "6"}, now=0)
    assert capped.sync("12.5", {0: "12.5"}, now=30)["total"].value() == 10000     # max step 4 cores
    mem = ReclaimedReporter("memory", size=2)
    assert mem.sync("20Gi", {0: "10Gi"}, now=0) is None
    assert mem.sync("20Gi", {0: "10Gi"}, now=30)["numa"][0].value() == 20 * GI
    off = mem.sync("20Gi", {0: "10Gi"}, now=60, enable_reclaim=False)
    assert off["total"].value() == 0 and off["numa"] == {0: parse_quantity("0")}


def test_report_maps_feed_revise_and_status():
    cpu = ReclaimedReporter("cpu", size=1).sync("48", {0: "24", 1: "24"}, now=0)
    mem = ReclaimedReporter("memory", size=1).sync("60Gi", {0: "30Gi", 1: "30Gi"}, now=0)
    maps = reclaimed_report_maps(cpu, mem)
    assert maps["allocatable"] == {RECLAIMED_MILLICPU: "48k", RECLAIMED_MEMORY: "60Gi"}
    assert maps["numa_allocatable"]["1"] == {RECLAIMED_MILLICPU: "24k", RECLAIMED_MEMORY: "30Gi"}
    assert revise_reclaimed(**maps)["allocatable"] == maps["allocatable"]
