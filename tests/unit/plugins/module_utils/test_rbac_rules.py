"""The RBAC table and its rendering: labels, names, scopes, the Lease only in its namespace, Events create only, and the
Plan (create what is missing, change only what differs, remove only what is ours)."""

import copy
import os

import pytest

from ansible_collections.katalyst.colocation.plugins.module_utils import rbac

LABELS = {"app.kubernetes.io/managed-by": "katalyst.colocation"}
DOC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..", "docs", "rbac.md")


def by_key(objects):
    return {rbac.object_key(obj): obj for obj in objects}


def as_served(obj):
    """``obj`` as an API server returns it: server fields added, someone else's label and annotation too."""
    served = copy.deepcopy(obj)
    served["metadata"].update({"resourceVersion": "12", "uid": "u-1", "creationTimestamp": "2026-01-01T00:00:00Z",
                               "annotations": {"note": "kept"}})
    served["metadata"]["labels"] = dict(served["metadata"]["labels"], team="ops")
    return served


def test_every_object_is_labelled_with_its_component_and_named_after_it():
    objects = rbac.manifests()
    assert [rbac.object_key(obj) for obj in objects] == [
        "ServiceAccount/katalyst-system/katalyst-agent",
        "ClusterRole/katalyst-colocation:katalyst-agent", "ClusterRoleBinding/katalyst-colocation:katalyst-agent",
        "Role/katalyst-system/katalyst-colocation:katalyst-agent", "RoleBinding/katalyst-system/katalyst-colocation:katalyst-agent",
        "ServiceAccount/katalyst-system/katalyst-controller",
        "ClusterRole/katalyst-colocation:katalyst-controller", "ClusterRoleBinding/katalyst-colocation:katalyst-controller",
        "Role/default/katalyst-colocation:katalyst-controller", "RoleBinding/default/katalyst-colocation:katalyst-controller",
        "Role/katalyst-system/katalyst-colocation:katalyst-controller", "RoleBinding/katalyst-system/katalyst-colocation:katalyst-controller",
        "ServiceAccount/katalyst-system/katalyst-webhook",
        "ServiceAccount/katalyst-system/katalyst-scheduler-extender",
        "ClusterRole/katalyst-colocation:katalyst-scheduler-extender", "ClusterRoleBinding/katalyst-colocation:katalyst-scheduler-extender",
        "Role/katalyst-system/katalyst-colocation:katalyst-scheduler-extender",
        "RoleBinding/katalyst-system/katalyst-colocation:katalyst-scheduler-extender"]
    for obj in objects:
        component = obj["metadata"]["labels"]["app.kubernetes.io/component"]
        assert obj["metadata"]["labels"] == dict(LABELS, **{"app.kubernetes.io/component": component})
        if obj["kind"].endswith("Binding"):
            assert obj["subjects"] == [{"kind": "ServiceAccount", "name": component, "namespace": "katalyst-system"}]
            assert obj["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": obj["kind"][:-len("Binding")],
                                      "name": "katalyst-colocation:" + component}


def test_namespace_and_lease_settings():
    objects = by_key(rbac.manifests([rbac.CONTROLLER], namespace="colo", lease_namespace="kube-system", lease_name="tide-leader"))
    assert set(objects) == {"ServiceAccount/colo/katalyst-controller", "ClusterRole/katalyst-colocation:katalyst-controller",
                            "ClusterRoleBinding/katalyst-colocation:katalyst-controller",
                            "Role/default/katalyst-colocation:katalyst-controller", "RoleBinding/default/katalyst-colocation:katalyst-controller",
                            "Role/kube-system/katalyst-colocation:katalyst-controller",
                            "RoleBinding/kube-system/katalyst-colocation:katalyst-controller",
                            "Role/colo/katalyst-colocation:katalyst-controller", "RoleBinding/colo/katalyst-colocation:katalyst-controller"}
    assert objects["Role/kube-system/katalyst-colocation:katalyst-controller"]["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "update"], "resourceNames": ["tide-leader"]}]
    assert objects["RoleBinding/kube-system/katalyst-colocation:katalyst-controller"]["subjects"][0]["namespace"] == "colo"
    # its own token renewal: in the daemons' namespace, for its own ServiceAccount only
    assert objects["Role/colo/katalyst-colocation:katalyst-controller"]["rules"] == [
        {"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"], "resourceNames": ["katalyst-controller"]}]
    # the Lease in `default`, where the controller's Events go too: one Role with both
    merged = by_key(rbac.manifests([rbac.CONTROLLER], lease_namespace="default"))
    assert [r["resources"] for r in merged["Role/default/katalyst-colocation:katalyst-controller"]["rules"]] == [["events"], ["leases"], ["leases"]]
    assert [r["resources"] for r in merged["Role/katalyst-system/katalyst-colocation:katalyst-controller"]["rules"]] == [["serviceaccounts/token"]]
    # the Lease in the daemons' namespace (the default): one Role with the Lease and the token rules
    together = by_key(rbac.manifests([rbac.CONTROLLER]))
    assert [r["resources"] for r in together["Role/katalyst-system/katalyst-colocation:katalyst-controller"]["rules"]] == [
        ["leases"], ["leases"], ["serviceaccounts/token"]]


