# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""Memory pressure states of sysadvisor's memory advisor (node spec §5.4 "sysadvisor pressure states", §3.4, §6.2).

Source: ``sysadvisor/plugin/qosaware/resource/memory/advisor.go`` ``detectNUMAPressure`` /
``detectNodePressureCondition``. Float math in Go's order; targets are ``int64(...)`` truncations.

* NUMA: critical = ``max(MinCriticalWatermark, 2*total*wsf/10000)``; free < critical -> DropCache with target
  ``2*critical - free``; free < 2*critical -> TuneMemCg with target 0 (Katalyst sets none for a NUMA node);
  otherwise NoRisk, target 0.
* Node: critical = ``max(MinCriticalWatermark*NumNUMA, 2*total*wsf/10000)``; DropCache and TuneMemCg both get
  target ``2*critical - free``.

``--memory-advisor-min-critical-watermark`` defaults to 4Gi (``memprovision.DEFAULT_MIN_CRITICAL_WATERMARK``).
"""

from __future__ import annotations

import collections
import math

from .memprovision import DEFAULT_MIN_CRITICAL_WATERMARK

NO_RISK = "NoRisk"
TUNE_MEMCG = "TuneMemCg"
DROP_CACHE = "DropCache"
STATE_VALUES = {NO_RISK: 0, TUNE_MEMCG: 1, DROP_CACHE: 2}     # Katalyst's MemoryPressureState (the emitted metric)
SCALE_DENOMINATOR = 10000
CRITICAL_WATERMARK_SCALE_FACTOR = 2

PressureCondition = collections.namedtuple("PressureCondition", ("state", "critical_watermark", "target_reclaimed"))
PressureCondition.__doc__ = "One NUMA node's or the node's state, critical watermark (float bytes) and reclaim target (int bytes)."


def _reading(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError("%s=%r: a finite non-negative number is required" % (name, value))
    return float(value)


def _condition(free, critical, node):
    safe = CRITICAL_WATERMARK_SCALE_FACTOR * critical
    if free < critical:
        return PressureCondition(DROP_CACHE, critical, int(safe - free))
    if free < safe:
        return PressureCondition(TUNE_MEMCG, critical, int(safe - free) if node else 0)
    return PressureCondition(NO_RISK, critical, 0)


def numa_pressure(free, total, scale_factor, min_critical_watermark=DEFAULT_MIN_CRITICAL_WATERMARK):
    """One NUMA node's PressureCondition from its ``mem.free.numa``, ``mem.total.numa`` and ``vm.watermark_scale_factor``."""
    free, total = _reading("free", free), _reading("total", total)
    critical = max(_reading("min_critical_watermark", min_critical_watermark),
                   2 * total * _reading("scale_factor", scale_factor) / SCALE_DENOMINATOR)
    return _condition(free, critical, node=False)


def node_pressure(free, total, scale_factor, num_numa, min_critical_watermark=DEFAULT_MIN_CRITICAL_WATERMARK):
    """The node's PressureCondition from ``mem.free.system``, ``mem.total.system``, the scale factor and the NUMA count."""
    if isinstance(num_numa, bool) or not isinstance(num_numa, int) or num_numa < 1:
        raise ValueError("num_numa=%r: a positive integer is required" % (num_numa,))
    free, total = _reading("free", free), _reading("total", total)
    minimum = _reading("min_critical_watermark", min_critical_watermark)
    critical = max(float(int(minimum) * num_numa), 2 * total * _reading("scale_factor", scale_factor) / SCALE_DENOMINATOR)
    return _condition(free, critical, node=True)


def pressure_states(node_metrics, numa_metrics, scale_factor, min_critical_watermark=DEFAULT_MIN_CRITICAL_WATERMARK):
    """``(node condition, {numa: condition})``; metrics are ``{"free": bytes, "total": bytes}``, the NUMA count is
    ``len(numa_metrics)``. ValueError naming the NUMA node and the field when a reading is missing or bad."""
    numas = {}
    for numa in sorted(numa_metrics):
        metrics = numa_metrics[numa] or {}
        try:
            numas[numa] = numa_pressure(metrics.get("free"), metrics.get("total"), scale_factor, min_critical_watermark)
        except ValueError as exc:
            raise ValueError("NUMA %s: %s" % (numa, exc))
    node_metrics = node_metrics or {}
    node = node_pressure(node_metrics.get("free"), node_metrics.get("total"), scale_factor, len(numa_metrics),
                         min_critical_watermark)
    return node, numas


def drop_cache_writes(version, conditions, containers):
    """The page-cache drops of reclaimed containers on NUMA nodes in DropCache: ``[(numa, file path, content)]``.

    ``conditions`` = ``{numa: PressureCondition}`` of the NUMA nodes to act on (the caller leaves out those in their
    cool-down); ``containers`` = ``[{"cgroup": directory, "numas": [ids] or None (all), "cache": bytes or None}]``,
    the reclaimed containers in the order to drop. v1: ``0`` to ``memory.force_empty`` (Katalyst's drop_cache knob);
    v2: bytes to ``memory.reclaim``: the NUMA's ``target_reclaimed`` shared out in order, each container's share bounded
    by its file cache (``file`` of memory.stat; none or 0: nothing to drop there). A container on several such NUMA
    nodes is written once, for the first of them.
    """
    writes, done = [], set()
    for numa in sorted(conditions):
        condition = conditions[numa]
        if condition.state != DROP_CACHE:
            continue
        remaining = int(condition.target_reclaimed)
        for container in containers:
            numas = container.get("numas")
            if container["cgroup"] in done or (numas is not None and numa not in numas):
                continue
            if version == "v1":
                writes.append((numa, container["cgroup"] + "/memory.force_empty", "0"))
                done.add(container["cgroup"])
                continue
            amount = min(remaining, int(container.get("cache") or 0))
            if amount <= 0:
                continue
            writes.append((numa, container["cgroup"] + "/memory.reclaim", str(amount)))
            done.add(container["cgroup"])
            remaining -= amount
    return writes
