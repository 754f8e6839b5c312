# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""Placement: NUMA fit (native/dynamic, single-NUMA and numeric), reclaimed fit, NUMA inter-pod (anti-)affinity."""

from __future__ import annotations

import json

import pytest

from ansible_collections.katalyst.colocation.plugins.module_utils.placement import (
    AFFINITY_KEY, ANTI_AFFINITY_KEY, AffinityError, UNSCHEDULABLE_AFFINITY, choose_numa_for_pod, filter_pod, normalize_scores,
    numa_resource_fit, parse_microtopology, reclaimed_resource_fit, score_pod,
)

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
    affinity = {AFFINITY_KEY: json.dumps({"required": [{"matchLabels": {"g": "g"}}]})}
    assert not filter_pod(pod("x", memory_enhancement=EXCLUSIVE, annotations=affinity), {}, cnr("None"), [])["fit"]
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
