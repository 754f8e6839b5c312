"""Overcommit engine: every worked example of cluster spec section 2, plus our fixes (guard, originals)."""

import copy
import math

import jsonpatch
import pytest

from ansible_collections.katalyst.colocation.plugins.module_utils import overcommit as oc

CPU_RATIO = "katalyst.kubewharf.io/cpu_overcommit_ratio"
MEM_RATIO = "katalyst.kubewharf.io/memory_overcommit_ratio"
RT_CPU = "katalyst.kubewharf.io/realtime_cpu_overcommit_ratio"
RT_MEM = "katalyst.kubewharf.io/realtime_memory_overcommit_ratio"
ORIG = "katalyst.kubewharf.io/original_"
OVER = "katalyst.kubewharf.io/overcommit_"


# -- 2.3 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("annotations, expected", [
    ({}, 1.0),
    ({CPU_RATIO: "2"}, 2.0),
    ({CPU_RATIO: "1.5", RT_CPU: "1.2"}, 1.2),
    ({CPU_RATIO: "1.5", RT_CPU: "3"}, 1.5),
    ({CPU_RATIO: "2", RT_CPU: "junk"}, 1.0),        # unparsable realtime counts as 0 -> 1
    ({CPU_RATIO: "0.5"}, 1.0),
    ({CPU_RATIO: "2", RT_CPU: "0.5"}, 1.0),
    ({CPU_RATIO: "1e1"}, 10.0),
    ({CPU_RATIO: "0x1p1"}, 2.0),
    ({CPU_RATIO: "Inf"}, math.inf),
    ({CPU_RATIO: "+Infinity"}, math.inf),
])
def test_validate_overcommit_ratio(annotations, expected):
    assert oc.validate_overcommit_ratio(annotations, CPU_RATIO, RT_CPU) == expected


def test_validate_nan_passes_through_like_go():
    assert math.isnan(oc.validate_overcommit_ratio({CPU_RATIO: "NaN"}, CPU_RATIO, RT_CPU))


@pytest.mark.parametrize("bad", ["xx", "illegal value", "1_000", "", " 2", "2 ", "1e400", "+nan", "0x1.8", "1.5.0"])
def test_validate_overcommit_ratio_rejects_what_go_rejects(bad):
    with pytest.raises(ValueError):
        oc.validate_overcommit_ratio({CPU_RATIO: bad}, CPU_RATIO, RT_CPU)


@pytest.mark.parametrize("text, ok", [("1", True), ("1.5", True), ("10", True), ("0.9", False), ("Inf", False), ("NaN", False),
                                      ("abc", False), ("1_5", False), ("", False)])
def test_check_ratio_value(text, ok):
    if ok:
        assert oc.check_ratio_value(text) == float(text)
    else:
        with pytest.raises(ValueError):
            oc.check_ratio_value(text)


def test_check_ratio_value_maximum():
    assert oc.check_ratio_value("3", maximum=3) == 3.0
    with pytest.raises(ValueError, match="maximum"):
        oc.check_ratio_value("3.5", maximum=3)


# -- 2.4 step 6 (noc/nodeOvercommitResource/*) ---------------------------------------------------------
def originals(cpu_alloc, cpu_cap, mem_alloc, mem_cap):
    return {ORIG + "allocatable_cpu": cpu_alloc, ORIG + "capacity_cpu": cpu_cap,
            ORIG + "allocatable_memory": mem_alloc, ORIG + "capacity_memory": mem_cap}


STATIC4 = {"katalyst.kubewharf.io/overcommit_cpu_manager": "static", "katalyst.kubewharf.io/guaranteed_cpus": "4"}


