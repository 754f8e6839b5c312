"""End to end in the sandbox: three katalyst-agents (v1 sysroots, 2 sockets x 2 NUMA each) report per-NUMA reclaimed
resources and NUMA capacity in their CNRs; katalyst-scheduler-extender (NodeOvercommitment + NUMA) is called by the
sandbox scheduler exactly as kube-scheduler calls it (filter + prioritize, node names); the TensorFlow example:
parameter servers with required NUMA anti-affinity to workers, and no worker lands on a parameter server's NUMA node
(scheduler side) and the agents pin cpusets accordingly (node side). A malformed annotation is an Event and makes the
pod unschedulable."""

import json
import os
import re
import subprocess
import sys
import threading

import pytest
from kubernetes import client

from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.extender import ExtenderDaemon
from sandbox.scheduler import Extender, SandboxScheduler
from sandbox.sysroot import build_sysroot
from tests.integration.backends import install_crds
from tests.integration.ansible_runner import REPO
from tests.integration.waiting import wait_until

NODES = ("n1", "n2", "n3")
CNR_ARGS = ("node.katalyst.kubewharf.io", "v1alpha1", "customnoderesources")
BINDING = json.dumps({"numa_binding": "true"})
ANTI = "katalyst.kubewharf.io/microtopology_antiaffinity"
BIND_RESULT = "katalyst.kubewharf.io/numa_bind_result"


@pytest.fixture
def sandbox(kubeapi, kube_client, tmp_path):
    install_crds(kube_client, ["customnoderesources"])
    core, custom = client.CoreV1Api(kube_client), client.CustomObjectsApi(kube_client)
    processes, sysroots = [], {}
    env = dict(os.environ, PYTHONPATH="%s/.build/collections" % REPO)
    for name in NODES:
        core.create_node({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}})
        core.patch_node_status(name, {"status": {"capacity": {"cpu": "32", "memory": "64Gi", "pods": "110"},
                                                 "allocatable": {"cpu": "32", "memory": "64Gi", "pods": "110"}}})
        sysroots[name] = build_sysroot(str(tmp_path / name), cgroup="v1")
        config = tmp_path / ("%s.yaml" % name)
        config.write_text(json.dumps({"node_name": name, "kubeconfig": kubeapi.kubeconfig, "sysroot": sysroots[name], "port": 0,
                                      "resync_seconds": 5, "oom_priority_enabled": False, "qos_cgroups_period_seconds": 1,
                                      "reclaimed_resources_period_seconds": 0.2, "reclaimed_window_seconds": 0.8,
                                      "cnr_topology_policy": "SingleNUMANodeContainerLevel", "numa_binding_period_seconds": 0.3}))
        log = open(tmp_path / ("%s.log" % name), "w+")
        processes.append((subprocess.Popen([sys.executable, "-m", "ansible_collections.katalyst.colocation.plugins.module_utils.daemons.agent",
                                            "--config", str(config)], stdout=log, stderr=subprocess.STDOUT, env=env), log))
    for _process, log in processes:
        wait_until(lambda log=log: re.search(r"on 127\.0\.0\.1:(\d+)", open(log.name).read()), what="an agent to start")

    def reported():
        items = custom.list_cluster_custom_object(*CNR_ARGS)["items"]
        return len([c for c in items if (c.get("status") or {}).get("topologyPolicy") and (c["status"].get("topologyZone"))]) == 3

    wait_until(reported, what="three CNRs with NUMA zones")
    extender = ExtenderDaemon({"listen_address": "127.0.0.1", "port": 0, "resync_seconds": 30, "plugins": ["NodeOvercommitment", "NUMA"]},
                              api_client=kube_client)
    port = extender.start(wait_synced=15)
    wait_until(lambda: all(extender.cache.cnr(n) for n in NODES), what="the extender cache")
    scheduler = SandboxScheduler(core, [Extender({"urlPrefix": "http://127.0.0.1:%d" % port, "filterVerb": "filter",
                                                  "prioritizeVerb": "prioritize", "weight": 1, "nodeCacheCapable": True})])
    stop = threading.Event()
    scheduler.nodes.start(stop)
    scheduler.pods.start(stop)
    wait_until(lambda: scheduler.nodes.synced.is_set() and scheduler.pods.synced.is_set(), what="the scheduler cache")
    yield {"core": core, "custom": custom, "sysroots": sysroots, "extender": extender, "scheduler": scheduler}
    stop.set()
    scheduler.nodes.stop()
    scheduler.pods.stop()
    extender.stop()
    for process, log in processes:
        process.terminate()
        process.wait(10)
        log.close()


