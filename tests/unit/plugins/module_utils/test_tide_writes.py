"""tide_controller's writes: one merge patch per node, per pool finalizer and per pool status, from the copy held
(its resourceVersion as the precondition), a read only after a 409 or for an object not held."""

import copy

import pytest

from ansible_collections.katalyst.colocation.plugins.module_utils import tide
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons import tide_controller
from ansible_collections.katalyst.colocation.plugins.module_utils.kube import KubeError
from sandbox.kubeapi.patching import merge_patch      # the emulator's RFC 7386: the patches sent make what was wanted

TAINT = {"key": tide.TAINT_EVICT_OFFLINE_POD, "value": "true", "effect": "NoExecute"}
OTHER = {"key": "other", "value": "x", "effect": "NoSchedule"}


def cached_node(name, version="7", labels=None, taints=None):
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "resourceVersion": version, "labels": dict(labels or {"keep": "1", "old": "x"})},
            "spec": {"taints": list(taints or [])} if taints else {}}


class FakeKube:
    """Gets and merge patches against ``stored`` (name -> object of ``kind``); ``conflicts``: names whose next patch
    answers 409."""

    conflict_retries = 2

    def __init__(self, stored, conflicts=(), kind=("v1", "Node")):
        self.stored, self.conflicts, self.kind, self.requests = stored, set(conflicts), kind, []

    def get(self, api_version, kind, name):
        self.requests.append(("get", name))
        assert (api_version, kind) == self.kind
        return copy.deepcopy(self.stored.get(name))

    def patch(self, api_version, kind, name, patch, patch_type="merge", subresource=None, dry_run=False):
        self.requests.append(("patch", name, copy.deepcopy(patch)) + ((subresource,) if subresource else ()))
        assert (api_version, kind, patch_type, dry_run) == self.kind + ("merge", False)
        if name not in self.stored:
            raise KubeError("gone", 404)
        if name in self.conflicts or patch["metadata"]["resourceVersion"] != self.stored[name]["metadata"]["resourceVersion"]:
            self.conflicts.discard(name)
            raise KubeError("conflict", 409)
        after = copy.deepcopy(self.stored[name])
        for field, value in patch.items():
            if field != "metadata":
                after[field] = merge_patch(after.get(field), value)
        after["metadata"].update(patch["metadata"], resourceVersion="8")
        after["metadata"] = {key: value for key, value in after["metadata"].items() if value is not None}
        return after


def plan_of(*changes):
    result = tide.TidePlan("np1")
    for name, edit in changes:
        result.plan.add("api", "Node/" + name, "patch", None, None, "test", {"node": name, "edit": edit})
    return result


def test_node_edit_patch_carries_the_changes_and_the_resource_version():
    node = cached_node("n1", taints=[OTHER])
    edit = tide.node_edit(labels={"new": "y", "old": None, "keep": "1"}, annotations={"a": "b"}, taints={"remove_keys": [TAINT["key"]], "put": TAINT})
    assert tide_controller.node_edit_patch(node, edit) == {
        "metadata": {"labels": {"new": "y", "old": None}, "annotations": {"a": "b"}},
        "spec": {"taints": [OTHER, TAINT]}}
    removed = tide_controller.node_edit_patch(cached_node("n1", taints=[TAINT]), tide.node_edit(taints={"remove_keys": [TAINT["key"]], "put": None}))
    assert removed == {"spec": {"taints": None}}
    assert tide_controller.node_edit_patch(node, tide.node_edit(labels={"keep": "1"}, taints={"remove_keys": ["absent"], "put": None})) is None