@pytest.mark.parametrize("resource, annotations, cnr, ratio, expected", [
    ("cpu", originals("15600m", "16000m", "1", "1"), None, 1.2, ("18720m", "19200m")),
    ("memory", originals("1", "1", "29258114498560m", "29258114498560m"), None, 1.2, ("35109737398", "35109737398")),
    ("memory", originals("1", "1", "29258114498560m", "29258114498560m"), None, 1.0, ("29258114498560m", "29258114498560m")),
    ("memory", originals("1", "1", "1Ei", "1Ei"), None, 2.0, ("2Ei", "2Ei")),
    ("cpu", originals("15600m", "16000m", "1", "1"), STATIC4, 1.2, ("17920m", "18400m")),
    ("cpu", originals("15600m", "16000m", "1", "1"), dict(STATIC4, **{"katalyst.kubewharf.io/overcommit_cpu_manager": "none"}),
     1.2, ("18720m", "19200m")),
    ("cpu", originals("15600m", "16000m", "1", "1"), dict(STATIC4, **{"katalyst.kubewharf.io/guaranteed_cpus": "x"}), 1.2,
     ("18720m", "19200m")),
    ("cpu", originals("15600m", "16000m", "1", "1"), {}, 1.2, ("18720m", "19200m")),
    ("cpu", originals("16", "16", "1", "1"), None, 0.5, ("16", "16")),       # r <= 1 -> 1
    ("cpu", originals("16000m", "16", "1", "1"), None, 1.0, ("16", "16")),   # canonical form
    ("cpu", {ORIG + "capacity_cpu": "16"}, None, 2.0, ("", "")),
    ("cpu", originals("bad", "16", "1", "1"), None, 2.0, ("", "")),
    ("cpu", originals("16", "16", "1", "1"), None, math.inf, ("", "")),
])
def test_overcommit_resource(resource, annotations, cnr, ratio, expected):
    assert oc.overcommit_resource(resource, annotations, cnr, ratio) == expected


# -- 2.5 (webhook/node/*) ------------------------------------------------------------------------
def kubelet_node(annotations=None, name="node0"):
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "status": {"capacity": {"cpu": "48", "memory": "192Gi", "pods": "110"},
                       "allocatable": {"cpu": "44", "memory": "186Gi", "pods": "110"}}}
    if annotations is not None:
        node["metadata"]["annotations"] = annotations
    return node


ORIGINALS_48 = {ORIG + "allocatable_cpu": "44", ORIG + "allocatable_memory": "186Gi",
                ORIG + "capacity_cpu": "48", ORIG + "capacity_memory": "192Gi"}


@pytest.mark.parametrize("annotations, cpu, memory", [
    ({CPU_RATIO: "2", MEM_RATIO: "1.2"}, ("88", "96"), ("239659175116", "247390116249")),
    (None, ("44", "48"), ("186Gi", "192Gi")),
    ({CPU_RATIO: "2"}, ("88", "96"), ("186Gi", "192Gi")),
    ({MEM_RATIO: "1.2"}, ("44", "48"), ("239659175116", "247390116249")),
    ({MEM_RATIO: "1.2", CPU_RATIO: "illegal value"}, ("44", "48"), ("239659175116", "247390116249")),
    ({"testKey": "testVal"}, ("44", "48"), ("186Gi", "192Gi")),
    ({CPU_RATIO: "2", MEM_RATIO: "1.2", RT_CPU: "1", RT_MEM: "1"}, ("44", "48"), ("186Gi", "192Gi")),
    ({CPU_RATIO: "2", MEM_RATIO: "1.2", RT_CPU: "2", RT_MEM: "2", OVER + "allocatable_cpu": "80", OVER + "capacity_cpu": "80",
      OVER + "allocatable_memory": "372Gi", OVER + "capacity_memory": "384Gi"}, ("80", "80"), ("372Gi", "384Gi")),
    # overcommit_* are used only when the ratio key exists (spec bug 10, copied)
    ({OVER + "allocatable_cpu": "80", OVER + "capacity_cpu": "80"}, ("44", "48"), ("186Gi", "192Gi")),
    # one unparsable precomputed value -> ratio math
    ({CPU_RATIO: "2", OVER + "allocatable_cpu": "x", OVER + "capacity_cpu": "80"}, ("88", "96"), ("186Gi", "192Gi")),
])
def test_mutate_node(annotations, cpu, memory):
    node = kubelet_node(copy.deepcopy(annotations))
    before = copy.deepcopy(node)
    mutated = oc.mutate_node(node, "UPDATE", "status")
    assert node == before
    status = mutated["status"]
    assert (status["allocatable"]["cpu"], status["capacity"]["cpu"]) == cpu
    assert (status["allocatable"]["memory"], status["capacity"]["memory"]) == memory
    assert status["allocatable"]["pods"] == "110"
    for key, value in ORIGINALS_48.items():
        assert mutated["metadata"]["annotations"][key] == value
    for key, value in (annotations or {}).items():
        assert mutated["metadata"]["annotations"][key] == value


