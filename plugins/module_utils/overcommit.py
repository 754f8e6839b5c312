# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""Online overcommitment (cluster spec section 2): pure decisions, dicts in, dicts out.

* ratio validation exactly as katalyst's ``OvercommitRatioValidate`` (Go ``ParseFloat`` syntax);
* the NodeOvercommitConfig matcher and controller plan (node annotations, config status with
  conditions for conflicts, invalid ratios and refused decreases, Events on condition changes);
* the node ``nodes/status`` mutation of the webhook (``mutate_node``), which also keeps the true
  originals when an update passes already-amplified values through (given the stored object);
* the agent's realtime ratio and its CNR annotations;
* the scheduler's ``NodeOvercommitment`` filter.

Nothing here reads the clock, the network or the disk: callers pass those in.
"""

from __future__ import annotations

import copy
import functools
import math
import re

from .fit import is_active, pod_requests
from .podcgroups import qos_class
from .quantity import Quantity, multiply_resource_quantity, new_milli_quantity, new_quantity, parse_quantity

PREFIX = "katalyst.kubewharf.io/"
POOL_LABEL = PREFIX + "overcommit_node_pool"
RESOURCES = ("cpu", "memory")
RATIO_KEY = {res: PREFIX + "%s_overcommit_ratio" % res for res in RESOURCES}
REALTIME_RATIO_KEY = {res: PREFIX + "realtime_%s_overcommit_ratio" % res for res in RESOURCES}
ORIGINAL_CAPACITY_KEY = {res: PREFIX + "original_capacity_%s" % res for res in RESOURCES}
ORIGINAL_ALLOCATABLE_KEY = {res: PREFIX + "original_allocatable_%s" % res for res in RESOURCES}
OVERCOMMIT_CAPACITY_KEY = {res: PREFIX + "overcommit_capacity_%s" % res for res in RESOURCES}
OVERCOMMIT_ALLOCATABLE_KEY = {res: PREFIX + "overcommit_allocatable_%s" % res for res in RESOURCES}
# CNR annotations written by the agent
CNR_RATIO_KEY = RATIO_KEY
CNR_CPU_MANAGER_KEY = PREFIX + "overcommit_cpu_manager"
CNR_MEMORY_MANAGER_KEY = PREFIX + "overcommit_memory_manager"
CNR_GUARANTEED_CPUS_KEY = PREFIX + "guaranteed_cpus"

DEFAULT_RATIO = "1"
CPU_MANAGER_OFF = "none"
MEMORY_MANAGER_OFF = "None"
CPU_MANAGER_STATIC = "static"
MEMORY_MANAGER_STATIC = "Static"

NOC_API_VERSION = "overcommit.katalyst.kubewharf.io/v1alpha1"
NOC_KIND = "NodeOvercommitConfig"

# Go strconv.ParseFloat syntax (no underscores): decimal, hexadecimal with a p exponent, inf/infinity, nan.
_GO_DECIMAL = re.compile(r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$")
_GO_HEX = re.compile(r"^[+-]?0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)[pP][+-]?[0-9]+$")
_GO_INF = re.compile(r"^[+-]?(?:inf|infinity)$", re.IGNORECASE)
_GO_NAN = re.compile(r"^nan$", re.IGNORECASE)
_GO_INT = re.compile(r"^[+-]?[0-9]+$")

SUCCESS = "Success"
UNSCHEDULABLE = "Unschedulable"
ERROR = "Error"


# -- parsing ----------------------------------------------------------------------------------
def parse_go_float(text):
    """Go ``strconv.ParseFloat(text, 64)``: ValueError on bad syntax and on overflow (ErrRange)."""
    if not isinstance(text, str):
        raise ValueError("strconv.ParseFloat: parsing %r: invalid syntax" % (text,))
    if _GO_NAN.match(text):
        return float("nan")
    if _GO_INF.match(text):
        return float("-inf") if text.startswith("-") else float("inf")
    if _GO_DECIMAL.match(text):
        value = float(text)
    elif _GO_HEX.match(text):
        sign = -1.0 if text.startswith("-") else 1.0
        try:
            value = sign * float.fromhex(text.lstrip("+-"))
        except OverflowError:
            raise ValueError("strconv.ParseFloat: parsing %r: value out of range" % text)
    else:
        raise ValueError("strconv.ParseFloat: parsing %r: invalid syntax" % text)
    if math.isinf(value):
        raise ValueError("strconv.ParseFloat: parsing %r: value out of range" % text)
    return value


def parse_go_int(text):
    """Go ``strconv.Atoi`` (64-bit): ValueError on anything but an optionally signed decimal integer."""
    if not isinstance(text, str) or not _GO_INT.match(text):
        raise ValueError("strconv.Atoi: parsing %r: invalid syntax" % (text,))
    value = int(text)
    if not -(2 ** 63) <= value < 2 ** 63:
        raise ValueError("strconv.Atoi: parsing %r: value out of range" % text)
    return value


@functools.lru_cache(maxsize=4096)
def _parsed_quantity(text):
    """``parse_quantity``, remembered: nodes report the same few values over and over (every webhook review parses
    a dozen of them). Quantities are never modified in place, so sharing one is safe; junk is not remembered."""
    return parse_quantity(text)


_MEMO_SIZE = 4096
_texts = {}
_products = {}


def _memo_key(quantity, *rest):
    return (quantity.amount.numerator, quantity.amount.denominator, quantity.format) + rest


def _text(quantity):
    """``str(quantity)``, remembered (the webhook writes the same few values, eight per review)."""
    key = _memo_key(quantity)
    text = _texts.get(key)
    if text is None:
        text = str(quantity)
        if len(_texts) < _MEMO_SIZE:
            _texts[key] = text
    return text


def _multiplied(resource, quantity, ratio):
    """``multiply_resource_quantity``, remembered per (resource, quantity, ratio)."""
    key = _memo_key(quantity, resource, ratio)
    product = _products.get(key)
    if product is None:
        product = multiply_resource_quantity(resource, quantity, ratio)
        if len(_products) < _MEMO_SIZE:
            _products[key] = product
    return product


def _quantity(value):
    """A quantity from an object's field (strings, or numbers written by hand); ValueError on junk."""
    if isinstance(value, Quantity):
        return value
    if isinstance(value, bool) or value is None:
        raise ValueError("not a quantity: %r" % (value,))
    return _parsed_quantity(value if isinstance(value, str) else str(value))


