from ansible_collections.katalyst.colocation.plugins.module_utils import crd_manifests
from ansible_collections.katalyst.colocation.plugins.modules.crds import is_subset, plan_crds


def test_is_subset_ignores_server_defaults():
    assert is_subset({"a": {"b": 1}}, {"a": {"b": 1, "c": 2}, "d": 3})
    assert not is_subset({"a": {"b": 1}}, {"a": {"b": 2}})
    assert not is_subset({"a": [1, 2]}, {"a": [1]})


def test_plan_creates_missing_updates_changed_and_skips_equal():
    desired = crd_manifests.crds()
    names = [c["metadata"]["name"] for c in desired]
    existing = {names[0]: None, names[1]: crd_manifests.crds([names[1]])[0], names[2]: crd_manifests.crds([names[2]])[0]}
    existing[names[2]]["spec"]["versions"][0]["served"] = False
    existing[names[1]]["spec"]["conversion"] = {"strategy": "None"}    # a server default: no change
    for crd in existing.values():
        if crd:
            crd["metadata"]["resourceVersion"] = "7"
    plan = plan_crds(desired, existing, "present")
    assert [(c.target, c.action) for c in plan] == [(names[0], "create"), (names[2], "replace")]
    assert plan.changes[1].data["object"]["metadata"]["resourceVersion"] == "7"


def test_plan_absent_deletes_only_existing():
    desired = crd_manifests.crds()
    names = [c["metadata"]["name"] for c in desired]
    plan = plan_crds(desired, {names[0]: desired[0], names[1]: None, names[2]: None}, "absent")
    assert [(c.target, c.action) for c in plan] == [(names[0], "delete")]
