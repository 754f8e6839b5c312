"""katalyst-agent under chaos (issue 15): restarts with 100 pods, and filesystem faults in its sysroot.

Figures:

* ``agent restarted with 100 pods``: once converged, the agent is killed (SIGKILL and SIGTERM alternately) and started
  again; a sampler reads every value it writes (oom_score_adj, TCP limits, QoS and NUMA-binding cpusets, the CNR status
  and annotations, numa_bind_result) every 50 ms. A restart survived when no value left its converged value at any
  time (during the restart or after) and the values are the same once the new agent made two passes of every loop.
* ``agent facing a read-only or vanished cgroup, a full disk, garbage sysfs``: one fault at a time in the sysroot. Survived
  when the agent keeps running, the values the fault does not touch stay as they were, the failure is reported (a
  failed loop pass in /metrics and a log line) where there is one, a Warning Event on the pod when the fault concerns
  one pod (once while it lasts), and the agent converges once the fault is removed.
* ``agent with a full disk for its state file``: the disk under ``state_dir`` (where the agent writes the token it renews)
  is full. Survived when every renewal fails with its reason in the loop's health, the counter and the log, the token file
  is never half written, the agent keeps watching its pods on the token it has, and renews once there is room again.
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
STATE_DISK_FIGURE = "agent with a full disk for its state file"
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
    event = None        # (pod, reason) of the Warning Event the agent sends once while the fault lasts

    def __init__(self, name):
        self.name = name

    def drift(self, rig):  # pylint: disable=unused-argument
        """Files of other pods, set wrong while the fault lasts, that the agent must correct all the same: {path: value}."""
        return {}


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

    event = ("p001", "TCPMemoryLimitNotSet")

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

    event = ("p002", "TCPMemoryLimitNotSet")

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

    event = ("p004", "OOMScoreAdjNotSet")

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

    event = ("bind0", "NUMABindingNotApplied")

    def drift(self, rig):
        """The second NUMA-bound pod is pinned again though the first cannot be."""
        return {rig.pods["bind1"]["dirs"]["cpuset"][1] + "/cpuset.cpus": "0-31"}

    def make(self, rig):
        directory = rig.pods["bind0"]["dirs"]["cpuset"][1]
        host = rig.path(directory)
        self.saved = {name: rig.read(directory + "/" + name) for name in os.listdir(host)}
        mount("-t", "tmpfs", "-o", "size=64k,nr_inodes=64", "tmpfs", host)
        try:
            for name, content in self.saved.items():
                rig.write(directory + "/" + name, "" if name == "cpuset.cpus" else content + "\n")
            fill(host)
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
    rig = AgentRig(emulator, tmp_path, "chaos-faults", 10, 2)
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


def pod_events(rig, fault):
    """The Warning Events of the fault's reason on the fault's pod."""
    if not fault.event:
        return []
    pod, reason = fault.event
    return [event for event in rig.core.list_namespaced_event(rig.namespace).items
            if event.involved_object.name == pod and event.reason == reason and event.type == "Warning"]


def event_issues(rig, fault, before):
    """The fault's pod got one Warning Event naming it (once, though every pass since failed on it)."""
    def new():
        return [event for event in pod_events(rig, fault) if event.metadata.name not in before]
    try:
        wait_until(new, timeout=20, what="a %s Event on %s" % (fault.event[1], fault.event[0]))
    except AssertionError:
        return ["no %s Event on pod %s" % (fault.event[1], fault.event[0])]
    rig.wait_passes(1, outcome=None)
    events = new()
    if len(events) != 1:
        pod, reason = fault.event
        return ["%d %s Events on pod %s while the fault lasted, not 1: %s" % (len(events), reason, pod, [event.message for event in events])]
    return []


def run_fault(rig, fault, reference):
    """Make the fault, check the agent through it and after it; returns (outcome, [issues])."""
    errors_before = sum(rig.loop_runs("error").values())
    log_before = len(rig.log_text())
    events_before = {event.metadata.name for event in pod_events(rig, fault)}
    touched = fault.make(rig)
    sampler = Sampler(rig, reference, keys=[key for key in reference if key not in touched])
    sampler.phase = fault.name
    sampler.start()
    issues = []
    try:
        # through the fault: a pass of every loop (failed or not), then drift on an untouched pod to correct
        rig.wait_passes(1, outcome=None)
        adj = "/proc/%d/oom_score_adj" % rig.pods["p003"]["pid"]
        drifted = dict({tcp_file(rig, "p003"): TCP_DEFAULT, adj: "1" if reference[adj] != "1" else "2"}, **fault.drift(rig))
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
        if fault.event:
            issues += event_issues(rig, fault, events_before)
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