def _status_quantity(node, field, resource):
    """``status.<field>.<resource>`` as a Quantity; a missing resource is the zero quantity (Go ``Cpu()``)."""
    value = ((node.get("status") or {}).get(field) or {}).get(resource)
    if value is None:
        return Quantity(0)
    return _quantity(value)


def _try_quantity(text):
    try:
        return _quantity(text)
    except ValueError:
        return None


# -- 2.3 ratio validation -----------------------------------------------------------------------
def validate_overcommit_ratio(annotations, set_key, realtime_key):
    """katalyst ``OvercommitRatioValidate``: the effective ratio from the set and realtime annotations.

    1.0 when ``set_key`` is absent; ValueError when its value does not parse (callers keep things
    unchanged); an unparsable realtime value counts as 0 (so the result is 1.0); below 1 -> 1.0.
    """
    annotations = annotations or {}
    if set_key not in annotations:
        return 1.0
    ratio = parse_go_float(annotations[set_key])
    if realtime_key in annotations:
        try:
            realtime = parse_go_float(annotations[realtime_key])
        except ValueError:
            realtime = 0.0
        if realtime < ratio:
            ratio = realtime
    if ratio < 1.0:
        return 1.0
    return ratio


def effective_ratio(annotations, resource):
    """validate_overcommit_ratio for ``cpu``/``memory`` with errors read as 1.0 (the controller's reading)."""
    try:
        return validate_overcommit_ratio(annotations, RATIO_KEY[resource], REALTIME_RATIO_KEY[resource])
    except ValueError:
        return 1.0


def check_ratio_value(text, maximum=None):
    """Strict validation for user input (configs, the module): a finite decimal >= 1 (and <= maximum).

    Returns the float; ValueError with a readable message otherwise.
    """
    try:
        value = parse_go_float(text if isinstance(text, str) else str(text))
    except ValueError:
        raise ValueError("%r is not a number" % (text,))
    if not math.isfinite(value):
        raise ValueError("%r is not a finite number" % (text,))
    if value < 1.0:
        raise ValueError("%r is below 1 (a ratio below 1 would shrink the node)" % (text,))
    if maximum is not None and value > float(maximum):
        raise ValueError("%r is above the maximum %s" % (text, maximum))
    return value


# -- 2.4 step 6 -----------------------------------------------------------------------------------
def guaranteed_cpus_from_cnr(cnr_annotations):
    """Whole CPUs held by cpuset-bound pods, from the CNR (0 unless the cpu manager is static)."""
    if not cnr_annotations:
        return 0
    if cnr_annotations.get(CNR_CPU_MANAGER_KEY) != CPU_MANAGER_STATIC:
        return 0
    if CNR_GUARANTEED_CPUS_KEY not in cnr_annotations:
        return 0
    try:
        return parse_go_int(cnr_annotations[CNR_GUARANTEED_CPUS_KEY])
    except ValueError:
        return 0


def overcommit_resource(resource, node_annotations, cnr_annotations, ratio):
    """katalyst ``nodeOvercommitResource``: (allocatable, capacity) strings after overcommit, or ("", "").

    ``(original - G) * ratio + G`` with G the guaranteed CPUs (cpu only, from the CNR annotations;
    ``cnr_annotations=None`` means no CNR). "" when an original annotation is missing or unparsable.
    """
    node_annotations = node_annotations or {}
    if ratio <= 1:
        ratio = 1.0
    if not math.isfinite(ratio):
        # Go would multiply by NaN/Inf and write garbage; we cannot compute a quantity from it.
        return "", ""
    original_allocatable = _try_quantity(node_annotations.get(ORIGINAL_ALLOCATABLE_KEY[resource]))
    original_capacity = _try_quantity(node_annotations.get(ORIGINAL_CAPACITY_KEY[resource]))
    if original_allocatable is None or original_capacity is None:
        return "", ""
    guaranteed = guaranteed_cpus_from_cnr(cnr_annotations) if resource == "cpu" else 0
    held = new_quantity(guaranteed)
    allocatable = multiply_resource_quantity(resource, original_allocatable - held, ratio) + held
    capacity = multiply_resource_quantity(resource, original_capacity - held, ratio) + held
    return str(allocatable), str(capacity)


