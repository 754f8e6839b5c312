"""katalyst-agent's NUMA loops as a real process against the emulator and a sandbox sysroot (v1, 2 sockets x 2 NUMA):
per-NUMA reclaimed resources in the node's CNR (status subresource, written only when different), memory provision
limits on besteffort-<N> and the root (moving with usage, floored, lowered by the memory guard), the page-cache drop of a
reclaimed container on a NUMA node under its critical watermark (once per cool-down), and NUMA binding of
dedicated_cores pods (cpusets + numa_bind_result, the TensorFlow anti-affinity case, Events for bad annotations)."""

import json
import os
import re
import subprocess
import sys
import time
import urllib.request

import pytest
from kubernetes import client

from ansible_collections.katalyst.colocation.plugins.module_utils.quantity import parse_quantity
from sandbox.sysroot import build_sysroot
from tests.integration.backends import install_crds
from tests.integration.ansible_runner import REPO
from tests.integration.waiting import wait_until

NODE = "numa-node"
GI = 1 << 30
CNR_ARGS = ("node.katalyst.kubewharf.io", "v1alpha1", "customnoderesources")
RECLAIMED_CPU = "resource.katalyst.kubewharf.io/reclaimed_millicpu"
RECLAIMED_MEMORY = "resource.katalyst.kubewharf.io/reclaimed_memory"
BINDING = json.dumps({"numa_binding": "true"})
ANTI = "katalyst.kubewharf.io/microtopology_antiaffinity"
BIND_RESULT = "katalyst.kubewharf.io/numa_bind_result"


