"""katalyst-controller's ``cnr`` reconciler on the emulator: a CNR for every new Node (labels, controlling owner),
node label changes merged (CNR-only labels kept), CNRs of deleted Nodes garbage-collected, and never the CNR of a
Node that still exists even when the cache says it is gone (live GET double-check)."""

import json
import threading

import pytest
from kubernetes import client
from prometheus_client import generate_latest

from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.controller import Controller
from tests.integration.backends import install_crds
from tests.integration.waiting import wait_until

CNR_ARGS = ("node.katalyst.kubewharf.io", "v1alpha1", "customnoderesources")


@pytest.fixture
def controller(kubeapi, kube_client, tmp_path):
    install_crds(kube_client, ["customnoderesources"])
    config = tmp_path / "controller.yaml"
    config.write_text(json.dumps({"kubeconfig": kubeapi.kubeconfig, "controllers": ["cnr"], "port": 0, "leader_election": False,
                                  "resync_seconds": 30, "cnr": {"period_seconds": 0.3}}))
    stop = threading.Event()
    ctl = Controller(str(config), kube_api_client=kube_client).build()
    ctl.start_informers(stop)
    wait_until(ctl.synced, what="informers to sync")
    ctl.loop_threads = ctl.daemon.start()
    yield ctl
    ctl.daemon.stop()
    stop.set()
    for informer in ctl.informers.values():
        informer.stop()


def cnrs(custom):
    return {c["metadata"]["name"]: c for c in custom.list_cluster_custom_object(*CNR_ARGS)["items"]}


def test_cnr_lifecycle_create_label_merge_and_gc(controller, kube_client):
    core, custom = client.CoreV1Api(kube_client), client.CustomObjectsApi(kube_client)
    for name in ("n1", "n2"):
        core.create_node({"metadata": {"name": name, "labels": {"zone": "a", "node": name}}})
    wait_until(lambda: set(cnrs(custom)) == {"n1", "n2"}, what="CNRs for both nodes")
    n1 = cnrs(custom)["n1"]
    uid = core.read_node("n1").metadata.uid
    assert n1["metadata"]["labels"] == {"zone": "a", "node": "n1"}
    assert n1["metadata"]["ownerReferences"] == [{"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": uid,
                                                  "controller": True, "blockOwnerDeletion": True}]

    # node labels change: merged into the CNR, the node's value wins, CNR-only labels stay
    custom.patch_cluster_custom_object(*CNR_ARGS, "n1", {"metadata": {"labels": {"agent": "x", "zone": "old"}}})
    core.patch_node("n1", {"metadata": {"labels": {"zone": "b", "tier": "online"}}})
    wait_until(lambda: cnrs(custom)["n1"]["metadata"]["labels"] == {"zone": "b", "node": "n1", "tier": "online", "agent": "x"},
               what="labels merged into the CNR")

    # a third node; then a steady state without writes
    core.create_node({"metadata": {"name": "n3"}})
    wait_until(lambda: "n3" in cnrs(custom), what="the CNR of n3")
    version = cnrs(custom)["n2"]["metadata"]["resourceVersion"]
    runs = controller.loops["cnr"].runs               # steady state: three more passes write nothing
    wait_until(lambda: controller.loops["cnr"].runs >= runs + 3, timeout=60, what="three more CNR passes")
    assert cnrs(custom)["n2"]["metadata"]["resourceVersion"] == version

    # node deleted: its CNR is garbage-collected, the others stay
    core.delete_node("n2")
    wait_until(lambda: "n2" not in cnrs(custom), what="the CNR of the deleted node to go")
    assert set(cnrs(custom)) == {"n1", "n3"}
    # a CNR without a node (left over) goes too
    custom.create_cluster_custom_object(*CNR_ARGS, {"apiVersion": "node.katalyst.kubewharf.io/v1alpha1", "kind": "CustomNodeResource",
                                                    "metadata": {"name": "ghost"}})
    wait_until(lambda: "ghost" not in cnrs(custom), what="the orphan CNR to go")


def test_delete_is_confirmed_with_a_live_get(controller, kube_client):
    core, custom = client.CoreV1Api(kube_client), client.CustomObjectsApi(kube_client)
    core.create_node({"metadata": {"name": "live"}})
    wait_until(lambda: "live" in cnrs(custom), what="the CNR")
    # the pass below deletes only CNRs its cache holds: wait until the CNR informer has seen this one
    wait_until(lambda: any(c["metadata"]["name"] == "live" for c in controller.informers["customnoderesources"].items()),
               what="the CNR informer to see the CNR")
    reconciler = controller.reconcilers["cnr"]
    controller.daemon.stop()                      # drive passes by hand from here, once the loops' last pass is over
    for thread in controller.loop_threads:
        thread.join(timeout=60)
        assert not thread.is_alive(), "loop %s still running" % thread.name
    nodes = controller.informers["nodes"]
    real_items = nodes.items
    nodes.items = lambda: []                      # a cache that lags: it does not show the node yet
    try:
        reconciler.reconcile_all()
    finally:
        nodes.items = real_items
    assert "live" in cnrs(custom)                 # the live GET found the node: kept
    assert "katalyst_cnr_lifecycle_deletes_skipped_total 1.0" in generate_latest(controller.daemon.registry).decode()
