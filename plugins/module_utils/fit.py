# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""Does a pod fit a node? The kube-scheduler (1.24) filters that matter for colocation, faithfully:
NodeResourcesFit (requests incl. pod count), TaintToleration, NodeAffinity (nodeSelector and required
node affinity), NodeUnschedulable. Used by the tide planner and the sandbox scheduler.

``Snapshot`` precomputes each node's requested totals once, so a fit check costs O(resources).
"""

from __future__ import annotations

import functools

from .podview import effective_requests
from .quantity import parse_quantity
from .selectors import node_selector_requirement

TERMINAL_PHASES = ("Succeeded", "Failed")


@functools.lru_cache(maxsize=4096)
def _amount(resource, text):
    """cpu in millis, anything else in units (rounded up); cached: clusters repeat the same few strings."""
    quantity = parse_quantity(str(text))
    return quantity.milli_value() if resource == "cpu" else quantity.value()


def pod_requests(pod):
    """Effective requests: max(sum of containers, each init container) + overhead; cpu in milli."""
    spec = pod.get("spec") or {}
    return effective_requests([(c.get("resources") or {}).get("requests") or {} for c in spec.get("containers") or []],
                              [(c.get("resources") or {}).get("requests") or {} for c in spec.get("initContainers") or []],
                              spec.get("overhead") or {}, _amount)


def node_allocatable(node):
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    return {resource: _amount(resource, value) for resource, value in allocatable.items()}


def tolerates(toleration, taint):
    """Kubernetes ToleratesTaint."""
    if toleration.get("effect") and toleration["effect"] != taint.get("effect"):
        return False
    operator = toleration.get("operator") or "Equal"
    if not toleration.get("key"):
        return operator == "Exists"
    if toleration["key"] != taint.get("key"):
        return False
    if operator == "Exists":
        return True
    return (toleration.get("value") or "") == (taint.get("value") or "")


def untolerated_taint(pod, node):
    tolerations = (pod.get("spec") or {}).get("tolerations") or []
    for taint in (node.get("spec") or {}).get("taints") or []:
        if taint.get("effect") not in ("NoSchedule", "NoExecute"):
            continue
        if not any(tolerates(t, taint) for t in tolerations):
            return taint
    return None


def _term_matches(term, node):
    labels = (node.get("metadata") or {}).get("labels") or {}
    for expression in term.get("matchExpressions") or []:
        if not node_selector_requirement(expression).matches(labels):
            return False
    fields = {"metadata.name": (node.get("metadata") or {}).get("name")}
    for expression in term.get("matchFields") or []:
        if not node_selector_requirement(expression).matches(fields):
            return False
    return bool(term.get("matchExpressions") or term.get("matchFields"))


def matches_node_affinity(pod, node):
    spec = pod.get("spec") or {}
    labels = (node.get("metadata") or {}).get("labels") or {}
    for key, value in (spec.get("nodeSelector") or {}).items():
        if labels.get(key) != value:
            return False
    required = (((spec.get("affinity") or {}).get("nodeAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    terms = required.get("nodeSelectorTerms")
    if terms is None:
        return True
    return any(_term_matches(term, node) for term in terms)


def is_active(pod):
    return (pod.get("status") or {}).get("phase") not in TERMINAL_PHASES


class Snapshot:
    """Nodes with the pods bound to them, for repeated fit checks and what-if moves."""

    def __init__(self, nodes, pods):
        self._nodes = {n["metadata"]["name"]: n for n in nodes}
        self.allocatable = {name: node_allocatable(node) for name, node in self._nodes.items()}
        self.requested = {name: {} for name in self._nodes}
        self.pod_count = {name: 0 for name in self._nodes}
        self.pods_by_node = {name: {} for name in self._nodes}
        self._requests_cache = {}
        for pod in pods:
            if (pod.get("spec") or {}).get("nodeName") in self._nodes and is_active(pod):
                self.add_pod(pod)

    def nodes(self):
        return [self._nodes[name] for name in sorted(self._nodes)]

    def node(self, name):
        return self._nodes.get(name)

    @staticmethod
    def _key(pod):
        meta = pod.get("metadata") or {}
        return meta.get("uid") or "%s/%s" % (meta.get("namespace"), meta.get("name"))

    def requests(self, pod):
        key = self._key(pod)
        if key not in self._requests_cache:
            self._requests_cache[key] = pod_requests(pod)
        return self._requests_cache[key]

    def add_pod(self, pod, node_name=None):
        name = node_name or pod["spec"]["nodeName"]
        requested = self.requested[name]
        for resource, amount in self.requests(pod).items():
            requested[resource] = requested.get(resource, 0) + amount
        self.pod_count[name] += 1
        self.pods_by_node[name][self._key(pod)] = pod

    def remove_pod(self, pod, node_name=None):
        name = node_name or pod["spec"]["nodeName"]
        if self.pods_by_node[name].pop(self._key(pod), None) is None:
            return
        requested = self.requested[name]
        for resource, amount in self.requests(pod).items():
            requested[resource] = requested.get(resource, 0) - amount
        self.pod_count[name] -= 1

    def replace_node(self, node):
        """Swap in a changed node object (labels/taints), keeping its pods."""
        name = node["metadata"]["name"]
        self._nodes[name] = node
        self.allocatable[name] = node_allocatable(node)

    def fits(self, pod, node_name):
        """(True, "") or (False, the kube-scheduler style reason)."""
        node = self._nodes[node_name]
        if (node.get("spec") or {}).get("unschedulable"):
            tolerations = (pod.get("spec") or {}).get("tolerations") or []
            unschedulable = {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}
            if not any(tolerates(t, unschedulable) for t in tolerations):
                return False, "node(s) were unschedulable"
        if not matches_node_affinity(pod, node):
            return False, "node(s) didn't match Pod's node affinity/selector"
        taint = untolerated_taint(pod, node)
        if taint is not None:
            return False, "node(s) had untolerated taint {%s: %s}" % (taint.get("key"), taint.get("value", ""))
        allocatable = self.allocatable[node_name]
        if "pods" in allocatable and self.pod_count[node_name] + 1 > allocatable["pods"]:
            return False, "Too many pods"
        requested = self.requested[node_name]
        for resource, amount in self.requests(pod).items():
            if amount and requested.get(resource, 0) + amount > allocatable.get(resource, 0):
                return False, "Insufficient %s" % resource
        return True, ""

    def fits_any_node(self, pod, exclude=()):
        """The first node (by name) the pod fits on, or None."""
        for name in sorted(self._nodes):
            if name not in exclude and self.fits(pod, name)[0]:
                return name
        return None