# -- 2.5 the node webhook ------------------------------------------------------------------------
def _passed_through_originals(node, old_node, resource):
    """The true originals when ``node`` carries the stored (amplified) values unchanged, else None.

    A kubelet reports what it measured, which differs from the amplified values we stored; any other
    client that writes ``nodes/status`` passes the stored values through. Re-recording those as
    "original" would amplify twice, so we keep the originals recorded on the stored object.
    """
    if not old_node:
        return None
    old_annotations = (old_node.get("metadata") or {}).get("annotations") or {}
    old_original_allocatable = _try_quantity(old_annotations.get(ORIGINAL_ALLOCATABLE_KEY[resource]))
    old_original_capacity = _try_quantity(old_annotations.get(ORIGINAL_CAPACITY_KEY[resource]))
    if old_original_allocatable is None or old_original_capacity is None:
        return None
    try:
        incoming = (_status_quantity(node, "allocatable", resource), _status_quantity(node, "capacity", resource))
        stored = (_status_quantity(old_node, "allocatable", resource), _status_quantity(old_node, "capacity", resource))
    except ValueError:
        return None
    if incoming != stored:
        return None
    if stored == (old_original_allocatable, old_original_capacity):
        return None      # the stored values were never amplified: nothing to protect
    return old_original_allocatable, old_original_capacity


def mutate_node(node, operation, sub_resource, old_node=None):
    """katalyst ``WebhookNodeAllocatableMutator.MutateNode``: a new Node dict (the input is not modified;
    for ``UPDATE nodes/status`` the new dict shares the values it does not change with the input).

    Only ``UPDATE`` of ``nodes/status`` is mutated: ``original_*`` annotations record what the kubelet
    reported, then cpu and memory ``status.allocatable``/``status.capacity`` are replaced by the
    precomputed ``overcommit_*`` annotations, or by the reported values times the effective ratio.
    With ``old_node`` (the stored object), an update that passes the stored amplified values through
    keeps the true originals and is amplified from them (katalyst would amplify twice).
    Raises ValueError when a reported quantity does not parse.
    """
    if operation != "UPDATE" or sub_resource != "status":
        return copy.deepcopy(node)
    # copy-on-write: the dicts on the path of a change are new; untouched values are shared with ``node``
    mutated = dict(node)
    metadata = mutated["metadata"] = dict(node.get("metadata") or {})
    annotations = metadata["annotations"] = dict(metadata.get("annotations") or {})
    status = mutated["status"] = dict(node.get("status") or {})
    for field in ("allocatable", "capacity"):
        if isinstance(status.get(field), dict):
            status[field] = dict(status[field])
    bases = {}
    for resource in RESOURCES:
        kept = _passed_through_originals(node, old_node, resource)
        if kept is not None:
            bases[resource] = (kept[0], kept[1], True)
        else:
            bases[resource] = (_status_quantity(node, "allocatable", resource), _status_quantity(node, "capacity", resource), False)
    for resource in RESOURCES:
        annotations[ORIGINAL_CAPACITY_KEY[resource]] = _text(bases[resource][1])
        annotations[ORIGINAL_ALLOCATABLE_KEY[resource]] = _text(bases[resource][0])
    for resource in RESOURCES:
        base_allocatable, base_capacity, restored = bases[resource]
        new_allocatable = new_capacity = None
        if RATIO_KEY[resource] in annotations:
            new_capacity = _try_quantity(annotations.get(OVERCOMMIT_CAPACITY_KEY[resource]))
            new_allocatable = _try_quantity(annotations.get(OVERCOMMIT_ALLOCATABLE_KEY[resource]))
            if new_allocatable is None or new_capacity is None:
                new_allocatable = new_capacity = None
                try:
                    ratio = validate_overcommit_ratio(annotations, RATIO_KEY[resource], REALTIME_RATIO_KEY[resource])
                except ValueError:
                    ratio = 1.0
                if ratio > 1.0 and math.isfinite(ratio):
                    new_allocatable = _multiplied(resource, base_allocatable, ratio)
                    new_capacity = _multiplied(resource, base_capacity, ratio)
        if new_allocatable is None and restored:
            new_allocatable, new_capacity = base_allocatable, base_capacity
        if new_allocatable is not None and new_capacity is not None:
            status.setdefault("allocatable", {})[resource] = _text(new_allocatable)
            status.setdefault("capacity", {})[resource] = _text(new_capacity)
    return mutated