def set_meminfo(sysroot, numa, free_bytes, total_bytes=16 * GI):
    kib, free = total_bytes // 1024, free_bytes // 1024
    with open(sysroot + "/sys/devices/system/node/node%d/meminfo" % numa, "w") as handle:
        handle.write("\n".join("Node %d %-15s %8d kB" % (numa, name + ":", value) for name, value in (
            ("MemTotal", kib), ("MemFree", free), ("MemUsed", kib - free), ("Inactive(file)", kib // 16))) + "\n")


def page(value):
    return value // 4096 * 4096


def read(sysroot, path):
    with open(sysroot + path) as handle:
        return handle.read().strip()


@pytest.fixture
def numa_agent(kubeapi, kube_client, tmp_path):
    install_crds(kube_client, ["customnoderesources"])
    core = client.CoreV1Api(kube_client)
    core.create_node({"metadata": {"name": NODE, "labels": {"pool": "a"}}})
    sysroot = build_sysroot(str(tmp_path / "sysroot"), cgroup="v1")
    processes = []

    def start(**extra):
        config = {"node_name": NODE, "kubeconfig": kubeapi.kubeconfig, "sysroot": sysroot, "port": 0, "resync_seconds": 5,
                  "qos_cgroups_period_seconds": 0.5, "oom_priority_enabled": False, "reclaimed_resources_period_seconds": 0.2,
                  "reclaimed_window_seconds": 0.8, "cnr_topology_policy": "SingleNUMANodeContainerLevel",
                  "memory_provision_period_seconds": 0.2, "numa_binding_period_seconds": 0.3}
        config.update(extra)
        path = tmp_path / "agent.yaml"
        path.write_text(json.dumps(config))
        log = open(tmp_path / "agent.log", "w+")
        env = dict(os.environ, PYTHONPATH="%s/.build/collections" % REPO)
        process = subprocess.Popen([sys.executable, "-m", "ansible_collections.katalyst.colocation.plugins.module_utils.daemons.agent",
                                    "--config", str(path)], stdout=log, stderr=subprocess.STDOUT, env=env)
        processes.append((process, log))
        wait_until(lambda: re.search(r"on 127\.0\.0\.1:(\d+)", open(log.name).read()), timeout=180, what="the agent to start")
        return process

    yield {"start": start, "sysroot": sysroot, "core": core, "custom": client.CustomObjectsApi(kube_client), "log": tmp_path / "agent.log"}
    for process, log in processes:
        if process.poll() is None:
            process.terminate()
            process.wait(10)
        log.close()


def metrics_text(env):
    port = int(re.search(r"on 127\.0\.0\.1:(\d+)", open(env["log"]).read()).group(1))
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as response:
        return response.read().decode()


def loop_runs(env, loop):
    """Finished passes of one of the agent's loops, from its /metrics."""
    text = metrics_text(env)
    return sum(float(m) for m in re.findall(r'^katalyst_loop_runs_total\{[^}]*loop="%s"[^}]*\} (\S+)$' % loop, text, re.M))


def cnr_status(env):
    try:
        return env["custom"].get_cluster_custom_object(*CNR_ARGS, NODE).get("status") or {}
    except client.ApiException:
        return {}


def numa_zones(status):
    return {child["name"]: (socket["name"], child["resources"]["allocatable"])
            for socket in status.get("topologyZone") or [] for child in socket.get("children") or []}


def test_reclaimed_resources_per_numa_in_the_cnr(numa_agent):
    env = numa_agent
    env["start"]()
    wait_until(lambda: numa_zones(cnr_status(env)), what="the CNR status")
    status = cnr_status(env)
    zones = numa_zones(status)
    # 4 x 16Gi, 12Gi free each, no pods: canonical headroom 64Gi - 5Gi reserve = 59Gi, spread by free memory
    assert status["resources"]["allocatable"] == {RECLAIMED_CPU: "32k", RECLAIMED_MEMORY: "59Gi"}
    assert status["resources"]["capacity"] == status["resources"]["allocatable"]
    assert status["topologyPolicy"] == "SingleNUMANodeContainerLevel"
    assert sorted(zones) == ["0", "1", "2", "3"] and [zones[n][0] for n in "0123"] == ["0", "0", "1", "1"]
    for numa in "0123":
        assert zones[numa][1][RECLAIMED_CPU] == "8k"                     # 8 idle CPUs of the reclaim pool per NUMA
        assert parse_quantity(zones[numa][1][RECLAIMED_MEMORY]).value() == 59 * GI // 4    # rescaled: NUMAs sum to the node
        assert zones[numa][1]["cpu"] == "8" and parse_quantity(zones[numa][1]["memory"]).value() == 16 * GI
    version = env["custom"].get_cluster_custom_object(*CNR_ARGS, NODE)["metadata"]["resourceVersion"]
    passes = loop_runs(env, "reclaimed_resources")        # unchanged readings: the next passes write nothing
    wait_until(lambda: loop_runs(env, "reclaimed_resources") >= passes + 3, what="three more reclaimed_resources passes")
    assert env["custom"].get_cluster_custom_object(*CNR_ARGS, NODE)["metadata"]["resourceVersion"] == version

    # usage moves: NUMA 0 nearly full, and the 8 CPUs of NUMA 0 (0-3, 16-19) fully busy from now on
    set_meminfo(env["sysroot"], 0, 1 * GI)
    stat = env["sysroot"] + "/proc/stat"
    busy_cpus = set(range(0, 4)) | set(range(16, 20))

    def write_stat(tick):
        lines = ["cpu  0 0 0 0 0 0 0 0"]
        for cpu in range(32):
            busy = tick * 100 if cpu in busy_cpus else 0
            lines.append("cpu%d %d 0 0 %d 0 0 0 0" % (cpu, busy, tick * 100 - busy))
        with open(stat, "w") as handle:
            handle.write("\n".join(lines) + "\n")

    def moved():
        write_stat(int(time.time() * 10))
        status = cnr_status(env)
        memory = {n: parse_quantity(z[1][RECLAIMED_MEMORY]).value() for n, z in numa_zones(status).items()}
        return status["resources"]["allocatable"][RECLAIMED_CPU] == "24k" and memory["0"] < 2 * GI

    wait_until(moved, what="the report to follow usage")
    status = cnr_status(env)
    zones = numa_zones(status)
    # 24 idle CPUs shared by the 4 non-bound NUMA nodes; memory headroom (59Gi) spread by free memory: 1Gi vs 12Gi
    assert [zones[n][1][RECLAIMED_CPU] for n in "0123"] == ["6k"] * 4
    memory = {n: parse_quantity(z[1][RECLAIMED_MEMORY]).value() for n, z in zones.items()}
    assert parse_quantity(status["resources"]["allocatable"][RECLAIMED_MEMORY]).value() == 59 * GI
    assert 59 * GI - 4 <= sum(memory.values()) <= 59 * GI
    assert memory["1"] == memory["2"] == memory["3"] > 18 * GI > 1 * GI < memory["0"] < 2 * GI


def test_memory_provision_limits_follow_usage_with_a_floor_and_the_guard(numa_agent):
    env = numa_agent
    sysroot = env["sysroot"]
    env["start"](memory_provision_enabled=True, reclaimed_resources_enabled=False)
    limit = "/sys/fs/cgroup/memory/kubepods/besteffort-%d/memory.limit_in_bytes"
    watermark_avg = int(64 * GI * 2 * 10 / 10000) // 4
    provision = page(12 * GI - (5 * GI) // 4 - watermark_avg)         # limits are written in whole pages
    wait_until(lambda: os.path.exists(sysroot + limit % 3) and read(sysroot, limit % 3) == str(provision), what="per-NUMA limits")
    assert [int(read(sysroot, limit % n)) for n in range(4)] == [provision] * 4
    assert read(sysroot, "/sys/fs/cgroup/memory/kubepods/besteffort/memory.limit_in_bytes") == str(page(4 * (12 * GI - (5 * GI) // 4 - watermark_avg)))
    # a spike of online memory on NUMA 1: its provision drops to 0, the floor (1Gi > 5% of 16Gi) keeps reclaimed pods alive
    set_meminfo(sysroot, 1, 512 << 20)
    wait_until(lambda: read(sysroot, limit % 1) == str(GI), what="the floor on NUMA 1")
    assert read(sysroot, limit % 0) == str(provision)
    set_meminfo(sysroot, 1, 8 * GI)
    wait_until(lambda: read(sysroot, limit % 1) == str(page(8 * GI - (5 * GI) // 4 - watermark_avg)), what="NUMA 1 to recover")
    # the memory guard (once memory.numa_stat is readable): usage + free above the 4Gi critical watermark
    for cgroup in ["besteffort"] + ["besteffort-%d" % n for n in range(4)]:
        with open(sysroot + "/sys/fs/cgroup/memory/kubepods/%s/memory.numa_stat" % cgroup, "w") as handle:
            handle.write("total=%d N0=%d N1=0 N2=0 N3=0\n" % (262144, 262144))      # 1Gi of pages on NUMA 0
    wait_until(lambda: read(sysroot, limit % 2) == str(8 * GI), what="the guard limit on NUMA 2")
    assert read(sysroot, limit % 0) == str(9 * GI)             # 1Gi used there + 8Gi free above the watermark < provision
    assert read(sysroot, limit % 1) == str(4 * GI)             # 8Gi free - 4Gi watermark


def binding_pod(core, name, labels, annotations=None, cpu="2"):
    ann = {"katalyst.kubewharf.io/qos_level": "dedicated_cores", "katalyst.kubewharf.io/memory_enhancement": BINDING}
    ann.update(annotations or {})
    resources = {"requests": {"cpu": cpu, "memory": "2Gi"}, "limits": {"cpu": cpu, "memory": "2Gi"}}
    pod = core.create_namespaced_pod("default", {"metadata": {"name": name, "labels": labels, "annotations": ann},
                                                 "spec": {"nodeName": NODE, "containers": [{"name": "main", "image": "x", "resources": resources}]}})
    return pod


def run_pod(env, pod):
    uid = pod.metadata.uid
    cid = "c-" + pod.metadata.name
    os.makedirs(env["sysroot"] + "/sys/fs/cgroup/cpuset/kubepods/pod%s/%s" % (uid, cid))
    env["core"].patch_namespaced_pod_status(pod.metadata.name, "default", {"status": {"phase": "Running", "qosClass": "Guaranteed",
                                            "containerStatuses": [{"name": "main", "containerID": "containerd://" + cid, "ready": True,
                                                                   "restartCount": 0, "image": "x", "imageID": ""}]}})
    return env["sysroot"] + "/sys/fs/cgroup/cpuset/kubepods/pod%s" % uid, cid


def bind_result(env, name):
    annotations = env["core"].read_namespaced_pod(name, "default").metadata.annotations or {}
    return annotations.get(BIND_RESULT)


def test_numa_binding_pins_cpusets_and_honours_anti_affinity(numa_agent):
    env = numa_agent
    core = env["core"]
    env["start"](reclaimed_resources_enabled=False)
    anti_workers = {ANTI: json.dumps({"required": [{"matchLabels": {"app": "tf", "role": "worker"}, "zone": "numa"}]})}
    placed = {}
    for name in ("ps0", "ps1"):
        pod = binding_pod(core, name, {"app": "tf", "role": "ps"}, anti_workers)
        placed[name] = run_pod(env, pod)
        wait_until(lambda name=name: bind_result(env, name) is not None, what="%s to be bound" % name)
    for name in ("w0", "w1"):
        pod = binding_pod(core, name, {"app": "tf", "role": "worker"})
        placed[name] = run_pod(env, pod)
        wait_until(lambda name=name: bind_result(env, name) is not None, what="%s to be bound" % name)
    numas = {name: int(bind_result(env, name)) for name in placed}
    assert not {numas["w0"], numas["w1"]} & {numas["ps0"], numas["ps1"]}
    cpus = {0: "0-3,16-19", 1: "4-7,20-23", 2: "8-11,24-27", 3: "12-15,28-31"}
    for name, (pod_dir, cid) in placed.items():
        for path in (pod_dir, pod_dir + "/" + cid):
            # the annotation is patched before the cpusets are written, and a sysroot file is created empty: wait for the content
            wait_until(lambda path=path, name=name: read("", path + "/cpuset.cpus") == cpus[numas[name]]
                       and read("", path + "/cpuset.mems") == str(numas[name]), what="cpusets of %s" % name, ignore=(OSError,))
    # a third worker: only the NUMA nodes the parameter servers do not hold remain, and it still avoids them
    w2 = run_pod(env, binding_pod(core, "w2", {"app": "tf", "role": "worker"}))
    wait_until(lambda: bind_result(env, "w2") is not None, what="w2 to be bound")
    assert int(bind_result(env, "w2")) not in (numas["ps0"], numas["ps1"])
    wait_until(lambda: read("", w2[0] + "/cpuset.mems") == bind_result(env, "w2"), what="the cpuset of w2", ignore=(OSError,))
    # drift is corrected
    with open(placed["w0"][0] + "/cpuset.cpus", "w") as handle:
        handle.write("0-31")
    wait_until(lambda: read("", placed["w0"][0] + "/cpuset.cpus") == cpus[numas["w0"]], what="the cpuset drift to be corrected")
    # a malformed annotation: an Event, no binding, no crash
    bad = run_pod(env, binding_pod(core, "bad", {"app": "x"}, {ANTI: '{"required": [{"matchLabels": {"a": "b"}, "zone": "rack"}]}'}))

    def warned():
        events = core.list_namespaced_event("default").items
        return [e for e in events if e.reason == "InvalidMicrotopology" and e.involved_object.name == "bad"]

    wait_until(warned, what="the InvalidMicrotopology Event")
    assert bind_result(env, "bad") is None and not os.path.exists(bad[0] + "/cpuset.mems")
    assert "rack" in warned()[0].message


def test_memory_provision_drops_reclaimed_cache_on_a_numa_under_its_critical_watermark(numa_agent):
    env = numa_agent
    sysroot, core = env["sysroot"], env["core"]
    ann = {"katalyst.kubewharf.io/qos_level": "reclaimed_cores"}
    pod = core.create_namespaced_pod("default", {"metadata": {"name": "r0", "annotations": ann},
                                                 "spec": {"nodeName": NODE, "containers": [{"name": "main", "image": "x"}]}})
    cgroup = sysroot + "/sys/fs/cgroup/memory/kubepods/besteffort/pod%s/c-r0" % pod.metadata.uid
    os.makedirs(cgroup)
    with open(cgroup + "/memory.stat", "w") as handle:
        handle.write("cache %d\nrss 0\ntotal_cache %d\n" % (GI, GI))
    core.patch_namespaced_pod_status("r0", "default", {"status": {"phase": "Running", "qosClass": "BestEffort", "containerStatuses": [
        {"name": "main", "containerID": "containerd://c-r0", "ready": True, "restartCount": 0, "image": "x", "imageID": ""}]}})
    # NUMA 0: 3Gi free of 16Gi, under its critical watermark max(4Gi, 2*16Gi*10/10000) -> DropCache
    set_meminfo(sysroot, 0, 3 * GI)
    env["start"](memory_provision_enabled=True, reclaimed_resources_enabled=False)
    wait_until(lambda: os.path.exists(cgroup + "/memory.force_empty"), what="the page cache drop of the reclaimed container")
    assert read("", cgroup + "/memory.force_empty") == "0"
    assert "NUMA 0 in DropCache" in open(env["log"]).read()
    assert re.search(r'^katalyst_memory_pressure_state\{numa="0"\} 2\.0$', metrics_text(env), re.M), "NUMA 0's state not in /metrics"
    os.unlink(cgroup + "/memory.force_empty")
    # once per cool-down (300 s by default): the next passes do not drop again
    passes = loop_runs(env, "memory_provision")
    wait_until(lambda: loop_runs(env, "memory_provision") >= passes + 3, what="three more memory_provision passes")
    assert not os.path.exists(cgroup + "/memory.force_empty")
