"""The real control plane of sandbox/kube/cluster.py: up, the real `kubernetes` client against it, our CRDs, down.

Skipped when the pinned release is not built (.build/kube/<version>/kube, `make kube-build`): `make test` does not
build it. Every wait is on a condition, with generous timeouts: the test machines are loaded.
"""

import datetime
import json
import os
import socket
import subprocess
import sys

import pytest
import yaml

from plugins.module_utils.crd_manifests import crds
from sandbox.kube import cluster as kube_cluster
from tests.integration.realcluster import BIN_DIR, DOWN_TIMEOUT, UP_TIMEOUT, cluster_cli, cluster_down, needs_build, wait_for

kubernetes = pytest.importorskip("kubernetes")


def listening(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(name="extender_config")
def fixture_extender_config(tmp_path):
    """The file the scheduler_extender role writes (roles/scheduler_extender/templates/kube-scheduler-config.yaml.j2,
    rendered with the role's defaults), for an extender that does not run: `ignorable`, so scheduling goes on."""
    path = tmp_path / "kube-scheduler-extender.yaml"
    path.write_text("# Ansible managed\napiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\nextenders:\n"
                    + yaml.safe_dump([{"urlPrefix": "http://127.0.0.1:%d" % kube_cluster.pick_port(set()), "filterVerb": "filter",
                                       "prioritizeVerb": "prioritize", "weight": 1, "enableHTTPS": False,
                                       "nodeCacheCapable": True, "ignorable": True, "httpTimeout": "5s",
                                       "managedResources": []}], sort_keys=False))
    return path


@pytest.fixture(name="real_cluster")
def fixture_real_cluster(tmp_path, extender_config):
    """A started control plane; `down` after the test even when it failed."""
    state = tmp_path / "cluster"
    output = cluster_cli(state, "up", "--scheduler-extender-config", str(extender_config))
    try:
        yield state, output, extender_config
    finally:
        cluster_down(state)


def test_scheduler_config_merges_the_roles_extenders(tmp_path, extender_config):
    config = yaml.safe_load(kube_cluster.scheduler_config(str(tmp_path), str(extender_config)))
    assert config["kind"] == "KubeSchedulerConfiguration"
    assert config["extenders"] == yaml.safe_load(extender_config.read_text())["extenders"]
    assert "extenders" not in yaml.safe_load(kube_cluster.scheduler_config(str(tmp_path)))


@pytest.mark.slow
@needs_build
def test_up_client_crds_down(real_cluster):  # pylint: disable=too-many-locals
    state, output, extender_config = real_cluster
    assert "control plane up in" in output
    for name in kube_cluster.COMPONENTS:
        assert "%s healthy" % name in output

    # A second `up` finds everything running and does nothing.
    again = cluster_cli(state, "up", "--scheduler-extender-config", str(extender_config))
    assert "nothing to do" in again and "started" not in again, again

    # The scheduler runs with the role's extender merged into its configuration.
    with open(state / "scheduler-config.yaml", encoding="utf-8") as handle:
        assert handle.read().count("urlPrefix") == 1

    api_client = kubernetes.config.new_client_from_config(config_file=str(state / "admin.kubeconfig"))
    try:
        core = kubernetes.client.CoreV1Api(api_client)
        names = {ns.metadata.name for ns in core.list_namespace().items}
        assert {"default", "kube-system", "kube-public", "kube-node-lease"} <= names

        node = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": "real-cluster-node-1", "labels": {"katalyst.kubewharf.io/test": "true"}}}
        core.create_node(node)
        read = core.read_node("real-cluster-node-1")
        assert read.metadata.labels["katalyst.kubewharf.io/test"] == "true"
        assert read.metadata.uid

        extensions = kubernetes.client.ApiextensionsV1Api(api_client)
        manifests = crds()
        assert manifests
        for manifest in manifests:
            extensions.create_custom_resource_definition(manifest)

        def established(name):
            conditions = extensions.read_custom_resource_definition(name).status.conditions or []
            return any(c.type == "Established" and c.status == "True" for c in conditions)

        for manifest in manifests:
            name = manifest["metadata"]["name"]
            wait_for("CRD %s Established" % name, lambda name=name: established(name))
        # ... and served: the real apiserver lists objects of each kind.
        custom = kubernetes.client.CustomObjectsApi(api_client)
        for manifest in manifests:
            spec = manifest["spec"]
            version = next(v["name"] for v in spec["versions"] if v.get("served", True))
            if spec.get("scope") == "Namespaced":
                listed = custom.list_namespaced_custom_object(spec["group"], version, "default", spec["names"]["plural"])
            else:
                listed = custom.list_cluster_custom_object(spec["group"], version, spec["names"]["plural"])
            assert listed["items"] == []
    finally:
        api_client.close()

    records = {}
    for name in kube_cluster.COMPONENTS:
        with open(state / "run" / (name + ".json"), encoding="utf-8") as handle:
            records[name] = json.load(handle)
    with open(state / "ports.json", encoding="utf-8") as handle:
        ports = json.load(handle)
    assert all(kube_cluster.alive(r) for r in records.values())
    for name, port in ports.items():
        assert listening(port), "nothing listens on 127.0.0.1:%d (%s) while the cluster runs" % (port, name)

    stopped = cluster_cli(state, "down", timeout=DOWN_TIMEOUT)
    assert "stopped kube-scheduler, kube-controller-manager, kube-apiserver, etcd" in stopped, stopped
    for name, record in records.items():
        assert not kube_cluster.alive(record), "%s (pid %d) still runs after down" % (name, record["pid"])
    for name, port in ports.items():
        assert not listening(port), "something still listens on 127.0.0.1:%d (%s) after down" % (port, name)
    assert not os.listdir(state / "run")
    assert "nothing" in cluster_cli(state, "down", timeout=DOWN_TIMEOUT)


@pytest.mark.slow
@needs_build
def test_a_port_taken_between_choice_and_bind_is_replaced(tmp_path, monkeypatch, capsys):
    """Other suites on the machine take ports at any time: the apiserver's port is taken after `up` chose it (here:
    held by a listener while port_free is made to say it is free); `up` notices the failed bind and moves."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        state = tmp_path / "cluster"
        state.mkdir()
        ports = {name: kube_cluster.pick_port({taken}) for name in kube_cluster.PORTS}
        ports["apiserver"] = taken
        (state / "ports.json").write_text(json.dumps(ports))
        monkeypatch.setattr(kube_cluster, "port_free", lambda port: True)
        cluster = kube_cluster.Cluster(str(state), BIN_DIR)
        try:
            cluster.up(timeout=UP_TIMEOUT)
            moved = json.loads((state / "ports.json").read_text())["apiserver"]
            assert moved != taken
            assert "its port was taken meanwhile: trying again on %d" % moved in capsys.readouterr().out
            assert yaml.safe_load((state / "admin.kubeconfig").read_text())["clusters"][0]["cluster"]["server"].endswith(":%d" % moved)
            assert all(state_[1] for state_ in cluster.status().values())
        finally:
            cluster.down()


def node_ready(node):
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])


def node_taints(node):
    """The node.kubernetes.io/ taints (not-ready, unreachable, ...) the node lifecycle controller manages."""
    return [t for t in node.spec.taints or [] if t.key.startswith("node.kubernetes.io/")]


def keep_ready(core, coordination, names, grace):
    """The nodes turn Ready, then stay Ready (no node.kubernetes.io/ taint) until twice the grace period has passed since
    the last one was created, checked at every poll; their Leases are renewed meanwhile."""
    def ready_untainted():
        nodes = [n for n in core.list_node().items if n.metadata.name in names]
        return len(nodes) == len(names) and all(node_ready(n) and not node_taints(n) for n in nodes)
    # A new Node is born with the not-ready taint (TaintNodesByCondition); the node lifecycle controller removes it
    # once the node reports Ready, a few seconds later.
    wait_for("%d fake nodes Ready, their not-ready taint removed" % len(names), ready_untainted)
    # The Node is created Ready; its Lease comes right after (a 404 until then: wait_for retries).
    leases = wait_for("the fake nodes' Leases", lambda: {name: coordination.read_namespaced_lease(name, "kube-node-lease") for name in names})
    assert all(lease.spec.holder_identity == name for name, lease in leases.items())
    created = max(core.read_node(name).metadata.creation_timestamp for name in names)

    def past_two_graces():
        for name in names:
            node = core.read_node(name)
            assert node_ready(node), "%s turned NotReady: %s" % (name, node.status.conditions)
            assert not node_taints(node), node.spec.taints
        return (datetime.datetime.now(datetime.timezone.utc) - created).total_seconds() > 2 * grace

    wait_for("twice the node-monitor grace period (%gs) with the nodes Ready" % grace, past_two_graces, timeout=2 * grace + 240)
    for name in names:
        assert coordination.read_namespaced_lease(name, "kube-node-lease").spec.renew_time > leases[name].spec.renew_time


@pytest.mark.slow
@needs_build
def test_fake_nodes_stay_ready_past_the_grace_period(real_cluster):
    """Three kwok-style nodes (Lease renewals + nodes/status heartbeats) stay Ready past the controller-manager's
    node-monitor grace period; once their heartbeats stop, the real node lifecycle controller gives up on them."""
    state = real_cluster[0]
    kubeconfig = str(state / "admin.kubeconfig")
    grace = float(kube_cluster.NODE_MONITOR_GRACE.rstrip("s"))
    names = ["fake-node-%d" % i for i in range(3)]
    api_client = kubernetes.config.new_client_from_config(config_file=kubeconfig)
    core = kubernetes.client.CoreV1Api(api_client)
    try:
        with open(state / "logs" / "fakenodes.log", "wb") as log, \
                subprocess.Popen([sys.executable, "-m", "sandbox.kube.fakenodes", "--kubeconfig", kubeconfig, "--count", "3"],
                                 stdout=log, stderr=subprocess.STDOUT, cwd=kube_cluster.REPO) as fakenodes:
            try:
                keep_ready(core, kubernetes.client.CoordinationV1Api(api_client), names, grace)
                assert fakenodes.poll() is None, "fakenodes exited early (see %s)" % (state / "logs" / "fakenodes.log")
            finally:
                fakenodes.terminate()
                fakenodes.wait(timeout=60)
        # The negative control: without heartbeats the real controller-manager no longer counts them Ready.
        wait_for("fake nodes not Ready without heartbeats",
                 lambda: not any(node_ready(core.read_node(name)) for name in names), timeout=grace + 240)
    finally:
        api_client.close()