# -- 2.6 the agent's realtime ratio -------------------------------------------------------------
def realtime_overcommit_ratio(allocatable_milli, request_milli, usage_milli, target_load, estimated_load):
    """katalyst ``resourceMetricsToOvercommitRatio``: how far requests may grow while usage stays at target.

    ``ratio = ((alloc * target - usage) / load + request) / alloc`` with
    ``load = max(min(usage / request, 1), estimated_load)``; 1.0 when nothing is requested or the
    result is below 1. All amounts in milli units (cpu milli-cores, memory milli-bytes).
    """
    if request_milli == 0 or allocatable_milli == 0:
        return 1.0
    load = float(usage_milli) / float(request_milli)
    if load > 1:
        load = 1.0
    if load < estimated_load:
        load = float(estimated_load)
    if load <= 0:
        return 1.0     # only reachable with an estimated load <= 0, which the options refuse
    ratio = ((float(allocatable_milli) * target_load - usage_milli) / load + float(request_milli)) / float(allocatable_milli)
    if ratio < 1.0:
        return 1.0
    return ratio


def validate_realtime_options(cpu_target_load, memory_target_load, cpu_estimated_load, memory_estimated_load):
    """Every load strictly in (0, 1) (katalyst checks the memory target twice and never the cpu one)."""
    for name, value in (("cpu target load", cpu_target_load), ("memory target load", memory_target_load),
                        ("cpu estimated load", cpu_estimated_load), ("memory estimated load", memory_estimated_load)):
        if not 0.0 < float(value) < 1.0:
            raise ValueError("%s must be in (0, 1), got %r" % (name, value))


def node_realtime_ratio(node_annotations, realtime_ratio, resource):
    """katalyst ``GetOvercommitRatio`` for one resource: min(node set ratio (missing or unparsable -> 1), realtime).

    The node's ``<resource>_overcommit_ratio`` annotation bounds what the agent reports, so a node outside
    every overcommit pool (no annotation, or the controller's ``"1"``) reports 1. Compared as Go does
    (``realtime >= set`` keeps the set ratio), so a ``NaN`` set ratio reports the realtime one.
    """
    current = 1.0
    if RATIO_KEY[resource] in (node_annotations or {}):
        try:
            current = parse_go_float(node_annotations[RATIO_KEY[resource]])
        except ValueError:
            current = 1.0
    return current if realtime_ratio >= current else realtime_ratio


def reported_realtime_ratios(node_annotations, cpu_ratio, memory_ratio):
    """(cpu, memory) as the agent reports them on the CNR: each realtime ratio capped by the node's set ratio."""
    return (node_realtime_ratio(node_annotations, cpu_ratio, "cpu"),
            node_realtime_ratio(node_annotations, memory_ratio, "memory"))


def realtime_ratio_annotations(cpu_ratio, memory_ratio):
    """The CNR annotations the agent's reporter writes ("%.2f")."""
    return {CNR_RATIO_KEY["cpu"]: "%.2f" % cpu_ratio, CNR_RATIO_KEY["memory"]: "%.2f" % memory_ratio}


def _cpu_request(container):
    requests = (container.get("resources") or {}).get("requests") or {}
    return requests.get("cpu")


def pod_guaranteed_cpus(pod):
    """katalyst ``PodGuaranteedCPUs``: whole CPUs of a Guaranteed pod (max of init containers, sum of containers)."""
    if qos_class(pod) != "Guaranteed":
        return 0
    spec = pod.get("spec") or {}

    def whole(container):
        value = _cpu_request(container)
        if value is None:
            return None
        quantity = _quantity(value)
        return quantity.value() if quantity.value() * 1000 == quantity.milli_value() else 0

    by_init = 0
    for container in spec.get("initContainers") or []:
        cpus = whole(container)
        if cpus is not None and cpus > by_init:
            by_init = cpus
    by_app = 0
    for container in spec.get("containers") or []:
        cpus = whole(container)
        if cpus is not None:
            by_app += cpus
    return max(by_init, by_app)


def manager_annotations(cpu_manager_policy, memory_manager_policy, pods):
    """The CNR annotations of katalyst's overcommit reporter: manager policies and guaranteed CPUs."""
    cpu_policy = cpu_manager_policy or CPU_MANAGER_OFF
    memory_policy = memory_manager_policy or MEMORY_MANAGER_OFF
    guaranteed = 0 if cpu_policy == CPU_MANAGER_OFF else sum(pod_guaranteed_cpus(pod) for pod in pods or [])
    return {CNR_CPU_MANAGER_KEY: cpu_policy, CNR_MEMORY_MANAGER_KEY: memory_policy, CNR_GUARANTEED_CPUS_KEY: str(guaranteed)}


# -- 2.4 matcher and controller plan ---------------------------------------------------------------
def _name(obj):
    return (obj.get("metadata") or {}).get("name")


def _precedence(config):
    """Sort key: newest creationTimestamp first, then name ascending."""
    stamp = (config.get("metadata") or {}).get("creationTimestamp") or ""
    return (_negate_text(stamp), _name(config) or "")


