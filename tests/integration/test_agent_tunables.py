"""katalyst-agent's tunables loops in-process against the cluster (both backends) and a sandbox sysroot: cpu burst per
container on cgroup v1 and v2 (static 50 % and 100 %, reclaimed pods closed, a bad percent as one Warning Event while the
others are converged, a bad numa_ids as one InvalidNUMAIds Event), the host watermark from meminfo with huge pages
(written once, not again while equal, put back after drift); and, where the host kernel has cpu.cfs_burst_us, the same
burst plan written into a real cgroup the test creates and removes. Values worked by hand."""

import json
import os

import pytest
from kubernetes import client

from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.agent import Agent, apply_each
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.agent_tunables import TunableLoops
from ansible_collections.katalyst.colocation.plugins.module_utils import cgroups
from ansible_collections.katalyst.colocation.plugins.module_utils.sysfs import SysFS
from sandbox.sysroot import build_sysroot
from tests.integration.waiting import wait_until

NODE = "tunables-node"
CPU = "katalyst.kubewharf.io/cpu_enhancement"
QOS = "katalyst.kubewharf.io/qos_level"
IDS = "katalyst.kubewharf.io/numa_ids"
BURST_FILE = {"v1": "cpu.cfs_burst_us", "v2": "cpu.max.burst"}
CPU_ROOT = {"v1": "/sys/fs/cgroup/cpu", "v2": "/sys/fs/cgroup"}
QUIET = {"qos_cgroups_enabled": False, "oom_priority_enabled": False, "reclaimed_resources_enabled": False,
         "numa_binding_enabled": False, "realtime_overcommit_enabled": False, "memory_provision_enabled": False,
         "tcp_memory_enabled": False}


@pytest.fixture
def tunables_agent(kubeapi, kube_client, tmp_path):
    core = client.CoreV1Api(kube_client)
    core.create_node({"metadata": {"name": NODE}})
    agents = []

    def start(version, prepare=None, **settings):
        sysroot = build_sysroot(str(tmp_path / ("sysroot-" + version)), cgroup=version)
        if prepare:
            prepare(sysroot)
        config = dict(QUIET, node_name=NODE, kubeconfig=kubeapi.kubeconfig, sysroot=sysroot, port=0, resync_seconds=5,
                      state_dir=str(tmp_path / "state"), oom_bpf_pin_dir=str(tmp_path / "no-bpf"))
        config.update(settings)
        path = tmp_path / ("agent-%s.yaml" % version)
        path.write_text(json.dumps(config))
        agent = Agent(str(path)).build()
        agents.append(agent)
        for informer in (agent.pods, agent.node):
            informer.start(agent.daemon.stop_event)
        agent.daemon.start()
        return agent, sysroot

    yield {"start": start, "core": core}
    for agent in agents:
        agent.daemon.stop()
        for informer in (agent.pods, agent.node):
            informer.stop()


def read(path):
    with open(path) as handle:
        return handle.read().strip()


def write(path, content):
    with open(path, "w") as handle:
        handle.write(content + "\n")


def sample(agent, name, labels=None):
    return agent.daemon.registry.get_sample_value(name, labels or {}) or 0


def runs(agent, loop, outcome="success"):
    return sample(agent, "katalyst_loop_runs_total", {"daemon": agent.daemon.name, "loop": loop, "outcome": outcome})


def writes(agent, loop):
    return sample(agent, "katalyst_agent_writes_total", {"loop": loop})


def more_passes(agent, loop, count=3):
    """Wait for ``count`` more successful passes of ``loop`` (no fixed sleeps)."""
    seen = runs(agent, loop)
    wait_until(lambda: runs(agent, loop) >= seen + count, what="%d more %s passes" % (count, loop))


