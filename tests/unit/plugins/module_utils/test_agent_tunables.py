# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""The agent's tunables passes (agent_tunables.py): cpu burst inputs read from a sandbox sysroot (v1 and v2), bad
cpu_enhancement / numa_ids values as problems, a kernel without the burst file noted once, and the host watermark from
meminfo (values worked by hand)."""

from __future__ import annotations

import json
import logging
import os

import pytest

from ansible_collections.katalyst.colocation.plugins.module_utils import nodeinfo
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons import agent_tunables
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.agent_tunables import TunableLoops
from ansible_collections.katalyst.colocation.plugins.module_utils.sysfs import SysFS
from sandbox.sysroot import build_sysroot

CPU = "katalyst.kubewharf.io/cpu_enhancement"
QOS = "katalyst.kubewharf.io/qos_level"
IDS = "katalyst.kubewharf.io/numa_ids"
NUMBER = "katalyst.kubewharf.io/numa_number"
STATIC_50 = json.dumps({"cpu_burst_policy": "static", "cpu_burst_percent": "50"})


def pod(name, annotations=None, klass="Guaranteed", containers=("main",)):
    return {"metadata": {"name": name, "namespace": "ns", "uid": "uid-" + name, "annotations": annotations or {}},
            "spec": {"containers": [{"name": c} for c in containers]},
            "status": {"phase": "Running", "qosClass": klass,
                       "containerStatuses": [{"name": c, "containerID": "containerd://%s-%s" % (name, c)} for c in containers]}}


def entry(annotations):
    return agent_tunables.burst_entry(pod("p", annotations))


def test_burst_entry_reads_the_qos_level_and_the_enhancement():
    assert entry({QOS: "reclaimed_cores", CPU: STATIC_50}) == (
        {"name": "ns/p", "qos_level": "reclaimed_cores", "cpu_enhancement": {"cpu_burst_policy": "static", "cpu_burst_percent": "50"},
         "containers": []}, [])
    assert entry({})[0]["qos_level"] == "shared_cores"
    assert entry({QOS: "bogus"})[0]["qos_level"] == "shared_cores"     # the QoS level is reported by other loops


def test_burst_entry_problems_are_the_burst_keys_and_an_unusable_annotation():
    values, problems = entry({CPU: json.dumps({"cpu_burst_policy": "static", "cpu_burst_percent": 50})})
    assert values["cpu_enhancement"] == {"cpu_burst_policy": "static"} and len(problems) == 1 and "cpu_burst_percent" in problems[0]
    assert entry({CPU: json.dumps({"cpu_burst_policy": "closed", "other": 5})})[1] == []     # not a burst key
    assert "not valid JSON" in entry({CPU: "{"})[1][0]
    assert "JSON object" in entry({CPU: "[1]"})[1][0]


@pytest.mark.parametrize("annotations, wrong", [
    ({}, None),
    ({IDS: "0,2-3"}, None),
    ({IDS: "0-1", NUMBER: "x"}, None),             # non-empty numa_ids win: numa_number is not read
    ({NUMBER: "4"}, None),
    ({IDS: "4"}, "not among the machine's NUMA nodes"),
    ({IDS: "a"}, "failed to parse numa ids"),
    ({NUMBER: "5"}, "out of range"),
    ({NUMBER: "two"}, "failed to parse numa number"),
])
def test_numa_problem(annotations, wrong):
    problem = agent_tunables.numa_problem(pod("p", annotations), [0, 1, 2, 3])
    assert problem is None if wrong is None else wrong in problem


def node_meminfo(total_kib):
    return "Node 0 MemTotal:       %d kB\nNode 0 MemFree:        1 kB\n" % total_kib


def meminfo(total_kib, hugepages, size_kib=2048):
    return "MemTotal:       %d kB\nHugePages_Total:    %d\nHugepagesize:       %d kB\n" % (total_kib, hugepages, size_kib)


def settings(scale, reserved):
    return {"host_watermark_scale_factor": scale, "host_watermark_kswapd_reserved_gb": reserved}


def test_wanted_watermark_worked_by_hand():
    node0, host = node_meminfo(16 << 20), meminfo(64 << 20, 8192)        # 16 GiB NUMA 0; 64 GiB host, 16 GiB of huge pages
    assert agent_tunables.first_numa_total(node0) == 16 << 30
    # 1 GiB reserve: ceil(2^30 * 10000 / 2^34) = 625; (64 - 16) / 64 of it = 468.75 -> 468, inside [10, 500]
    assert agent_tunables.wanted_watermark(settings(0, 1), node0, host) == 468
    # 2 GiB: 1250 -> 937 -> clamped to 500
    assert agent_tunables.wanted_watermark(settings(0, 2), node0, host) == 500
    assert agent_tunables.wanted_watermark(settings(0, 1), node0, meminfo(64 << 20, 0)) == 500   # 625 clamped
    assert agent_tunables.wanted_watermark(settings(0, 0), node0, host) is None                 # reserve 0: skip
    assert agent_tunables.wanted_watermark(settings(2000, 1), "", "") == 2000                    # explicit: as is
    # no NUMA directory: the whole machine is the first node (1 GiB of 64: ceil(156.25) = 157, no huge pages)
    assert agent_tunables.wanted_watermark(settings(0, 1), None, meminfo(64 << 20, 0)) == 157
    with pytest.raises(ValueError, match="mem.total"):
        agent_tunables.wanted_watermark(settings(0, 1), "", host)                                # node file without MemTotal
    with pytest.raises(ValueError, match="non-negative"):
        agent_tunables.wanted_watermark(settings(-1, 0), node0, host)
    with pytest.raises(ValueError, match="non-negative"):
        agent_tunables.wanted_watermark(settings(0, -1), node0, host)
    with pytest.raises(ValueError, match="out of range 0-10000"):
        agent_tunables.wanted_watermark(settings(10001, 0), node0, host)
    assert agent_tunables.wanted_watermark(settings(10000, 0), node0, host) == 10000


def sandbox(tmp_path, version, pods, burst_files=True, quota=None):
    root = build_sysroot(str(tmp_path / version), cgroup=version)
    fs = SysFS(root)
    base = agent_tunables.CPU_ROOT[version]
    for item in pods:
        for status in item["status"]["containerStatuses"]:
            directory = "%s/kubepods/pod%s/%s" % (base, item["metadata"]["uid"], status["containerID"].split("://")[1])
            os.makedirs(fs.path(directory))
            if version == "v1":
                fs.write_text(directory + "/cpu.cfs_quota_us", str(quota or 200000))
                if burst_files:
                    fs.write_text(directory + "/cpu.cfs_burst_us", "0")
            else:
                fs.write_text(directory + "/cpu.max", "%s 100000" % (quota or 200000))
                if burst_files:
                    fs.write_text(directory + "/cpu.max.burst", "0")
    return fs, nodeinfo.gather(fs)


@pytest.mark.parametrize("version, burst_file", [("v1", "cpu.cfs_burst_us"), ("v2", "cpu.max.burst")])
def test_cpu_burst_pass_plans_every_managed_container(tmp_path, version, burst_file):
    pods = [pod("a", {CPU: STATIC_50}, containers=("c1", "c2")),
            pod("r", {QOS: "reclaimed_cores", CPU: STATIC_50}, klass="Guaranteed"),
            pod("d", {}),                                                   # default policy: not read, not written
            pod("bad", {CPU: json.dumps({"cpu_burst_policy": "static", "cpu_burst_percent": "-5"}), IDS: "7"})]
    fs, facts = sandbox(tmp_path, version, pods)
    fs.write_text("%s/kubepods/poduid-r/r-main/%s" % (agent_tunables.CPU_ROOT[version], burst_file), "5000")
    found = TunableLoops().cpu_burst(fs, pods, facts)
    writes = {change.target.rsplit("/", 2)[1]: change.after for change in found.plan.changes}
    assert writes == {"a-c1": "100000", "a-c2": "100000", "r-main": "0"}     # 200000 * 50 %; reclaimed: closed
    assert all(change.target.endswith("/" + burst_file) for change in found.plan.changes)
    assert set(found.invalid) == {"uid-bad"} and "negative" in found.invalid["uid-bad"][1]
    assert set(found.invalid_numa) == {"uid-bad"} and "[7]" in found.invalid_numa["uid-bad"][1]
    assert {p["metadata"]["name"] for p in found.pod_of.values()} == {"a", "r", "bad"} and not found.failures


def test_a_kernel_without_burst_files_is_noted_once(tmp_path, caplog):
    pods = [pod("a", {CPU: STATIC_50})]
    fs, facts = sandbox(tmp_path, "v1", pods, burst_files=False)
    loops = TunableLoops()
    with caplog.at_level(logging.INFO, logger="katalyst.agent"):
        for _pass in range(3):
            found = loops.cpu_burst(fs, pods, facts)
            assert not found.plan.changes and not found.failures and len(found.missing) == 1
    assert len([r for r in caplog.records if "not supported by this kernel" in r.getMessage()]) == 1


def test_host_watermark_plan_and_gauge(tmp_path):
    prometheus_client = pytest.importorskip("prometheus_client")
    registry = prometheus_client.CollectorRegistry()
    fs = SysFS(build_sysroot(str(tmp_path / "root"), cgroup="v2"))     # NUMA 0: 16 GiB; host 64 GiB, no huge pages
    facts = nodeinfo.gather(fs)
    loops = TunableLoops(registry)
    plan, wanted = loops.host_watermark(fs, facts, settings(0, 1))
    assert wanted == 500 and [(c.target, c.before, c.after) for c in plan.changes] == [("vm.watermark_scale_factor", "10", "500")]
    assert registry.get_sample_value("katalyst_host_watermark_scale_factor") == 500
    fs.write_text("/proc/sys/vm/watermark_scale_factor", "500")
    assert not loops.host_watermark(fs, facts, settings(0, 1))[0].changes
    assert loops.host_watermark(fs, facts, settings(0, 0))[1] is None
    assert registry.get_sample_value("katalyst_host_watermark_scale_factor") == 0