def _negate_text(text):
    # descending order of RFC 3339 timestamps, as a key usable together with an ascending name
    return tuple(-ord(char) for char in text) + (1,)


def match_configs(configs, nodes):
    """The katalyst matcher with a deterministic tie-break.

    Returns ``(config_nodes, node_config, conflicts)``: config name -> sorted matched node names
    (every config sharing a selector value lists the node), node name -> winning config (newest
    creationTimestamp, ties by name) or None, selector value -> config names in precedence order
    (only where more than one config shares the value).
    """
    by_value = {}
    for config in configs:
        value = (config.get("spec") or {}).get("nodeOvercommitSelectorVal") or ""
        if value:
            by_value.setdefault(value, []).append(config)
    for value in by_value:
        by_value[value].sort(key=_precedence)
    config_nodes = {_name(config): [] for config in configs}
    node_config = {}
    for node in nodes:
        name = _name(node)
        value = ((node.get("metadata") or {}).get("labels") or {}).get(POOL_LABEL)
        candidates = by_value.get(value) if value else None
        node_config[name] = candidates[0] if candidates else None
        for config in candidates or []:
            config_nodes[_name(config)].append(name)
    for name in config_nodes:
        config_nodes[name].sort()
    conflicts = {value: [_name(c) for c in group] for value, group in by_value.items() if len(group) > 1}
    return config_nodes, node_config, conflicts


def config_ratio_problems(config):
    """Messages for every cpu/memory ratio of the config that is not a finite number >= 1."""
    problems = []
    ratios = (config.get("spec") or {}).get("resourceOvercommitRatio") or {}
    for resource in RESOURCES:
        if resource in ratios:
            try:
                check_ratio_value(ratios[resource])
            except ValueError as exc:
                problems.append("%s ratio %s" % (resource, exc))
    return problems


def desired_node_annotations(node, config, cnr, keep_ratios=False):
    """katalyst ``setNodeOvercommitAnnotations``: the node's annotations after the controller's pass.

    ``config`` is the matched config or None; ``cnr`` the node's CNR or None (missing);
    ``keep_ratios`` keeps the node's current ratio annotations (invalid config, refused decrease).
    """
    current = (node.get("metadata") or {}).get("annotations") or {}
    annotations = dict(current)
    ratios = ((config or {}).get("spec") or {}).get("resourceOvercommitRatio") or {}
    for resource in RESOURCES:
        if keep_ratios:
            annotations[RATIO_KEY[resource]] = current.get(RATIO_KEY[resource], DEFAULT_RATIO)
        else:
            annotations[RATIO_KEY[resource]] = ratios[resource] if resource in ratios else DEFAULT_RATIO
    cnr_annotations = None
    if cnr is not None:
        cnr_annotations = (cnr.get("metadata") or {}).get("annotations") or {}
        for resource in RESOURCES:
            if cnr_annotations and CNR_RATIO_KEY[resource] in cnr_annotations:
                annotations[REALTIME_RATIO_KEY[resource]] = cnr_annotations[CNR_RATIO_KEY[resource]]
            else:
                annotations.pop(REALTIME_RATIO_KEY[resource], None)
    for resource in RESOURCES:
        allocatable, capacity = overcommit_resource(resource, annotations, cnr_annotations, effective_ratio(annotations, resource))
        if allocatable == "":
            annotations.pop(OVERCOMMIT_ALLOCATABLE_KEY[resource], None)
            annotations.pop(OVERCOMMIT_CAPACITY_KEY[resource], None)
        else:
            annotations[OVERCOMMIT_ALLOCATABLE_KEY[resource]] = allocatable
            annotations[OVERCOMMIT_CAPACITY_KEY[resource]] = capacity
    return annotations


def annotation_patch(current, desired):
    """A merge patch of ``metadata.annotations`` (removed keys -> None); {} when nothing differs."""
    patch = {key: value for key, value in desired.items() if current.get(key) != value}
    patch.update({key: None for key in current if key not in desired})
    return patch


def _resulting_allocatable(node, annotations, cnr, resource):
    """What the webhook would make of the node's allocatable with ``annotations`` (a Quantity)."""
    cnr_annotations = None if cnr is None else ((cnr.get("metadata") or {}).get("annotations") or {})
    allocatable, _capacity = overcommit_resource(resource, annotations, cnr_annotations, effective_ratio(annotations, resource))
    if allocatable:
        return parse_quantity(allocatable)
    base = _try_quantity(annotations.get(ORIGINAL_ALLOCATABLE_KEY[resource]))
    if base is None:
        base = _try_quantity(((node.get("status") or {}).get("allocatable") or {}).get(resource)) or Quantity(0)
    ratio = effective_ratio(annotations, resource)
    if ratio > 1.0 and math.isfinite(ratio):
        return multiply_resource_quantity(resource, base, ratio)
    return base


def _amount(resource, quantity):
    return quantity.milli_value() if resource == "cpu" else quantity.value()


