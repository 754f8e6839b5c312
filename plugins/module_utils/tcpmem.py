# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""TCP memory per container on cgroup v1: ``memory.kmem.tcp.limit_in_bytes`` from the container's own limit.

Katalyst (node spec §5.1) sums the memory limits of all containers of a pod and writes that pod total
into every container's TCP limit; we use each container's own limit, page aligned and clamped the
same way. A cgroup ratio of 0 turns the per-container limits off (Katalyst: raw ratio 0 stops before
any container), and a container whose current limit does not parse is skipped and reported, not
overwritten (Katalyst has no reading for it and skips it). On cgroup v2 TCP buffers are charged to
``memory.max`` already, so there is nothing to set.
"""

from __future__ import annotations

import re

from .reconcile import Plan

PAGE_SIZE = 4096
MIN_TCP_LIMIT = 2147483648
MAX_TCP_LIMIT = 9223372036854767616
UNLIMITED_V1 = 9223372036854771712
TCP_LIMIT_FILE = "memory.kmem.tcp.limit_in_bytes"
V2_UNSUPPORTED = "TCP memory limits per container are not supported on cgroup v2: TCP buffers are charged to memory.max"
DISABLED = "tcp_memory_cgroup_ratio is 0: no per-container TCP memory limits are written"
_BYTE_COUNT = re.compile(r"[0-9]+")


def container_tcp_limit(memory_limit_bytes, cgroup_ratio=100):
    """The TCP limit for one container: ratio percent of its own limit, page aligned, clamped [2 GiB, max].

    A ratio of 0 means no limit at all (see ``plan_tcp_limits``); callers check that first."""
    ratio = min(max(int(cgroup_ratio), 20), 200)
    wanted = memory_limit_bytes // 100 * ratio
    aligned = (wanted + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE
    return int(min(max(aligned, MIN_TCP_LIMIT), MAX_TCP_LIMIT))


def cgroup_limits_enabled(cgroup_ratio):
    """False for a cgroup ratio of 0: no per-container TCP limits at all (any other value is clamped into [20, 200])."""
    return int(cgroup_ratio) != 0


def parse_tcp_limit(content):
    """``memory.kmem.tcp.limit_in_bytes`` content -> bytes; None when it is not a plain unsigned integer."""
    text = content.strip()
    return int(text) if _BYTE_COUNT.fullmatch(text) else None


def plan_tcp_limits(cgroup_version, containers, cgroup_ratio=100):
    """``containers``: [{path (v1 memory cgroup dir), memory_limit_bytes, tcp_limit_content}] -> (Plan, report).

    ``tcp_limit_content`` is the current content of the container's ``memory.kmem.tcp.limit_in_bytes`` (None: no
    such file). Content that does not parse is left alone: that container is listed in ``report["unparsable"]`` as
    {file, content} and the others go on. A ``cgroup_ratio`` of 0 writes nothing (``report["enabled"]`` False)."""
    plan = Plan()
    if not cgroup_limits_enabled(cgroup_ratio):
        return plan, {"supported": cgroup_version != "v2", "enabled": False, "reason": DISABLED, "unparsable": []}
    if cgroup_version == "v2":
        plan.warn(V2_UNSUPPORTED)
        return plan, {"supported": False, "enabled": True, "reason": V2_UNSUPPORTED, "unparsable": []}
    unparsable = []
    for container in containers:
        limit = container.get("memory_limit_bytes")
        if not limit or limit >= UNLIMITED_V1:
            continue   # no memory limit: nothing to derive the TCP limit from
        target = container["path"] + "/" + TCP_LIMIT_FILE
        content = container.get("tcp_limit_content")
        current = None if content is None else parse_tcp_limit(content)
        if content is not None and current is None:
            unparsable.append({"file": target, "content": content})
            continue   # Katalyst has no reading for this container and skips it; so do we
        wanted = container_tcp_limit(limit, cgroup_ratio)
        if current != wanted:
            plan.add("cgroup_file", target, "set", None if current is None else str(current), str(wanted),
                     "TCP memory from the container's own limit")
    return plan, {"supported": True, "enabled": True, "unparsable": unparsable}
