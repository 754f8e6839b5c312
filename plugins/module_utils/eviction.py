# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""Eviction manager engine: readings in, a plan of evictions out (node spec §5.3, §5.4, §6.2, §1.1-§1.2).

Pure functions and small state machines; no I/O. The agent loop reads the metrics (every
eviction-manager sync, 5 s by default, §6.2), calls these, and sends the plan to the Eviction API.

* §5.3 rootfs pressure: :func:`parse_threshold`, :func:`rootfs_threshold_met`, :func:`rootfs_top_eviction_pods`.
* §5.4 NUMA memory pressure: :func:`numa_watermarks`, :class:`NumaPressure`, :func:`numa_candidates`,
  :func:`rank_victims`, :func:`numa_eviction_plan`.
* §5.4 system memory pressure: :func:`system_memory_threshold`, :func:`system_memory_pressure_plan`,
  :class:`KswapdRateDetector`.
* §5.4 reclaimed-resource eviction: :func:`reclaimed_resource_threshold_met`, :func:`reclaimed_resource_plan`.
* Common: :func:`is_evictable` (protections), :class:`Eviction`, :class:`Plan`, :class:`Condition`,
  :class:`ConditionTracker` (condition transition period, §6.2), :class:`EvictionRateLimiter`.

Pods are dicts as the Kubernetes API returns them; per-pod readings are keyed by pod UID.
Whenever Katalyst iterates a Go map or uses ``sort.Sort`` (not stable), we use a deterministic order instead
(marked ``# Katalyst quirk:``).
"""

from __future__ import annotations

import math
import re
import struct
from collections import namedtuple
from dataclasses import dataclass

from .placement import pod_key
from .podview import as_view
from .qos import RECLAIMED_CORES, SYSTEM_CORES
from .quantity import parse_quantity

MI = 1 << 20
GI = 1 << 30
DEFAULT_PAGE_SIZE = 4096

# --- §6.2 defaults ----------------------------------------------------------------------------------------------
EVICTION_MANAGER_SYNC_PERIOD = 5            # --eviction-manager-sync-period
CONDITION_TRANSITION_PERIOD = 300           # --eviction-condition-transition-period (5m)

# --- plugin names, scopes, conditions (§5.3, §5.4) ---------------------------------------------------------------
PLUGIN_ROOTFS = "rootfs-pressure-eviction-plugin"
PLUGIN_NUMA_MEMORY = "numa-memory-pressure-eviction-plugin"
PLUGIN_SYSTEM_MEMORY = "system-memory-pressure-eviction-plugin"
PLUGIN_RECLAIMED_RESOURCES = "reclaimed-resource-pressure-eviction-plugin"
CONDITION_SYSTEM_ROOTFS = "SystemRootfs"
CONDITION_MEMORY_PRESSURE = "MemoryPressure"
# the node conditions the agent's eviction loop manages (daemons/node_conditions.py; the others on the node, and their
# taints, are not its business), with the reasons it writes each one with (in force, cleared)
MANAGED_CONDITIONS = (CONDITION_SYSTEM_ROOTFS, CONDITION_MEMORY_PRESSURE)
CONDITION_REASONS = {CONDITION_SYSTEM_ROOTFS: ("RootfsPressure", "NoRootfsPressure"),
                     CONDITION_MEMORY_PRESSURE: ("MemoryPressure", "NoMemoryPressure")}
# status condition types the kubelet owns and rewrites on each node status update: writing them would fight it, so these
# conditions are carried by their taint (and Events) only
KUBELET_CONDITIONS = ("Ready", "MemoryPressure", "DiskPressure", "PIDPressure", "NetworkUnavailable")
EFFECT_NO_SCHEDULE = "NoSchedule"
# Katalyst's eviction manager turns a node condition into the taint "<KatalystNodeDomainPrefix>/<condition>".
TAINT_KEY_PREFIX = "node.katalyst.kubewharf.io/"

# --- protections -------------------------------------------------------------------------------------------------
# Katalyst has no built-in do-not-evict annotation (only the configurable --eviction-skipped-annotation keys,
# default empty, matched on presence); neither the spec nor this repository names one, so we choose this key.
DO_NOT_EVICT_KEY = "katalyst.kubewharf.io/do-not-evict"
MIRROR_POD_KEY = "kubernetes.io/config.mirror"
CONFIG_SOURCE_KEY = "kubernetes.io/config.source"
SYSTEM_CRITICAL_PRIORITY = 2000000000       # kubelet scheduling.SystemCriticalPriority

# --- §5.4 NUMA / system memory defaults -----------------------------------------------------------------------------
MEM_LOW_RESERVED = 4 * GI                   # minimum allowed mem.low
MEM_GAP = 1 * GI                            # probe depth, added to min
MEM_GUARD = 256 * MI                        # buffer against kswapd ping-pong, added to low
MIN_DURATION = 2                            # counter above this may take the extra step
NUMA_T_NON_RECLAIMED = 12                   # NumaFreeBelowWatermarkTimesThreshold
NUMA_T_RECLAIMED = 6                        # NumaFreeBelowWatermarkTimesReclaimedThreshold
NUMA_FAST_EVICTION_WAIT_CYCLE = 1           # NumaFreeConstraintFastEvictionWaitCycle
NUMA_VICTIM_MIN_UTILIZATION = 0.001         # NumaVictimMinimumUtilizationThreshold
SYSTEM_FREE_MEMORY_THRESHOLD_MINIMUM = 0    # SystemFreeMemoryThresholdMinimum ("0Gi")
SYSTEM_KSWAPD_RATE_THRESHOLD = 2000         # pages/s
SYSTEM_KSWAPD_RATE_EXCEED_DURATION = 120    # seconds
MEMORY_RECLAIMED_GRACE_PERIOD = 1           # ReclaimedGracePeriod
MEMORY_GRACE_PERIOD = -1                    # GracePeriod (<= 0: the pod's own)

# --- §5.4 reclaimed-resource eviction defaults ------------------------------------------------------------------------
RECLAIMED_MILLICPU = "resource.katalyst.kubewharf.io/reclaimed_millicpu"
RECLAIMED_MEMORY = "resource.katalyst.kubewharf.io/reclaimed_memory"
RECLAIMED_EVICTION_THRESHOLDS = {RECLAIMED_MILLICPU: 5.0, RECLAIMED_MEMORY: 5.0}
RECLAIMED_DELETION_GRACE_PERIOD = 60

ACTION_NONE = "none"
ACTION_RECLAIMED_EVICTION = "reclaimed_eviction"
ACTION_EVICTION = "eviction"

_GO_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


# =================================================================================================================
# Records
# =================================================================================================================

Threshold = namedtuple("Threshold", ["quantity", "percentage"])
Threshold.__doc__ = """A Katalyst ThresholdValue: exactly one of ``quantity`` (int base units) or ``percentage`` (fraction)."""

Eviction = namedtuple("Eviction", ["pod_key", "namespace", "name", "uid", "plugin", "threshold", "reading",
                                   "reason_message", "grace_period_seconds"])
Eviction.__doc__ = """One pod to evict; ``reason_message`` names the threshold and the reading (for the Event).

``grace_period_seconds`` is None when the plugin leaves it to the pod's own terminationGracePeriodSeconds
(Katalyst only sets DeletionOptions when the configured grace period is > 0)."""

Condition = namedtuple("Condition", ["name", "effects"])
Condition.__doc__ = """A node condition a plugin wants met (``effects``: taint effects, e.g. ``("NoSchedule",)``)."""

Plan = namedtuple("Plan", ["evictions", "conditions"])
Plan.__doc__ = """What one sync wants: a tuple of :class:`Eviction` and a tuple of :class:`Condition`."""

RootfsMet = namedtuple("RootfsMet", ["free_met", "inodes_met"])
RootfsMet.__doc__ = """Result of :func:`rootfs_threshold_met`; ``any(result)`` means HARD_MET."""

ReclaimedMet = namedtuple("ReclaimedMet", ["resource", "used", "threshold_value", "allocatable", "rate"])


@dataclass(frozen=True)
class RootfsThresholds:
    """The ``eviction-rootfs-*`` dynamic configuration (§5.3); thresholds are :class:`Threshold` or None (unset).

    Flag defaults: everything unset, disabled, grace period 0 (the struct defaults 10Gi / -1 are overwritten by
    the flag defaults, as the spec notes).
    """

    enabled: bool = False
    minimum_free: Threshold = None
    minimum_inodes_free: Threshold = None
    pod_minimum_used: Threshold = None
    pod_minimum_inodes_used: Threshold = None
    reclaimed_pod_used_priority: Threshold = None
    reclaimed_pod_inodes_used_priority: Threshold = None
    minimum_disk_capacity: int = None       # bytes (a plain quantity, not a percentage)
    grace_period: int = 0

    @classmethod
    def from_strings(cls, enabled=False, grace_period=0, **texts):
        """Build from the flag strings; ``""``/None means unset, like the option's ``!= ""`` checks."""
        fields = {}
        for name, text in texts.items():
            if name == "minimum_disk_capacity":
                fields[name] = _parse_disk_capacity(text)
            elif name in cls.__dataclass_fields__:
                fields[name] = parse_threshold(text) if text not in (None, "") else None
            else:
                raise ValueError("unknown rootfs threshold %r" % name)
        return cls(enabled=enabled, grace_period=int(grace_period), **fields)


def _parse_disk_capacity(text):
    """MinimumImageFsDiskCapacityThreshold is parsed with ParseQuantity only and compared with ``Value()``."""
    if text in (None, ""):
        return None
    return parse_quantity(text).value()


# =================================================================================================================
# Threshold syntax (§5.3)
# =================================================================================================================

def _float32(value):
    """Round to IEEE-754 single precision: Katalyst stores the percentage as ``float32``."""
    return struct.unpack("f", struct.pack("f", value))[0]


def parse_threshold(text):
    """Katalyst ``ParseThresholdValue``: ``"10%"`` -> percentage 0.10, else a positive quantity.

    ``"0%"`` and ``"100%"`` mean unset (None) because they can never or always be met. The percentage is
    computed as ``float32(value) / 100`` in single precision, so the comparisons later see the same number
    as Katalyst (0.1 becomes 0.10000000149...). Raises ValueError naming the value on bad input.
    """
    if not isinstance(text, str):
        raise ValueError("eviction threshold must be a string, got %s %r" % (type(text).__name__, text))
    if text.endswith("%"):
        if text in ("0%", "100%"):
            return None
        number = text[:-1]
        # Katalyst quirk: strings.TrimRight strips every trailing "%" and ParseFloat also takes "inf"/"NaN"/hex;
        # we accept plain decimal numbers only.
        if not _GO_FLOAT.fullmatch(number):
            raise ValueError("invalid eviction percentage threshold %r" % text)
        try:
            value = _float32(float(number))
        except OverflowError:       # older Pythons refuse to pack a value beyond float32
            value = math.inf
        if math.isinf(value):       # Go: ParseFloat(s, 32) -> ErrRange
            raise ValueError("eviction percentage threshold out of range: %r" % text)
        percentage = _float32(value / 100)
        if percentage < 0:
            raise ValueError("eviction percentage threshold must be >= 0%%: %r" % text)
        # Katalyst quirk: Katalyst compares the fraction with 100 (so "150%" passes as 1.5); we refuse > 100%.
        if percentage > 1:
            raise ValueError("eviction percentage threshold must be <= 100%%: %r" % text)
        return Threshold(quantity=None, percentage=percentage)
    try:
        quantity = parse_quantity(text)
    except ValueError as exc:
        raise ValueError("invalid eviction threshold %r: %s" % (text, exc)) from None
    if quantity.amount <= 0:
        raise ValueError("eviction threshold must be positive: %r" % text)
    return Threshold(quantity=quantity.value(), percentage=None)


def describe_threshold(threshold):
    """Human form for messages: ``10%`` or the byte/inode count."""
    if threshold is None:
        return "unset"
    if threshold.quantity is not None:
        return str(threshold.quantity)
    return "%g%%" % round(threshold.percentage * 100, 4)


# =================================================================================================================
# Common: pods, protections, records
# =================================================================================================================

def _meta(pod):
    return (pod or {}).get("metadata") or {}


def pod_uid(pod):
    return _meta(pod).get("uid")


def pod_priority(pod):
    """``corev1helpers.PodPriority``: ``spec.priority``, 0 when unset."""
    return as_view(pod or {}).priority


def is_reclaimed(pod):
    """``CheckReclaimedQoSForPod``; an invalid qos_level is not reclaimed (Katalyst logs the error and says false)."""
    return as_view(pod).qos_level == RECLAIMED_CORES      # an invalid level reads as the default, shared_cores


def is_critical_pod(pod):
    """kubelet ``IsCriticalPod``: static pod, mirror pod, or priority >= system-critical (2e9).

    Katalyst's manager drops these before asking any plugin (``FilterOutSkipEvictionPods``). ``pod``: a pod or its PodView.
    """
    view = as_view(pod or {})
    if MIRROR_POD_KEY in view.annotations:
        return True
    source = view.annotations.get(CONFIG_SOURCE_KEY)
    if source is not None and source != "api":
        return True
    return view.priority >= SYSTEM_CRITICAL_PRIORITY


def is_evictable(pod, skipped_annotation_keys=(), skipped_label_keys=()):
    """Whether any plugin may pick this pod (or its PodView).

    Never: kubelet-critical pods (static/mirror/system-critical priority, as Katalyst), pods carrying one of the
    configured skip annotation or label keys (presence, as Katalyst's --eviction-skipped-annotation/-labels),
    pods annotated ``katalyst.kubewharf.io/do-not-evict: "true"`` (ours), and ``system_cores`` pods (ours:
    Katalyst would let the full-eviction path pick them; they are the node's own agents).
    DaemonSet pods are NOT protected: Katalyst does not exclude them either, and a reclaimed DaemonSet pod
    that overuses the node must be evictable (its controller recreates it).
    """
    if not pod:
        return False
    view = as_view(pod)
    annotations = view.annotations
    if is_critical_pod(view):
        return False
    if any(key in annotations for key in skipped_annotation_keys) or any(key in view.labels for key in skipped_label_keys):
        return False
    if str(annotations.get(DO_NOT_EVICT_KEY, "")).lower() == "true":
        return False
    # Katalyst quirk: Katalyst does not exclude system_cores pods (full eviction may pick them); we never do.
    # An invalid qos_level reads as the default, shared_cores: not reclaimed, not protected.
    return view.qos_level != SYSTEM_CORES


def evictable_pods(pods, skipped_annotation_keys=(), skipped_label_keys=()):
    """The pods :func:`is_evictable` allows, in their original order.

    Every plan builder below applies it (with no extra skip keys) to the pods it is given, like Katalyst's manager
    does before asking the plugins; filter first yourself to add configured skip keys.
    """
    return [pod for pod in pods or [] if is_evictable(pod, skipped_annotation_keys, skipped_label_keys)]


def make_eviction(pod, plugin, threshold, reading, reason, grace_period):
    """Build an :class:`Eviction`; a grace period <= 0 becomes None (the pod's own), like DeletionOptions."""
    view = as_view(pod)
    message = "%s: %s (threshold %s, reading %s)" % (plugin, reason, threshold, reading)
    grace = grace_period if grace_period is not None and grace_period > 0 else None
    return Eviction(pod_key=view.key, namespace=view.namespace or "default", name=view.name,
                    uid=view.uid, plugin=plugin, threshold=threshold, reading=reading,
                    reason_message=message, grace_period_seconds=grace)


def condition_taint(condition):
    """The node taints Katalyst derives from a node condition: ``node.katalyst.kubewharf.io/<name>``, one per effect."""
    seen = []
    for effect in condition.effects:
        if effect in ("NoSchedule", "PreferNoSchedule", "NoExecute") and effect not in seen:
            seen.append(effect)
    return [{"key": TAINT_KEY_PREFIX + condition.name, "effect": effect} for effect in seen]


def merge_plans(plans):
    """One plan from several plugins: first eviction per pod UID wins, conditions de-duplicated by name."""
    evictions, conditions, seen_uids, seen_conditions = [], [], set(), set()
    for plan in plans:
        for eviction in plan.evictions:
            if eviction.uid not in seen_uids:
                seen_uids.add(eviction.uid)
                evictions.append(eviction)
        for condition in plan.conditions:
            if condition.name not in seen_conditions:
                seen_conditions.add(condition.name)
                conditions.append(condition)
    return Plan(tuple(evictions), tuple(conditions))


# =================================================================================================================
# §5.3 rootfs pressure
# =================================================================================================================

def _free_met(readings, thresholds):
    """minimumFreeThresholdMet: available.rootfs.system vs capacity.rootfs.system."""
    threshold = thresholds.minimum_free
    if threshold is None:
        return False
    available, capacity = readings.get("available"), readings.get("capacity")
    if available is None or capacity is None:
        return False
    if thresholds.minimum_disk_capacity is not None and int(capacity) < thresholds.minimum_disk_capacity:
        return False        # a small disk is ignored by design
    if threshold.quantity is not None:
        return int(available) < threshold.quantity
    if available > capacity or capacity == 0:
        return False        # invalid metrics
    return available / capacity < threshold.percentage


def _inodes_met(readings, thresholds):
    """minimumInodesFreeThresholdMet: free.inodes.rootfs.system vs inodes.rootfs.system (no capacity rule)."""
    threshold = thresholds.minimum_inodes_free
    if threshold is None:
        return False
    free, total = readings.get("inodes_free"), readings.get("inodes")
    if free is None:
        return False
    if threshold.quantity is not None:
        return int(free) < threshold.quantity
    if total is None or free > total or total == 0:
        return False
    return free / total < threshold.percentage


def rootfs_threshold_met(readings, thresholds):
    """§5.3 ThresholdMet: whether free bytes or free inodes of the system rootfs are below the thresholds.

    ``readings``: ``{"available": bytes, "capacity": bytes, "inodes_free": n, "inodes": n}``; a missing
    (or expired) reading makes that half not met. Disabled -> NOT_MET.
    """
    if not thresholds.enabled:
        return RootfsMet(False, False)
    readings = readings or {}
    return RootfsMet(_free_met(readings, thresholds), _inodes_met(readings, thresholds))


def rootfs_conditions(met):
    """HARD_MET sets the node condition ``SystemRootfs`` with effect NoSchedule."""
    return (Condition(CONDITION_SYSTEM_ROOTFS, (EFFECT_NO_SCHEDULE,)),) if any(met) else ()


def _threshold_exceeded(used, pct, threshold):
    """reclaimedPodPriorityEvictionMet's comparison: strict ``>``."""
    if threshold is None:
        return False
    if threshold.quantity is not None:
        return used > threshold.quantity
    return pct > threshold.percentage


def _protected(used, pct, threshold):
    """podMinimumUsageProtectionMet: strict ``<`` keeps the pod."""
    if threshold is None:
        return False
    if threshold.quantity is not None:
        return used < threshold.quantity
    return pct < threshold.percentage


def rootfs_top_eviction_pods(pods, usage, capacity, thresholds, top_n, met):
    """§5.3 GetTopEvictionPods: which pods to evict for the last ThresholdMet result ``met``.

    ``usage``: ``{pod uid: {"used": bytes, "inodes_used": n}}`` (pod = sum of its containers), ``capacity``: the
    readings of :func:`rootfs_threshold_met`. Free-space pressure wins over inode pressure. A reclaimed_cores
    pod over the reclaimed-QoS priority threshold (strict >) goes first; other pods under the pod-minimum-used
    threshold are protected. Sorting and the cut to ``top_n`` only happen when there are more than ``top_n``.
    """
    if not thresholds.enabled:
        return Plan((), ())
    if met.free_met:
        metric, total_key, minimum, priority_threshold = "used", "capacity", thresholds.pod_minimum_used, thresholds.reclaimed_pod_used_priority
        free_name, free_threshold = "available.rootfs.system", thresholds.minimum_free
    elif met.inodes_met:
        metric, total_key, minimum = "inodes_used", "inodes", thresholds.pod_minimum_inodes_used
        priority_threshold = thresholds.reclaimed_pod_inodes_used_priority
        free_name, free_threshold = "free.inodes.rootfs.system", thresholds.minimum_inodes_free
    else:
        return Plan((), ())
    total = (capacity or {}).get(total_key)
    items = []
    for index, pod in enumerate(evictable_pods(pods)):
        used = ((usage or {}).get(pod_uid(pod)) or {}).get(metric)
        if used is None or total is None or total < 1:
            continue        # metric error: skip the pod
        used, cap = int(used), int(total)
        pct = used / cap
        priority = is_reclaimed(pod) and _threshold_exceeded(used, pct, priority_threshold)
        if not priority and _protected(used, pct, minimum):
            continue
        items.append((priority, used, index, pod))
    if len(items) > top_n:
        # Katalyst quirk: sort.Sort is not stable; we sort stably with the original position as tie-break.
        items.sort(key=lambda item: (not item[0], -item[1], item[2]))
        items = items[:top_n]
    free_reading = (capacity or {}).get("available" if metric == "used" else "inodes_free")
    threshold_text = "%s<%s" % (free_name, describe_threshold(free_threshold))
    evictions = []
    for item in items:
        priority, used, pod = item[0], item[1], item[3]
        if priority:
            reason = "rootfs pressure, reclaimed pod over priority threshold %s" % describe_threshold(priority_threshold)
        else:
            reason = "rootfs pressure, pod rootfs %s %d" % (metric, used)
        reading = "%s=%s, pod %s=%d of %d" % (free_name, free_reading, metric, used, int(total))
        evictions.append(make_eviction(pod, PLUGIN_ROOTFS, threshold_text, reading, reason, thresholds.grace_period))
    return Plan(tuple(evictions), rootfs_conditions(met))


# =================================================================================================================
# §5.4 NUMA memory pressure
# =================================================================================================================

def _pages(size, page_size):
    """``AlignToPageSize`` for the constant guards: whole pages."""
    return size // page_size


def bytes_to_pages(size, page_size=DEFAULT_PAGE_SIZE):
    """``general.ConvertBytesToPages``: ceiling division."""
    return (int(size) + page_size - 1) // page_size


def numa_watermarks(reading, page_size=DEFAULT_PAGE_SIZE):
    """``(free, min, low)`` in pages for one NUMA node, from /proc/zoneinfo or the metric fallback.

    ``reading``: ``{"zoneinfo": {"free", "min", "low", "inactive_file"} in pages, or None,
    "free": bytes, "total": bytes, "scale_factor": watermark_scale_factor}`` (mem.free.numa, mem.total.numa,
    mem.scale.factor.system). zoneinfo: ``low += 256MiB``, ``min += 1GiB``; if inactive file pages are below
    ``max(4GiB, low)`` then ``low = max(4GiB, low + 1GiB)`` (not enough page cache to reclaim, so start earlier).
    Fallback: ``free = ceil(free/page)``, ``low = ceil(int(total*wsf/10000)/page)``, ``min = 0``.
    Returns None when the fallback metrics are missing (Katalyst: error, NUMA skipped this round).
    """
    zone = reading.get("zoneinfo")
    if zone is not None:
        low = int(zone["low"]) + _pages(MEM_GUARD, page_size)
        min_ = int(zone["min"]) + _pages(MEM_GAP, page_size)
        reserve = _pages(MEM_LOW_RESERVED, page_size)
        if int(zone["inactive_file"]) < max(reserve, low):
            low = max(reserve, low + _pages(MEM_GAP, page_size))
        free = int(zone["free"])
        if low > 0:
            return free, min_, low
    free_bytes, total, factor = reading.get("free"), reading.get("total"), reading.get("scale_factor")
    if free_bytes is None or total is None or factor is None:
        return None
    return bytes_to_pages(free_bytes, page_size), 0, bytes_to_pages(int(total * factor / 10000), page_size)


class NumaPressure:
    """§5.4 per-NUMA counter of syncs spent below the low watermark, and the action it calls for.

    Why a counter: a short dip below ``low`` is kswapd's normal job; only a lasting one (``c > T_rec``) evicts
    reclaimed pods, and a longer one (``c >= T_non``) evicts any pod. Below ``min`` reclaimed pods go at once and
    the counter jumps to ``T_non - waitCycle`` so full eviction follows after ``waitCycle`` more bad syncs.
    Above ``low`` the counter cools down by one per sync and is capped at ``T_rec``.
    """

    def __init__(self, t_non=NUMA_T_NON_RECLAIMED, t_rec=NUMA_T_RECLAIMED, wait_cycle=NUMA_FAST_EVICTION_WAIT_CYCLE,
                 page_size=DEFAULT_PAGE_SIZE):
        self.t_non, self.t_rec, self.wait_cycle, self.page_size = t_non, t_rec, wait_cycle, page_size
        self.gap_pages = _pages(MEM_GAP, page_size)
        self.counters = {}
        self.watermarks = {}
        self.errors = []

    def _additional_pressure(self, free, min_, low):
        """Deep below low: count twice (Go integer ``(min+low)/2``)."""
        return free < (min_ + low) // 2 or (low > self.gap_pages and free < low - self.gap_pages)

    def step(self, numa_id, free, min_, low):
        """Advance one NUMA node's counter with watermarks in pages; return its action."""
        count = self.counters.get(numa_id, 0)
        action = ACTION_NONE
        if free < min_:
            action = ACTION_RECLAIMED_EVICTION
            if count < self.t_non:
                count = self.t_non - self.wait_cycle
        elif free < low:
            count += 1
            if count > MIN_DURATION and self._additional_pressure(free, min_, low):
                count += 1
            if count > self.t_rec:
                action = ACTION_RECLAIMED_EVICTION
        elif count > 0:
            count -= 1
            count = min(count, self.t_rec)
        if count >= self.t_non:
            action = ACTION_EVICTION
        self.counters[numa_id] = count
        return action

    def update(self, per_numa_readings):
        """One eviction sync: ``{numa id: reading}`` (see :func:`numa_watermarks`) -> ``{numa id: action}``.

        A NUMA node whose readings are missing gets ``none`` and keeps its counter (recorded in ``errors``).
        """
        actions, self.errors, self.watermarks = {}, [], {}
        for numa_id in sorted(per_numa_readings):
            self.counters.setdefault(numa_id, 0)
            marks = numa_watermarks(per_numa_readings[numa_id] or {}, self.page_size)
            if marks is None:
                self.errors.append("NUMA %s: no zoneinfo watermarks and no mem.free/total.numa metrics" % numa_id)
                actions[numa_id] = ACTION_NONE
                continue
            self.watermarks[numa_id] = marks
            actions[numa_id] = self.step(numa_id, *marks)
        return actions


def numa_candidates(pods, total, pod_usage, min_ratio=NUMA_VICTIM_MIN_UTILIZATION):
    """getCandidates: pods using at least ``min_ratio`` of the NUMA node's memory (tiny pods would free nothing).

    ``total``: mem.total.numa (bytes); ``pod_usage``: ``{uid: mem.total.numa.container summed for the pod}``.
    A pod without a reading, or a NUMA node without a positive total, gives no candidate.
    """
    if total is None or total <= 0:
        return []
    result = []
    for pod in pods or []:
        used = (pod_usage or {}).get(pod_uid(pod))
        if used is None or used / total < min_ratio:
            continue
        result.append(pod)
    return result


def _victim_rank(view, usage):
    """The sort key of ``rank_victims`` (one view per pod: it reads the QoS level, priority, uid and key)."""
    used = (usage or {}).get(view.uid)
    return (view.qos_level != RECLAIMED_CORES, view.priority, used is None, -(used or 0), view.key)


def rank_victims(pods, action, usage, top_n):
    """filterPods + the ranking ``qos.pod, priority.pod, <usage>``: reclaimed first, lower priority first,
    higher usage first; then the first ``top_n``. ``none`` selects nobody, reclaimed eviction only reclaimed pods.
    """
    if action == ACTION_RECLAIMED_EVICTION:
        pods = [pod for pod in pods if is_reclaimed(pod)]
    elif action != ACTION_EVICTION:
        return []
    # Katalyst quirk: MultiSorter uses sort.Sort (unstable); we add namespace/name as a deterministic last key.
    # A pod without a usage reading sorts after those with one (CmpBool(!found)).
    ordered = sorted(pods, key=lambda pod: _victim_rank(as_view(pod), usage))
    return ordered[:max(0, top_n)]


def numa_eviction_plan(pods, actions, numa_totals, pod_numa_usage, top_n, min_ratio=NUMA_VICTIM_MIN_UTILIZATION,
                       reclaimed_grace_period=MEMORY_RECLAIMED_GRACE_PERIOD, grace_period=MEMORY_GRACE_PERIOD,
                       watermarks=None):
    """§5.4 NUMA GetTopEvictionPods: up to ``top_n`` victims per NUMA node under pressure, union by UID.

    ``pod_numa_usage``: ``{numa id: {uid: bytes}}``. One grace period for the whole round: the non-reclaimed one
    as soon as any NUMA node asks for full eviction (Katalyst's TODO, kept).
    """
    if not any(action != ACTION_NONE for action in actions.values()):
        return Plan((), ())
    grace = grace_period if ACTION_EVICTION in actions.values() else reclaimed_grace_period
    chosen, seen = [], set()
    # Katalyst quirk: Go iterates the NUMA map in random order; we go by NUMA id.
    for numa_id in sorted(actions):
        usage = (pod_numa_usage or {}).get(numa_id) or {}
        candidates = numa_candidates(evictable_pods(pods), (numa_totals or {}).get(numa_id), usage, min_ratio)
        for pod in rank_victims(candidates, actions[numa_id], usage, top_n):
            if pod_uid(pod) in seen:
                continue
            seen.add(pod_uid(pod))
            marks = (watermarks or {}).get(numa_id)
            marks_text = "/".join(str(mark) for mark in marks) if marks else "?"
            reading = "NUMA %s free/min/low pages=%s, pod usage=%s of %s" % (
                numa_id, marks_text, usage.get(pod_uid(pod)), (numa_totals or {}).get(numa_id))
            chosen.append(make_eviction(pod, PLUGIN_NUMA_MEMORY, "free below NUMA low watermark for too long or below min",
                                        reading, "NUMA %s memory pressure, action %s" % (numa_id, actions[numa_id]), grace))
    return Plan(tuple(chosen), ())


# =================================================================================================================
# §5.4 system memory pressure
# =================================================================================================================

def system_memory_threshold(total, scale_factor, minimum=SYSTEM_FREE_MEMORY_THRESHOLD_MINIMUM):
    """``max(SystemFreeMemoryThresholdMinimum, total*wsf/10000)`` in bytes (float, as Katalyst)."""
    return max(float(minimum), total * scale_factor / 10000)


def system_memory_pressure(free, total, scale_factor, minimum=SYSTEM_FREE_MEMORY_THRESHOLD_MINIMUM):
    """Whether system free memory is below the kswapd-derived threshold (-> reclaimed eviction + MemoryPressure)."""
    return free < system_memory_threshold(total, scale_factor, minimum)


def system_memory_pressure_plan(pods, free, total, scale_factor, pod_usage, top_n, kswapd_pressure=False,
                                minimum=SYSTEM_FREE_MEMORY_THRESHOLD_MINIMUM,
                                reclaimed_grace_period=MEMORY_RECLAIMED_GRACE_PERIOD, grace_period=MEMORY_GRACE_PERIOD):
    """§5.4 system level: watermark pressure evicts reclaimed pods, sustained kswapd pressure any pod.

    ``pod_usage``: ``{uid: bytes}`` (mem.usage.container, or the NUMA usage of the NUMA node with the least
    free memory, already narrowed with :func:`numa_candidates` by the caller as Katalyst does).
    """
    threshold = system_memory_threshold(total, scale_factor, minimum)
    action = ACTION_NONE
    if free < threshold:
        action = ACTION_RECLAIMED_EVICTION
    if kswapd_pressure:
        action = ACTION_EVICTION
    if action == ACTION_NONE:
        return Plan((), ())
    grace = grace_period if action == ACTION_EVICTION else reclaimed_grace_period
    reading = "mem.free.system=%s, kswapd pressure=%s" % (free, kswapd_pressure)
    threshold_text = "mem.free.system<max(%s, %s*%s/10000)=%s" % (minimum, total, scale_factor, threshold)
    evictions = tuple(make_eviction(pod, PLUGIN_SYSTEM_MEMORY, threshold_text, reading, "system memory pressure, action %s" % action, grace)
                      for pod in rank_victims(evictable_pods(pods), action, pod_usage, top_n))
    return Plan(evictions, (Condition(CONDITION_MEMORY_PRESSURE, (EFFECT_NO_SCHEDULE,)),))


class KswapdRateDetector:
    """§5.4 kswapd steal rate: pressure once the rate stays >= 2000 pages/s for 120 s.

    Fed ``(mem.kswapdsteal.system, sample time)`` each sync. Why: a kswapd that keeps stealing that fast
    means the node is reclaiming all the time, which hurts latency even if free memory looks fine.
    Katalyst quirk: at the pinned commit ``detectSystemKswapdStealPressure`` is defined but not called by
    ``detectSystemPressures``; we provide it so the agent can decide to wire it.
    """

    def __init__(self, rate_threshold=SYSTEM_KSWAPD_RATE_THRESHOLD, duration_threshold=SYSTEM_KSWAPD_RATE_EXCEED_DURATION):
        self.rate_threshold, self.duration_threshold = rate_threshold, duration_threshold
        self.previous, self.previous_time, self.exceed_start = None, None, None

    def update(self, steal, timestamp):
        """Feed one sample (``steal`` None = metric error); return True when under pressure."""
        if steal is None:
            self.previous, self.previous_time = None, timestamp
            return False
        if timestamp == self.previous_time:
            return False        # same sample as last round: skip
        previous, previous_time = self.previous, self.previous_time
        self.previous, self.previous_time = steal, timestamp
        if previous is None:
            return False
        if (steal - previous) / (timestamp - previous_time) >= self.rate_threshold:
            if self.exceed_start is None:
                self.exceed_start = previous_time
        else:
            self.exceed_start = None
        return self.exceed_start is not None and int(timestamp - self.exceed_start) >= self.duration_threshold


# =================================================================================================================
# §5.4 reclaimed-resource eviction
# =================================================================================================================

def _add_requests(total, requests):
    for name, value in (requests or {}).items():
        if name in (RECLAIMED_MILLICPU, RECLAIMED_MEMORY):
            total[name] = total.get(name, 0) + parse_quantity(str(value)).amount


def _reclaimed_requests(pod):
    """``SumUpPodRequestResources`` for the reclaimed resources, as exact amounts (base units).

    Containers and ``spec.overhead`` add up; an init container replaces the sum when its own request is larger
    (compared with ``Value()``, i.e. rounded up), because it runs alone before the others.
    """
    spec = (pod or {}).get("spec") or {}
    total = {}
    for container in spec.get("containers") or []:
        _add_requests(total, (container.get("resources") or {}).get("requests"))
    _add_requests(total, spec.get("overhead"))
    for container in spec.get("initContainers") or []:
        init = {}
        _add_requests(init, (container.get("resources") or {}).get("requests"))
        for name, amount in init.items():
            if name not in total or math.ceil(total[name]) < math.ceil(amount):
                total[name] = amount
    return total


def _pod_request_value(pod, name):
    """One pod's request of ``name`` as ``Quantity.Value()`` (rounded up), 0 when absent."""
    return math.ceil(_reclaimed_requests(pod).get(name, 0))


def reclaimed_resource_threshold_met(pods, allocatable, thresholds=None, skip_zero_resources=()):
    """Whether the reclaimed pods request more than ``threshold x`` the CNR's reclaimed allocatable.

    ``allocatable``: the CNR ``status.resources.allocatable`` (quantity strings or numbers). Returns a
    :class:`ReclaimedMet` for the first resource (by name) with ``used > rate*allocatable``, else None.
    Why: the reclaimed supply shrank under pods already running on it, so some must go.
    """
    thresholds = RECLAIMED_EVICTION_THRESHOLDS if thresholds is None else thresholds
    exact = {}
    for pod in pods or []:
        if is_reclaimed(pod):
            for name, amount in _reclaimed_requests(pod).items():
                exact[name] = exact.get(name, 0) + amount
    used = {name: math.ceil(amount) for name, amount in exact.items()}     # Value() of the summed quantity
    # Katalyst quirk: Go ranges over the used-resources map in random order; we go by resource name.
    for name in sorted(used):
        if name not in (allocatable or {}) or name not in thresholds:
            continue
        total = parse_quantity(str(allocatable[name])).value()
        if total <= 0 and name in skip_zero_resources:
            continue
        limit = thresholds[name] * total
        if limit - used[name] < 0:
            return ReclaimedMet(name, used[name], limit, total, thresholds[name])
    return None


def reclaimed_resource_plan(pods, met, top_n, grace_period=RECLAIMED_DELETION_GRACE_PERIOD):
    """getTopHardEvictionPods: reclaimed pods with the largest request of the exceeded resource first."""
    if met is None:
        return Plan((), ())
    reclaimed = [pod for pod in evictable_pods(pods) if is_reclaimed(pod)]
    # Katalyst quirk: sort.Slice is not stable; we break ties by namespace/name.
    reclaimed.sort(key=lambda pod: (-_pod_request_value(pod, met.resource), pod_key(pod)))
    threshold = "%s > %g x allocatable %d = %g" % (met.resource, met.rate, met.allocatable, met.threshold_value)
    evictions = tuple(make_eviction(pod, PLUGIN_RECLAIMED_RESOURCES, threshold, "requested %d" % met.used,
                                    "reclaimed requests exceed reclaimed allocatable, pod requests %d"
                                    % _pod_request_value(pod, met.resource), grace_period)
                      for pod in reclaimed[:max(0, top_n)])
    return Plan(evictions, ())


# =================================================================================================================
# Conditions and rate limiting
# =================================================================================================================

class ConditionTracker:
    """Keeps a node condition for the transition period (§6.2, 5 min) after it was last met.

    Why: a condition that flaps every 5 s sync would add and remove the taint all the time.
    """

    def __init__(self, transition_period=CONDITION_TRANSITION_PERIOD):
        self.transition_period = transition_period
        self.last_met = {}
        self.conditions = {}

    def update(self, conditions, now):
        """Feed the conditions met this sync; return those still in force, sorted by name."""
        for condition in conditions:
            self.last_met[condition.name] = now
            self.conditions[condition.name] = condition
        for name in [name for name, when in self.last_met.items() if now - when >= self.transition_period]:
            del self.last_met[name]
            del self.conditions[name]
        return tuple(self.conditions[name] for name in sorted(self.conditions))


class EvictionRateLimiter:
    """At most ``max_evictions`` per sliding ``period`` seconds, and ``pod_cooldown`` seconds between two
    evictions of the same pod key (a pod recreated with the same name is not hit again at once).

    Pure apart from its own history: every call is given ``now``.
    """

    def __init__(self, max_evictions, period, pod_cooldown=0):
        if max_evictions < 0 or period <= 0 or pod_cooldown < 0:
            raise ValueError("rate limiter needs max_evictions >= 0, period > 0, pod_cooldown >= 0: %r, %r, %r"
                             % (max_evictions, period, pod_cooldown))
        self.max_evictions, self.period, self.pod_cooldown = max_evictions, period, pod_cooldown
        self.history = []           # times of granted evictions
        self.last_by_pod = {}

    def in_cooldown(self, key, now):
        """Whether ``key`` was evicted less than ``pod_cooldown`` seconds ago."""
        last = self.last_by_pod.get(key)
        return last is not None and now - last < self.pod_cooldown

    def admit(self, evictions, now):
        """Split into ``(allowed, deferred)``, recording the allowed ones as done at ``now``."""
        self.history = [when for when in self.history if now - when < self.period]
        allowed, deferred = [], []
        for eviction in evictions:
            if self.in_cooldown(eviction.pod_key, now) or len(self.history) >= self.max_evictions:
                deferred.append(eviction)
                continue
            self.history.append(now)
            self.last_by_pod[eviction.pod_key] = now
            allowed.append(eviction)
        return tuple(allowed), tuple(deferred)

    def release(self, eviction):
        """Give back an admitted eviction that did not happen (the API refused it): it counts neither against the
        rate nor for the pod's cool-down, so the next pass may try it again."""
        if self.last_by_pod.pop(eviction.pod_key, None) is not None and self.history:
            self.history.pop()
