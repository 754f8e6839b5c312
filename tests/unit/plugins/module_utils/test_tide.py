"""Tide engine: reserve counts (§0.2, §1.4), classification and reserve assignment, the flip decision
(§1.5), the exact labels and taints (§1.6), deletion (§1.8), and the Katalyst bugs we fix (§6)."""

import copy
import datetime
import random

import pytest

from ansible_collections.katalyst.colocation.plugins.module_utils import tide
from ansible_collections.katalyst.colocation.plugins.module_utils.fit import Snapshot

NOW = datetime.datetime(2025, 1, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)
POOL_LABEL = tide.LABEL_NODE_POOL
ON_TAINT = {"key": tide.TAINT_EVICT_ONLINE_POD, "value": "true", "effect": "NoExecute"}     # on offline nodes
OFF_TAINT = {"key": tide.TAINT_EVICT_OFFLINE_POD, "value": "true", "effect": "NoExecute"}   # on online nodes


def pool(name="np1", reserve=None, selector=None, **spec_extra):
    spec = {"nodeConfigs": {"nodeSelector": {"test": "test"} if selector is None else selector}}
    if reserve is not None:
        spec["nodeConfigs"]["reserve"] = reserve
    spec.update(spec_extra)
    return {"apiVersion": tide.API_VERSION, "kind": tide.KIND, "metadata": {"name": name, "generation": 1}, "spec": spec}


def node(name, millicpu=1000, memory=1000, labels=None, taints=None, pods=100):
    """Go's buildNode: the pool's nodeSelector labels, capacity = allocatable."""
    result = {"metadata": {"name": name, "labels": dict({"test": "test"}, **(labels or {}))},
              "spec": {}, "status": {"allocatable": {"cpu": "%dm" % millicpu, "memory": str(memory), "pods": str(pods)}}}
    if taints:
        result["spec"]["taints"] = [dict(t) for t in taints]
    return result


def tide_node(name, online, pool_name="np1", **kwargs):
    """Go's buildTideNode."""
    labels = {tide.LABEL_TIDE: "true", POOL_LABEL: pool_name, tide.LABEL_NODE_TYPE: "online" if online else "offline"}
    labels.update(kwargs.pop("labels", {}))
    return node(name, labels=labels, taints=[OFF_TAINT if online else ON_TAINT], **kwargs)


