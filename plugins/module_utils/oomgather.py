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
        pending.extend("%s/%s" % (current, name) for name in fs.subdirs(current))
    return sorted(set(pids))


def own_processes(fs, container_dirs, pod_pids):
    """The processes a pod runs of its own. ``container_dirs``: the cgroup directories of the containers the kubelet
    reports (none when it reports no container id): only their processes count, as the pod sandbox's pause process, in
    a cgroup of its own beside them, outlives containers that were all OOM-killed. Without them: ``pod_pids``, the
    processes of the whole pod cgroup."""
    if not container_dirs:
        return set(pod_pids)
    return {pid for directory in container_dirs if fs.isdir(directory) for pid in cgroup_pids(fs, directory)}


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
        pending.extend("%s/%s" % (current, name) for name in fs.subdirs(current))
    return ids


def memory_limit_bytes(fs, cgroup_dir):
    """A memory cgroup's hard limit in bytes (v2 memory.max, v1 memory.limit_in_bytes), None when unlimited."""
    # read_text's default=None means "raise when absent": on v1 there is no memory.max, so ask first
    if fs.exists(cgroup_dir + "/memory.max"):
        v2 = fs.read_text(cgroup_dir + "/memory.max", default="").strip()
        return int(v2) if v2.isdigit() else None
    v1 = fs.read_text(cgroup_dir + "/memory.limit_in_bytes", default="").strip()
    return int(v1) if v1.isdigit() and int(v1) < (1 << 62) else None


def memory_limited(fs, cgroup_dir):
    """Whether a memory cgroup has a hard limit."""
    return memory_limit_bytes(fs, cgroup_dir) is not None


def shared_domain_pages(fs, pod_cgroup_dirs, hierarchy_root, node_pages):
    """The smallest OOM domain the pods can run out of together: the node, or the lowest limit of an ancestor of a
    pod's cgroup (a QoS tier: kubepods/burstable, the reclaimed root). The kernel scales oom_score_adj by the domain's
    pages, so a plan made for the node's pages leaves gaps too narrow for an OOM inside a tier; gaps made for the
    smallest domain hold in every larger one. A pod's own limit is left out: only its own processes die of it."""
    smallest = node_pages
    root = hierarchy_root.rstrip("/")
    seen = set()     # the pods share their few ancestors: each limit is read once
    for cgroup_dir in pod_cgroup_dirs:
        current = cgroup_dir.rstrip("/").rsplit("/", 1)[0]
        while current.startswith(root + "/") and current not in seen:
            seen.add(current)
            limit = memory_limit_bytes(fs, current)
            if limit is not None:
                smallest = min(smallest, limit // 4096)
            current = current.rsplit("/", 1)[0]
    return smallest


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


class MembershipCache:
    """Who is in a set of cgroup trees, read cheaply enough for every pass of a 1 s loop: the fingerprint of the
    trees' structure (cgroup ids) and ``cgroup.procs``, read in full every time, and per process its ``statm`` and
    ``oom_score_adj``: a new process is read at once, the others in turns (each one every ``recheck_every`` calls).

    A directory is listed again only when its (inode, link count) changed: cgroupfs (kernfs), like ext4 and tmpfs,
    counts a directory's subdirectories in its link count, and a child that went away is caught by its own stat, so
    equal pairs mean the same children. File systems that do not count (link count below 2) are listed every time.
    """

    def __init__(self, recheck_every=1):
        self.recheck_every = max(1, int(recheck_every))
        self.children = {}      # cgroup dir -> ((inode, nlink), [child dirs])
        self.readings = {}      # pid (bytes) -> (statm, oom_score_adj) as last read
        self.turn = 0

    def tree(self, fs, top):
        """``([(dir, inode)], {dir: listing})`` of ``top`` and every cgroup below it (nothing when ``top`` is gone)."""
        found, pending, seen = [], [top], {}
        while pending:
            current = pending.pop()
            stat = fs.stat(current)
            if stat is None:
                continue
            key = (stat.st_ino, stat.st_nlink)
            cached = self.children.get(current)
            if cached is None or cached[0] != key or stat.st_nlink < 2:
                cached = (key, ["%s/%s" % (current, name) for name in fs.subdirs(current)])
            seen[current] = cached
            found.append((current, stat.st_ino))
            pending.extend(cached[1])
        return found, seen

    def forget_readings(self):
        """Read every process again next time (after a pass that wrote their ``oom_score_adj``)."""
        self.readings = {}

    def fingerprint(self, fs, tops):
        """A value that changes when a process enters or leaves one of the trees under ``tops`` or a cgroup is created
        or removed there (seen on the call after the change), or one of their processes changes its resident size or
        ``oom_score_adj`` (seen within ``recheck_every`` calls)."""
        seen, dirs, pids = {}, [], []
        for top in tops:
            found, listed = self.tree(fs, top)
            seen.update(listed)
            for directory, inode in found:
                procs = fs.read_bytes(directory + "/cgroup.procs")
                dirs.append((directory, inode, procs))
                pids.extend(pid for pid in (procs or b"").split() if pid.isdigit())
        self.children = seen            # forget the trees of pods that are gone
        turn, every, readings = self.turn, self.recheck_every, {}
        self.turn = (turn + 1) % every
        for pid in pids:
            reading = self.readings.get(pid)
            if reading is None or int(pid) % every == turn:
                reading = (fs.read_bytes("/proc/%s/statm" % pid.decode(), 256), fs.read_bytes("/proc/%s/oom_score_adj" % pid.decode(), 64))
            readings[pid] = reading
        self.readings = readings
        return tuple(dirs), tuple(sorted(readings.items()))