def _format_amount(resource, amount):
    return str(new_milli_quantity(amount)) if resource == "cpu" else str(new_quantity(amount))


def decrease_violations(node, current_annotations, desired_annotations, cnr, requested):
    """Resources whose ratio decreases and whose new allocatable falls below the requests on the node.

    Returns ``{resource: (new allocatable, requested)}`` as quantity strings.
    """
    violations = {}
    for resource in RESOURCES:
        try:
            before = parse_go_float(current_annotations.get(RATIO_KEY[resource], DEFAULT_RATIO))
        except ValueError:
            continue
        try:
            after = parse_go_float(desired_annotations.get(RATIO_KEY[resource], DEFAULT_RATIO))
        except ValueError:
            continue
        if after >= before:
            continue
        new_allocatable = _amount(resource, _resulting_allocatable(node, desired_annotations, cnr, resource))
        if new_allocatable < requested.get(resource, 0):
            violations[resource] = (_format_amount(resource, new_allocatable), _format_amount(resource, requested.get(resource, 0)))
    return violations


def node_requests(pods):
    """{node name: {resource: requested amount (cpu milli, others base units)}} over active bound pods."""
    totals = {}
    for pod in pods or []:
        node_name = (pod.get("spec") or {}).get("nodeName")
        if not node_name or not is_active(pod):
            continue
        into = totals.setdefault(node_name, {})
        for resource, amount in pod_requests(pod).items():
            into[resource] = into.get(resource, 0) + amount
    return totals


def _condition(existing, cond_type, status, reason, message, generation, now):
    previous = next((c for c in existing if c.get("type") == cond_type), None)
    stamp = previous.get("lastTransitionTime") if previous and previous.get("status") == status else None
    condition = {"type": cond_type, "status": status, "reason": reason, "message": message,
                 "lastTransitionTime": stamp or now}
    if generation is not None:
        condition["observedGeneration"] = generation
    return condition


class OvercommitPlan:
    """What the controller should write: node annotation patches, config statuses and Events."""

    def __init__(self):
        self.node_patches = {}       # node name -> {annotation: value or None}
        self.config_status = {}      # config name -> desired status
        self.status_changed = {}     # config name -> bool
        self.events = []             # {"object": obj, "type", "reason", "message"}
        self.node_config = {}        # node name -> winning config name or None
        self.refused = {}            # node name -> {resource: (new allocatable, requested)}

    def as_dict(self):
        return {"node_patches": self.node_patches, "config_status": self.config_status, "events": self.events,
                "node_config": self.node_config, "refused": self.refused}


def _version(obj, fingerprint):
    """What identifies this state of ``obj``: its resourceVersion (every change bumps it), else ``fingerprint(obj)``."""
    if obj is None:
        return None
    version = (obj.get("metadata") or {}).get("resourceVersion")
    return ("rv", version) if version else ("fp", fingerprint(obj))


def node_inputs_fingerprint(node):
    """The node fields the plan reads: the pool label, the annotations and ``status.allocatable``."""
    meta = node.get("metadata") or {}
    return ((meta.get("labels") or {}).get(POOL_LABEL), tuple(sorted((meta.get("annotations") or {}).items())),
            tuple(sorted(((node.get("status") or {}).get("allocatable") or {}).items())))


def _cnr_fingerprint(cnr):
    return tuple(sorted(((cnr.get("metadata") or {}).get("annotations") or {}).items()))


def _configs_key(configs):
    return tuple(sorted(repr((_name(c), (c.get("metadata") or {}).get("creationTimestamp"), c.get("spec"))) for c in configs))


def node_plan_key(node, cnr, requested):
    """The inputs of one node's decision (with the configs, which ``plan_node_overcommit``'s memo keys apart)."""
    return (_version(node, node_inputs_fingerprint), _version(cnr, _cnr_fingerprint), tuple(sorted(requested.items())))


def _plan_node(node, config, cnr, requested, problems):
    """One node's decision: ``(violations or None, annotation patch or None)``."""
    current = (node.get("metadata") or {}).get("annotations") or {}
    keep = bool(config is not None and problems.get(_name(config)))
    desired = desired_node_annotations(node, config, cnr, keep_ratios=keep)
    violations = None
    if config is not None and not keep and not (config.get("spec") or {}).get("force"):
        violations = decrease_violations(node, current, desired, cnr, requested) or None
        if violations:
            desired = desired_node_annotations(node, config, cnr, keep_ratios=True)
    return violations, annotation_patch(current, desired) or None


