import pytest

from ansible_collections.katalyst.colocation.plugins.module_utils.reconcile import Plan, PlanError


def test_set_if_different_writes_only_what_differs():
    plan = Plan()
    assert plan.set_if_different("file", "/a", "1", "1") is None
    plan.set_if_different("file", "/b", "1", "2")
    assert len(plan) == 1 and plan.changed
    assert plan.diff() == {"before": {"file:/b": "1"}, "after": {"file:/b": "2"}}


def test_dry_run_applies_nothing():
    plan = Plan()
    plan.add("file", "/a", "set", "0", "1")
    calls = []
    assert len(plan.apply(calls.append, dry_run=True)) == 1
    assert calls == []


def test_failure_rolls_back_in_reverse_order():
    state = {"/a": "0", "/b": "0", "/c": "0"}
    plan = Plan()
    for path in ("/a", "/b", "/c"):
        plan.add("file", path, "set", "0", "1")

    def applier(change):
        if change.target == "/c" and change.after == "1":
            raise OSError("read-only")
        state[change.target] = change.after

    with pytest.raises(PlanError) as error:
        plan.apply(applier)
    assert state == {"/a": "0", "/b": "0", "/c": "0"}
    assert [c.target for c in error.value.rolled_back] == ["/b", "/a"]
    assert "/c" in str(error.value) and "read-only" in str(error.value)


def test_inverse_of_create_is_delete():
    plan = Plan()
    change = plan.add("cgroup", "/sys/fs/cgroup/x", "create", None, "present")
    assert change.inverse().action == "delete"
    assert change.inverse().before == "present"
