# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""Facts about a node: NUMA topology, cgroup mode and controllers, BPF, capabilities, kernel, kubelet.

Parsers are pure (text in, values out); ``gather(fs)`` reads everything through a SysFS, so the
same code describes a real node (``SysFS("/")``) and a sandbox node's sysroot.
"""

from __future__ import annotations

import re

CAP_SYS_RESOURCE = 24
# Above any kernel's NR_CPUS (8192 on x86_64 at most): a list naming more is junk, and expanding "0-99999999999" would
# take the process's memory and minutes.
MAX_CPU_ID = 1 << 16
CGROUP2_MAGIC_FS = "cgroup2"


def parse_cpu_list(text):
    """Kernel list syntax (``0-3,8,10-11``) to a sorted list of ints; ValueError on junk."""
    cpus = set()
    for part in (text or "").strip().split(","):
        part = part.strip()
        if not part:
            continue
        match = re.fullmatch(r"([0-9]+)(?:-([0-9]+))?", part)    # ASCII digits only, as the kernel
        if not match:
            raise ValueError("invalid CPU list %r" % text)
        low, high = int(match.group(1)), int(match.group(2) or match.group(1))
        if high < low:
            raise ValueError("invalid CPU range %r in %r" % (part, text))
        if high >= MAX_CPU_ID:
            raise ValueError("invalid CPU list %r: CPU ids go up to %d" % (text[:200], MAX_CPU_ID - 1))
        cpus.update(range(low, high + 1))
    return sorted(cpus)


def format_cpu_list(cpus):
    ids = sorted(set(cpus))
    ranges = []
    for cpu in ids:
        if ranges and cpu == ranges[-1][1] + 1:
            ranges[-1][1] = cpu
        else:
            ranges.append([cpu, cpu])
    return ",".join("%d" % a if a == b else "%d-%d" % (a, b) for a, b in ranges)


def parse_node_meminfo(text):
    """``Node N MemTotal: X kB`` lines to {field: bytes}."""
    values = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0] == "Node":
            values[parts[2].rstrip(":")] = int(parts[3]) * (1024 if len(parts) > 4 and parts[4] == "kB" else 1)
    return values


def parse_meminfo(text):
    """/proc/meminfo to {field: bytes} (HugePages_* counts stay counts)."""
    values = {}
    for line in (text or "").splitlines():
        name, _sep, rest = line.partition(":")
        parts = rest.split()
        if parts:
            values[name.strip()] = int(parts[0]) * (1024 if len(parts) > 1 and parts[1] == "kB" else 1)
    return values


def parse_mounts(text):
    """/proc/self/mounts to [{source, target, fstype, options}]."""
    mounts = []
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) >= 4:
            mounts.append({"source": parts[0], "target": parts[1], "fstype": parts[2], "options": parts[3].split(",")})
    return mounts


def cgroup_layout(mounts):
    """Cgroup mode (``v1``, ``v2`` or ``hybrid``) and the v1 controllers' mount points, from mounts."""
    v2_root = next((m["target"] for m in mounts if m["fstype"] == CGROUP2_MAGIC_FS and m["target"] == "/sys/fs/cgroup"), None)
    v1 = {}
    for mount in mounts:
        if mount["fstype"] == "cgroup":
            for option in mount["options"]:
                if option in ("cpu", "cpuacct", "cpuset", "memory", "pids", "blkio", "devices", "freezer", "hugetlb", "net_cls"):
                    v1[option] = mount["target"]
    unified = next((m["target"] for m in mounts if m["fstype"] == CGROUP2_MAGIC_FS and m["target"] != "/sys/fs/cgroup"), None)
    if v2_root:
        return {"mode": "v2", "root": v2_root, "v1_mounts": {}}
    if v1:
        return {"mode": "hybrid" if unified else "v1", "root": "/sys/fs/cgroup", "v1_mounts": v1, "unified": unified}
    return {"mode": "none", "root": None, "v1_mounts": {}}


def cap_eff_allows(status_text, capability):
    match = re.search(r"^CapEff:\s*([0-9a-fA-F]+)", status_text or "", re.MULTILINE)
    return bool(match) and bool(int(match.group(1), 16) & (1 << capability))


def parse_kubelet_cgroup_driver(config_text):
    match = re.search(r"^cgroupDriver:\s*['\"]?(\w+)", config_text or "", re.MULTILINE)
    return match.group(1) if match else "cgroupfs"


def gather(fs, bpf_probe=None):
    """All node facts as one dict (the ``ansible_facts.katalyst`` of node_facts)."""
    numa_ids = parse_cpu_list(fs.read_text("/sys/devices/system/node/online", default="0"))
    cpus = parse_cpu_list(fs.read_text("/sys/devices/system/cpu/online", default=""))
    sockets, siblings = {}, {}
    for cpu in cpus:
        base = "/sys/devices/system/cpu/cpu%d/topology/" % cpu
        sockets[cpu] = int(fs.read_text(base + "physical_package_id", default="0"))
        siblings[cpu] = fs.read_text(base + "thread_siblings_list", default=str(cpu))
    numa_nodes = []
    for numa in numa_ids:
        node_cpus = parse_cpu_list(fs.read_text("/sys/devices/system/node/node%d/cpulist" % numa, default=""))
        meminfo = parse_node_meminfo(fs.read_text("/sys/devices/system/node/node%d/meminfo" % numa, default=""))
        numa_nodes.append({"id": numa, "cpus": format_cpu_list(node_cpus), "cpu_count": len(node_cpus),
                           "socket": sockets.get(node_cpus[0], 0) if node_cpus else 0,
                           "memory_bytes": meminfo.get("MemTotal", 0), "memory_free_bytes": meminfo.get("MemFree", 0),
                           "inactive_file_bytes": meminfo.get("Inactive(file)", 0)})
    meminfo = parse_meminfo(fs.read_text("/proc/meminfo", default=""))
    mounts = parse_mounts(fs.read_text("/proc/self/mounts", default=""))
    layout = cgroup_layout(mounts)
    if layout["mode"] == "v2":
        controllers = fs.read_text("/sys/fs/cgroup/cgroup.controllers", default="").split()
    else:
        controllers = sorted(layout["v1_mounts"])
    bpffs = next((m["target"] for m in mounts if m["fstype"] == "bpf"), None)
    threads_per_core = max((len(parse_cpu_list(s)) for s in siblings.values()), default=1)
    return {
        "kernel": fs.read_text("/proc/sys/kernel/osrelease", default="unknown"),
        "cpus": format_cpu_list(cpus),
        "cpu_count": len(cpus),
        "sockets": sorted(set(sockets.values())),
        "threads_per_core": threads_per_core,
        "smt_siblings": sorted(set(siblings.values()), key=lambda s: parse_cpu_list(s)[0]),
        "numa_nodes": numa_nodes,
        "memory_bytes": meminfo.get("MemTotal", 0),
        "cgroup": {"mode": layout["mode"], "controllers": controllers, "v1_mounts": layout["v1_mounts"]},
        "bpffs": {"mounted": bpffs is not None, "path": bpffs},
        "bpf_program_types": bpf_probe() if bpf_probe else {"tp_btf": None, "fentry": None},
        "btf": fs.exists("/sys/kernel/btf/vmlinux"),
        "negative_oom_score_adj": cap_eff_allows(fs.read_text("/proc/self/status", default=""), CAP_SYS_RESOURCE),
        "kubelet_cgroup_driver": parse_kubelet_cgroup_driver(fs.read_text("/var/lib/kubelet/config.yaml", default="")),
    }