def plan_node_overcommit(configs, nodes, cnrs, pods, now="1970-01-01T00:00:00Z", memo=None):
    """The NodeOvercommitConfig controller's whole decision, for every node and config.

    * node annotations as katalyst writes them (ratios, realtime copies, precomputed ``overcommit_*``);
    * configs whose ratios are not finite numbers >= 1 change nothing (nodes keep their ratios);
    * the decrease guard: a ratio decrease that would put a node's allocatable below the requests
      already on it is not applied to that node unless ``spec.force`` is true;
    * config status: ``matchedNodeList`` sorted, ``observedGeneration``, conditions ``Conflict``,
      ``InvalidRatio``, ``DecreaseRefused`` (``lastTransitionTime`` kept while the status holds);
    * Events for conditions that turn True or change message.
    ``cnrs`` is a list of CNR objects (or a dict by name); ``now`` is the RFC 3339 time for new conditions.
    ``memo``: a dict kept by the caller between passes; a node whose inputs (``node_plan_key``: its resourceVersion,
    its CNR's, the requests on it) and the configs are those of the last pass keeps the last pass's decision
    without computing it again (``memo["planned"]`` counts the nodes computed this pass).
    """
    plan = OvercommitPlan()
    cnr_by_name = cnrs if isinstance(cnrs, dict) else {_name(cnr): cnr for cnr in cnrs or []}
    config_nodes, node_config, conflicts = match_configs(configs, nodes)
    requests = node_requests(pods)
    problems = {_name(config): config_ratio_problems(config) for config in configs}
    refused_by_config = {}
    decided, seen = None, set()
    if memo is not None:
        configs_key = _configs_key(configs)
        if memo.get("configs") != configs_key:
            memo.clear()
            memo["configs"] = configs_key
        decided = memo.setdefault("nodes", {})
        memo["planned"] = 0
    for node in nodes:
        name = _name(node)
        config = node_config.get(name)
        plan.node_config[name] = _name(config) if config else None
        cnr = cnr_by_name.get(name)
        requested = requests.get(name, {})
        if decided is None:
            violations, patch = _plan_node(node, config, cnr, requested, problems)
        else:
            seen.add(name)
            key = node_plan_key(node, cnr, requested)
            entry = decided.get(name)
            if entry is not None and key in entry[0]:
                violations, patch = entry[1]
            else:
                violations, patch = _plan_node(node, config, cnr, requested, problems)
                decided[name] = ((key,), (violations, patch))
                memo["planned"] += 1
        if violations:
            plan.refused[name] = violations
            refused_by_config.setdefault(_name(config), {})[name] = violations
        if patch:
            plan.node_patches[name] = patch
    if decided is not None:
        for name in [name for name in decided if name not in seen]:
            del decided[name]
    for config in configs:
        _plan_config_status(plan, config, config_nodes, conflicts, problems, refused_by_config, now)
    return plan


def record_patched(memo, node, patch, written):
    """After ``patch`` (a plan's annotation patch of ``node``) succeeded: the node as the cache still shows it and as
    the API returned it (``written``, when its inputs are the node's with the patch applied and nothing else) need no
    patch, so the next passes neither compute nor send it again before the watch delivers the write."""
    entry = (memo or {}).get("nodes", {}).get(_name(node))
    if entry is None:
        return
    keys = entry[0][:1]
    if written and (written.get("metadata") or {}).get("resourceVersion"):
        meta = dict(node.get("metadata") or {})
        meta["annotations"] = {key: value for key, value in dict(meta.get("annotations") or {}, **patch).items() if value is not None}
        if node_inputs_fingerprint(written) == node_inputs_fingerprint(dict(node, metadata=meta)):
            keys += ((_version(written, node_inputs_fingerprint),) + keys[0][1:],)
    memo["nodes"][_name(node)] = (keys, (entry[1][0], None))


def _plan_config_status(plan, config, config_nodes, conflicts, problems, refused_by_config, now):
    name = _name(config)
    meta = config.get("metadata") or {}
    generation = meta.get("generation")
    old_status = config.get("status") or {}
    existing = old_status.get("conditions") or []
    value = (config.get("spec") or {}).get("nodeOvercommitSelectorVal") or ""
    rivals = conflicts.get(value) or []
    conditions = []
    if name in rivals:
        winner = rivals[0]
        others = ", ".join(r for r in rivals if r != name)
        if winner == name:
            message = "selector value %r is also used by %s; this config is the newest and applies" % (value, others)
        else:
            message = "selector value %r is also used by %s; the newest config %s applies, this one does not" % (value, others, winner)
        conditions.append(_condition(existing, "Conflict", "True", "SelectorConflict", message, generation, now))
    else:
        conditions.append(_condition(existing, "Conflict", "False", "NoConflict", "", generation, now))
    if problems.get(name):
        conditions.append(_condition(existing, "InvalidRatio", "True", "InvalidRatio",
                                     "; ".join(problems[name]) + "; nodes keep their current ratios", generation, now))
    else:
        conditions.append(_condition(existing, "InvalidRatio", "False", "ValidRatio", "", generation, now))
    refused = refused_by_config.get(name) or {}
    if refused:
        parts = []
        for node_name in sorted(refused):
            for resource, (allocatable, requested) in sorted(refused[node_name].items()):
                parts.append("%s: %s allocatable would be %s, below the %s requested" % (node_name, resource, allocatable, requested))
        message = "ratio decrease not applied (set spec.force: true to override): " + "; ".join(parts)
        conditions.append(_condition(existing, "DecreaseRefused", "True", "RequestsExceedAllocatable", message[:32768], generation, now))
    else:
        conditions.append(_condition(existing, "DecreaseRefused", "False", "NoDecreaseRefused", "", generation, now))
    status = dict(old_status)
    status["matchedNodeList"] = list(config_nodes.get(name) or [])
    status["conditions"] = conditions
    if generation is not None:
        status["observedGeneration"] = generation
    plan.config_status[name] = status
    plan.status_changed[name] = status != old_status
    previous = {c.get("type"): c for c in existing}
    for condition in conditions:
        before = previous.get(condition["type"]) or {}
        if condition["status"] == "True" and (before.get("status") != "True" or before.get("message") != condition["message"]):
            plan.events.append({"object": {"apiVersion": NOC_API_VERSION, "kind": NOC_KIND, "metadata": meta},
                                "type": "Warning", "reason": condition["reason"], "message": condition["message"]})
        elif condition["status"] == "False" and before.get("status") == "True":
            plan.events.append({"object": {"apiVersion": NOC_API_VERSION, "kind": NOC_KIND, "metadata": meta},
                                "type": "Normal", "reason": "%sResolved" % condition["type"], "message": "%s resolved" % condition["type"]})


