"""The way back: on a sandbox, a snapshot of the nodes (labels, annotations, taints, allocatable; every file of their
sysroots: sysctls, cgroup trees, /etc, /var/lib) and of the cluster's webhook configurations, RBAC and CRDs; then the
demo (site.yml and the sample workload), the sample workload removed again, `uninstall.yml --check --diff` (shows
what would go and changes nothing), `uninstall.yml` and the snapshot again: identical but for the CRDs, which stay
unless katalyst_remove_crds=true (docs/uninstall-upgrade.md). A second uninstall changes nothing."""

import os
import subprocess
import sys
import time

from kubernetes import client, config

from tests.integration.ansible_runner import REPO
from tests.integration.role_testing import free_port
from tests.integration.test_site_demo import RECAP, changed_tasks, demo_recap, sandbox
from tests.integration.waiting import wait_until

NODES = ("sandbox-node-1", "sandbox-node-2", "sandbox-node-3")
MANAGED = "app.kubernetes.io/managed-by=katalyst.colocation"


def playbook(state, path, *options):
    """ansible-playbook ``path`` on the sandbox inventory of ``state``; its completed process."""
    environ = dict(os.environ, ANSIBLE_COLLECTIONS_PATH="%s/.build/collections:%s/.build/deps" % (REPO, REPO),
                   ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"))
    command = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", os.path.join(REPO, "inventories", "sandbox", "hosts.yml"),
               os.path.join(REPO, path), "-e", "katalyst_sandbox_dir=%s" % state, "-e", "katalyst_node_serial=100%"] + list(options)
    return subprocess.run(command, cwd=REPO, env=environ, capture_output=True, text=True, timeout=900, check=False)


def recap_changes(run):
    """{host: changed} of a successful run."""
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-5000:]
    recap = {host: int(changed) for host, _ok, changed, _unreachable, failed in RECAP.findall(run.stdout)}
    assert recap and all(int(failed) == 0 for *_rest, failed in RECAP.findall(run.stdout)), output[-3000:]
    return recap


def sysroot_files(state):
    """{node: {relative path: content}} of every file and non-empty directory under each node's sysroot. A kernel file's
    value is its content without the trailing newline (a sysctl or cgroup write of "100" reads back as "100\n"); an
    empty directory the install left as the parent of its own (/opt on a sandbox sysroot) is not a difference."""
    files = {}
    for node in NODES:
        root = state / "nodes" / node / "sysroot"
        files[node] = {str(path.relative_to(root)): (path.read_text(errors="replace").rstrip("\n") if path.is_file() else "<dir>")
                       for path in sorted(root.rglob("*")) if path.is_file() or any(path.iterdir())}
    return files


def cluster_snapshot(api):
    """What the collection may touch in the cluster, for comparison."""
    core = client.CoreV1Api(api)
    rbac = client.RbacAuthorizationV1Api(api)
    nodes = {}
    for node in core.list_node().items:
        if node.metadata.name in NODES:
            nodes[node.metadata.name] = {"labels": node.metadata.labels or {}, "annotations": node.metadata.annotations or {},
                                         "taints": [taint.to_dict() for taint in node.spec.taints or []],
                                         "allocatable": node.status.allocatable}
    return {"nodes": nodes,
            "webhooks": sorted(hook.metadata.name for hook in client.AdmissionregistrationV1Api(api).list_mutating_webhook_configuration().items),
            "cluster_roles": sorted(role.metadata.name for role in rbac.list_cluster_role(label_selector=MANAGED).items),
            "cluster_role_bindings": sorted(binding.metadata.name for binding in rbac.list_cluster_role_binding(label_selector=MANAGED).items),
            "roles": sorted(role.metadata.name for role in rbac.list_role_for_all_namespaces(label_selector=MANAGED).items),
            "service_accounts": sorted(account.metadata.name for account in core.list_service_account_for_all_namespaces().items
                                       if account.metadata.name.startswith("katalyst-")),
            "namespaces": sorted(namespace.metadata.name for namespace in core.list_namespace().items),
            "crds": sorted(crd.metadata.name for crd in client.ApiextensionsV1Api(api).list_custom_resource_definition().items)}


