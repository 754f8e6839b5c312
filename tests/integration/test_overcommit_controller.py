"""The NodeOvercommitConfig reconciler end to end on the emulator, with the webhook registered: labels ->
annotations -> amplified heartbeats, status and conditions, Events, the decrease guard, deleted nodes,
restarts and config deletion."""

import json
import time

import pytest
from kubernetes import client

from ansible_collections.katalyst.colocation.plugins.module_utils.daemons import controller as controller_module
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.overcommit_controller import OvercommitReconciler
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.webhook import WebhookDaemon, webhook_configuration
from ansible_collections.katalyst.colocation.plugins.module_utils.kube import KubeClient
from tests.integration.backends import install_crds
from tests.integration.tlsutil import make_ca_and_server_cert
from tests.integration.waiting import wait_until

PREFIX = "katalyst.kubewharf.io/"
GROUP, VERSION, PLURAL = "overcommit.katalyst.kubewharf.io", "v1alpha1", "nodeovercommitconfigs"
KUBELET = {"status": {"capacity": {"cpu": "8", "memory": "16Gi", "pods": "110"},
                      "allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"}}}


@pytest.fixture
def env(kubeapi, kube_client, tmp_path):
    install_crds(kube_client)
    certs = make_ca_and_server_cert(tmp_path)
    webhook = WebhookDaemon({"listen_address": "127.0.0.1", "port": 0, "tls_cert_file": certs["cert"], "tls_key_file": certs["key"]})
    port = webhook.start()
    with open(certs["ca"]) as handle:
        client.AdmissionregistrationV1Api(kube_client).create_mutating_webhook_configuration(
            webhook_configuration("https://127.0.0.1:%d/node" % port, handle.read()))
    core = client.CoreV1Api(kube_client)
    for name, pool in (("n1", "a"), ("n2", "a"), ("n3", None)):
        labels = {PREFIX + "overcommit_node_pool": pool} if pool else {}
        core.create_node({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}})
        core.patch_node_status(name, KUBELET)
    yield core, client.CustomObjectsApi(kube_client), KubeClient(api_client=kube_client)
    webhook.stop()


def heartbeat(core, name):
    core.patch_node_status(name, KUBELET)
    return core.read_node(name)


def create_noc(custom, name, value, ratios, **spec):
    body = {"apiVersion": GROUP + "/" + VERSION, "kind": "NodeOvercommitConfig", "metadata": {"name": name},
            "spec": dict({"nodeOvercommitSelectorVal": value, "resourceOvercommitRatio": ratios}, **spec)}
    return custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, body)


def set_spec(custom, name, spec):
    custom.patch_cluster_custom_object(GROUP, VERSION, PLURAL, name, {"spec": spec})


def noc(custom, name):
    return custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, name)


def conditions(custom, name):
    return {c["type"]: c for c in noc(custom, name)["status"]["conditions"]}


def events(core, reason):
    return [e for e in core.list_namespaced_event("default").items if e.reason == reason]