def test_mutate_node_patch_matches_katalyst():
    node = kubelet_node({CPU_RATIO: "2", MEM_RATIO: "1.2"})
    ops = jsonpatch.make_patch(node, oc.mutate_node(node, "UPDATE", "status")).patch
    assert {"op": "add", "path": "/metadata/annotations/katalyst.kubewharf.io~1original_allocatable_cpu", "value": "44"} in ops
    assert {"op": "replace", "path": "/status/allocatable/cpu", "value": "88"} in ops
    assert {"op": "replace", "path": "/status/capacity/memory", "value": "247390116249"} in ops
    bare = kubelet_node()
    ops = jsonpatch.make_patch(bare, oc.mutate_node(bare, "UPDATE", "status")).patch
    assert ops == [{"op": "add", "path": "/metadata/annotations", "value": ORIGINALS_48}]


@pytest.mark.parametrize("operation, sub", [("CREATE", "status"), ("UPDATE", ""), ("DELETE", "status")])
def test_mutate_node_other_requests_unchanged(operation, sub):
    node = kubelet_node({CPU_RATIO: "2"})
    assert oc.mutate_node(node, operation, sub) == node


def test_mutate_node_missing_resource_is_zero():
    node = {"metadata": {"name": "n", "annotations": {CPU_RATIO: "2"}}, "status": {"capacity": {"cpu": "4"}, "allocatable": {"cpu": "4"}}}
    annotations = oc.mutate_node(node, "UPDATE", "status")["metadata"]["annotations"]
    assert annotations[ORIG + "allocatable_memory"] == "0" and annotations[ORIG + "capacity_memory"] == "0"


def test_mutate_node_keeps_true_originals_when_amplified_values_pass_through():
    stored = oc.mutate_node(kubelet_node({CPU_RATIO: "2", MEM_RATIO: "1.2"}), "UPDATE", "status")
    # a non-kubelet client updates status (e.g. a condition) and passes the amplified values through
    incoming = copy.deepcopy(stored)
    incoming["status"]["conditions"] = [{"type": "Example", "status": "True"}]
    without_old = oc.mutate_node(incoming, "UPDATE", "status")
    assert without_old["status"]["allocatable"]["cpu"] == "176"        # katalyst: amplified twice
    again = oc.mutate_node(incoming, "UPDATE", "status", old_node=stored)
    assert again["metadata"]["annotations"][ORIG + "allocatable_cpu"] == "44"
    assert again["metadata"]["annotations"][ORIG + "capacity_memory"] == "192Gi"
    assert again["status"]["allocatable"]["cpu"] == "88"
    assert again["status"]["capacity"]["memory"] == "247390116249"
    # ratio removed meanwhile: the pass-through is restored to the originals
    incoming["metadata"]["annotations"][CPU_RATIO] = "1"
    restored = oc.mutate_node(incoming, "UPDATE", "status", old_node=stored)
    assert restored["status"]["allocatable"]["cpu"] == "44" and restored["status"]["capacity"]["cpu"] == "48"
    # a kubelet heartbeat reports fresh (different) values: they are the new originals
    heartbeat = kubelet_node(dict(stored["metadata"]["annotations"]))
    heartbeat["status"]["allocatable"]["cpu"] = "40"
    fresh = oc.mutate_node(heartbeat, "UPDATE", "status", old_node=stored)
    assert fresh["metadata"]["annotations"][ORIG + "allocatable_cpu"] == "40"
    assert fresh["status"]["allocatable"]["cpu"] == "80"


def test_mutate_node_idempotent_from_stored_object():
    stored = oc.mutate_node(kubelet_node({CPU_RATIO: "2"}), "UPDATE", "status")
    assert oc.mutate_node(stored, "UPDATE", "status", old_node=stored) == stored


# -- 2.6 (agent/realtime/*) -----------------------------------------------------------------------
GI = 1024 ** 3


