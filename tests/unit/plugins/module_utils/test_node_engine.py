"""Node facts, QoS cgroups and sysctls planned against sandbox sysroots (v2, v1, hybrid)."""

import json
import os
import threading

import pytest

from ansible_collections.katalyst.colocation.plugins.module_utils import cgroups, nodeinfo, sysctl
from ansible_collections.katalyst.colocation.plugins.module_utils.reconcile import PlanError
from ansible_collections.katalyst.colocation.plugins.module_utils.sysfs import SysFS, SysFSError
from sandbox.sysroot import build_sysroot


@pytest.fixture(params=["v2", "v1"])
def node(request, tmp_path):
    build_sysroot(str(tmp_path), cgroup=request.param)
    return SysFS(str(tmp_path)), request.param


def test_parsers():
    assert nodeinfo.parse_cpu_list("0-3,8,10-11") == [0, 1, 2, 3, 8, 10, 11]
    assert nodeinfo.format_cpu_list([11, 0, 1, 2, 3, 8, 10]) == "0-3,8,10-11"
    with pytest.raises(ValueError):
        nodeinfo.parse_cpu_list("3-1")
    # a range beyond any kernel's CPUs is refused at once, not expanded (it would take minutes and gigabytes)
    with pytest.raises(ValueError, match="CPU ids go up to 65535"):
        nodeinfo.parse_cpu_list("0-99999999999")
    assert nodeinfo.parse_cpu_list("65534-65535") == [65534, 65535]
    assert nodeinfo.parse_node_meminfo("Node 1 MemTotal:  100 kB\nNode 1 MemFree: 10 kB") == {"MemTotal": 102400, "MemFree": 10240}
    assert nodeinfo.cap_eff_allows("CapEff:\t0000000001000000", 24)
    assert not nodeinfo.cap_eff_allows("CapEff:\t000001fffeffffff", 24)   # this host: everything but CAP_SYS_RESOURCE
    assert nodeinfo.parse_kubelet_cgroup_driver("cgroupDriver: systemd\n") == "systemd"
    hybrid = nodeinfo.cgroup_layout(nodeinfo.parse_mounts("cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n"
                                                          "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0"))
    assert hybrid["mode"] == "hybrid" and hybrid["v1_mounts"] == {"memory": "/sys/fs/cgroup/memory"}


def test_facts_of_a_sandbox_node(node):
    fs, version = node
    facts = nodeinfo.gather(fs)
    assert facts["cpu_count"] == 32 and facts["sockets"] == [0, 1] and facts["threads_per_core"] == 2
    assert [(n["id"], n["cpus"], n["socket"]) for n in facts["numa_nodes"]] == [
        (0, "0-3,16-19", 0), (1, "4-7,20-23", 0), (2, "8-11,24-27", 1), (3, "12-15,28-31", 1)]
    assert facts["cgroup"]["mode"] == version and facts["negative_oom_score_adj"] is True
    assert facts["bpffs"] == {"mounted": True, "path": "/sys/fs/bpf"}


def converge(fs, state="present", **kwargs):
    desired = cgroups.desired_qos_cgroups(nodeinfo.gather(fs), **kwargs)
    plan = cgroups.plan_qos_cgroups(desired, cgroups.read_cgroup_state(fs, desired), state)
    plan.apply(cgroups.applier(fs))
    return plan