def test_overcommit_end_to_end(env):
    core, custom, kube = env
    create_noc(custom, "pool-a", "a", {"cpu": "2", "memory": "1.5"})
    summary = OvercommitReconciler.standalone(kube).reconcile_all()
    assert summary["nodes_patched"] == 3 and summary["configs_updated"] == 1 and summary["errors"] == []
    n1 = core.read_node("n1").metadata.annotations
    assert n1[PREFIX + "cpu_overcommit_ratio"] == "2" and n1[PREFIX + "overcommit_allocatable_cpu"] == "16"
    assert core.read_node("n3").metadata.annotations[PREFIX + "cpu_overcommit_ratio"] == "1"
    status = noc(custom, "pool-a")["status"]
    assert status["matchedNodeList"] == ["n1", "n2"] and status["observedGeneration"] == 1
    # the next kubelet heartbeat comes back amplified; the unlabelled node does not
    node = heartbeat(core, "n1")
    assert node.status.allocatable["cpu"] == "16" and node.status.capacity["memory"] == "24Gi"
    assert heartbeat(core, "n3").status.allocatable["cpu"] == "8"
    # a second pass (and a restarted controller) writes nothing
    assert OvercommitReconciler.standalone(kube).reconcile_all()["nodes_patched"] == 0
    assert OvercommitReconciler.standalone(kube).reconcile_all()["configs_updated"] == 0

    # change the ratio: converges
    set_spec(custom, "pool-a", {"resourceOvercommitRatio": {"cpu": "3", "memory": "1.5"}})
    OvercommitReconciler.standalone(kube).reconcile_all()
    assert heartbeat(core, "n2").status.allocatable["cpu"] == "24"
    assert noc(custom, "pool-a")["status"]["observedGeneration"] == 2

    # the decrease guard: 20 cpus requested on n1; 8 * 2 = 16 would be below them
    core.create_namespaced_pod("default", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "big", "namespace": "default"},
                                           "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "c",
                                                                                      "resources": {"requests": {"cpu": "20"}}}]}})
    set_spec(custom, "pool-a", {"resourceOvercommitRatio": {"cpu": "2", "memory": "1.5"}})
    summary = OvercommitReconciler.standalone(kube).reconcile_all()
    assert summary["refused"] == ["n1"]
    assert core.read_node("n1").metadata.annotations[PREFIX + "cpu_overcommit_ratio"] == "3"
    assert core.read_node("n2").metadata.annotations[PREFIX + "cpu_overcommit_ratio"] == "2"
    refused = conditions(custom, "pool-a")["DecreaseRefused"]
    assert refused["status"] == "True" and "n1: cpu allocatable would be 16, below the 20 requested" in refused["message"]
    assert len(events(core, "RequestsExceedAllocatable")) == 1
    OvercommitReconciler.standalone(kube).reconcile_all()
    assert len(events(core, "RequestsExceedAllocatable")) == 1          # no Event storm on resync
    set_spec(custom, "pool-a", {"force": True})
    OvercommitReconciler.standalone(kube).reconcile_all()
    assert core.read_node("n1").metadata.annotations[PREFIX + "cpu_overcommit_ratio"] == "2"
    assert conditions(custom, "pool-a")["DecreaseRefused"]["status"] == "False"
    assert len(events(core, "DecreaseRefusedResolved")) == 1

    # an invalid ratio: a condition and an Event, and the nodes keep what they have
    set_spec(custom, "pool-a", {"resourceOvercommitRatio": {"cpu": "lots", "memory": "1.5"}})
    summary = OvercommitReconciler.standalone(kube).reconcile_all()
    assert summary["nodes_patched"] == 0
    assert conditions(custom, "pool-a")["InvalidRatio"]["status"] == "True"
    assert len(events(core, "InvalidRatio")) == 1
    set_spec(custom, "pool-a", {"resourceOvercommitRatio": {"cpu": "2", "memory": "1.5"}})
    OvercommitReconciler.standalone(kube).reconcile_all()

    # a second config for the same pool: the newest wins, both report the conflict
    # (creationTimestamp has whole seconds: within the same second the tie goes by name, to pool-a)
    time.sleep(1.1)
    create_noc(custom, "pool-a-new", "a", {"cpu": "2.5"})
    OvercommitReconciler.standalone(kube).reconcile_all()
    assert conditions(custom, "pool-a")["Conflict"]["status"] == "True"
    assert conditions(custom, "pool-a-new")["Conflict"]["status"] == "True"
    assert noc(custom, "pool-a-new")["status"]["matchedNodeList"] == ["n1", "n2"]
    assert core.read_node("n2").metadata.annotations[PREFIX + "cpu_overcommit_ratio"] == "2.5"
    assert len(events(core, "SelectorConflict")) == 2
    custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, "pool-a-new")
    OvercommitReconciler.standalone(kube).reconcile_all()
    assert conditions(custom, "pool-a")["Conflict"]["status"] == "False"

    # delete the config: nodes return to their originals at the next heartbeat (the guard only protects configs)
    custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, "pool-a")
    OvercommitReconciler.standalone(kube).reconcile_all()
    for name in ("n1", "n2"):
        node = heartbeat(core, name)
        assert node.metadata.annotations[PREFIX + "cpu_overcommit_ratio"] == "1"
        assert node.status.allocatable == {"cpu": "8", "memory": "16Gi", "pods": "110"}


def test_deleted_node_is_done(env):
    core, custom, kube = env
    create_noc(custom, "pool-a", "a", {"cpu": "2"})
    reconciler = OvercommitReconciler.standalone(kube)
    stale = reconciler.snapshot()              # the node is still in this (cache) snapshot
    core.delete_node("n2")
    summary = reconciler.reconcile_all(stale)
    assert summary["nodes_gone"] == 1 and summary["errors"] == []
    # the next pass does not know n2 any more: nothing to retry
    summary = reconciler.reconcile_all()
    assert summary["nodes"] == 2 and summary["nodes_gone"] == 0
    assert noc(custom, "pool-a")["status"]["matchedNodeList"] == ["n1"]


