# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""Topology-aware placement for the scheduler extender and the node agent (cluster spec §3.3, §4.2, §4.3).

Extender side, per (pod, node): ``filter_pod`` (NUMA resource fit of the ``native`` or ``dynamic`` policy,
the QoS-aware fit of reclaimed resources, NUMA-level inter-pod affinity/anti-affinity) and
``score_pod`` (LeastAllocated on the best NUMA node plus preferred microtopology terms). Inputs are plain
dicts: the pod, the Node, its CNR (or None) and the pods bound to that node.

Node side: ``choose_numa_for_pod`` picks the NUMA node for a ``dedicated_cores`` + ``numa_binding`` pod from
the node facts, honouring the same rules, and returns the cpuset and the ``numa_bind_result`` annotation.

Fixes to Katalyst's unmerged design (PR #347): ``matchLabels`` pairs are AND-ed and ``matchExpressions``
work (Kubernetes label-selector semantics); ``preferred`` terms score instead of being ignored; each
required affinity term must be satisfied (a pod matching its own term may start a group); existing pods'
anti-affinity is honoured for ``numa_exclusive`` pods too; a bad annotation makes the pod unschedulable
with a reason (for an Event) instead of an error.

The aligned resources of the NUMA fit are a setting (Katalyst's ``alignedResources``, default cpu and memory; the
extender's ``numa_aligned_resources``), so extended resources such as ``nvidia.com/gpu`` can be aligned too; a node
whose NUMA zones do not report an aligned resource the pod requests cannot hold it. A malformed ``numa_bind_result``
(Katalyst: an error) is read as no result and listed by ``bind_result_problems`` for the caller to report.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
import sys

from .cnr import RECLAIMED_MEMORY, RECLAIMED_MILLICPU, reclaimed_from_cnr
from .fit import pod_requests
from .nodeinfo import parse_cpu_list
from .podview import ANTI_AFFINITY_KEY, amount as _amount, as_view, pod_view
from .qos import DEDICATED_CORES, NUMA_BIND_RESULT_KEY, RECLAIMED_CORES

NATIVE = "native"
DYNAMIC = "dynamic"
SINGLE_NUMA_CONTAINER = "SingleNUMANodeContainerLevel"
SINGLE_NUMA_POD = "SingleNUMANodePodLevel"
NUMERIC_CONTAINER = "NumericContainerLevel"
# Katalyst's NodeResourceTopologyArgs.alignedResources default; the extender's ``numa_aligned_resources`` setting
DEFAULT_ALIGNED_RESOURCES = frozenset(("cpu", "memory"))
SCORED_RESOURCES = ("cpu", "memory")     # LeastAllocated over the best NUMA (Katalyst's scoringStrategy default)
NATIVE_RESOURCES = ("cpu", "memory", "ephemeral-storage", "pods")
UNSCHEDULABLE_AFFINITY = "node(s) didn't satisfy numa level inter pod affinity rules"
MAX_EXTENDER_PRIORITY = 10


# a Kubernetes resource name: ``cpu``, ``hugepages-2Mi`` or a qualified name such as ``nvidia.com/gpu``
_RESOURCE_NAME = re.compile(r"^(?:[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*/)?"
                            r"[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?$")


def aligned_resource_names(names):
    """The ``alignedResources`` setting (a list of resource names) as a frozenset; ValueError naming a bad entry.

    Aligned resources of a NUMA-binding pod must come from the same NUMA node(s) as each other (the numeric
    handler's masks are identical), must be idle on those NUMA nodes for a ``numa_exclusive`` pod, and a node with
    no NUMA zone reporting one of them cannot hold a pod that requests it. An empty list aligns nothing (as Katalyst).
    """
    if isinstance(names, (str, bytes)) or not isinstance(names, (list, tuple, set, frozenset)):
        raise ValueError("aligned resources must be a list of resource names, got %r" % (names,))
    for name in names:
        if not isinstance(name, str) or len(name) > 253 or not _RESOURCE_NAME.match(name) or len(name.rsplit("/", 1)[-1]) > 63:
            raise ValueError("aligned resources: %r is not a Kubernetes resource name (such as cpu, memory or nvidia.com/gpu)" % (name,))
    return frozenset(names)


# -- pods ------------------------------------------------------------------------------------------
def _meta(obj):
    return (obj or {}).get("metadata") or {}


def pod_key(pod):
    meta = _meta(pod)
    return "%s/%s" % (meta.get("namespace") or "default", meta.get("name"))


def _qos(view):
    """The QoS level, None when the annotation is invalid (neither reclaimed nor dedicated)."""
    return None if view.qos_error else view.qos_level


def is_guaranteed(pod):
    """Kubernetes QoS class Guaranteed: every container has cpu and memory limits equal to its requests (a pod or a PodView)."""
    view = as_view(pod)
    if not view.containers:
        return False
    for container in view.containers + view.init_containers:
        limits, requests = container.limits, container.requests
        for name in ("cpu", "memory"):
            if name not in limits:
                return False
            if name in requests and _amount(name, requests[name]) != _amount(name, limits[name]):
                return False
    return True


def is_native_supported(pod):
    """``native`` support: Guaranteed and every (init) container asks for whole CPUs (a pod or a PodView)."""
    view = as_view(pod)
    if not is_guaranteed(view):
        return False
    for container in view.containers + view.init_containers:
        cpu = container.requests.get("cpu", container.limits.get("cpu"))
        if cpu is None or _amount("cpu", cpu) % 1000 != 0:
            return False
    return True


class _Views(dict):
    """PodViews by pod identity, for one computation over pods that stay unchanged while it runs."""

    def of(self, pod):
        found = self.get(id(pod))
        if found is None:
            found = self[id(pod)] = pod_view(pod)
        return found


def _labels_key(labels):
    """A stand-in for a label set (pods of one template share it): a string, so its hash is computed once."""
    return json.dumps(sorted((labels or {}).items()), separators=(",", ":"), default=str)


class PodQuery:
    """What the NUMA decisions read from one pending pod, worked out once and read-only afterwards.

    The scheduler extender builds one per request and passes it as ``query=`` for every node, so per-node
    work does not re-read the pod's annotations, quantities or microtopology terms; selector matches
    against a label set are remembered for the life of the query (``match``).
    """

    def __init__(self, pod, policy=DYNAMIC):
        self.pod = pod
        self.view = view = pod_view(pod)
        self.policy = policy
        self.key = view.key
        self.labels = view.labels
        self.labels_key = _labels_key(self.labels)
        self.qos = _qos(view)
        self.binding = view.numa_binding
        self.exclusive = view.numa_exclusive
        self.supported = self.binding if policy == DYNAMIC else is_native_supported(view)
        self._matches = {}

    @functools.cached_property
    def requests(self):
        return pod_requests(self.pod)

    @functools.cached_property
    def main_requests(self):
        main = self.view.main_container
        return main.request_amounts if main else {}

    @functools.cached_property
    def fit_containers(self):
        if self.policy == DYNAMIC:
            main = self.view.main_container
            return [(main.name, main.request_amounts) if main else (None, {})]
        return [(c.name, c.request_amounts) for c in self.view.containers]

    @functools.cached_property
    def microtopology(self):
        """``(affinity, anti_affinity, None)``, or ``(None, None, AffinityError)`` for a malformed annotation."""
        error = self.view.microtopology_error
        if error is not None:
            return None, None, error
        return self.view.affinity, self.view.anti_affinity, None

    def matches_of(self, selector):
        """``{label set key: selector.matches(labels)}`` remembered for this query (filled by ``match``)."""
        found = self._matches.get(selector)
        if found is None:
            found = self._matches[selector] = {}
        return found

    def match(self, selector, labels_key, labels):
        """``selector.matches(labels)``, remembered per (selector, label set)."""
        memo = self.matches_of(selector)
        found = memo.get(labels_key)
        if found is None:
            found = memo[labels_key] = selector.matches(labels)
        return found


def _pod_query(query, pod, policy):
    if query is not None and query.pod is pod and query.policy == policy:
        return query
    return PodQuery(pod, policy)


# -- NUMA topology from the CNR ------------------------------------------------------------------------
_TOPOLOGY_CACHE = {}
_TOPOLOGY_CACHE_SIZE = 16384


def numa_topology(cnr):
    """``{"policy": topologyPolicy, "numas": {id: {"socket", "allocatable": {res: int}, "allocations": [(consumer, requests)]}}}``.

    Read-only for callers: a CNR with a resourceVersion is parsed once per version (the extender sees the same
    CNRs for every pod).
    """
    meta = _meta(cnr)
    key = (meta.get("uid") or meta.get("name"), meta.get("resourceVersion"))
    if key[1] is None:
        return _parse_numa_topology(cnr)
    topology = _TOPOLOGY_CACHE.get(key)
    if topology is None:
        if len(_TOPOLOGY_CACHE) >= _TOPOLOGY_CACHE_SIZE:
            _TOPOLOGY_CACHE.clear()
        topology = _TOPOLOGY_CACHE[key] = _parse_numa_topology(cnr)
    return topology


def _parse_numa_topology(cnr):
    status = (cnr or {}).get("status") or {}
    numas = {}
    for socket in status.get("topologyZone") or []:
        if not isinstance(socket, dict) or socket.get("type") != "Socket":
            continue
        for zone in socket.get("children") or []:
            if not isinstance(zone, dict) or zone.get("type") != "Numa" or not str(zone.get("name", "")).isdigit():
                continue
            allocatable = {}
            for name, value in (((zone.get("resources") or {}).get("allocatable")) or {}).items():
                try:
                    allocatable[name] = _amount(name, value)
                except ValueError:
                    allocatable[name] = 0
            allocations = []
            for allocation in zone.get("allocations") or []:
                requests = {}
                for name, value in (allocation.get("requests") or {}).items():
                    try:
                        requests[name] = _amount(name, value)
                    except ValueError:
                        continue
                allocations.append((allocation.get("consumer") or "", requests))
            numas[int(zone["name"])] = {"socket": str(socket.get("name")), "allocatable": allocatable, "allocations": allocations}
    return {"policy": status.get("topologyPolicy") or "", "numas": numas}


def bind_result(pod):
    """The NUMA ids of the pod's ``numa_bind_result`` (a sorted tuple), or None when it is absent or malformed.

    A malformed value (``bind_result_problem`` says why) is read as no result: a NUMA-binding pod then counts as
    not pinned yet (on every NUMA node in the extender's fit), and the pod's owner is told by the caller.
    """
    return as_view(pod).bind_result


def bind_result_problem(pod):
    """Why the pod's ``numa_bind_result`` is malformed (for an Event or a log line), or None."""
    return as_view(pod).bind_result_problem


def bind_result_problems(pods, views=None):
    """``[(pod, problem)]`` for the active pods whose ``numa_bind_result`` is malformed."""
    views = _Views() if views is None else views
    found = []
    for pod in pods:
        view = views.of(pod)
        if view.bind_result_problem is not None and view.active:
            found.append((pod, view.bind_result_problem))
    return found


def _consumer_pod(consumer, by_uid, by_key):
    """The pod a CNR allocation consumer (``ns/name/uid``) names: by its uid, else by ``ns/name``; None when neither is known."""
    parts = consumer.split("/")
    pod = by_uid.get(parts[2]) if len(parts) >= 3 else None
    return pod or by_key.get("/".join(parts[:2]))


def pods_by_numa(topology, pods_on_node, views=None):
    """Which active pods sit on which NUMA node: CNR allocation consumers (``ns/name/uid``) and ``numa_bind_result``."""
    views = _Views() if views is None else views
    by_uid, by_key = {}, {}
    for pod in pods_on_node:
        view = views.of(pod)
        if not view.active:
            continue
        by_uid[view.uid] = pod
        by_key[view.key] = pod
    placed = {numa: {} for numa in topology["numas"]}
    for numa, zone in topology["numas"].items():
        for consumer, _requests in zone["allocations"]:
            pod = _consumer_pod(consumer, by_uid, by_key)
            if pod is not None:
                placed[numa][views.of(pod).key] = pod
    for key, pod in by_key.items():
        for numa in views.of(pod).bind_result or []:
            placed.setdefault(numa, {})[key] = pod
    return {numa: list(pods.values()) for numa, pods in placed.items()}


def numa_available(topology, pods_on_node, policy=DYNAMIC, views=None):
    """``available = allocatable - requests`` per NUMA (floored at 0).

    ``dynamic`` counts only dedicated_cores pods; ``native`` counts every allocation. Pods bound by
    ``numa_bind_result`` but not yet in the CNR are counted on their NUMA nodes (assumed pods); a pod of
    the policy that is on the node but has neither (the agent has not pinned it yet) is counted on
    **every** NUMA node, as Katalyst's scheduler does with its assumed pods (pessimistic).
    """
    views = _Views() if views is None else views
    active = {views.of(p).key: p for p in pods_on_node if views.of(p).active}
    by_uid = {views.of(p).uid: p for p in active.values()}
    counted_keys = set()
    used = {numa: {} for numa in topology["numas"]}
    for numa, zone in topology["numas"].items():
        for consumer, requests in zone["allocations"]:
            pod = _consumer_pod(consumer, by_uid, active)
            if policy == DYNAMIC and (pod is None or _qos(views.of(pod)) != DEDICATED_CORES):
                continue
            if pod is not None:
                counted_keys.add((views.of(pod).key, numa))
            for name, value in requests.items():
                used[numa][name] = used[numa].get(name, 0) + value
    for key, pod in active.items():
        if any((key, n) in counted_keys for n in topology["numas"]):
            continue
        view = views.of(pod)
        numas = [n for n in view.bind_result or [] if n in used]
        if not numas and view.bind_result is None and (view.numa_binding if policy == DYNAMIC else is_native_supported(view)):
            for name, value in pod_requests(pod).items():
                for numa in used:
                    used[numa][name] = used[numa].get(name, 0) + value
            continue
        if not numas or (policy == DYNAMIC and _qos(view) != DEDICATED_CORES):
            continue
        for name, value in pod_requests(pod).items():
            for numa in numas:
                used[numa][name] = used[numa].get(name, 0) + value // len(numas)
    return {numa: {name: max(value - used[numa].get(name, 0), 0) for name, value in zone["allocatable"].items()}
            for numa, zone in topology["numas"].items()}


# -- NUMA resource fit (cluster §4.2) -------------------------------------------------------------------
def _single_numa_fit(requests, available, allocatable, numas, exclusive, aligned):
    """NUMAs where every requested resource fits (exclusive: aligned resources must be idle)."""
    fitting = set(numas)
    for name, value in requests.items():
        if value <= 0:
            continue
        present = [n for n in numas if name in allocatable[n]]
        if not present:
            if name in NATIVE_RESOURCES or name in aligned:
                return set()
            continue
        ok = set()
        for numa in present:
            if available[numa].get(name, 0) < value:
                continue
            if exclusive and name in aligned and available[numa].get(name, 0) != allocatable[numa].get(name, 0):
                continue
            ok.add(numa)
        fitting &= ok
    return fitting


def _numeric_fit(requests, available, allocatable, numas, sockets, binding, exclusive, aligned_names=DEFAULT_ALIGNED_RESOURCES):
    """The numeric handler: the best NUMA mask (a tuple) of the aligned resources, or None.

    Aligned resources share one mask (binding and not exclusive: a single NUMA node; exclusive: idle NUMA nodes).
    Every other requested resource that some NUMA zone reports has no binding constraint: in Katalyst it may take
    any mask that contains the aligned one, so it fits when the NUMA nodes together have enough of it.
    """
    for name, value in requests.items():
        if value > 0 and name not in aligned_names and any(name in allocatable[n] for n in numas):
            if sum(available[n].get(name, 0) for n in numas) < value:
                return None
    per_socket = {}
    for numa in numas:
        per_socket[sockets[numa]] = per_socket.get(sockets[numa], 0) + 1
    numas_per_socket = max(per_socket.values()) if per_socket else 1
    aligned = {n: v for n, v in requests.items() if n in aligned_names and v > 0}
    if not aligned:
        return tuple(numas[:1]) or None
    min_count = 1
    for name, value in aligned.items():
        capacities = sorted((allocatable[n].get(name, 0) for n in numas), reverse=True)
        total, count = 0, 0
        for capacity in capacities:
            total += capacity
            count += 1
            if total >= value:
                break
        min_count = max(min_count, count)
    best = None
    for size in range(min_count, len(numas) + 1):
        if binding and not exclusive and size > 1:
            break
        for mask in itertools.combinations(numas, size):
            if binding and size <= numas_per_socket and len({sockets[n] for n in mask}) > 1:
                continue
            if exclusive and any(available[n].get(r, 0) != allocatable[n].get(r, 0) for n in mask for r in aligned):
                continue
            if all(sum(available[n].get(r, 0) for n in mask) >= v for r, v in aligned.items()):
                best = mask
                break
        if best:
            break
    return best


def node_view(cnr, pods_on_node, policy=DYNAMIC):
    """What the NUMA decisions read from one node, computed once: ``{"topology", "placed", "available", "policy"}``.

    A caller that sees the same node state for many pods (the scheduler extender) keeps it and passes it as
    ``view=`` to ``filter_pod`` / ``score_pod`` / ``numa_resource_fit``; it must not be modified. Besides the
    parsed state it keeps what every pod's check starts from: the largest and the total available amount of
    each resource over the NUMA nodes (a pod that exceeds them fails without NUMA work), pods per NUMA with
    their label sets, the NUMA ids of each zone, and ``bind_result_problems`` (``bind_result_problems(pods_on_node)``:
    pods whose ``numa_bind_result`` is malformed and was read as absent, for the caller to report).
    """
    topology = numa_topology(cnr)
    views = _Views()
    placed = pods_by_numa(topology, pods_on_node, views)
    available = numa_available(topology, pods_on_node, policy, views)
    sockets = {n: z["socket"] for n, z in topology["numas"].items()}
    most, total, rows = {}, {}, {}
    for numa in sorted(available):
        for name, value in available[numa].items():
            most[name] = max(most.get(name, 0), value)
            total[name] = total.get(name, 0) + value
            rows.setdefault(name, []).append((numa, value, topology["numas"][numa]["allocatable"][name]))
    scored = {numa: tuple((name, values[name], float(zone["allocatable"][name])) for name in SCORED_RESOURCES
                          if zone["allocatable"].get(name, 0) > 0)
              for numa, zone, values in ((n, z, available[n]) for n, z in topology["numas"].items())}
    existing = existing_pod_terms(placed, views)
    return {"topology": topology, "placed": placed, "existing": existing, "available": available, "policy": policy,
            "cnr": cnr, "pods": pods_on_node, "sockets": sockets, "zones": _zone_table(sockets), "entries": _placed_entries(placed, views),
            "allocatable": {n: z["allocatable"] for n, z in topology["numas"].items()}, "numa_ids": sorted(topology["numas"]),
            "most_available": most, "total_available": total, "resource_rows": rows, "scored": scored,
            "keys": frozenset(views.of(p).key for pods in placed.values() for p in pods),
            "bind_result_problems": bind_result_problems(pods_on_node, views),
            "state_key": _state_key(policy, cnr, topology, available, placed, existing, views)}


def _state_key(policy, cnr, topology, available, placed, existing, views):
    """Everything ``filter_pod`` and ``score_pod`` read from a view for a non-reclaimed pod that is not placed on
    the node, as one string: nodes with equal keys give such a pod the same verdict, candidates and score."""
    numas = [(n, topology["numas"][n]["socket"], sorted(topology["numas"][n]["allocatable"].items()), sorted(available[n].items()))
             for n in sorted(topology["numas"])]
    pods = []
    for numa, numa_pods in sorted(placed.items()):
        rows = []
        for other in numa_pods:
            view = views.of(other)
            anti = view.annotations.get(ANTI_AFFINITY_KEY)
            if anti is not None and not isinstance(anti, str):
                anti = json.dumps(anti, sort_keys=True, default=str)
            rows.append((_labels_key(view.labels), anti, view.numa_exclusive))
        pods.append((numa, sorted(rows, key=repr)))
    problems = sorted(set(problem for _numa, _key, _terms, problem in existing["anti"] if problem))
    # interned: nodes in one state hold the same string, so grouping them compares identities, not 2 KB of text
    return sys.intern(repr((policy, cnr is None, topology["policy"], numas, pods, problems)))


def _single_numa_fit_view(requests, view, exclusive, aligned):
    """``_single_numa_fit`` on the view's unchanged availability (its per-resource rows)."""
    fitting = None
    for name, value in requests.items():
        if value <= 0:
            continue
        rows = view["resource_rows"].get(name)
        if not rows:
            if name in NATIVE_RESOURCES or name in aligned:
                return set()
            continue
        strict = exclusive and name in aligned
        ok = {numa for numa, available, allocatable in rows if available >= value and not (strict and available != allocatable)}
        fitting = ok if fitting is None else fitting & ok
        if not fitting:
            return set()
    return set(view["numa_ids"]) if fitting is None else fitting


def _view(view, cnr, pods_on_node, policy):
    if view is not None and view["policy"] == policy:
        return view
    return node_view(cnr, pods_on_node, policy)


def _exceeds(requests, most_available):
    """A requested amount no NUMA node has available (so no single-NUMA fit exists)."""
    return any(value > 0 and name in most_available and value > most_available[name] for name, value in requests.items())


def _cannot_align(what, requests, view, aligned):
    """The Unschedulable reason: Katalyst's ``cannot align ...``, naming an aligned resource no NUMA zone reports."""
    missing = sorted(name for name, value in requests.items() if value > 0 and name in aligned and name not in view["resource_rows"])
    if missing:
        return "cannot align %s: no NUMA zone of the node reports %s" % (what, ", ".join(missing))
    return "cannot align %s" % what


def numa_resource_fit(pod, cnr, pods_on_node, policy=DYNAMIC, view=None, query=None, aligned_resources=DEFAULT_ALIGNED_RESOURCES):
    """NUMA fit of one pod on one node: ``{"fit": bool, "numas": [candidate NUMA ids] or None, "reason": str}``.

    ``numas`` is None when the pod or the node is not subject to NUMA fit (any NUMA will do). ``aligned_resources``:
    ``aligned_resource_names(...)`` of the scheduler's setting (Katalyst's ``alignedResources``).
    """
    aligned = aligned_resources
    query = _pod_query(query, pod, policy)
    if not query.supported or cnr is None:
        return {"fit": True, "numas": None, "reason": ""}
    view = _view(view, cnr, pods_on_node, policy)
    topology = view["topology"]
    topology_policy = topology["policy"]
    handlers = {NATIVE: (SINGLE_NUMA_CONTAINER, SINGLE_NUMA_POD), DYNAMIC: (SINGLE_NUMA_CONTAINER, NUMERIC_CONTAINER)}[policy]
    if topology_policy not in handlers or not topology["numas"]:
        return {"fit": True, "numas": None, "reason": ""}
    exclusive = policy == DYNAMIC and query.exclusive
    available, allocatable, numas = view["available"], view["allocatable"], view["numa_ids"]
    if topology_policy == NUMERIC_CONTAINER:
        requests = query.main_requests
        short = any(value > view["total_available"].get(name, 0) for name, value in requests.items() if name in aligned)
        mask = None if short else _numeric_fit(requests, available, allocatable, numas, view["sockets"], True, exclusive, aligned)
        if mask is None:
            return {"fit": False, "numas": [], "reason": _cannot_align("container", requests, view, aligned)}
        return {"fit": True, "numas": list(mask), "reason": ""}
    if topology_policy == SINGLE_NUMA_POD:
        requests = query.requests
        candidates = None if _exceeds(requests, view["most_available"]) else _single_numa_fit_view(requests, view, exclusive, aligned)
        if not candidates:
            return {"fit": False, "numas": [], "reason": _cannot_align("pod", requests, view, aligned)}
        return {"fit": True, "numas": sorted(candidates), "reason": ""}
    first = None
    containers = query.fit_containers
    for index, (name, requests) in enumerate(containers):
        if index == 0:
            candidates = None if _exceeds(requests, view["most_available"]) else _single_numa_fit_view(requests, view, exclusive, aligned)
        else:
            candidates = _single_numa_fit(requests, available, allocatable, numas, exclusive, aligned)
        if not candidates:
            return {"fit": False, "numas": [], "reason": _cannot_align("container %s" % name, requests, view, aligned)}
        if first is None:
            first = sorted(candidates)
        if index + 1 < len(containers):      # the next containers see what this one takes
            if available is view["available"]:
                available = {numa: dict(values) for numa, values in available.items()}
            chosen = min(candidates)
            for resource, value in requests.items():
                if resource in available[chosen]:
                    available[chosen][resource] = max(available[chosen][resource] - value, 0)
    return {"fit": True, "numas": first or numas, "reason": ""}


# -- QoS-aware fit of reclaimed resources (cluster §3.3) ------------------------------------------------
def reclaimed_resource_fit(pod, cnr, pods_on_node, view=None):
    """``QoSAwareNodeResourcesFit`` for reclaimed_cores pods: ``(fit, reason)``."""
    if _qos(pod_view(pod)) != RECLAIMED_CORES:
        return True, ""
    return _reclaimed_fit(pod_requests(pod), _reclaimed_free(view, cnr, pods_on_node))


def _reclaimed_free(view, cnr, pods_on_node):
    """Reclaimed allocatable of the node minus the requests of its active reclaimed pods (kept in ``view``)."""
    if view is not None and "reclaimed_free" in view:
        return view["reclaimed_free"]
    allocatable = reclaimed_from_cnr(cnr)["allocatable"] if cnr else {}
    used = {}
    for other in pods_on_node:
        other_view = pod_view(other)
        if other_view.active and _qos(other_view) == RECLAIMED_CORES:
            for name, value in pod_requests(other).items():
                used[name] = used.get(name, 0) + value
    free = {name: (allocatable[name].value() if name in allocatable else 0) - used.get(name, 0)
            for name in (RECLAIMED_MILLICPU, RECLAIMED_MEMORY)}
    if view is not None:
        view["reclaimed_free"] = free
    return free


def _reclaimed_fit(requests, free):
    for name in (RECLAIMED_MILLICPU, RECLAIMED_MEMORY):
        want = requests.get(name, 0)
        if want > 0 and want > free[name]:
            return False, "Insufficient %s" % name
    return True, ""


# -- NUMA-level inter-pod affinity (cluster §4.3) ---------------------------------------------------------
def _zone_table(sockets):
    """``{"numa": {numa: (numa,)}, "socket": {numa: NUMA ids of its socket}}``."""
    by_socket = {}
    for numa, socket in sorted(sockets.items()):
        by_socket.setdefault(socket, []).append(numa)
    return {"numa": {n: (n,) for n in sockets}, "socket": {n: tuple(by_socket[s]) for n, s in sockets.items()}}


def _zone(zones, zone, numa):
    found = zones[zone].get(numa)
    if found is None:      # a NUMA id the topology does not have (a stale numa_bind_result)
        return (numa,) if zone == "numa" else ()
    return found


def _placed_entries(placed, views=None):
    """``{numa: [(pod key, label set key, labels)]}`` of ``placed`` (``{numa: [pods]}``)."""
    views = _Views() if views is None else views
    return {numa: [(views.of(p).key, _labels_key(views.of(p).labels), views.of(p).labels) for p in pods] for numa, pods in placed.items()}


def _count_in_zone(query, selector, zone_numas, entries):
    memo, key = query.matches_of(selector), query.key
    count = 0
    for numa in zone_numas:
        for other_key, labels_key, labels in entries.get(numa, ()):
            if other_key != key:
                found = memo.get(labels_key)
                if found is None:
                    found = memo[labels_key] = selector.matches(labels)
                if found:
                    count += 1
    return count


def existing_pod_terms(placed, views=None):
    """What ``affinity_numas`` reads from the pods already placed (``{numa: [pods]}``), parsed once per node state:
    ``{"exclusive": {numa: {pod key}}, "anti": [(numa, pod key, required anti-affinity terms, problem or None)]}``."""
    views = _Views() if views is None else views
    exclusive, anti = {}, []
    for other_numa, pods in placed.items():
        for other in pods:
            view = views.of(other)
            if view.numa_exclusive:
                exclusive.setdefault(other_numa, set()).add(view.key)
            if view.anti_affinity_error is None:
                anti.append((other_numa, view.key, view.anti_affinity["required"], None))
            else:
                anti.append((other_numa, view.key, [], "%s: %s" % (view.key, view.anti_affinity_error)))
    return {"exclusive": exclusive, "anti": anti}


def affinity_numas(pod, placed, sockets, existing=None, query=None):
    """NUMA ids (of ``sockets``) where the pod's required terms and the existing pods' required anti-affinity hold.

    ``placed``: ``{numa: [pods]}``; ``sockets``: ``{numa: socket}``; ``existing``: ``existing_pod_terms(placed)``
    when the caller keeps it. Returns ``(set, problems)``; an existing pod with a malformed annotation is skipped
    (it is reported where it is scheduled). AffinityError when the pod's own annotation is malformed.
    """
    query = query if query is not None and query.pod is pod else PodQuery(pod)
    if query.microtopology[2] is not None:
        raise query.microtopology[2]
    if existing is None:
        existing = existing_pod_terms(placed)
    return _allowed_numas(query, _placed_entries(placed), sorted(sockets), existing, _zone_table(sockets))


def _allowed_numas(query, entries, numa_ids, existing, zones):
    affinity, anti, _error = query.microtopology
    key = query.key
    allowed = set(numa_ids)
    exclusive_numas = {n for n, keys in existing["exclusive"].items() if keys - {key}} if existing["exclusive"] else ()
    problems = []
    for numa in numa_ids:
        if numa in exclusive_numas and (affinity["required"] or anti["required"]):
            allowed.discard(numa)
            continue
        for term in anti["required"]:
            if _count_in_zone(query, term["selector"], _zone(zones, term["zone"], numa), entries):
                allowed.discard(numa)
                break
    for other_numa, other_key, terms, problem in existing["anti"]:
        if other_key == key:
            continue
        if problem:
            problems.append(problem)
        for term in terms:
            if query.match(term["selector"], query.labels_key, query.labels):
                allowed -= set(_zone(zones, term["zone"], other_numa))
    for term in affinity["required"]:
        selector = term["selector"]
        anywhere = any(other_key != key and query.match(selector, labels_key, labels)
                       for numa_entries in entries.values() for other_key, labels_key, labels in numa_entries)
        if not anywhere and selector.matches(query.labels):
            continue    # the first pod of a group may start it (Kubernetes semantics)
        allowed = {n for n in allowed if _count_in_zone(query, selector, _zone(zones, term["zone"], n), entries) > 0}
    return allowed, sorted(set(problems))


def preferred_affinity_score(pod, numa, placed, sockets, query=None):
    """Σ weight x matches of preferred affinity minus the same for preferred anti-affinity, on one NUMA."""
    query = query if query is not None and query.pod is pod else PodQuery(pod)
    if query.microtopology[2] is not None:
        raise query.microtopology[2]
    return _preferred_score(query, numa, _placed_entries(placed), _zone_table(sockets))


def _preferred_score(query, numa, entries, zones):
    affinity, anti, _error = query.microtopology
    score = 0
    for term in affinity["preferred"]:
        score += term["weight"] * _count_in_zone(query, term["selector"], _zone(zones, term["zone"], numa), entries)
    for term in anti["preferred"]:
        score -= term["weight"] * _count_in_zone(query, term["selector"], _zone(zones, term["zone"], numa), entries)
    return score


# -- extender entry points ----------------------------------------------------------------------------
def filter_pod(pod, node, cnr, pods_on_node, policy=DYNAMIC, view=None, query=None, aligned_resources=DEFAULT_ALIGNED_RESOURCES):
    """Does ``pod`` fit ``node``? ``{"fit": bool, "reason": str, "numas": [..] or None, "problems": [..]}``.

    ``problems`` are messages for Events (a malformed annotation of the pod makes it unschedulable).
    ``view``: ``node_view(cnr, pods_on_node, policy)`` and ``query``: ``PodQuery(pod, policy)`` when the caller keeps them;
    ``aligned_resources``: see ``numa_resource_fit``.
    """
    del node    # the node's own fit (taints, allocatable) is kube-scheduler's; kept for the extender signature
    query = _pod_query(query, pod, policy)
    if query.qos == RECLAIMED_CORES:
        ok, reason = _reclaimed_fit(query.requests, _reclaimed_free(view, cnr, pods_on_node))
        if not ok:
            return {"fit": False, "reason": reason, "numas": None, "problems": []}
    resource = numa_resource_fit(pod, cnr, pods_on_node, policy, view, query, aligned_resources)
    if not resource["fit"]:
        return {"fit": False, "reason": resource["reason"], "numas": [], "problems": []}
    if not query.binding:
        return {"fit": True, "reason": "", "numas": resource["numas"], "problems": []}
    affinity, anti, error = query.microtopology
    if error is not None:
        return {"fit": False, "reason": "invalid microtopology annotation: %s" % error, "numas": [], "problems": [str(error)]}
    view = _view(view, cnr, pods_on_node, policy)
    if not view["topology"]["numas"]:
        if affinity["required"] or anti["required"]:
            return {"fit": False, "reason": "failed to get Node Resource Topology from cache", "numas": [], "problems": []}
        return {"fit": True, "reason": "", "numas": resource["numas"], "problems": []}
    if query.exclusive and affinity["required"]:
        return {"fit": False, "reason": "a numa_exclusive pod cannot have required microtopology affinity", "numas": [],
                "problems": ["%s: numa_exclusive with required microtopology affinity" % query.key]}
    allowed, problems = _allowed_numas(query, view["entries"], view["numa_ids"], view["existing"], view["zones"])
    candidates = allowed if resource["numas"] is None else allowed & set(resource["numas"])
    if not candidates:
        return {"fit": False, "reason": UNSCHEDULABLE_AFFINITY, "numas": [], "problems": problems}
    return {"fit": True, "reason": "", "numas": sorted(candidates), "problems": problems}


def score_pod(pod, node, cnr, pods_on_node, policy=DYNAMIC, numas=None, view=None, query=None, aligned_resources=DEFAULT_ALIGNED_RESOURCES):
    """A raw score (higher is better): LeastAllocated (cpu, memory) on the best candidate NUMA x 100
    plus preferred microtopology terms x 10. Pods without NUMA handling score 0. ``aligned_resources``: for the
    filter run when ``numas`` (the filter's candidates) is not given.
    """
    del node
    query = _pod_query(query, pod, policy)
    if cnr is None or not query.supported:
        return 0.0
    view = _view(view, cnr, pods_on_node, policy)
    if not view["topology"]["numas"]:
        return 0.0
    if numas is None:
        numas = filter_pod(pod, None, cnr, pods_on_node, policy, view, query, aligned_resources)["numas"] or view["numa_ids"]
    requests = query.main_requests if policy == DYNAMIC else query.requests
    affinity, anti, error = query.microtopology
    preferred = error is None and bool(affinity["preferred"] or anti["preferred"])
    scored = view["scored"]
    best = None
    for numa in numas:
        parts = [max(available - requests.get(name, 0), 0) / allocatable for name, available, allocatable in scored[numa]]
        score = 100.0 * sum(parts) / len(parts) if parts else 0.0
        if preferred:
            score += 10.0 * _preferred_score(query, numa, view["entries"], view["zones"])
        best = score if best is None else max(best, score)
    return best or 0.0


def normalize_scores(raw):
    """``{node: raw}`` -> ``{node: 0..MAX_EXTENDER_PRIORITY}`` (ints, min-max over the nodes)."""
    if not raw:
        return {}
    scaled = score_scale(set(raw.values()))     # nodes in one state share a raw score: scale each value once
    return dict(zip(raw, map(scaled.__getitem__, raw.values())))


def score_scale(distinct):
    """``normalize_scores`` of each distinct raw score (a non-empty set): ``{raw: 0..MAX_EXTENDER_PRIORITY}``."""
    low, high = min(distinct), max(distinct)
    if high == low:
        return dict.fromkeys(distinct, 0)
    return {value: int(round((value - low) * MAX_EXTENDER_PRIORITY / (high - low))) for value in distinct}


# -- node side ----------------------------------------------------------------------------------------
def choose_numa_for_pod(pod, facts, pods_on_node):
    """Which NUMA node a ``dedicated_cores`` + ``numa_binding`` pod gets on this node.

    ``facts``: node facts (``nodeinfo.gather``); ``pods_on_node``: the node's pods (their
    ``numa_bind_result`` says where they are). Returns ``{"numa", "cpuset_cpus", "cpuset_mems",
    "annotations": {numa_bind_result: "<id>"}}``, or ``{"numa": None, "reason"}`` when no NUMA node fits.
    An existing ``numa_bind_result`` of the pod is kept. AffinityError for a malformed annotation.
    """
    numa_nodes = {n["id"]: n for n in facts.get("numa_nodes") or []}
    query = PodQuery(pod)
    if not query.binding:
        return {"numa": None, "reason": "not a dedicated_cores pod with numa_binding"}
    current = query.view.bind_result
    if current and len(current) == 1 and current[0] in numa_nodes:
        return _binding(numa_nodes[current[0]])
    sockets = {n: str(info.get("socket", 0)) for n, info in numa_nodes.items()}
    views = _Views()
    others = [p for p in pods_on_node if views.of(p).key != query.key and views.of(p).active]
    placed = {n: [] for n in numa_nodes}
    for other in others:
        for numa in views.of(other).bind_result or []:
            placed.setdefault(numa, []).append(other)
    allowed, _problems = affinity_numas(pod, placed, sockets, existing_pod_terms(placed, views), query)
    requests = query.requests
    fitting = []
    for numa in sorted(allowed):
        info = numa_nodes[numa]
        cpu_used = sum(pod_requests(p).get("cpu", 0) // max(len(views.of(p).bind_result or [1]), 1) for p in placed.get(numa, []))
        mem_used = sum(pod_requests(p).get("memory", 0) // max(len(views.of(p).bind_result or [1]), 1) for p in placed.get(numa, []))
        cpu_free = info.get("cpu_count", len(parse_cpu_list(info.get("cpus", "")))) * 1000 - cpu_used
        mem_free = info.get("memory_bytes", 0) - mem_used
        if query.exclusive and placed.get(numa):
            continue
        if any(views.of(p).numa_exclusive for p in placed.get(numa, [])):
            continue
        if requests.get("cpu", 0) > cpu_free or (info.get("memory_bytes") and requests.get("memory", 0) > mem_free):
            continue
        fitting.append((-(cpu_free - requests.get("cpu", 0)), numa))   # most free CPU left first, then lowest id
    if not fitting:
        return {"numa": None, "reason": "no NUMA node satisfies the pod's resources and microtopology rules"}
    entries, zones = _placed_entries(placed, views), _zone_table(sockets)
    scored = sorted(fitting, key=lambda item: (-_preferred_score(query, item[1], entries, zones), item[0], item[1]))
    return _binding(numa_nodes[scored[0][1]])


def _binding(info):
    return {"numa": info["id"], "cpuset_cpus": info.get("cpus", ""), "cpuset_mems": str(info["id"]),
            "annotations": {NUMA_BIND_RESULT_KEY: str(info["id"])}}
