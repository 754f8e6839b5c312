"""The real kubelet node of sandbox/kube/node.py (containerd + runc + the pinned kubelet) for tests, joined to a control
plane of their own. One node per machine at a time (it owns a bridge, a cgroup root and a few host sysctls), so
a file lock serializes the pytest processes and the tests that use it share one xdist group."""

import contextlib
import fcntl
import os
import subprocess
import sys

import pytest

from sandbox.kube import node as kube_node
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


@contextlib.contextmanager
def real_node(state, *cluster_args):
    """A control plane (all four components, `cluster_args` passed to `up`) and the real node; both stopped after."""
    with open(LOCK, "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)    # another pytest run's node must be down first
        try:
            before = host_snapshot()
            cluster_cli(state, "up", *cluster_args)
            node_cli(state, "up")
            yield RealNode(state, before)
        finally:
            with contextlib.suppress(Exception):
                node_cli(state, "down", timeout=DOWN_TIMEOUT)
            cluster_down(state)


def host_snapshot():
    """What a node's `down` must leave as it found it: mounts, links, the cgroup root, the kubelet's sysctls, and
    live containerd/kubelet/shim processes."""
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        mounts = sorted(line.split()[4] for line in handle)
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

    def down(self):
        return node_cli(self.state, "down", timeout=DOWN_TIMEOUT)

    def up(self):
        return node_cli(self.state, "up")