def test_qos_cgroups_converge_idempotent_and_absent(node):
    fs, version = node
    plan = converge(fs, memory_limit_bytes=8 << 30, reserved_cpus="0,16")
    assert plan.changed
    if version == "v2":
        assert fs.read_text("/sys/fs/cgroup/kubepods/besteffort-0/cpuset.cpus") == "1-3,17-19"
        assert fs.read_text("/sys/fs/cgroup/kubepods/besteffort-3/cpuset.mems") == "3"
        assert fs.read_text("/sys/fs/cgroup/kubepods/besteffort/memory.high") == str(int((8 << 30) * 0.95) // 4096 * 4096)  # the kernel keeps whole pages
        assert fs.read_text("/sys/fs/cgroup/kubepods/besteffort/cpu.weight") == "1"
    else:
        assert fs.read_text("/sys/fs/cgroup/cpuset/kubepods/besteffort-2/cpuset.cpus") == "8-11,24-27"
        assert fs.read_text("/sys/fs/cgroup/memory/kubepods/besteffort/memory.limit_in_bytes") == str(8 << 30)
        assert fs.read_text("/sys/fs/cgroup/cpu/kubepods/besteffort/cpu.shares") == "2"
    assert not converge(fs, memory_limit_bytes=8 << 30, reserved_cpus="0,16").changed
    converge(fs, state="absent")
    root = "/sys/fs/cgroup" if version == "v2" else "/sys/fs/cgroup/cpuset"
    assert not fs.isdir(root + "/kubepods/besteffort-0") and fs.isdir(root + "/kubepods/besteffort")
    assert not converge(fs, state="absent").changed


def test_absent_removes_only_what_was_made_under_its_own_root(node):
    fs, version = node
    root = "/sys/fs/cgroup" if version == "v2" else "/sys/fs/cgroup/cpuset"
    fs.makedirs("/sys/fs/cgroup/kubepods/other" if version == "v2" else "/sys/fs/cgroup/cpu/kubepods/other")
    for controller in ([""] if version == "v2" else ["/cpuset", "/memory"]):
        fs.makedirs("/sys/fs/cgroup%s/kubepods/other" % controller)
    converge(fs)
    converge(fs, reclaim_root="/kubepods/other")
    assert converge(fs, state="absent", reclaim_root="/kubepods/other").changed
    assert not fs.isdir(root + "/kubepods/other-0")
    assert fs.isdir(root + "/kubepods/besteffort-0")                      # the other root's cgroups stay...
    record = json.loads(fs.read_text(cgroups.RECORD_PATH))
    assert root + "/kubepods/besteffort-0" in record["created"]           # ...and so does their record
    assert not any("/kubepods/other" in path for path in record["created"] + list(record["original"]))
    assert converge(fs, state="absent").changed and not fs.isdir(root + "/kubepods/besteffort-0")
    assert not fs.exists(cgroups.RECORD_PATH)


def test_concurrent_converges_keep_every_record_entry(tmp_path):
    """The agent's loops and a module run update one record; under its lock none loses another's entries."""
    build_sysroot(str(tmp_path), cgroup="v2")
    fs = SysFS(str(tmp_path))
    roots = ["/kubepods/r%d" % i for i in range(8)]
    for root in roots:
        fs.makedirs("/sys/fs/cgroup" + root)
    facts = nodeinfo.gather(fs)
    barrier = threading.Barrier(len(roots))

    def run(root):
        desired = cgroups.desired_qos_cgroups(facts, reclaim_root=root)
        barrier.wait()
        cgroups.converge(fs, desired)

    threads = [threading.Thread(target=run, args=(root,)) for root in roots]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    record = json.loads(fs.read_text(cgroups.RECORD_PATH))
    assert sorted(record["created"]) == sorted("/sys/fs/cgroup%s-%d" % (root, n) for root in roots for n in range(4))


def test_check_mode_creates_no_state_directory(tmp_path):
    build_sysroot(str(tmp_path), cgroup="v2")
    fs = SysFS(str(tmp_path))
    desired = cgroups.desired_qos_cgroups(nodeinfo.gather(fs))
    plan, would = cgroups.converge(fs, desired, dry_run=True)
    assert plan.changed and would and not fs.exists("/var/lib/katalyst")


def test_systemd_driver_paths():
    root, per_numa = cgroups.reclaim_paths("systemd", "/kubepods/besteffort", [0, 1])
    assert root == "/kubepods.slice/kubepods-besteffort.slice"
    assert per_numa[1] == "/kubepods.slice/kubepods-besteffort-1.slice"


@pytest.mark.parametrize("kwargs, message", [
    ({"reserved_cpus": "64"}, "reserved_cpus='64' names CPUs this machine does not have: 64"),
    ({"reserved_cpus": "0-3,16-19"}, "leaves NUMA node 0"),
    ({"cpu_shares": 1}, "cpu_shares=1 is out of range"),
    ({"memory_limit_bytes": 10}, "memory_limit_bytes=10 is out of range"),
])
def test_bad_cgroup_input_is_refused(tmp_path, kwargs, message):
    fs = SysFS(build_sysroot(str(tmp_path)))
    with pytest.raises(cgroups.CgroupError, match=message):
        cgroups.desired_qos_cgroups(nodeinfo.gather(fs), **kwargs)


def test_read_only_cgroup_fails_and_rolls_back(tmp_path):
    fs = SysFS(build_sysroot(str(tmp_path)))
    desired = cgroups.desired_qos_cgroups(nodeinfo.gather(fs))
    plan = cgroups.plan_qos_cgroups(desired, cgroups.read_cgroup_state(fs, desired))
    real = cgroups.applier(fs)

    def failing(change):
        if change.target.endswith("besteffort-2/cpuset.mems") and change.after == "2":
            raise OSError("Read-only file system")
        real(change)

    with pytest.raises(PlanError, match="besteffort-2/cpuset.mems"):
        plan.apply(failing)
    assert not fs.isdir("/sys/fs/cgroup/kubepods/besteffort-0")           # nothing half-applied
    assert fs.read_text("/sys/fs/cgroup/kubepods/besteffort/cpu.weight") == "100"


def test_runc_weight_conversion():
    assert [cgroups.shares_to_weight(s) for s in (0, 2, 1024, 262144)] == [0, 1, 39, 10000]


def test_tcp_mem_has_three_distinct_values():
    low, pressure, high = sysctl.tcp_mem_pages(64 << 30, 20)
    assert high == (64 << 30) // 4096 // 100 * 20
    assert low < pressure < high
    with pytest.raises(sysctl.SysctlError, match="tcp_mem_ratio=90"):
        sysctl.tcp_mem_pages(64 << 30, 90)


def test_tcp_mem_is_written_with_its_pressure_band(tmp_path):
    """Katalyst (node spec §5.1) writes max three times (min = pressure = max); we write max/2, 2*max/3, max."""
    fs = SysFS(build_sysroot(str(tmp_path)))
    desired = sysctl.desired_sysctls(64 << 30, tcp_mem_ratio=20)
    high = (64 << 30) // 4096 // 100 * 20
    assert desired == {"net.ipv4.tcp_mem": "%d %d %d" % (high // 2, high * 2 // 3, high)}
    sysctl.plan_sysctls(desired, sysctl.read_sysctl_state(fs, desired)).apply(sysctl.applier(fs))
    assert fs.read_text("/proc/sys/net/ipv4/tcp_mem") == "%d\t%d\t%d" % (high // 2, high * 2 // 3, high)


@pytest.mark.parametrize("ratio", [0, 19, 81, 100, -20, 20.5, "20", True])
def test_tcp_mem_ratio_outside_20_80_is_refused_not_clamped(ratio):
    """Katalyst clamps --qrm-memory-global-tcpmem-ratio into [20, 80] (0 skips); we refuse it (None skips)."""
    with pytest.raises(sysctl.SysctlError, match=r"tcp_mem_ratio=.* is out of range: 20-80"):
        sysctl.desired_sysctls(64 << 30, tcp_mem_ratio=ratio)


@pytest.mark.parametrize("ratio", [20, 80])
def test_tcp_mem_ratio_bounds_are_accepted(ratio):
    assert sysctl.desired_sysctls(64 << 30, tcp_mem_ratio=ratio)["net.ipv4.tcp_mem"].split()[2] == str((64 << 30) // 4096 // 100 * ratio)


@pytest.mark.parametrize("content", ["", "garbage", "1 2", "1 2 3 4", "-1 2 3", "1\t2\tx", "+1 2 3", "1 2 18446744073709551616",
                                     "\n1 2 3"])
@pytest.mark.parametrize("state", ["present", "absent"])
def test_unparsable_live_tcp_mem_is_reported_not_overwritten(tmp_path, content, state):
    """Katalyst's getHostTCPMemFile needs exactly three unsigned integers on the first line, else it errors and writes
    nothing; we report the file and its content and write nothing (no sysctl, no drop-in, no record)."""
    fs = SysFS(build_sysroot(str(tmp_path)))
    desired = sysctl.desired_sysctls(64 << 30, tcp_mem_ratio=20, settings={"vm.swappiness": 10})
    if state == "absent":       # restoring an original over content we cannot read is refused the same way
        sysctl.plan_sysctls(desired, sysctl.read_sysctl_state(fs, desired)).apply(sysctl.applier(fs))
    watched = ("/proc/sys/net/ipv4/tcp_mem", "/proc/sys/vm/swappiness", sysctl.DROP_IN, sysctl.RECORD_PATH)
    before = {path: fs.read_text(path, default="<absent>") for path in watched}
    fs.write_text("/proc/sys/net/ipv4/tcp_mem", content)
    before["/proc/sys/net/ipv4/tcp_mem"] = content.rstrip("\n")
    keys = desired if state == "present" else sysctl.read_sysctl_state(fs, []).get("record", {})
    with pytest.raises(sysctl.SysctlError) as raised:
        sysctl.plan_sysctls(desired if state == "present" else {}, sysctl.read_sysctl_state(fs, keys), state=state)
    assert str(raised.value).startswith("/proc/sys/net/ipv4/tcp_mem: cannot parse its current content %r" % content.rstrip("\n"))
    assert {path: fs.read_text(path, default="<absent>") for path in before} == before


def test_live_tcp_mem_is_read_from_its_first_line(tmp_path):
    fs = SysFS(build_sysroot(str(tmp_path)))
    assert sysctl.parse_tcp_mem("1\t2\t3\nignored") == (1, 2, 3)
    fs.write_text("/proc/sys/net/ipv4/tcp_mem", "1\t2\t3\n")
    desired = sysctl.desired_sysctls(64 << 30, tcp_mem_ratio=20)
    assert sysctl.plan_sysctls(desired, sysctl.read_sysctl_state(fs, desired)).changed


def test_unreadable_tcp_mem_is_an_error_naming_the_file(tmp_path):
    fs = SysFS(build_sysroot(str(tmp_path)))
    os.unlink(fs.path("/proc/sys/net/ipv4/tcp_mem"))
    os.mkdir(fs.path("/proc/sys/net/ipv4/tcp_mem"))         # reading it fails (EISDIR) as an unreadable file would
    desired = sysctl.desired_sysctls(64 << 30, tcp_mem_ratio=20)
    with pytest.raises(SysFSError, match="/proc/sys/net/ipv4/tcp_mem: Is a directory"):
        sysctl.read_sysctl_state(fs, desired)


@pytest.mark.parametrize("settings, message", [
    ({"vm.watermark_scale_factor": 5000}, "vm.watermark_scale_factor=5000 is out of range 1-3000"),
    ({"vm.swappiness": "lots"}, "vm.swappiness='lots': an integer is required"),
    ({"net.ipv4.tcp_mem": "3 2 1"}, "values must rise"),
    ({"bad key!": 1}, "invalid sysctl name"),
    ({"vm.min_free_kbytes": 10 ** 9}, "at most 10% of memory"),
])
def test_bad_sysctls_are_refused(settings, message):
    with pytest.raises(sysctl.SysctlError, match=message):
        sysctl.desired_sysctls(64 << 30, settings=settings)


def test_sysctls_converge_persist_and_restore(tmp_path):
    fs = SysFS(build_sysroot(str(tmp_path)))
    desired = sysctl.desired_sysctls(64 << 30, tcp_mem_ratio=20, watermark_scale_factor=100, settings={"vm.swappiness": 10})
    plan = sysctl.plan_sysctls(desired, sysctl.read_sysctl_state(fs, desired))
    plan.apply(sysctl.applier(fs))
    assert fs.read_text("/proc/sys/vm/watermark_scale_factor") == "100"
    assert "vm.swappiness = 10" in fs.read_text(sysctl.DROP_IN)
    assert not sysctl.plan_sysctls(desired, sysctl.read_sysctl_state(fs, desired)).changed
    record = json.loads(fs.read_text(sysctl.RECORD_PATH))
    plan = sysctl.plan_sysctls({}, sysctl.read_sysctl_state(fs, record), state="absent")
    plan.apply(sysctl.applier(fs))
    assert fs.read_text("/proc/sys/vm/swappiness") == "60" and not fs.exists(sysctl.DROP_IN)


def test_unknown_sysctl_fails_unless_optional(tmp_path):
    fs = SysFS(build_sysroot(str(tmp_path)))
    desired = sysctl.desired_sysctls(64 << 30, settings={"kernel.numa_balancing": 1})
    with pytest.raises(sysctl.SysctlError, match="kernel.numa_balancing: this kernel has no such sysctl"):
        sysctl.plan_sysctls(desired, sysctl.read_sysctl_state(fs, desired))
    plan = sysctl.plan_sysctls(desired, sysctl.read_sysctl_state(fs, desired), optional=["kernel.numa_balancing"])
    assert plan.warnings and not [c for c in plan if c.kind == "sysctl"]