def test_least_privilege_shape_of_the_table():
    for component, rules in rbac.RULES.items():
        for rule in rules:
            assert "*" not in rule.verbs and "*" not in rule.resources and rule.group != "*", (component, rule)
            assert rule.why, (component, rule)
            assert not {"escalate", "bind", "impersonate", "deletecollection"} & set(rule.verbs)
            if "events" in rule.resources:
                assert rule.verbs == ("create",), rule                          # Events: create only
            if "leases" in rule.resources:
                assert rule.scope == rbac.LEASE_NAMESPACE, rule                 # Leases: only in the lease namespace
            if rule.resources == ("serviceaccounts/token",):
                assert rule == rbac.own_token_rule(component), rule             # tokens: of its own ServiceAccount only
                continue
            assert not {"secrets", "serviceaccounts", "configmaps"} & {r.split("/")[0] for r in rule.resources}
    assert rbac.RULES[rbac.WEBHOOK] == ()
    assert [o["kind"] for o in rbac.component_objects(rbac.WEBHOOK)] == ["ServiceAccount"]
    assert rbac.cluster_role(rbac.WEBHOOK) is None and rbac.role(rbac.WEBHOOK, "katalyst-system") is None
    # every daemon with an API client renews its own token, in the daemons' namespace
    for component in (rbac.AGENT, rbac.CONTROLLER, rbac.EXTENDER):
        rule = rbac.own_token_rule(component)
        assert rule in rbac.RULES[component] and rule.scope == rbac.DAEMONS_NAMESPACE and rule.resource_names == (component,)


def test_unknown_component_is_refused():
    with pytest.raises(ValueError, match="unknown component.*katalyst-bogus"):
        rbac.manifests(["katalyst-bogus"])
    assert rbac.check_components(["katalyst-webhook", "katalyst-agent"]) == ["katalyst-agent", "katalyst-webhook"]


@pytest.mark.parametrize("request_, allowed", [
    ({"verb": "patch", "group": "", "resource": "pods", "namespace": "web"}, True),
    ({"verb": "delete", "group": "", "resource": "pods", "namespace": "web"}, False),
    ({"verb": "patch", "group": "node.katalyst.kubewharf.io", "resource": "customnoderesources/status", "name": "n1"}, True),
    ({"verb": "update", "group": "node.katalyst.kubewharf.io", "resource": "customnoderesources/status", "name": "n1"}, False),
    ({"verb": "create", "group": "", "resource": "events", "namespace": "kube-system"}, True),
    ({"verb": "patch", "group": "", "resource": "events", "namespace": "kube-system", "name": "e1"}, False),
    ({"verb": "create", "group": "", "resource": "serviceaccounts/token", "namespace": "katalyst-system", "name": "katalyst-agent"}, True),
    ({"verb": "create", "group": "", "resource": "serviceaccounts/token", "namespace": "katalyst-system", "name": "katalyst-controller"}, False),
    ({"verb": "create", "group": "", "resource": "serviceaccounts/token", "namespace": "default", "name": "katalyst-agent"}, False),
    ({"verb": "create", "group": "", "resource": "serviceaccounts/token", "namespace": "katalyst-system"}, False),
    ({"verb": "get", "group": "", "resource": "serviceaccounts", "namespace": "katalyst-system", "name": "katalyst-agent"}, False),
])
def test_agent_grants(request_, allowed):
    assert (rbac.allowing_rule(rbac.AGENT, request_) is not None) is allowed


@pytest.mark.parametrize("request_, allowed", [
    ({"verb": "create", "group": "coordination.k8s.io", "resource": "leases", "namespace": "katalyst-system"}, True),
    ({"verb": "update", "group": "coordination.k8s.io", "resource": "leases", "namespace": "katalyst-system", "name": "katalyst-controller"}, True),
    ({"verb": "update", "group": "coordination.k8s.io", "resource": "leases", "namespace": "katalyst-system", "name": "other"}, False),
    ({"verb": "get", "group": "coordination.k8s.io", "resource": "leases", "namespace": "kube-system", "name": "katalyst-controller"}, False),
    ({"verb": "create", "group": "coordination.k8s.io", "resource": "leases", "namespace": "kube-system"}, False),
    ({"verb": "create", "group": "", "resource": "events", "namespace": "default"}, True),
    ({"verb": "create", "group": "", "resource": "events", "namespace": "kube-system"}, False),
    ({"verb": "patch", "group": "tide.katalyst.kubewharf.io", "resource": "tidenodepools/status", "name": "p"}, True),
    ({"verb": "update", "group": "tide.katalyst.kubewharf.io", "resource": "tidenodepools/status", "name": "p"}, False),
])
def test_controller_grants(request_, allowed):
    assert (rbac.allowing_rule(rbac.CONTROLLER, request_) is not None) is allowed