def pod_object(name, requests, labels, tolerations, node_name=None, pending=False):
    """A pod (uid: its name) in the default namespace with one container of ``requests``, on ``node_name`` if given;
    ``pending``: Pending with PodScheduled=False/Unschedulable, as the scheduler leaves a pod it cannot place.
    tests/benchmarks/tide_plan.py builds its pods with it too."""
    pod = {"metadata": {"name": name, "namespace": "default", "uid": name, "labels": labels},
           "spec": {"containers": [{"name": "c", "resources": {"requests": requests}}], "tolerations": tolerations},
           "status": {"phase": "Pending" if pending else "Running"}}
    if node_name:
        pod["spec"]["nodeName"] = node_name
    if pending:
        pod["status"]["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]
    return pod


def online_pod(name, millicpu, memory, node_name=None, pending=None):
    """Go's buildOnlinePod: labelled online, tolerates offline-not-used, PodScheduled=False/Unschedulable."""
    pending = node_name is None if pending is None else pending
    return pod_object(name, {"cpu": "%dm" % millicpu, "memory": str(memory)}, {tide.LABEL_POD_TYPE: "online"},
                      [dict(OFF_TAINT, operator="Equal")], node_name, pending)


def offline_pod(name, node_name, millicpu=100, memory=100):
    requests = {"cpu": "%dm" % millicpu, "memory": str(memory)}
    return {"metadata": {"name": name, "namespace": "batch", "uid": name},
            "spec": {"nodeName": node_name, "containers": [{"name": "c", "resources": {"requests": requests}}],
                     "tolerations": [dict(ON_TAINT, operator="Equal")]},
            "status": {"phase": "Running"}}


def apply_plan(nodes, result):
    """The nodes after the plan's edits (what a driver would write)."""
    by_name = {n["metadata"]["name"]: n for n in nodes}
    for change in result.plan:
        name = change.data["node"]
        by_name[name] = tide.apply_node_edit(by_name[name], change.data["edit"])
    return [by_name[name] for name in sorted(by_name)]


def count_tide(nodes, pool_obj):
    config = tide.PoolConfig(pool_obj)
    online = sum(1 for n in nodes if config.is_online_tide(n["metadata"]["labels"]))
    offline = sum(1 for n in nodes if config.is_offline_tide(n["metadata"]["labels"]))
    return online, offline


def evict_taints(node_obj):
    return [t for t in node_obj["spec"].get("taints", []) if t["key"] in (tide.TAINT_EVICT_ONLINE_POD, tide.TAINT_EVICT_OFFLINE_POD)]


# -- reserve counts ---------------------------------------------------------------------------------
@pytest.mark.parametrize("reserve,count,expected", [
    ({"online": "30%", "offline": "30%"}, 4, (2, 1)),      # [case:tide/reconcile-normal]: ceil 1.2, floor 1.2
    ({"online": "10%", "offline": "25%"}, 10, (1, 2)),
    ({"online": "10%", "offline": "25%"}, 0, (0, 0)),
    ({"online": 2, "offline": 3}, 4, (2, 3)),             # ints as they are, even above the node count
    ({"online": "33%", "offline": "33%"}, 3, (1, 0)),      # 0.99: up and down
    ({"online": "100%", "offline": "0%"}, 7, (7, 0)),
    ({"online": "+50%", "offline": 0}, 3, (2, 0)),         # Atoi takes a sign
    ({"online": "29%", "offline": "29%"}, 100, (29, 29)),  # float64 arithmetic: 29*100/100 is exact
])
def test_reserve_counts(reserve, count, expected):
    assert tide.reserve_counts(reserve, count) == expected


@pytest.mark.parametrize("reserve,message", [
    ({"offline": 1}, "spec.nodeConfigs.reserve.online is missing"),
    ({"online": 1}, "spec.nodeConfigs.reserve.offline is missing"),
    (None, "spec.nodeConfigs.reserve.online is missing"),
    ({"online": "2", "offline": 1}, "is not a percentage"),
    ({"online": "abc%", "offline": 1}, "invalid percentage 'abc%'"),
    ({"online": "1.5%", "offline": 1}, "invalid percentage"),
    ({"online": 1, "offline": -1}, "must not be negative"),
    ({"online": True, "offline": 1}, "node count or a percentage"),
    ({"online": 1.5, "offline": 1}, "node count or a percentage"),
    ("10%", "must be an object"),
])
def test_reserve_counts_refuses_bad_values_clearly(reserve, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        tide.reserve_counts(reserve, 4)


# -- §1.4 classification and reserves ---------------------------------------------------------------
def test_reconcile_normal_case_reserves_and_exact_labels():
    """[case:tide/reconcile-normal] 4 nodes, 30%: 2 online reserve, 1 offline reserve, 1 tide (by name here)."""
    p = pool(reserve={"online": "30%", "offline": "30%"})
    nodes = [node(n) for n in ("n5", "n6", "n7", "n8")]
    result = tide.plan_tide_pool(p, nodes, [], now=NOW)
    status = result.status
    assert status["reserveNodes"] == {"onlineNodes": ["n6", "n5"], "offlineNodes": ["n7"]}     # sorted descending
    assert status["tideNodes"] == {"nodes": ["n8"]}
    after = {n["metadata"]["name"]: n for n in apply_plan(nodes, result)}
    assert after["n5"]["metadata"]["labels"] == {"test": "test", POOL_LABEL: "np1", tide.LABEL_NODE_TYPE: "online", tide.LABEL_RESERVE: "true"}
    assert after["n7"]["metadata"]["labels"] == {"test": "test", POOL_LABEL: "np1", tide.LABEL_NODE_TYPE: "offline", tide.LABEL_RESERVE: "true"}
    assert after["n8"]["metadata"]["labels"] == {"test": "test", POOL_LABEL: "np1", tide.LABEL_NODE_TYPE: "online", tide.LABEL_RESERVE: "false",
                                                 tide.LABEL_TIDE: "true"}
    assert all("taints" not in n["spec"] for n in after.values())           # no taints set when assigning roles
    assert result.roles == {"n5": "online-reserve", "n6": "online-reserve", "n7": "offline-reserve", "n8": "tide-online"}
    assert result.flip is None and "at least one is kept" in result.flip_note
    assert result.add_finalizer is True
    ready = status["conditions"][0]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "True", "Reconciled")
    assert ready["lastTransitionTime"] == "2025-01-01T12:00:00Z" and ready["observedGeneration"] == 1


def test_second_pass_writes_nothing_and_keeps_the_condition_time():
    p = pool(reserve={"online": "30%", "offline": "30%"})
    nodes = [node(n) for n in ("n5", "n6", "n7", "n8")]
    first = tide.plan_tide_pool(p, nodes, [], now=NOW)
    p["status"] = first.status
    p["metadata"]["finalizers"] = [tide.FINALIZER]
    second = tide.plan_tide_pool(p, apply_plan(nodes, first), [], now=NOW + datetime.timedelta(hours=1))
    assert not second.plan and not second.status_changed and not second.add_finalizer and not second.changed
    assert second.status["conditions"][0]["lastTransitionTime"] == "2025-01-01T12:00:00Z"


def test_classification_rules_and_what_is_left_alone():
    p = pool(reserve={"online": 1, "offline": 1})
    nodes = [node("a-other-pool", labels={POOL_LABEL: "np2", tide.LABEL_TIDE: "true"}),
             node("b-pool-no-role", labels={POOL_LABEL: "np1", tide.LABEL_RESERVE: "false"}),
             node("c-unselected", labels={"test": "other"}),
             node("d-new"), node("e-new"), node("f-new")]
    result = tide.plan_tide_pool(p, nodes, [], now=NOW)
    assert [c.data["node"] for c in result.plan] == ["d-new", "e-new", "f-new"]
    assert result.roles == {"a-other-pool": "ignored", "b-pool-no-role": "ignored", "d-new": "online-reserve",
                            "e-new": "offline-reserve", "f-new": "tide-online"}
    groups = tide.classify_nodes(tide.PoolConfig(p), [n for n in nodes if n["metadata"]["name"] != "c-unselected"])
    assert groups["ignored"] == ["a-other-pool", "b-pool-no-role"] and groups["unknown"] == ["d-new", "e-new", "f-new"]


def test_empty_node_selector_selects_every_node():
    p = pool(reserve={"online": "50%", "offline": "50%"}, selector={})
    nodes = [node("x", labels={"anything": "1"}), node("y")]
    assert tide.plan_tide_pool(p, nodes, [], now=NOW).roles == {"x": "online-reserve", "y": "offline-reserve"}


def test_shrinking_reserves_turns_the_first_ones_into_tide_nodes_status_one_pass_stale():
    """§1.4 step 6 and Katalyst §6 #4 (copied): converted nodes stay listed as reserve in this pass."""
    p = pool(reserve={"online": 1, "offline": 0})
    reserve_labels = {POOL_LABEL: "np1", tide.LABEL_NODE_TYPE: "online", tide.LABEL_RESERVE: "true"}
    nodes = [node(n, labels=reserve_labels) for n in ("r1", "r2", "r3")]
    result = tide.plan_tide_pool(p, nodes, [], now=NOW)
    converted = [c.data["node"] for c in result.plan if c.data["role_before"] == "online-reserve"]
    assert converted == ["r1", "r2"]
    assert result.status["reserveNodes"]["onlineNodes"] == ["r3", "r2", "r1"]          # stale for one pass, as Katalyst
    after = apply_plan(nodes, result)
    assert after[0]["metadata"]["labels"][tide.LABEL_TIDE] == "true" and after[0]["metadata"]["labels"][tide.LABEL_RESERVE] == "false"
    p["status"] = result.status
    again = tide.plan_tide_pool(p, after, [], now=NOW)
    assert again.status["reserveNodes"] == {"onlineNodes": ["r3"]}
    assert sorted(again.status["tideNodes"]["nodes"]) == ["r1", "r2"]


# -- §1.5 flips: the Go cases -----------------------------------------------------------------------
def test_run_once_release_empty_node_to_offline():
    """[case:tide/run-once release empty node to offline]: two empty online tide nodes -> one goes offline."""
    p = pool(reserve={"online": 0, "offline": 0})
    nodes = [tide_node("n1", True), tide_node("n2", True)]
    result = tide.plan_tide_pool(p, nodes, [], now=NOW)
    assert result.flip["node"] == "n1" and result.flip["direction"] == "offline" and result.flip["pods"] == []
    after = apply_plan(nodes, result)
    assert count_tide(after, p) == (1, 1)
    assert evict_taints(after[0]) == [ON_TAINT]                                      # offline: evicts online pods
    assert after[0]["metadata"]["annotations"][tide.ANNOTATION_LAST_FLIP] == "2025-01-01T12:00:00Z"


def test_run_once_release_empty_node_to_online():
    """[case:tide/run-once release empty node to online]: a pending online pod fits nowhere -> one offline node comes online."""
    p = pool(reserve={"online": 0, "offline": 0})
    nodes = [tide_node("n3", False), tide_node("n4", False)]
    pods = [online_pod("p1", 500, 500)]
    result = tide.plan_tide_pool(p, nodes, pods, now=NOW)
    assert result.flip["node"] == "n3" and result.flip["direction"] == "online" and result.flip["pods"] == ["default/p1"]
    assert "default/p1" in result.flip["reason"]
    after = apply_plan(nodes, result)
    assert count_tide(after, p) == (1, 1)
    assert evict_taints(after[0]) == [OFF_TAINT]
    assert after[0]["metadata"]["labels"][tide.LABEL_NODE_TYPE] == "online"
    assert [c.data["flip"] for c in result.plan] == ["online"]


def test_one_flip_per_pass_and_the_pods_that_caused_it():
    p = pool(reserve={"online": 0, "offline": 0})
    nodes = [tide_node("n1", False), tide_node("n2", False), tide_node("n3", False)]
    pods = [online_pod("p%d" % i, 400, 400) for i in range(5)]        # 2 fit on one node; 5 need three nodes
    result = tide.plan_tide_pool(p, nodes, pods, now=NOW)
    assert len(result.plan) == 1 and result.flip["node"] == "n1"
    assert result.flip["pods"] == ["default/p0", "default/p1"]


def test_pending_pods_prefer_the_least_loaded_offline_node():
    p = pool(reserve={"online": 0, "offline": 0})
    nodes = [tide_node("n1", False), tide_node("n2", False)]
    pods = [offline_pod("batch-a", "n1", 100, 300), online_pod("web", 500, 500)]
    assert tide.plan_tide_pool(p, nodes, pods, now=NOW).flip["node"] == "n2"


def test_offline_pods_on_the_flipped_node_do_not_block_the_fit():
    """They do not tolerate offline-not-used (NoExecute), so they leave the node that comes online."""
    p = pool(reserve={"online": 0, "offline": 0})
    nodes = [tide_node("n1", False)]
    pods = [offline_pod("batch-a", "n1", 900, 900), online_pod("web", 500, 500)]
    assert tide.plan_tide_pool(p, nodes, pods, now=NOW).flip["node"] == "n1"


def test_pending_pod_that_fits_an_existing_node_flips_nothing_online():
    p = pool(reserve={"online": 0, "offline": 0})
    nodes = [tide_node("n1", True), tide_node("n2", False)]
    result = tide.plan_tide_pool(p, nodes, [online_pod("web", 500, 500)], now=NOW)
    assert result.flip is None
    assert "fit existing nodes" in result.flip_note and "at least one is kept" in result.flip_note


def test_pending_pod_too_big_for_any_node_flips_nothing_and_release_still_runs():
    p = pool(reserve={"online": 0, "offline": 0})
    nodes = [tide_node("n1", True), tide_node("n2", True), tide_node("n3", False)]
    result = tide.plan_tide_pool(p, nodes, [online_pod("huge", 5000, 500)], now=NOW)
    assert result.flip["direction"] == "offline" and result.flip["node"] == "n1"
    assert "would not fit even with an offline tide node online" not in result.flip["reason"]


def test_no_offline_tide_node_means_no_release_either():
    """§1.5 step 4: pending pods and no offline tide node -> return (release phase skipped)."""
    p = pool(reserve={"online": 0, "offline": 0})
    nodes = [tide_node("n1", True), tide_node("n2", True)]
    result = tide.plan_tide_pool(p, nodes, [online_pod("huge", 5000, 500)], now=NOW)
    assert result.flip is None and "no offline tide node" in result.flip_note


def test_pending_pods_that_are_not_online_or_not_unschedulable_are_ignored():
    p = pool(reserve={"online": 0, "offline": 0})
    nodes = [tide_node("n1", False)]
    unlabelled = online_pod("a", 100, 100)
    del unlabelled["metadata"]["labels"]
    not_marked = online_pod("b", 100, 100)
    not_marked["status"]["conditions"] = []
    failed = online_pod("c", 100, 100)
    failed["status"]["phase"] = "Failed"
    assert tide.plan_tide_pool(p, nodes, [unlabelled, not_marked, failed], now=NOW).flip is None


def test_release_picks_the_least_loaded_and_moves_its_online_pods():
    p = pool(reserve={"online": 0, "offline": 0})
    nodes = [tide_node("n1", True), tide_node("n2", True), tide_node("n3", True)]
    pods = [online_pod("a", 300, 300, "n1"), online_pod("b", 200, 200, "n2"), online_pod("c", 100, 100, "n3"),
            offline_pod("batch", "n3", 1, 1)]
    result = tide.plan_tide_pool(p, nodes, pods, now=NOW)
    assert result.flip["node"] == "n3" and result.flip["pods"] == ["default/c"]       # non-online pods are not moved


def test_release_refused_when_an_online_pod_fits_no_other_node():
    p = pool(reserve={"online": 0, "offline": 0})
    nodes = [tide_node("n1", True), tide_node("n2", True)]
    pods = [online_pod("a", 600, 600, "n1"), online_pod("b", 700, 700, "n2")]
    result = tide.plan_tide_pool(p, nodes, pods, now=NOW)
    assert result.flip is None and "cannot release n1: online pod default/a fits no other node" in result.flip_note


def test_at_least_one_online_tide_node_is_kept():
    p = pool(reserve={"online": 0, "offline": 0})
    result = tide.plan_tide_pool(p, [tide_node("n1", True), tide_node("n2", False)], [], now=NOW)
    assert result.flip is None and not result.plan


def test_cooldown_skips_recently_flipped_nodes():
    p = pool(reserve={"online": 0, "offline": 0}, cooldownSeconds=600)
    recent = {"annotations": {tide.ANNOTATION_LAST_FLIP: "2025-01-01T11:55:00Z"}}
    nodes = [tide_node("n1", True), tide_node("n2", True), tide_node("n3", True)]
    nodes[0]["metadata"].update(recent)
    result = tide.plan_tide_pool(p, nodes, [], now=NOW)
    assert result.flip["node"] == "n2"
    nodes[1]["metadata"].update(recent)
    nodes[2]["metadata"].update(recent)
    assert "every online tide node is in its cooldown" in tide.plan_tide_pool(p, nodes, [], now=NOW).flip_note
    later = NOW + datetime.timedelta(minutes=6)
    assert tide.plan_tide_pool(p, nodes, [], now=later).flip["node"] == "n1"


def test_cooldown_applies_to_bringing_nodes_online_too():
    p = pool(reserve={"online": 0, "offline": 0}, cooldownSeconds=60)
    nodes = [tide_node("n1", False), tide_node("n2", False)]
    nodes[0]["metadata"]["annotations"] = {tide.ANNOTATION_LAST_FLIP: "2025-01-01T11:59:30Z"}
    assert tide.plan_tide_pool(p, nodes, [online_pod("web", 100, 100)], now=NOW).flip["node"] == "n2"


# -- §1.6 taints: the Katalyst bugs we fix ------------------------------------------------------------
def test_never_tainted_online_tide_node_going_offline_gets_the_online_eviction_taint():
    """Katalyst §6 #1: it appended offline-not-used (evicting offline pods from an offline node)."""
    p = pool(reserve={"online": 0, "offline": 0})
    labels = {tide.LABEL_TIDE: "true", POOL_LABEL: "np1", tide.LABEL_NODE_TYPE: "online", tide.LABEL_RESERVE: "false"}
    nodes = [node("n1", labels=labels), node("n2", labels=labels)]                 # as SetNodeToTideOnline leaves them
    after = apply_plan(nodes, tide.plan_tide_pool(p, nodes, [], now=NOW))
    assert evict_taints(after[0]) == [ON_TAINT]
    assert after[0]["metadata"]["labels"][tide.LABEL_NODE_TYPE] == "offline"


def test_a_node_with_both_evict_taints_ends_with_exactly_one():
    """Katalyst rewrote both to the same key: a duplicate taint the API rejects."""
    config = tide.PoolConfig(pool(reserve={"online": 0, "offline": 0}))
    other = {"key": "dedicated", "value": "x", "effect": "NoSchedule"}
    both = node("n1", taints=[ON_TAINT, other, OFF_TAINT])
    online = tide.apply_node_edit(both, config.flip_edit("online"))
    assert online["spec"]["taints"] == [OFF_TAINT, other]                            # in the first one's place
    offline = tide.apply_node_edit(both, config.flip_edit("offline"))
    assert offline["spec"]["taints"] == [ON_TAINT, other]
    assert both["spec"]["taints"] == [ON_TAINT, other, OFF_TAINT]                    # input untouched


def test_flip_edits_are_idempotent_and_keep_taint_metadata():
    config = tide.PoolConfig(pool())
    stamped = dict(ON_TAINT, timeAdded="2024-12-31T00:00:00Z")
    n = node("n1", taints=[stamped])
    edit = config.flip_edit("offline")
    once = tide.apply_node_edit(n, edit)
    assert once["spec"]["taints"] == [stamped]                                       # same taint: kept as it is
    assert tide.apply_node_edit(once, edit) == once


def test_custom_labels_and_taints_are_used_with_their_own_fields():
    p = pool(reserve={"online": 0, "offline": 0},
             evictStrategy={"type": "watermark", "watermark": {
                 "evictOnlinePodTaint": {"key": "example.com/no-online", "value": "yes", "effect": "NoSchedule"},
                 "evictOfflinePodTaint": {"key": "example.com/no-offline", "value": "yes", "effect": "NoExecute"}}})
    p["spec"]["nodeConfigs"].update({"onlineLabel": {"key": "example.com/online", "value": "y"},
                                     "offlineLabel": {"key": "example.com/offline", "value": "y"},
                                     "tideLabel": {"key": "example.com/tide", "value": "y"}})
    nodes = [node("n1"), node("n2")]
    first = tide.plan_tide_pool(p, nodes, [], now=NOW)
    after = apply_plan(nodes, first)
    assert after[0]["metadata"]["labels"] == {"test": "test", POOL_LABEL: "np1", tide.LABEL_RESERVE: "false",
                                              "example.com/offline": "y", "example.com/tide": "y"}
    assert evict_taints(after[0]) == [] and after[0]["spec"]["taints"] == [{"key": "example.com/no-online", "value": "yes",
                                                                            "effect": "NoSchedule"}]
    assert first.flip["node"] == "n1"


@pytest.mark.parametrize("watermark,message", [
    ({"evictOnlinePodTaint": {"key": "k", "value": "v"}}, "evictOnlinePodTaint.effect must be one of"),
    ({"evictOfflinePodTaint": {"key": "k", "value": "v", "effect": "Sometimes"}}, "evictOfflinePodTaint.effect must be one of"),
    ({"evictOnlinePodTaint": {"key": "same", "value": "v", "effect": "NoExecute"},
      "evictOfflinePodTaint": {"key": "same", "value": "v", "effect": "NoExecute"}}, "have the same key"),
])
def test_invalid_taint_options_are_refused_not_written(watermark, message):
    p = pool(reserve={"online": 1, "offline": 1}, evictStrategy={"type": "watermark", "watermark": watermark})
    result = tide.plan_tide_pool(p, [node("n1")], [], now=NOW)
    assert not result.plan and message in result.error
    assert result.status["conditions"][0]["reason"] == "InvalidSpec"


def test_invalid_reserve_is_a_condition_and_keeps_the_last_good_state():
    p = pool(reserve={"online": "ten", "offline": 1})
    p["status"] = {"reserveNodes": {"onlineNodes": ["n1"]}, "tideNodes": {"nodes": ["n2"]}}
    nodes = [node("n1", labels={POOL_LABEL: "np1", tide.LABEL_NODE_TYPE: "online", tide.LABEL_RESERVE: "true"}), node("n3")]
    result = tide.plan_tide_pool(p, nodes, [], now=NOW)
    assert not result.plan and result.flip is None
    ready = result.status["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("False", "InvalidReserve")
    assert "spec.nodeConfigs.reserve.online" in ready["message"] and "nodes are left as they are" in ready["message"]
    assert result.status["reserveNodes"] == {"onlineNodes": ["n1"]} and result.status["tideNodes"] == {"nodes": ["n2"]}
    assert result.roles == {"n1": "online-reserve", "n3": "unknown"}


# -- §1.8 deletion ----------------------------------------------------------------------------------
def test_deletion_cleans_every_label_taint_and_annotation_of_this_pool_only():
    p = pool(reserve={"online": 1, "offline": 1})
    p["metadata"].update({"deletionTimestamp": "2025-01-01T00:00:00Z", "finalizers": [tide.FINALIZER]})
    mine = tide_node("n1", False, labels={tide.LABEL_RESERVE: "false"})
    mine["metadata"]["annotations"] = {tide.ANNOTATION_LAST_FLIP: "2025-01-01T00:00:00Z", "keep": "me"}
    mine["spec"]["taints"].append({"key": "dedicated", "value": "x", "effect": "NoSchedule"})
    other_pool = tide_node("n2", True, pool_name="np2")
    result = tide.plan_tide_pool(p, [mine, other_pool], [], now=NOW)
    assert result.deleting and result.remove_finalizer and [c.data["node"] for c in result.plan] == ["n1"]
    cleaned = apply_plan([mine, other_pool], result)[0]
    assert cleaned["metadata"]["labels"] == {"test": "test"}
    assert cleaned["metadata"]["annotations"] == {"keep": "me"}
    assert cleaned["spec"]["taints"] == [{"key": "dedicated", "value": "x", "effect": "NoSchedule"}]


# -- determinism and the preview --------------------------------------------------------------------
def test_plan_is_deterministic_whatever_the_input_order():
    p = pool(reserve={"online": "20%", "offline": "20%"})
    nodes = [node("n%02d" % i) for i in range(10)] + [tide_node("t%d" % i, i % 2 == 0) for i in range(4)]
    pods = [online_pod("p%d" % i, 300, 300, "t%d" % (i % 4) if i % 3 else None) for i in range(12)]
    reference = tide.plan_tide_pool(p, nodes, pods, now=NOW).as_dict()
    for seed in range(5):
        rng = random.Random(seed)
        shuffled_nodes, shuffled_pods = list(nodes), list(pods)
        rng.shuffle(shuffled_nodes)
        rng.shuffle(shuffled_pods)
        assert tide.plan_tide_pool(p, shuffled_nodes, shuffled_pods, now=NOW).as_dict() == reference


def test_unknown_node_assigned_and_released_in_one_pass_gets_one_change():
    p = pool(reserve={"online": 0, "offline": 0})
    nodes = [node("n1"), node("n2")]
    result = tide.plan_tide_pool(p, nodes, [], now=NOW)
    assert [c.data["node"] for c in result.plan] == ["n1", "n2"]
    n1 = result.plan.changes[0]
    assert n1.data["role_before"] == "unknown" and n1.data["role_after"] == "tide-offline" and n1.data["flip"] == "offline"
    assert "reserves are full" in n1.reason and "flip to offline" in n1.reason
    assert n1.before == {"labels": {}, "taints": []}
    assert n1.after["taints"] == [ON_TAINT]


def test_plan_does_not_modify_its_inputs():
    p = pool(reserve={"online": 1, "offline": 0})
    nodes = [node("n1"), tide_node("n2", True), tide_node("n3", True)]
    pods = [online_pod("a", 100, 100, "n2")]
    frozen = copy.deepcopy((p, nodes, pods))
    tide.plan_tide_pool(p, nodes, pods, now=NOW)
    assert (p, nodes, pods) == frozen


def test_snapshot_factory_is_used_for_the_fit_check():
    built = []

    def factory(nodes, pods):
        built.append(len(nodes))
        return Snapshot(nodes, pods)
    tide.plan_tide_pool(pool(reserve={"online": 0, "offline": 0}), [tide_node("n1", True), node("other", labels={"test": "no"})], [],
                        snapshot_factory=factory)
    assert built == [2]                                                          # every node of the cluster, not just the pool


def test_flips_can_be_reported_without_being_planned():
    p = pool(reserve={"online": 0, "offline": 0})
    nodes = [tide_node("n1", True), tide_node("n2", True)]
    result = tide.plan_tide_pool(p, nodes, [], now=NOW, flips=False)
    assert result.flip["node"] == "n1" and not result.plan and "katalyst-controller" in result.flip_note
    assert result.roles == {"n1": "tide-online", "n2": "tide-online"}


def test_resource_pruning_never_rejects_a_pod_that_fits():
    """The shortcut (a request above what any node has free) agrees with the full fit check."""
    rng = random.Random(7)
    for _round in range(30):
        nodes = [node("n%d" % i, millicpu=rng.choice([1000, 2000, 4000]), memory=rng.choice([1000, 4000]), pods=rng.choice([1, 2, 110]))
                 for i in range(5)]
        if rng.random() < 0.3:
            del nodes[0]["status"]["allocatable"]["pods"]
        bound = [online_pod("b%d" % i, rng.randint(100, 1500), rng.randint(100, 1500), "n%d" % rng.randint(0, 4)) for i in range(6)]
        snapshot = Snapshot(nodes, bound)
        most = tide._most_free(snapshot, [n["metadata"]["name"] for n in nodes])
        for index in range(20):
            candidate = online_pod("c%d" % index, rng.randint(0, 4000), rng.randint(0, 4000))
            if tide._beyond(snapshot, candidate, most):
                assert snapshot.fits_any_node(candidate) is None
