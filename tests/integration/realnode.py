"""The real kubelet node of sandbox/kube/node.py (containerd + runc + the pinned kubelet) for tests, joined to a control
plane of their own. One node per machine at a time (it owns a bridge, a cgroup root and a few host sysctls), so
a file lock serializes the pytest processes and the tests that use it share one xdist group."""

import contextlib
import fcntl
import getpass
import os
import pathlib
import subprocess
import sys
import tempfile

import pytest

from sandbox.kube import node as kube_node
from tests.integration.oomlib import oom_score_adj
from tests.integration.realcluster import BIN_DIR, DOWN_TIMEOUT, UP_TIMEOUT, cluster_cli, cluster_down

NODE_NAME = "kube-node-0"
LOCK = "/tmp/katalyst-real-node.lock"


def skip_reason():
    if not os.access(os.path.join(BIN_DIR, "kube"), os.X_OK):
        return "the pinned Kubernetes release is not built (%s/kube is missing): run `make kube-build`" % BIN_DIR
    problems = kube_node.host_problems()
    return "a kubelet node cannot run here: " + "; ".join(problems) if problems else None


# The marks a real-node test module sets: skipped with the reason where no node can run, and one xdist worker for all.
marks = [pytest.mark.slow, pytest.mark.xdist_group("real-node"),
         pytest.mark.skipif(bool(skip_reason()), reason=skip_reason() or "")]


def node_cli(state, command, timeout=UP_TIMEOUT):
    argv = [sys.executable, "-m", "sandbox.kube.node", command, "--cluster-state", str(state), "--name", NODE_NAME, "--bin-dir", BIN_DIR]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, cwd=kube_node.cluster.REPO)
    assert result.returncode == 0, "%s failed (%d):\n%s\n%s" % (" ".join(argv), result.returncode, result.stdout, result.stderr)
    return result.stdout + result.stderr


_held = []       # this process's lock file while it holds the lock (re-entrant within the process)
_running = []    # this process's real node (the session fixture's), which a test with a node of its own pauses


@contextlib.contextmanager
def host_lock():
    """The host's one real node slot: another pytest process's node must be down first."""
    if _held:
        yield
        return
    with open(LOCK, "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _held.append(lock)
        try:
            yield
        finally:
            _held.remove(lock)


@contextlib.contextmanager
def node_of_its_own():
    """For a test that starts a real node itself (the real backend's demo): the lock, and the session fixture's node,
    when this process runs it, down meanwhile and up again after (its control plane keeps running)."""
    with host_lock():
        paused = list(_running)
        for node in paused:
            node.down()
        try:
            yield
        finally:
            for node in paused:
                node.up()


@contextlib.contextmanager
def real_node(state, *cluster_args):
    """A control plane (all four components, `cluster_args` passed to `up`) and the real node; both stopped after."""
    with host_lock():
        node = None
        try:
            before = host_snapshot(state)
            cluster_cli(state, "up", *cluster_args)
            node_cli(state, "up")
            node = RealNode(state, before)
            node.wait_bootstrapped()
            _running.append(node)
            yield node
        finally:
            if node in _running:
                _running.remove(node)
            with contextlib.suppress(Exception):
                node_cli(state, "down", timeout=DOWN_TIMEOUT)
            cluster_down(state)


# Where pytest gives every test its temporary directory: tests running at the same time (the other xdist worker, or
# `make reliability` beside `make test`) mount filesystems there (loop-mounted ext4, tmpfs, read-only binds).
TESTS_TEMP_ROOT = os.path.join(tempfile.gettempdir(), "pytest-of-%s" % getpass.getuser())


def host_snapshot(own_state=None):
    """What a node's `down` must leave as it found it: mounts, links, the cgroup root, the kubelet's sysctls, and
    live containerd/kubelet/shim processes. Mounts under other tests' temporary directories are theirs, not the node's:
    left out, except those under ``own_state`` (the node's state directory)."""
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        points = [line.split()[4] for line in handle]
    own = str(own_state).rstrip("/") + "/" if own_state else None
    mounts = sorted(point for point in points if not point.startswith(TESTS_TEMP_ROOT + "/") or (own and (point + "/").startswith(own)))
    links = sorted(subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout.split("\n"))
    links = sorted(line.split(":")[1].strip().split("@")[0] for line in links if line.strip())
    sysctls = {}
    for key in kube_node.KUBELET_SYSCTLS:
        with open("/proc/sys/" + key, encoding="utf-8") as handle:
            sysctls[key] = handle.read().strip()
    processes = []
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError, IndexError):
            with open("/proc/%s/stat" % entry, encoding="utf-8") as handle:
                fields = handle.read().rsplit(")", 1)
            command = fields[0].split("(", 1)[1]
            if fields[1].split()[0] not in ("Z", "X") and command.startswith(("containerd", "kubelet")):
                processes.append(command)
    run_files = sorted(os.path.join(d, f) for d, _dirs, files in os.walk("/run/containerd") for f in files + _dirs)
    return {"mounts": mounts, "links": links, "run_containerd": run_files, "cgroups": [d for d in kube_node.cgroup_dirs() if os.path.exists(d)],
            "sysctls": sysctls, "processes": sorted(processes)}


