# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""Least privilege: each katalyst daemon its own ServiceAccount, and exactly the API rules its code calls.

``RULES`` is the one table: per daemon, the calls it makes (API group, resources with subresources, verbs) and
the code path that makes them. It is read off the daemons' API calls (daemons/*.py, kube.py, informer.py,
leader.py); tests/integration/test_rbac_calls.py records every call each daemon makes in the integration
scenarios and checks both ways (every call is allowed by a rule, every verb of every rule is called), and
tests/integration/test_rbac_real.py proves on a real kube-apiserver that the calls are allowed and a write
outside the rules is refused with 403.

Discovery (``/api``, ``/apis``, ``/version``: the kubernetes client's DynamicClient) needs no rule: every
authenticated identity has it through the default ``system:discovery`` binding.

What RBAC cannot express, an agent writing only its own node's objects, is the node isolation
ValidatingAdmissionPolicy (``node_isolation_objects``, docs/rbac.md "Node isolation"), proven by
tests/integration/test_node_isolation.py on a real kube-apiserver.

The render functions return plain Kubernetes objects; ``plan_rbac`` compares them with what the cluster
holds and returns the Plan (create, update only what differs, delete what is ours).
"""

from __future__ import annotations

import collections
import copy

from .reconcile import Plan

MANAGED_BY = "katalyst.colocation"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_COMPONENT = "app.kubernetes.io/component"
DEFAULT_NAMESPACE = "katalyst-system"
DEFAULT_LEASE_NAME = "katalyst-controller"      # daemons/controller.py DEFAULTS["lease_name"]
# Events about cluster-scoped objects (TideNodePool, NodeOvercommitConfig) go to this namespace (kube.py emit_event).
EVENTS_NAMESPACE = "default"
# ClusterRoles and bindings are cluster-wide names: prefixed, so that they never meet katalyst-core's own.
NAME_PREFIX = "katalyst-colocation:"
RBAC_API_VERSION = "rbac.authorization.k8s.io/v1"

AGENT = "katalyst-agent"
CONTROLLER = "katalyst-controller"
WEBHOOK = "katalyst-webhook"
EXTENDER = "katalyst-scheduler-extender"
COMPONENTS = (AGENT, CONTROLLER, WEBHOOK, EXTENDER)

CORE = ""
CNR = "node.katalyst.kubewharf.io"
TIDE = "tide.katalyst.kubewharf.io"
OVERCOMMIT = "overcommit.katalyst.kubewharf.io"
COORDINATION = "coordination.k8s.io"

# Where a rule applies: everywhere (a ClusterRole and ClusterRoleBinding), or in one namespace (a Role and
# RoleBinding there); "{lease_namespace}", "{lease_name}" and "{namespace}" (the daemons' own, where their
# ServiceAccounts are) are filled in when rendering.
CLUSTER = None
LEASE_NAMESPACE = "{lease_namespace}"
LEASE_NAME = "{lease_name}"
DAEMONS_NAMESPACE = "{namespace}"

Rule = collections.namedtuple("Rule", "group resources verbs why scope resource_names", defaults=(CLUSTER, ()))


def own_token_rule(component):
    """A daemon renews its own ServiceAccount token (TokenRequest), and nobody else's (daemons/token_renewal.py)."""
    return Rule(CORE, ("serviceaccounts/token",), ("create",),
                "token_renewal.py TokenRenewer.run_once: a new token of its own ServiceAccount before the current one expires "
                "(the agent's bound to its Node: the node isolation policy)", DAEMONS_NAMESPACE, (component,))


RULES = {
    AGENT: (
        Rule(CORE, ("pods",), ("list", "watch"),
             "agent.py Agent.build: the informer on this node's pods (field selector spec.nodeName)"),
        Rule(CORE, ("pods",), ("patch",),
             "agent_numa.py NumaLoops.numa_binding: the numa_bind_result annotation of a NUMA-bound pod"),
        Rule(CORE, ("nodes",), ("list", "watch"),
             "agent.py Agent.build: the informer on its own Node (field selector metadata.name), whose overcommit ratios cap the realtime ratio"),
        Rule(CORE, ("events",), ("create",),
             "kube.py KubeClient.emit_event: Warning Events on its pods (pod_events.py PodWarnings: bad annotations, values it cannot write)"),
        Rule(CORE, ("pods/eviction",), ("create",),
             "agent_eviction.py EvictionManager.evict: policy/v1 Evictions of its node's pods under rootfs or memory pressure (eviction_enabled)"),
        Rule(CORE, ("nodes",), ("patch",),
             "agent_eviction.py NodeConditions.patch_taints: its Node's node.katalyst.kubewharf.io/SystemRootfs:NoSchedule taint "
             "(merge patch of spec.taints with the resourceVersion read, every other taint kept)"),
        Rule(CORE, ("nodes/status",), ("patch",),
             "agent_eviction.py NodeConditions.patch_conditions: its Node's SystemRootfs condition (strategic merge patch of the status)"),
        Rule(CNR, ("customnoderesources",), ("get", "create", "patch"),
             "agent_numa.py current_cnr/apply_cnr_change, agent_overcommit.py report: its node's CNR, created when missing, "
             "realtime ratio annotations merge-patched"),
        Rule(CNR, ("customnoderesources/status",), ("patch",),
             "cnr.py plan_cnr_status: reclaimed resources, NUMA zones and topology policy (merge patch of the status subresource)"),
        own_token_rule(AGENT),
    ),
    CONTROLLER: (
        Rule(CORE, ("nodes",), ("list", "watch"), "controller.py INFORMERS[nodes]: the tide, cnr and overcommit reconcilers"),
        Rule(CORE, ("nodes",), ("get",),
             "tide_controller.py write_node_changes: a node read again after a 409; cnr_controller.py: a live GET before a delete"),
        Rule(CORE, ("nodes",), ("patch",), "overcommit_controller.py: the overcommit annotations (merge patch); tide_controller.py "
             "write_node_changes: labels, annotations and taints (merge patch with the cached resourceVersion as precondition)"),
        Rule(CORE, ("pods",), ("list", "watch"), "controller.py INFORMERS[pods]: the tide and overcommit reconcilers"),
        Rule(TIDE, ("tidenodepools",), ("list", "watch"), "controller.py INFORMERS[tidenodepools]"),
        Rule(TIDE, ("tidenodepools",), ("get", "patch"), "tide_controller.py add_finalizer: merge patch from the informer's copy with "
             "its resourceVersion as precondition (patch_from_copy; get after a 409); remove_finalizer: get the live pool, then patch"),
        Rule(TIDE, ("tidenodepools/status",), ("patch",), "tide_controller.py write_status: merge patch of the status subresource (patch_from_copy)"),
        Rule(OVERCOMMIT, ("nodeovercommitconfigs",), ("list", "watch"), "controller.py INFORMERS[nodeovercommitconfigs]"),
        Rule(OVERCOMMIT, ("nodeovercommitconfigs/status",), ("patch",), "overcommit_controller.py: matchedNodeList and conditions (merge patch)"),
        Rule(CNR, ("customnoderesources",), ("list", "watch"), "controller.py INFORMERS[customnoderesources]: the cnr and overcommit reconcilers"),
        Rule(CNR, ("customnoderesources",), ("create", "get", "patch", "delete"),
             "cnr_controller.py CNRReconciler.apply: a CNR per Node, labels and ownerReference patched, deleted when its Node is gone"),
        Rule(CORE, ("events",), ("create",),
             "tide_controller.py flip_event, overcommit_controller.py: Events about TideNodePools and NodeOvercommitConfigs, which are "
             "cluster-scoped, so their Events are in the default namespace (kube.py emit_event)", EVENTS_NAMESPACE),
        Rule(COORDINATION, ("leases",), ("create",), "leader.py try_acquire_or_renew: the first replica creates the Lease", LEASE_NAMESPACE),
        Rule(COORDINATION, ("leases",), ("get", "update"),
             "leader.py: read, renew, take over and release its own Lease (a replace, never a patch)", LEASE_NAMESPACE, (LEASE_NAME,)),
        own_token_rule(CONTROLLER),
    ),
    # The webhook only answers the API server's AdmissionReviews (webhook.py): it makes no API call at all.
    WEBHOOK: (),
    EXTENDER: (
        Rule(CORE, ("nodes",), ("list", "watch"), "extender.py ClusterCache.start: the node informer"),
        Rule(CORE, ("pods",), ("list", "watch"), "extender.py ClusterCache.start: the pod informer"),
        Rule(CNR, ("customnoderesources",), ("list", "watch"), "extender.py ClusterCache.start: the CNR informer"),
        Rule(CORE, ("events",), ("create",), "extender_numa.py NumaPlugin: Warning Events on pods with malformed NUMA annotations"),
        own_token_rule(EXTENDER),
    ),
}


def check_components(components):
    """The components asked for, in table order; a ValueError names an unknown one."""
    wanted = list(COMPONENTS) if components is None else list(components)
    unknown = [name for name in wanted if name not in RULES]
    if unknown:
        raise ValueError("unknown component(s) %s (known: %s)" % (", ".join(unknown), ", ".join(COMPONENTS)))
    return [name for name in COMPONENTS if name in wanted]


def labels(component):
    return {LABEL_MANAGED_BY: MANAGED_BY, LABEL_COMPONENT: component}


def role_name(component):
    """The name of the component's ClusterRole, Role and their bindings."""
    return NAME_PREFIX + component


def _settings(lease_namespace, lease_name, namespace=DEFAULT_NAMESPACE):
    return {"lease_namespace": lease_namespace, "lease_name": lease_name, "namespace": namespace}


def rule_scope(rule, lease_namespace, namespace=DEFAULT_NAMESPACE):
    """None for a cluster-wide rule, else the namespace it is granted in."""
    return rule.scope.format(**_settings(lease_namespace, "", namespace)) if rule.scope else None


def render_rule(rule, lease_name=DEFAULT_LEASE_NAME):
    """The rule as a PolicyRule dict, exactly as an API server returns it."""
    rendered = {"apiGroups": [rule.group], "resources": list(rule.resources), "verbs": list(rule.verbs)}
    if rule.resource_names:
        rendered["resourceNames"] = [name.format(**_settings("", lease_name)) for name in rule.resource_names]
    return rendered


def namespace_object(namespace):
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": {LABEL_MANAGED_BY: MANAGED_BY}}}


def service_account(component, namespace=DEFAULT_NAMESPACE):
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": component, "namespace": namespace, "labels": labels(component)}}


def _subjects(component, namespace):
    return [{"kind": "ServiceAccount", "name": component, "namespace": namespace}]


def cluster_role(component, lease_name=DEFAULT_LEASE_NAME):
    """The ClusterRole of the cluster-wide rules, or None when the component has none."""
    rules = [render_rule(rule, lease_name) for rule in RULES[component] if rule.scope is CLUSTER]
    if not rules:
        return None
    return {"apiVersion": RBAC_API_VERSION, "kind": "ClusterRole", "metadata": {"name": role_name(component), "labels": labels(component)},
            "rules": rules}


def cluster_role_binding(component, namespace=DEFAULT_NAMESPACE):
    return {"apiVersion": RBAC_API_VERSION, "kind": "ClusterRoleBinding", "metadata": {"name": role_name(component), "labels": labels(component)},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role_name(component)},
            "subjects": _subjects(component, namespace)}


