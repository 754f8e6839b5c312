# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""The agent's realtime overcommit pass on a sandbox sysroot (cluster spec §2.6): usage read from the pods' cgroups
(a pod without a cgroup yet counts as zero), ratios capped by the node's set ratios as katalyst ``GetOvercommitRatio``."""

from __future__ import annotations

import os

import pytest

from ansible_collections.katalyst.colocation.plugins.module_utils import nodeinfo
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons import agent_overcommit
from ansible_collections.katalyst.colocation.plugins.module_utils.sysfs import SysFS, SysFSError
from sandbox.sysroot import build_sysroot

GI = 1 << 30
CPU_RATIO = "katalyst.kubewharf.io/cpu_overcommit_ratio"
MEM_RATIO = "katalyst.kubewharf.io/memory_overcommit_ratio"


class FakeAgent:
    """What RealtimeOvercommit uses of the agent: its configuration, cgroup prefix and SysFS."""

    def __init__(self, fs):
        self.sysfs = fs
        self.config = dict(agent_overcommit.DEFAULTS, cgroup_driver="cgroupfs")

    @staticmethod
    def cgroup_prefix():
        return ""


def burstable_pod(name, cpu="2", memory="4Gi"):
    return {"metadata": {"name": name, "namespace": "default", "uid": "uid-" + name},
            "spec": {"containers": [{"name": "main", "resources": {"requests": {"cpu": cpu, "memory": memory}}}]},
            "status": {"phase": "Running", "qosClass": "Burstable"}}


def write_usage(root, facts, pod, cpu_seconds, rss_bytes):
    """The pod's cgroup with its CPU counter (v1 cpuacct.usage ns / v2 cpu.stat usec) and its RSS in memory.stat."""
    relative = "/kubepods/burstable/poduid-" + pod["metadata"]["name"]
    if facts["cgroup"]["mode"] == "v2":
        files = {"/sys/fs/cgroup%s/cpu.stat" % relative: "usage_usec %d\nuser_usec 0\n" % (cpu_seconds * 10 ** 6),
                 "/sys/fs/cgroup%s/memory.stat" % relative: "anon %d\nfile 0\n" % rss_bytes}
    else:
        mounts = facts["cgroup"]["v1_mounts"]
        files = {"%s%s/cpuacct.usage" % (mounts.get("cpuacct", "/sys/fs/cgroup/cpuacct"), relative): "%d\n" % (cpu_seconds * 10 ** 9),
                 "%s%s/memory.stat" % (mounts.get("memory", "/sys/fs/cgroup/memory"), relative): "total_rss %d\n" % rss_bytes}
    for path, content in files.items():
        os.makedirs(os.path.dirname(root + path), exist_ok=True)
        with open(root + path, "w") as handle:
            handle.write(content)
    return files


@pytest.fixture(params=["v1", "v2"])
def node(request, tmp_path):
    """A 16-CPU, 32 GiB sandbox node; returns (sysroot, facts, RealtimeOvercommit)."""
    root = build_sysroot(str(tmp_path / "s"), sockets=1, numa_per_socket=2, cores_per_numa=8, smt=1,
                         memory_per_numa_bytes=16 * GI, cgroup=request.param)
    fs = SysFS(root)
    return root, nodeinfo.gather(fs), agent_overcommit.RealtimeOvercommit(FakeAgent(fs))


def test_a_pod_without_a_cgroup_counts_as_zero_usage_next_to_pods_with_one(node):
    root, facts, realtime = node
    web, db, starting = burstable_pod("web"), burstable_pod("db"), burstable_pod("starting")
    write_usage(root, facts, web, 10, 1 * GI)
    write_usage(root, facts, db, 20, 1 * GI)
    pods = [web, starting, db]          # the kubelet has not created the cgroup of "starting" yet
    fs = realtime.agent.sysfs
    assert realtime.usage(fs, facts, pods, now=100.0) == (0.0, 2 * GI)
    write_usage(root, facts, web, 15, 1 * GI)      # 5 s of CPU in 10 s: half a core
    write_usage(root, facts, db, 25, 1 * GI)       # and another half
    # the whole pass goes on: 6 cpu / 12Gi requested, 1 core / 2Gi used on 16 cpu / 32Gi
    # cpu load max(1/6, 0.4) -> ((16000*0.6 - 1000)/0.4 + 6000)/16000 = 1.71875; memory ((32*0.8 - 2)/0.8 + 12)/32 = 1.296875
    desired = realtime.desired_annotations(facts, pods, {CPU_RATIO: "3", MEM_RATIO: "3"}, now=110.0)
    assert realtime.last_ratios == pytest.approx((1.71875, 1.296875))
    assert desired[CPU_RATIO] == "1.72" and desired[MEM_RATIO] == "1.30"
    assert sorted(realtime.previous_cpu) == ["uid-db", "uid-web"]


def test_a_cpu_counter_that_does_not_parse_is_still_an_error(node):
    root, facts, realtime = node
    if facts["cgroup"]["mode"] == "v2":
        pytest.skip("cgroup v2 cpu.stat without usage_usec reads as no counter")
    files = write_usage(root, facts, burstable_pod("web"), 10, GI)
    counter = [path for path in files if path.endswith("cpuacct.usage")][0]
    with open(root + counter, "w") as handle:
        handle.write("garbage\n")
    with pytest.raises(SysFSError, match="cpuacct.usage: expected an integer, got 'garbage'"):
        realtime.usage(realtime.agent.sysfs, facts, [burstable_pod("web")], now=1.0)


@pytest.mark.parametrize("node_annotations, expected", [
    ({}, ("1.00", "1.00")),                                        # no set ratio: Katalyst starts from 1 -> reports 1
    ({CPU_RATIO: "1", MEM_RATIO: "1"}, ("1.00", "1.00")),          # what the controller writes on nodes outside every pool
    ({CPU_RATIO: "1.5", MEM_RATIO: "1.1"}, ("1.50", "1.10")),      # the set ratio bounds the realtime one
    ({CPU_RATIO: "3", MEM_RATIO: "2"}, ("1.75", "1.17")),          # below the set ratio: the realtime ratio as computed
    ({CPU_RATIO: "bad", MEM_RATIO: "1e400"}, ("1.00", "1.00")),    # unparsable (or out of range) set ratio -> 1
    ({CPU_RATIO: "NaN", MEM_RATIO: "Inf"}, ("1.75", "1.17")),      # Go: realtime >= NaN is false -> the realtime ratio
])
def test_reported_ratio_is_capped_by_the_node_set_ratio(node, node_annotations, expected):
    root, facts, realtime = node
    web = burstable_pod("web", cpu="4", memory="8Gi")
    write_usage(root, facts, web, 0, 2 * GI)
    # 4 cpu / 8Gi requested, no CPU used, 2Gi RSS: cpu 1.75, memory 1.171875 before the cap (cluster spec §2.6)
    desired = realtime.desired_annotations(facts, [web], node_annotations, now=1.0)
    assert (desired[CPU_RATIO], desired[MEM_RATIO]) == expected
    assert ["%.2f" % ratio for ratio in realtime.last_ratios] == list(expected)
