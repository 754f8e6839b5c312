# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""``vm.watermark_scale_factor`` as Katalyst's host watermark handler sets it (node spec §5.2, every 300 s).

Source: ``qrm-plugins/memory/handlers/hostwatermark/hostwatermark_linux.go``. Order of the steps matters and is kept:
explicit value -> as is; reserved 0 -> skip; auto = ceil(reserved bytes * 10000 / first NUMA total) in [1, 10000];
hugepage adjustment (integer, may reach 0); 0 -> skip; then the [10, 500] clamp (auto values only).

Deliberate deviations: Katalyst's uint64 ``MemTotal - HugePages_Total*Hugepagesize`` wraps around when huge pages
exceed MemTotal; we treat that as nothing left (0, hence skip). A MemTotal of 0 (Katalyst divides by it) leaves
the value unadjusted. A negative explicit value or reserve is refused (ValueError).
"""

from __future__ import annotations

from .nodeinfo import parse_meminfo
from .reconcile import Plan

SYSCTL = "vm.watermark_scale_factor"
PERIOD_SECONDS = 300
SCALE_DENOMINATOR = 10000
AUTO_MIN = 10
AUTO_MAX = 500


def _non_negative_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("%s=%r: a non-negative integer is required" % (name, value))
    return value


def auto_scale_factor(reserved_gb, first_numa_total_bytes):
    """``ceil((reserved_gb << 30) * 10000 / total)`` capped to [1, 10000]. ValueError when the total is 0 or missing."""
    reserved = _non_negative_int("reserved_gb", reserved_gb) << 30
    if isinstance(first_numa_total_bytes, bool) or not isinstance(first_numa_total_bytes, int) or first_numa_total_bytes <= 0:
        raise ValueError("first NUMA node's mem.total is %r: cannot derive %s from a reserve" % (first_numa_total_bytes, SYSCTL))
    scale = (reserved * SCALE_DENOMINATOR + first_numa_total_bytes - 1) // first_numa_total_bytes
    return min(max(scale, 1), SCALE_DENOMINATOR)


def hugepage_adjusted(scale, meminfo):
    """``(MemTotal - HugePages_Total*Hugepagesize) * scale / MemTotal`` (integer), or ``scale`` when meminfo lacks a field.

    ``meminfo``: /proc/meminfo text or ``nodeinfo.parse_meminfo``'s dict (bytes; the ratio is the same as in kB).
    """
    values = parse_meminfo(meminfo) if isinstance(meminfo, str) else dict(meminfo or {})
    total, count, size = values.get("MemTotal"), values.get("HugePages_Total"), values.get("Hugepagesize")
    if total is None or count is None or size is None or total <= 0:
        return scale
    return max(total - count * size, 0) * scale // total


def watermark_scale_factor(explicit, reserved_gb, first_numa_total_bytes, meminfo):
    """The value to write, or None to leave the sysctl alone.

    ``explicit`` (``--qrm-memory-vm-watermark-scale-factor``) non-zero is returned as is; otherwise
    ``reserved_gb`` (``--qrm-memory-kswapd-watermark-reserved-gb``) 0 means skip; otherwise the auto value.
    """
    if _non_negative_int("explicit", explicit):
        return explicit
    if not _non_negative_int("reserved_gb", reserved_gb):
        return None
    scale = hugepage_adjusted(auto_scale_factor(reserved_gb, first_numa_total_bytes), meminfo)
    if scale == 0:
        return None
    return min(max(scale, AUTO_MIN), AUTO_MAX)


def plan_watermark(current_text, wanted):
    """A ``sysctl`` set Change when the current value differs from ``wanted`` (None: nothing to do).

    Content that is not an integer (or None: unreadable) is replaced, and the Change says why.
    """
    plan = Plan()
    if wanted is None:
        return plan
    try:
        current = int((current_text or "").strip())
    except ValueError:
        plan.add("sysctl", SYSCTL, "set", current_text, str(wanted),
                 "current content %r is not an integer" % (current_text,))
        return plan
    if current != wanted:
        plan.add("sysctl", SYSCTL, "set", current_text.strip(), str(wanted), "host watermark: %d -> %d" % (current, wanted))
    return plan
