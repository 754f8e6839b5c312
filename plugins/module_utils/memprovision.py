# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""Memory provisioning for reclaimed pods per NUMA node (node spec §3), and enforcing it.

* ``canonical_memory_provision``: Katalyst's ``PolicyCanonical.Update`` **without** its uint64
  wrap-around: a NUMA node short of memory gets 0 (Katalyst gives it the whole NUMA node), and the
  zero fill covers NUMA *ids* (Katalyst fills indexes 0..n-1).
* ``memory_guard_limits``: the memory-guard plugin (§3.4): limits for the reclaimed root and for
  each ``<root>-<N>``.
* ``reclaimed_cgroup_limits`` turns provisions (and optionally the guard) into the limits we write,
  never below a floor, and ``desired_memory_limits`` renders them as the ``desired`` dict that
  ``cgroups.read_cgroup_state`` / ``cgroups.plan_qos_cgroups`` consume (Katalyst only logs provisions;
  we enforce them).

Containers, pods and NUMA readings have the shapes documented in ``headroom``.
"""

from __future__ import annotations

import math

from . import cgroupv2
from .cgroups import page_aligned, reclaim_paths
from .headroom import GI, HeadroomError, actual_numa_binding_numas, get_available_numas_and_reclaimed

DEFAULT_RESERVED_FOR_ALLOCATE = 5 * GI
DEFAULT_MIN_CRITICAL_WATERMARK = 4 * GI
DEFAULT_FLOOR_BYTES = 1 * GI
DEFAULT_FLOOR_RATIO = 0.05
PAGE_SIZE = 4096
MEMORY_HIGH_RATIO = 0.95


class ProvisionError(HeadroomError):
    """A reading the provision needs is missing or wrong."""


def _reading(metrics, numa, name):
    try:
        return float(metrics[numa][name])
    except (KeyError, TypeError, ValueError):
        raise ProvisionError("NUMA %s: metric %r is missing" % (numa, name))


def canonical_memory_provision(containers, pods, all_numas, numa_sockets, numa_metrics, scale_factor,
                               reserved_for_allocate=DEFAULT_RESERVED_FOR_ALLOCATE, enable_reclaim=True,
                               disable_reclaim_share_pools=()):
    """Per NUMA id, the bytes reclaimed pods may use: ``{numa: int}`` covering every NUMA id.

    ``numa_metrics`` = ``{numa: {"free", "total"}}``; ``scale_factor`` = ``vm.watermark_scale_factor``.
    """
    all_numas = sorted(int(n) for n in all_numas)
    avail, reclaimed = get_available_numas_and_reclaimed(containers, pods, all_numas, numa_sockets, enable_reclaim,
                                                         disable_reclaim_share_pools)
    count = len(avail)
    if count == 0:
        return {numa: 0 for numa in all_numas}
    metrics = {int(n): v for n, v in (numa_metrics or {}).items()}
    provision, totals, avail_total = {}, {}, 0.0
    for numa in avail:
        free = _reading(metrics, numa, "free")
        total = _reading(metrics, numa, "total")
        provision[numa] = provision.get(numa, 0) + int(free)
        totals[numa] = totals.get(numa, 0) + int(total)
        avail_total += total
    for container in reclaimed:
        request = int(float(container.get("memory_request") or 0))
        assignments = container.get("numa_assignments")
        if assignments is None:
            add = request // count
            for numa in list(provision):
                provision[numa] += add
            continue
        memset = sorted(set(int(n) for n in assignments))
        if not memset:
            raise ProvisionError("container(%s/%s) TopologyAwareAssignments is empty"
                                 % (container.get("pod_uid"), container.get("container_name")))
        add = request // len(memset)
        for numa in memset:
            provision[numa] = provision.get(numa, 0) + add
    if scale_factor is None:
        raise ProvisionError("node metric mem.scale.factor.system is missing")
    reserved_avg = int(float(reserved_for_allocate)) // count
    watermark_reserved = avail_total * 2 * float(scale_factor) / 10000
    watermark_avg = int(watermark_reserved) // count
    result = {numa: 0 for numa in all_numas}
    for numa, value in provision.items():
        # signed arithmetic: short of memory -> 0 (Katalyst's uint64 wraps and gives the whole NUMA)
        result[numa] = int(min(max(value - reserved_avg - watermark_avg, 0), totals.get(numa, 0)))
    return result


def guard_limit_for(used, total, free, scale_factor, zone=None, min_critical_watermark=DEFAULT_MIN_CRITICAL_WATERMARK,
                    critical_watermark_scale_factor=1.0):
    """``calculateReclaimedMemoryLimitFor``: what a reclaimed cgroup already uses plus free memory above the critical watermark.

    ``zone``: the NUMA's Normal zone from /proc/zoneinfo (``{"free_pages", "low_pages"}``) when present.
    """
    critical = float(total) * float(scale_factor) / 10000
    free = float(free)
    if zone:
        free = float(zone["free_pages"]) * PAGE_SIZE
        critical = float(zone["low_pages"]) * PAGE_SIZE
    critical = max(float(min_critical_watermark), critical * float(critical_watermark_scale_factor))
    return int(float(used) + max(free - critical, 0.0))


def memory_guard_limits(avail_numas, reclaimed_containers, numa_metrics, scale_factor, cgroup_numa_usage, zoneinfo=None,
                        numa_cgroups=(), enable=True, min_critical_watermark=DEFAULT_MIN_CRITICAL_WATERMARK,
                        critical_watermark_scale_factor=1.0):
    """The memory-guard plugin: ``{"root": {"limit", "high"}, "numa": {numa: {"limit", "high"}}}`` (-1 = unlimited).

    ``cgroup_numa_usage`` = ``{"root": {numa: bytes}, numa: {numa: bytes}}`` (``mem.total.numa.cgroup`` of the
    reclaimed root and of each ``<root>-<N>``); ``numa_cgroups``: NUMA ids whose ``<root>-<N>`` exists.
    """
    if not enable:
        return {"root": {"limit": -1, "high": -1}, "numa": {int(n): {"limit": -1, "high": -1} for n in numa_cgroups}}
    metrics = {int(n): v for n, v in (numa_metrics or {}).items()}
    zones = {int(n): v for n, v in (zoneinfo or {}).items()}

    def usage(cgroup, numa):
        values = cgroup_numa_usage.get(cgroup, cgroup_numa_usage.get(str(cgroup))) or {}
        value = values.get(numa, values.get(str(numa)))
        if value is None:
            raise ProvisionError("cgroup %s: mem.total.numa.cgroup of NUMA %s is missing" % (cgroup, numa))
        return value

    def limit(cgroup, numa):
        return guard_limit_for(usage(cgroup, numa), _reading(metrics, numa, "total"), _reading(metrics, numa, "free"),
                               scale_factor, zones.get(numa), min_critical_watermark, critical_watermark_scale_factor)

    bound = actual_numa_binding_numas(reclaimed_containers)
    root = sum(limit("root", numa) for numa in sorted(set(int(n) for n in avail_numas) - bound))
    out = {"root": {"limit": root, "high": int(float(root) * MEMORY_HIGH_RATIO)}, "numa": {}}
    for numa in sorted(int(n) for n in numa_cgroups):
        value = limit(numa, numa)
        out["numa"][numa] = {"limit": value, "high": int(float(value) * MEMORY_HIGH_RATIO)}
    return out


def reclaimed_cgroup_limits(provisions, numa_totals, reclaimed_requests=None, bound_numas=(), guard=None,
                            floor_bytes=DEFAULT_FLOOR_BYTES, floor_ratio=DEFAULT_FLOOR_RATIO):
    """The memory limits to write: ``{"numa": {numa: bytes}, "root": bytes, "floors": {numa: bytes}}``.

    Per NUMA: the provision (lowered to the guard's limit when a guard result is given), never below the
    floor ``max(floor_bytes, floor_ratio x NUMA total, requests of reclaimed pods on that NUMA)`` and never
    above the NUMA's total. A transient spike of online memory can shrink the provision to 0; the floor
    keeps reclaimed pods running (the kernel reclaims their cache first) instead of OOM-killing them.
    The root limit is the sum over NUMA nodes not taken by NUMA-bound reclaimed pods (``bound_numas``),
    like the memory guard's, and at least one floor.
    """
    totals = {int(n): int(v) for n, v in numa_totals.items()}
    requests = {int(n): int(v) for n, v in (reclaimed_requests or {}).items()}
    guard_numa = {int(n): v for n, v in ((guard or {}).get("numa") or {}).items()}
    limits, floors = {}, {}
    for numa in sorted(totals):
        floor = min(totals[numa], max(int(floor_bytes), int(totals[numa] * float(floor_ratio)), requests.get(numa, 0)))
        value = int(provisions.get(numa, provisions.get(str(numa), 0)))
        if numa in guard_numa and guard_numa[numa]["limit"] >= 0:
            value = min(value, int(guard_numa[numa]["limit"]))
        limits[numa] = min(max(value, floor), totals[numa])
        floors[numa] = floor
    bound = set(int(n) for n in bound_numas)
    shared = [n for n in sorted(limits) if n not in bound] or sorted(limits)
    root = sum(limits[n] for n in shared)
    guard_root = ((guard or {}).get("root") or {}).get("limit", -1)
    if guard_root is not None and guard_root >= 0:
        root = min(root, int(guard_root))
    root = max(root, max((floors[n] for n in shared), default=0))
    return {"numa": limits, "root": root, "floors": floors}


def desired_memory_limits(facts, limits, driver="cgroupfs", reclaim_root="/kubepods/besteffort"):
    """The ``desired`` dict of ``cgroups.plan_qos_cgroups`` that writes ``limits`` (from ``reclaimed_cgroup_limits``).

    cgroup v1: ``memory.limit_in_bytes`` (Katalyst's memory_high knob is a logged no-op there); v2: ``memory.max`` and
    ``memory.high`` = ``int64(float64(max) * 0.95)`` like the memory guard's (§3.4), in whole pages, both in
    ``cgroupv2``'s encodings (-1, unlimited: ``max``). The cgroups must exist (the QoS cgroup plan creates them), so
    ``create`` is False.
    """
    mode = facts["cgroup"]["mode"]
    if mode not in ("v1", "v2", "hybrid"):
        raise ProvisionError("no cgroup hierarchy found (cgroup mode %r)" % mode)
    version = "v2" if mode == "v2" else "v1"
    numa_ids = [n["id"] for n in facts["numa_nodes"]]
    root, per_numa = reclaim_paths(driver, reclaim_root, numa_ids)
    wanted = []

    def add(relative, value):
        if version == "v2":
            base = "/sys/fs/cgroup" + relative
            high = -1 if value < 0 else page_aligned(int(float(value) * MEMORY_HIGH_RATIO))
            files = {base + "/memory.max": cgroupv2.memory_max(-1 if value < 0 else page_aligned(value)),
                     base + "/memory.high": cgroupv2.memory_high(high)}
            files = {name: content for name, content in files.items() if content is not None}
        else:
            base = "/sys/fs/cgroup/memory" + relative
            files = {base + "/memory.limit_in_bytes": str(page_aligned(value))}
        wanted.append({"path": base, "create": False, "files": files})

    add(root, int(limits["root"]))
    for numa in numa_ids:
        if numa in limits["numa"]:
            add(per_numa[numa], int(limits["numa"][numa]))
    return {"version": version, "cgroups": wanted, "subtree_control": []}


def reserved_memory_per_numa(reserved_gb, numa_ids):
    """``--memory-resource-plugin-reserved`` (GB, default 0) split per NUMA node: ``ceil(GB / numNUMA)`` GiB each.

    Katalyst's QRM memory plugin takes this from each NUMA node's total to get the NUMA node's allocatable memory
    (``{numa: bytes}``). ValueError for a negative or non-numeric amount.
    """
    numa_ids = sorted(int(n) for n in numa_ids)
    if isinstance(reserved_gb, bool):
        raise ValueError("memory_resource_plugin_reserved_gb=%r: a number of GB is required" % (reserved_gb,))
    try:
        amount = float(reserved_gb)
    except (TypeError, ValueError):
        raise ValueError("memory_resource_plugin_reserved_gb=%r: a number of GB is required" % (reserved_gb,))
    if not math.isfinite(amount) or amount < 0:
        raise ValueError("memory_resource_plugin_reserved_gb=%r: a finite non-negative number is required" % (reserved_gb,))
    if not numa_ids:
        return {}
    per_numa = int(math.ceil(amount / len(numa_ids))) * GI
    return {numa: per_numa for numa in numa_ids}