@pytest.mark.parametrize("alloc, req, usage, target, estimated, expected", [
    (16000, 4000, 1000, 0.6, 0.4, 1.59375),
    (32 * GI * 1000, 8 * GI * 1000, 2 * GI * 1000, 0.8, 0.8, 1.171875),
    (16000, 4000, 0, 0.6, 0.4, 1.75),
    (32 * GI * 1000, 8 * GI * 1000, 0, 0.8, 0.8, 1.25),
    (16000, 8000, 5000, 0.6, 0.4, 1.0),                                  # high usage
    (32 * GI * 1000, 16 * GI * 1000, 13 * GI * 1000, 0.8, 0.8, 1.0),
    (16000, 0, 5000, 0.6, 0.4, 1.0),                                     # no request
    (0, 4000, 0, 0.6, 0.4, 1.0),
])
def test_realtime_overcommit_ratio(alloc, req, usage, target, estimated, expected):
    assert oc.realtime_overcommit_ratio(alloc, req, usage, target, estimated) == pytest.approx(expected, abs=1e-12)


def test_realtime_go_test_low_usage():
    # katalyst realtime_test "low usage": two pods of 2 cpu / 4Gi, usage 0.5 core / 1Gi each
    cpu = oc.realtime_overcommit_ratio(16000, 4000, 1000, 0.6, 0.4)
    memory = oc.realtime_overcommit_ratio(32 * GI * 1000, 8 * GI * 1000, 2 * GI * 1000, 0.8, 0.8)
    assert abs(cpu - 1.6) < 0.01 and abs(memory - 1.17) < 0.01
    assert oc.node_realtime_ratio({CPU_RATIO: "10"}, cpu, "cpu") == cpu
    assert oc.node_realtime_ratio({CPU_RATIO: "1.2"}, cpu, "cpu") == 1.2
    assert oc.node_realtime_ratio({CPU_RATIO: "bad"}, cpu, "cpu") == 1.0


def test_get_overcommit_ratio_caps_the_report_as_go_compares():
    """katalyst ``GetOvercommitRatio``: start from the node's set ratios (missing -> 1), keep the realtime one only when lower."""
    assert oc.reported_realtime_ratios({}, 1.75, 1.17) == (1.0, 1.0)
    assert oc.reported_realtime_ratios({CPU_RATIO: "1.5", MEM_RATIO: "2"}, 1.75, 1.17) == (1.5, 1.17)
    # Go: ``realtime >= set`` keeps the set ratio; with a NaN set ratio that is false, so the realtime ratio is reported
    assert oc.reported_realtime_ratios({CPU_RATIO: "NaN", MEM_RATIO: "+Inf"}, 1.75, 1.17) == (1.75, 1.17)
    assert oc.reported_realtime_ratios({CPU_RATIO: "-1", MEM_RATIO: "0x1p1"}, 1.75, 3.0) == (-1.0, 2.0)


def test_realtime_options():
    oc.validate_realtime_options(0.6, 0.8, 0.4, 0.8)
    with pytest.raises(ValueError, match="cpu target"):
        oc.validate_realtime_options(1.0, 0.8, 0.4, 0.8)


def test_reporter_annotations():
    assert oc.realtime_ratio_annotations(1.5123, 1.2678) == {CPU_RATIO: "1.51", MEM_RATIO: "1.27"}


def pod(name, node=None, cpu="2", memory="4Gi", limits=None, phase="Running", init=None):
    resources = {"requests": {"cpu": cpu, "memory": memory}}
    if limits:
        resources["limits"] = limits
    spec = {"containers": [{"name": "c", "resources": resources}]}
    if init:
        spec["initContainers"] = [{"name": "i", "resources": {"requests": init, "limits": init}}]
    if node:
        spec["nodeName"] = node
    return {"metadata": {"name": name, "namespace": "default", "uid": name}, "spec": spec, "status": {"phase": phase}}


