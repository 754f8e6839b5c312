# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""Readings for the OOM engine: the processes of a cgroup, their memory in pages and oom_score_adj.

Kept apart from ``oom.py`` (pure) because it reads /proc and /sys (through a SysFS).
"""

from __future__ import annotations

from . import oom
from .nodeinfo import parse_meminfo
from .sysfs import SysFSError


def cgroup_pids(fs, cgroup_dir):
    """PIDs in a cgroup directory and its descendants (kernel path, e.g. /sys/fs/cgroup/memory/kubepods/pod1)."""
    pids = []
    pending = [cgroup_dir]
    while pending:
        current = pending.pop()
        for line in fs.read_text(current + "/cgroup.procs", default="").split():
            if line.isdigit():
                pids.append(int(line))
        pending.extend("%s/%s" % (current, name) for name in fs.listdir(current) if fs.isdir("%s/%s" % (current, name)))
    return sorted(set(pids))


def process_reading(fs, pid):
    """{"pages": rss + swap pages, "oom_score_adj": int} or None when the process is gone."""
    try:
        rss_pages = int(fs.read_text("/proc/%d/statm" % pid).split()[1])
        swap_kib = 0
        for line in fs.read_text("/proc/%d/status" % pid, default="").splitlines():
            if line.startswith("VmSwap:"):
                swap_kib = int(line.split()[1])
        adj = int(fs.read_text("/proc/%d/oom_score_adj" % pid))
    except (SysFSError, ValueError, IndexError):
        return None
    return {"pages": rss_pages + swap_kib // 4, "oom_score_adj": adj}


def read_group(fs, name, priority, cgroup_dirs=(), pids=()):
    """A Group from the processes of ``cgroup_dirs`` (and explicit ``pids``) that still exist."""
    processes = {}
    for pid in sorted(set(list(pids) + [p for d in cgroup_dirs for p in cgroup_pids(fs, d)])):
        reading = process_reading(fs, pid)
        if reading is not None:
            processes[pid] = reading
    return oom.Group(name, priority, processes)


def node_totalpages(fs):
    """The node OOM domain: RAM plus swap, in pages."""
    meminfo = parse_meminfo(fs.read_text("/proc/meminfo", default=""))
    return (meminfo.get("MemTotal", 0) + meminfo.get("SwapTotal", 0)) // 4096


def applier(fs):
    def apply(change):
        if change.kind != "oom_score_adj":
            raise ValueError("not an oom_score_adj change: %r" % change)
        try:
            fs.write_text(change.target, str(change.after))
        except SysFSError as exc:
            if not fs.exists(change.target.rsplit("/", 1)[0]):
                return   # the process exited in the meantime: nothing to protect any more
            raise exc
    return apply


def cgroup_tree_ids(fs, cgroup_dir):
    """Cgroup ids (inodes) of a cgroup directory and every cgroup below it."""
    ids, pending = set(), [cgroup_dir]
    while pending:
        current = pending.pop()
        try:
            ids.add(fs.inode(current))
        except (SysFSError, OSError):
            continue
        pending.extend("%s/%s" % (current, name) for name in fs.listdir(current) if fs.isdir("%s/%s" % (current, name)))
    return ids


def memory_limited(fs, cgroup_dir):
    """Whether a memory cgroup has a hard limit (v2 memory.max, v1 memory.limit_in_bytes below 'unlimited')."""
    v2 = fs.read_text(cgroup_dir + "/memory.max", default=None)
    if v2 is not None:
        return v2.strip() != "max"
    v1 = fs.read_text(cgroup_dir + "/memory.limit_in_bytes", default="")
    return v1.strip().isdigit() and int(v1) < (1 << 62)


def cgroup_lineage(fs, cgroup_dir, hierarchy_root):
    """[(cgroup id, limited?)] from ``cgroup_dir`` up to (not including) the hierarchy root."""
    lineage, current = [], cgroup_dir.rstrip("/")
    root = hierarchy_root.rstrip("/")
    while current.startswith(root + "/"):
        try:
            lineage.append((fs.inode(current), memory_limited(fs, current)))
        except (SysFSError, OSError):
            pass
        current = current.rsplit("/", 1)[0]
    return lineage