def test_resource_names_never_match_a_create():
    """RBAC matches resourceNames against the request's name, and a create has none."""
    rendered = {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"], "resourceNames": ["l"]}
    assert not rbac.allows(rendered, "ns", "create", "coordination.k8s.io", "leases", "ns", None)
    assert rbac.allows(dict(rendered, verbs=["get"]), "ns", "get", "coordination.k8s.io", "leases", "ns", "l")


# -- the plan --------------------------------------------------------------------------------------------------------
def test_plan_creates_everything_missing_in_order():
    desired = [rbac.namespace_object("katalyst-system")] + rbac.manifests()
    plan = rbac.plan_rbac(desired, {}, "present")
    assert [(c.target, c.action) for c in plan] == [(rbac.object_key(o), "create") for o in desired]
    change = plan.changes[2]
    assert change.before is None
    assert change.after == {"metadata": {"name": "katalyst-colocation:katalyst-agent", "labels": desired[2]["metadata"]["labels"]},
                            "rules": desired[2]["rules"]}


def test_plan_is_empty_when_the_cluster_holds_it_with_server_fields_and_more_labels():
    desired = [rbac.namespace_object("katalyst-system")] + rbac.manifests()
    existing = {rbac.object_key(obj): as_served(obj) for obj in desired}
    existing["Namespace/katalyst-system"]["metadata"]["labels"] = {}     # a namespace someone made: not adopted
    assert not rbac.plan_rbac(desired, existing, "present")


def test_plan_replaces_what_differs_and_keeps_the_rest():
    desired = rbac.manifests([rbac.AGENT])
    existing = {rbac.object_key(obj): as_served(obj) for obj in desired}
    role = existing["ClusterRole/katalyst-colocation:katalyst-agent"]
    role["rules"] = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]}]
    existing["ServiceAccount/katalyst-system/katalyst-agent"]["metadata"]["labels"].pop("app.kubernetes.io/component")
    plan = rbac.plan_rbac(desired, existing, "present")
    assert [(c.target, c.action) for c in plan] == [("ServiceAccount/katalyst-system/katalyst-agent", "replace"),
                                                    ("ClusterRole/katalyst-colocation:katalyst-agent", "replace")]
    wanted = plan.changes[1].data["object"]
    assert wanted["rules"] == desired[1]["rules"] and wanted["metadata"]["resourceVersion"] == "12"
    assert wanted["metadata"]["labels"]["team"] == "ops" and wanted["metadata"]["annotations"] == {"note": "kept"}
    assert plan.changes[1].before["rules"][0]["verbs"] == ["*"] and plan.changes[1].after["rules"] == desired[1]["rules"]


def test_plan_recreates_a_binding_whose_role_ref_differs():
    desired = rbac.manifests([rbac.EXTENDER])
    existing = {rbac.object_key(obj): as_served(obj) for obj in desired}
    binding = existing["ClusterRoleBinding/katalyst-colocation:katalyst-scheduler-extender"]
    binding["roleRef"] = dict(binding["roleRef"], name="cluster-admin")
    plan = rbac.plan_rbac(desired, existing, "present")
    assert [(c.target, c.action) for c in plan] == [("ClusterRoleBinding/katalyst-colocation:katalyst-scheduler-extender", "recreate")]
    assert plan.changes[0].before["roleRef"]["name"] == "cluster-admin"


def test_absent_deletes_only_ours_bindings_first_never_the_namespace():
    desired = [rbac.namespace_object("katalyst-system")] + rbac.manifests([rbac.AGENT, rbac.WEBHOOK])
    existing = {rbac.object_key(obj): as_served(obj) for obj in desired}
    existing["ServiceAccount/katalyst-system/katalyst-webhook"]["metadata"]["labels"] = {"team": "ops"}
    plan = rbac.plan_rbac(desired, existing, "absent")
    assert [(c.target, c.action) for c in plan] == [("RoleBinding/katalyst-system/katalyst-colocation:katalyst-agent", "delete"),
                                                    ("Role/katalyst-system/katalyst-colocation:katalyst-agent", "delete"),
                                                    ("ClusterRoleBinding/katalyst-colocation:katalyst-agent", "delete"),
                                                    ("ClusterRole/katalyst-colocation:katalyst-agent", "delete"),
                                                    ("ServiceAccount/katalyst-system/katalyst-agent", "delete")]
    assert plan.warnings == ["ServiceAccount/katalyst-system/katalyst-webhook is not labelled app.kubernetes.io/managed-by=katalyst.colocation: "
                             "left in place"]
    assert all(c.after is None for c in plan)
    assert not rbac.plan_rbac(desired, {}, "absent")


