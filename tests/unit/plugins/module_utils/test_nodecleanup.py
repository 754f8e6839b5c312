"""nodecleanup: what uninstall takes off a Node (the collection's labels, annotations and taints) and what it leaves
(the user's, the overcommit pool label included)."""

from ansible_collections.katalyst.colocation.plugins.module_utils import nodecleanup, overcommit, tide

USER_TAINT = {"key": "example.com/dedicated", "value": "batch", "effect": "NoSchedule"}


def installed_node():
    return {"metadata": {"name": "n1",
                         "labels": {"kubernetes.io/hostname": "n1", overcommit.POOL_LABEL: "pool", tide.LABEL_NODE_POOL: "pool",
                                    tide.LABEL_NODE_TYPE: "online", tide.LABEL_TIDE: "true"},
                         "annotations": {overcommit.RATIO_KEY["cpu"]: "1.5", overcommit.ORIGINAL_ALLOCATABLE_KEY["cpu"]: "31500m",
                                         tide.ANNOTATION_LAST_FLIP: "2026-01-01T00:00:00Z", "example.com/owner": "team"}},
            "spec": {"taints": [USER_TAINT, {"key": tide.TAINT_EVICT_OFFLINE_POD, "value": "true", "effect": "NoExecute"},
                                {"key": "node.katalyst.kubewharf.io/MemoryPressure", "effect": "NoSchedule"}]}}


def test_strip_node_takes_off_only_the_collections_keys():
    stripped = nodecleanup.strip_node(installed_node())
    assert stripped["metadata"]["labels"] == {"kubernetes.io/hostname": "n1", overcommit.POOL_LABEL: "pool"}
    assert stripped["metadata"]["annotations"] == {"example.com/owner": "team"}
    assert stripped["spec"]["taints"] == [USER_TAINT]


def test_owned_metadata_names_what_goes():
    owned = nodecleanup.owned_metadata(installed_node())
    assert set(owned["labels"]) == {tide.LABEL_NODE_POOL, tide.LABEL_NODE_TYPE, tide.LABEL_TIDE}
    assert set(owned["annotations"]) == {overcommit.RATIO_KEY["cpu"], overcommit.ORIGINAL_ALLOCATABLE_KEY["cpu"], tide.ANNOTATION_LAST_FLIP}
    assert [taint["key"] for taint in owned["taints"]] == [tide.TAINT_EVICT_OFFLINE_POD, "node.katalyst.kubewharf.io/MemoryPressure"]


def test_a_clean_node_is_left_alone():
    node = {"metadata": {"name": "n2", "labels": {overcommit.POOL_LABEL: "pool"}}, "spec": {"taints": [USER_TAINT]}}
    assert nodecleanup.strip_node(node) is None


def conditions(*entries):
    return {"metadata": {"name": "n3"}, "status": {"conditions": [{"type": kind, "status": status, "reason": reason} for kind, status, reason in entries]}}


def test_the_agents_node_conditions_go_the_kubelets_stay():
    node = conditions(("Ready", "True", "KubeletReady"), ("SystemRootfs", "True", "RootfsPressure"), ("MemoryPressure", "False", "KubeletHasSufficientMemory"))
    assert [condition["type"] for condition in nodecleanup.owned_conditions(node)] == ["SystemRootfs"]
    assert nodecleanup.conditions_patch(node) == {"status": {"conditions": [{"type": "SystemRootfs", "$patch": "delete"}]}}
    # cleared by the agent (status False after the transition period): still the agent's, still removed
    assert nodecleanup.conditions_patch(conditions(("SystemRootfs", "False", "NoRootfsPressure")))["status"]["conditions"][0]["type"] == "SystemRootfs"


def test_a_condition_of_the_same_type_written_by_someone_else_stays():
    assert nodecleanup.conditions_patch(conditions(("SystemRootfs", "True", "SomeoneElsesReason"), ("Ready", "True", "KubeletReady"))) is None
    assert nodecleanup.conditions_patch({"metadata": {"name": "n4"}}) is None
    # the kubelet owns MemoryPressure: the agent carries that pressure as its taint only, the condition is never ours
    assert nodecleanup.conditions_patch(conditions(("MemoryPressure", "True", "MemoryPressure"))) is None