def run_pod(core, sysroot, version, name, annotations, cpu, quota, burst="0"):
    """A pod on the node, its container's cpu cgroup (quota as the kubelet sets it, a burst file; None: a directory in its
    place, which cannot be read or written), then Running."""
    resources = {"requests": {"cpu": cpu, "memory": "1Gi"}, "limits": {"cpu": cpu, "memory": "1Gi"}} if cpu else {}
    klass = "Guaranteed" if cpu else "BestEffort"
    uid = core.create_namespaced_pod("default", {"metadata": {"name": name, "annotations": annotations}, "spec": {
        "nodeName": NODE, "containers": [{"name": "main", "image": "x", "resources": resources}]}}).metadata.uid
    cid = "c-" + name
    directory = "%s%s/kubepods%s/pod%s/%s" % (sysroot, CPU_ROOT[version], "" if cpu else "/besteffort", uid, cid)
    os.makedirs(directory)
    if version == "v1":
        write(directory + "/cpu.cfs_quota_us", str(quota))
        write(directory + "/cpu.cfs_period_us", "100000")
    else:
        write(directory + "/cpu.max", "%s 100000" % ("max" if quota < 0 else quota))
    if burst is None:
        os.mkdir(directory + "/" + BURST_FILE[version])
    else:
        write(directory + "/" + BURST_FILE[version], burst)
    core.patch_namespaced_pod_status(name, "default", {"status": {"phase": "Running", "qosClass": klass, "containerStatuses": [
        {"name": "main", "containerID": "containerd://" + cid, "ready": True, "restartCount": 0, "image": "x", "imageID": ""}]}})
    return directory + "/" + BURST_FILE[version]


def events(core, name, reason):
    return [e for e in core.list_namespaced_event("default").items if e.reason == reason and e.involved_object.name == name]


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_cpu_burst_per_container_with_one_event_per_bad_pod(tunables_agent, version):
    core = tunables_agent["core"]
    agent, sysroot = tunables_agent["start"](version, cpu_burst_enabled=True, cpu_burst_period_seconds=0.2)
    static = {"cpu_burst_policy": "static"}
    files = {
        # quota 200000 (2 CPUs) * 50 % = 100000
        "web": run_pod(core, sysroot, version, "web", {CPU: json.dumps(dict(static, cpu_burst_percent="50"))}, "2", 200000),
        # quota 150000 (1500m), no percent: Katalyst's default 100 % = 150000
        "api": run_pod(core, sysroot, version, "api", {CPU: json.dumps(static)}, "1500m", 150000),
        # reclaimed_cores naming static: forced closed, burst 0 (the 5000 left by someone else is cleared)
        "batch": run_pod(core, sysroot, version, "batch", {QOS: "reclaimed_cores", CPU: json.dumps(dict(static, cpu_burst_percent="50"))},
                         None, -1, burst="5000"),
        # a percent Go's ParseFloat refuses: one Warning Event, its file left as it is
        "bad": run_pod(core, sysroot, version, "bad", {CPU: json.dumps(dict(static, cpu_burst_percent="fifty"))}, "1", 100000, burst="7"),
        # no policy: not managed, left alone; a NUMA id the node does not have (it has 0-3): one InvalidNUMAIds Event
        "numa": run_pod(core, sysroot, version, "numa", {IDS: "9"}, "1", 100000, burst="3"),
    }
    wanted = {"web": "100000", "api": "150000", "batch": "0", "bad": "7", "numa": "3"}
    wait_until(lambda: {name: read(path) for name, path in files.items()} == wanted, timeout=60, what="the bursts of %s" % version)
    wait_until(lambda: events(core, "bad", "InvalidCPUBurst") and events(core, "numa", "InvalidNUMAIds"), what="the Warning Events")
    more_passes(agent, "cpu_burst")
    assert {name: read(path) for name, path in files.items()} == wanted
    assert writes(agent, "cpu_burst") == 3                       # web, api, batch: once each, not again while equal
    bad = events(core, "bad", "InvalidCPUBurst")
    assert len(bad) == 1 and "fifty" in bad[0].message and bad[0].type == "Warning"
    numa = events(core, "numa", "InvalidNUMAIds")
    assert len(numa) == 1 and "[9]" in numa[0].message
    assert not [e for e in core.list_namespaced_event("default").items if e.reason == "CPUBurstNotSet"]
    assert runs(agent, "cpu_burst", "error") == 0
    # drift is put back on the next pass
    write(files["web"], "1")
    wait_until(lambda: read(files["web"]) == "100000", what="the web burst put back")
    assert writes(agent, "cpu_burst") == 4
    # a burst file that cannot be written: one CPUBurstNotSet Event on its pod, the pass fails (counted), the others go on
    run_pod(core, sysroot, version, "stuck", {CPU: json.dumps(static)}, "1", 100000, burst=None)
    wait_until(lambda: events(core, "stuck", "CPUBurstNotSet"), what="the CPUBurstNotSet Event")
    wait_until(lambda: runs(agent, "cpu_burst", "error") >= 3, what="three failed cpu_burst passes")
    assert len(events(core, "stuck", "CPUBurstNotSet")) == 1 and BURST_FILE[version] in events(core, "stuck", "CPUBurstNotSet")[0].message
    write(files["web"], "2")
    wait_until(lambda: read(files["web"]) == "100000", what="the web burst put back while another pod fails")


