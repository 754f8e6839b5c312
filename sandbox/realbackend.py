"""The demo's real backend: the pinned Kubernetes control plane of sandbox/kube in place of the API emulator.

`python -m sandbox up --backend real` builds the release when it is missing (sandbox/kube/build.sh), starts etcd,
kube-apiserver (TLS, client certificates, Node+RBAC, admission webhooks), kube-controller-manager and kube-scheduler
with their state in STATE/kube, and the sandbox kubelets against it (no sandbox scheduler: kube-scheduler binds the
pods). `demo` points site.yml at STATE/kube/admin.kubeconfig and then hands kube-scheduler the
KubeSchedulerConfiguration the scheduler_extender role wrote, as the role tells users to: `up` again restarts
kube-scheduler when that file changed and leaves everything else running.
"""

import os
import subprocess
import sys

from sandbox.kube import cluster as kube_cluster

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD_SCRIPT = os.path.join(TOP, "sandbox", "kube", "build.sh")
# The KubeSchedulerConfiguration the scheduler_extender role writes into the sandbox's state directory
SCHEDULER_CONFIG = "kube-scheduler-config.yaml"


def kube_state(state):
    """The real control plane's state directory inside the sandbox's (certificates, etcd data, ports, logs)."""
    return os.path.join(state, "kube")


def kubeconfig(state):
    """The admin kubeconfig (client certificate, O=system:masters) that the demo's inventory is pointed at."""
    return os.path.join(kube_state(state), "admin.kubeconfig")


def ensure_built():
    """The pinned release's binaries, built first when they are missing (~30 min cold on 2 cores)."""
    bin_dir = kube_cluster.default_bin_dir()
    if not os.access(os.path.join(bin_dir, "kube"), os.X_OK):
        print("sandbox: the pinned Kubernetes release is not built yet (%s): building it, ~30 min cold" % bin_dir, flush=True)
        if subprocess.run([BUILD_SCRIPT], cwd=TOP, check=False).returncode != 0:
            sys.exit("sandbox: building the Kubernetes release failed (%s)" % BUILD_SCRIPT)
    return bin_dir


def scheduler_extender_config(state):
    """The role's KubeSchedulerConfiguration once a demo has written it, else None (kube-scheduler without extender)."""
    path = os.path.join(state, SCHEDULER_CONFIG)
    return path if os.path.exists(path) else None


def control_plane(state):
    return kube_cluster.Cluster(kube_state(state), ensure_built())


def up(state):
    """Start what of the control plane does not run (with the role's extender once it exists); its admin kubeconfig."""
    try:
        control_plane(state).up(scheduler_extender_config(state))
    except RuntimeError as err:
        sys.exit("sandbox: the real control plane did not come up: %s" % err)
    return kubeconfig(state)


def apply_scheduler_config(state):
    """After site.yml: kube-scheduler takes the extender the role configured (restarted only when the file changed)."""
    if scheduler_extender_config(state) is None:
        print("sandbox: no KubeSchedulerConfiguration from the scheduler_extender role: kube-scheduler runs without extender")
        return
    up(state)


def down(state):
    """Stop the control plane of this state directory, if it ever ran (its state stays for the next `up`)."""
    if os.path.isdir(kube_state(state)):
        try:
            kube_cluster.Cluster(kube_state(state)).down()
        except RuntimeError as err:
            sys.exit("sandbox: the real control plane did not stop: %s" % err)


def status(state):
    """[(component, words)] of the control plane; none when it never ran here."""
    if not os.path.isdir(kube_state(state)):
        return []
    return [(name, "running (pid %d)%s" % (pid, "" if healthy else ", UNHEALTHY: " + detail) if pid else "stopped")
            for name, (pid, healthy, detail) in kube_cluster.Cluster(kube_state(state)).status().items()]