def role_namespaces(component, lease_namespace=DEFAULT_NAMESPACE, namespace=DEFAULT_NAMESPACE):
    """The namespaces where the component has namespaced rules, in table order."""
    found = []
    for rule in RULES[component]:
        scope = rule_scope(rule, lease_namespace, namespace)
        if scope is not None and scope not in found:
            found.append(scope)
    return found


def role(component, role_namespace, lease_namespace=DEFAULT_NAMESPACE, lease_name=DEFAULT_LEASE_NAME, namespace=DEFAULT_NAMESPACE):
    """The Role of the component's rules in ``role_namespace``, or None when it has none there."""
    rules = [render_rule(rule, lease_name) for rule in RULES[component] if rule_scope(rule, lease_namespace, namespace) == role_namespace]
    if not rules:
        return None
    return {"apiVersion": RBAC_API_VERSION, "kind": "Role",
            "metadata": {"name": role_name(component), "namespace": role_namespace, "labels": labels(component)}, "rules": rules}


def role_binding(component, role_namespace, namespace=DEFAULT_NAMESPACE):
    return {"apiVersion": RBAC_API_VERSION, "kind": "RoleBinding",
            "metadata": {"name": role_name(component), "namespace": role_namespace, "labels": labels(component)},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role_name(component)},
            "subjects": _subjects(component, namespace)}


