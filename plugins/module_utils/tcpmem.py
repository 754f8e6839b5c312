# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""TCP memory per container on cgroup v1: ``memory.kmem.tcp.limit_in_bytes`` from the container's own limit.

Katalyst (node spec §5.1) sums the memory limits of all containers of a pod and writes that pod total
into every container's TCP limit; we use each container's own limit, page aligned and clamped the
same way. On cgroup v2 TCP buffers are charged to ``memory.max`` already, so there is nothing to set.
"""

from __future__ import annotations

from .reconcile import Plan

PAGE_SIZE = 4096
MIN_TCP_LIMIT = 2147483648
MAX_TCP_LIMIT = 9223372036854767616
UNLIMITED_V1 = 9223372036854771712
V2_UNSUPPORTED = "TCP memory limits per container are not supported on cgroup v2: TCP buffers are charged to memory.max"


def container_tcp_limit(memory_limit_bytes, cgroup_ratio=100):
    """The TCP limit for one container: ratio percent of its own limit, page aligned, clamped [2 GiB, max]."""
    ratio = min(max(int(cgroup_ratio), 20), 200)
    wanted = memory_limit_bytes // 100 * ratio
    aligned = (wanted + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE
    return int(min(max(aligned, MIN_TCP_LIMIT), MAX_TCP_LIMIT))


def plan_tcp_limits(cgroup_version, containers, cgroup_ratio=100):
    """``containers``: [{path (v1 memory cgroup dir), memory_limit_bytes, tcp_limit_bytes}] -> (Plan, report)."""
    plan = Plan()
    if cgroup_version == "v2":
        plan.warn(V2_UNSUPPORTED)
        return plan, {"supported": False, "reason": V2_UNSUPPORTED}
    for container in containers:
        limit = container.get("memory_limit_bytes")
        if not limit or limit >= UNLIMITED_V1:
            continue   # no memory limit: nothing to derive the TCP limit from
        wanted = container_tcp_limit(limit, cgroup_ratio)
        current = container.get("tcp_limit_bytes")
        if current != wanted:
            plan.add("cgroup_file", container["path"] + "/memory.kmem.tcp.limit_in_bytes", "set",
                     None if current is None else str(current), str(wanted), "TCP memory from the container's own limit")
    return plan, {"supported": True}
