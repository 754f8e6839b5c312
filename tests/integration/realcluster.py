"""Helpers for tests on the real control plane of sandbox/kube/cluster.py (the pinned Kubernetes release, built by
`make kube-build`). Tests that need it are skipped with the reason when the build is missing."""

import os
import subprocess
import sys
import time

import pytest

from sandbox.kube import cluster as kube_cluster

BIN_DIR = kube_cluster.default_bin_dir()
KUBECTL = os.path.join(BIN_DIR, "kubectl")
needs_build = pytest.mark.skipif(
    not os.access(os.path.join(BIN_DIR, "kube"), os.X_OK),
    reason="the pinned Kubernetes release is not built (%s/kube is missing): run `make kube-build`" % BIN_DIR)
UP_TIMEOUT = 600
DOWN_TIMEOUT = 180


def cluster_cli(state, *args, timeout=UP_TIMEOUT):
    """Run `python -m sandbox.kube.cluster ...` as a user does (its daemons are then not children of pytest)."""
    command = [sys.executable, "-m", "sandbox.kube.cluster", args[0], "--state-dir", str(state), "--bin-dir", BIN_DIR]
    result = subprocess.run(command + list(args[1:]), capture_output=True, text=True, timeout=timeout, check=False,
                            cwd=kube_cluster.REPO)
    assert result.returncode == 0, "%s failed (%d):\n%s\n%s" % (" ".join(command), result.returncode, result.stdout, result.stderr)
    return result.stdout


def cluster_down(state):
    """`down`, whatever happened before (for a fixture's finally)."""
    subprocess.run([sys.executable, "-m", "sandbox.kube.cluster", "down", "--state-dir", str(state)],
                   capture_output=True, timeout=DOWN_TIMEOUT, check=False, cwd=kube_cluster.REPO)


def wait_for(what, check, timeout=240.0, interval=0.5):
    """Poll `check` until it returns something true (API errors count as not yet); that value."""
    import kubernetes  # pylint: disable=import-outside-toplevel
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except kubernetes.client.exceptions.ApiException as err:
            last = err
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError("timed out after %.0fs waiting for %s (last: %r)" % (timeout, what, last))


def kubectl(kubeconfig, *args, check=True, timeout=120, input_text=None):
    """Run the built kubectl against a kubeconfig; the CompletedProcess."""
    result = subprocess.run([KUBECTL, "--kubeconfig", str(kubeconfig)] + list(args), capture_output=True, text=True,
                            timeout=timeout, check=False, input=input_text)
    if check:
        assert result.returncode == 0, "kubectl %s failed (%d):\n%s%s" % (" ".join(args), result.returncode, result.stdout, result.stderr)
    return result


def start_fakenodes(kubeconfig, log_path, *options):
    """sandbox.kube.fakenodes (kubelet-less nodes kept Ready) against ``kubeconfig`` with ``options``, its output in
    ``log_path``; (process, log file) for ``stop_fakenodes``."""
    log = open(log_path, "wb")  # pylint: disable=consider-using-with
    argv = [sys.executable, "-m", "sandbox.kube.fakenodes", "--kubeconfig", str(kubeconfig)] + [str(option) for option in options]
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=kube_cluster.REPO), log  # pylint: disable=consider-using-with


def stop_fakenodes(process, log, timeout=120):
    """Stop fakenodes (it deletes its nodes on the way out when started with --delete-on-exit)."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=60)
    log.close()
