"""katalyst-agent's oom_priority loop in steady state: a pass whose inputs are those of the last full pass plans and
writes nothing, and every change that matters (a new pod, a new process, a changed annotation, an oom_score_adj or a
resident size changed behind the agent's back, a new cgroup) still brings a full pass."""

import json
import os
import threading

import pytest

from ansible_collections.katalyst.colocation.plugins.module_utils import oomgather
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons import agent as agent_module
from ansible_collections.katalyst.colocation.plugins.module_utils.sysfs import SysFS, SysFSError
from sandbox.sysroot import build_sysroot

QOS = "katalyst.kubewharf.io/qos_level"
MEMORY_ROOT = "/sys/fs/cgroup/memory"


class Pods:
    """What the agent reads of its pod informer."""

    def __init__(self):
        self.pods = []
        self.synced = threading.Event()
        self.synced.set()

    def items(self):
        return list(self.pods)


class Node:
    def __init__(self, tmp_path, **config):
        self.root = build_sysroot(str(tmp_path / "sysroot"), cgroup="v1")
        self.fs = SysFS(self.root)
        path = tmp_path / "agent.yaml"
        path.write_text(json.dumps(dict({"node_name": "n", "sysroot": self.root, "port": 0, "oom_bpf_pin_dir": str(tmp_path / "nopins")},
                                        **config)))
        self.agent = agent_module.Agent(str(path))
        self.agent.pods = Pods()
        self.next_pid = 1000

    def write(self, path, content):
        host = self.fs.path(path)
        os.makedirs(os.path.dirname(host), exist_ok=True)
        with open(host, "w") as handle:
            handle.write(content)

    def process(self, cgroup, adj=0, rss_pages=2000):
        """A fake process in ``cgroup`` (appended to its cgroup.procs); returns its pid."""
        self.next_pid += 1
        pid = self.next_pid
        self.write("/proc/%d/statm" % pid, "50000 %d 0 0 0 0 0\n" % rss_pages)
        self.write("/proc/%d/status" % pid, "Name:\tmain\nVmSwap:\t0 kB\n")
        self.write("/proc/%d/oom_score_adj" % pid, "%d\n" % adj)
        procs = self.fs.read_text(cgroup + "/cgroup.procs", default="")
        self.write(cgroup + "/cgroup.procs", procs + ("\n" if procs else "") + "%d\n" % pid)
        return pid

    def pod(self, name, qos_level, klass):
        """A Running pod with one container cgroup and one process in it; returns (pod, container cgroup, pid)."""
        uid = "uid-%s" % name
        pod = {"metadata": {"name": name, "namespace": "default", "uid": uid, "resourceVersion": "1", "annotations": {QOS: qos_level}},
               "spec": {"nodeName": "n", "containers": [{"name": "main"}]}, "status": {"phase": "Running", "qosClass": klass}}
        cgroup = "%s/kubepods/%s/pod%s/ctr" % (MEMORY_ROOT, klass.lower(), uid)
        os.makedirs(self.fs.path(cgroup))
        pid = self.process(cgroup)
        self.agent.pods.pods.append(pod)
        return pod, cgroup, pid

    def adj(self, pid):
        return int(self.fs.read_text("/proc/%d/oom_score_adj" % pid))

    def passes(self, kind):
        return self.agent.daemon.registry.get_sample_value("katalyst_oom_priority_passes_total", {"kind": kind}) or 0

    def converge(self, times=1):
        """Run ``times`` passes; returns how many of them were full passes."""
        full = self.passes("full")
        for _index in range(times):
            self.agent.converge_oom_priority()
        return int(self.passes("full") - full)

    def settle(self):
        """Passes until one is skipped (a change brings at most two full passes: the second reads back the writes)."""
        for _index in range(agent_module.PROCESS_RECHECK_PASSES + 3):
            if self.converge() == 0:
                return
        raise AssertionError("no pass was skipped")


@pytest.fixture
def node(tmp_path):
    node = Node(tmp_path)
    node.web = node.pod("web", "shared_cores", "Burstable")
    node.batch = node.pod("batch", "reclaimed_cores", "BestEffort")
    node.converge()
    node.settle()
    return node


def test_unchanged_passes_plan_and_write_nothing(node, monkeypatch):
    assert node.adj(node.batch[2]) > node.adj(node.web[2])
    monkeypatch.setattr(oomgather, "read_group", lambda *args, **kwargs: pytest.fail("an unchanged pass read the processes in full"))
    assert node.converge(3 * agent_module.PROCESS_RECHECK_PASSES) == 0
    assert node.passes("unchanged") >= 3 * agent_module.PROCESS_RECHECK_PASSES


def test_a_new_pod_is_ordered_on_the_next_pass(node):
    _pod, _cgroup, pid = node.pod("batch2", "reclaimed_cores", "BestEffort")
    assert node.converge() == 1
    assert node.adj(pid) == node.adj(node.batch[2]) > node.adj(node.web[2])


def test_a_new_process_in_an_existing_container_is_ordered_on_the_next_pass(node):
    pid = node.process(node.batch[1])
    assert node.converge() == 1
    assert node.adj(pid) == node.adj(node.batch[2]) > 0