def tf_pod(name, role, anti=None, cpu="4"):
    annotations = {"katalyst.kubewharf.io/qos_level": "dedicated_cores", "katalyst.kubewharf.io/memory_enhancement": BINDING}
    if anti is not None:
        annotations[ANTI] = anti
    resources = {"requests": {"cpu": cpu, "memory": "2Gi"}, "limits": {"cpu": cpu, "memory": "2Gi"}}
    return {"metadata": {"name": name, "labels": {"app": "tf", "role": role}, "annotations": annotations},
            "spec": {"containers": [{"name": "main", "image": "tf", "resources": resources}]}}


def schedule_and_run(env, body):
    """Create the pod, let the scheduler place it, then play the kubelet: cgroups + Running; wait for the agent's pin."""
    core, name = env["core"], body["metadata"]["name"]
    core.create_namespaced_pod("default", body)
    wait_until(lambda: env["scheduler"].pods.get("default/" + name) is not None, what="the scheduler to see %s" % name)
    env["scheduler"].schedule_once()
    pod = core.read_namespaced_pod(name, "default")
    node = pod.spec.node_name
    if node is None:
        return None
    wait_until(lambda: any(p["metadata"]["name"] == name for p in env["extender"].cache.pods_on(node)), what="the extender to see the binding")
    cid = "c-" + name
    os.makedirs(env["sysroots"][node] + "/sys/fs/cgroup/cpuset/kubepods/pod%s/%s" % (pod.metadata.uid, cid))
    core.patch_namespaced_pod_status(name, "default", {"status": {"phase": "Running", "qosClass": "Guaranteed", "containerStatuses": [
        {"name": "main", "containerID": "containerd://" + cid, "ready": True, "restartCount": 0, "image": "tf", "imageID": ""}]}})
    wait_until(lambda: (core.read_namespaced_pod(name, "default").metadata.annotations or {}).get(BIND_RESULT), what="%s pinned" % name)
    numa = int(core.read_namespaced_pod(name, "default").metadata.annotations[BIND_RESULT])
    wait_until(lambda: any(p["metadata"]["name"] == name and BIND_RESULT in (p["metadata"].get("annotations") or {})
                           for p in env["extender"].cache.pods_on(node)), what="the extender to see the pin")
    cpuset = env["sysroots"][node] + "/sys/fs/cgroup/cpuset/kubepods/pod%s" % pod.metadata.uid

    def mems():
        # a sysroot file is created empty, then written: wait for the content, not for the file
        with open(cpuset + "/cpuset.mems") as handle:
            return handle.read().strip()
    wait_until(lambda: mems() == str(numa), what="the cpuset of %s on NUMA %d" % (name, numa), ignore=(FileNotFoundError,))
    return node, numa


def test_tensorflow_workers_never_share_a_numa_node_with_a_parameter_server(sandbox):
    env = sandbox
    anti_workers = json.dumps({"required": [{"matchLabels": {"app": "tf", "role": "worker"}, "zone": "numa"}]})
    placed = {}
    for index in range(3):
        placed["ps-%d" % index] = schedule_and_run(env, tf_pod("ps-%d" % index, "ps", anti_workers))
    for index in range(10):
        placed["worker-%d" % index] = schedule_and_run(env, tf_pod("worker-%d" % index, "worker"))
    assert all(placed.values()), placed
    ps_numas = {where for name, where in placed.items() if name.startswith("ps-")}
    worker_numas = {where for name, where in placed.items() if name.startswith("worker-")}
    assert not ps_numas & worker_numas
    # workers spread by the extender's score (least allocated NUMA), not all on the first node by name
    assert len({node for node, _numa in worker_numas}) >= 2
    # a NUMA node holds at most two 4-CPU workers (8 CPUs): the NUMA fit counted the pinned pods
    counts = {}
    for name, where in placed.items():
        if name.startswith("worker-"):
            counts[where] = counts.get(where, 0) + 1
    assert max(counts.values()) <= 2
    # the extender's verdict for one more worker, node by node: it fits where a NUMA node has neither a parameter
    # server nor two workers, else it is refused (anti-affinity or NUMA resources)
    probe = Extender({"urlPrefix": "http://127.0.0.1:%d" % env["extender"].server.port, "filterVerb": "filter", "nodeCacheCapable": True})
    nodes = [env["core"].api_client.sanitize_for_serialization(env["core"].read_node(n)) for n in NODES]
    worker = env["core"].api_client.sanitize_for_serialization(env["core"].create_namespaced_pod("default", tf_pod("probe", "worker")))
    passing, failed = probe.filter(worker, nodes)
    expected = {n for n in NODES if any((n, numa) not in ps_numas and counts.get((n, numa), 0) < 2 for numa in range(4))}
    assert {n["metadata"]["name"] for n in passing} == expected
    assert set(failed) == set(NODES) - expected
    assert expected != set(NODES)          # a node whose free NUMA nodes are all taken is refused
    # the CNRs carry the reclaimed resources per NUMA of all three nodes
    for item in env["custom"].list_cluster_custom_object(*CNR_ARGS)["items"]:
        zones = [z for s in item["status"]["topologyZone"] for z in s["children"]]
        assert len(zones) == 4 and all("resource.katalyst.kubewharf.io/reclaimed_memory" in z["resources"]["allocatable"] for z in zones)


