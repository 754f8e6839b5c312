"""katalyst-agent under chaos (issue 15): restarts with 100 pods, and filesystem faults in its sysroot.

Figures:

* ``agent restarted with 100 pods``: once converged, the agent is killed (SIGKILL and SIGTERM alternately) and started
  again; a sampler reads every value it writes (oom_score_adj, TCP limits, QoS and NUMA-binding cpusets, the CNR status
  and annotations, numa_bind_result) every 50 ms. A restart survived when no value left its converged value at any
  time (during the restart or after) and the values are the same once the new agent made two passes of every loop.
* ``agent facing a read-only or vanished cgroup, a full disk, garbage sysfs``: one fault at a time in the sysroot. Survived
  when the agent keeps running, the values the fault does not touch stay as they were, the failure is reported (a
  failed loop pass in /metrics and a log line) where there is one, and the agent converges once the fault is removed.
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from tests.integration.waiting import wait_until
from .agent_rig import TCP_DEFAULT, AgentRig, Sampler
from .conftest import record, sized

RESTART_FIGURE = "agent restarted with 100 pods"
FAULT_FIGURE = "agent facing a read-only or vanished cgroup, a full disk, garbage sysfs"


def test_agent_restarts_keep_every_value(emulator, tmp_path):
    pods, restarts = sized(100, 30), sized(10, 2)
    rig = AgentRig(emulator, tmp_path, "chaos-restart", pods - pods // 25, pods // 25)
    started = time.time()
    rig.start()
    try:
        reference = rig.converged()
        sampler = Sampler(rig, reference)
        sampler.start()
        results = []
        for number in range(restarts):
            how = signal.SIGKILL if number % 2 == 0 else signal.SIGTERM
            sampler.phase = "restart %d (%s)" % (number + 1, how.name)
            seen = len(sampler.departures)
            code = rig.stop(how)
            rig.start()
            rig.wait_passes(2)
            final = rig.snapshot()
            regressions = sampler.departures[seen:]
            changed = sorted(key for key in reference if final.get(key, "<absent>") != reference[key])
            clean_stop = how == signal.SIGKILL or code == 0
            survived = not regressions and not changed and clean_stop
            record(RESTART_FIGURE, "survived" if survived else "regressed" if regressions or changed else "unclean-stop", survived)
            results.append((sampler.phase, code, [(gone[1], describe(reference[gone[1]], gone[2])) for gone in regressions[:5]],
                            [(key, describe(reference[key], final.get(key))) for key in changed[:5]]))
        sampler.stop()
    finally:
        rig.stop()
    failed = [result for result in results if result[2] or result[3] or (result[1] not in (0, -signal.SIGKILL))]
    print("%s: %d pods, %d restarts, %d samples, %d regressions, %.1fs"
          % (RESTART_FIGURE, len(rig.pods), restarts, sampler.samples, len(sampler.departures), time.time() - started))
    assert not failed, failed
    assert sampler.samples > restarts


def flatten(value, prefix=""):
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in flatten(item, "%s.%s" % (prefix, key)).items()}
    if isinstance(value, list):
        return {k: v for index, item in enumerate(value) for k, v in flatten(item, "%s[%d]" % (prefix, index)).items()}
    return {prefix: value}


def describe(expected, seen):
    """What differs between a converged value and the one seen: the changed leaves of JSON values."""
    try:
        before, after = flatten(json.loads(expected)), flatten(json.loads(seen))
    except (TypeError, ValueError):
        return "%r -> %r" % (expected, seen)
    return ["%s: %r -> %r" % (leaf, before.get(leaf), after.get(leaf)) for leaf in sorted(set(before) | set(after))
            if before.get(leaf) != after.get(leaf)][:6]


# -- faults ---------------------------------------------------------------------------------------
def can_mount():
    """None when this process can mount a tmpfs and make a read-only bind mount, else why not."""
    if os.geteuid() != 0:
        return "not root: no mounts"
    directory = tempfile.mkdtemp()
    try:
        for command in (["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", directory], ["umount", directory],
                        ["mount", "--bind", directory, directory], ["mount", "-o", "remount,ro,bind", directory], ["umount", directory]):
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            if result.returncode:
                return "%s: %s" % (" ".join(command[:3]), result.stderr.strip() or result.returncode)
    finally:
        subprocess.run(["umount", directory], capture_output=True, check=False)
        os.rmdir(directory)
    return None


MOUNT_PROBLEM = can_mount()


def mount(*args):
    subprocess.run(["mount"] + list(args), check=True, capture_output=True)


def umount(path):
    subprocess.run(["umount", path], check=True, capture_output=True)


def tcp_file(rig, name):
    return rig.pods[name]["dirs"]["memory"][1] + "/memory.kmem.tcp.limit_in_bytes"


class Fault:
    """One fault kind: ``make(rig)`` breaks the sysroot and returns the keys it may legitimately change (plus a list of
    files the test drifts to see that the loops still correct the others); ``undo(rig)`` repairs it."""

    reported = True     # the agent is expected to report it (a failed pass); a vanished cgroup is a pod going away

    def __init__(self, name):
        self.name = name


class VanishedCgroup(Fault):
    reported = False

    def make(self, rig):
        pod = rig.pods["p000"]
        for controller in ("memory", "cpu", "cpuacct", "cpuset"):
            shutil.rmtree(rig.path(pod["dirs"][controller][0]))
        return {"/proc/%d/oom_score_adj" % pod["pid"], tcp_file(rig, "p000")}

    def undo(self, rig):
        rig.make_cgroups("p000")
        rig.make_process("p000")


class FileIsDirectory(Fault):
    """Writes to a cgroup file fail with EISDIR (and reads too): the besteffort cpu.shares and one pod's TCP limit."""

    def make(self, rig):
        for path in ("/sys/fs/cgroup/cpu/kubepods/besteffort/cpu.shares", tcp_file(rig, "p001")):
            os.unlink(rig.path(path))
            os.mkdir(rig.path(path))
        return {"/sys/fs/cgroup/cpu/kubepods/besteffort/cpu.shares", tcp_file(rig, "p001")}

    def undo(self, rig):
        for path in ("/sys/fs/cgroup/cpu/kubepods/besteffort/cpu.shares", tcp_file(rig, "p001")):
            os.rmdir(rig.path(path))
            rig.write(path, ("1024" if "shares" in path else TCP_DEFAULT) + "\n")


