# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""sysadvisor memory pressure states (node spec §5.4, §6.2 min critical watermark 4Gi); numbers worked by hand."""

from __future__ import annotations

import math

import pytest

from ansible_collections.katalyst.colocation.plugins.module_utils import memorypressure
from ansible_collections.katalyst.colocation.plugins.module_utils.memorypressure import DROP_CACHE, NO_RISK, TUNE_MEMCG

GI = 1 << 30


@pytest.mark.parametrize("free, total, wsf, minimum, expected", [
    # total 100Gi, wsf 100: 2*100Gi*100/10000 = 2Gi < 4Gi -> critical 4Gi
    (3 * GI, 100 * GI, 100, None, (DROP_CACHE, 4 * GI, 5 * GI)),      # 2*4 - 3
    (4 * GI, 100 * GI, 100, None, (TUNE_MEMCG, 4 * GI, 0)),           # not below critical, below 8Gi; NUMA target 0
    (6 * GI, 100 * GI, 100, None, (TUNE_MEMCG, 4 * GI, 0)),
    (8 * GI, 100 * GI, 100, None, (NO_RISK, 4 * GI, 0)),              # 8Gi is not below 2*critical
    # total 500Gi, wsf 100: 10Gi > 4Gi
    (9 * GI, 500 * GI, 100, None, (DROP_CACHE, 10 * GI, 11 * GI)),
    # truncation: 2*12345*10/10000 = 24.69; 2*24.69 - 10 = 39.38 -> 39
    (10, 12345, 10, 0, (DROP_CACHE, 24.69, 39)),
    (0, 0, 0, 0, (NO_RISK, 0.0, 0)),
])
def test_numa_pressure(free, total, wsf, minimum, expected):
    args = () if minimum is None else (minimum,)
    condition = memorypressure.numa_pressure(free, total, wsf, *args)
    assert (condition.state, condition.target_reclaimed) == (expected[0], expected[2])
    assert math.isclose(condition.critical_watermark, expected[1])


@pytest.mark.parametrize("free, total, wsf, numas, expected", [
    # 2 NUMA: 4Gi*2 = 8Gi > 2*200Gi*100/10000 = 4Gi -> critical 8Gi
    (7 * GI, 200 * GI, 100, 2, (DROP_CACHE, 8 * GI, 9 * GI)),
    (10 * GI, 200 * GI, 100, 2, (TUNE_MEMCG, 8 * GI, 6 * GI)),       # node TuneMemCg has a target: 16 - 10
    (16 * GI, 200 * GI, 100, 2, (NO_RISK, 8 * GI, 0)),
    # 1 NUMA, 1000Gi: 20Gi > 4Gi
    (30 * GI, 1000 * GI, 100, 1, (TUNE_MEMCG, 20 * GI, 10 * GI)),
])
def test_node_pressure(free, total, wsf, numas, expected):
    condition = memorypressure.node_pressure(free, total, wsf, numas)
    assert tuple(condition) == expected


def test_pressure_states_and_record_is_immutable():
    node, numas = memorypressure.pressure_states({"free": 7 * GI, "total": 200 * GI},
                                                 {1: {"free": 9 * GI, "total": 100 * GI}, 0: {"free": 3 * GI, "total": 100 * GI}}, 100)
    assert node == (DROP_CACHE, 8 * GI, 9 * GI)
    assert list(numas) == [0, 1]
    assert numas[0] == (DROP_CACHE, 4 * GI, 5 * GI) and numas[1] == (NO_RISK, 4 * GI, 0)
    with pytest.raises(AttributeError):
        node.state = NO_RISK
    assert memorypressure.STATE_VALUES == {NO_RISK: 0, TUNE_MEMCG: 1, DROP_CACHE: 2}


def test_min_critical_watermark_is_4gi_by_default():
    assert memorypressure.numa_pressure(0, GI, 0).critical_watermark == 4 * GI
    assert memorypressure.node_pressure(0, GI, 0, 3).critical_watermark == 12 * GI


