# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""The QoS cgroups colocation needs for reclaimed (offline) workloads, on cgroup v1 and v2.

Desired state: the reclaimed root (``/kubepods/besteffort`` by default, Katalyst's
``--reclaim-relative-root-cgroup-path``) with the reclaimed tier's CPU weight and optional memory
limit, plus one sibling per NUMA node ``<root>-<N>`` pinned to that NUMA node's CPUs and memory.
Katalyst only writes the per-NUMA cgroups if someone else created them; we create them.

Plans write only what differs. A record (``/var/lib/katalyst/managed-cgroups.json``) lists the
directories we created and the original values of files we changed, so ``state: absent`` removes
exactly what we added under the root it is given and restores the rest. The agent's loops and a
module run on the same node all update the record: ``converge`` holds a lock from reading it to
writing it, so none loses another's entries.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os

from .nodeinfo import format_cpu_list, parse_cpu_list
from .reconcile import Plan

RECORD_PATH = "/var/lib/katalyst/managed-cgroups.json"
RECORD_LOCK_PATH = "/var/lib/katalyst/managed-cgroups.lock"
V1_MAX = 9223372036854771712


class CgroupError(ValueError):
    """Bad input for the cgroup plan; the message names the key and the value."""


def shares_to_weight(shares):
    """runc 1.1.6 ConvertCPUSharesToCgroupV2Value (node spec §1.4)."""
    if shares == 0:
        return 0
    return 1 + ((shares - 2) * 9999) // 262142


def reclaim_paths(driver, reclaim_root, numa_ids):
    """Relative path of the reclaimed root and of each per-NUMA sibling."""
    if driver == "systemd":
        root = "/kubepods.slice/kubepods-besteffort.slice" if reclaim_root in ("/kubepods/besteffort", "") else reclaim_root
        base = root[:-len(".slice")] if root.endswith(".slice") else root
        return root, {numa: "%s-%d.slice" % (base, numa) for numa in numa_ids}
    return reclaim_root, {numa: "%s-%d" % (reclaim_root, numa) for numa in numa_ids}


PAGE_BYTES = 4096


def page_aligned(limit_bytes):
    """The kernel keeps memory limits in whole pages and reads them back rounded down: write what it will show."""
    return int(limit_bytes) // PAGE_BYTES * PAGE_BYTES