# -- 2.7 the scheduler filter ----------------------------------------------------------------------
def pod_filter_state(pod):
    """katalyst ``computePodResourceRequest`` (PreFilter): guaranteed CPUs, else the requested milli-CPU."""
    guaranteed = pod_guaranteed_cpus(pod)
    if guaranteed > 0:
        return {"guaranteed_cpus": guaranteed, "milli_cpu": 0}
    return {"guaranteed_cpus": 0, "milli_cpu": pod_requests(pod).get("cpu", 0)}


def node_filter_state(cnr, node_pods):
    """The plugin cache entry of one node from its CNR (or None) and the pods bound to it (None when unknown)."""
    active = [pod for pod in node_pods or [] if is_active(pod)]
    if cnr is None and not active:
        return None
    annotations = ((cnr or {}).get("metadata") or {}).get("annotations") or {}
    return {"cpu_manager": annotations.get(CNR_CPU_MANAGER_KEY) == CPU_MANAGER_STATIC,
            "memory_manager": annotations.get(CNR_MEMORY_MANAGER_KEY) == MEMORY_MANAGER_STATIC,
            "guaranteed_cpus": sum(pod_guaranteed_cpus(pod) for pod in active),
            "requested_milli_cpu": sum(pod_requests(pod).get("cpu", 0) for pod in active)}


RATIO_KEYS = frozenset(RATIO_KEY.values())


def overcommit_annotated(nodes):
    """For each node, does it carry a cpu or memory overcommit ratio? Without one, ``filter_node_overcommitment``
    answers Success for any pod on a node whose state is known (both ratios read 1.0), so a caller may skip it."""
    return [not RATIO_KEYS.isdisjoint((node.get("metadata") or {}).get("annotations") or ()) for node in nodes]


def filter_node_overcommitment(pod_state, node, node_state):
    """katalyst ``NodeOvercommitment.Filter``: (code, reason) with code Success, Unschedulable or Error."""
    if pod_state["guaranteed_cpus"] == 0 and pod_state["milli_cpu"] == 0:
        return SUCCESS, ""
    name = _name(node)
    if node_state is None:
        return ERROR, "GetNodeInfo %s from cache fail: node not found in cache" % name
    annotations = (node.get("metadata") or {}).get("annotations") or {}
    try:
        cpu_ratio = validate_overcommit_ratio(annotations, RATIO_KEY["cpu"], REALTIME_RATIO_KEY["cpu"])
        memory_ratio = validate_overcommit_ratio(annotations, RATIO_KEY["memory"], REALTIME_RATIO_KEY["memory"])
    except ValueError as exc:
        return ERROR, str(exc)
    if node_state["memory_manager"] and memory_ratio > 1.0:
        return UNSCHEDULABLE, "node %s memoryManager and memoryOvercommit both available" % name
    if node_state["cpu_manager"] and cpu_ratio > 1.0:
        try:
            if ORIGINAL_ALLOCATABLE_KEY["cpu"] in annotations:
                original = _quantity(annotations[ORIGINAL_ALLOCATABLE_KEY["cpu"]])
            else:
                original = _status_quantity(node, "allocatable", "cpu")
        except ValueError as exc:
            return ERROR, str(exc)
        held = new_quantity(node_state["guaranteed_cpus"])
        non_guaranteed_requested = node_state["requested_milli_cpu"] - held.milli_value()
        available = multiply_resource_quantity("cpu", original - held, cpu_ratio).milli_value()
        if pod_state["guaranteed_cpus"] > 0:
            if int(float(pod_state["guaranteed_cpus"]) * 1000.0 * cpu_ratio) > available - non_guaranteed_requested:
                return UNSCHEDULABLE, "node overcommitment insufficient cpu"
        elif pod_state["milli_cpu"] > available - non_guaranteed_requested:
            return UNSCHEDULABLE, "node overcommitment insufficient cpu"
    return SUCCESS, ""
