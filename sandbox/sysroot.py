"""Sandbox nodes' kernel files: a realistic fake /sys, /proc and /etc under a directory (the sysroot).

`build_sysroot(path)` lays out 2 sockets x 2 NUMA nodes x 4 cores x 2 threads by default, per-node
meminfo, the colocation sysctls, and a cgroup v2 (or v1, or hybrid) tree with kubepods. It is
idempotent: files that exist keep their content, so values written by the modules survive.
"""

import os

GIB = 1 << 30
V2_CONTROLLERS = "cpuset cpu io memory hugetlb pids"
V1_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "pids")


def _write(root, path, content, overwrite=False):
    full = os.path.join(root, path.lstrip("/"))
    if os.path.exists(full) and not overwrite:
        return
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w") as handle:
        handle.write(content if content.endswith("\n") or content == "" else content + "\n")


def cpu_list(cpus):
    """Kernel list syntax for a set of CPU ids: 0-3,16-19."""
    ids = sorted(cpus)
    ranges, start, prev = [], None, None
    for cpu in ids:
        if start is None:
            start = prev = cpu
        elif cpu == prev + 1:
            prev = cpu
        else:
            ranges.append((start, prev))
            start = prev = cpu
    if start is not None:
        ranges.append((start, prev))
    return ",".join("%d" % a if a == b else "%d-%d" % (a, b) for a, b in ranges)


