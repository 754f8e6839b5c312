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