class ReadOnlyCgroup(Fault):
    """A read-only bind mount over one container's memory cgroup (EROFS), with its TCP limit to be set again."""

    def make(self, rig):
        directory = rig.path(rig.pods["p002"]["dirs"]["memory"][1])

        def frozen_unset():
            """The TCP limit back to the default under a read-only mount (again when the agent set it in between)."""
            rig.write(tcp_file(rig, "p002"), TCP_DEFAULT + "\n")
            mount("--bind", directory, directory)
            mount("-o", "remount,ro,bind", directory)
            if rig.read(tcp_file(rig, "p002")) == TCP_DEFAULT:
                return True
            umount(directory)
            return False
        wait_until(frozen_unset, timeout=30, what="a read-only cgroup with its TCP limit unset")
        return {tcp_file(rig, "p002")}

    def undo(self, rig):
        umount(rig.path(rig.pods["p002"]["dirs"]["memory"][1]))


class ReadOnlyProc(Fault):
    """A read-only bind mount over one process's /proc entry (EROFS): its oom_score_adj cannot be set."""

    def make(self, rig):
        pod = rig.pods["p004"]
        directory = rig.path("/proc/%d" % pod["pid"])
        self.wanted = rig.read("/proc/%d/oom_score_adj" % pod["pid"])
        unset = "0" if self.wanted != "0" else "1"

        def frozen_unset():
            rig.write("/proc/%d/oom_score_adj" % pod["pid"], unset + "\n")
            mount("--bind", directory, directory)
            mount("-o", "remount,ro,bind", directory)
            if rig.read("/proc/%d/oom_score_adj" % pod["pid"]) == unset:
                return True
            umount(directory)
            return False
        wait_until(frozen_unset, timeout=30, what="a read-only /proc entry with its oom_score_adj unset")
        return {"/proc/%d/oom_score_adj" % pod["pid"]}

    def undo(self, rig):
        umount(rig.path("/proc/%d" % rig.pods["p004"]["pid"]))