def test_a_process_in_a_new_cgroup_below_a_container_is_ordered_on_the_next_pass(node):
    nested = node.batch[1] + "/nested"
    os.makedirs(node.fs.path(nested))
    pid = node.process(nested)
    assert node.converge() == 1
    assert node.adj(pid) == node.adj(node.batch[2]) > 0


def test_a_container_replaced_between_two_passes_is_seen(node):
    """One container cgroup gone and another created: the pod directory's link count is the same, the cgroup is not."""
    old_pid = node.batch[2]
    os.remove(node.fs.path(node.batch[1] + "/cgroup.procs"))
    os.rmdir(node.fs.path(node.batch[1]))
    replacement = node.batch[1][:-len("/ctr")] + "/ctr2"
    os.makedirs(node.fs.path(replacement))
    pid = node.process(replacement)
    assert node.converge() == 1
    assert node.adj(pid) == node.adj(old_pid) > 0


def test_a_changed_annotation_is_applied_on_the_next_pass(node):
    assert node.adj(node.batch[2]) > node.adj(node.web[2])
    pod = node.batch[0]
    pod["metadata"] = dict(pod["metadata"], resourceVersion="2", annotations={QOS: "system_cores"})     # now the most protected
    assert node.converge() == 1
    assert node.adj(node.batch[2]) < node.adj(node.web[2])


def test_an_oom_score_adj_changed_behind_the_agents_back_is_restored_within_the_recheck_passes(node):
    wanted = node.adj(node.batch[2])
    node.write("/proc/%d/oom_score_adj" % node.batch[2], "0\n")
    assert node.converge(agent_module.PROCESS_RECHECK_PASSES) >= 1
    assert node.adj(node.batch[2]) == wanted


def test_a_resident_size_change_is_planned_for_within_the_recheck_passes(node):
    node.write("/proc/%d/statm" % node.web[2], "50000 900000 0 0 0 0 0\n")     # web grew to 3.5 GiB
    assert node.converge(agent_module.PROCESS_RECHECK_PASSES) >= 1


def test_a_process_that_left_is_forgotten(node):
    node.write(node.batch[1] + "/cgroup.procs", "")
    assert node.converge() == 1
    assert node.agent.oom_membership.readings == {} or all(pid != str(node.batch[2]).encode() for pid in node.agent.oom_membership.readings)


def test_a_full_pass_still_runs_after_the_full_pass_period(node):
    inputs, started = node.agent.oom_last_full
    node.agent.oom_last_full = (inputs, started - node.agent.config["oom_priority_full_pass_seconds"])
    assert node.converge() == 1


def test_a_failed_pass_is_followed_by_a_full_pass(node, monkeypatch):
    pid = node.process(node.batch[1])

    def read_only(_fs):
        def apply(change):
            raise OSError("cannot write %s: read-only" % change.target)
        return apply
    monkeypatch.setattr(oomgather, "applier", read_only)
    with pytest.raises(SysFSError):
        node.converge()
    assert node.agent.oom_last_full is None
    monkeypatch.undo()
    assert node.converge() == 1
    assert node.adj(pid) > 0


def test_skip_off_makes_every_pass_a_full_pass(tmp_path):
    node = Node(tmp_path, oom_priority_full_pass_seconds=0)
    node.pod("web", "shared_cores", "Burstable")
    node.pod("batch", "reclaimed_cores", "BestEffort")
    assert node.converge(4) == 4


def test_a_reload_brings_a_full_pass(node):
    node.agent.reload()
    assert node.converge() == 1


def test_membership_cache_lists_a_directory_again_only_when_it_changed(tmp_path, monkeypatch):
    fs = SysFS(str(tmp_path))
    os.makedirs(str(tmp_path / "cg" / "a"))
    (tmp_path / "cg" / "a" / "cgroup.procs").write_text("1\n")
    cache = oomgather.MembershipCache()
    first = cache.fingerprint(fs, ["/cg"])
    listed = []
    real = SysFS.subdirs
    monkeypatch.setattr(SysFS, "subdirs", lambda self, path: listed.append(path) or real(self, path))
    assert cache.fingerprint(fs, ["/cg"]) == first and listed == []
    os.makedirs(str(tmp_path / "cg" / "b"))
    assert cache.fingerprint(fs, ["/cg"]) != first and "/cg" in listed
    assert cache.fingerprint(fs, ["/gone"]) == ((), ())


def test_sysfs_raw_helpers(tmp_path):
    fs = SysFS(str(tmp_path))
    os.makedirs(str(tmp_path / "d" / "sub"))
    (tmp_path / "d" / "file").write_text("x" * 70000)
    assert fs.subdirs("/d") == ["sub"] and fs.subdirs("/missing") == [] and fs.subdirs("/d/file") == []
    assert fs.stat("/d").st_nlink >= 2 and fs.stat("/missing") is None
    assert fs.read_bytes("/d/file") == b"x" * 70000 and fs.read_bytes("/missing") is None
