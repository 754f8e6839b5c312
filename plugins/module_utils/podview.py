# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""One pod as the engines and daemons read it: ``pod_view(pod)`` interprets a pod (Kubernetes JSON) once.

A ``PodView`` holds everything the QoS, placement, cgroup, headroom, NUMA and eviction code reads from a pod: who it is
(with its priority and creation time), its QoS level and enhancement annotations (with the OOM priority they give), NUMA
binding and exclusivity, the microtopology (anti-)affinity terms, the ``numa_bind_result``, its containers with their
requests and limits, what the kubelet's cgroup paths are made of (Kubernetes QoS class, uid, container ids) and whether
it is active.

A malformed annotation does not raise here: the view holds what the callers fall back to (the default QoS level, no
NUMA flag, no bind result, no terms) and ``errors`` lists why, in the words of the parsers. Each annotation is read in
this module only; the text parsers stay with their topic (``qos``) or live here (microtopology terms). The keys that
only one topic reads (the eviction protections, ``numaids``) are looked up by that topic in ``annotations``, the read-only
map of them all: what they mean is its business (``numaids`` also needs the machine's NUMA nodes to judge them).

Annotation texts are parsed through caches keyed by the text (pods of one template repeat a few texts); views are not
cached by pod: callers change pods in place between reads (the agent writes ``numa_bind_result`` into its copy).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
from typing import Any, Mapping, Optional, Tuple

from .qos import (
    CPU_ENHANCEMENT_KEY, DEDICATED_CORES, DEFAULT_QOS_LEVEL, INVALID_LEVEL_OOM_PRIORITY, MEMORY_ENHANCEMENT_KEY, NUMA_BIND_RESULT_KEY,
    QoSError, enhanced_oom_priority, parse_enhancement, parse_numa_bind_result, resolve_qos_level,
)
from .quantity import parse_quantity
from .selectors import label_selector_from_dict

AFFINITY_KEY = "katalyst.kubewharf.io/microtopology_affinity"
ANTI_AFFINITY_KEY = "katalyst.kubewharf.io/microtopology_antiaffinity"
MAIN_CONTAINER_KEY = "kubernetes.io/main-container-name"
ZONES = ("numa", "socket")
TERMINAL_PHASES = ("Succeeded", "Failed")
GUARANTEED, BURSTABLE, BEST_EFFORT = "Guaranteed", "Burstable", "BestEffort"
_EMPTY = types.MappingProxyType({})


class AffinityError(ValueError):
    """A microtopology (anti-)affinity annotation that cannot be honoured."""


# -- quantities -----------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4096)
def _parsed_amount(resource, text):
    quantity = parse_quantity(text)
    return quantity.milli_value() if resource == "cpu" else quantity.value()


def amount(resource, value):
    """cpu in milli, everything else in base units; ValueError for a bad quantity (strings cached: specs repeat them)."""
    if isinstance(value, str):
        return _parsed_amount(resource, value)
    quantity = parse_quantity(str(value))
    return quantity.milli_value() if resource == "cpu" else quantity.value()


def effective_requests(containers, init_containers, overhead, amount_of=amount):
    """Kubernetes' pod requests: ``{resource: amount}``, max(sum of the containers, each init container) + overhead.

    ``containers`` and ``init_containers``: the request maps (quantities as written); ``amount_of(resource, value)``.
    """
    total = {}
    for requests in containers:
        for resource, value in requests.items():
            total[resource] = total.get(resource, 0) + amount_of(resource, value)
    for requests in init_containers:
        for resource, value in requests.items():
            total[resource] = max(total.get(resource, 0), amount_of(resource, value))
    for resource, value in overhead.items():
        total[resource] = total.get(resource, 0) + amount_of(resource, value)
    return total


# -- microtopology terms ----------------------------------------------------------------------------------
def _lower_keys(obj):
    return {str(k).lower(): v for k, v in obj.items()} if isinstance(obj, dict) else None


def _parse_term(term, where, preferred):
    fields = _lower_keys(term)
    if fields is None:
        raise AffinityError("%s must be an object, got %r" % (where, term))
    zone = fields.get("zone") or "numa"
    if not isinstance(zone, str) or zone.lower() not in ZONES:
        raise AffinityError("%s: unknown zone %r (numa or socket)" % (where, zone))
    selector = {}
    if fields.get("matchlabels") is not None:
        selector["matchLabels"] = fields["matchlabels"]
    if fields.get("matchexpressions") is not None:
        selector["matchExpressions"] = fields["matchexpressions"]
    if not selector.get("matchLabels") and not selector.get("matchExpressions"):
        raise AffinityError("%s: empty selector (matchLabels or matchExpressions is required)" % where)
    try:
        compiled = label_selector_from_dict(selector)
    except ValueError as exc:
        raise AffinityError("%s: %s" % (where, exc))
    weight = fields.get("weight", 1) if preferred else 1
    if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= 100:
        raise AffinityError("%s: weight %r must be an integer 1-100" % (where, weight))
    return {"selector": compiled, "zone": zone.lower(), "weight": weight}


def parse_microtopology(annotations, key):
    """``{"required": [term], "preferred": [term]}`` from one annotation; AffinityError when malformed (read-only result)."""
    text = (annotations or {}).get(key)
    if text is None:
        return {"required": [], "preferred": []}
    if not isinstance(text, str):
        return _parse_microtopology_text(key, text)
    return _cached_microtopology(key, text)


@functools.lru_cache(maxsize=4096)
def _cached_microtopology(key, text):
    return _parse_microtopology_text(key, text)


def _parse_microtopology_text(key, text):
    try:
        value = json.loads(text)
    except (TypeError, ValueError, RecursionError) as exc:    # RecursionError: nesting deeper than the decoder's stack
        raise AffinityError("%s is not valid JSON: %s" % (key, exc))
    fields = _lower_keys(value)
    if fields is None:
        raise AffinityError("%s must be a JSON object with required/preferred lists" % key)
    unknown = set(fields) - {"required", "preferred"}
    if unknown:
        raise AffinityError("%s: unknown field(s) %s" % (key, ", ".join(sorted(unknown))))
    out = {}
    for kind in ("required", "preferred"):
        terms = fields.get(kind) or []
        if not isinstance(terms, list):
            raise AffinityError("%s.%s must be a list" % (key, kind))
        out[kind] = [_parse_term(t, "%s.%s[%d]" % (key, kind, i), kind == "preferred") for i, t in enumerate(terms)]
    return out


def _terms_or_error(annotations, key):
    try:
        return parse_microtopology(annotations, key), None
    except AffinityError as exc:
        return None, exc


# -- other annotations -------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4096)
def _enhancement(key, text):
    values, problems = parse_enhancement({key: text}, key)
    return types.MappingProxyType(values), tuple(problems)


def _enhancement_of(annotations, key):
    """``(values, problems)`` of a JSON string-map annotation (``qos.parse_enhancement``), read-only."""
    text = annotations.get(key)
    if text is None:
        return _EMPTY, ()
    if not isinstance(text, str):      # the API only stores strings; a hand-made dict may hold anything
        return _EMPTY, ("%s must be a string holding a JSON object, got %s" % (key, type(text).__name__),)
    return _enhancement(key, text)


@functools.lru_cache(maxsize=4096)
def _parsed_bind_result(text):
    """``(NUMA ids or None, problem or None)`` of one annotation text (cached: the same few texts repeat)."""
    try:
        return parse_numa_bind_result(text), None
    except QoSError as exc:
        return None, str(exc)


def _bind_result_of(annotations):
    value = annotations.get(NUMA_BIND_RESULT_KEY)
    if value is None:
        return None, None
    if not isinstance(value, str):
        return None, "%s=%r must be a string of NUMA ids" % (NUMA_BIND_RESULT_KEY, value)
    return _parsed_bind_result(value)


# -- containers ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ContainerView:
    """One (init) container: its name and its requests and limits as written (quantity strings)."""

    name: Optional[str]
    requests: Mapping[str, Any]
    limits: Mapping[str, Any]

    @functools.cached_property
    def request_amounts(self):
        """``{resource: amount}`` of the requests (``amount``: cpu in milli); ValueError for a bad quantity."""
        return types.MappingProxyType({name: amount(name, value) for name, value in self.requests.items()})

    @property
    def memory_request_bytes(self):
        """The memory request (the limit when there is none) in bytes; 0 when absent or not a quantity."""
        value = self.requests.get("memory")
        if value is None:
            value = self.limits.get("memory")
        try:
            return parse_quantity(str(value)).value() if value is not None else 0
        except ValueError:
            return 0


def _container_view(container):
    resources = container.get("resources") or {}
    return ContainerView(container.get("name"), types.MappingProxyType(dict(resources.get("requests") or {})),
                         types.MappingProxyType(dict(resources.get("limits") or {})))


def _kubernetes_qos_class(reported, containers):
    """The Kubernetes QoS class: Guaranteed, Burstable or BestEffort (``status.qosClass`` when set)."""
    if reported:
        return reported
    any_set, guaranteed = False, bool(containers)
    for container in containers:
        requests, limits = container.requests, container.limits
        if requests or limits:
            any_set = True
        for name in ("cpu", "memory"):
            if name not in limits or str(requests.get(name, limits[name])) != str(limits[name]):
                guaranteed = False
    if not any_set:
        return BEST_EFFORT
    return GUARANTEED if guaranteed else BURSTABLE


# -- the view -----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PodView:
    """What the engines read from one pod (see the module docstring); build it with ``pod_view``."""

    name: Optional[str]
    namespace: Optional[str]
    uid: Optional[str]
    created: Optional[str]               # metadata.creationTimestamp as written
    node_name: Optional[str]
    priority: int                        # spec.priority, 0 when unset (corev1helpers.PodPriority)
    labels: Mapping[str, str]
    annotations: Mapping[str, str]       # every annotation as written (read-only), for the keys one topic reads
    phase: Optional[str]
    deleting: bool                       # metadata.deletionTimestamp is set
    container_running: bool              # some container status is in state running
    qos_level: str                       # DEFAULT_QOS_LEVEL when the annotation is invalid (qos_error)
    qos_error: Optional[str]
    memory_enhancement: Mapping[str, str]
    cpu_enhancement: Mapping[str, str]
    memory_enhancement_problems: Tuple[str, ...]
    cpu_enhancement_problems: Tuple[str, ...]
    numa_binding: bool                   # dedicated_cores with memory_enhancement numa_binding "true"
    numa_exclusive: bool                 # numa_binding and memory_enhancement numa_exclusive "true"
    oom_priority: int
    oom_priority_problem: Optional[str]
    affinity: Optional[Mapping[str, list]]          # {"required": [term], "preferred": [term]}; None when malformed
    anti_affinity: Optional[Mapping[str, list]]
    affinity_error: Optional[AffinityError]
    anti_affinity_error: Optional[AffinityError]
    bind_result: Optional[Tuple[int, ...]]          # sorted NUMA ids; None when absent or malformed
    bind_result_problem: Optional[str]
    main_container_name: Optional[str]              # the annotated main container when it exists, else the first one
    containers: Tuple[ContainerView, ...]
    init_containers: Tuple[ContainerView, ...]
    qos_class: str                                  # Kubernetes: Guaranteed, Burstable or BestEffort
    container_ids: Mapping[str, str]                # {container name: runtime id} of status.containerStatuses
    overhead: Mapping[str, Any]                     # spec.overhead as written
    errors: Tuple[str, ...]                         # every annotation problem above, for Events and logs

    @property
    def key(self):
        """``namespace/name`` (``default`` when the namespace is not set), as the scheduler names pods."""
        return "%s/%s" % (self.namespace or "default", self.name)

    @property
    def active(self):
        """Not Succeeded or Failed (the scheduler's view: its requests still count on the node)."""
        return self.phase not in TERMINAL_PHASES

    @property
    def pod_is_active(self):
        """Katalyst's ``PodIsActive``: not Succeeded or Failed, and not being deleted with no container running."""
        return self.active and (not self.deleting or self.container_running)

    @property
    def main_container(self):
        """The ``ContainerView`` of the main container, or None for a pod without containers."""
        for container in self.containers:
            if container.name == self.main_container_name:
                return container
        return None

    @functools.cached_property
    def requests(self):
        """The pod's effective requests (``effective_requests``: cpu in milli); ValueError for a bad quantity."""
        return types.MappingProxyType(effective_requests([c.requests for c in self.containers], [c.requests for c in self.init_containers],
                                                         self.overhead))

    @property
    def microtopology_error(self):
        """The AffinityError of the affinity annotation, else of the anti-affinity one, or None."""
        return self.affinity_error or self.anti_affinity_error


def _frozen(cls, **values):
    """``cls(**values)`` for a frozen dataclass without an ``__init__`` that sets each field through ``object.__setattr__``
    (a third of a view's cost); the instance is as frozen as one built the usual way."""
    instance = object.__new__(cls)
    instance.__dict__.update(values)
    return instance


def pod_view(pod):
    """The ``PodView`` of a pod dict (Kubernetes JSON)."""
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    annotations = meta.get("annotations") or {}
    try:
        level, qos_error = resolve_qos_level(annotations), None
    except QoSError as exc:
        level, qos_error = DEFAULT_QOS_LEVEL, str(exc)
    memory, memory_problems = _enhancement_of(annotations, MEMORY_ENHANCEMENT_KEY)
    cpu, cpu_problems = _enhancement_of(annotations, CPU_ENHANCEMENT_KEY)
    if qos_error is None:
        priority, priority_problem = enhanced_oom_priority(level, memory, memory_problems)
    else:
        priority, priority_problem = INVALID_LEVEL_OOM_PRIORITY, qos_error
    binding = qos_error is None and level == DEDICATED_CORES and memory.get("numa_binding") == "true"
    affinity, affinity_error = _terms_or_error(annotations, AFFINITY_KEY)
    anti_affinity, anti_affinity_error = _terms_or_error(annotations, ANTI_AFFINITY_KEY)
    bound, bind_problem = _bind_result_of(annotations)
    containers = tuple(_container_view(c) for c in spec.get("containers") or [])
    init_containers = tuple(_container_view(c) for c in spec.get("initContainers") or [])
    wanted = annotations.get(MAIN_CONTAINER_KEY)
    main = wanted if wanted and any(c.name == wanted for c in containers) else (containers[0].name if containers else None)
    ids = {}
    for container_status in status.get("containerStatuses") or []:
        raw = container_status.get("containerID") or ""
        if raw:
            ids[container_status["name"]] = raw.split("://", 1)[-1]
    errors = [qos_error] + list(memory_problems) + list(cpu_problems) + [bind_problem]
    errors += [str(error) for error in (affinity_error, anti_affinity_error) if error is not None]
    spec_priority = spec.get("priority")
    return _frozen(
        PodView, name=meta.get("name"), namespace=meta.get("namespace"), uid=meta.get("uid"), created=meta.get("creationTimestamp"),
        node_name=spec.get("nodeName"), priority=spec_priority if isinstance(spec_priority, int) else 0,
        labels=types.MappingProxyType(dict(meta.get("labels") or {})), annotations=types.MappingProxyType(dict(annotations)),
        phase=status.get("phase"),
        deleting=bool(meta.get("deletionTimestamp")),
        container_running=any("running" in (s.get("state") or {}) for s in status.get("containerStatuses") or []),
        qos_level=level, qos_error=qos_error, memory_enhancement=memory, cpu_enhancement=cpu,
        memory_enhancement_problems=memory_problems, cpu_enhancement_problems=cpu_problems,
        numa_binding=binding, numa_exclusive=binding and memory.get("numa_exclusive") == "true",
        oom_priority=priority, oom_priority_problem=priority_problem,
        affinity=affinity, anti_affinity=anti_affinity, affinity_error=affinity_error, anti_affinity_error=anti_affinity_error,
        bind_result=bound, bind_result_problem=bind_problem, main_container_name=main,
        containers=containers, init_containers=init_containers,
        qos_class=_kubernetes_qos_class(status.get("qosClass"), containers + init_containers),
        container_ids=types.MappingProxyType(ids), overhead=types.MappingProxyType(dict(spec.get("overhead") or {})),
        errors=tuple(error for error in errors if error))


def as_view(pod):
    """``pod`` when it is a ``PodView`` already, else its ``pod_view``: the pod-taking helpers accept both."""
    return pod if isinstance(pod, PodView) else pod_view(pod)
