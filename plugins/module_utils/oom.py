# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""Strict OOM kill order on stock kernels: ``oom_score_adj`` values that make the kernel's badness
order equal the pods' OOM priority order, whatever their sizes.

The kernel (mm/oom_kill.c ``oom_badness``) scores a task as
``points = rss + swap + page tables (pages) + oom_score_adj * (totalpages / 1000)`` (integer division;
-1000 exempts the task) and kills the highest score; a later task with equal points wins the tie.
The kubelet derives ``oom_score_adj`` from the QoS class and memory request, so a big low-priority
pod can outlive a small high-priority one. Here every priority *tier* (pods with the same priority)
gets an adjustment band so that the smallest process of a lower tier still scores above the largest
process of every higher tier, plus a safety margin for usage growth. The plan is recomputed when
pods come and go, when processes appear, or when usage shifts enough to break the order
(``order_holds``).
"""

from __future__ import annotations

from .qos import TOP_OOM_PRIORITY
from .reconcile import Plan

OOM_SCORE_ADJ_MIN = -1000
OOM_SCORE_ADJ_MAX = 1000


class Group:
    """One OOM-priority unit (a container or pod): its priority and its processes' usage in pages."""

    __slots__ = ("name", "priority", "processes")

    def __init__(self, name, priority, processes):
        self.name = name
        self.priority = int(priority)
        # processes: {pid: {"pages": int, "oom_score_adj": int}}
        self.processes = dict(processes)

    def pages(self):
        return [p["pages"] for p in self.processes.values()]


def badness(pages, adj, totalpages):
    """The kernel's points for one task (None for an exempt task)."""
    if adj == OOM_SCORE_ADJ_MIN:
        return None
    return pages + adj * (totalpages // 1000)


def tiers(groups):
    """Groups bucketed by priority, highest priority (most protected) first."""
    by_priority = {}
    for group in groups:
        if group.processes:
            by_priority.setdefault(group.priority, []).append(group)
    return [(priority, by_priority[priority]) for priority in sorted(by_priority, reverse=True)]


def _margin(pages, margin_pages, margin_ratio):
    return margin_pages + int(pages * margin_ratio)


def compute_adjustments(groups, totalpages, negative_allowed, margin_pages=4096, margin_ratio=0.1):
    """Choose an ``oom_score_adj`` per group.

    Returns ``(adj_by_group_name, warnings)``. ``negative_allowed`` says whether the range goes below 0
    (needs CAP_SYS_RESOURCE); without it the non-negative band is used and "never kill" (priority 300)
    cannot be exempted, which is reported.
    """
    unit = totalpages // 1000
    warnings = []
    if unit == 0:
        warnings.append("OOM domain of %d pages is too small for oom_score_adj to matter (it scales by totalpages/1000)" % totalpages)
    low_bound = OOM_SCORE_ADJ_MIN + 1 if negative_allowed else 0
    adjustments = {}
    previous_max_points = None   # highest score among the more protected tiers so far
    previous_adj = low_bound
    ranked = tiers(groups)
    spread = [t for t in ranked if t[0] < TOP_OOM_PRIORITY or not negative_allowed]
    for priority, members in ranked:
        if priority >= TOP_OOM_PRIORITY:
            if negative_allowed:
                for group in members:
                    adjustments[group.name] = OOM_SCORE_ADJ_MIN
                continue
            warnings.append("priority %d (never kill) cannot be exempted without CAP_SYS_RESOURCE; using oom_score_adj %d"
                            % (priority, low_bound))
        pages = [p for group in members for p in group.pages()]
        smallest, largest = min(pages), max(pages)
        # Spread the tiers evenly over the range: the wider the gaps, the more growth the order survives
        # between two recomputations (with two tiers the gap is the whole domain: nothing can overtake).
        index = spread.index((priority, members)) if (priority, members) in spread else 0
        adj = max(previous_adj, low_bound + (OOM_SCORE_ADJ_MAX - low_bound) * index // max(len(spread) - 1, 1))
        if previous_max_points is not None and unit:
            # smallest + adj*unit must exceed the more protected tiers' highest score by the margin
            needed = previous_max_points + _margin(largest, margin_pages, margin_ratio) + 1 - smallest
            adj = max(adj, -(-needed // unit))
        if adj > OOM_SCORE_ADJ_MAX:
            warnings.append("strict order impossible for priority %d: needs oom_score_adj %d, above %d; keeping the best order"
                            % (priority, adj, OOM_SCORE_ADJ_MAX))
            adj = OOM_SCORE_ADJ_MAX
        for group in members:
            adjustments[group.name] = adj
        previous_adj = adj
        top = largest + adj * unit
        previous_max_points = top if previous_max_points is None else max(previous_max_points, top)
    return adjustments, warnings


def inversions(groups, adjustments, totalpages):
    """Pairs (killed-first, survivor) where a higher-priority group would die before a lower one."""
    scored = []
    for group in groups:
        for pages in group.pages():
            points = badness(pages, adjustments.get(group.name, 0), totalpages)
            if points is not None:
                scored.append((points, group))
    found = []
    for points, group in scored:
        for other_points, other in scored:
            if other.priority < group.priority and other_points <= points:
                found.append((group.name, other.name))
    return sorted(set(found))


def order_holds(groups, adjustments, totalpages):
    """True when the current usage still gives the strict priority order (no recompute needed)."""
    return not inversions(groups, adjustments, totalpages)


def plan_oom_score_adj(groups, totalpages, negative_allowed, margin_pages=4096, margin_ratio=0.1):
    """The Plan writing ``/proc/<pid>/oom_score_adj`` for every process whose value differs."""
    adjustments, warnings = compute_adjustments(groups, totalpages, negative_allowed, margin_pages, margin_ratio)
    plan = Plan(warnings=warnings)
    for group in sorted(groups, key=lambda g: g.name):
        wanted = adjustments.get(group.name)
        if wanted is None:
            continue
        for pid, process in sorted(group.processes.items()):
            plan.set_if_different("oom_score_adj", "/proc/%d/oom_score_adj" % pid, process.get("oom_score_adj"), wanted,
                                  "%s priority %d" % (group.name, group.priority), {"pid": pid, "group": group.name})
    for first, survivor in inversions(groups, adjustments, totalpages):
        plan.warn("priority inversion left: %s would be killed before lower-priority %s" % (first, survivor))
    return plan, adjustments


def kubelet_oom_score_adj(qos_class, memory_request_bytes, memory_capacity_bytes, critical=False):
    """Upstream kubelet's formula (pkg/kubelet/qos/policy.go), for comparison."""
    if critical or qos_class == "Guaranteed":
        return -997
    if qos_class == "BestEffort":
        return 1000
    adj = 1000 - (1000 * memory_request_bytes) // memory_capacity_bytes
    if adj < 3:
        return 3
    if adj == 1000:
        return 999
    return adj


def is_priority_inversion(victim_priority, live_priorities):
    """A kill is an inversion when a strictly lower-priority group in the same domain was alive."""
    return any(priority < victim_priority for priority in live_priorities)