def test_host_watermark_from_meminfo_with_huge_pages(tunables_agent):
    def huge_pages(root):
        assert read(root + "/proc/sys/vm/watermark_scale_factor") == "10"
        write(root + "/proc/meminfo", "MemTotal:       67108864 kB\nMemFree:        50331648 kB\nHugePages_Total:    8192\n"
                                      "Hugepagesize:       2048 kB")

    # NUMA 0 holds 16 GiB: 1 GiB of reserve is ceil(2^30 * 10000 / 2^34) = 625; 16 GiB of the host's 64 GiB are huge pages:
    # 625 * 48 / 64 = 468.75 -> 468, inside [10, 500]
    agent, root = tunables_agent["start"]("v1", prepare=huge_pages, host_watermark_enabled=True, host_watermark_period_seconds=0.2,
                                          host_watermark_kswapd_reserved_gb=1)
    target = root + "/proc/sys/vm/watermark_scale_factor"
    wait_until(lambda: read(target) == "468", what="the watermark scale factor")
    more_passes(agent, "host_watermark")
    assert writes(agent, "host_watermark") == 1                  # equal: not written again
    assert sample(agent, "katalyst_host_watermark_scale_factor") == 468
    write(target, "10")
    wait_until(lambda: read(target) == "468", what="the watermark put back")
    assert writes(agent, "host_watermark") == 2 and runs(agent, "host_watermark", "error") == 0


CGROUP_CPU = "/sys/fs/cgroup/cpu"


def real_burst_problem():
    if os.geteuid() != 0:
        return "needs root to create a cgroup"
    if not os.path.exists(CGROUP_CPU + "/cpu.cfs_burst_us"):
        return "the host kernel has no cgroup v1 cpu.cfs_burst_us (cgroup v1 cpu controller at %s, kernel 5.14+)" % CGROUP_CPU
    return None


@pytest.mark.skipif(real_burst_problem() is not None, reason=real_burst_problem() or "")
def test_cpu_burst_plan_on_the_real_kernel():
    """The pass on sysroot "/" against a cgroup tree of the test's own (no process in it), removed afterwards."""
    prefix = "/katalyst-test-burst-%d" % os.getpid()
    pod = {"metadata": {"name": "real", "namespace": "default", "uid": "uid-real",
                        "annotations": {CPU: json.dumps({"cpu_burst_policy": "static", "cpu_burst_percent": "50"})}},
           "spec": {"containers": [{"name": "main"}]},
           "status": {"phase": "Running", "qosClass": "Guaranteed", "containerStatuses": [{"name": "main", "containerID": "containerd://cid"}]}}
    dirs = [CGROUP_CPU + prefix + suffix for suffix in ("", "/kubepods", "/kubepods/poduid-real", "/kubepods/poduid-real/cid")]
    made = []
    try:
        for directory in dirs:
            try:
                os.mkdir(directory)
            except OSError as exc:
                pytest.skip("cannot create a cgroup here: %s" % exc)
            made.append(directory)
        write(dirs[-1] + "/cpu.cfs_quota_us", "50000")
        fs = SysFS("/")
        found = TunableLoops().cpu_burst(fs, [pod], {"cgroup": {"mode": "v1"}, "numa_nodes": [{"id": 0}]}, cgroup_prefix=prefix)
        assert [(c.target, c.after) for c in found.plan.changes] == [(dirs[-1] + "/cpu.cfs_burst_us", "25000")]
        applied, failures = apply_each(found.plan, cgroups.applier(fs))
        assert len(applied) == 1 and not failures
        assert read(dirs[-1] + "/cpu.cfs_burst_us") == "25000"            # 50000 * 50 %, taken by the kernel
        assert not TunableLoops().cpu_burst(fs, [pod], {"cgroup": {"mode": "v1"}, "numa_nodes": [{"id": 0}]}, cgroup_prefix=prefix).plan.changes
    finally:
        for directory in reversed(made):
            os.rmdir(directory)
