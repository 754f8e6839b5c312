# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""Cgroup file encodings (node spec §1.4 tables); expected values worked by hand from the tables."""

from __future__ import annotations

import pytest

from ansible_collections.katalyst.colocation.plugins.module_utils import cgroupv2
from ansible_collections.katalyst.colocation.plugins.module_utils.cgroupv2 import CgroupDataError

GI = 1 << 30


@pytest.mark.parametrize("shares, weight", [
    (0, None),              # 0 -> 0 -> not written
    (2, "1"),               # 1 + 0
    (1024, "39"),           # 1 + (1022*9999)//262142 = 1 + 10218978//262142 = 1 + 38
    (262144, "10000"),      # 1 + 262142*9999//262142
])
def test_cpu_weight(shares, weight):
    assert cgroupv2.cpu_weight(shares) == weight


@pytest.mark.parametrize("shares", [1, 262145, -1, True, "1024", 1.5])
def test_cpu_weight_refuses(shares):
    with pytest.raises(CgroupDataError, match="shares"):
        cgroupv2.cpu_weight(shares)


@pytest.mark.parametrize("quota, period, text", [
    (50000, 100000, "50000 100000"),
    (-1, 100000, "max 100000"),
    (0, 50000, "max 50000"),
    (20000, 0, "20000 100000"),
    (-1, 0, "max 100000"),
    (0, 0, None),
])
def test_cpu_max(quota, period, text):
    assert cgroupv2.cpu_max(quota, period) == text


@pytest.mark.parametrize("quota, period, field", [(1, -1, "cpu_period"), ("1", 100000, "cpu_quota"), (1 << 63, 0, "cpu_quota")])
def test_cpu_max_refuses(quota, period, field):
    with pytest.raises(CgroupDataError, match=field):
        cgroupv2.cpu_max(quota, period)


@pytest.mark.parametrize("func, value, text", [
    (cgroupv2.memory_max, -1, "max"),
    (cgroupv2.memory_max, 0, None),
    (cgroupv2.memory_max, GI, "1073741824"),
    (cgroupv2.memory_limit_in_bytes, -1, "-1"),
    (cgroupv2.memory_limit_in_bytes, 0, None),
    (cgroupv2.memory_limit_in_bytes, 4096, "4096"),
    (cgroupv2.memory_high, -5, "max"),
    (cgroupv2.memory_high, 0, None),
    (cgroupv2.memory_high, 100, "100"),
    (cgroupv2.memory_swap_max, -1, "0"),
    (cgroupv2.memory_swap_max, 0, None),
    (cgroupv2.memory_swap_max, 4096, "4096"),
])
def test_memory_encodings(func, value, text):
    assert func(value) == text


@pytest.mark.parametrize("value, text", [(0, None), (-1, None), (5, "5")])
def test_positive_only(value, text):
    assert cgroupv2.positive_only("min_in_bytes", value) == text


@pytest.mark.parametrize("func, value", [
    (cgroupv2.memory_max, -2),
    (cgroupv2.memory_limit_in_bytes, -2),
    (cgroupv2.memory_high, "1"),
    (cgroupv2.memory_swap_max, 1.0),
    (cgroupv2.memory_max, None),
])
def test_memory_encodings_refuse(func, value):
    with pytest.raises(CgroupDataError):
        func(value)


def test_v2_memory_all_fields_in_katalyst_order():
    data = {"limit_in_bytes": -1, "soft_limit_in_bytes": GI, "min_in_bytes": 2048, "high_in_bytes": -1,
            "tcp_mem_limit_in_bytes": 4096, "wmark_ratio": 20, "swap_max_in_bytes": -1}
    files = cgroupv2.cgroup_files("v2", memory=data)
    assert list(files.items()) == [("memory.max", "max"), ("memory.low", "1073741824"), ("memory.min", "2048"),
                                   ("memory.high", "max"), ("memory.wmark_ratio", "20"), ("memory.swap.max", "0")]


