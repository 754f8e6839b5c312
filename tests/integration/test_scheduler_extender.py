"""katalyst-scheduler-extender over real HTTP: informers on the emulator, called by the sandbox scheduler's
kube-scheduler extender client (node names and full nodes), /healthz and /metrics."""

import json
import threading
import urllib.request

import pytest
from kubernetes import client

from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.extender import ExtenderDaemon
from sandbox.scheduler import Extender, ExtenderError, SandboxScheduler
from tests.integration.backends import install_crds
from tests.integration.waiting import wait_until

PREFIX = "katalyst.kubewharf.io/"


def make_node(core, name, cpu, annotations):
    core.create_node({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "annotations": annotations}})
    core.patch_node_status(name, {"status": {"capacity": {"cpu": cpu, "memory": "64Gi", "pods": "110"},
                                             "allocatable": {"cpu": cpu, "memory": "64Gi", "pods": "110"}}})


def make_cnr(custom, name, cpu_manager, guaranteed):
    custom.create_cluster_custom_object("node.katalyst.kubewharf.io", "v1alpha1", "customnoderesources", {
        "apiVersion": "node.katalyst.kubewharf.io/v1alpha1", "kind": "CustomNodeResource",
        "metadata": {"name": name, "annotations": {PREFIX + "overcommit_cpu_manager": cpu_manager,
                                                   PREFIX + "overcommit_memory_manager": "None",
                                                   PREFIX + "guaranteed_cpus": guaranteed}}})


def pod_body(name, cpu, guaranteed=False, node=None):
    resources = {"requests": {"cpu": cpu, "memory": "1Gi"}}
    if guaranteed:
        resources["limits"] = {"cpu": cpu, "memory": "1Gi"}
    spec = {"containers": [{"name": "app", "image": "app", "resources": resources}]}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"}, "spec": spec}


def make_cluster(kube_client, node_without_cnr):
    """Three nodes overcommitted 2x, and their CNRs; returns the CoreV1Api. a-static: kubelet says 16 cpus, amplified to
    32; 8 of them are held by a cpuset-bound pod; b-plain: no static CPU manager; ``node_without_cnr``: no CNR."""
    install_crds(kube_client, ["customnoderesources"])
    core, custom = client.CoreV1Api(kube_client), client.CustomObjectsApi(kube_client)
    ratio = {PREFIX + "cpu_overcommit_ratio": "2", PREFIX + "memory_overcommit_ratio": "1"}
    make_node(core, "a-static", "32", dict(ratio, **{PREFIX + "original_allocatable_cpu": "16"}))
    make_node(core, "b-plain", "32", dict(ratio, **{PREFIX + "original_allocatable_cpu": "16"}))
    make_node(core, node_without_cnr, "32", dict(ratio))
    make_cnr(custom, "a-static", "static", "8")
    make_cnr(custom, "b-plain", "none", "0")
    core.create_namespaced_pod("default", pod_body("bound", "8", guaranteed=True, node="a-static"))
    return core


@pytest.fixture
def cluster(kube_client):
    return make_cluster(kube_client, "c-unknown")


@pytest.fixture
def extender(kube_client, cluster):
    daemon = ExtenderDaemon({"listen_address": "127.0.0.1", "port": 0, "resync_seconds": 30}, api_client=kube_client)
    port = daemon.start(wait_synced=15)
    wait_until(lambda: daemon.cache.pods_on("a-static") and daemon.cache.cnr("b-plain"), what="extender cache")
    daemon.url = "http://127.0.0.1:%d" % port
    yield daemon
    daemon.stop()


def pod_obj(core, name, cpu, guaranteed=False):
    return core.api_client.sanitize_for_serialization(core.create_namespaced_pod("default", pod_body(name, cpu, guaranteed)))


def test_filter_by_node_names_and_full_nodes(extender, cluster):
    core = cluster
    names_client = Extender({"urlPrefix": extender.url, "filterVerb": "filter", "nodeCacheCapable": True})
    full_client = Extender({"urlPrefix": extender.url, "filterVerb": "filter"})
    nodes = [core.api_client.sanitize_for_serialization(core.read_node(n)) for n in ("a-static", "b-plain")]
    small, big = pod_obj(core, "small", "10"), pod_obj(core, "big", "20")
    bound_gpod = pod_obj(core, "gpod", "6", guaranteed=True)
    for ext in (names_client, full_client):
        passing, failed = ext.filter(small, nodes)
        assert [n["metadata"]["name"] for n in passing] == ["a-static", "b-plain"] and failed == {}
        # (16 - 8 held) * 2 = 16 cpus for non-bound pods on a-static: 20 does not fit
        passing, failed = ext.filter(big, nodes)
        assert [n["metadata"]["name"] for n in passing] == ["b-plain"]
        assert failed == {"a-static": "node overcommitment insufficient cpu"}
        # a cpuset-bound pod of 6 cpus costs 6 * 2 = 12 amplified cpus: fits in 16
        assert [n["metadata"]["name"] for n in ext.filter(bound_gpod, nodes)[0]] == ["a-static", "b-plain"]


def test_unknown_node_is_an_error_like_kube_scheduler(extender, cluster):
    core = cluster
    node = core.api_client.sanitize_for_serialization(core.read_node("c-unknown"))
    ext = Extender({"urlPrefix": extender.url, "filterVerb": "filter", "nodeCacheCapable": True})
    with pytest.raises(ExtenderError, match="GetNodeInfo c-unknown from cache fail"):
        ext.filter(pod_obj(core, "p", "1"), [node])
    # best-effort pods never need the node state
    assert ext.filter(pod_obj(core, "be", "0"), [node])[0] == [node]
    extender.extender.error_policy = "fail_node"
    passing, failed = ext.filter(pod_obj(core, "p2", "1"), [node])
    assert passing == [] and "c-unknown" in failed


def test_sandbox_scheduler_binds_through_the_extender(extender, cluster, kube_client):
    core = cluster
    scheduler = SandboxScheduler(core, [Extender({"urlPrefix": extender.url, "filterVerb": "filter", "nodeCacheCapable": True,
                                                  "ignorable": False})])
    stop = threading.Event()
    try:
        scheduler.nodes.start(stop)
        scheduler.pods.start(stop)
        core.create_namespaced_pod("default", pod_body("web", "20"))
        wait_until(lambda: scheduler.nodes.synced.is_set() and scheduler.pods.get("default/web") is not None, what="scheduler cache")
        node = scheduler.nodes.get("c-unknown")
        core.delete_node("c-unknown")
        wait_until(lambda: scheduler.nodes.get("c-unknown") is None and extender.cache.node("c-unknown") is None, what="node gone")
        assert node is not None
        assert scheduler.schedule_once() == 1
        # without the extender the scheduler would pick a-static (first by name); the filter sends it to b-plain
        assert core.read_namespaced_pod("web", "default").spec.node_name == "b-plain"
    finally:
        stop.set()
        scheduler.nodes.stop()
        scheduler.pods.stop()


def test_health_metrics_and_bad_requests(extender):
    with urllib.request.urlopen(extender.url + "/healthz", timeout=5) as response:
        assert json.loads(response.read())["ok"] is True
    request = urllib.request.Request(extender.url + "/filter", data=b"not json", method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=5)
    assert info.value.code == 400
    with urllib.request.urlopen(extender.url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    assert 'katalyst_http_requests_total{code="400",daemon="katalyst-scheduler-extender",path="filter"} 1.0' in text