def test_realtime_ratio_from_cnr_caps_the_amplification(env):
    core, custom, kube = env
    create_noc(custom, "pool-a", "a", {"cpu": "2"})
    custom.create_cluster_custom_object("node.katalyst.kubewharf.io", "v1alpha1", "customnoderesources", {
        "apiVersion": "node.katalyst.kubewharf.io/v1alpha1", "kind": "CustomNodeResource",
        "metadata": {"name": "n1", "annotations": {PREFIX + "cpu_overcommit_ratio": "1.50", PREFIX + "overcommit_cpu_manager": "static",
                                                   PREFIX + "guaranteed_cpus": "2"}}})
    OvercommitReconciler.standalone(kube).reconcile_all()
    annotations = core.read_node("n1").metadata.annotations
    assert annotations[PREFIX + "realtime_cpu_overcommit_ratio"] == "1.50"
    assert annotations[PREFIX + "overcommit_allocatable_cpu"] == "11"        # (8 - 2) * 1.5 + 2
    assert heartbeat(core, "n1").status.allocatable["cpu"] == "11"


def test_dry_run_writes_nothing(env):
    core, custom, kube = env
    create_noc(custom, "pool-a", "a", {"cpu": "2"})
    summary = OvercommitReconciler.standalone(kube, {"dry_run": True}).reconcile_all()
    assert summary["nodes_patched"] == 3
    assert PREFIX + "cpu_overcommit_ratio" not in (core.read_node("n1").metadata.annotations or {})
    assert "status" not in noc(custom, "pool-a") or not noc(custom, "pool-a")["status"].get("matchedNodeList")


def test_runs_inside_katalyst_controller(env, kube_client, tmp_path, monkeypatch):
    """Registered in the controller daemon: informers, watch-triggered passes, no leader election."""
    core, custom, _kube = env
    monkeypatch.setitem(controller_module.RECONCILERS, "overcommit", OvercommitReconciler)
    config = tmp_path / "controller.yaml"
    config.write_text(json.dumps({"controllers": ["overcommit"], "leader_election": False, "port": 0,
                                  "overcommit": {"period_seconds": 60}}))
    controller = controller_module.Controller(str(config), kube_api_client=kube_client).build()
    controller.start_informers(controller.daemon.stop_event)
    controller.daemon.start()
    try:
        create_noc(custom, "pool-a", "a", {"cpu": "2"})
        wait_until(lambda: (core.read_node("n2").metadata.annotations or {}).get(PREFIX + "overcommit_allocatable_cpu") == "16",
                   timeout=60, what="n2's overcommitted allocatable")
        assert heartbeat(core, "n2").status.allocatable["cpu"] == "16"
        set_spec(custom, "pool-a", {"resourceOvercommitRatio": {"cpu": "3"}})
        wait_until(lambda: (core.read_node("n2").metadata.annotations or {}).get(PREFIX + "cpu_overcommit_ratio") == "3",
                   timeout=60, what="n2's new ratio")
        nodes, loop = controller.informers["nodes"], controller.loops["overcommit"]

        def settled():     # the events of the controller's own writes delivered, no pass pending
            cached = {n["metadata"]["name"]: n["metadata"]["resourceVersion"] for n in nodes.items()}
            return cached == {n.metadata.name: n.metadata.resource_version for n in core.list_node().items} and not loop.wakeup.is_set()
        wait_until(settled, timeout=60, what="the controller to settle")
        passes = loop.runs                         # (a pass still running now may count once more)
        for _beat in range(3):
            last = heartbeat(core, "n3")           # heartbeats that change nothing do not trigger passes
        seen = int(last.metadata.resource_version)     # (the controller may write n3 after it: at least this version)
        wait_until(lambda: any(n["metadata"]["name"] == "n3" and int(n["metadata"]["resourceVersion"]) >= seen for n in nodes.items()),
                   timeout=60, what="the informer to see the heartbeats")
        assert controller.loops["overcommit"].runs - passes <= 1
        assert controller.loops["overcommit"].failures == 0
    finally:
        controller.daemon.stop()
        for informer in controller.informers.values():
            informer.stop()