def topology(sockets, numa_per_socket, cores_per_numa, smt):
    """[(cpu, socket, numa, core)] numbered as Linux does: all first threads, then the siblings."""
    total_cores = sockets * numa_per_socket * cores_per_numa
    layout = []
    for thread in range(smt):
        for core in range(total_cores):
            numa = core // cores_per_numa
            layout.append((thread * total_cores + core, numa // numa_per_socket, numa, core))
    return layout


def v2_cgroup_files(cpus, mems, memory_max="max"):
    return {"cgroup.controllers": V2_CONTROLLERS, "cgroup.subtree_control": V2_CONTROLLERS, "cgroup.procs": "",
            "cpu.weight": "100", "cpu.max": "max 100000", "cpu.idle": "0", "cpuset.cpus": cpus, "cpuset.mems": mems,
            "cpuset.cpus.effective": cpus, "cpuset.mems.effective": mems, "memory.max": memory_max, "memory.high": "max",
            "memory.min": "0", "memory.low": "0", "memory.current": "0", "memory.swap.max": "max", "memory.oom.group": "0"}


def v1_cgroup_files(controller, cpus, mems):
    files = {"cgroup.procs": "", "tasks": ""}
    if controller == "cpu":
        files.update({"cpu.shares": "1024", "cpu.cfs_quota_us": "-1", "cpu.cfs_period_us": "100000"})
    elif controller == "cpuset":
        files.update({"cpuset.cpus": cpus, "cpuset.mems": mems, "cpuset.memory_migrate": "0"})
    elif controller == "memory":
        files.update({"memory.limit_in_bytes": "9223372036854771712", "memory.soft_limit_in_bytes": "9223372036854771712",
                      "memory.usage_in_bytes": "0", "memory.kmem.tcp.limit_in_bytes": "9223372036854771712",
                      "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0"})
    return files


def populate_cgroup_dir(root, cgroup_path, version, cpus="", mems=""):
    """Give a directory made in a fake cgroupfs the control files the kernel would create."""
    if version == "v2":
        files = v2_cgroup_files(cpus, mems)
        files["cgroup.subtree_control"] = ""
    else:
        controller = cgroup_path.split("/")[4] if cgroup_path.startswith("/sys/fs/cgroup/") else "cpu"
        files = v1_cgroup_files(controller, cpus, mems)
    for name, content in files.items():
        _write(root, os.path.join(cgroup_path, name), content)


def build_sysroot(path, sockets=2, numa_per_socket=2, cores_per_numa=4, smt=2, memory_per_numa_bytes=16 * GIB,
                  cgroup="v2", kernel="6.1.0-sandbox", cap_sys_resource=True, kubelet_cgroup_driver="cgroupfs"):
    """Create (or complete) a sandbox node's sysroot at ``path``; returns ``path``."""
    root = os.path.abspath(path)
    layout = topology(sockets, numa_per_socket, cores_per_numa, smt)
    all_cpus = cpu_list(c for c, _s, _n, _core in layout)
    numa_count = sockets * numa_per_socket
    all_mems = cpu_list(range(numa_count))
    _write(root, "/sys/devices/system/cpu/online", all_cpus)
    _write(root, "/sys/devices/system/cpu/possible", all_cpus)
    _write(root, "/sys/devices/system/cpu/present", all_cpus)
    for cpu, socket, _numa, core in layout:
        siblings = cpu_list(c for c, _s, _n, other in layout if other == core)
        package = cpu_list(c for c, s, _n, _o in layout if s == socket)
        base = "/sys/devices/system/cpu/cpu%d/topology/" % cpu
        _write(root, base + "physical_package_id", str(socket))
        _write(root, base + "core_id", str(core))
        _write(root, base + "thread_siblings_list", siblings)
        _write(root, base + "core_siblings_list", package)
    _write(root, "/sys/devices/system/node/online", all_mems)
    _write(root, "/sys/devices/system/node/possible", all_mems)
    for numa in range(numa_count):
        cpus = cpu_list(c for c, _s, n, _o in layout if n == numa)
        kib = memory_per_numa_bytes // 1024
        free = kib * 3 // 4
        _write(root, "/sys/devices/system/node/node%d/cpulist" % numa, cpus)
        _write(root, "/sys/devices/system/node/node%d/meminfo" % numa,
               "\n".join("Node %d %-15s %8d kB" % (numa, name + ":", value) for name, value in (
                   ("MemTotal", kib), ("MemFree", free), ("MemUsed", kib - free), ("Active(file)", kib // 16),
                   ("Inactive(file)", kib // 16), ("FilePages", kib // 8))))
        same_socket = numa // numa_per_socket
        _write(root, "/sys/devices/system/node/node%d/distance" % numa,
               " ".join("10" if other == numa else ("12" if other // numa_per_socket == same_socket else "20") for other in range(numa_count)))
    total_kib = memory_per_numa_bytes * numa_count // 1024
    _write(root, "/proc/meminfo", "\n".join("%-16s%8d kB" % (name + ":", value) for name, value in (
        ("MemTotal", total_kib), ("MemFree", total_kib * 3 // 4), ("MemAvailable", total_kib * 7 // 8), ("Buffers", 0),
        ("Cached", total_kib // 8), ("Inactive(file)", total_kib // 16), ("HugePages_Total", 0), ("Hugepagesize", 2048))))
    _write(root, "/proc/cpuinfo", "".join("processor\t: %d\nphysical id\t: %d\ncore id\t\t: %d\n\n" % (c, s, core) for c, s, _n, core in layout))
    _write(root, "/proc/sys/kernel/osrelease", kernel)
    _write(root, "/proc/version", "Linux version %s (sandbox)" % kernel)
    _write(root, "/proc/sys/vm/watermark_scale_factor", "10")
    _write(root, "/proc/sys/vm/min_free_kbytes", "67584")
    _write(root, "/proc/sys/vm/swappiness", "60")
    _write(root, "/proc/sys/vm/overcommit_memory", "0")
    pages = memory_per_numa_bytes * numa_count // 4096
    _write(root, "/proc/sys/net/ipv4/tcp_mem", "%d\t%d\t%d" % (pages // 32, pages // 24, pages // 16))
    _write(root, "/proc/sys/net/core/somaxconn", "4096")
    cap_eff = 0x1FFFFFFFFFF if cap_sys_resource else 0x1FFFFFFFFFF & ~(1 << 24)
    _write(root, "/proc/self/status", "Name:\tsandbox\nCapEff:\t%016x" % cap_eff, overwrite=True)
    mounts = ["sysfs /sys sysfs rw 0 0", "proc /proc proc rw 0 0", "bpf /sys/fs/bpf bpf rw 0 0"]
    if cgroup == "v2":
        mounts.append("cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0")
        _write(root, "/sys/fs/cgroup/cgroup.controllers", V2_CONTROLLERS)
        _write(root, "/sys/fs/cgroup/cgroup.subtree_control", V2_CONTROLLERS)
        for sub in ("kubepods", "kubepods/burstable", "kubepods/besteffort"):
            for name, content in v2_cgroup_files(all_cpus, all_mems).items():
                _write(root, "/sys/fs/cgroup/%s/%s" % (sub, name), content)
    else:
        mounts.append("tmpfs /sys/fs/cgroup tmpfs ro 0 0")
        for controller in V1_CONTROLLERS:
            mounts.append("cgroup /sys/fs/cgroup/%s cgroup rw,%s 0 0" % (controller, controller))
            for sub in ("", "kubepods", "kubepods/burstable", "kubepods/besteffort"):
                for name, content in v1_cgroup_files(controller, all_cpus, all_mems).items():
                    _write(root, "/sys/fs/cgroup/%s/%s/%s" % (controller, sub, name) if sub else
                           "/sys/fs/cgroup/%s/%s" % (controller, name), content)
        if cgroup == "hybrid":
            mounts.append("cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0")
            _write(root, "/sys/fs/cgroup/unified/cgroup.controllers", "")
    _write(root, "/proc/self/mounts", "\n".join(mounts), overwrite=True)
    os.makedirs(os.path.join(root, "sys/fs/bpf"), exist_ok=True)
    os.makedirs(os.path.join(root, "etc/sysctl.d"), exist_ok=True)
    _write(root, "/var/lib/kubelet/config.yaml", "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n"
                                                 "cgroupDriver: %s\n" % kubelet_cgroup_driver)
    return root
