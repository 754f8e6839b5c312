"""The demo's real backend: the pinned Kubernetes control plane of sandbox/kube in place of the API emulator.

`python -m sandbox up --backend real` builds the release when it is missing (sandbox/kube/build.sh), starts etcd,
kube-apiserver (TLS, client certificates, Node+RBAC, admission webhooks), kube-controller-manager and kube-scheduler
with their state in STATE/kube, and the sandbox kubelets against it (no sandbox scheduler: kube-scheduler binds the
pods). `demo` points site.yml at STATE/kube/admin.kubeconfig and then hands kube-scheduler the
KubeSchedulerConfiguration the scheduler_extender role wrote, as the role tells users to: `up` again restarts
kube-scheduler when that file changed and leaves everything else running.

Where this host can run one (root, containerd, runc and the CNI plugins: sandbox.kube.node.host_problems), `up` also
starts a real kubelet node, kube-node-0 (sandbox/kube/node.py: containerd + runc, real pods and processes), and writes
STATE/real-node.yml, an inventory that adds it to katalyst_nodes: `demo` passes it to the playbooks, so site.yml
installs katalyst-agent on it as on any node (on this host's real kernel, in the kubelet's cgroup tree), and the sample
workload runs its kill-order pods there (real processes, whose oom_score_adj the summary reads from /proc).
"""

import os
import subprocess
import sys

import yaml

from sandbox.kube import cluster as kube_cluster
from sandbox.kube import images as kube_images
from sandbox.kube import node as kube_node

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD_SCRIPT = os.path.join(TOP, "sandbox", "kube", "build.sh")
# The KubeSchedulerConfiguration the scheduler_extender role writes into the sandbox's state directory
SCHEDULER_CONFIG = "kube-scheduler-config.yaml"
REAL_NODE = "kube-node-0"
REAL_NODE_INVENTORY = "real-node.yml"   # the inventory `up` writes for the real node, passed to the demo's playbooks
# The sample workload's kill-order pods on the real node: our workload image's memory grower holds N MiB
# (sandbox/kube/images/workload), the MiB count appended by the sample's template.
KILL_ORDER_COMMAND = ["katalyst-workload", "grow-memory", "--hold", "--mib"]


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


def real_node_inventory(state):
    """STATE/real-node.yml when the real node runs (`up` wrote it), else None."""
    path = os.path.join(state, REAL_NODE_INVENTORY)
    return path if os.path.exists(path) else None


def node_inventory(state):
    """The inventory that adds the real node to katalyst_nodes: katalyst-agent on this host's kernel (sysroot /) in the
    kubelet's cgroup tree, its files under STATE; the node role left out, since this host is the developer's machine
    (its sysctls and top-level cgroups are not the demo's to change). The sample workload puts its kill-order pods on
    it, running our memory grower."""
    root = os.path.join(state, "nodes", REAL_NODE)
    host = {"katalyst_sandbox_dir": state, "katalyst_sysroot": "/", "node_enabled": False,
            "agent_install_dir": os.path.join(root, "opt", "katalyst"), "agent_config_dir": os.path.join(root, "etc", "katalyst"),
            "agent_state_dir": os.path.join(root, "var", "lib", "katalyst"), "agent_oom_bpf_pin_dir": os.path.join(root, "bpf"),
            "agent_kubelet_cgroup_root": kube_node.CGROUP_ROOT, "agent_reclaim_root": kube_node.CGROUP_ROOT + "/kubepods/besteffort"}
    return {"all": {"vars": {"sample_workload_kill_order_node": REAL_NODE, "sample_workload_kill_order_image": kube_images.WORKLOAD_IMAGE,
                             "sample_workload_kill_order_command": KILL_ORDER_COMMAND},
                    "children": {"katalyst_nodes": {"hosts": {REAL_NODE: host}}}}}


def real_node_up(state):
    """The real kubelet node, where this host can run one; its inventory file, or None (and why not, printed)."""
    inventory = os.path.join(state, REAL_NODE_INVENTORY)
    problems = kube_node.host_problems()
    if problems:
        if os.path.exists(inventory):
            os.remove(inventory)
        print("sandbox: no real kubelet node on this host (%s): the sandbox nodes only" % "; ".join(problems))
        return None
    try:
        kube_node.Node(kube_state(state), REAL_NODE, ensure_built()).up()
    except RuntimeError as err:
        sys.exit("sandbox: the real kubelet node did not come up: %s" % err)
    with open(inventory, "w", encoding="utf-8") as handle:
        handle.write("# Written by `python -m sandbox up --backend real`: the real kubelet node (sandbox/realbackend.py)\n")
        yaml.safe_dump(node_inventory(state), handle, default_flow_style=False, sort_keys=True)
    return inventory


def real_node_down(state):
    """Stop the real node, if it ever ran here, leaving the host as it found it (sandbox/kube/node.py)."""
    inventory = os.path.join(state, REAL_NODE_INVENTORY)
    if os.path.exists(inventory):
        os.remove(inventory)
    if os.path.isdir(os.path.join(kube_state(state), "node")):
        kube_node.Node(kube_state(state), REAL_NODE).down()


def down(state):
    """Stop the control plane of this state directory, if it ever ran (its state stays for the next `up`), and the
    real node before it."""
    if os.path.isdir(kube_state(state)):
        try:
            real_node_down(state)
            kube_cluster.Cluster(kube_state(state)).down()
        except RuntimeError as err:
            sys.exit("sandbox: the real control plane did not stop: %s" % err)


def status(state):
    """[(component, words)] of the control plane; none when it never ran here."""
    if not os.path.isdir(kube_state(state)):
        return []
    rows = [(name, "running (pid %d)%s" % (pid, "" if healthy else ", UNHEALTHY: " + detail) if pid else "stopped")
            for name, (pid, healthy, detail) in kube_cluster.Cluster(kube_state(state)).status().items()]
    if os.path.isdir(os.path.join(kube_state(state), "node")):
        rows += [("%s %s" % (REAL_NODE, name), "running (pid %d)" % record["pid"] if record else "stopped")
                 for name, record in kube_node.Node(kube_state(state), REAL_NODE).status().items()]
    return rows