def test_write_node_changes_patches_from_the_cache_and_reads_only_after_a_conflict():
    stored = {name: cached_node(name) for name in ("n1", "n2", "n3")}
    stored["n2"]["metadata"]["resourceVersion"] = "9"          # changed since the cache saw it: 409, read, patched again
    cache = {name: cached_node(name) for name in ("n1", "n2", "n4")}
    edit = tide.node_edit(labels={"new": "y"})
    kube = FakeKube(stored)
    written = tide_controller.write_node_changes(kube, plan_of(("n1", edit), ("n2", edit), ("n3", edit), ("n4", edit)), nodes=cache)
    assert [request[:2] for request in kube.requests] == [("patch", "n1"), ("patch", "n2"), ("get", "n2"), ("patch", "n2"),
                                                          ("get", "n3"), ("patch", "n3"), ("patch", "n4")]
    assert [request[2]["metadata"]["resourceVersion"] for request in kube.requests if request[0] == "patch"] == ["7", "7", "9", "7", "7"]
    # n4 is gone (404): not written; n3 was not cached: read, then patched
    assert [change.data["node"] for change, _after in written] == ["n1", "n2", "n3"]
    assert written[0][1]["metadata"]["resourceVersion"] == "8" and written[1][1]["metadata"]["labels"]["new"] == "y"
    # a node that already matches is not written at all
    kube = FakeKube(stored)
    assert tide_controller.write_node_changes(kube, plan_of(("n1", tide.node_edit(labels={"keep": "1"}))), nodes=cache) == []
    assert kube.requests == []


def test_write_node_changes_gives_up_after_bounded_conflicts():
    kube = FakeKube({"n1": cached_node("n1")})

    def conflicting_patch(*_args, **_kwargs):
        raise KubeError("conflict", 409)
    kube.patch = conflicting_patch
    with pytest.raises(KubeError, match="still conflicting after 2 attempts") as raised:
        tide_controller.write_node_changes(kube, plan_of(("n1", tide.node_edit(labels={"new": "y"}))), nodes={"n1": cached_node("n1")})
    assert raised.value.status == 409
    assert kube.requests == [("get", "n1"), ("get", "n1")]


def pool(version="7", finalizers=None, status=None):
    meta = {"name": "np1", "resourceVersion": version}
    if finalizers:
        meta["finalizers"] = finalizers
    obj = {"apiVersion": tide.API_VERSION, "kind": tide.KIND, "metadata": meta, "spec": {}}
    if status is not None:
        obj["status"] = status
    return obj


def test_pool_finalizer_and_status_are_patched_from_the_held_copy_without_a_read():
    kube = FakeKube({"np1": pool(finalizers=["other"], status={"old": 1, "conditions": [{"type": "Ready"}], "nested": {"a": 1, "b": 2}})},
                    kind=(tide.API_VERSION, tide.KIND))
    held = kube.stored["np1"]
    after = tide_controller.add_finalizer(kube, "np1", held)
    assert kube.requests == [("patch", "np1", {"metadata": {"finalizers": ["other", tide.FINALIZER], "resourceVersion": "7"}})]
    assert after["metadata"]["finalizers"] == ["other", tide.FINALIZER]
    kube.requests.clear()
    assert tide_controller.add_finalizer(kube, "np1", after) is after and kube.requests == []       # already there: no request
    # the status becomes what is wanted (a key it no longer has is removed), in one request
    kube.stored["np1"] = after
    wanted = {"conditions": [{"type": "Ready", "status": "True"}], "nested": {"a": 1}}
    written = tide_controller.write_status(kube, "np1", wanted, after)
    assert kube.requests == [("patch", "np1", {"status": {"old": None, "conditions": wanted["conditions"], "nested": {"b": None}},
                                               "metadata": {"resourceVersion": "8"}}, "status")]
    assert written["status"] == wanted
    kube.requests.clear()
    kube.stored["np1"] = dict(written, metadata=dict(written["metadata"], resourceVersion="9"))
    removed = tide_controller.remove_finalizer(kube, "np1", written)    # held copy stale: 409, read, patched again
    assert [request[:2] for request in kube.requests] == [("patch", "np1"), ("get", "np1"), ("patch", "np1")]
    assert removed["metadata"]["finalizers"] == ["other"]


def test_the_last_finalizer_removed_and_a_pool_gone():
    kube = FakeKube({"np1": pool(finalizers=[tide.FINALIZER])}, kind=(tide.API_VERSION, tide.KIND))
    assert "finalizers" not in tide_controller.remove_finalizer(kube, "np1", kube.stored["np1"])["metadata"]
    assert kube.requests[0][2]["metadata"]["finalizers"] is None
    assert tide_controller.write_status(kube, "gone", {"conditions": []}) is None
    assert kube.requests[-1] == ("get", "gone")
