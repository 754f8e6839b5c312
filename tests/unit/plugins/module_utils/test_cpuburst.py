# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""CPU burst (node spec §1.1, §1.4 CpuBurst); burst values worked by hand from uint64(float64(quota) * percent / 100)."""

from __future__ import annotations

import pytest

from ansible_collections.katalyst.colocation.plugins.module_utils import cpuburst


@pytest.mark.parametrize("qos_level, enhancement, policy", [
    ("shared_cores", {}, "default"),
    ("shared_cores", None, "default"),
    ("shared_cores", {"cpu_burst_policy": "static"}, "static"),
    ("dedicated_cores", {"cpu_burst_policy": "dynamic"}, "dynamic"),
    ("system_cores", {"cpu_burst_policy": "closed"}, "closed"),
    ("dedicated_cores", {"cpu_burst_policy": "bogus"}, "bogus"),
    ("reclaimed_cores", {"cpu_burst_policy": "static"}, "closed"),
    ("reclaimed_cores", {"cpu_burst_policy": "dynamic"}, "closed"),
    ("reclaimed_cores", {"cpu_burst_policy": "closed"}, "closed"),
    ("reclaimed_cores", {"cpu_burst_policy": ""}, "closed"),
    ("reclaimed_cores", {}, "default"),
])
def test_burst_policy(qos_level, enhancement, policy):
    assert cpuburst.burst_policy(qos_level, enhancement) == policy


@pytest.mark.parametrize("text, percent", [
    ("50", 50.0), ("0", 0.0), ("100", 100.0), ("150", 100.0), ("12.5", 12.5), (".5", 0.5), ("1.", 1.0),
    ("1e2", 100.0), ("+20", 20.0), ("inf", 100.0), ("Infinity", 100.0),
])
def test_burst_percent(text, percent):
    assert cpuburst.burst_percent({"cpu_burst_percent": text}) == percent


def test_burst_percent_missing():
    assert cpuburst.burst_percent({"cpu_burst_policy": "static"}) is None
    assert cpuburst.burst_percent(None) is None


@pytest.mark.parametrize("text, match", [
    ("abc", "'abc' is not a number"), ("", "'' is not a number"), (" 50", "' 50' is not a number"),
    ("1_0", "'1_0' is not a number"), ("nan", "'nan' is not a number"), ("0x1p4", "not a number"),
    (50, "50 is not a number"), ("1e400", "'1e400' is out of range"), ("-5", "'-5' is negative"), ("-inf", "negative"),
])
def test_burst_percent_refuses(text, match):
    with pytest.raises(ValueError, match=match):
        cpuburst.burst_percent({"cpu_burst_percent": text})


@pytest.mark.parametrize("quota, percent, value", [
    (50000, 50, 25000),
    (100000, 100.0, 100000),
    (33333, 33.3, 11099),       # 33333 * 33.3 = 1109988.9; / 100 = 11099.889 -> 11099
    (1, 99.9, 0),               # 0.999 truncated
    (50000, 0, 0),
])
def test_burst_value(quota, percent, value):
    assert cpuburst.burst_value(quota, percent) == value


@pytest.mark.parametrize("quota, percent", [(0, 50), (-1, 50), (True, 50), ("100", 50), (100, 101), (100, -1), (100, True), (100, "5")])
def test_burst_value_refuses(quota, percent):
    with pytest.raises(ValueError):
        cpuburst.burst_value(quota, percent)


@pytest.mark.parametrize("version, text, quota", [
    ("v1", "50000\n", 50000), ("v1", "-1\n", None), ("v1", "0", None),
    ("v2", "max 100000\n", None), ("v2", "150000 100000\n", 150000),
])
def test_parse_quota(version, text, quota):
    assert cpuburst.parse_quota(version, text) == quota


@pytest.mark.parametrize("version, text", [("v2", "50000"), ("v1", "max"), ("v1", None), ("v2", "max max"), ("v3", "1")])
def test_parse_quota_refuses(version, text):
    with pytest.raises(ValueError, match="cannot parse"):
        cpuburst.parse_quota(version, text)


def pod(policy=None, percent=None, qos="shared_cores", containers=None, name="ns/p"):
    enhancement = {}
    if policy is not None:
        enhancement["cpu_burst_policy"] = policy
    if percent is not None:
        enhancement["cpu_burst_percent"] = percent
    return {"name": name, "qos_level": qos, "cpu_enhancement": enhancement,
            "containers": containers if containers is not None else [{"name": "c", "cgroup": "/cg/c", "quota": "200000 100000", "burst": "0"}]}


def writes(plan):
    return [(c.target, c.before, c.after) for c in plan]