def test_pod_guaranteed_cpus_and_prefilter():
    burstable = pod("b", cpu="2", memory="4Gi", limits={"cpu": "4", "memory": "8Gi"})
    guaranteed = pod("g", cpu="4", memory="8Gi", limits={"cpu": "4", "memory": "8Gi"})
    fractional = pod("f", cpu="1500m", memory="8Gi", limits={"cpu": "1500m", "memory": "8Gi"})
    with_init = pod("i", cpu="2", memory="8Gi", limits={"cpu": "2", "memory": "8Gi"}, init={"cpu": "4", "memory": "8Gi"})
    assert oc.pod_filter_state(burstable) == {"guaranteed_cpus": 0, "milli_cpu": 2000}
    assert oc.pod_filter_state(guaranteed) == {"guaranteed_cpus": 4, "milli_cpu": 0}
    assert oc.pod_guaranteed_cpus(fractional) == 0
    assert oc.pod_filter_state(with_init) == {"guaranteed_cpus": 4, "milli_cpu": 0}
    assert oc.manager_annotations("static", "", [guaranteed, burstable])["katalyst.kubewharf.io/guaranteed_cpus"] == "4"
    expected = {"katalyst.kubewharf.io/overcommit_cpu_manager": "none", "katalyst.kubewharf.io/overcommit_memory_manager": "None",
                "katalyst.kubewharf.io/guaranteed_cpus": "0"}
    assert oc.manager_annotations("", "", [guaranteed]) == expected


# -- 2.7 (scheduler/nodeovercommitment/*) ------------------------------------------------------------
def sched_node(name, original="16000", cpu_ratio="2.0", memory_ratio="1.0"):
    return {"metadata": {"name": name, "annotations": {CPU_RATIO: cpu_ratio, MEM_RATIO: memory_ratio, ORIG + "allocatable_cpu": original}},
            "status": {"allocatable": {"cpu": "32", "memory": "32Gi"}}}


def cnr(name, cpu_manager="static", memory_manager="None", guaranteed="0"):
    return {"metadata": {"name": name, "annotations": {"katalyst.kubewharf.io/overcommit_cpu_manager": cpu_manager,
                                                       "katalyst.kubewharf.io/overcommit_memory_manager": memory_manager,
                                                       "katalyst.kubewharf.io/guaranteed_cpus": guaranteed}}}


def state(cpu_manager, memory_manager, guaranteed, requested):
    return {"cpu_manager": cpu_manager, "memory_manager": memory_manager, "guaranteed_cpus": guaranteed, "requested_milli_cpu": requested}


BURSTABLE4 = {"guaranteed_cpus": 0, "milli_cpu": 4000}


@pytest.mark.parametrize("node, node_state, pod_state, code", [
    (sched_node("node1"), state(False, False, 0, 24000), BURSTABLE4, "Success"),               # cpumanager off
    (sched_node("node2"), state(True, False, 4, 24000), BURSTABLE4, "Success"),                # cpumanager on
    (sched_node("node4", "16000m"), state(True, False, 8, 24000), BURSTABLE4, "Unschedulable"),
    (sched_node("node5", "16000m"), state(True, False, 4, 24000), {"guaranteed_cpus": 4, "milli_cpu": 0}, "Unschedulable"),
    (sched_node("node6", memory_ratio="1.5"), state(False, True, 0, 0), BURSTABLE4, "Unschedulable"),
    (sched_node("node7"), None, BURSTABLE4, "Error"),                                          # not in cache
    (sched_node("node7"), None, {"guaranteed_cpus": 0, "milli_cpu": 0}, "Success"),
    (sched_node("node8", cpu_ratio="x"), state(True, False, 0, 0), BURSTABLE4, "Error"),
    (sched_node("node9", original="bad"), state(True, False, 0, 0), BURSTABLE4, "Error"),
])
def test_filter_node_overcommitment(node, node_state, pod_state, code):
    assert oc.filter_node_overcommitment(pod_state, node, node_state)[0] == code


def test_filter_reasons_and_node_state():
    code, reason = oc.filter_node_overcommitment(BURSTABLE4, sched_node("node4", "16000m"), state(True, False, 8, 24000))
    assert (code, reason) == ("Unschedulable", "node overcommitment insufficient cpu")
    code, reason = oc.filter_node_overcommitment(BURSTABLE4, sched_node("n6", memory_ratio="1.5"), state(False, True, 0, 0))
    assert reason == "node n6 memoryManager and memoryOvercommit both available"
    existing = pod("pod01", node="node2", cpu="4", memory="8Gi", limits={"cpu": "4", "memory": "8Gi"})
    built = oc.node_filter_state(cnr("node2", guaranteed="4"), [existing, pod("done", node="node2", phase="Succeeded")])
    assert built == state(True, False, 4, 4000)
    assert oc.node_filter_state(None, []) is None
    assert oc.node_filter_state(cnr("x", cpu_manager="none", memory_manager="Static"), []) == state(False, True, 0, 0)