def fill(directory):
    """Write a file in ``directory`` until its filesystem is full (ENOSPC); returns its path."""
    path = os.path.join(directory, "filler")
    handle = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(handle, b"x" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(handle)
    return path


def test_agent_with_a_full_disk_for_its_state_file(emulator, tmp_path):
    if MOUNT_PROBLEM:
        record(STATE_DISK_FIGURE, "skipped: " + MOUNT_PROBLEM, True)
        pytest.skip(MOUNT_PROBLEM)
    from kubernetes import client  # pylint: disable=import-outside-toplevel
    from ansible_collections.katalyst.colocation.plugins.module_utils import credentials  # pylint: disable=import-outside-toplevel
    from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.agent import Agent  # pylint: disable=import-outside-toplevel
    core = client.CoreV1Api(emulator.client)
    namespace, node = "state-disk", "state-disk-node"
    core.create_namespace({"metadata": {"name": namespace}})
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "katalyst-agent"}})
    node_uid = core.create_node({"metadata": {"name": node}}).metadata.uid
    token = core.create_namespaced_service_account_token("katalyst-agent", namespace, {"spec": {
        "expirationSeconds": 600, "boundObjectRef": {"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid}}}).status.token
    (tmp_path / "token").write_text(token + "\n")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(credentials.dump_kubeconfig(credentials.render_kubeconfig(emulator.url, str(tmp_path / "token"), namespace,
                                                                                    "katalyst-agent")))
    state = tmp_path / "state"
    state.mkdir()
    mount("-t", "tmpfs", "-o", "size=16k,nr_inodes=16", "tmpfs", str(state))
    agent = None
    try:
        filler = fill(str(state))
        renewed_file = state / "credentials" / "token"
        config = tmp_path / "agent.yaml"
        # the token is due at once (renew 10^9 s before expiry); only the pod and node informers besides the renewal
        config.write_text(json.dumps({
            "node_name": node, "kubeconfig": str(kubeconfig), "sysroot": str(tmp_path), "state_dir": str(state),
            "renewed_token_file": str(renewed_file), "token_renew_before_seconds": 10 ** 9, "token_renewal_period_seconds": 0.2,
            "qos_cgroups_enabled": False, "oom_priority_enabled": False, "reclaimed_resources_enabled": False,
            "numa_binding_enabled": False, "realtime_overcommit_enabled": False}))
        agent = Agent(str(config)).build()
        for informer in (agent.pods, agent.node):
            informer.start(agent.daemon.stop_event)
        agent.daemon.start()

        def renewals(result):
            return agent.daemon.registry.get_sample_value("katalyst_token_renewals_total", {"daemon": agent.daemon.name, "result": result}) or 0
        wait_until(lambda: renewals("error") >= 3, timeout=60, what="three failed renewals on the full disk")
        loop = agent.daemon.health()[1]["token_renewal"]
        issues = []
        if "No space left on device" not in (loop["last_error"] or "") or loop["failures"] < 3:
            issues.append("the loop does not say why: %s" % loop)
        if renewals("renewed") or os.path.exists(renewed_file):
            issues.append("a token was written on a full disk")
        leftovers = [name for name in os.listdir(state) if name != "filler"] + \
            (os.listdir(state / "credentials") if os.path.isdir(state / "credentials") else [])
        if leftovers and leftovers != ["credentials"]:
            issues.append("half-written files left: %s" % leftovers)
        # it keeps working on the token it has
        core.create_namespaced_pod(namespace, {"metadata": {"name": "while-full"}, "spec": {"nodeName": node, "containers": [
            {"name": "c", "image": "x"}]}})
        try:
            wait_until(lambda: any(pod["metadata"]["name"] == "while-full" for pod in agent.pods.items()), timeout=30,
                       what="the agent to see a new pod while its disk is full")
        except AssertionError as exc:
            issues.append(str(exc))
        # room again: the next pass renews
        os.unlink(filler)
        try:
            wait_until(lambda: renewals("renewed") >= 1, timeout=30, what="a renewal once there is room")
            renewed = renewed_file.read_text().strip()
            if credentials.token_identity(credentials.jwt_claims(renewed)) != credentials.token_identity(credentials.jwt_claims(token)):
                issues.append("the renewed token is not of the agent's ServiceAccount")
        except AssertionError as exc:
            issues.append(str(exc))
        outcome = "%s: %d renewals refused (ENOSPC), then renewed; %s" % (
            "survived" if not issues else "FAILED", renewals("error"), issues or "pods still watched, nothing half written")
        print(outcome)
        record(STATE_DISK_FIGURE, outcome, not issues)
        assert not issues, issues
    finally:
        if agent is not None:
            agent.daemon.stop()
            for informer in (agent.pods, agent.node):
                informer.stop()
        umount(str(state))
