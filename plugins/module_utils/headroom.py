# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""Reclaimed resources (headroom) per node and per NUMA node: node spec §4.1-§4.4, cluster spec §3.3.

Pure functions; the agent gathers the readings and passes them in, with the time for the windows.

Inputs shared by the functions here and by ``memprovision``:

* ``containers``: a list of container dicts (the agent's metacache)::

    {"pod_uid": "u1", "container_name": "c", "qos_level": "dedicated_cores", "main": True,
     "memory_request": 8589934592,            # bytes
     "numa_assignments": [0, 1] or None,      # NUMA ids of the container's cpuset; None = not assigned (nil)
     "ramp_up": False,
     "numa_exclusive": False,                 # dedicated_cores + numa_binding + numa_exclusive
     "shared_numa_binding": False, "owner_pool": "share-NUMA1", "numa_bind_result": -1,
     "numa_hint": [0],                        # reclaimed_cores: NUMAs named by its numa_bind_result/hint
     "enable_reclaim": None,                  # SPD override; None = "SPD not found" (follows the node)
     "disable_reclaim_level": "Pod",          # SPD DisableReclaimLevel: Pod | NUMA | Socket | Node
     "metrics": {"rss": .., "cache": .., "shmem": .., "usage": .., "numa_total": {0: ..}}}   # missing = absent

* ``pods``: ``{pod uid: pod dict}`` (Kubernetes JSON, or its ``podview.PodView``) for ``PodIsActive``.
* ``numa_metrics``: ``{numa id: {"free": .., "total": .., "inactive_file": ..}}`` (bytes).
"""

from __future__ import annotations

import math
from fractions import Fraction

from .cnr import RECLAIMED_MEMORY, RECLAIMED_MILLICPU
from .podview import as_view
from .quantity import BINARY_SI, DECIMAL_SI, Quantity, new_milli_quantity, new_quantity, parse_quantity

GI = 1 << 30
MI = 1 << 20
RECLAIMED_CORES = "reclaimed_cores"
SHARED_CORES = "shared_cores"
DEDICATED_CORES = "dedicated_cores"
SYSTEM_CORES = "system_cores"

# dynamic-config defaults (node spec §4.2-§4.4, cluster spec §3.3)
DEFAULT_RESERVED_FOR_ALLOCATE = 5 * GI
MEMORY_DEFAULTS = {"free_based_ratio": 0.6, "static_based_capacity": 20 * GI, "cache_based_ratio": 0.0,
                   "request_based_ratio": 0.1, "max_oversold_rate": 2.0, "util_based_enable": False,
                   "cpu_mem_ratio_lower_bound": 1.0 / 6, "cpu_mem_ratio_upper_bound": 1 / 3.5}
CPU_UTIL_DEFAULTS = {"target_reclaimed_core_utilization": 0.6, "max_reclaimed_core_utilization": 0.0,
                     "max_oversold_rate": 1.2, "max_headroom_capacity_rate": 1.0}
ESTIMATION_MEMORY_FALLBACK = 8 * GI
SHARED_DEDICATED_BUFFER_RATIO = 1.1
SYSTEM_BUFFER_RATIO = 1.0
# reporter (GenericHeadroomManager): window 2m / sync 30s = 4 samples, TTL 2 x window
REPORT_SYNC_SECONDS = 30.0
REPORT_WINDOW_SECONDS = 120.0
REPORT_DEFAULTS = {
    "cpu": {"min_step": "300m", "max_step": "4", "reserved_for_report": "0", "min_for_report": "4"},
    "memory": {"min_step": "300Mi", "max_step": "5Gi", "reserved_for_report": "0", "min_for_report": "5Gi"},
}


class HeadroomError(ValueError):
    """A reading the calculation needs is missing or wrong; the message names it."""


# -- §4.1 ----------------------------------------------------------------------------------------
def pod_is_active(pod):
    """``PodIsActive`` (``PodView.pod_is_active``) of a pod or its PodView; False for None."""
    return pod is not None and as_view(pod).pod_is_active


def pod_enable_reclaim(container, node_enable_reclaim):
    """``PodEnableReclaim``: node reclaim off -> False; else the SPD's verdict, True when there is no SPD."""
    if not node_enable_reclaim:
        return False
    verdict = container.get("enable_reclaim")
    return True if verdict is None else bool(verdict)


def _translate_pool(name):
    index = name.find("-NUMA")
    return name[:index + len("-NUMA")] if index >= 0 else name


def _numas_of_sockets(numas, numa_sockets):
    sockets = {numa_sockets.get(n) for n in numas}
    return {n for n, s in numa_sockets.items() if s in sockets}


def get_available_numas_and_reclaimed(containers, pods, all_numas, numa_sockets, enable_reclaim=True,
                                      disable_reclaim_share_pools=()):
    """``GetAvailableNUMAsAndReclaimedCores``: NUMAs reclaimed pods may use, and the active reclaimed containers.

    Returns ``(sorted list of NUMA ids, [reclaimed container dicts])``; HeadroomError when a
    non-reclaimable container has no NUMA assignment (and is not ramping up) or its pod is unknown.
    """
    avail = set(int(n) for n in all_numas)
    numa_sockets = {int(n): s for n, s in (numa_sockets or {}).items()}
    reclaimed, errors = [], []
    for container in containers:
        uid = container.get("pod_uid")
        pod = pods.get(uid)
        if container.get("qos_level") == RECLAIMED_CORES:
            if pod is None:
                errors.append("pod %s of container %s not found" % (uid, container.get("container_name")))
            elif pod_is_active(pod):
                reclaimed.append(container)
            continue
        if not pod_enable_reclaim(container, enable_reclaim):
            memset = set(int(n) for n in container.get("numa_assignments") or [])
            if not memset and not container.get("ramp_up"):
                errors.append("container(%s/%s) TopologyAwareAssignments is empty" % (uid, container.get("container_name")))
                continue
            level = container.get("disable_reclaim_level") or "Pod"
            if level == "NUMA":
                avail -= memset
            elif level == "Socket":
                avail -= _numas_of_sockets(memset, numa_sockets)
            elif level == "Node":
                avail = set()
            elif container.get("numa_exclusive"):
                avail -= memset
        if container.get("shared_numa_binding") and _translate_pool(container.get("owner_pool") or "") in disable_reclaim_share_pools:
            result = container.get("numa_bind_result", -1)
            if result is not None and result != -1:
                avail -= _numas_of_sockets({int(result)}, numa_sockets)
    if errors:
        raise HeadroomError("; ".join(errors))
    return sorted(avail), reclaimed


def actual_numa_binding_numas(reclaimed_containers):
    """``GetActualNUMABindingNUMAsForReclaimedCores``: NUMAs named by reclaimed containers' NUMA hint."""
    numas = set()
    for container in reclaimed_containers:
        for numa in container.get("numa_hint") or []:
            numas.add(int(numa))
    return numas


# -- §4.2 memory ---------------------------------------------------------------------------------
def _metric(metrics, numa, name):
    try:
        return float(metrics[numa][name])
    except (KeyError, TypeError, ValueError):
        raise HeadroomError("NUMA %s: metric %r is missing" % (numa, name))


def _numa_metrics(numa_metrics):
    return {int(n): v for n, v in (numa_metrics or {}).items()}


def estimate_container_memory(container, enable_reclaim):
    """``EstimateContainerMemoryUsage`` (bytes, float)."""
    level = container.get("qos_level")
    if level in (SHARED_CORES, DEDICATED_CORES):
        names, ratio = ("rss", "cache", "shmem"), SHARED_DEDICATED_BUFFER_RATIO
    elif level == SYSTEM_CORES:
        names, ratio = ("rss",), SYSTEM_BUFFER_RATIO
    else:
        return 0.0
    if enable_reclaim:
        metrics = container.get("metrics") or {}
        estimation = 0.0
        for name in names:
            value = metrics.get(name)
            if value is None or value <= 0:
                continue
            estimation += float(value)
        if ratio > 0:
            estimation = estimation * ratio
    else:
        estimation = float(container.get("memory_request") or 0)
    if estimation <= 0:
        estimation = float(ESTIMATION_MEMORY_FALLBACK)
    return estimation


def memory_headroom_canonical(containers, pods, all_numas, numa_sockets, numa_metrics, memory_capacity,
                              numa_memory_capacity, reserved_for_allocate=DEFAULT_RESERVED_FOR_ALLOCATE,
                              enable_reclaim=True, config=None, system_metrics=None, num_cores=None, node_enable_reclaim=None):
    """The ``canonical`` memory headroom policy. Returns ``{"total": int, "numa": {numa: int}}`` (bytes).

    ``numa_memory_capacity`` is the machine's per-NUMA capacity (``MemoryDetails``); ``system_metrics``
    (``total``, ``free``, ``used``, ``scale_factor``) is only needed with ``util_based_enable``.
    ``enable_reclaim`` is the essentials' flag; ``node_enable_reclaim`` the dynamic-config flag that
    §4.1 uses (Katalyst reads both from the same setting; None = same as ``enable_reclaim``).
    """
    conf = dict(MEMORY_DEFAULTS, **(config or {}))
    upper, reserved = float(memory_capacity), float(reserved_for_allocate)
    max_alloc = upper - reserved
    estimation = 0.0
    for container in containers:
        if container.get("qos_level") == RECLAIMED_CORES:
            continue
        enable = pod_enable_reclaim(container, enable_reclaim and not container.get("ramp_up"))
        if container.get("numa_exclusive") and not enable:
            if container.get("main", True):
                for numa in sorted(set(int(n) for n in container.get("numa_assignments") or [])):
                    if numa not in numa_memory_capacity and str(numa) not in numa_memory_capacity:
                        raise HeadroomError("get memory capacity of numa %d failed" % numa)
                    estimation += float(numa_memory_capacity.get(numa, numa_memory_capacity.get(str(numa))))
            continue
        estimation += estimate_container_memory(container, enable)
    without_buffer = max(max_alloc - estimation, 0.0)
    buffer = 0.0
    if conf["util_based_enable"]:
        buffer = _util_based_buffer(conf, estimation, containers, system_metrics, num_cores, upper)
    headroom = min(max(without_buffer + buffer, 0.0), max_alloc)

    node_enable = enable_reclaim if node_enable_reclaim is None else node_enable_reclaim
    avail, reclaimed = get_available_numas_and_reclaimed(containers, pods, all_numas, numa_sockets, node_enable)
    metrics = _numa_metrics(numa_metrics)
    reclaimable, total_reclaimable = {}, 0.0
    for numa in avail:
        value = _metric(metrics, numa, "free") + _metric(metrics, numa, "inactive_file") * conf["cache_based_ratio"]
        reclaimable[numa] = value
        total_reclaimable += value
    for container in reclaimed:
        numa_total = (container.get("metrics") or {}).get("numa_total") or {}
        for numa in container.get("numa_assignments") or []:
            value = numa_total.get(numa, numa_total.get(str(numa)))
            if value is None:
                raise HeadroomError("container %s/%s: metric mem.total.numa.container of NUMA %s is missing"
                                    % (container.get("pod_uid"), container.get("container_name"), numa))
            reclaimable[int(numa)] = reclaimable.get(int(numa), 0.0) + float(value)
            total_reclaimable += float(value)
    # Katalyst divides by a zero sum here (NaN); we report zero per NUMA instead.
    ratio = headroom / total_reclaimable if total_reclaimable > 0 else 0.0
    return {"total": int(headroom), "numa": {numa: int(value * ratio) for numa, value in sorted(reclaimable.items())}}


def _util_based_buffer(conf, estimation, containers, system_metrics, num_cores, memory_capacity):
    if not system_metrics:
        raise HeadroomError("util-based memory headroom needs system metrics (total, free, used, scale_factor)")
    try:
        total, free = float(system_metrics["total"]), float(system_metrics["free"])
        scale, used = float(system_metrics["scale_factor"]), float(system_metrics["used"])
    except (KeyError, TypeError, ValueError):
        raise HeadroomError("system memory metrics need total, free, used and scale_factor: %r" % (system_metrics,))
    system_factor = total * 2 * scale / 10000
    system_buffer = free * conf["free_based_ratio"] - system_factor
    shared_used, system_extra = 0.0, 0.0
    for container in containers:
        metrics = container.get("metrics") or {}
        if container.get("qos_level") in (SHARED_CORES, DEDICATED_CORES):
            shared_used += sum(float(metrics.get(k) or 0) for k in ("rss", "shmem", "cache"))
        elif container.get("qos_level") == SYSTEM_CORES:
            system_extra += sum(float(metrics.get(k) or 0) for k in ("cache", "shmem"))
    buffer = max(system_buffer - (estimation - shared_used + system_extra), 0.0)
    utilization = used / total if total > 0 else 0.0
    ratio = float(num_cores or 0) / (memory_capacity / GI) if memory_capacity else 0.0
    if conf["cache_based_ratio"] > 0 and conf["cpu_mem_ratio_lower_bound"] < ratio < conf["cpu_mem_ratio_upper_bound"] and utilization > 0:
        buffer = max(buffer, (total * (1 - utilization) - free) * conf["cache_based_ratio"])
    return buffer + conf["static_based_capacity"]


def memory_headroom_numa_aware(containers, pods, all_numas, numa_sockets, numa_metrics, scale_factor,
                               reserved_for_allocate=DEFAULT_RESERVED_FOR_ALLOCATE, enable_reclaim=True, config=None,
                               reclaim_limits=None, num_numa_nodes=None, node_enable_reclaim=None):
    """The ``numa-aware`` memory headroom policy, in Katalyst's order. Returns ``{"total": int, "numa": {numa: int}}``.

    ``scale_factor`` is ``vm.watermark_scale_factor`` (node metric ``mem.scale.factor.system``).
    With ``max_oversold_rate > 0`` (config), ``reclaim_limits`` = ``{"root": limit of the reclaimed root,
    numa id: limit of <root>-<numa>}`` caps each NUMA at limit x rate.
    """
    conf = dict(MEMORY_DEFAULTS, **(config or {}))
    all_numas = sorted(int(n) for n in all_numas)
    num_numa_nodes = num_numa_nodes or len(all_numas)
    node_enable = enable_reclaim if node_enable_reclaim is None else node_enable_reclaim
    avail, reclaimed = get_available_numas_and_reclaimed(containers, pods, all_numas, numa_sockets, node_enable)
    metrics = _numa_metrics(numa_metrics)
    reclaimable, avail_total, reserved = 0.0, 0.0, 0.0
    numa_reclaimable = {}
    for numa in avail:
        free = _metric(metrics, numa, "free")
        inactive = _metric(metrics, numa, "inactive_file")
        total = _metric(metrics, numa, "total")
        avail_total += total
        reserved += float(reserved_for_allocate) / float(num_numa_nodes)
        value = free + inactive * conf["cache_based_ratio"]
        reclaimable += value
        numa_reclaimable[numa] = value
    if scale_factor is None:
        raise HeadroomError("node metric mem.scale.factor.system is missing")
    watermark_reserved = avail_total * float(scale_factor) / 10000

    def usage(container):
        value = (container.get("metrics") or {}).get("usage")
        return float(container["memory_request"]) if value is None else float(value)

    reclaim_request = reclaim_usage = 0.0
    for container in reclaimed:
        if (container.get("memory_request") or 0) > 0 and container.get("numa_assignments"):
            reclaim_request += float(container["memory_request"])
            reclaim_usage += usage(container)
    request_ratio = reclaim_request / reclaim_usage if reclaim_usage > 0 else 1.0
    other_request = other_usage = 0.0
    for container in containers:
        if container.get("qos_level") == RECLAIMED_CORES or not pod_is_active(pods.get(container.get("pod_uid"))):
            continue
        if (container.get("memory_request") or 0) > 0:
            other_request += float(container["memory_request"])
            other_usage += usage(container)
    reserved_ratio = 0.0
    if reclaim_usage + other_usage > 0:
        raw = min(other_request - other_usage, other_request * conf["request_based_ratio"])
        reserved_ratio = max(raw / (reclaim_usage + other_usage), 0.0)
    non_reclaimed_reserved = max((avail_total - reclaimable) * reserved_ratio, 0.0)
    avail_memory = max(reclaimable - watermark_reserved - reserved - non_reclaimed_reserved, 0.0)
    to_avail = avail_memory / reclaimable if reclaimable > 0 else 0.0
    headroom, total = {}, 0.0
    for numa in sorted(numa_reclaimable):
        headroom[numa] = numa_reclaimable[numa] * to_avail * request_ratio
        total += headroom[numa]
    for container in reclaimed:
        assignments = [int(n) for n in container.get("numa_assignments") or []]
        if (container.get("memory_request") or 0) > 0 and assignments:
            total += float(container["memory_request"])
            share = float(container["memory_request"]) / float(len(set(assignments)))
            for numa in sorted(set(assignments)):
                headroom[numa] = headroom.get(numa, 0.0) + share
    if conf["max_oversold_rate"] > 0:
        limits = reclaim_limits or {}
        actual = actual_numa_binding_numas(reclaimed)
        non_actual = set(avail) - actual
        numa_limit = {}
        for numa in actual:
            if numa not in limits and str(numa) not in limits:
                raise HeadroomError("memory limit of the reclaimed cgroup of NUMA %d is missing" % numa)
            numa_limit[numa] = float(limits.get(numa, limits.get(str(numa))))
        if "root" not in limits:
            raise HeadroomError("memory limit of the reclaimed root cgroup is missing")
        if non_actual:
            for numa in non_actual:
                numa_limit[numa] = float(limits["root"]) / float(len(non_actual))
        total = 0.0
        for numa in sorted(headroom):
            headroom[numa] = min(headroom[numa], numa_limit.get(numa, 0.0) * conf["max_oversold_rate"])
            total += headroom[numa]
    return {"total": int(total), "numa": {numa: int(headroom.get(numa, 0.0)) for numa in sorted(set(all_numas) | set(headroom))}}


# -- §4.3 CPU --------------------------------------------------------------------------------------
def reclaim_supply(cpus, cpu_usage_ratio, cgroup_usage, cgroup_quota=None, cgroup_period=None):
    """``GetReclaimMetrics``: what a reclaimed pool can supply (cores, float).

    ``cpu_usage_ratio`` is ``{cpu: busy ratio 0..1}``; ``cgroup_usage`` the cores the reclaimed cgroup uses now.
    """
    pool_usage = 0.0
    for cpu in cpus:
        pool_usage += float(cpu_usage_ratio.get(cpu, 0.0))
    quota = float(cgroup_quota or 0)
    if quota > 0 and cgroup_period and float(cgroup_period) > 0:
        quota = quota / float(cgroup_period)
    supply = max(len(cpus) - pool_usage, 0.0) + float(cgroup_usage or 0)
    if quota > 0:
        supply = min(supply, quota)
    return supply


def util_based_capacity(supply, cgroup_usage, last_reclaimed, max_capacity=0.0, config=None):
    """``EstimateUtilBasedCapacity`` (cores, float)."""
    conf = dict(CPU_UTIL_DEFAULTS, **(config or {}))
    if supply <= 0:
        return 0.0
    current = float(cgroup_usage) / supply
    oversold = 0.0
    if conf["target_reclaimed_core_utilization"] > current:
        oversold = supply * (conf["target_reclaimed_core_utilization"] - current)
    elif conf["max_reclaimed_core_utilization"] > 0 and current > conf["max_reclaimed_core_utilization"]:
        oversold = supply * (conf["max_reclaimed_core_utilization"] - current)
    result = max(float(last_reclaimed) + oversold, supply)
    result = min(result, supply * conf["max_oversold_rate"])
    if max_capacity > 0:
        result = min(result, max_capacity)
    return result


def cpu_headroom(enable_reclaim, pool_cpus_by_numa, avail_numas, binding_numas, readings, util_based=False,
                 last_reclaimed_by_numa=None, numa_cpu_count=None, config=None):
    """The CPU headroom assembler: ``{"total": Quantity (cores), "numa": {numa: Quantity}}``.

    ``pool_cpus_by_numa``: the ``reclaim`` pool's CPUs per NUMA (``{numa: [cpu...]}``);
    ``binding_numas``: NUMAs with a NUMA-bound shared/reclaimed pod or a dedicated container;
    ``readings``: ``{"cpu_usage_ratio": {cpu: ratio}, "cgroups": {"root" | numa: {"usage", "quota", "period"}}}``;
    ``last_reclaimed_by_numa``: reclaimed cores per NUMA from the CNR (util-based only);
    ``numa_cpu_count``: CPUs of each NUMA node in the machine topology, required when ``util_based``: it bounds
    MaxCapacity and splits the non-binding share (Katalyst's ``NUMAToCPUs.CPUSizeInNUMAs``), not the pool's CPUs.
    """
    conf = dict(CPU_UTIL_DEFAULTS, **(config or {}))
    if not enable_reclaim:
        return {"total": new_quantity(0), "numa": {}}
    pool = {int(n): sorted(c) for n, c in pool_cpus_by_numa.items()}
    numas = sorted(set(pool) & set(int(n) for n in avail_numas))
    binding = [n for n in numas if n in set(int(b) for b in binding_numas)]
    non_binding = [n for n in numas if n not in binding]
    cgroups = readings.get("cgroups") or {}
    usage_ratio = readings.get("cpu_usage_ratio") or {}
    last = {int(n): float(v) for n, v in (last_reclaimed_by_numa or {}).items()}
    counts = {int(n): int(v) for n, v in (numa_cpu_count or {}).items()}

    def cgroup(key):
        values = cgroups.get(key, cgroups.get(str(key))) or {}
        return float(values.get("usage") or 0), values.get("quota"), values.get("period")

    def machine_cpus(numas):
        missing = [n for n in numas if n not in counts]
        if missing:
            raise HeadroomError("util-based CPU headroom: the CPU count of NUMA %s is missing (numa_cpu_count)"
                                % ", ".join(str(n) for n in missing))
        return sum(counts[n] for n in numas)

    out = {}
    for numa in binding:
        used, quota, period = cgroup(numa)
        supply = reclaim_supply(pool[numa], usage_ratio, used, quota, period)
        if util_based:
            cap = conf["max_headroom_capacity_rate"] * machine_cpus([numa])
            value = util_based_capacity(supply, used, last.get(numa, 0.0), cap, conf) if supply > 0 else 0.0
            out[numa] = new_milli_quantity(int(value * 1000))
        else:
            out[numa] = new_quantity(math.ceil(supply))
    if non_binding:
        cpus = sorted(c for n in non_binding for c in pool[n])
        used, quota, period = cgroup("root")
        supply = reclaim_supply(cpus, usage_ratio, used, quota, period)
        if util_based:
            machine_total = machine_cpus(non_binding)
            if machine_total <= 0:
                raise HeadroomError("util-based CPU headroom: NUMA %s have no CPUs (numa_cpu_count)" % non_binding)
            cap = conf["max_headroom_capacity_rate"] * machine_total
            value = util_based_capacity(supply, used, sum(last.get(n, 0.0) for n in non_binding), cap, conf) if supply > 0 else 0.0
            whole = new_milli_quantity(int(value * 1000)).value()
            for numa in non_binding:
                # split by each NUMA node's CPUs in the machine (Katalyst), in Go's float64 order
                out[numa] = new_quantity(int(float(whole) * counts[numa] / machine_total))
        else:
            for numa in non_binding:
                out[numa] = new_quantity(int(supply / len(non_binding)))
    total = Quantity(sum((q.amount for q in out.values()), 0))
    return {"total": total, "numa": out}


# -- §4.4 / cluster §3.3: smoothing windows and report thresholds ---------------------------------
def _as_quantity(value):
    if isinstance(value, Quantity):
        return value
    return parse_quantity(value if isinstance(value, str) else str(value))


class CappedWindow:
    """Katalyst's ``CappedSmoothWindow`` over an average (or percentile) TTL window.

    ``push(value, now)`` returns the smoothed Quantity or None while the window is not full of samples
    younger than ``ttl``. Changes smaller than ``min_step`` keep the last result; larger than
    ``max_step`` move the last result by ``max_step``. State is plain data (``samples``, ``last``) so a
    daemon can keep one per resource and NUMA node.
    """

    def __init__(self, min_step, max_step, size=int(REPORT_WINDOW_SECONDS / REPORT_SYNC_SECONDS),
                 ttl=2 * REPORT_WINDOW_SECONDS, used_milli_value=False, percentile=None):
        self.min_step = _as_quantity(min_step)
        self.max_step = _as_quantity(max_step)
        self.size = int(size)
        self.ttl = float(ttl)
        self.used_milli_value = used_milli_value
        self.percentile = percentile
        self.samples = [None] * self.size
        self.index = 0
        self.last = None

    def _aggregate(self, values, fmt):
        if self.percentile is None:
            # Katalyst adds the samples as exact quantities, then converts once; a float sum drifts (0.1, 0.6, 1.4
            # and 1.9 average to 0.999). The exact average, truncated to milli (Go int64()) toward zero.
            total = sum((v.amount for v in values), Fraction(0))
            result = new_milli_quantity(int(total * 1000 / len(values)))
        else:
            ordered = sorted(values, key=lambda v: v.amount)
            index = int(math.ceil(float(len(ordered)) * self.percentile / 100.0)) - 1
            result = ordered[min(max(index, 0), len(ordered) - 1)]
        if self.used_milli_value:
            return new_milli_quantity(result.milli_value(), fmt)
        return new_quantity(result.value(), fmt)

    def _windowed(self, value, now):
        self.samples[self.index] = (value, float(now))
        self.index = (self.index + 1) % self.size
        valid = [v for v in self.samples if v is not None and v[1] + self.ttl > float(now)]
        if len(valid) != self.size:
            return None
        return self._aggregate([v[0] for v in valid], value.format)

    def push(self, value, now):
        value = _as_quantity(value)
        current = self._windowed(value, now)
        if current is None:
            current = self.last
        elif self.last is None:
            self.last = current
        elif current > self.last:
            step = current - self.last
            if step < self.min_step:
                current = self.last
            elif step > self.max_step:
                self.last = self.last + self.max_step
                current = self.last
            else:
                self.last = current
        else:
            step = self.last - current
            if step < self.min_step:
                current = self.last
            elif step > self.max_step:
                self.last = self.last - self.max_step
                current = self.last
            else:
                self.last = current
        return None if current is None else Quantity(current.amount, current.format)


class ReclaimedReporter:
    """``GenericHeadroomManager`` for one resource (``cpu`` or ``memory``): windows, reserve, minimum, NUMA rescale.

    ``sync(headroom, numa_headroom, now, enable_reclaim)`` takes the advisor's result (Quantities or
    quantity strings) and returns the report (``{"total": Quantity, "numa": {numa: Quantity}}``) in the
    CNR's units (``reclaimed_millicpu`` as an integer of milli-cores, ``reclaimed_memory`` in bytes), or
    None when a window is not ready yet (keep reporting the last result).
    """

    def __init__(self, resource, min_step=None, max_step=None, reserved_for_report=None, min_for_report=None,
                 size=int(REPORT_WINDOW_SECONDS / REPORT_SYNC_SECONDS), ttl=2 * REPORT_WINDOW_SECONDS, percentile=None):
        if resource not in REPORT_DEFAULTS:
            raise HeadroomError("unknown reclaimed resource %r (cpu or memory)" % resource)
        defaults = REPORT_DEFAULTS[resource]
        self.resource = resource
        self.milli = resource == "cpu"
        self.reserved_for_report = _as_quantity(reserved_for_report or defaults["reserved_for_report"])
        self.min_for_report = _as_quantity(min_for_report or defaults["min_for_report"])
        self._window_args = dict(min_step=min_step or defaults["min_step"], max_step=max_step or defaults["max_step"],
                                 size=size, ttl=ttl, used_milli_value=self.milli, percentile=percentile)
        self.window = CappedWindow(**self._window_args)
        self.numa_windows = {}
        self.last = None

    def _transform(self, quantity):
        if self.milli:
            return new_quantity(quantity.milli_value(), DECIMAL_SI)
        return quantity

    def sync(self, headroom, numa_headroom, now, enable_reclaim=True, numa_ids=()):
        if not enable_reclaim:
            self.last = {"total": new_quantity(0), "numa": {int(n): new_quantity(0) for n in list(numa_ids) or list(numa_headroom or {})}}
            return self.last
        total = self.window.push(_as_quantity(headroom), now)
        numa_result, ready, numa_sum = {}, True, 0.0
        for numa, value in sorted((int(n), v) for n, v in (numa_headroom or {}).items()):
            window = self.numa_windows.get(numa)
            if window is None:
                window = self.numa_windows[numa] = CappedWindow(**self._window_args)
            result = window.push(_as_quantity(value), now)
            if result is None:
                ready = False
                continue
            numa_result[numa] = result
            numa_sum += float(result.value())
        if total is None or not ready:
            return None
        total = total - self.reserved_for_report
        if total < self.min_for_report:
            total = Quantity(self.min_for_report.amount, self.min_for_report.format)
        ratio = float(total.value()) / numa_sum if numa_sum > 0 else 0.0
        report = {}
        for numa, result in numa_result.items():
            if result.value() != 0:
                result = Quantity(int(float(result.value()) * ratio), result.format)
            report[numa] = self._transform(result)
        self.last = {"total": self._transform(total), "numa": report}
        return self.last


def reclaimed_report_maps(cpu_report, memory_report):
    """Turn two reporter results into ``revise_reclaimed`` arguments (allocatable == capacity, as Katalyst)."""
    allocatable, numa = {}, {}
    for name, report in ((RECLAIMED_MILLICPU, cpu_report), (RECLAIMED_MEMORY, memory_report)):
        if report is None:
            continue
        total = report["total"]
        allocatable[name] = str(Quantity(total.amount, BINARY_SI if name == RECLAIMED_MEMORY else DECIMAL_SI))
        for numa_id, quantity in report["numa"].items():
            fmt = BINARY_SI if name == RECLAIMED_MEMORY else DECIMAL_SI
            numa.setdefault(str(numa_id), {})[name] = str(Quantity(quantity.amount, fmt))
    return {"allocatable": allocatable, "capacity": dict(allocatable), "numa_allocatable": numa,
            "numa_capacity": {n: dict(v) for n, v in numa.items()}}