# -- matcher and controller plan ----------------------------------------------------------------------
def noc(name, value, ratios, created="2024-01-01T00:00:00Z", force=None, status=None, generation=1):
    config = {"apiVersion": "overcommit.katalyst.kubewharf.io/v1alpha1", "kind": "NodeOvercommitConfig",
              "metadata": {"name": name, "creationTimestamp": created, "generation": generation},
              "spec": {"nodeOvercommitSelectorVal": value, "resourceOvercommitRatio": ratios}}
    if force is not None:
        config["spec"]["force"] = force
    if status is not None:
        config["status"] = status
    return config


def cluster_node(name, pool=None, annotations=None):
    node = kubelet_node(dict(ORIGINALS_48, **(annotations or {})), name=name)
    if pool:
        node["metadata"]["labels"] = {"katalyst.kubewharf.io/overcommit_node_pool": pool}
    return node


def test_matcher_newest_wins_ties_by_name():
    configs = [noc("old", "p", {}, "2024-01-01T00:00:00Z"), noc("new", "p", {}, "2024-06-01T00:00:00Z"),
               noc("b-same", "q", {}), noc("a-same", "q", {}), noc("empty", "", {})]
    nodes = [cluster_node("n2", "p"), cluster_node("n1", "p"), cluster_node("m", "q"), cluster_node("free")]
    config_nodes, node_config, conflicts = oc.match_configs(configs, nodes)
    assert config_nodes == {"old": ["n1", "n2"], "new": ["n1", "n2"], "b-same": ["m"], "a-same": ["m"], "empty": []}
    assert node_config["n1"]["metadata"]["name"] == "new"
    assert node_config["m"]["metadata"]["name"] == "a-same"
    assert node_config["free"] is None
    assert conflicts == {"p": ["new", "old"], "q": ["a-same", "b-same"]}


def test_plan_annotations_like_katalyst():
    configs = [noc("pool-a", "a", {"cpu": "1.2", "memory": "1.5", "gpu": "3"})]
    cnrs = [{"metadata": {"name": "n1", "annotations": {CPU_RATIO: "1.10", **STATIC4}}},
            {"metadata": {"name": "n3"}}]
    nodes = [cluster_node("n1", "a"), cluster_node("n2"), cluster_node("n3", "a", {RT_CPU: "1.3", RT_MEM: "1.4"})]
    plan = oc.plan_node_overcommit(configs, nodes, cnrs, [], now="2025-01-01T00:00:00Z")
    n1 = plan.node_patches["n1"]
    assert n1[CPU_RATIO] == "1.2" and n1[MEM_RATIO] == "1.5" and n1[RT_CPU] == "1.10"
    # cpu: min(1.2, 1.10) with 4 guaranteed cpus: (44-4)*1.1+4 = 48, (48-4)*1.1+4 = 52.4; memory 186Gi*1.5
    assert n1[OVER + "allocatable_cpu"] == "48" and n1[OVER + "capacity_cpu"] == "52400m"
    assert n1[OVER + "allocatable_memory"] == "279Gi"
    assert plan.node_patches["n2"][CPU_RATIO] == "1" and plan.node_patches["n2"][OVER + "allocatable_cpu"] == "44"
    # n3: CNR without annotations deletes the realtime copies
    assert plan.node_patches["n3"][RT_CPU] is None and plan.node_patches["n3"][RT_MEM] is None
    status = plan.config_status["pool-a"]
    assert status["matchedNodeList"] == ["n1", "n3"] and status["observedGeneration"] == 1
    assert {c["type"]: c["status"] for c in status["conditions"]} == {"Conflict": "False", "InvalidRatio": "False", "DecreaseRefused": "False"}
    assert plan.events == []