class FullDisk(Fault):
    """A full tmpfs (ENOSPC) as one NUMA-bound pod's cpuset cgroup, its cpuset.cpus empty as a fresh cgroup's."""

    def make(self, rig):
        directory = rig.pods["bind0"]["dirs"]["cpuset"][1]
        host = rig.path(directory)
        self.saved = {name: rig.read(directory + "/" + name) for name in os.listdir(host)}
        mount("-t", "tmpfs", "-o", "size=64k,nr_inodes=64", "tmpfs", host)
        try:
            for name, content in self.saved.items():
                rig.write(directory + "/" + name, "" if name == "cpuset.cpus" else content + "\n")
            filler = os.open(os.path.join(host, "filler"), os.O_WRONLY | os.O_CREAT)
            try:
                while True:
                    os.write(filler, b"x" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
            finally:
                os.close(filler)
        except BaseException:
            umount(host)
            raise
        return {directory + "/cpuset.cpus", directory + "/cpuset.mems"}

    def undo(self, rig):
        directory = rig.pods["bind0"]["dirs"]["cpuset"][1]
        umount(rig.path(directory))
        rig.write(directory + "/cpuset.cpus", "0-31\n")


class GarbageSysfs(Fault):
    """Junk (or nothing) where the agent reads the NUMA topology and memory (written at once, as sysfs reads are)."""

    def __init__(self, name, path, content, touches=()):
        super().__init__(name)
        self.file, self.content, self.touches = path, content, touches

    def replace(self, rig, content):
        with open(rig.path(self.file) + ".new", "w") as handle:
            handle.write(content)
        os.replace(rig.path(self.file) + ".new", rig.path(self.file))

    def make(self, rig):
        self.saved = rig.read(self.file)
        self.replace(rig, self.content)
        return set(self.touches)

    def undo(self, rig):
        self.replace(rig, self.saved + "\n")


FAULTS = [VanishedCgroup("vanished cgroup"), FileIsDirectory("cgroup file replaced by a directory (EISDIR)"),
          ReadOnlyCgroup("read-only cgroup (EROFS)"), ReadOnlyProc("read-only /proc/<pid> (EROFS on oom_score_adj)"), FullDisk("full disk (ENOSPC)"),
          GarbageSysfs("junk NUMA cpulist", "/sys/devices/system/node/node1/cpulist", "8-zz,\x01junk\n"),
          # a NUMA node without CPUs (memory only) is real: fewer reclaimed CPUs in the CNR is right, not a regression
          GarbageSysfs("empty NUMA cpulist", "/sys/devices/system/node/node2/cpulist", "", ("cnr.status.resources", "cnr.status.topologyZone")),
          GarbageSysfs("junk NUMA meminfo", "/sys/devices/system/node/node0/meminfo", "Node 0 MemTotal: lots kB\nNode 0 MemFree: -1 kB\n"),
          GarbageSysfs("empty NUMA meminfo", "/sys/devices/system/node/node3/meminfo", "")]


@pytest.fixture
def fault_rig(emulator, tmp_path):
    rig = AgentRig(emulator, tmp_path, "chaos-faults", 10, 1)
    rig.start()
    yield rig
    rig.stop()


def test_agent_survives_filesystem_faults(fault_rig):
    rig = fault_rig
    started = time.time()
    reference = rig.converged()
    problems = []
    for fault in FAULTS:
        if isinstance(fault, (ReadOnlyCgroup, ReadOnlyProc, FullDisk)) and MOUNT_PROBLEM:
            record(FAULT_FIGURE, "skipped: " + MOUNT_PROBLEM, True)
            continue
        began = time.time()
        outcome, issues = run_fault(rig, fault, reference)
        record(FAULT_FIGURE, outcome, not issues)
        print("%s: %s in %.1fs %s" % (fault.name, outcome, time.time() - began, issues))
        if issues:
            problems.append((fault.name, issues))
            if rig.process.poll() is not None:
                rig.stop()
                rig.start()
            reference = rig.converged()     # the next fault starts from converged values again
    print("%s: %d kinds, %d failed, %.1fs" % (FAULT_FIGURE, len(FAULTS), len(problems), time.time() - started))
    assert not problems, problems


def run_fault(rig, fault, reference):
    """Make the fault, check the agent through it and after it; returns (outcome, [issues])."""
    errors_before = sum(rig.loop_runs("error").values())
    log_before = len(rig.log_text())
    touched = fault.make(rig)
    sampler = Sampler(rig, reference, keys=[key for key in reference if key not in touched])
    sampler.phase = fault.name
    sampler.start()
    issues = []
    try:
        # through the fault: a pass of every loop (failed or not), then drift on an untouched pod to correct
        rig.wait_passes(1, outcome=None)
        adj = "/proc/%d/oom_score_adj" % rig.pods["p003"]["pid"]
        drifted = {tcp_file(rig, "p003"): TCP_DEFAULT, adj: "1" if reference[adj] != "1" else "2"}
        sampler.ignore(drifted)
        for path, value in drifted.items():
            rig.write(path, value + "\n")
        try:
            wait_until(lambda: all(rig.read(path) == reference[path] for path in drifted), timeout=20,
                       what="the drift on another pod corrected")
        except AssertionError:
            issues.append("drift on another pod not corrected while the fault lasts: %s"
                          % {path: rig.read(path) for path in drifted if rig.read(path) != reference[path]})
        sampler.watch(drifted)
        rig.wait_passes(1, outcome=None)
        if rig.process.poll() is not None:
            issues.append("the agent exited (%s)" % rig.process.returncode)
            return "crashed", issues
        errors = sum(rig.loop_runs("error").values()) - errors_before
        logged = "failed" in rig.log_text()[log_before:]
        if fault.reported and not (errors and logged):
            issues.append("not reported (failed passes %d, logged %s)" % (errors, logged))
    finally:
        try:
            fault.undo(rig)
        finally:
            sampler.stop()
    if sampler.departures:
        issues.append("values the fault does not touch changed: %s" % sampler.departures[:5])

    def settled():
        """Back to the reference, and still there after two more passes of every loop (windowed readings lag)."""
        if {k: v for k, v in (rig.snapshot() or {}).items() if k in reference} != reference:
            return False
        rig.wait_passes(2)
        return {k: v for k, v in (rig.snapshot() or {}).items() if k in reference} == reference
    try:
        wait_until(settled, timeout=60, interval=0.1, what="convergence after %s" % fault.name)
    except AssertionError:
        final = rig.snapshot() or {}
        moved = {k: (final.get(k), v) for k, v in reference.items() if final.get(k) != v}
        issues.append("not converged after the fault was removed: %s" % moved)
    outcome = "survived" if not issues else "crashed" if rig.process.poll() is not None else "failed"
    return outcome, issues
