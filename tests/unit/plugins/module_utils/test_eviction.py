# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""Eviction engine: node spec §5.3 (rootfs), §5.4 (NUMA / system memory, reclaimed resources), §6.2.

Expected numbers are worked by hand from the spec (page size 4096, Gi = 2^30), not recomputed with the code.
"""

from __future__ import annotations

import re

import pytest

from ansible_collections.katalyst.colocation.plugins.module_utils import eviction

GI = 1 << 30
MI = 1 << 20
QOS = "katalyst.kubewharf.io/qos_level"
F32_TENTH = 0.10000000149011612        # float32(10)/100 in single precision
F32_FIFTH = 0.20000000298023224        # float32(20)/100
F32_FIVE_HUNDREDTHS = 0.05000000074505806


def pod(name, qos=None, priority=None, annotations=None, labels=None, namespace="ns", **spec):
    meta_annotations = dict(annotations or {})
    if qos:
        meta_annotations[QOS] = qos
    body = dict(spec)
    if priority is not None:
        body["priority"] = priority
    return {"metadata": {"name": name, "namespace": namespace, "uid": "uid-" + name,
                         "annotations": meta_annotations, "labels": labels or {}},
            "spec": body, "status": {"phase": "Running"}}


def names(plan):
    return [e.name for e in plan.evictions]


# ---------------------------------------------------------------------------------------------------------------
# parse_threshold
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("10%", eviction.Threshold(None, F32_TENTH)),
    ("20%", eviction.Threshold(None, F32_FIFTH)),
    ("5%", eviction.Threshold(None, F32_FIVE_HUNDREDTHS)),
    ("100.0%", eviction.Threshold(None, 1.0)),      # only the exact strings "0%"/"100%" mean unset
    ("0%", None),
    ("100%", None),
    ("5Gi", eviction.Threshold(5368709120, None)),
    ("1k", eviction.Threshold(1000, None)),
    ("1000", eviction.Threshold(1000, None)),
    ("0.5", eviction.Threshold(1, None)),           # Quantity.Value() rounds up
    ("100Mi", eviction.Threshold(104857600, None)),
])
def test_parse_threshold(text, expected):
    assert eviction.parse_threshold(text) == expected


@pytest.mark.parametrize("text, message", [
    ("0", "positive"),
    ("-1Gi", "positive"),
    ("0Gi", "positive"),
    ("abc", "abc"),
    ("", "''"),
    ("-5%", ">= 0%"),
    ("150%", "<= 100%"),
    ("x%", "x%"),
    ("%", "'%'"),
    ("10%%", "10%%"),
    ("inf%", "inf%"),
    ("1e39%", "out of range: '1e39%'"),
    ("1Gb", "1Gb"),
    (None, "string"),
    (10, "string"),
])
def test_parse_threshold_errors_name_the_value(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        eviction.parse_threshold(text)


def test_describe_threshold():
    assert eviction.describe_threshold(None) == "unset"
    assert eviction.describe_threshold(eviction.Threshold(1024, None)) == "1024"
    assert eviction.describe_threshold(eviction.parse_threshold("10%")) == "10%"


def test_rootfs_thresholds_from_strings():
    conf = eviction.RootfsThresholds.from_strings(enabled=True, grace_period="30", minimum_free="10%", minimum_inodes_free="",
                                                  pod_minimum_used="2Gi", minimum_disk_capacity="50Gi",
                                                  reclaimed_pod_used_priority=None)
    assert conf.enabled and conf.grace_period == 30
    assert conf.minimum_free == eviction.Threshold(None, F32_TENTH)
    assert conf.minimum_inodes_free is None and conf.reclaimed_pod_used_priority is None
    assert conf.pod_minimum_used == eviction.Threshold(2 * GI, None)
    assert conf.minimum_disk_capacity == 50 * GI
    assert eviction.RootfsThresholds.from_strings().minimum_disk_capacity is None
    assert eviction.RootfsThresholds.from_strings(minimum_disk_capacity="").minimum_disk_capacity is None
    with pytest.raises(ValueError, match="10Gb"):
        eviction.RootfsThresholds.from_strings(minimum_disk_capacity="10Gb")
    with pytest.raises(ValueError, match="bogus"):
        eviction.RootfsThresholds.from_strings(bogus="1")
    with pytest.raises(ValueError, match="-1Gi"):
        eviction.RootfsThresholds.from_strings(minimum_free="-1Gi")
    assert eviction.RootfsThresholds() == eviction.RootfsThresholds(enabled=False, grace_period=0)   # flag defaults


# ---------------------------------------------------------------------------------------------------------------
# rootfs ThresholdMet
# ---------------------------------------------------------------------------------------------------------------

def rootfs(**texts):
    return eviction.RootfsThresholds.from_strings(enabled=True, **texts)


@pytest.mark.parametrize("conf, readings, expected", [
    # free percentage 10%: 5/100 = 0.05 < 0.1
    (rootfs(minimum_free="10%"), {"available": 5 * GI, "capacity": 100 * GI}, (True, False)),
    # exactly 10%: 0.1 < float32(0.1) = 0.10000000149 -> met (float32 quirk reproduced)
    (rootfs(minimum_free="10%"), {"available": 10 * GI, "capacity": 100 * GI}, (True, False)),
    (rootfs(minimum_free="10%"), {"available": 20 * GI, "capacity": 100 * GI}, (False, False)),
    # invalid metrics: available > capacity, capacity 0
    (rootfs(minimum_free="10%"), {"available": 200 * GI, "capacity": 100 * GI}, (False, False)),
    (rootfs(minimum_free="10%"), {"available": 0, "capacity": 0}, (False, False)),
    # missing readings -> not met
    (rootfs(minimum_free="10%"), {"capacity": 100 * GI}, (False, False)),
    (rootfs(minimum_free="10%"), {"available": GI}, (False, False)),
    (rootfs(minimum_free="10%"), None, (False, False)),
    # quantity: strict <
    (rootfs(minimum_free="10Gi"), {"available": 9 * GI, "capacity": 100 * GI}, (True, False)),
    (rootfs(minimum_free="10Gi"), {"available": 10 * GI, "capacity": 100 * GI}, (False, False)),
    # quantity compares int64(available): 10Gi - 0.5 truncates to 10Gi - 1
    (rootfs(minimum_free="10Gi"), {"available": 10 * GI - 0.5, "capacity": 100 * GI}, (True, False)),
    # minimum disk capacity: 40Gi < 50Gi -> node ignored even at 1Gi free; 50Gi is not < 50Gi
    (rootfs(minimum_free="10%", minimum_disk_capacity="50Gi"), {"available": GI, "capacity": 40 * GI}, (False, False)),
    (rootfs(minimum_free="10%", minimum_disk_capacity="50Gi"), {"available": GI, "capacity": 50 * GI}, (True, False)),
    # the capacity rule does not apply to inodes
    (rootfs(minimum_inodes_free="1000", minimum_disk_capacity="50Gi"), {"capacity": GI, "inodes_free": 999}, (False, True)),
    (rootfs(minimum_inodes_free="1000"), {"inodes_free": 1000}, (False, False)),
    (rootfs(minimum_inodes_free="1000"), {}, (False, False)),
    # inodes percentage 5%: 40/1000 = 0.04 < 0.05; 60/1000 no; invalid pairs no
    (rootfs(minimum_inodes_free="5%"), {"inodes_free": 40, "inodes": 1000}, (False, True)),
    (rootfs(minimum_inodes_free="5%"), {"inodes_free": 60, "inodes": 1000}, (False, False)),
    (rootfs(minimum_inodes_free="5%"), {"inodes_free": 40, "inodes": 0}, (False, False)),
    (rootfs(minimum_inodes_free="5%"), {"inodes_free": 2000, "inodes": 1000}, (False, False)),
    (rootfs(minimum_inodes_free="5%"), {"inodes_free": 40}, (False, False)),
    # both
    (rootfs(minimum_free="10%", minimum_inodes_free="5%"), {"available": GI, "capacity": 100 * GI, "inodes_free": 1, "inodes": 1000},
     (True, True)),
    # no threshold configured
    (rootfs(), {"available": 0, "capacity": 100 * GI, "inodes_free": 0, "inodes": 1000}, (False, False)),
    # disabled
    (eviction.RootfsThresholds(enabled=False, minimum_free=eviction.parse_threshold("10%")), {"available": 0, "capacity": GI},
     (False, False)),
])
def test_rootfs_threshold_met(conf, readings, expected):
    assert tuple(eviction.rootfs_threshold_met(readings, conf)) == expected


def test_rootfs_conditions():
    assert eviction.rootfs_conditions(eviction.RootfsMet(False, False)) == ()
    assert eviction.rootfs_conditions(eviction.RootfsMet(False, True)) == (eviction.Condition("SystemRootfs", ("NoSchedule",)),)


# ---------------------------------------------------------------------------------------------------------------
# rootfs GetTopEvictionPods
# ---------------------------------------------------------------------------------------------------------------

# capacity 100Gi; A reclaimed 30Gi (30% > 20%: priority), B shared 5Gi, C shared 1Gi (< 2Gi: protected),
# D reclaimed 2Gi (2% not > 20%; 2Gi not < 2Gi: kept), E no reading (skipped)
PA, PB, PC, PD, PE = (pod("a", "reclaimed_cores"), pod("b", "shared_cores"), pod("c"), pod("d", "reclaimed_cores"),
                      pod("e", "reclaimed_cores"))
USAGE = {"uid-a": {"used": 30 * GI, "inodes_used": 10}, "uid-b": {"used": 5 * GI, "inodes_used": 500},
         "uid-c": {"used": GI, "inodes_used": 300}, "uid-d": {"used": 2 * GI, "inodes_used": 50}}
CAP = {"available": GI, "capacity": 100 * GI, "inodes_free": 10, "inodes": 1000}
FREE_MET = eviction.RootfsMet(True, False)
INODES_MET = eviction.RootfsMet(False, True)


@pytest.mark.parametrize("pods, top_n, met, expected", [
    ([PA, PB, PC, PD, PE], 2, FREE_MET, ["a", "b"]),
    ([PB, PD, PA], 2, FREE_MET, ["a", "b"]),            # count 3 > 2: sorted, priority first
    ([PB, PD, PA], 3, FREE_MET, ["b", "d", "a"]),       # count 3 == topN: original order kept
    ([PB, PD, PA], 10, FREE_MET, ["b", "d", "a"]),
    ([PB, PD, PA], 1, FREE_MET, ["a"]),
    ([PB, PD, PA], 0, FREE_MET, []),
    ([PB, PD, PA, PC], 2, eviction.RootfsMet(False, False), []),
    # inodes (free not met): capacity 1000 inodes; minimum 100 inodes; priority 20% = 200 inodes
    # a 10 (reclaimed, 1% not > 20%, 10 < 100: protected), b 500 kept, c 300 kept, d 50 protected
    ([PA, PB, PC, PD], 1, INODES_MET, ["b"]),
    ([PA, PB, PC, PD], 2, INODES_MET, ["b", "c"]),
    ([PC, PA, PB, PD], 5, INODES_MET, ["c", "b"]),
    # free wins over inodes when both are met
    ([PA, PB, PC, PD], 1, eviction.RootfsMet(True, True), ["a"]),
])
def test_rootfs_top_eviction_pods(pods, top_n, met, expected):
    conf = rootfs(minimum_free="10%", pod_minimum_used="2Gi", reclaimed_pod_used_priority="20%",
                  pod_minimum_inodes_used="100", reclaimed_pod_inodes_used_priority="20%")
    assert names(eviction.rootfs_top_eviction_pods(pods, USAGE, CAP, conf, top_n, met)) == expected


def test_rootfs_priority_is_strict_and_reclaimed_only():
    usage = {"uid-a": {"used": 20 * GI}, "uid-b": {"used": 20 * GI + 1}, "uid-s": {"used": 90 * GI}}
    shared = pod("s")
    # percentage: 20/100 = 0.2 is not > float32(0.2) = 0.20000000298 -> not priority, then protected? 20Gi >= 2Gi: kept
    conf_pct = rootfs(pod_minimum_used="2Gi", reclaimed_pod_used_priority="20%")
    assert names(eviction.rootfs_top_eviction_pods([pod("a", "reclaimed_cores"), shared], usage, CAP, conf_pct, 1, FREE_MET)) == ["s"]
    # quantity 20Gi: 20Gi not > 20Gi, 20Gi+1 is
    conf_q = rootfs(pod_minimum_used="2Gi", reclaimed_pod_used_priority="20Gi")
    reclaimed = [pod("a", "reclaimed_cores"), pod("b", "reclaimed_cores"), shared]
    assert names(eviction.rootfs_top_eviction_pods(reclaimed, usage, CAP, conf_q, 1, FREE_MET)) == ["b"]
    # the priority pod bypasses protection: minimum 50Gi would protect a 30Gi reclaimed pod otherwise
    conf_protect = rootfs(pod_minimum_used="50Gi", reclaimed_pod_used_priority="20%")
    assert names(eviction.rootfs_top_eviction_pods([PA, PB], USAGE, CAP, conf_protect, 5, FREE_MET)) == ["a"]
    # percentage protection: 3% minimum protects b (5%? no: 5 > 3) and d (2% < 3%)
    conf_min_pct = rootfs(pod_minimum_used="3%")
    assert names(eviction.rootfs_top_eviction_pods([PB, PD], USAGE, CAP, conf_min_pct, 5, FREE_MET)) == ["b"]


def test_rootfs_ties_keep_original_order_and_capacity_errors_skip():
    usage = {"uid-x": {"used": 5 * GI}, "uid-y": {"used": 5 * GI}, "uid-z": {"used": 6 * GI}}
    pods = [pod("x"), pod("y"), pod("z")]
    conf = rootfs()
    assert names(eviction.rootfs_top_eviction_pods(pods, usage, CAP, conf, 2, FREE_MET)) == ["z", "x"]
    assert names(eviction.rootfs_top_eviction_pods(pods, usage, dict(CAP, capacity=0), conf, 2, FREE_MET)) == []
    assert names(eviction.rootfs_top_eviction_pods(pods, usage, {}, conf, 2, FREE_MET)) == []
    disabled = eviction.RootfsThresholds(enabled=False)
    assert eviction.rootfs_top_eviction_pods(pods, usage, CAP, disabled, 2, FREE_MET) == eviction.Plan((), ())


def test_rootfs_plan_records_grace_message_condition():
    conf = rootfs(minimum_free="10%", grace_period=30)
    plan = eviction.rootfs_top_eviction_pods([PB], USAGE, CAP, conf, 1, FREE_MET)
    (record,) = plan.evictions
    assert record.pod_key == "ns/b" and record.uid == "uid-b" and record.namespace == "ns" and record.name == "b"
    assert record.plugin == "rootfs-pressure-eviction-plugin" and record.grace_period_seconds == 30
    assert "available.rootfs.system<10%" in record.reason_message and str(5 * GI) in record.reason_message
    assert record.threshold == "available.rootfs.system<10%"
    assert plan.conditions == (eviction.Condition("SystemRootfs", ("NoSchedule",)),)
    no_grace = eviction.rootfs_top_eviction_pods([PB], USAGE, CAP, rootfs(minimum_free="10%"), 1, FREE_MET)
    assert no_grace.evictions[0].grace_period_seconds is None


# ---------------------------------------------------------------------------------------------------------------
# NUMA watermarks (page 4096: 256Mi = 65536 pages, 1Gi = 262144, 4Gi = 1048576)
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("reading, expected", [
    # plenty of inactive file: low 2000000+65536, min 10000+262144
    ({"zoneinfo": {"free": 5, "min": 10000, "low": 2000000, "inactive_file": 5000000}}, (5, 272144, 2065536)),
    # inactive 100000 < max(1048576, 2065536): low = max(1048576, 2065536+262144) = 2327680
    ({"zoneinfo": {"free": 5, "min": 10000, "low": 2000000, "inactive_file": 100000}}, (5, 272144, 2327680)),
    # small low 100000 -> 165536; inactive 500000 < 1048576: low = max(1048576, 427680) = 1048576
    ({"zoneinfo": {"free": 7, "min": 0, "low": 100000, "inactive_file": 500000}}, (7, 262144, 1048576)),
    # inactive exactly max(...) is not below it
    ({"zoneinfo": {"free": 7, "min": 0, "low": 100000, "inactive_file": 1048576}}, (7, 262144, 165536)),
    # fallback: free 1Gi+1 bytes -> 262145 pages; low = ceil(int(64Gi*10/10000)=68719476 / 4096) = 16778; min 0
    ({"zoneinfo": None, "free": GI + 1, "total": 64 * GI, "scale_factor": 10}, (262145, 0, 16778)),
    ({"free": 4096, "total": 64 * GI, "scale_factor": 0}, (1, 0, 0)),
    ({"zoneinfo": None, "free": GI}, None),
    ({}, None),
])
def test_numa_watermarks(reading, expected):
    assert eviction.numa_watermarks(reading) == expected


def test_numa_watermarks_zero_low_falls_back():
    # page size 8Gi: the 256Mi/1Gi/4Gi guards are 0 whole pages, zoneinfo low 0 stays 0 -> metric fallback
    # free ceil(1Gi/8Gi) = 1; low ceil(int(64Gi*10/10000)=68719476 / 8Gi) = 1
    zone = {"free": 3, "min": 0, "low": 0, "inactive_file": 0}
    assert eviction.numa_watermarks({"zoneinfo": zone, "free": GI, "total": 64 * GI, "scale_factor": 10}, 8 * GI) == (1, 0, 1)
    assert eviction.numa_watermarks({"zoneinfo": zone}, 8 * GI) is None


def test_bytes_to_pages():
    assert [eviction.bytes_to_pages(b) for b in (0, 1, 4096, 4097)] == [0, 1, 1, 2]


# ---------------------------------------------------------------------------------------------------------------
# NUMA state machine (T_non 12, T_rec 6, waitCycle 1)
# ---------------------------------------------------------------------------------------------------------------

N, R, E = eviction.ACTION_NONE, eviction.ACTION_RECLAIMED_EVICTION, eviction.ACTION_EVICTION

# min 100, low 1000 (low < 1Gi gap, so "additional" only when free < (100+1000)//2 = 550)
NUMA_SEQUENCE = [
    (800, 1, N),      # min <= free < low: c++
    (800, 2, N),
    (800, 3, N),      # c > 2 but 800 >= 550: no extra step
    (500, 5, N),      # 4 > 2 and 500 < 550: extra step
    (500, 7, R),      # 6 -> 7 > T_rec
    (2000, 6, N),     # above low: 7 - 1 = 6, capped at 6
    (2000, 5, N),
    (50, 11, R),      # below min: reclaimed now, c = 12 - 1
    (50, 11, R),      # still below min: 11 < 12 is set to 11 again; below min alone never escalates
    (500, 13, E),     # 12, then 13 (extra): >= T_non -> full eviction
    (600, 14, E),     # 14 >= 12 (600 >= 550: single step)
    (2000, 6, N),     # 13 then capped at T_rec
    (800, 7, R),
    (2000, 6, N),
    (2000, 5, N),
    (2000, 4, N),
    (2000, 3, N),
    (2000, 2, N),
    (2000, 1, N),
    (2000, 0, N),
    (2000, 0, N),     # no negative counter
]


def test_numa_state_machine_sequence():
    machine = eviction.NumaPressure()
    for index, (free, counter, action) in enumerate(NUMA_SEQUENCE):
        assert (index, machine.step(0, free, 100, 1000), machine.counters[0]) == (index, action, counter)


def test_numa_additional_pressure_by_gap_and_wait_cycle():
    # min 300000, low 2000000 > gap 262144: free 1500000 >= (300000+2000000)//2 = 1150000 but
    # < 2000000 - 262144 = 1737856, so it counts twice once c > 2
    machine = eviction.NumaPressure()
    machine.counters[1] = 2
    assert machine.step(1, 1500000, 300000, 2000000) == N and machine.counters[1] == 4
    # min 1700000: 1800000 is not < 1737856 but is < (1700000+2000000)//2 = 1850000
    machine.counters[2] = 3
    assert machine.step(2, 1800000, 1700000, 2000000) == N and machine.counters[2] == 5
    # neither: free 1990000
    machine.counters[3] = 3
    assert machine.step(3, 1990000, 1700000, 2000000) == N and machine.counters[3] == 4
    # waitCycle 3: below min sets c = 12 - 3 = 9; a counter already >= T_non is left alone -> full eviction
    custom = eviction.NumaPressure(wait_cycle=3)
    assert custom.step(0, 0, 10, 20) == R and custom.counters[0] == 9
    custom.counters[0] = 15
    assert custom.step(0, 0, 10, 20) == E and custom.counters[0] == 15


def test_numa_update_from_readings():
    machine = eviction.NumaPressure()
    zone_ok = {"zoneinfo": {"free": 3000000, "min": 10000, "low": 2000000, "inactive_file": 5000000}}
    zone_below_min = {"zoneinfo": {"free": 200000, "min": 10000, "low": 2000000, "inactive_file": 5000000}}
    assert machine.update({0: zone_ok, 1: zone_below_min, 2: {}}) == {0: N, 1: R, 2: N}
    assert machine.counters == {0: 0, 1: 11, 2: 0}
    assert machine.watermarks == {0: (3000000, 272144, 2065536), 1: (200000, 272144, 2065536)}
    assert len(machine.errors) == 1 and "NUMA 2" in machine.errors[0]
    # NUMA 1 recovers into the band: 200000 -> 1000000 (>= 272144, < 2065536, 1000000 < (272144+2065536)//2 = 1168840)
    zone_band = {"zoneinfo": {"free": 1000000, "min": 10000, "low": 2000000, "inactive_file": 5000000}}
    assert machine.update({0: zone_ok, 1: zone_band, 2: None}) == {0: N, 1: E, 2: N}
    assert machine.counters[1] == 13 and machine.errors


# ---------------------------------------------------------------------------------------------------------------
# victims
# ---------------------------------------------------------------------------------------------------------------

R1 = pod("r1", "reclaimed_cores")
R2 = pod("r2", "reclaimed_cores")
R3 = pod("r3", "reclaimed_cores", priority=-1)
S1 = pod("s1", "shared_cores", priority=0)
S2 = pod("s2", "dedicated_cores", priority=100)
TINY = pod("tiny", "reclaimed_cores")
NOREAD = pod("noread", "reclaimed_cores")
# NUMA total 100Gi: 0.001 of it = 107374182.4 bytes; tiny 100Mi = 104857600 is below, 103Mi = 108003328 above
NUMA_USAGE = {"uid-r1": 10 * GI, "uid-r2": 20 * GI, "uid-r3": GI, "uid-s1": 50 * GI, "uid-s2": 60 * GI, "uid-tiny": 100 * MI}
ALL = [R1, R2, R3, S1, S2, TINY, NOREAD]


def test_numa_candidates():
    assert [p["metadata"]["name"] for p in eviction.numa_candidates(ALL, 100 * GI, NUMA_USAGE)] == ["r1", "r2", "r3", "s1", "s2"]
    usage = dict(NUMA_USAGE, **{"uid-tiny": 103 * MI})
    assert "tiny" in [p["metadata"]["name"] for p in eviction.numa_candidates(ALL, 100 * GI, usage)]
    assert eviction.numa_candidates(ALL, 0, NUMA_USAGE) == []
    assert eviction.numa_candidates(ALL, None, NUMA_USAGE) == []


@pytest.mark.parametrize("action, top_n, expected", [
    (R, 10, ["r3", "r2", "r1"]),            # reclaimed only; priority -1 first, then usage 20Gi > 10Gi
    (R, 2, ["r3", "r2"]),
    (E, 10, ["r3", "r2", "r1", "s1", "s2"]),  # reclaimed first even if smaller; s1 priority 0 before s2 priority 100
    (E, 4, ["r3", "r2", "r1", "s1"]),
    (N, 10, []),
    (R, 0, []),
])
def test_rank_victims(action, top_n, expected):
    pods = [S2, S1, R1, R2, R3]
    ranked = eviction.rank_victims(pods, action, NUMA_USAGE, top_n)
    assert [p["metadata"]["name"] for p in ranked] == expected


def test_rank_victims_ties_and_missing_usage():
    a, b, c = pod("b-pod", "reclaimed_cores"), pod("a-pod", "reclaimed_cores"), pod("c-pod", "reclaimed_cores")
    usage = {"uid-b-pod": GI, "uid-a-pod": GI}
    ranked = eviction.rank_victims([c, a, b], R, usage, 3)
    assert [p["metadata"]["name"] for p in ranked] == ["a-pod", "b-pod", "c-pod"]


def test_numa_eviction_plan():
    totals = {0: 100 * GI, 1: 100 * GI}
    usage = {0: NUMA_USAGE, 1: {"uid-s1": 10 * GI, "uid-r1": 5 * GI}}
    plan = eviction.numa_eviction_plan(ALL, {0: R, 1: N}, totals, usage, 2, watermarks={0: (5, 10, 20)})
    assert names(plan) == ["r3", "r2"] and plan.conditions == ()
    assert {e.grace_period_seconds for e in plan.evictions} == {1}          # reclaimed grace 1 s
    assert "NUMA 0 free/min/low pages=5/10/20" in plan.evictions[0].reason_message
    # NUMA 1 full eviction: r1 then s1 there; r3 r2 from NUMA 0 (top 2); union by uid; grace -1 -> None
    plan = eviction.numa_eviction_plan(ALL, {1: E, 0: R}, totals, usage, 2)
    assert names(plan) == ["r3", "r2", "r1", "s1"]
    assert {e.grace_period_seconds for e in plan.evictions} == {None}
    plan = eviction.numa_eviction_plan(ALL, {0: E, 1: E}, totals, {0: {"uid-r1": GI}, 1: {"uid-r1": GI}}, 2)
    assert names(plan) == ["r1"]                                              # same pod on two NUMAs: once
    assert eviction.numa_eviction_plan(ALL, {0: N, 1: N}, totals, usage, 2) == eviction.Plan((), ())
    assert eviction.numa_eviction_plan(ALL, {0: R}, None, None, 2) == eviction.Plan((), ())


# ---------------------------------------------------------------------------------------------------------------
# system memory pressure
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("free, total, wsf, minimum, threshold, met", [
    # 64Gi * 10 / 10000 = 68719476.736 bytes
    (68719476, 64 * GI, 10, 0, 68719476.736, True),
    (68719477, 64 * GI, 10, 0, 68719476.736, False),
    # the minimum wins: max(1Gi, 68719476.736)
    (GI - 1, 64 * GI, 10, GI, float(GI), True),
    (GI, 64 * GI, 10, GI, float(GI), False),
    # wsf 0 and minimum 0: threshold 0, nothing is below it
    (0, 64 * GI, 0, 0, 0.0, False),
])
def test_system_memory_threshold(free, total, wsf, minimum, threshold, met):
    assert eviction.system_memory_threshold(total, wsf, minimum) == threshold
    assert eviction.system_memory_pressure(free, total, wsf, minimum) is met


def test_system_memory_pressure_plan():
    usage = {"uid-r1": GI, "uid-r2": 2 * GI, "uid-s1": 5 * GI}
    pods = [S1, R1, R2]
    plan = eviction.system_memory_pressure_plan(pods, 68719476, 64 * GI, 10, usage, 5)
    assert names(plan) == ["r2", "r1"] and {e.grace_period_seconds for e in plan.evictions} == {1}
    assert plan.conditions == (eviction.Condition("MemoryPressure", ("NoSchedule",)),)
    assert "68719476.736" in plan.evictions[0].threshold
    plan = eviction.system_memory_pressure_plan(pods, 64 * GI, 64 * GI, 10, usage, 5, kswapd_pressure=True)
    assert names(plan) == ["r2", "r1", "s1"] and {e.grace_period_seconds for e in plan.evictions} == {None}
    assert eviction.system_memory_pressure_plan(pods, 64 * GI, 64 * GI, 10, usage, 5) == eviction.Plan((), ())


def test_kswapd_rate_detector():
    detector = eviction.KswapdRateDetector()
    steps = [
        (0, 0, False),            # no previous sample
        (5, 10000, False),        # 10000/5 = 2000 >= 2000: exceed since t=0, for 5 s
        (5, 99999, False),        # same sample time: skipped
        (65, 130000, False),      # 120000/60 = 2000: 65 s
        (120, 240000, True),      # 110000/55 = 2000: 120 s >= 120
        (125, 249995, False),     # 9995/5 = 1999: reset
        (130, 259995, False),     # 2000 again: exceed since 125, 5 s
    ]
    for index, (when, steal, expected) in enumerate(steps):
        assert (index, detector.update(steal, when)) == (index, expected)
    assert detector.exceed_start == 125
    assert detector.update(None, 135) is False and detector.previous is None
    assert detector.update(300000, 140) is False          # previous missing: only remember
    # a custom threshold: 100 pages/s for 10 s
    custom = eviction.KswapdRateDetector(rate_threshold=100, duration_threshold=10)
    assert [custom.update(s, t) for t, s in ((0, 0), (5, 500), (10, 1000))] == [False, False, True]


# ---------------------------------------------------------------------------------------------------------------
# reclaimed-resource eviction
# ---------------------------------------------------------------------------------------------------------------

def reclaimed_pod(name, millicpu, memory, qos="reclaimed_cores"):
    containers = [{"name": "c%d" % index, "resources": {"requests": {eviction.RECLAIMED_MILLICPU: cpu, eviction.RECLAIMED_MEMORY: mem}}}
                  for index, (cpu, mem) in enumerate(zip(millicpu, memory))]
    return pod(name, qos, containers=containers)


RP1 = reclaimed_pod("rp1", ["8k", "4000"], ["8Gi", "8Gi"])      # 12000 millicpu, 16Gi
RP2 = reclaimed_pod("rp2", ["9000"], ["8Gi"])                   # 9000, 8Gi
RP3 = reclaimed_pod("rp3", ["9000"], ["1Gi"])                   # tie with rp2 on millicpu
BIG_SHARED = reclaimed_pod("shared", ["100k"], ["100Gi"], qos="shared_cores")
ALLOC = {eviction.RECLAIMED_MILLICPU: "4k", eviction.RECLAIMED_MEMORY: "8Gi"}     # x5: 20000 millicpu, 40Gi


@pytest.mark.parametrize("pods, alloc, thresholds, skip, expected", [
    # memory 24Gi <= 40Gi; millicpu 21000 > 20000 -> met on millicpu
    ([RP1, RP2, BIG_SHARED], ALLOC, None, (), (eviction.RECLAIMED_MILLICPU, 21000, 20000.0, 4000, 5.0)),
    # 12000 + 8000 = 20000 is not > 20000
    ([RP1, reclaimed_pod("x", ["8000"], ["1Gi"])], ALLOC, None, (), None),
    ([RP1], ALLOC, None, (), None),
    ([BIG_SHARED], ALLOC, None, (), None),
    # memory checked first by name: 16Gi+8Gi = 24Gi > 2.0 x 8Gi = 16Gi
    ([RP1, RP2], ALLOC, {eviction.RECLAIMED_MILLICPU: 5.0, eviction.RECLAIMED_MEMORY: 2.0}, (),
     (eviction.RECLAIMED_MEMORY, 24 * GI, 16.0 * GI, 8 * GI, 2.0)),
    # no threshold for a resource: not checked
    ([RP1, RP2], ALLOC, {eviction.RECLAIMED_MEMORY: 5.0}, (), None),
    # resource missing from allocatable: not checked
    ([RP1, RP2], {eviction.RECLAIMED_MEMORY: "8Gi"}, None, (), None),
    # zero allocatable: threshold 0 -> met unless skipped
    ([RP2], {eviction.RECLAIMED_MILLICPU: "0", eviction.RECLAIMED_MEMORY: "100Gi"}, None, (),
     (eviction.RECLAIMED_MILLICPU, 9000, 0.0, 0, 5.0)),
    ([RP2], {eviction.RECLAIMED_MILLICPU: "0", eviction.RECLAIMED_MEMORY: "100Gi"}, None, (eviction.RECLAIMED_MILLICPU,), None),
])
def test_reclaimed_resource_threshold_met(pods, alloc, thresholds, skip, expected):
    met = eviction.reclaimed_resource_threshold_met(pods, alloc, thresholds, skip)
    assert (tuple(met) if met else None) == expected


def test_reclaimed_requests_sum_init_containers_and_overhead():
    # reclaimed_millicpu "1.5" + "2.5" = 4 exactly (summed as quantities, then Value(); per-container rounding would give 5)
    halves = pod("h", "reclaimed_cores", containers=[
        {"name": "a", "resources": {"requests": {eviction.RECLAIMED_MILLICPU: "1.5", "cpu": "100m"}}},
        {"name": "b", "resources": {"requests": {eviction.RECLAIMED_MILLICPU: "2.5"}}}])
    # containers 1000 + overhead 500 = 1500; init 3000 > 1500 replaces it; init memory 1Gi < 2Gi does not
    main_requests = {eviction.RECLAIMED_MILLICPU: "1000", eviction.RECLAIMED_MEMORY: "2Gi"}
    init_requests = {eviction.RECLAIMED_MILLICPU: "3000", eviction.RECLAIMED_MEMORY: "1Gi"}
    with_init = pod("i", "reclaimed_cores", containers=[{"name": "a", "resources": {"requests": main_requests}}],
                    overhead={eviction.RECLAIMED_MILLICPU: "500"},
                    initContainers=[{"name": "init", "resources": {"requests": init_requests}}, {"name": "init2", "resources": {}}])
    # only an init container requests memory: it counts
    init_only = pod("o", "reclaimed_cores", initContainers=[{"name": "init", "resources": {"requests": {eviction.RECLAIMED_MEMORY: "1Gi"}}}])
    alloc = {eviction.RECLAIMED_MILLICPU: "1", eviction.RECLAIMED_MEMORY: "1"}
    rates = {eviction.RECLAIMED_MILLICPU: 1.0, eviction.RECLAIMED_MEMORY: 1.0}
    met = eviction.reclaimed_resource_threshold_met([halves, with_init, init_only], alloc, rates)
    # memory first by name: 2Gi + 1Gi = 3Gi > 1
    assert tuple(met) == (eviction.RECLAIMED_MEMORY, 3 * GI, 1.0, 1, 1.0)
    met = eviction.reclaimed_resource_threshold_met([halves, with_init], alloc, {eviction.RECLAIMED_MILLICPU: 1.0})
    assert tuple(met) == (eviction.RECLAIMED_MILLICPU, 3004, 1.0, 1, 1.0)       # 4 + 3000
    assert names(eviction.reclaimed_resource_plan([halves, with_init], met, 2)) == ["i", "h"]


def test_reclaimed_resource_plan():
    met = eviction.reclaimed_resource_threshold_met([RP3, RP1, RP2, BIG_SHARED], ALLOC)
    assert met.used == 30000
    plan = eviction.reclaimed_resource_plan([RP3, RP1, RP2, BIG_SHARED], met, 3)
    assert names(plan) == ["rp1", "rp2", "rp3"]         # 12000 first; 9000 tie broken by name
    assert {e.grace_period_seconds for e in plan.evictions} == {60}
    assert "5 x allocatable 4000 = 20000" in plan.evictions[0].threshold and plan.evictions[0].reading == "requested 30000"
    assert names(eviction.reclaimed_resource_plan([RP3, RP1, RP2], met, 1)) == ["rp1"]
    assert eviction.reclaimed_resource_plan([RP1], None, 3) == eviction.Plan((), ())


# ---------------------------------------------------------------------------------------------------------------
# protections, records, conditions, rate limiting
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("candidate, expected", [
    (pod("plain"), True),
    (pod("rec", "reclaimed_cores"), True),
    (pod("sys", "system_cores"), False),
    (pod("dne", annotations={"katalyst.kubewharf.io/do-not-evict": "true"}), False),
    (pod("dne2", annotations={"katalyst.kubewharf.io/do-not-evict": "True"}), False),
    (pod("dne3", annotations={"katalyst.kubewharf.io/do-not-evict": "false"}), True),
    (pod("mirror", annotations={"kubernetes.io/config.mirror": "abc", "kubernetes.io/config.source": "file"}), False),
    (pod("static", annotations={"kubernetes.io/config.source": "file"}), False),
    (pod("apisource", annotations={"kubernetes.io/config.source": "api"}), True),
    (pod("critical", priority=2000000000), False),
    (pod("high", priority=1999999999), True),
    (dict(pod("ds"), metadata=dict(pod("ds")["metadata"], ownerReferences=[{"kind": "DaemonSet", "name": "x"}])), True),
    (pod("badqos", annotations={QOS: "bogus"}), True),
    (None, False),
    ({}, False),
])
def test_is_evictable(candidate, expected):
    assert eviction.is_evictable(candidate) is expected


def test_skip_keys_and_evictable_pods():
    annotated = pod("a", annotations={"example.com/keep": ""})
    labelled = pod("l", labels={"example.com/keep": "x"})
    assert eviction.is_evictable(annotated) and eviction.is_evictable(labelled)
    assert not eviction.is_evictable(annotated, skipped_annotation_keys=("example.com/keep",))
    assert not eviction.is_evictable(labelled, skipped_label_keys=("example.com/keep",))
    kept = eviction.evictable_pods([pod("x"), pod("s", "system_cores"), None, pod("y")])
    assert [p["metadata"]["name"] for p in kept] == ["x", "y"]
    assert eviction.evictable_pods(None) == []


def test_plan_builders_apply_protections():
    keep = pod("keep", "reclaimed_cores", annotations={"katalyst.kubewharf.io/do-not-evict": "true"})
    static = pod("static", "reclaimed_cores", annotations={"kubernetes.io/config.source": "file"})
    system = pod("sys", "system_cores")
    free = pod("free", "reclaimed_cores")
    pods = [keep, static, system, free]
    usage = {"uid-" + n: {"used": 50 * GI} for n in ("keep", "static", "sys", "free")}
    assert names(eviction.rootfs_top_eviction_pods(pods, usage, CAP, rootfs(), 5, FREE_MET)) == ["free"]
    numa_usage = {0: {"uid-" + n: 50 * GI for n in ("keep", "static", "sys", "free")}}
    assert names(eviction.numa_eviction_plan(pods, {0: E}, {0: 100 * GI}, numa_usage, 5)) == ["free"]
    assert names(eviction.system_memory_pressure_plan(pods, 0, 64 * GI, 10, numa_usage[0], 5, kswapd_pressure=True)) == ["free"]
    big = [reclaimed_pod("keep", ["30000"], ["1Gi"]), reclaimed_pod("free", ["1000"], ["1Gi"])]
    big[0]["metadata"]["annotations"]["katalyst.kubewharf.io/do-not-evict"] = "true"
    met = eviction.reclaimed_resource_threshold_met(big, ALLOC)       # protected pods still count in the sum: 31000 > 20000
    assert met.used == 31000 and names(eviction.reclaimed_resource_plan(big, met, 5)) == ["free"]


def test_pod_helpers():
    assert eviction.pod_key({"metadata": {"name": "n"}}) == "default/n"
    assert eviction.pod_priority({"spec": {}}) == 0 and eviction.pod_priority(None) == 0
    assert eviction.is_reclaimed(pod("x", annotations={QOS: "bogus"})) is False


def test_make_eviction_and_immutability():
    record = eviction.make_eviction(pod("p"), "plug", "thr", "read", "why", 0)
    assert record.grace_period_seconds is None
    assert record.reason_message == "plug: why (threshold thr, reading read)"
    assert eviction.make_eviction(pod("p"), "plug", "thr", "read", "why", None).grace_period_seconds is None
    assert eviction.make_eviction(pod("p"), "plug", "thr", "read", "why", 7).grace_period_seconds == 7
    with pytest.raises(AttributeError):
        record.uid = "x"
    with pytest.raises(Exception):
        eviction.RootfsThresholds().enabled = True


def test_condition_taint_and_merge():
    condition = eviction.Condition("SystemRootfs", ("NoSchedule", "NoSchedule", "Bogus", "NoExecute"))
    assert eviction.condition_taint(condition) == [{"key": "node.katalyst.kubewharf.io/SystemRootfs", "effect": "NoSchedule"},
                                                   {"key": "node.katalyst.kubewharf.io/SystemRootfs", "effect": "NoExecute"}]
    first = eviction.make_eviction(pod("a"), "p1", "t", "r", "m", 1)
    dup = eviction.make_eviction(pod("a"), "p2", "t", "r", "m", 1)
    other = eviction.make_eviction(pod("b"), "p2", "t", "r", "m", 1)
    mem = eviction.Condition("MemoryPressure", ("NoSchedule",))
    merged = eviction.merge_plans([eviction.Plan((first,), (mem,)), eviction.Plan((dup, other), (mem,))])
    assert merged == eviction.Plan((first, other), (mem,))


def test_condition_tracker_transition_period():
    tracker = eviction.ConditionTracker()
    rootfs_cond = eviction.Condition("SystemRootfs", ("NoSchedule",))
    mem = eviction.Condition("MemoryPressure", ("NoSchedule",))
    assert tracker.update([rootfs_cond], 0) == (rootfs_cond,)
    assert tracker.update([mem], 100) == (mem, rootfs_cond)         # sorted by name
    assert tracker.update([], 299) == (mem, rootfs_cond)
    assert tracker.update([], 300) == (mem,)                        # 300 s after 0: expired
    assert tracker.update([], 400) == ()
    assert eviction.CONDITION_TRANSITION_PERIOD == 300 and eviction.EVICTION_MANAGER_SYNC_PERIOD == 5


def test_rate_limiter():
    limiter = eviction.EvictionRateLimiter(max_evictions=2, period=60, pod_cooldown=300)
    a, b, c = (eviction.make_eviction(pod(n), "p", "t", "r", "m", 1) for n in "abc")
    allowed, deferred = limiter.admit([a, b, c], 0)
    assert allowed == (a, b) and deferred == (c,)
    assert limiter.admit([c], 30) == ((), (c,))                     # 2 in the last 60 s
    assert limiter.admit([c, a], 60) == ((c,), (a,))                # window slid; a cools down until 300
    assert limiter.in_cooldown("ns/a", 299) and not limiter.in_cooldown("ns/a", 300)
    assert limiter.admit([a], 300) == ((a,), ())
    assert not limiter.in_cooldown("ns/zzz", 0)
    zero = eviction.EvictionRateLimiter(max_evictions=0, period=1)
    assert zero.admit([a], 0) == ((), (a,))


@pytest.mark.parametrize("args", [(-1, 60, 0), (1, 0, 0), (1, 60, -1)])
def test_rate_limiter_bad_arguments(args):
    with pytest.raises(ValueError, match="rate limiter"):
        eviction.EvictionRateLimiter(*args)