def test_v1_memory_all_fields_in_katalyst_order():
    data = {"limit_in_bytes": -1, "soft_limit_in_bytes": GI, "min_in_bytes": 2048, "high_in_bytes": -1,
            "tcp_mem_limit_in_bytes": 4096, "wmark_ratio": 20, "swap_max_in_bytes": -1}
    files = cgroupv2.cgroup_files("v1", memory=data)
    assert list(files.items()) == [("memory.limit_in_bytes", "-1"), ("memory.soft_limit_in_bytes", "1073741824"),
                                   ("memory.kmem.tcp.limit_in_bytes", "4096"), ("memory.wmark_ratio", "20")]


def test_zero_values_write_nothing():
    assert cgroupv2.cgroup_files("v2", memory={}, cpu={}, cpuset={}) == {}
    assert cgroupv2.cgroup_files("v1", memory={"limit_in_bytes": 0}, cpu={"shares": 0}, cpuset={"cpus": ""}) == {}


def test_v2_cpu_and_cpuset():
    files = cgroupv2.cgroup_files("v2", cpu={"shares": 1024, "cpu_quota": 200000, "cpu_period": 0, "cpu_idle": True, "cpu_burst": 0},
                                  cpuset={"cpus": "0-3", "mems": "0", "migrate": "true"})
    assert list(files.items()) == [("cpu.weight", "39"), ("cpu.max", "200000 100000"), ("cpu.idle", "1"), ("cpu.max.burst", "0"),
                                   ("cpuset.cpus", "0-3"), ("cpuset.memory_migrate", "1"), ("cpuset.mems", "0")]


def test_v1_cpu():
    files = cgroupv2.cgroup_files("v1", cpu={"shares": 1024, "cpu_quota": -1, "cpu_period": 100000, "cpu_idle": False, "cpu_burst": 25000})
    assert list(files.items()) == [("cpu.shares", "1024"), ("cpu.cfs_period_us", "100000"), ("cpu.cfs_quota_us", "-1"),
                                   ("cpu.idle", "0"), ("cpu.cfs_burst_us", "25000")]


@pytest.mark.parametrize("kwargs, match", [
    ({"memory": {"limit": 1}}, "unknown memory field"),
    ({"cpu": {"quota": 1}}, "unknown cpu field"),
    ({"cpuset": {"cpu": "0"}}, "unknown cpuset field"),
    ({"cpu": {"cpu_idle": 1}}, "cpu_idle"),
    ({"cpu": {"cpu_burst": -1}}, "cpu_burst"),
    ({"cpuset": {"cpus": 3}}, "cpus"),
    ({"memory": {"wmark_ratio": 1 << 31}}, "wmark_ratio"),
])
def test_bad_data(kwargs, match):
    with pytest.raises(CgroupDataError, match=match):
        cgroupv2.cgroup_files("v2", **kwargs)


def test_bad_version():
    with pytest.raises(CgroupDataError, match="'v3'"):
        cgroupv2.cgroup_files("v3", memory={})


def test_plan_file_writes_only_what_differs():
    wanted = {"cpu.max": "50000 100000", "cpu.weight": "39", "cpu.idle": "1"}
    current = {"cpu.max": "50000 100000\n", "cpu.weight": "100\n"}
    plan = cgroupv2.plan_file_writes("/sys/fs/cgroup/kubepods/", wanted, current, "why")
    assert [c.as_dict() for c in plan] == [
        {"kind": "cgroup_file", "target": "/sys/fs/cgroup/kubepods/cpu.weight", "action": "set", "before": "100\n", "after": "39",
         "reason": "why"},
        {"kind": "cgroup_file", "target": "/sys/fs/cgroup/kubepods/cpu.idle", "action": "set", "before": None, "after": "1",
         "reason": "why"},
    ]
    assert not cgroupv2.plan_file_writes("/cg", {"cpu.idle": "1"}, {"cpu.idle": " 1 "})