def desired_qos_cgroups(facts, driver="cgroupfs", reclaim_root="/kubepods/besteffort", cpu_shares=2, memory_limit_bytes=None,
                        reserved_cpus=""):
    """The cgroups to converge: [{path, create, files: {absolute file path: value}}] in creation order."""
    mode = facts["cgroup"]["mode"]
    if mode not in ("v1", "v2", "hybrid"):
        raise CgroupError("no cgroup hierarchy found (cgroup mode %r)" % mode)
    version = "v2" if mode == "v2" else "v1"
    if not isinstance(cpu_shares, int) or not 2 <= cpu_shares <= 262144:
        raise CgroupError("cpu_shares=%r is out of range (2-262144)" % (cpu_shares,))
    if memory_limit_bytes is not None and (not isinstance(memory_limit_bytes, int) or memory_limit_bytes < 4096 * 64):
        raise CgroupError("memory_limit_bytes=%r is out of range (at least 256 KiB)" % (memory_limit_bytes,))
    machine_cpus = set(parse_cpu_list(facts["cpus"]))
    try:
        reserved = set(parse_cpu_list(reserved_cpus))
    except ValueError as exc:
        raise CgroupError("reserved_cpus=%r: %s" % (reserved_cpus, exc))
    outside = reserved - machine_cpus
    if outside:
        raise CgroupError("reserved_cpus=%r names CPUs this machine does not have: %s (online: %s)"
                          % (reserved_cpus, format_cpu_list(outside), facts["cpus"]))
    numa_nodes = facts["numa_nodes"]
    root, per_numa = reclaim_paths(driver, reclaim_root, [n["id"] for n in numa_nodes])
    wanted = []

    def directory(relative, create, files):
        if version == "v2":
            wanted.append({"path": "/sys/fs/cgroup" + relative, "create": create,
                           "files": {"/sys/fs/cgroup%s/%s" % (relative, name): value for name, value in files.get("v2", {}).items()}})
        else:
            for controller, entries in sorted(files.get("v1", {}).items()):
                base = "/sys/fs/cgroup/%s%s" % (controller, relative)
                wanted.append({"path": base, "create": create,
                               "files": {"%s/%s" % (base, name): value for name, value in entries.items()}})

    root_files = {"v2": {"cpu.weight": str(shares_to_weight(cpu_shares))}, "v1": {"cpu": {"cpu.shares": str(cpu_shares)}}}
    if memory_limit_bytes is not None:
        root_files["v2"]["memory.max"] = str(page_aligned(memory_limit_bytes))
        root_files["v2"]["memory.high"] = str(page_aligned(memory_limit_bytes * 0.95))
        root_files["v1"]["memory"] = {"memory.limit_in_bytes": str(page_aligned(memory_limit_bytes))}
    directory(root, False, root_files)
    for numa in numa_nodes:
        cpus = sorted(set(parse_cpu_list(numa["cpus"])) - reserved)
        if not cpus:
            raise CgroupError("reserved_cpus=%r leaves NUMA node %d (CPUs %s) without CPUs" % (reserved_cpus, numa["id"], numa["cpus"]))
        pinned = {"cpuset.cpus": format_cpu_list(cpus), "cpuset.mems": str(numa["id"])}
        directory(per_numa[numa["id"]], True, {
            "v2": dict(pinned, **{"cpu.weight": str(shares_to_weight(cpu_shares))}),
            "v1": {"cpuset": pinned, "cpu": {"cpu.shares": str(cpu_shares)}, "memory": {}},
        })
    return {"version": version, "cgroups": wanted, "subtree_control": ["cpuset", "cpu", "memory"] if version == "v2" else []}


def _parent(path):
    return path.rsplit("/", 1)[0]


def read_cgroup_state(fs, desired):
    """What exists now: directories, file values, parents' subtree_control, and our record."""
    state = {"dirs": {}, "files": {}, "subtree": {}, "record": None}
    for cgroup in desired["cgroups"]:
        state["dirs"][cgroup["path"]] = fs.isdir(cgroup["path"])
        for path in cgroup["files"]:
            state["files"][path] = fs.read_text(path, default="").strip() if fs.exists(path) else None
        if desired["version"] == "v2":
            control = _parent(cgroup["path"]) + "/cgroup.subtree_control"
            state["subtree"][control] = fs.read_text(control, default="").split()
    text = fs.read_text(RECORD_PATH, default="")
    state["record"] = json.loads(text) if text else {"created": [], "original": {}}
    return state


def _same(current, wanted):
    if current is None:
        return False
    if current == wanted:
        return True
    try:   # cpusets print canonically ("0-3"), and v1 "max" limits are a big number
        return parse_cpu_list(current) == parse_cpu_list(wanted)
    except ValueError:
        return False