def component_objects(component, namespace=DEFAULT_NAMESPACE, lease_namespace=None, lease_name=DEFAULT_LEASE_NAME):
    """The component's objects in creation order: ServiceAccount, ClusterRole + binding, Role + binding per namespace."""
    lease_namespace = lease_namespace or namespace
    objects = [service_account(component, namespace)]
    cluster = cluster_role(component, lease_name)
    if cluster is not None:
        objects += [cluster, cluster_role_binding(component, namespace)]
    for role_namespace in role_namespaces(component, lease_namespace, namespace):
        objects += [role(component, role_namespace, lease_namespace, lease_name, namespace), role_binding(component, role_namespace, namespace)]
    return objects


def manifests(components=None, namespace=DEFAULT_NAMESPACE, lease_namespace=None, lease_name=DEFAULT_LEASE_NAME):
    """Every object of the components (all four when None), in creation order."""
    return [obj for component in check_components(components) for obj in component_objects(component, namespace, lease_namespace, lease_name)]


# -- node isolation: what RBAC cannot express ------------------------------------------------------------------------
ADMISSION_API_VERSION = "admissionregistration.k8s.io/v1"
# A ValidatingAdmissionPolicy's name is a DNS subdomain: no ``:``.
NODE_ISOLATION = "katalyst-colocation-agent-node-isolation"
# What the API server adds to the user info of a token bound to a Node (TokenRequest boundObjectRef kind Node).
NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"
NODE_NAME_EXPRESSION = ("has(request.userInfo.extra) && '{key}' in request.userInfo.extra && size(request.userInfo.extra['{key}']) == 1"
                        " ? request.userInfo.extra['{key}'][0] : ''").format(key=NODE_NAME_EXTRA)