def test_uninstall_restores_the_sandbox_as_it_was(sandbox_state):
    started = time.monotonic()
    up = sandbox(sandbox_state, "up")
    assert up.returncode == 0, up.stdout + up.stderr
    api = config.new_client_from_config(config_file=str(sandbox_state / "kubeconfig"))
    before = cluster_snapshot(api)
    before_files = sysroot_files(sandbox_state)
    timings = {"up": time.monotonic() - started}

    ports = ["-e", "webhook_port=%d" % free_port(), "-e", "scheduler_extender_port=%d" % free_port()]
    demo = sandbox(sandbox_state, "demo", "-e", "katalyst_sandbox_dir=%s" % sandbox_state, *ports)
    demo_recap(demo)
    installed = cluster_snapshot(api)
    assert installed["webhooks"] and installed["cluster_roles"] and installed["crds"], installed
    # the user's part first: the sample workload's pods, pools and node labels go (the controller still runs)
    recap_changes(playbook(sandbox_state, "playbooks/examples/sample_workload.yml", "-e", "sample_workload_state=absent", *ports))
    timings["demo, sample workload removed"] = time.monotonic() - started - timings["up"]

    mark = time.monotonic()
    preview = playbook(sandbox_state, "playbooks/uninstall.yml", "--check", "--diff", *ports)
    assert sum(recap_changes(preview).values()) > 0
    previewed = {task for task, _host in changed_tasks(preview.stdout)}
    for task in ("katalyst.colocation.webhook : Unregister the MutatingWebhookConfiguration",
                 "katalyst.colocation.agent : Stop on the sandbox katalyst-agent-sandbox-node-1",
                 "Take the tide labels and taints and the overcommit annotations off the Nodes", "Remove the daemons' ServiceAccounts and RBAC",
                 "katalyst.colocation.node : Restore the sysctls from the recorded originals and remove the drop-in file"):
        assert task in previewed, (task, sorted(previewed))
    assert "sysctl-originals.json" in preview.stdout and "katalyst.kubewharf.io/original_allocatable_cpu" in preview.stdout, preview.stdout[-5000:]
    after_preview = cluster_snapshot(api)
    assert after_preview["webhooks"] == installed["webhooks"] and after_preview["cluster_roles"] == installed["cluster_roles"]
    assert (sandbox_state / "services" / "katalyst-agent-sandbox-node-1.pid").exists()

    uninstall = playbook(sandbox_state, "playbooks/uninstall.yml", "--diff", *ports)
    assert recap_changes(uninstall)["sandbox-control"] > 0
    timings["uninstall --check --diff, uninstall"] = time.monotonic() - mark

    expected = dict(before, crds=installed["crds"])        # the CRDs stay unless katalyst_remove_crds=true
    # without the webhook the next heartbeats bring the kubelets' own allocatable back
    wait_until(lambda: cluster_snapshot(api) == expected, timeout=120, what="the cluster as it was before the install")
    after_files = sysroot_files(sandbox_state)
    for node in NODES:
        changed = {path for path in set(before_files[node]) | set(after_files[node]) if before_files[node].get(path) != after_files[node].get(path)}
        assert not changed, (node, sorted(changed)[:20])

    mark = time.monotonic()
    again = playbook(sandbox_state, "playbooks/uninstall.yml", *ports)
    assert set(recap_changes(again).values()) == {0}, again.stdout[-5000:]
    timings["second uninstall"] = time.monotonic() - mark
    assert not [name for name in os.listdir(sandbox_state / "services") if name.endswith(".pid")]
    print("uninstall timings: " + ", ".join("%s %.1f s" % item for item in timings.items()))