def test_plan_is_idempotent():
    configs = [noc("pool-a", "a", {"cpu": "2"})]
    nodes = [cluster_node("n1", "a"), cluster_node("n2")]
    plan = oc.plan_node_overcommit(configs, nodes, [], [], now="2025-01-01T00:00:00Z")
    for node in nodes:
        annotations = node["metadata"]["annotations"]
        for key, value in plan.node_patches[node["metadata"]["name"]].items():
            if value is None:
                annotations.pop(key, None)
            else:
                annotations[key] = value
    configs[0]["status"] = plan.config_status["pool-a"]
    again = oc.plan_node_overcommit(configs, nodes, [], [], now="2025-02-02T00:00:00Z")
    assert again.node_patches == {} and again.status_changed == {"pool-a": False} and again.events == []


def test_plan_cnr_missing_leaves_realtime_untouched():
    nodes = [cluster_node("n1", annotations={RT_CPU: "1.3"})]
    plan = oc.plan_node_overcommit([], nodes, [], [])
    assert RT_CPU not in plan.node_patches["n1"]


def test_plan_conflict_condition_and_event():
    configs = [noc("old", "p", {"cpu": "1.5"}, "2024-01-01T00:00:00Z"), noc("new", "p", {"cpu": "2"}, "2024-06-01T00:00:00Z")]
    plan = oc.plan_node_overcommit(configs, [cluster_node("n1", "p")], [], [], now="2025-01-01T00:00:00Z")
    assert plan.node_patches["n1"][CPU_RATIO] == "2"
    old = {c["type"]: c for c in plan.config_status["old"]["conditions"]}["Conflict"]
    assert old["status"] == "True" and "the newest config new applies" in old["message"]
    assert old["lastTransitionTime"] == "2025-01-01T00:00:00Z"
    assert sorted(e["object"]["metadata"]["name"] for e in plan.events if e["reason"] == "SelectorConflict") == ["new", "old"]
    assert plan.config_status["old"]["matchedNodeList"] == ["n1"] == plan.config_status["new"]["matchedNodeList"]


def test_plan_invalid_ratio_changes_nothing():
    node = cluster_node("n1", "p", {CPU_RATIO: "1.5", MEM_RATIO: "1"})
    plan = oc.plan_node_overcommit([noc("bad", "p", {"cpu": "xx", "memory": "2"})], [node], [], [], now="2025-01-01T00:00:00Z")
    patch = plan.node_patches.get("n1", {})
    assert CPU_RATIO not in patch and MEM_RATIO not in patch
    invalid = {c["type"]: c for c in plan.config_status["bad"]["conditions"]}["InvalidRatio"]
    assert invalid["status"] == "True" and "'xx' is not a number" in invalid["message"]
    assert [e["reason"] for e in plan.events] == ["InvalidRatio"]


def test_plan_decrease_guard_and_force():
    node = cluster_node("n1", "p", {CPU_RATIO: "2", MEM_RATIO: "1"})
    pods = [pod("big", node="n1", cpu="60", memory="1Gi"), pod("gone", node="n1", cpu="60", phase="Succeeded")]
    configs = [noc("pool", "p", {"cpu": "1.2"})]          # 44 * 1.2 = 52.8 < 60 requested
    plan = oc.plan_node_overcommit(configs, [node], [], pods, now="2025-01-01T00:00:00Z")
    assert CPU_RATIO not in plan.node_patches.get("n1", {})
    assert plan.refused == {"n1": {"cpu": ("52800m", "60")}}
    refused = {c["type"]: c for c in plan.config_status["pool"]["conditions"]}["DecreaseRefused"]
    assert refused["status"] == "True" and "n1: cpu allocatable would be 52800m, below the 60 requested" in refused["message"]
    # a decrease that still fits is applied
    ok = oc.plan_node_overcommit([noc("pool", "p", {"cpu": "1.5"})], [node], [], pods)
    assert ok.node_patches["n1"][CPU_RATIO] == "1.5" and ok.refused == {}
    # force overrides
    forced = oc.plan_node_overcommit([noc("pool", "p", {"cpu": "1.2"}, force=True)], [node], [], pods)
    assert forced.node_patches["n1"][CPU_RATIO] == "1.2"
    # an increase is never refused
    up = oc.plan_node_overcommit([noc("pool", "p", {"cpu": "3"})], [cluster_node("n1", "p", {CPU_RATIO: "1"})], [], pods)
    assert up.node_patches["n1"][CPU_RATIO] == "3"