# Agent writes no policy can tie to its node: an eviction's admission object is the Eviction, which names the pod but
# not its node (docs/rbac.md "Node isolation").
UNISOLATED_AGENT_WRITES = ((CORE, "pods/eviction"),)
# (expression, message, messageExpression): every one must hold for a request of the agent to be admitted.
NODE_ISOLATION_VALIDATIONS = (
    ("variables.nodeName != ''",
     "the katalyst-agent must use a node-bound token (TokenRequest boundObjectRef to its Node: service_account_kubeconfig bound_node)",
     None),
    ("request.resource.resource != 'customnoderesources' || object.metadata.name == variables.nodeName",
     "the katalyst-agent may write only its own node's CustomNodeResource",
     "'the katalyst-agent of node ' + variables.nodeName + ' may not write the CustomNodeResource ' + object.metadata.name"),
    # its Node's SystemRootfs condition (nodes/status) and taint (nodes): request.resource.resource is 'nodes' for both
    ("request.resource.resource != 'nodes' || object.metadata.name == variables.nodeName",
     "the katalyst-agent may write only its own Node",
     "'the katalyst-agent of node ' + variables.nodeName + ' may not write the Node ' + object.metadata.name"),
    ("request.resource.resource != 'pods' || (has(object.spec.nodeName) && object.spec.nodeName == variables.nodeName)",
     "the katalyst-agent may patch only pods bound to its node",
     "'the katalyst-agent of node ' + variables.nodeName + ' may not patch a pod that is not bound to it'"),
    ("request.resource.resource != 'events' || (has(object.reportingInstance) && object.reportingInstance == variables.nodeName"
     " && has(object.source) && has(object.source.host) && object.source.host == variables.nodeName)",
     "the katalyst-agent's Events must name its node in source.host and reportingInstance",
     "'the katalyst-agent of node ' + variables.nodeName + ' may create only Events whose source.host and reportingInstance name it'"),
    # its token renewal (token_renewal.py): the object is the TokenRequest; a token bound to another node, or to none,
    # would let a compromised agent act as another node (or outside the policy's node binding). An unbound request's
    # boundObjectRef reaches the policy as an empty object: every field is tested with has() (no evaluation error, a 403)
    ("request.resource.resource != 'serviceaccounts' || (has(object.spec.boundObjectRef) && has(object.spec.boundObjectRef.kind)"
     " && object.spec.boundObjectRef.kind == 'Node' && has(object.spec.boundObjectRef.name) && object.spec.boundObjectRef.name == variables.nodeName)",
     "the katalyst-agent may request only tokens bound to its own Node",
     "'the katalyst-agent of node ' + variables.nodeName + ' may request only tokens bound to its own Node'"),
)


