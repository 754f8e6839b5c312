import pytest

from ansible_collections.katalyst.colocation.plugins.module_utils.selectors import (
    label_selector_from_dict, node_selector_requirement, parse_field_selector, parse_label_selector, selector_from_set)

LABELS = {"app": "web", "tier": "front", "zone": "a", "gpu": ""}


@pytest.mark.parametrize("text, expected", [
    ("", True), ("app=web", True), ("app==web", True), ("app!=web", False), ("app!=db", True),
    ("missing!=x", True), ("app in (web,db)", True), ("app in (db)", False), ("app notin (db, cache)", True),
    ("missing notin (x)", True), ("app", True), ("!app", False), ("!missing", True), ("gpu", True), ("gpu=", True),
    ("app=web,tier=front", True), ("app=web,tier=back", False), ("app in (web), zone notin (b,c), !missing", True),
])
def test_label_selector_strings(text, expected):
    assert parse_label_selector(text).matches(LABELS) is expected


@pytest.mark.parametrize("bad", ["app=(x", "=web", "app in ()", "app in (a b)", "app===x", "a b"])
def test_label_selector_syntax_errors(bad):
    with pytest.raises(ValueError) as error:
        parse_label_selector(bad)
    assert "label selector" in str(error.value) or "set needs" in str(error.value)


def test_selector_from_set_is_and_and_empty_selects_all():
    assert selector_from_set(None).matches({"x": "y"})
    assert selector_from_set({}).matches({})
    assert selector_from_set({"app": "web", "zone": "a"}).matches(LABELS)
    assert not selector_from_set({"app": "web", "zone": "b"}).matches(LABELS)


def test_label_selector_dict_semantics():
    assert not label_selector_from_dict(None).matches(LABELS)
    assert label_selector_from_dict({}).matches(LABELS)
    # matchLabels pairs are AND-ed (the unmerged Katalyst draft OR-ed them: a bug we do not copy)
    assert not label_selector_from_dict({"matchLabels": {"app": "web", "tier": "back"}}).matches(LABELS)
    selector = {"matchLabels": {"app": "web"},
                "matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]},
                                     {"key": "missing", "operator": "DoesNotExist"},
                                     {"key": "tier", "operator": "Exists"},
                                     {"key": "app", "operator": "NotIn", "values": ["db"]}]}
    assert label_selector_from_dict(selector).matches(LABELS)


@pytest.mark.parametrize("bad", [
    {"matchLabels": {"a": 1}}, {"matchExpressions": [{"key": "a", "operator": "In"}]},
    {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]},
    {"matchExpressions": [{"key": "a", "operator": "Near"}]}, {"matchLabel": {}}, "app=web",
])
def test_label_selector_dict_errors(bad):
    with pytest.raises(ValueError):
        label_selector_from_dict(bad)


def test_node_selector_gt_lt():
    assert node_selector_requirement({"key": "cores", "operator": "Gt", "values": ["8"]}).matches({"cores": "16"})
    assert not node_selector_requirement({"key": "cores", "operator": "Lt", "values": ["8"]}).matches({"cores": "16"})
    assert not node_selector_requirement({"key": "cores", "operator": "Gt", "values": ["8"]}).matches({"cores": "x"})


POD = {"metadata": {"name": "p1", "namespace": "default"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}}


@pytest.mark.parametrize("text, expected", [
    ("", True), ("spec.nodeName=n1", True), ("spec.nodeName==n1", True), ("spec.nodeName!=n1", False),
    ("spec.nodeName=", False), ("spec.schedulerName=", True), ("metadata.name=p1,status.phase=Running", True),
    ("metadata.namespace=kube-system", False),
])
def test_field_selectors(text, expected):
    assert parse_field_selector(text).matches(POD) is expected


def test_field_selector_error():
    with pytest.raises(ValueError, match="invalid field selector"):
        parse_field_selector("spec.nodeName~n1")