def test_bad_annotation_is_an_event_and_unschedulable(sandbox):
    env = sandbox
    core = env["core"]
    assert schedule_and_run(env, tf_pod("rack", "worker", json.dumps({"required": [{"matchLabels": {"a": "b"}, "zone": "rack"}]}))) is None
    pod = core.read_namespaced_pod("rack", "default")
    condition = [c for c in pod.status.conditions or [] if c.type == "PodScheduled"][0]
    assert condition.status == "False" and "unknown zone 'rack'" in condition.message

    def warned():
        return [e for e in core.list_namespaced_event("default").items if e.reason == "InvalidMicrotopology" and e.involved_object.name == "rack"]

    wait_until(warned, what="the Event")
    assert "rack" in warned()[0].message


# -- aligned extended resources (Katalyst's alignedResources) and malformed bind results, over HTTP ---------------
GPU = "nvidia.com/gpu"
RECLAIMED = {"resource.katalyst.kubewharf.io/reclaimed_millicpu": "4k", "resource.katalyst.kubewharf.io/reclaimed_memory": "8Gi"}


def gpu_cnr_status(gpus, allocations=None):
    """The CNR status as the agent writes it (2 sockets x 2 NUMA: cpu/memory and the reclaimed resources per NUMA zone)
    merged with a device reporter's: ``nvidia.com/gpu`` in the zones of the NUMA nodes the GPUs hang off (``gpus``:
    {numa: count}), and the allocations of running pods (consumer ``ns/name/uid``) with the GPUs they hold."""
    sockets = {}
    for numa in range(4):
        resources = dict(RECLAIMED, cpu="8", memory="16Gi")
        if numa in gpus:
            resources[GPU] = str(gpus[numa])
        zone = {"type": "Numa", "name": str(numa), "resources": {"allocatable": resources, "capacity": dict(resources)},
                "attributes": [{"name": "numa_distance", "value": "10 20 32 32"}], "siblings": [{"type": "Numa", "name": str(numa ^ 1)}]}
        if (allocations or {}).get(numa):
            zone["allocations"] = allocations[numa]
        sockets.setdefault(str(numa // 2), []).append(zone)
    return {"topologyPolicy": "SingleNUMANodeContainerLevel", "resources": {"allocatable": dict(RECLAIMED), "capacity": dict(RECLAIMED)},
            "topologyZone": [{"type": "Socket", "name": s, "children": c} for s, c in sorted(sockets.items())]}


def gpu_body(name, gpus, cpu="4", node=None, bind_result=None):
    body = tf_pod(name, "gpu", cpu=cpu)
    for field in ("requests", "limits"):
        body["spec"]["containers"][0]["resources"][field][GPU] = str(gpus)
    if node:
        body["spec"]["nodeName"] = node
    if bind_result is not None:
        body["metadata"]["annotations"][BIND_RESULT] = bind_result
    return body


@pytest.fixture
def gpu_cluster(kubeapi, kube_client):
    """Three nodes: gpu-a (2 GPUs on NUMA 1, one held by a running pod, 2 on NUMA 3), gpu-b (1 GPU on NUMA 0), cpu-only
    (no GPU in its NUMA zones; one running pod there has a malformed numa_bind_result)."""
    install_crds(kube_client, ["customnoderesources"])
    core, custom = client.CoreV1Api(kube_client), client.CustomObjectsApi(kube_client)
    holder = core.create_namespaced_pod("default", gpu_body("holder", 1, cpu="2", node="gpu-a", bind_result="1"))
    core.patch_namespaced_pod_status("holder", "default", {"status": {"phase": "Running"}})
    broken = tf_pod("broken", "db")
    broken["spec"]["nodeName"] = "cpu-only"
    broken["metadata"]["annotations"][BIND_RESULT] = "numa-1"
    core.create_namespaced_pod("default", broken)
    core.patch_namespaced_pod_status("broken", "default", {"status": {"phase": "Running"}})
    consumer = "default/holder/%s" % holder.metadata.uid
    for name, gpus, allocations in (("gpu-a", {1: 2, 3: 2}, {1: [{"consumer": consumer, "requests": {"cpu": "2", "memory": "2Gi", GPU: "1"}}]}),
                                    ("gpu-b", {0: 1}, None), ("cpu-only", {}, None)):
        core.create_node({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}})
        node_gpus = {GPU: str(sum(gpus.values()))} if gpus else {}
        core.patch_node_status(name, {"status": {"capacity": dict(node_gpus, cpu="32", memory="64Gi", pods="110"),
                                                 "allocatable": dict(node_gpus, cpu="32", memory="64Gi", pods="110")}})
        custom.create_cluster_custom_object(*CNR_ARGS, {"apiVersion": "node.katalyst.kubewharf.io/v1alpha1", "kind": "CustomNodeResource",
                                                        "metadata": {"name": name}})
        custom.patch_cluster_custom_object_status(*CNR_ARGS, name, {"status": gpu_cnr_status(gpus, allocations)})
    daemons = []

    def start(**settings):
        extender = ExtenderDaemon(dict({"listen_address": "127.0.0.1", "port": 0, "plugins": ["NUMA"], "json_logs": False}, **settings),
                                  api_client=kube_client)
        port = extender.start(wait_synced=15)
        daemons.append(extender)
        wait_until(lambda: all(extender.cache.cnr(n) for n in ("gpu-a", "gpu-b", "cpu-only")) and extender.cache.pods_on("cpu-only"),
                   what="the extender cache")
        return Extender({"urlPrefix": "http://127.0.0.1:%d" % port, "filterVerb": "filter", "prioritizeVerb": "prioritize",
                         "nodeCacheCapable": True})

    nodes = [core.api_client.sanitize_for_serialization(core.read_node(n)) for n in ("gpu-a", "gpu-b", "cpu-only")]
    yield {"core": core, "start": start, "nodes": nodes}
    for extender in daemons:
        extender.stop()


def test_gpu_aligned_pods_fit_where_one_numa_node_has_the_gpus_cpus_and_memory(gpu_cluster):
    env = gpu_cluster
    core = env["core"]
    probe = env["start"](numa_aligned_resources=["cpu", "memory", GPU])
    two = core.api_client.sanitize_for_serialization(core.create_namespaced_pod("default", gpu_body("two", 2)))
    passing, failed = probe.filter(two, env["nodes"])
    # gpu-a: NUMA 3 has both GPUs free; gpu-b has one GPU; cpu-only reports no GPU in any NUMA zone
    assert [n["metadata"]["name"] for n in passing] == ["gpu-a"]
    assert failed == {"gpu-b": "cannot align container main",
                      "cpu-only": "cannot align container main: no NUMA zone of the node reports nvidia.com/gpu"}
    one = core.api_client.sanitize_for_serialization(core.create_namespaced_pod("default", gpu_body("one", 1, cpu="7")))
    passing, failed = probe.filter(one, env["nodes"])
    assert [n["metadata"]["name"] for n in passing] == ["gpu-a", "gpu-b"]     # gpu-a: NUMA 3 (NUMA 1 has 6 CPUs left)
    scores = probe.prioritize(one, passing)
    assert set(scores) == {"gpu-a", "gpu-b"} and all(0 <= s <= 10 for s in scores.values())

    # the malformed numa_bind_result of the pod on cpu-only: a Warning Event on that pod, once; the nodes were answered
    def warned():
        return [e for e in core.list_namespaced_event("default").items if e.reason == "InvalidNUMABindResult" and e.involved_object.name == "broken"]

    wait_until(warned, what="the InvalidNUMABindResult Event")
    assert len(warned()) == 1 and "'numa-1'" in warned()[0].message
    # Katalyst's default (cpu, memory): a resource no NUMA zone reports is left to kube-scheduler's node-level fit (the
    # single-NUMA policy still puts the GPUs that NUMA zones report on the pod's one NUMA node)
    default = env["start"]()
    passing, failed = default.filter(two, env["nodes"])
    assert [n["metadata"]["name"] for n in passing] == ["gpu-a", "cpu-only"] and failed == {"gpu-b": "cannot align container main"}