@pytest.mark.parametrize("call, match", [
    (lambda: memorypressure.numa_pressure(-1, GI, 100), "free=-1"),
    (lambda: memorypressure.numa_pressure(0, None, 100), "total=None"),
    (lambda: memorypressure.numa_pressure(0, GI, float("nan")), "scale_factor=nan"),
    (lambda: memorypressure.numa_pressure(0, GI, True), "scale_factor=True"),
    (lambda: memorypressure.numa_pressure(0, GI, 100, -1), "min_critical_watermark=-1"),
    (lambda: memorypressure.node_pressure(0, GI, 100, 0), "num_numa=0"),
    (lambda: memorypressure.node_pressure(0, GI, 100, "2"), "num_numa='2'"),
    (lambda: memorypressure.pressure_states({"free": 0, "total": GI}, {0: {"free": 0, "total": GI}, 1: {"total": GI}}, 100),
     "NUMA 1: free=None"),
    (lambda: memorypressure.pressure_states({"free": 0, "total": GI}, {0: None}, 100), "NUMA 0: free=None"),
    (lambda: memorypressure.pressure_states(None, {0: {"free": 0, "total": GI}}, 100), "free=None"),
    (lambda: memorypressure.pressure_states({"free": 0, "total": GI}, {}, 100), "num_numa=0"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_drop_cache_writes_v1_force_empty_for_reclaimed_containers_on_dropcache_numas():
    # NUMA 0 DropCache, NUMA 1 TuneMemCg: only containers on NUMA 0 (or on every NUMA: numas None) get force_empty
    conditions = {0: memorypressure.numa_pressure(3 * GI, 100 * GI, 100), 1: memorypressure.numa_pressure(6 * GI, 100 * GI, 100)}
    containers = [{"cgroup": "/a", "numas": [0, 1], "cache": 0}, {"cgroup": "/b", "numas": [1], "cache": GI},
                  {"cgroup": "/c", "numas": None, "cache": None}]
    assert memorypressure.drop_cache_writes("v1", conditions, containers) == [(0, "/a/memory.force_empty", "0"), (0, "/c/memory.force_empty", "0")]
    assert memorypressure.drop_cache_writes("v1", {1: conditions[1]}, containers) == []


def test_drop_cache_writes_v2_target_shared_out_and_bounded_by_file_cache():
    # NUMA 0: free 3Gi < critical 4Gi -> target 2*4 - 3 = 5Gi; /a holds 2Gi of cache (2Gi), /b 1Gi (no cache: skipped),
    # /c 4Gi of cache but only 5 - 2 = 3Gi of the target is left; /d nothing left
    conditions = {0: memorypressure.numa_pressure(3 * GI, 100 * GI, 100)}
    containers = [{"cgroup": "/a", "numas": [0], "cache": 2 * GI}, {"cgroup": "/b", "numas": [0], "cache": 0},
                  {"cgroup": "/c", "numas": None, "cache": 4 * GI}, {"cgroup": "/d", "numas": [0], "cache": GI}]
    assert memorypressure.drop_cache_writes("v2", conditions, containers) == [(0, "/a/memory.reclaim", str(2 * GI)),
                                                                              (0, "/c/memory.reclaim", str(3 * GI))]
    # a container on two DropCache NUMA nodes is written once, for the first: NUMA 1's 5Gi go to /e only
    both = {0: conditions[0], 1: conditions[0]}
    shared = [{"cgroup": "/c", "numas": [0, 1], "cache": 4 * GI}, {"cgroup": "/e", "numas": [1], "cache": 6 * GI}]
    assert memorypressure.drop_cache_writes("v2", both, shared) == [(0, "/c/memory.reclaim", str(4 * GI)),
                                                                    (1, "/e/memory.reclaim", str(5 * GI))]