def agent_user(namespace=DEFAULT_NAMESPACE):
    return "system:serviceaccount:%s:%s" % (namespace, AGENT)


def _admission_rule(group, resources, operations):
    """A NamedRuleWithOperations as the API server returns it (``scope`` defaulted)."""
    return {"apiGroups": [group], "apiVersions": ["*"], "operations": list(operations), "resources": list(resources), "scope": "*"}


def node_isolation_policy(namespace=DEFAULT_NAMESPACE):
    """The ValidatingAdmissionPolicy that ties the agent's writes to the node its token is bound to (docs/rbac.md).

    It matches the agent's writes of the table (CNR and its status, its Node and its status, pod patches, Event creation,
    TokenRequests) and only requests of the agent's ServiceAccount (matchConditions); written with the API server's
    defaults so that a read-back compares equal."""
    validations = []
    for expression, message, message_expression in NODE_ISOLATION_VALIDATIONS:
        validation = {"expression": expression, "message": message, "reason": "Forbidden"}
        if message_expression:
            validation["messageExpression"] = message_expression
        validations.append(validation)
    return {"apiVersion": ADMISSION_API_VERSION, "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": NODE_ISOLATION, "labels": labels(AGENT)},
            "spec": {"failurePolicy": "Fail",
                     "matchConstraints": {"matchPolicy": "Equivalent", "namespaceSelector": {}, "objectSelector": {},
                                          "resourceRules": [
                                              _admission_rule(CNR, ("customnoderesources", "customnoderesources/status"), ("CREATE", "UPDATE")),
                                              _admission_rule(CORE, ("nodes", "nodes/status"), ("UPDATE",)),
                                              _admission_rule(CORE, ("pods",), ("UPDATE",)),
                                              _admission_rule(CORE, ("events",), ("CREATE",)),
                                              _admission_rule(CORE, ("serviceaccounts/token",), ("CREATE",))]},
                     "matchConditions": [{"name": "katalyst-agent", "expression": "request.userInfo.username == '%s'" % agent_user(namespace)}],
                     "variables": [{"name": "nodeName", "expression": NODE_NAME_EXPRESSION}],
                     "validations": validations}}


def node_isolation_binding():
    return {"apiVersion": ADMISSION_API_VERSION, "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": NODE_ISOLATION, "labels": labels(AGENT)},
            "spec": {"policyName": NODE_ISOLATION, "validationActions": ["Deny"]}}


def node_isolation_objects(namespace=DEFAULT_NAMESPACE):
    """The policy and its binding, in creation order."""
    return [node_isolation_policy(namespace), node_isolation_binding()]


# -- what a rule allows (RBAC's semantics, for the tests that check the table against the calls) --------------------
def grants(component, lease_namespace=DEFAULT_NAMESPACE, lease_name=DEFAULT_LEASE_NAME, namespace=DEFAULT_NAMESPACE):
    """[(namespace or None for cluster-wide, table Rule, rendered rule)] of the component (its ServiceAccount in ``namespace``)."""
    return [(rule_scope(rule, lease_namespace, namespace), rule, render_rule(rule, lease_name)) for rule in RULES[component]]


def allows(rendered, scope, verb, group, resource, namespace=None, name=None):
    """Does a rendered rule granted in ``scope`` (None: through a ClusterRoleBinding) allow this request?

    ``resource`` includes the subresource (``pods/status``); ``name`` is the object's name (None for list, watch and
    create of an object, which RBAC never matches against ``resourceNames``; the create of a subresource, such as
    ``serviceaccounts/token``, names its object)."""
    if scope is not None and namespace != scope:
        return False
    if group not in rendered["apiGroups"] or resource not in rendered["resources"] or verb not in rendered["verbs"]:
        return False
    names = rendered.get("resourceNames")
    return not names or name in names


