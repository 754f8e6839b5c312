"""The demo path end to end: `python -m sandbox up` in a temporary state directory, then `python -m sandbox demo`
(playbooks/site.yml on inventories/sandbox: CRDs, katalyst-controller with tide + overcommit + cnr,
katalyst-webhook, katalyst-scheduler-extender, the node roles and agents). Then, in the running sandbox:
a node labelled for an overcommit pool with a NodeOvercommitConfig gets amplified allocatable through a sandbox
kubelet heartbeat (the webhook the role registered), a TideNodePool gets tide roles (the controller the role
started), and a pod is bound by the sandbox scheduler configured with the role's extender. Before those checks the
sandbox goes down and up again and the demo runs once more: it restarts the daemons and rewrites no file."""

import os
import re
import socket
import subprocess
import sys
import time

import pytest
from kubernetes import client, config

from ansible_collections.katalyst.colocation.plugins.module_utils import overcommit, tide
from ansible_collections.katalyst.colocation.plugins.module_utils.quantity import parse_quantity
from tests.integration.ansible_runner import REPO
from tests.integration.waiting import wait_until

RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.MULTILINE)
PREFIX = "katalyst.kubewharf.io/"
TASK_HEADER = re.compile(r"^(?:TASK|RUNNING HANDLER) \[(.+?)\] \**$")
CHANGED = re.compile(r"^changed: \[([^\]]+)\]")
# the tasks that start a daemon under the sandbox's service stand-in: the only changes a demo after down/up may report
DAEMON_START = re.compile(r"^katalyst\.colocation\.\w+ : Run katalyst-[a-z-]+ on the sandbox( node)?$")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sandbox(state, *args, timeout=900):       # a demo takes 40-60 s on a quiet machine, minutes on a loaded one
    environ = dict(os.environ, PYTHONPATH="%s/.build/collections:%s" % (REPO, REPO),
                   ANSIBLE_COLLECTIONS_PATH="%s/.build/collections:%s/.build/deps" % (REPO, REPO), ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"),
                   PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    return subprocess.run([sys.executable, "-m", "sandbox", args[0], "--state-dir", str(state)] + list(args[1:]), cwd=REPO, env=environ,
                          capture_output=True, text=True, timeout=timeout, check=False)


def demo_recap(demo):
    """{host: changed} from a successful demo's PLAY RECAP."""
    assert demo.returncode == 0, demo.stdout[-5000:] + demo.stderr[-2000:]
    recap = {host: (int(changed), int(failed)) for host, _ok, changed, _unreachable, failed in RECAP.findall(demo.stdout)}
    assert set(recap) == {"sandbox-control", "sandbox-node-1", "sandbox-node-2", "sandbox-node-3"}, demo.stdout[-3000:]
    assert all(failed == 0 for _changed, failed in recap.values())
    return {host: changed for host, (changed, _failed) in recap.items()}


def changed_tasks(output):
    """[(task, host)] for every `changed:` line of ansible-playbook's default output (loop items included)."""
    changes, task = [], None
    for line in output.splitlines():
        header = TASK_HEADER.match(line)
        if header:
            task = header.group(1)
        changed = CHANGED.match(line)
        if changed:
            changes.append((task, changed.group(1)))
    return changes


@pytest.fixture
def sandbox_state(tmp_path):
    state = tmp_path / "sandbox"
    try:
        yield state
    finally:
        sandbox(state, "down", timeout=120)


def test_site_on_the_sandbox_overcommits_and_tides(sandbox_state):
    started = time.monotonic()
    up = sandbox(sandbox_state, "up")
    assert up.returncode == 0, up.stdout + up.stderr
    timings = {"up": time.monotonic() - started}
    # the demo's own ports are fixed; this sandbox may run beside it
    demo_options = ["-e", "katalyst_sandbox_dir=%s" % sandbox_state, "-e", "webhook_port=%d" % free_port(),
                    "-e", "scheduler_extender_port=%d" % free_port()]
    recap = demo_recap(sandbox(sandbox_state, "demo", *demo_options))
    timings["site.yml"] = time.monotonic() - started - timings["up"]
    assert recap["sandbox-control"] > 0

    # down and up again: the emulator comes back on its port, so the demo finds every file as it wrote it and only
    # starts the daemons `down` stopped (the checks below then run against the restarted sandbox)
    kubeconfig = (sandbox_state / "kubeconfig").read_text()
    restarted = time.monotonic()
    down = sandbox(sandbox_state, "down", timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    up = sandbox(sandbox_state, "up")
    assert up.returncode == 0, up.stdout + up.stderr
    assert ", the recorded one\n" in up.stdout, up.stdout
    assert (sandbox_state / "kubeconfig").read_text() == kubeconfig
    demo = sandbox(sandbox_state, "demo", *demo_options)
    recap = demo_recap(demo)
    changes = changed_tasks(demo.stdout)
    assert changes and all(DAEMON_START.match(task) for task, _host in changes), changes
    assert recap == {host: sum(1 for _task, changed_host in changes if changed_host == host) for host in recap}, (recap, changes)
    timings["down, up, site.yml"] = time.monotonic() - restarted

    api = config.new_client_from_config(config_file=str(sandbox_state / "kubeconfig"))
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    hooks = client.AdmissionregistrationV1Api(api).list_mutating_webhook_configuration().items
    assert [hook.webhooks[0].failure_policy for hook in hooks] == ["Ignore"]

    check_overcommit_amplifies_once(core, custom, lambda check, what: wait_until(check, what=what))

    check_tide_gives_roles(core, custom, lambda check, what: wait_until(check, what=what))

    # the sandbox scheduler (configured with the role's extender) binds a pod
    core.create_namespaced_pod("default", {"metadata": {"name": "web"}, "spec": {
        "containers": [{"name": "app", "image": "app", "resources": {"requests": {"cpu": "1"}}}],
        "tolerations": [{"operator": "Exists"}]}})
    wait_until(lambda: core.read_namespaced_pod("web", "default").spec.node_name is not None, what="the pod to be bound")
    scheduler_config = (sandbox_state / "kube-scheduler-config.yaml").read_text()
    assert "urlPrefix" in scheduler_config
    timings["total"] = time.monotonic() - started
    print("end-to-end timings: " + ", ".join("%s %.1f s" % item for item in timings.items()))


def check_overcommit_amplifies_once(core, custom, wait):
    """Label sandbox-node-1 into a pool and declare the pool's ratio (cpu x2): the controller annotates the node and
    its next kubelet heartbeat comes back amplified by the webhook, exactly once (x2, not x4); sandbox-node-2, not in
    the pool, keeps its value. `wait(check, what)` waits on a condition."""
    original = parse_quantity(core.read_node("sandbox-node-1").status.allocatable["cpu"])
    core.patch_node("sandbox-node-1", {"metadata": {"labels": {overcommit.POOL_LABEL: "demo"}}})
    custom.create_cluster_custom_object("overcommit.katalyst.kubewharf.io", "v1alpha1", "nodeovercommitconfigs", {
        "apiVersion": overcommit.NOC_API_VERSION, "kind": overcommit.NOC_KIND, "metadata": {"name": "demo"},
        "spec": {"nodeOvercommitSelectorVal": "demo", "resourceOvercommitRatio": {"cpu": "2"}}})

    def amplified():
        node = core.read_node("sandbox-node-1")
        annotations = node.metadata.annotations or {}
        wanted = annotations.get(PREFIX + "overcommit_allocatable_cpu")
        return (annotations.get(PREFIX + "cpu_overcommit_ratio") == "2" and wanted is not None
                and node.status.allocatable["cpu"] == wanted and parse_quantity(wanted).milli_value() == 2 * original.milli_value())
    wait(amplified, "sandbox-node-1's heartbeat to come back amplified")
    assert core.read_node("sandbox-node-1").metadata.annotations[PREFIX + "original_allocatable_cpu"] == str(original)
    assert parse_quantity(core.read_node("sandbox-node-2").status.allocatable["cpu"]) == original      # not in the pool


def check_tide_gives_roles(core, custom, wait):
    """A TideNodePool over the three nodes, one kept online and one offline: the third becomes the tide node, and the
    pool's status records the reserves. The controller labels the nodes first and writes the status after: wait for both."""
    custom.create_cluster_custom_object(tide.GROUP, "v1alpha1", tide.PLURAL, {
        "apiVersion": tide.API_VERSION, "kind": tide.KIND, "metadata": {"name": "demo"},
        "spec": {"nodeConfigs": {"nodeSelector": {"node.kubernetes.io/instance-type": "sandbox"},
                                 "reserve": {"online": 1, "offline": 1}}}})

    def tided():
        labels = {n.metadata.name: n.metadata.labels or {} for n in core.list_node().items}
        pool = custom.get_cluster_custom_object(tide.GROUP, "v1alpha1", tide.PLURAL, "demo")
        return (all(value.get(tide.LABEL_NODE_POOL) == "demo" for value in labels.values())
                and sum(1 for value in labels.values() if value.get(tide.LABEL_TIDE) == "true") == 1
                and "reserveNodes" in pool.get("status", {}))
    wait(tided, "the tide controller to give the pool's nodes their roles and record them in its status")
    pool = custom.get_cluster_custom_object(tide.GROUP, "v1alpha1", tide.PLURAL, "demo")
    reserve = pool["status"]["reserveNodes"]
    assert len(reserve["onlineNodes"]) == 1 and len(reserve["offlineNodes"]) == 1
    assert pool["metadata"]["finalizers"] == [tide.FINALIZER]