def doc_cells(rule):
    """The first four cells of the rule's row in docs/rbac.md: group, resources, verbs, where it is granted."""
    names = " (only `%s`)" % ", ".join(name.replace(rbac.LEASE_NAME, "<lease_name>") for name in rule.resource_names) if rule.resource_names else ""
    scope = {rbac.CLUSTER: "cluster-wide", rbac.LEASE_NAMESPACE: "the lease namespace",
             rbac.DAEMONS_NAMESPACE: "the daemons' namespace"}.get(rule.scope, "namespace `%s`" % rule.scope)
    return ["`%s`" % (rule.group or "core"), "`%s`%s" % (", ".join(rule.resources), names), ", ".join(rule.verbs), scope]


def test_the_docs_list_exactly_the_rules():
    with open(DOC) as handle:
        sections = handle.read().split("\n### ")
    for component in rbac.COMPONENTS:
        section = next(text for text in sections if text.startswith(component + "\n"))
        rows = [line.strip("| ").split(" | ")[:4] for line in section.split("\n## ")[0].splitlines() if line.startswith("| `")]
        assert rows == [doc_cells(rule) for rule in rbac.RULES[component]], component


def test_the_node_isolation_policy_matches_the_agent_only_and_its_writes():
    policy, binding = rbac.node_isolation_objects("ops")
    assert [rbac.object_key(obj) for obj in (policy, binding)] == [
        "ValidatingAdmissionPolicy/katalyst-colocation-agent-node-isolation",
        "ValidatingAdmissionPolicyBinding/katalyst-colocation-agent-node-isolation"]
    assert policy["metadata"]["labels"] == rbac.labels(rbac.AGENT) == binding["metadata"]["labels"]
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail" and "paramKind" not in spec
    assert spec["matchConditions"] == [{"name": "katalyst-agent", "expression": "request.userInfo.username == 'system:serviceaccount:ops:katalyst-agent'"}]
    assert binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}
    # exactly the agent's writes of the RBAC table, with the operations they are admitted as (a patch is an UPDATE)
    writes = {(rule.group, resource) for rule in rbac.RULES[rbac.AGENT] for resource in rule.resources
              if set(rule.verbs) & {"create", "patch", "update"}} - set(rbac.UNISOLATED_AGENT_WRITES)
    matched = {(group, resource) for rule in spec["matchConstraints"]["resourceRules"] for group in rule["apiGroups"] for resource in rule["resources"]}
    assert matched == writes
    # the node name comes from the node-bound token's user extra; without it, every validation but the first holds
    # vacuously only for resources it does not cover, and the first refuses
    assert spec["variables"] == [{"name": "nodeName", "expression": rbac.NODE_NAME_EXPRESSION}]
    assert "request.userInfo.extra['authentication.kubernetes.io/node-name'][0]" in rbac.NODE_NAME_EXPRESSION
    expressions = [v["expression"] for v in spec["validations"]]
    assert expressions[0] == "variables.nodeName != ''"
    for resource, field in (("customnoderesources", "object.metadata.name"), ("nodes", "object.metadata.name"), ("pods", "object.spec.nodeName"),
                            ("events", "object.reportingInstance"), ("events", "object.source.host")):
        assert any(("request.resource.resource != '%s'" % resource) in e and ("%s == variables.nodeName" % field) in e for e in expressions), field
    assert all(v["reason"] == "Forbidden" and v["message"] for v in spec["validations"])


def test_the_node_isolation_policy_as_served_is_left_alone_and_a_weakened_one_put_back():
    desired = rbac.node_isolation_objects()
    existing = {rbac.object_key(obj): dict(as_served(obj), status={"observedGeneration": 1, "typeChecking": {}}) for obj in desired}
    assert not rbac.plan_rbac(desired, existing, "present")
    weakened = copy.deepcopy(existing)
    weakened[rbac.object_key(desired[0])]["spec"]["validations"] = [{"expression": "true"}]
    plan = rbac.plan_rbac(desired, weakened, "present")
    assert [(change.target, change.action) for change in plan] == [(rbac.object_key(desired[0]), "replace")]
    assert plan.as_list()[0]["after"]["spec"] == desired[0]["spec"]
    assert [change.action for change in rbac.plan_rbac(desired, existing, "absent")] == ["delete", "delete"]
