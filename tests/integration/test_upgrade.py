"""The way up: on a sandbox, the previous release (tests/releases/: the git tag 0.1.0 as `git archive` wrote it, kept in
the tree because a CI clone need not carry tags or history; extracted into a collection tree of its own) runs
the demo (its site.yml and its sample workload); each sample pod gets a process in its pod and container cgroups of the
node's sysroot (the sandbox kubelets run none), so that the agent gives each one its oom_score_adj and pins the NUMA
pair's cpusets. Then this tree's site.yml converges over it while a thread reads those values, and the daemons' pids,
every 50 ms: no value ever leaves {before, after} (never the default, never a wider cpuset) while the agents restart,
and each daemon restarts exactly once (its fingerprint holds the engine release). A second run reports changed=0.
At the end `uninstall.yml -e katalyst_remove_crds=true` removes the CRDs with their objects (the TideNodePool's
finalizer released), and a second one changes nothing (docs/uninstall-upgrade.md)."""

import os
import re
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request

import pytest
from kubernetes import client, config

from tests.integration.ansible_runner import REPO
from tests.integration.role_testing import free_port
from tests.integration.test_site_demo import SAMPLE, SAMPLE_PODS, changed_tasks, demo_recap, sandbox
from tests.integration.test_uninstall import playbook, recap_changes
from tests.integration.waiting import wait_until

PREVIOUS_RELEASE = "0.1.0"
RELEASE_ARCHIVE = os.path.join(REPO, "tests", "releases", "katalyst.colocation-%s.tar.xz" % PREVIOUS_RELEASE)
DAEMONS = ("katalyst-agent-sandbox-node-1", "katalyst-agent-sandbox-node-2", "katalyst-agent-sandbox-node-3",
           "katalyst-controller-sandbox-control", "katalyst-webhook-sandbox-control", "katalyst-scheduler-extender-sandbox-control")
NODES = ("sandbox-node-1", "sandbox-node-2", "sandbox-node-3")
SERVING = re.compile(r"serving /healthz and /metrics on (\S+:\d+)")
LOOP_RUNS = re.compile(r'^katalyst_loop_runs_total\{daemon="katalyst-agent",loop="(\w+)",outcome="success"\} (\S+)$', re.MULTILINE)
FIRST_PID = 3000000          # above any pid_max: the planted processes exist only in the sysroots
UNSET = "17"                 # the planted processes' oom_score_adj until the agent writes theirs
CRD_NAMES = ("tidenodepools.tide.katalyst.kubewharf.io", "nodeovercommitconfigs.overcommit.katalyst.kubewharf.io",
             "customnoderesources.node.katalyst.kubewharf.io")


def previous_release(tmp_path):
    """The tag's tree as the collection katalyst.colocation: (tree, its collections directory)."""
    tree = tmp_path / "previous"
    tree.mkdir()
    with tarfile.open(RELEASE_ARCHIVE) as archive:
        archive.extractall(tree, filter="tar")
    collections = tmp_path / "previous-collections"
    (collections / "ansible_collections" / "katalyst").mkdir(parents=True)
    (collections / "ansible_collections" / "katalyst" / "colocation").symlink_to(tree)
    return tree, collections


def archive_members(archive):
    """{path: (mode, content or link target)} of a tar archive's files and links."""
    members = {}
    for member in archive.getmembers():
        if member.isfile():
            members[member.name] = (member.mode, archive.extractfile(member).read())
        elif member.issym():
            members[member.name] = (member.mode, member.linkname)
    return members


def test_the_kept_release_archive_is_the_tag(tmp_path):
    """The archive in tests/releases holds exactly the tag's files (where this clone has the tag)."""
    tagged = subprocess.run(["git", "-C", REPO, "archive", "--format=tar", "-o", str(tmp_path / "tag.tar"), PREVIOUS_RELEASE],
                            capture_output=True, text=True, check=False)
    if tagged.returncode != 0:
        pytest.skip("this clone has no tag %s: %s" % (PREVIOUS_RELEASE, tagged.stderr.strip()))
    with tarfile.open(RELEASE_ARCHIVE) as kept, tarfile.open(tmp_path / "tag.tar") as tag:
        kept_members, tag_members = archive_members(kept), archive_members(tag)
    assert sorted(kept_members) == sorted(tag_members)
    assert [name for name in sorted(tag_members) if kept_members[name] != tag_members[name]] == []


