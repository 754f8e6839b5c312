# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""Cgroup file contents for Katalyst's MemoryData / CPUData / CPUSetData, on cgroup v1 and v2 (node spec §1.4).

Pure: a data dict in, ``{file name: content}`` out, in the order Katalyst's ``ApplyMemory`` / ``ApplyCPU`` /
``ApplyCPUSet`` (``pkg/util/cgroup/manager/v{1,2}/fs_linux.go``) write them. A field whose rule says "not written"
(usually 0) is left out. ``plan_file_writes`` turns wanted contents plus what the files hold now into write-if-changed
Changes (Katalyst compares the trimmed old and new text).

Data dict keys are the Go field names in snake case: memory ``limit_in_bytes``, ``soft_limit_in_bytes``,
``min_in_bytes``, ``high_in_bytes``, ``tcp_mem_limit_in_bytes``, ``wmark_ratio``, ``swap_max_in_bytes``; cpu
``shares``, ``cpu_period``, ``cpu_quota``, ``cpu_idle`` (bool or None), ``cpu_burst`` (int or None); cpuset ``cpus``,
``mems``, ``migrate``. Missing keys mean the Go zero value.

Where Katalyst would write a value the kernel refuses (cpu.weight of 1 share wraps around in runc's uint64 formula,
``memory.max`` of -2, a negative period), we raise CgroupDataError naming the field and the value instead.
"""

from __future__ import annotations

from .cgroups import shares_to_weight
from .reconcile import Plan

V1 = "v1"
V2 = "v2"
VERSIONS = (V1, V2)
DEFAULT_CPU_PERIOD = 100000
MIN_SHARES = 2
MAX_SHARES = 262144
_INT64_MAX = (1 << 63) - 1
_UINT64_MAX = (1 << 64) - 1

MEMORY_FIELDS = ("limit_in_bytes", "soft_limit_in_bytes", "min_in_bytes", "high_in_bytes", "tcp_mem_limit_in_bytes",
                 "wmark_ratio", "swap_max_in_bytes")
CPU_FIELDS = ("shares", "cpu_period", "cpu_quota", "cpu_idle", "cpu_burst")
CPUSET_FIELDS = ("cpus", "mems", "migrate")


class CgroupDataError(ValueError):
    """A data value no cgroup file can take; the message names the field and the value."""


def _int(name, value, low=-_INT64_MAX - 1, high=_INT64_MAX):
    if isinstance(value, bool) or not isinstance(value, int):
        raise CgroupDataError("%s=%r: an integer is required" % (name, value))
    if not low <= value <= high:
        raise CgroupDataError("%s=%r is out of range %d..%d" % (name, value, low, high))
    return value


def cpu_weight(shares):
    """v2 ``cpu.weight`` for cpu shares (runc 1.1.6 ``ConvertCPUSharesToCgroupV2Value``); None for 0 (not written)."""
    _int("shares", shares, 0, _UINT64_MAX)
    if shares == 0:
        return None
    if not MIN_SHARES <= shares <= MAX_SHARES:
        # runc's uint64 formula wraps for 1 share and gives a weight above 10000 past 262144: the kernel refuses both.
        raise CgroupDataError("shares=%r is out of range %d..%d" % (shares, MIN_SHARES, MAX_SHARES))
    return str(shares_to_weight(shares))


def cpu_max(quota, period):
    """v2 ``cpu.max``: ``"<quota|max> <period>"``; quota <= 0 is ``max``, period 0 is 100000; None when both are 0."""
    _int("cpu_quota", quota)
    _int("cpu_period", period, 0, _UINT64_MAX)
    if quota == 0 and period == 0:
        return None
    return "%s %d" % (quota if quota > 0 else "max", period or DEFAULT_CPU_PERIOD)


def memory_max(limit):
    """v2 ``memory.max``: -1 is ``max``, 0 is not written (None)."""
    _int("limit_in_bytes", limit, -1)
    if limit == 0:
        return None
    return "max" if limit == -1 else str(limit)


def memory_limit_in_bytes(limit):
    """v1 ``memory.limit_in_bytes``: written as the number (-1 means unlimited to the kernel), 0 is not written."""
    _int("limit_in_bytes", limit, -1)
    return None if limit == 0 else str(limit)


def memory_high(high):
    """v2 ``memory.high``: negative is ``max``, 0 is not written."""
    _int("high_in_bytes", high)
    if high == 0:
        return None
    return "max" if high < 0 else str(high)


def positive_only(name, value):
    """Fields written only when > 0 (``memory.low`` / ``memory.soft_limit_in_bytes``, ``memory.min``, the v1 TCP limit)."""
    _int(name, value)
    return str(value) if value > 0 else None


def memory_swap_max(swap):
    """v2 ``memory.swap.max``: negative is ``0`` (swap disabled), 0 is not written."""
    _int("swap_max_in_bytes", swap)
    if swap == 0:
        return None
    return str(max(swap, 0))


def _nonzero(name, value, low=-_INT64_MAX - 1, high=_INT64_MAX):
    _int(name, value, low, high)
    return None if value == 0 else str(value)


def _idle(value):
    if value is None:
        return None
    if not isinstance(value, bool):
        raise CgroupDataError("cpu_idle=%r: true, false or None is required" % (value,))
    return "1" if value else "0"


def _burst(value):
    return None if value is None else str(_int("cpu_burst", value, 0, _UINT64_MAX))


def _text(name, value):
    if not isinstance(value, str):
        raise CgroupDataError("%s=%r: a string is required" % (name, value))
    return value or None


def _fields(data, allowed, what):
    data = dict(data or {})
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise CgroupDataError("unknown %s field(s) %s (known: %s)" % (what, ", ".join(unknown), ", ".join(allowed)))
    return data


def memory_files(version, data):
    """MemoryData -> {file: content} for ``version`` (``v1`` or ``v2``)."""
    data = _fields(data, MEMORY_FIELDS, "memory")
    get = data.get
    if version == V1:
        files = [("memory.limit_in_bytes", memory_limit_in_bytes(get("limit_in_bytes", 0))),
                 ("memory.soft_limit_in_bytes", positive_only("soft_limit_in_bytes", get("soft_limit_in_bytes", 0))),
                 ("memory.kmem.tcp.limit_in_bytes", positive_only("tcp_mem_limit_in_bytes", get("tcp_mem_limit_in_bytes", 0))),
                 ("memory.wmark_ratio", _nonzero("wmark_ratio", get("wmark_ratio", 0), -(1 << 31), (1 << 31) - 1))]
    else:
        files = [("memory.max", memory_max(get("limit_in_bytes", 0))),
                 ("memory.low", positive_only("soft_limit_in_bytes", get("soft_limit_in_bytes", 0))),
                 ("memory.min", positive_only("min_in_bytes", get("min_in_bytes", 0))),
                 ("memory.high", memory_high(get("high_in_bytes", 0))),
                 ("memory.wmark_ratio", _nonzero("wmark_ratio", get("wmark_ratio", 0), -(1 << 31), (1 << 31) - 1)),
                 ("memory.swap.max", memory_swap_max(get("swap_max_in_bytes", 0)))]
        # v1-only fields given on v2 are ignored, as Katalyst's v2 manager does (the TCP limit is inside memory.max there).
    return {name: value for name, value in files if value is not None}


def cpu_files(version, data):
    """CPUData -> {file: content} for ``version``."""
    data = _fields(data, CPU_FIELDS, "cpu")
    get = data.get
    if version == V1:
        files = [("cpu.shares", _nonzero("shares", get("shares", 0), 0, _UINT64_MAX)),
                 ("cpu.cfs_period_us", _nonzero("cpu_period", get("cpu_period", 0), 0, _UINT64_MAX)),
                 ("cpu.cfs_quota_us", _nonzero("cpu_quota", get("cpu_quota", 0))),
                 ("cpu.idle", _idle(get("cpu_idle"))),
                 ("cpu.cfs_burst_us", _burst(get("cpu_burst")))]
    else:
        files = [("cpu.weight", cpu_weight(get("shares", 0))),
                 ("cpu.max", cpu_max(get("cpu_quota", 0), get("cpu_period", 0))),
                 ("cpu.idle", _idle(get("cpu_idle"))),
                 ("cpu.max.burst", _burst(get("cpu_burst")))]
    return {name: value for name, value in files if value is not None}


def cpuset_files(data):
    """CPUSetData -> {file: content}; the same names on v1 and v2. Any non-empty ``migrate`` writes ``1``."""
    data = _fields(data, CPUSET_FIELDS, "cpuset")
    files = [("cpuset.cpus", _text("cpus", data.get("cpus", ""))),
             ("cpuset.memory_migrate", "1" if _text("migrate", data.get("migrate", "")) else None),
             ("cpuset.mems", _text("mems", data.get("mems", "")))]
    return {name: value for name, value in files if value is not None}


def cgroup_files(version, memory=None, cpu=None, cpuset=None):
    """All files one Apply* call set would write: memory, then cpu, then cpuset, each in Katalyst's order."""
    if version not in VERSIONS:
        raise CgroupDataError("cgroup version %r: expected v1 or v2" % (version,))
    files = {}
    if memory is not None:
        files.update(memory_files(version, memory))
    if cpu is not None:
        files.update(cpu_files(version, cpu))
    if cpuset is not None:
        files.update(cpuset_files(cpuset))
    return files


def plan_file_writes(directory, wanted, current, reason="", plan=None):
    """Write-if-changed: a ``cgroup_file`` set Change for every wanted file whose current text differs once trimmed.

    ``current`` maps file name to its text (None or absent: unknown, so it is written). Returns the Plan (``plan`` when
    given, extended in place).
    """
    plan = plan if plan is not None else Plan()
    for name, content in wanted.items():
        before = current.get(name)
        if before is None or before.strip() != content.strip():
            plan.add("cgroup_file", "%s/%s" % (directory.rstrip("/"), name), "set", before, content, reason)
    return plan