def plan_qos_cgroups(desired, current, state="present"):
    """The Plan that converges the QoS cgroups (``present``) or undoes what we did (``absent``)."""
    plan = Plan()
    record = current["record"]
    new_record = {"created": list(record.get("created", [])), "original": dict(record.get("original", {}))}
    if state == "absent":
        # only what belongs to these cgroups: the record may also hold another root's entries
        ours = set(c["path"] for c in desired["cgroups"])
        originals = {path: value for path, value in record.get("original", {}).items() if _parent(path) in ours}
        created = [path for path in record.get("created", []) if path in ours]
        for path, original in sorted(originals.items()):
            value = current["files"].get(path)
            if value is not None and not _same(value, original):
                plan.add("cgroup_file", path, "set", value, original, "restore the value we changed")
        for path in sorted(created, key=lambda p: -p.count("/")):
            plan.add("cgroup_dir", path, "delete", "present", None, "remove the cgroup we created")
        rest = {"created": [p for p in record.get("created", []) if p not in created],
                "original": {p: v for p, v in record.get("original", {}).items() if p not in originals}}
        if created or originals:
            if rest["created"] or rest["original"]:
                plan.add("record", RECORD_PATH, "set", record, rest, "forget what we managed here")
            else:
                plan.add("record", RECORD_PATH, "delete", record, None, "forget what we managed")
        return plan
    for control, enabled in sorted(current["subtree"].items()):
        missing = [c for c in desired["subtree_control"] if c not in enabled]
        if missing:
            plan.add("cgroup_subtree", control, "set", " ".join(enabled), " ".join(enabled + missing),
                     "enable %s for child cgroups" % ", ".join(missing), {"enable": missing})
    for cgroup in desired["cgroups"]:
        path = cgroup["path"]
        if not current["dirs"].get(path):
            if not cgroup["create"]:
                raise CgroupError("cgroup %s does not exist (is the kubelet running with this cgroup driver and root?)" % path)
            plan.add("cgroup_dir", path, "create", None, "present", "per-NUMA reclaimed cgroup")
            if path not in new_record["created"]:
                new_record["created"].append(path)
        for file_path, value in cgroup["files"].items():
            before = current["files"].get(file_path)
            if not _same(before, value):
                plan.add("cgroup_file", file_path, "set", before, value)
                if current["dirs"].get(path) and before is not None and file_path not in new_record["original"]:
                    new_record["original"][file_path] = before
    if plan.changed and new_record != record:
        plan.add("record", RECORD_PATH, "set", record, new_record, "remember what we created and changed")
    return plan


@contextlib.contextmanager
def record_lock(fs, create=True):
    """Exclusive use of the record between reading it and writing it (threads and processes alike: flock).

    ``create=False`` (check mode) takes no lock where the state directory does not exist yet (nothing to protect).
    """
    directory = fs.path(_parent(RECORD_LOCK_PATH))
    if not create and not os.path.isdir(directory):
        yield
        return
    os.makedirs(directory, exist_ok=True)
    descriptor = os.open(fs.path(RECORD_LOCK_PATH), os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)      # releases the lock


def converge(fs, desired, state="present", dry_run=False):
    """Read, plan and apply under the record lock; returns ``(plan, applied changes)``."""
    with record_lock(fs, create=not dry_run):
        plan = plan_qos_cgroups(desired, read_cgroup_state(fs, desired), state)
        return plan, plan.apply(applier(fs), dry_run=dry_run)


def applier(fs):
    """Apply one cgroup Change through ``fs`` (real kernel or a sandbox sysroot)."""
    fake_tree = fs.root != "/"

    def apply(change):
        if change.kind == "cgroup_dir":
            if change.action in ("create", "set") and change.after:
                fs.makedirs(change.target)
            else:
                if fake_tree:
                    # The kernel removes a cgroup's control files itself; a sandbox tree needs it done.
                    for name in fs.listdir(change.target):
                        if not fs.isdir("%s/%s" % (change.target, name)):
                            os.unlink(fs.path("%s/%s" % (change.target, name)))
                fs.rmdir(change.target)
        elif change.kind == "cgroup_file":
            fs.write_text(change.target, change.after)
        elif change.kind == "cgroup_subtree":
            enable = change.data.get("enable") or []
            if fake_tree:
                # A sandbox tree is a plain directory: store the resulting list the kernel would show.
                fs.write_text(change.target, change.after)
            elif change.after.split() != change.before.split() and enable:
                fs.write_text(change.target, " ".join("+" + c for c in enable))
        elif change.kind == "record":
            if change.after is None:
                if fs.exists(change.target):
                    os.unlink(fs.path(change.target))
            else:
                fs.makedirs(_parent(change.target))
                fs.write_text(change.target, json.dumps(change.after, indent=1, sort_keys=True))
        else:
            raise ValueError("not a cgroup change: %r" % change)
    return apply