def test_condition_resolution_emits_normal_event():
    previous = oc.plan_node_overcommit([noc("bad", "p", {"cpu": "xx"})], [], [], [], now="2025-01-01T00:00:00Z")
    fixed = noc("bad", "p", {"cpu": "2"}, status=previous.config_status["bad"], generation=2)
    plan = oc.plan_node_overcommit([fixed], [], [], [], now="2025-01-02T00:00:00Z")
    assert [(e["type"], e["reason"]) for e in plan.events] == [("Normal", "InvalidRatioResolved")]
    conflict = {c["type"]: c for c in plan.config_status["bad"]["conditions"]}["Conflict"]
    assert conflict["lastTransitionTime"] == "2025-01-01T00:00:00Z" and conflict["observedGeneration"] == 2


def with_version(node, version):
    node["metadata"]["resourceVersion"] = str(version)
    return node


def test_plan_memo_matches_the_full_plan_and_replans_only_what_changed():
    configs = [noc("pool", "p", {"cpu": "1.2"})]
    nodes = [with_version(cluster_node("n1", "p", {CPU_RATIO: "2", MEM_RATIO: "1"}), 1), with_version(cluster_node("n2", "p"), 1),
             with_version(cluster_node("n3"), 1), cluster_node("n4", "p")]
    pods = [pod("big", node="n1", cpu="60", memory="1Gi")]
    memo = {}
    for _round in range(2):
        incremental = oc.plan_node_overcommit(configs, nodes, [], pods, now="2025-01-01T00:00:00Z", memo=memo)
        assert incremental.as_dict() == oc.plan_node_overcommit(configs, nodes, [], pods, now="2025-01-01T00:00:00Z").as_dict()
    assert memo["planned"] == 0 and incremental.refused == {"n1": {"cpu": ("52800m", "60")}}
    # a pod leaves n1 (its requests change), n2 changes (a new resourceVersion), n4 (no resourceVersion) changes its annotations
    nodes[1] = with_version(cluster_node("n2", "p", {CPU_RATIO: "3"}), 2)
    nodes[3]["metadata"]["annotations"][MEM_RATIO] = "1.1"
    again = oc.plan_node_overcommit(configs, nodes, [], [], now="2025-01-01T00:00:00Z", memo=memo)
    assert memo["planned"] == 3 and again.as_dict() == oc.plan_node_overcommit(configs, nodes, [], [], now="2025-01-01T00:00:00Z").as_dict()
    # another config: every node again; a node gone leaves the memo
    other = oc.plan_node_overcommit([noc("pool", "p", {"cpu": "1.5"})], nodes[:2], [], [], memo=memo)
    assert memo["planned"] == 2 and sorted(memo["nodes"]) == ["n1", "n2"] and other.node_patches["n1"][CPU_RATIO] == "1.5"


def test_record_patched_skips_the_node_until_something_else_changes():
    configs = [noc("pool", "p", {"cpu": "2"})]
    node = with_version(cluster_node("n1", "p"), 5)
    memo = {}
    patch = oc.plan_node_overcommit(configs, [node], [], [], memo=memo).node_patches["n1"]
    annotations = {k: v for k, v in dict(node["metadata"]["annotations"], **patch).items() if v is not None}
    written = copy.deepcopy(node)
    written["metadata"].update(annotations=annotations, resourceVersion="6")
    oc.record_patched(memo, node, patch, written)
    # the cache still shows version 5 (the watch has not delivered the write), then version 6: nothing to plan or send
    for seen in (node, written):
        assert oc.plan_node_overcommit(configs, [seen], [], [], memo=memo).node_patches == {} and memo["planned"] == 0
    # the write as returned carries someone else's change too: not taken for ours
    memo = {}
    oc.plan_node_overcommit(configs, [node], [], [], memo=memo)
    mixed = copy.deepcopy(written)
    mixed["metadata"]["annotations"]["katalyst.kubewharf.io/original_allocatable_cpu"] = "1"
    oc.record_patched(memo, node, patch, mixed)
    oc.plan_node_overcommit(configs, [mixed], [], [], memo=memo)
    assert memo["planned"] == 1
