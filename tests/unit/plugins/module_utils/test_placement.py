# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""Placement: NUMA fit (native/dynamic, single-NUMA and numeric), reclaimed fit, NUMA inter-pod (anti-)affinity."""

from __future__ import annotations

import json

import pytest

from ansible_collections.katalyst.colocation.plugins.module_utils.placement import (
    DEFAULT_ALIGNED_RESOURCES, UNSCHEDULABLE_AFFINITY, aligned_resource_names, bind_result, bind_result_problem, bind_result_problems,
    choose_numa_for_pod, filter_pod, node_view, normalize_scores, numa_resource_fit, reclaimed_resource_fit, score_pod,
)
from ansible_collections.katalyst.colocation.plugins.module_utils.podview import AFFINITY_KEY, ANTI_AFFINITY_KEY, AffinityError, parse_microtopology

GI = 1 << 30
BINDING = json.dumps({"numa_binding": "true"})
EXCLUSIVE = json.dumps({"numa_binding": "true", "numa_exclusive": "true"})


def cnr(policy, numas=4, cpu="8", memory="16Gi", allocations=None, numas_per_socket=2, reclaimed=None):
    sockets = {}
    for numa in range(numas):
        zone = {"type": "Numa", "name": str(numa),
                "resources": {"allocatable": {"cpu": cpu, "memory": memory}, "capacity": {"cpu": cpu, "memory": memory}},
                "allocations": (allocations or {}).get(numa, [])}
        sockets.setdefault(str(numa // numas_per_socket), []).append(zone)
    status = {"topologyPolicy": policy, "topologyZone": [{"type": "Socket", "name": s, "children": z} for s, z in sockets.items()]}
    if reclaimed:
        status["resources"] = {"allocatable": reclaimed}
    return {"metadata": {"name": "n1"}, "status": status}


def pod(name, cpu="2", memory="2Gi", qos="dedicated_cores", memory_enhancement=BINDING, labels=None, annotations=None,
        uid=None, limits=True, extra_requests=None):
    ann = {"katalyst.kubewharf.io/qos_level": qos}
    if memory_enhancement:
        ann["katalyst.kubewharf.io/memory_enhancement"] = memory_enhancement
    ann.update(annotations or {})
    requests = dict({"cpu": cpu, "memory": memory}, **(extra_requests or {}))
    resources = {"requests": requests}
    if limits:
        resources["limits"] = {"cpu": cpu, "memory": memory}
    return {"metadata": {"name": name, "namespace": "default", "uid": uid or name, "labels": labels or {}, "annotations": ann},
            "spec": {"containers": [{"name": "main", "resources": resources}]}, "status": {"phase": "Running"}}


def alloc(p, cpu="2", memory="2Gi"):
    return {"consumer": "default/%s/%s" % (p["metadata"]["name"], p["metadata"]["uid"]), "requests": {"cpu": cpu, "memory": memory}}


def bound(p, numa):
    p["metadata"]["annotations"]["katalyst.kubewharf.io/numa_bind_result"] = str(numa)
    return p


# -- scheduler/nrt ------------------------------------------------------------------------------------
def test_unsupported_pods_and_missing_cnr_pass():
    shared = pod("s", qos="shared_cores", memory_enhancement=None)
    single = "SingleNUMANodeContainerLevel"
    assert numa_resource_fit(shared, cnr(single), [])["numas"] is None
    assert numa_resource_fit(pod("d"), None, [])["fit"]
    assert numa_resource_fit(pod("d"), cnr("None"), [])["numas"] is None           # unknown policy: no handling
    assert numa_resource_fit(pod("d"), cnr("none"), [])["numas"] is None           # CRD default spelling
    assert numa_resource_fit(pod("d"), cnr(single), [])["numas"] == [0, 1, 2, 3]


def test_dynamic_single_numa_counts_only_dedicated_allocations():
    big = pod("big", cpu="6")
    shared = pod("sh", qos="shared_cores", memory_enhancement=None, cpu="8")
    dedicated = pod("de", cpu="4")
    node_cnr = cnr("SingleNUMANodeContainerLevel", allocations={0: [alloc(shared, "8")], 1: [alloc(dedicated, "4")]})
    got = numa_resource_fit(big, node_cnr, [shared, dedicated])
    assert got["fit"] and got["numas"] == [0, 2, 3]       # shared pod's allocation ignored by dynamic, dedicated counted
    native = pod("nat", cpu="6", qos="shared_cores", memory_enhancement=None)
    assert numa_resource_fit(native, node_cnr, [shared, dedicated], policy="native")["numas"] == [2, 3]


def test_exclusive_needs_idle_numa_and_fails_when_none():
    node_cnr = cnr("SingleNUMANodeContainerLevel", numas=2, allocations={0: [alloc(pod("a"), "1", "1Gi")]})
    exclusive = pod("x", cpu="2", memory_enhancement=EXCLUSIVE)
    assert numa_resource_fit(exclusive, node_cnr, [pod("a")])["numas"] == [1]
    full = cnr("SingleNUMANodeContainerLevel", numas=2, allocations={0: [alloc(pod("a"), "1")], 1: [alloc(pod("b"), "1")]})
    got = numa_resource_fit(exclusive, full, [pod("a"), pod("b")])
    assert not got["fit"] and "cannot align" in got["reason"]


def test_native_requires_guaranteed_integer_cpus_and_pod_level():
    fractional = pod("f", cpu="1500m", qos="shared_cores", memory_enhancement=None)
    burstable = pod("b", qos="shared_cores", memory_enhancement=None, limits=False)
    node_cnr = cnr("SingleNUMANodePodLevel", cpu="4")
    assert numa_resource_fit(fractional, node_cnr, [], "native")["numas"] is None
    assert numa_resource_fit(burstable, node_cnr, [], "native")["numas"] is None
    too_big = pod("t", cpu="6", qos="shared_cores", memory_enhancement=None)
    assert not numa_resource_fit(too_big, node_cnr, [], "native")["fit"]


def test_numeric_handler_single_numa_for_binding_and_socket_rule():
    node_cnr = cnr("NumericContainerLevel", allocations={0: [alloc(pod("a"), "7")]})
    got = numa_resource_fit(pod("p", cpu="4"), node_cnr, [pod("a")])
    assert got["fit"] and got["numas"] == [1]
    assert not numa_resource_fit(pod("p", cpu="12"), node_cnr, [pod("a")])["fit"]     # binding, not exclusive: 1 NUMA
    exclusive = pod("x", cpu="12", memory_enhancement=EXCLUSIVE)
    # two idle NUMA nodes of one socket (2 and 3); 1+2 would span sockets
    assert numa_resource_fit(exclusive, node_cnr, [pod("a")])["numas"] == [2, 3]


# -- QoS-aware reclaimed fit ----------------------------------------------------------------------------
def test_reclaimed_resource_fit():
    rname = "resource.katalyst.kubewharf.io/reclaimed_millicpu"
    node_cnr = cnr("None", reclaimed={rname: "4k", "resource.katalyst.kubewharf.io/reclaimed_memory": "8Gi"})
    reclaimed = pod("r", qos="reclaimed_cores", memory_enhancement=None, cpu="0", memory="0", extra_requests={rname: "3k"})
    running = pod("r0", qos="reclaimed_cores", memory_enhancement=None, cpu="0", memory="0", extra_requests={rname: "2k"})
    assert reclaimed_resource_fit(reclaimed, node_cnr, []) == (True, "")
    assert reclaimed_resource_fit(reclaimed, node_cnr, [running]) == (False, "Insufficient %s" % rname)
    assert reclaimed_resource_fit(reclaimed, None, []) == (False, "Insufficient %s" % rname)
    assert filter_pod(reclaimed, {}, node_cnr, [running])["reason"] == "Insufficient %s" % rname


# -- unmerged/numa-interpod-affinity (with our fixes) -----------------------------------------------------
def anti(*terms, preferred=()):
    return {ANTI_AFFINITY_KEY: json.dumps({"required": list(terms), "preferred": list(preferred)})}


def test_parse_annotation_errors_and_case_insensitive_keys():
    parsed = parse_microtopology({AFFINITY_KEY: '{"Required": [{"MatchLabels": {"app": "ps"}}]}'}, AFFINITY_KEY)
    assert parsed["required"][0]["zone"] == "numa"
    for bad in ("{", "[]", '{"required": [{"matchLabels": {"a": "b"}, "zone": "rack"}]}', '{"required": [{"zone": "numa"}]}',
                '{"required": [{"matchLabels": null}]}', '{"preferred": [{"matchLabels": {"a": "b"}, "weight": 0}]}'):
        with pytest.raises(AffinityError):
            parse_microtopology({AFFINITY_KEY: bad}, AFFINITY_KEY)


def tensorflow_node():
    """Two parameter servers on NUMA 0 and 2; workers must avoid their NUMA nodes."""
    ps0 = bound(pod("ps0", labels={"app": "tf", "role": "ps"}), 0)
    ps2 = bound(pod("ps2", labels={"app": "tf", "role": "ps"}), 2)
    return [ps0, ps2]


def test_tensorflow_workers_avoid_parameter_server_numas():
    worker = pod("w", labels={"app": "tf", "role": "worker"},
                 annotations=anti({"matchLabels": {"app": "tf", "role": "ps"}, "zone": "numa"}))
    got = filter_pod(worker, {}, cnr("SingleNUMANodeContainerLevel"), tensorflow_node())
    assert got["fit"] and got["numas"] == [1, 3]
    socket_wide = pod("w", labels={"role": "worker"}, annotations=anti({"matchLabels": {"role": "ps"}, "zone": "socket"}))
    got = filter_pod(socket_wide, {}, cnr("SingleNUMANodeContainerLevel"), tensorflow_node())
    assert not got["fit"] and got["reason"] == UNSCHEDULABLE_AFFINITY


def test_match_labels_are_anded_not_ored():
    # Katalyst's draft counts each pair separately: {app: tf, role: ps} would match a worker via app=tf.
    worker0 = bound(pod("w0", labels={"app": "tf", "role": "worker"}), 1)
    ps = pod("ps", labels={"app": "tf", "role": "ps"}, annotations=anti({"matchLabels": {"app": "tf", "role": "ps"}}))
    got = filter_pod(ps, {}, cnr("SingleNUMANodeContainerLevel"), [worker0])
    assert got["numas"] == [0, 1, 2, 3]


def test_match_expressions_and_existing_pods_anti_affinity_is_symmetric():
    ps = bound(pod("ps", labels={"role": "ps"}, annotations=anti({"matchExpressions": [
        {"key": "role", "operator": "In", "values": ["worker", "chief"]}]})), 3)
    worker = pod("w", labels={"role": "chief"})
    assert filter_pod(worker, {}, cnr("SingleNUMANodeContainerLevel"), [ps])["numas"] == [0, 1, 2]


def test_required_affinity_and_first_of_group():
    affinity = {AFFINITY_KEY: json.dumps({"required": [{"matchLabels": {"group": "g"}, "zone": "socket"}]})}
    first = pod("a", labels={"group": "g"}, annotations=affinity)
    assert filter_pod(first, {}, cnr("SingleNUMANodeContainerLevel"), [])["numas"] == [0, 1, 2, 3]
    member = bound(pod("m", labels={"group": "g"}), 2)
    assert filter_pod(first, {}, cnr("SingleNUMANodeContainerLevel"), [member])["numas"] == [2, 3]
    stranger = pod("s", labels={}, annotations=affinity)
    assert not filter_pod(stranger, {}, cnr("SingleNUMANodeContainerLevel"), [])["fit"]


def test_bad_annotation_is_unschedulable_with_problem_not_a_crash():
    bad = pod("b", annotations={ANTI_AFFINITY_KEY: '{"required": [{"matchLabels": {"a": "b"}, "zone": "rack"}]}'})
    got = filter_pod(bad, {}, cnr("SingleNUMANodeContainerLevel"), [])
    assert not got["fit"] and "rack" in got["reason"] and got["problems"]
    broken_neighbour = bound(pod("n", annotations={ANTI_AFFINITY_KEY: "{"}), 0)
    got = filter_pod(pod("p"), {}, cnr("SingleNUMANodeContainerLevel"), [broken_neighbour])
    assert got["fit"] and got["problems"] and "default/n" in got["problems"][0]


def test_exclusive_with_required_affinity_rejected_and_no_zones():
    # Katalyst's PreFilter fails with an error; we make the pod unschedulable with the reason and a problem for an Event
    # (docs/katalyst-differences.md)
    affinity = {AFFINITY_KEY: json.dumps({"required": [{"matchLabels": {"g": "g"}}]})}
    got = filter_pod(pod("x", memory_enhancement=EXCLUSIVE, annotations=affinity), {}, cnr("None"), [])
    assert got == {"fit": False, "reason": "a numa_exclusive pod cannot have required microtopology affinity", "numas": [],
                   "problems": ["default/x: numa_exclusive with required microtopology affinity"]}
    empty = {"status": {"topologyPolicy": "None", "topologyZone": []}}
    got = filter_pod(pod("p", annotations=anti({"matchLabels": {"a": "b"}})), {}, empty, [])
    assert not got["fit"] and "Node Resource Topology" in got["reason"]


def test_scores_prefer_free_numa_and_preferred_terms():
    busy = cnr("SingleNUMANodeContainerLevel", numas=2, allocations={0: [alloc(pod("a"), "6")], 1: [alloc(pod("b"), "6")]})
    idle = cnr("SingleNUMANodeContainerLevel", numas=2)
    p = pod("p")
    raw = {"busy": score_pod(p, {}, busy, [pod("a"), pod("b")]), "idle": score_pod(p, {}, idle, [])}
    assert raw["idle"] > raw["busy"]
    assert normalize_scores(raw) == {"busy": 0, "idle": 10}
    friend = bound(pod("f", labels={"team": "x"}), 1)
    likes = pod("l", annotations={AFFINITY_KEY: json.dumps({"preferred": [{"matchLabels": {"team": "x"}, "weight": 5}]})})
    assert score_pod(likes, {}, idle, [friend]) > score_pod(pod("l"), {}, idle, [friend])


# -- node side ---------------------------------------------------------------------------------------------
FACTS = {"numa_nodes": [{"id": n, "cpus": "%d-%d" % (4 * n, 4 * n + 3), "cpu_count": 4, "socket": n // 2, "memory_bytes": 16 * GI}
                        for n in range(4)]}


def test_choose_numa_honours_anti_affinity_and_resources():
    ps = [bound(pod("ps0", labels={"role": "ps"}), 0), bound(pod("ps1", labels={"role": "ps"}), 1)]
    worker = pod("w", labels={"role": "worker"}, annotations=anti({"matchLabels": {"role": "ps"}}))
    got = choose_numa_for_pod(worker, FACTS, ps)
    assert got["numa"] == 2 and got["cpuset_cpus"] == "8-11" and got["cpuset_mems"] == "2"
    assert got["annotations"] == {"katalyst.kubewharf.io/numa_bind_result": "2"}
    full = [bound(pod("x%d" % n, cpu="4"), n) for n in (2, 3)]
    assert choose_numa_for_pod(worker, FACTS, ps + full)["numa"] is None
    assert choose_numa_for_pod(bound(pod("keep"), 3), FACTS, [])["numa"] == 3
    assert choose_numa_for_pod(pod("s", qos="shared_cores", memory_enhancement=None), FACTS, [])["numa"] is None


# -- aligned resources (Katalyst's alignedResources) -------------------------------------------------------
GPU = "nvidia.com/gpu"
WITH_GPU = aligned_resource_names(["cpu", "memory", GPU])


def gpu_cnr(policy, gpus=None, allocations=None):
    """A CNR as the agent and a device reporter write it: 2 sockets x 2 NUMA, cpu/memory (and the reclaimed resources)
    per NUMA zone, plus ``nvidia.com/gpu`` in the zones of the NUMA nodes the GPUs are attached to (``gpus``:
    {numa: count}; other zones do not list the resource). Allocations carry the GPUs a pod holds on that NUMA."""
    node_cnr = cnr(policy, allocations=allocations)
    for socket in node_cnr["status"]["topologyZone"]:
        for zone in socket["children"]:
            for field in ("allocatable", "capacity"):
                zone["resources"][field].update({"resource.katalyst.kubewharf.io/reclaimed_millicpu": "4k",
                                                 "resource.katalyst.kubewharf.io/reclaimed_memory": "8Gi"})
                if int(zone["name"]) in (gpus or {}):
                    zone["resources"][field][GPU] = str(gpus[int(zone["name"])])
    return node_cnr


def gpu_pod(name, gpus, cpu="4", enhancement=BINDING):
    p = pod(name, cpu=cpu, memory_enhancement=enhancement, extra_requests={GPU: str(gpus)})
    p["spec"]["containers"][0]["resources"]["limits"][GPU] = str(gpus)
    return p


def gpu_alloc(p, numa_cpu, gpus):
    return {"consumer": "default/%s/%s" % (p["metadata"]["name"], p["metadata"]["uid"]),
            "requests": {"cpu": numa_cpu, "memory": "2Gi", GPU: str(gpus)}}


def test_aligned_resource_names_is_the_setting_checked():
    assert aligned_resource_names(["cpu", "memory"]) == DEFAULT_ALIGNED_RESOURCES == frozenset(("cpu", "memory"))
    assert aligned_resource_names(("cpu", "memory", GPU, "hugepages-2Mi", "cpu")) == frozenset(("cpu", "memory", GPU, "hugepages-2Mi"))
    assert aligned_resource_names([]) == frozenset()
    for bad in ("cpu", ["nvidia.com/"], ["a b"], [5], ["-gpu"], ["x/" + "g" * 64], None):
        with pytest.raises(ValueError, match="aligned resources"):
            aligned_resource_names(bad)


def test_gpu_aligned_pod_fits_only_where_one_numa_has_enough_gpus_cpu_and_memory():
    # GPUs on NUMA 1 (2, one held by a running pod) and NUMA 3 (2); NUMA 3's CPUs are half taken
    holder, busy = pod("holder", cpu="2"), pod("busy", cpu="4")
    allocations = {1: [gpu_alloc(holder, "2", 1)], 3: [alloc(busy, "4")]}
    single = gpu_cnr("SingleNUMANodeContainerLevel", {1: 2, 3: 2}, allocations)
    on_node = [holder, busy]
    got = filter_pod(gpu_pod("two", 2), {}, single, on_node, aligned_resources=WITH_GPU)
    assert got["fit"] and got["numas"] == [3]                   # NUMA 1 has one GPU left
    got = filter_pod(gpu_pod("one", 1, cpu="6"), {}, single, on_node, aligned_resources=WITH_GPU)
    assert got["fit"] and got["numas"] == [1]                   # NUMA 3 has 4 CPUs left, NUMA 0 and 2 no GPU
    got = filter_pod(gpu_pod("two-six", 2, cpu="6"), {}, single, on_node, aligned_resources=WITH_GPU)
    assert not got["fit"] and got["reason"] == "cannot align container main"      # 3 GPUs free on the node, none with 6 CPUs
    # numeric policy: a NUMA-binding pod gets its aligned resources from one NUMA node
    numeric = gpu_cnr("NumericContainerLevel", {1: 2, 3: 2}, allocations)
    assert numa_resource_fit(gpu_pod("two", 2), numeric, on_node, aligned_resources=WITH_GPU)["numas"] == [3]
    assert numa_resource_fit(gpu_pod("one", 1), numeric, on_node, aligned_resources=WITH_GPU)["numas"] == [1]
    # Katalyst's default (cpu, memory): GPUs are not aligned, cpu and memory take the first NUMA that fits, and the GPUs
    # only have to exist on the node's NUMA nodes
    assert numa_resource_fit(gpu_pod("two", 2), numeric, on_node)["numas"] == [0]
    assert not numa_resource_fit(gpu_pod("four", 4), numeric, on_node)["fit"]      # 3 GPUs free in all
    # exclusive: the smallest set of idle NUMA nodes (of one socket while it fits in one) holding the CPUs and the GPUs;
    # here only NUMA 0 and 2 are idle and neither has a GPU
    exclusive = gpu_pod("x", 3, cpu="12", enhancement=EXCLUSIVE)
    assert not numa_resource_fit(exclusive, numeric, on_node, aligned_resources=WITH_GPU)["fit"]
    idle = gpu_cnr("NumericContainerLevel", {2: 2, 3: 2})
    assert numa_resource_fit(exclusive, idle, [], aligned_resources=WITH_GPU)["numas"] == [2, 3]
    assert numa_resource_fit(exclusive, idle, [])["numas"] == [0, 1]      # GPUs not aligned: the first idle pair


def test_gpu_aligned_pod_is_refused_by_a_node_whose_numa_zones_report_no_gpu():
    for policy in ("SingleNUMANodeContainerLevel", "NumericContainerLevel"):
        no_gpus = gpu_cnr(policy)
        got = filter_pod(gpu_pod("g", 1), {}, no_gpus, [], aligned_resources=WITH_GPU)
        assert not got["fit"] and got["reason"].startswith("cannot align container")
        assert got["reason"].endswith(": no NUMA zone of the node reports nvidia.com/gpu")
        # not aligned (Katalyst's default): a resource no NUMA zone reports is left to kube-scheduler's node-level fit
        assert filter_pod(gpu_pod("g", 1), {}, no_gpus, [])["fit"]
    native = gpu_pod("n", 1)
    native["metadata"]["annotations"] = {}
    got = numa_resource_fit(native, gpu_cnr("SingleNUMANodePodLevel"), [], "native", aligned_resources=WITH_GPU)
    assert got == {"fit": False, "numas": [], "reason": "cannot align pod: no NUMA zone of the node reports nvidia.com/gpu"}
    assert score_pod(gpu_pod("g", 1), {}, gpu_cnr("SingleNUMANodeContainerLevel", {0: 1}), [], aligned_resources=WITH_GPU) > 0


# -- numa_bind_result ----------------------------------------------------------------------------------------
def test_malformed_bind_result_is_read_as_absent_and_listed_for_a_report():
    assert bind_result(bound(pod("a"), "0, 2")) == (0, 2) and bind_result(pod("b")) is None
    assert bind_result_problem(bound(pod("a"), "1")) is None
    broken = bound(pod("broken", cpu="4"), "x")
    assert bind_result(broken) is None and "numa_bind_result='x'" in bind_result_problem(broken)
    done = bound(pod("done"), "oops")
    done["status"]["phase"] = "Succeeded"
    assert [(p["metadata"]["name"], problem) for p, problem in bind_result_problems([broken, done, bound(pod("ok"), "2")])] == [
        ("broken", bind_result_problem(broken))]
    # the NUMA-binding pod with an unreadable result counts as not pinned yet: on every NUMA node (pessimistic)
    view = node_view(cnr("SingleNUMANodeContainerLevel"), [broken])
    assert view["bind_result_problems"] == [(broken, bind_result_problem(broken))]
    assert {numa: values["cpu"] for numa, values in view["available"].items()} == {0: 4000, 1: 4000, 2: 4000, 3: 4000}
    assert filter_pod(pod("p", cpu="6"), {}, cnr("SingleNUMANodeContainerLevel"), [broken])["reason"] == "cannot align container main"
    # on the node side the pod's neighbours go on (the broken one is not counted anywhere, as a pod not pinned yet)
    assert choose_numa_for_pod(pod("w"), FACTS, [broken])["numa"] == 0