class RealNode:  # pylint: disable=too-few-public-methods
    """What the session's real-node fixture yields."""

    def __init__(self, state, host_before):
        self.state = str(state)
        self.kubeconfig = os.path.join(self.state, "admin.kubeconfig")
        self.host_before = host_before
        self.name = NODE_NAME

    def wait_bootstrapped(self, timeout=UP_TIMEOUT):
        """Pods can be created only once the controller-manager made the namespace's default ServiceAccount."""
        import kubernetes  # pylint: disable=import-outside-toplevel
        from tests.integration.realcluster import wait_for  # pylint: disable=import-outside-toplevel
        core = kubernetes.client.CoreV1Api(kubernetes.config.new_client_from_config(self.kubeconfig))
        wait_for("the default ServiceAccount", lambda: core.read_namespaced_service_account("default", "default"), timeout=timeout)

    def down(self):
        return node_cli(self.state, "down", timeout=DOWN_TIMEOUT)

    def up(self):
        return node_cli(self.state, "up")


# --- the agent on the real node, installed by the agent role as on any node --------------------------------------

AGENT_PLAY = """
- name: The agent on the real node
  hosts: localhost
  gather_facts: false
  roles:
    - katalyst.colocation.agent
"""


def agent_vars(node, workdir, **overrides):
    """The agent role's variables for the real node: the real kernel (sysroot /), the kubelet's cgroup root, files under
    `workdir`, and the sandbox's service stand-in (this host has no systemd)."""
    workdir = str(workdir)
    # the node's admin kubeconfig as the agent's own credential: these tests are about the node, not about RBAC
    values = {"katalyst_sandbox_dir": os.path.join(workdir, "services"), "agent_kubeconfig_src": node.kubeconfig,
              "katalyst_node_name": node.name, "agent_service_manager": "sandbox", "agent_python_mode": "current",
              "agent_sysroot": "/", "agent_install_dir": os.path.join(workdir, "opt"), "agent_config_dir": os.path.join(workdir, "etc"),
              "agent_state_dir": os.path.join(workdir, "state"), "agent_metrics_port": 0,
              "agent_kubelet_cgroup_root": kube_node.CGROUP_ROOT, "agent_reclaim_root": kube_node.CGROUP_ROOT + "/kubepods/besteffort",
              "agent_oom_bpf_pin_dir": os.path.join(workdir, "bpf"),
              # no CRDs in this cluster: the CNR loops have nothing to write to
              "agent_reclaimed_resources_enabled": False, "agent_realtime_overcommit_enabled": False}
    values.update(overrides)
    return values


def install_agent(node, workdir, **overrides):
    """ansible-playbook with the agent role; (rc, tasks, output)."""
    from tests.integration.ansible_runner import run_playbook  # pylint: disable=import-outside-toplevel
    os.makedirs(os.path.join(str(workdir), "services"), exist_ok=True)  # the role runs the service from its parent
    env = {"PYTHONPATH": kube_node.cluster.REPO}        # `python -m sandbox service` from the role's chdir
    return run_playbook(AGENT_PLAY, pathlib.Path(str(workdir)), extra_vars=agent_vars(node, workdir, **overrides), env=env)


def stop_agent(node, workdir):
    subprocess.run([sys.executable, "-m", "sandbox", "service", "--state-dir", os.path.join(str(workdir), "services"), "stop",
                    "katalyst-agent-" + node.name], capture_output=True, timeout=120, check=False, cwd=kube_node.cluster.REPO)


def pod_pids(uid):
    """Host pids of a pod's processes (all its containers, not the pause container's sandbox), from the kubelet's
    memory cgroup tree."""
    base = "/sys/fs/cgroup/memory%s/kubepods" % kube_node.CGROUP_ROOT
    pids = []
    for dirpath, _dirs, files in os.walk(base):
        if "/pod" + uid + "/" in dirpath + "/" and dirpath.rsplit("/", 1)[-1] != "pod" + uid and "cgroup.procs" in files:
            with contextlib.suppress(OSError):
                with open(os.path.join(dirpath, "cgroup.procs"), encoding="utf-8") as handle:
                    pids += [int(p) for p in handle.read().split()]
    return pids


def pods_oom_score_adj(uids):
    """{name: the one oom_score_adj of all its processes} for {name: pod uid}; None while a pod has no process or its
    processes differ."""
    found = {}
    for name, uid in uids.items():
        values = {oom_score_adj(pid) for pid in pod_pids(uid)}
        if len(values) != 1:
            return None
        found[name] = values.pop()
    return found