def previous_demo(tree, collections, state, *options):
    """`python -m sandbox demo` of the previous release: its sandbox package, playbooks, roles and modules."""
    environ = dict(os.environ, PYTHONPATH="%s:%s" % (collections, tree), ANSIBLE_COLLECTIONS_PATH="%s:%s/.build/deps" % (collections, REPO),
                   ANSIBLE_CONFIG=str(tree / "ansible.cfg"), PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    return subprocess.run([sys.executable, "-m", "sandbox", "demo", "--state-dir", str(state)] + list(options), cwd=str(tree), env=environ,
                          capture_output=True, text=True, timeout=900, check=False)


def plant_processes(state, core):
    """A process for each sample pod, in its container cgroup (cgroupfs driver, cgroup v2) of its node's sysroot.
    Returns {pod: {"node", "pid", "cgroups": [container cgroup, pod cgroup]}}."""
    planted = {}
    for number, pod in enumerate(sorted(core.list_namespaced_pod(SAMPLE).items, key=lambda item: item.metadata.name)):
        root = state / "nodes" / pod.spec.node_name / "sysroot"
        klass = pod.status.qos_class
        pod_dir = root / "sys/fs/cgroup/kubepods" / ("pod" + pod.metadata.uid if klass == "Guaranteed" else "%s/pod%s" % (klass.lower(), pod.metadata.uid))
        container_dir = pod_dir / pod.status.container_statuses[0].container_id.split("://", 1)[1]
        pid = FIRST_PID + number
        for directory, procs in ((pod_dir, ""), (container_dir, "%d" % pid)):
            directory.mkdir(parents=True, exist_ok=True)
            for name, content in (("cpuset.cpus", "0-31"), ("cpuset.mems", "0-3"), ("cgroup.procs", procs)):
                (directory / name).write_text(content + "\n")
        proc = root / "proc" / str(pid)
        proc.mkdir(parents=True, exist_ok=True)
        (proc / "statm").write_text("%d %d 0 0 0 0 0\n" % (25600 * (number + 1), 25600 * (number + 1)))
        (proc / "status").write_text("Name:\tapp\nVmSwap:\t       0 kB\n")
        (proc / "oom_score_adj").write_text(UNSET + "\n")
        planted[pod.metadata.name] = {"node": pod.spec.node_name, "pid": pid, "cgroups": [container_dir, pod_dir]}
    assert set(planted) == set(SAMPLE_PODS), planted
    return planted


def watched_files(state, planted):
    """{file: label} of what the agents keep for the running pods: each process's oom_score_adj, each pod and container
    cpuset, and the per-NUMA QoS cgroups' cpusets."""
    files = {}
    for pod, where in planted.items():
        files[state / "nodes" / where["node"] / "sysroot" / "proc" / str(where["pid"]) / "oom_score_adj"] = "%s oom_score_adj" % pod
        for directory in where["cgroups"]:
            for name in ("cpuset.cpus", "cpuset.mems"):
                files[directory / name] = "%s %s/%s" % (pod, directory.name[:16], name)
    for node in sorted({where["node"] for where in planted.values()}):
        for directory in sorted((state / "nodes" / node / "sysroot" / "sys/fs/cgroup/kubepods").glob("besteffort-*")):
            for name in ("cpuset.cpus", "cpuset.mems"):
                files[directory / name] = "%s %s/%s" % (node, directory.name, name)
    return files


def read_values(files):
    """{file: value}; a file caught between the truncation and the write of a sandbox write (a kernel file is never
    empty) is left out."""
    values = {}
    for path in files:
        text = path.read_text().strip()
        if text:
            values[path] = text
    return values


def agent_passes(state, node):
    """The fewest successful passes of the pods' loops (OOM priority, NUMA binding, QoS cgroups) of the agent on ``node``
    that runs now (its /metrics address: the last one its log announced)."""
    log = (state / "services" / ("katalyst-agent-%s.log" % node)).read_text()
    address = SERVING.findall(log)[-1]
    with urllib.request.urlopen("http://%s/metrics" % address, timeout=10) as response:
        metrics = response.read().decode()
    runs = {loop: float(count) for loop, count in LOOP_RUNS.findall(metrics)}
    return min(runs.get(loop, 0) for loop in ("oom_priority", "numa_binding", "qos_cgroups"))


def read_all(files):
    """{file: value} of every file in ``files``, read again until none was caught in the middle of a write."""
    values = {}

    def complete():
        values.clear()
        values.update(read_values(files))
        return len(values) == len(files)
    wait_until(complete, timeout=60, what="a reading of every watched file")
    return values


def service_fingerprints(state):
    return {name: (state / "services" / ("%s.fingerprint" % name)).read_text() for name in DAEMONS}


def service_pids(state):
    """{daemon: its pid}; "" while a restart has no pid file (the service stand-in removes it between stop and start)."""
    pids = {}
    for name in DAEMONS:
        try:
            pids[name] = (state / "services" / ("%s.pid" % name)).read_text().strip()
        except FileNotFoundError:
            pids[name] = ""
    return pids


class Watcher(threading.Thread):
    """Reads ``files`` and the daemons' pid files every 50 ms until stopped: every value each one took, in order."""

    def __init__(self, state, files):
        super().__init__(daemon=True)
        self.state, self.files = state, files
        self.seen = {path: [] for path in files}
        self.pids = {name: [] for name in DAEMONS}
        self.reads = 0
        self.error = None
        self.stopping = threading.Event()

    def run(self):
        try:
            self.watch()
        except Exception as exc:  # pylint: disable=broad-except
            self.error = exc

    def watch(self):
        while not self.stopping.is_set():
            for path, value in read_values(self.files).items():
                if not self.seen[path] or self.seen[path][-1] != value:
                    self.seen[path].append(value)
            for name, pid in service_pids(self.state).items():
                if pid and (not self.pids[name] or self.pids[name][-1] != pid):
                    self.pids[name].append(pid)
            self.reads += 1
            self.stopping.wait(0.05)

    def stop(self):
        self.stopping.set()
        self.join()


def test_upgrade_from_the_previous_release_keeps_running_pods_as_they_are(sandbox_state, tmp_path):
    started = time.monotonic()
    tree, collections = previous_release(tmp_path)
    up = sandbox(sandbox_state, "up")
    assert up.returncode == 0, up.stdout + up.stderr
    api = config.new_client_from_config(config_file=str(sandbox_state / "kubeconfig"))
    core = client.CoreV1Api(api)
    ports = ["-e", "webhook_port=%d" % free_port(), "-e", "scheduler_extender_port=%d" % free_port()]
    demo_recap(previous_demo(tree, collections, sandbox_state, "-e", "katalyst_sandbox_dir=%s" % sandbox_state, *ports))
    timings = {"up, %s demo" % PREVIOUS_RELEASE: time.monotonic() - started}

    mark = time.monotonic()
    planted = plant_processes(sandbox_state, core)
    files = watched_files(sandbox_state, planted)
    oom_files = [path for path, label in files.items() if label.endswith("oom_score_adj")]
    pinned = [path for pod in ("db-0", "db-1") for directory in planted[pod]["cgroups"] for path in (directory / "cpuset.cpus", directory / "cpuset.mems")]
    wait_until(lambda: UNSET not in read_all(oom_files).values(), timeout=180,
               what="the %s agents to set the planted processes' oom_score_adj" % PREVIOUS_RELEASE)
    wait_until(lambda: all(read_values([path]).get(path) not in (None, "0-31", "0-3") for path in pinned), timeout=180,
               what="the %s agent to pin db-0 and db-1 to their NUMA nodes" % PREVIOUS_RELEASE)
    before = read_all(files)
    pids_before = service_pids(sandbox_state)
    fingerprints_before = service_fingerprints(sandbox_state)
    timings["pods' values set"] = time.monotonic() - mark

    mark = time.monotonic()
    watcher = Watcher(sandbox_state, files)
    watcher.start()
    try:
        upgrade = playbook(sandbox_state, "playbooks/site.yml", *ports)
        recap = recap_changes(upgrade)
        assert all(changed > 0 for changed in recap.values()), recap

        # two full passes of each new agent's loops: whatever it wants for the pods is written by then
        for node in NODES:
            wait_until(lambda node=node: agent_passes(sandbox_state, node) >= 2, timeout=180, ignore=(OSError, ValueError),
                       what="two passes of the loops of this tree's agent on %s" % node)
    finally:
        watcher.stop()
    assert watcher.error is None, watcher.error
    after = read_all(files)
    timings["site.yml over %s" % PREVIOUS_RELEASE] = time.monotonic() - mark
    regressions = {files[path]: (before[path], seen, after[path]) for path, seen in watcher.seen.items() if set(seen) - {before[path], after[path]}}
    assert not regressions, regressions
    for path in pinned:
        assert after[path] == before[path], (files[path], before[path], after[path])
    pids_after = service_pids(sandbox_state)
    fingerprints_after = service_fingerprints(sandbox_state)
    for name in DAEMONS:
        # the fingerprint starts with the engine release: a new one restarts the daemon
        assert fingerprints_after[name].split("-", 1)[0] != fingerprints_before[name].split("-", 1)[0], (name, fingerprints_after[name])
        assert pids_after[name] != pids_before[name], "%s was not restarted" % name
        assert watcher.pids[name] == [pids_before[name], pids_after[name]], (name, watcher.pids[name])
    print("upgrade: %d reads of %d files; values before -> after: %s" % (
        watcher.reads, len(files), {files[path]: (before[path], after[path]) for path in oom_files}))

    mark = time.monotonic()
    again = playbook(sandbox_state, "playbooks/site.yml", *ports)
    assert set(recap_changes(again).values()) == {0}, again.stdout[-5000:]
    assert service_pids(sandbox_state) == pids_after
    timings["second site.yml"] = time.monotonic() - mark

    # the CRDs go with their objects when asked, the TideNodePool's finalizer released (its controller stops first)
    mark = time.monotonic()
    custom = client.CustomObjectsApi(api)
    pool = custom.get_cluster_custom_object("tide.katalyst.kubewharf.io", "v1alpha1", "tidenodepools", SAMPLE)
    assert pool["metadata"].get("finalizers"), pool["metadata"]
    extensions = client.ApiextensionsV1Api(api)
    assert set(CRD_NAMES) <= {crd.metadata.name for crd in extensions.list_custom_resource_definition().items}
    removal = playbook(sandbox_state, "playbooks/uninstall.yml", "-e", "katalyst_remove_crds=true", *ports)
    assert recap_changes(removal)["sandbox-control"] > 0
    removed = changed_tasks(removal.stdout)
    assert ("Release the TideNodePools' finalizer", "sandbox-control") in removed and ("Remove the CRDs", "sandbox-control") in removed, removed
    wait_until(lambda: not set(CRD_NAMES) & {crd.metadata.name for crd in extensions.list_custom_resource_definition().items},
               timeout=60, what="the CRDs to go")
    for group, plural in (("tide.katalyst.kubewharf.io", "tidenodepools"), ("overcommit.katalyst.kubewharf.io", "nodeovercommitconfigs"),
                          ("node.katalyst.kubewharf.io", "customnoderesources")):
        try:
            leftover = custom.list_cluster_custom_object(group, "v1alpha1", plural)["items"]
        except client.ApiException as exc:
            assert exc.status == 404, exc
            leftover = []
        assert not leftover, (plural, leftover)
    again = playbook(sandbox_state, "playbooks/uninstall.yml", "-e", "katalyst_remove_crds=true", *ports)
    assert set(recap_changes(again).values()) == {0}, again.stdout[-5000:]
    timings["uninstall with the CRDs, twice"] = time.monotonic() - mark
    timings["total"] = time.monotonic() - started
    print("upgrade timings: " + ", ".join("%s %.1f s" % item for item in timings.items()))