def allowing_rule(component, request, lease_namespace=DEFAULT_NAMESPACE, lease_name=DEFAULT_LEASE_NAME, namespace=DEFAULT_NAMESPACE):
    """The table Rule that allows ``request`` (a dict: verb, group, resource, namespace, name), or None."""
    for scope, rule, rendered in grants(component, lease_namespace, lease_name, namespace):
        if allows(rendered, scope, request["verb"], request["group"], request["resource"], request.get("namespace"), request.get("name")):
            return rule
    return None


# -- the plan --------------------------------------------------------------------------------------------------------
def object_key(obj):
    """``Kind/name`` or ``Kind/namespace/name``: how changes and the diff name an object."""
    meta = obj["metadata"]
    return "/".join([obj["kind"]] + ([meta["namespace"]] if meta.get("namespace") else []) + [meta["name"]])


SPEC_FIELDS = {"ClusterRole": ("rules",), "Role": ("rules",), "ClusterRoleBinding": ("roleRef", "subjects"),
               "RoleBinding": ("roleRef", "subjects"), "ValidatingAdmissionPolicy": ("spec",), "ValidatingAdmissionPolicyBinding": ("spec",)}


def view(obj):
    """What the module manages of an object (what ``--diff`` shows): name, namespace, labels and the RBAC fields (the
    ``spec`` of an admission policy or binding)."""
    meta = obj.get("metadata") or {}
    shown = {"metadata": {key: meta[key] for key in ("name", "namespace") if meta.get(key)}}
    shown["metadata"]["labels"] = dict(meta.get("labels") or {})
    for field in SPEC_FIELDS.get(obj["kind"], ()):
        shown[field] = copy.deepcopy(obj.get(field))
    return shown


def _wanted_from(current, desired):
    """``current`` with our labels added and our RBAC fields set (other labels, annotations and fields kept)."""
    wanted = copy.deepcopy(current)
    wanted.setdefault("apiVersion", desired["apiVersion"])
    wanted.setdefault("kind", desired["kind"])
    meta = wanted.setdefault("metadata", {})
    meta["labels"] = dict(meta.get("labels") or {}, **desired["metadata"].get("labels", {}))
    for field in SPEC_FIELDS.get(desired["kind"], ()):
        wanted[field] = copy.deepcopy(desired[field])
    return wanted


def plan_rbac(desired, existing, state):
    """The Plan that brings the cluster to ``desired`` (``state=present``) or removes it (``absent``).

    ``existing`` maps ``object_key`` to the object the cluster holds, or None. Present: create what is missing,
    replace what differs (a binding whose ``roleRef`` differs is deleted and created again: ``roleRef`` is
    immutable); a Namespace is only created when missing. Absent: delete, bindings first, only objects labelled as managed by this collection (a warning
    names the others); a Namespace is never deleted (it may hold more than this collection put there)."""
    plan = Plan()
    if state == "absent":
        for obj in reversed(desired):
            key = object_key(obj)
            current = existing.get(key)
            if current is None or obj["kind"] == "Namespace":
                continue
            if ((current.get("metadata") or {}).get("labels") or {}).get(LABEL_MANAGED_BY) != MANAGED_BY:
                plan.warn("%s is not labelled %s=%s: left in place" % (key, LABEL_MANAGED_BY, MANAGED_BY))
                continue
            plan.add("api", key, "delete", view(current), None, "remove %s" % obj["kind"], {"object": current})
        return plan
    for obj in desired:
        key = object_key(obj)
        current = existing.get(key)
        if current is None:
            plan.add("api", key, "create", None, view(obj), "create %s" % obj["kind"], {"object": obj})
            continue
        if obj["kind"] == "Namespace":
            continue        # created when missing, never adopted
        wanted = _wanted_from(current, obj)
        if view(wanted) == view(current):
            continue
        if "roleRef" in obj and current.get("roleRef") != obj["roleRef"]:
            plan.add("api", key, "recreate", view(current), view(obj), "roleRef is immutable: delete and create the binding",
                     {"object": obj, "current": current})
            continue
        plan.add("api", key, "replace", view(current), view(wanted), "update %s" % obj["kind"], {"object": wanted})
    return plan