def test_static_writes_quota_times_percent_v2():
    plan = cpuburst.plan_container_bursts([pod("static", "50")], "v2")
    assert writes(plan) == [("/cg/c/cpu.max.burst", "0", "100000")]
    assert plan.changes[0].kind == "cgroup_file"
    assert not plan.warnings


def test_static_unchanged_is_not_written():
    containers = [{"name": "c", "cgroup": "/cg/c", "quota": "200000 100000", "burst": "100000\n"}]
    assert not cpuburst.plan_container_bursts([pod("static", "50", containers=containers)], "v2")


def test_static_without_percent_uses_default_100_or_the_given_default():
    containers = [{"name": "c", "cgroup": "/cg/c", "quota": "50000\n", "burst": "0\n"}]
    assert writes(cpuburst.plan_container_bursts([pod("static", containers=containers)], "v1")) == [("/cg/c/cpu.cfs_burst_us", "0\n", "50000")]
    assert writes(cpuburst.plan_container_bursts([pod("static", containers=containers)], "v1", default_percent=20)) == [
        ("/cg/c/cpu.cfs_burst_us", "0\n", "10000")]


def test_static_unlimited_quota_gets_no_burst():
    containers = [{"name": "a", "cgroup": "/cg/a", "quota": "max 100000", "burst": "0"},
                  {"name": "b", "cgroup": "/cg/b", "quota": "-1", "burst": "0"}]
    assert not cpuburst.plan_container_bursts([pod("static", "80", containers=containers[:1])], "v2")
    assert not cpuburst.plan_container_bursts([pod("static", "80", containers=containers[1:])], "v1")


def test_closed_writes_zero_even_with_unlimited_quota():
    containers = [{"name": "a", "cgroup": "/cg/a", "quota": "-1", "burst": "20000"}]
    assert writes(cpuburst.plan_container_bursts([pod("closed", containers=containers)], "v1")) == [("/cg/a/cpu.cfs_burst_us", "20000", "0")]


def test_reclaimed_static_is_closed():
    plan = cpuburst.plan_container_bursts([pod("static", "50", qos="reclaimed_cores")], "v2")
    assert writes(plan) == []          # burst already "0"
    containers = [{"name": "c", "cgroup": "/cg/c", "quota": "200000 100000", "burst": "5000"}]
    plan = cpuburst.plan_container_bursts([pod("static", "50", qos="reclaimed_cores", containers=containers)], "v2")
    assert writes(plan) == [("/cg/c/cpu.max.burst", "5000", "0")]


def test_default_leaves_files_alone():
    containers = [{"name": "c", "cgroup": "/cg/c", "quota": "200000 100000", "burst": "5000"}]
    plan = cpuburst.plan_container_bursts([pod(containers=containers)], "v2")
    assert not plan and not plan.warnings


@pytest.mark.parametrize("policy, percent, warning", [
    ("dynamic", None, "pod ns/p: dynamic cpu burst policy is not supported yet"),
    ("bogus", None, "pod ns/p: cpu burst policy 'bogus' is not supported"),
    ("static", "x", "pod ns/p: cpu_burst_percent='x' is not a number"),
])
def test_unsupported_policy_or_bad_percent_warns_and_writes_nothing(policy, percent, warning):
    plan = cpuburst.plan_container_bursts([pod(policy, percent)], "v2")
    assert not plan
    assert len(plan.warnings) == 1 and plan.warnings[0].startswith(warning)


def test_containers_without_cgroup_are_skipped_bad_quota_warns_unknown_burst_is_written():
    containers = [{"name": "gone", "cgroup": None, "quota": "1 100000", "burst": "0"},
                  {"name": "junk", "cgroup": "/cg/j", "quota": "garbage", "burst": "0"},
                  {"name": "new", "cgroup": "/cg/n", "quota": "100000 100000", "burst": None}]
    plan = cpuburst.plan_container_bursts([pod("static", "30", containers=containers)], "v2")
    assert writes(plan) == [("/cg/n/cpu.max.burst", None, "30000")]
    assert plan.warnings == ["pod ns/p container junk: cpu.max: cannot parse 'garbage'; cpu burst not set"]


def test_several_pods_each_get_their_policy():
    closed = pod("closed", name="a/2", containers=[{"name": "c", "cgroup": "/cg/2", "quota": "1 1", "burst": "7"}])
    pods = [pod("static", "25", name="a/1"), closed]
    assert writes(cpuburst.plan_container_bursts(pods, "v2")) == [("/cg/c/cpu.max.burst", "0", "50000"), ("/cg/2/cpu.max.burst", "7", "0")]


@pytest.mark.parametrize("version, default_percent", [("v3", 100), ("v1", 150), ("v1", -1)])
def test_bad_arguments(version, default_percent):
    with pytest.raises(ValueError):
        cpuburst.plan_container_bursts([], version, default_percent)
