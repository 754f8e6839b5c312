"""The emulator keeps the API server's contract, checked through the real kubernetes client over HTTP."""

import base64
import json
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kubernetes import client, dynamic, watch
from kubernetes.client.rest import ApiException

from sandbox.kube.cluster import pinned_version
from sandbox.kubeapi.server import KubeAPIServer
from tests.integration.tlsutil import make_ca_and_server_cert
from tests.integration.waiting import wait_until

GROUP = "tide.katalyst.kubewharf.io"
PINNED_RELEASE = pinned_version()      # the emulator reports the release the real backend runs
POOL_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "tidenodepools.%s" % GROUP},
    "spec": {"group": GROUP, "scope": "Cluster",
             "names": {"plural": "tidenodepools", "singular": "tidenodepool", "kind": "TideNodePool", "listKind": "TideNodePoolList",
                       "shortNames": ["tnp"]},
             "versions": [{"name": "v1alpha1", "served": True, "storage": True, "subresources": {"status": {}},
                           "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                               "spec": {"type": "object", "required": ["nodeConfigs"], "properties": {
                                   "nodeConfigs": {"type": "object", "properties": {
                                       "nodeSelector": {"type": "object", "additionalProperties": {"type": "string"}},
                                       "reserve": {"type": "object", "properties": {
                                           "online": {"x-kubernetes-int-or-string": True},
                                           "offline": {"x-kubernetes-int-or-string": True}}}}},
                                   "mode": {"type": "string", "default": "auto", "enum": ["auto", "manual"]}}},
                               "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}}}]}}


def pool(name, online="10%", offline=2):
    return {"apiVersion": "%s/v1alpha1" % GROUP, "kind": "TideNodePool", "metadata": {"name": name},
            "spec": {"nodeConfigs": {"reserve": {"online": online, "offline": offline}}}}


def node(name, labels=None):
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels or {}}, "spec": {},
            "status": {"capacity": {"cpu": "8", "memory": "16Gi"}, "allocatable": {"cpu": "7", "memory": "15Gi"}}}


def pod(name, node_name=None, labels=None):
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {}},
            "spec": {"containers": [{"name": "main", "image": "busybox", "env": [{"name": "A", "value": "1"}]}]}}
    if node_name:
        body["spec"]["nodeName"] = node_name
    return body


def status_of(error):
    return json.loads(error.body)


@pytest.fixture
def core(kube_client):
    return client.CoreV1Api(kube_client)


@pytest.fixture
def crd(kube_client):
    ext = client.ApiextensionsV1Api(kube_client)
    ext.create_custom_resource_definition(POOL_CRD)
    custom = client.CustomObjectsApi(kube_client)
    # a real apiserver serves a new CRD a moment after accepting it
    wait_until(lambda: custom.list_cluster_custom_object(GROUP, "v1alpha1", "tidenodepools"), ignore=(ApiException,),
               what="the CRD to be served")
    return custom


def test_discovery_lists_builtins_and_crds_once_established(kube_client):
    dyn = dynamic.DynamicClient(kube_client)
    assert dyn.resources.get(api_version="v1", kind="Node").namespaced is False
    assert dyn.resources.get(api_version="v1", kind="Pod").namespaced is True
    assert client.VersionApi(kube_client).get_code().git_version.startswith(PINNED_RELEASE)
    groups = [g.name for g in client.ApisApi(kube_client).get_api_versions().groups]
    assert GROUP not in groups
    ext = client.ApiextensionsV1Api(kube_client)
    ext.create_custom_resource_definition(POOL_CRD)
    # a real apiserver establishes a CRD asynchronously (the emulator at once)
    wait_until(lambda: {c.type: c.status for c in ext.read_custom_resource_definition("tidenodepools.%s" % GROUP).status.conditions or []}
               == {"NamesAccepted": "True", "Established": "True"}, what="the CRD to be Established")
    wait_until(lambda: GROUP in [g.name for g in client.ApisApi(kube_client).get_api_versions().groups], what="the group in discovery")
    # the real apiserver lists the group in /apis a moment before /apis/<group>/<version> serves it (404 until then)
    wait_until(lambda: client.CustomObjectsApi(kube_client).get_api_resources(GROUP, "v1alpha1").resources,
               what="the group version's resource list", ignore=(ApiException,))
    resources = client.CustomObjectsApi(kube_client).get_api_resources(GROUP, "v1alpha1").resources
    names = {r.name: r for r in resources}
    assert names["tidenodepools"].short_names == ["tnp"] and "tidenodepools/status" in names
    fresh = dynamic.DynamicClient(kube_client)
    assert fresh.resources.get(api_version="%s/v1alpha1" % GROUP, kind="TideNodePool").name == "tidenodepools"
    ext.delete_custom_resource_definition("tidenodepools.%s" % GROUP)
    wait_until(lambda: GROUP not in [g.name for g in client.ApisApi(kube_client).get_api_versions().groups], what="the group to go")


def test_crud_uid_timestamps_and_status_objects(core):
    created = core.create_node(node("n1"))
    assert created.metadata.uid and created.metadata.creation_timestamp and int(created.metadata.resource_version) > 0
    assert core.read_node("n1").metadata.uid == created.metadata.uid
    with pytest.raises(ApiException) as error:
        core.create_node(node("n1"))
    assert error.value.status == 409 and status_of(error.value)["reason"] == "AlreadyExists"
    with pytest.raises(ApiException) as error:
        core.read_node("missing")
    body = status_of(error.value)
    assert error.value.status == 404 and body["kind"] == "Status" and body["reason"] == "NotFound" and body["details"]["name"] == "missing"
    core.delete_node("n1")
    assert core.list_node().items == []


def test_resource_version_conflict_and_noop_update(core):
    first = core.create_node(node("n1"))
    updated = core.replace_node("n1", {"metadata": {"name": "n1", "resourceVersion": first.metadata.resource_version,
                                                    "labels": {"x": "1"}}, "spec": {}})
    assert int(updated.metadata.resource_version) > int(first.metadata.resource_version)
    with pytest.raises(ApiException) as error:
        core.replace_node("n1", {"metadata": {"name": "n1", "resourceVersion": first.metadata.resource_version}, "spec": {}})
    assert error.value.status == 409 and status_of(error.value)["reason"] == "Conflict"
    again = core.patch_node("n1", {"metadata": {"labels": {"x": "1"}}})
    assert again.metadata.resource_version == updated.metadata.resource_version   # a no-op keeps the resourceVersion


def test_noop_patch_after_a_status_write_keeps_the_resource_version(core):
    """Created, then its status written by the same client: sending the same object again (kubernetes.core.k8s
    state=present) changes nothing, not even the order of managedFields, so the resourceVersion stays. The emulator
    moved the writer's entry to the end, a new object each time: the demo's second run reported its pods changed."""
    core.create_node(node("n1", {"x": "1"}))
    written = core.patch_node_status("n1", {"status": {"allocatable": {"cpu": "1"}}})
    again = core.patch_node("n1", {"metadata": {"labels": {"x": "1"}}})
    assert again.metadata.resource_version == written.metadata.resource_version
    assert [(entry.manager, entry.subresource) for entry in again.metadata.managed_fields] == \
        [(entry.manager, entry.subresource) for entry in written.metadata.managed_fields]


def test_generation_follows_spec_not_status_or_metadata(crd):
    obj = crd.create_cluster_custom_object(GROUP, "v1alpha1", "tidenodepools", pool("p1"))
    assert obj["metadata"]["generation"] == 1
    obj = crd.patch_cluster_custom_object(GROUP, "v1alpha1", "tidenodepools", "p1", {"metadata": {"labels": {"a": "b"}}})
    assert obj["metadata"]["generation"] == 1
    obj = crd.patch_cluster_custom_object_status(GROUP, "v1alpha1", "tidenodepools", "p1", {"status": {"tideNodes": {"nodes": ["n1"]}}})
    assert obj["metadata"]["generation"] == 1 and obj["status"]["tideNodes"]["nodes"] == ["n1"]
    obj = crd.patch_cluster_custom_object(GROUP, "v1alpha1", "tidenodepools", "p1", {"spec": {"nodeConfigs": {"reserve": {"online": 3}}}})
    assert obj["metadata"]["generation"] == 2


def test_status_subresource_splits_main_and_status(core, crd):
    core.create_node(node("n1"))
    core.patch_node("n1", {"metadata": {"labels": {"a": "b"}}, "status": {"allocatable": {"cpu": "1"}}})
    assert core.read_node("n1").status.allocatable["cpu"] == "7"       # the main resource ignores status
    core.patch_node_status("n1", {"metadata": {"labels": {"c": "d"}}, "status": {"allocatable": {"cpu": "1"}}})
    read = core.read_node("n1")
    # nodes/status ignores the spec; metadata changes stand there (as the kubelet's heartbeats rely on)
    assert read.status.allocatable["cpu"] == "1" and read.metadata.labels == {"a": "b", "c": "d"}
    created = crd.create_cluster_custom_object(GROUP, "v1alpha1", "tidenodepools", dict(pool("p2"), status={"x": 1}))
    assert "status" not in created


def test_label_and_field_selectors(core):
    core.create_node(node("n1", {"pool": "a", "tier": "x"}))
    core.create_node(node("n2", {"pool": "b"}))
    assert [n.metadata.name for n in core.list_node(label_selector="pool=a").items] == ["n1"]
    assert [n.metadata.name for n in core.list_node(label_selector="pool in (a,b),!tier").items] == ["n2"]
    assert [n.metadata.name for n in core.list_node(field_selector="metadata.name=n2").items] == ["n2"]
    core.create_namespaced_pod("default", pod("p1", "n1"))
    core.create_namespaced_pod("default", pod("p2", "n2"))
    core.create_namespaced_pod("default", pod("p3"))
    names = [p.metadata.name for p in core.list_pod_for_all_namespaces(field_selector="spec.nodeName=n1").items]
    assert names == ["p1"]
    assert [p.metadata.name for p in core.list_namespaced_pod("default", field_selector="spec.nodeName=").items] == ["p3"]
    with pytest.raises(ApiException) as error:
        core.list_node(label_selector="pool in (")
    assert error.value.status == 400


def test_watch_resume_bookmarks_and_selectors(core):
    first = core.create_node(node("n1", {"pool": "a"}))
    start_rv = first.metadata.resource_version
    core.create_node(node("n2", {"pool": "b"}))
    core.patch_node("n1", {"metadata": {"labels": {"pool": "b"}}})    # n1 leaves the selector
    core.delete_node("n2")
    events = [(e["type"], e["raw_object"]["metadata"]["name"])
              for e in watch.Watch().stream(core.list_node, resource_version=start_rv, timeout_seconds=1)]
    assert events == [("ADDED", "n2"), ("MODIFIED", "n1"), ("DELETED", "n2")]
    selected = [(e["type"], e["raw_object"]["metadata"]["name"])
                for e in watch.Watch().stream(core.list_node, label_selector="pool=a", resource_version=start_rv, timeout_seconds=1)]
    assert selected == [("DELETED", "n1")]


@pytest.mark.emulator_only("a real apiserver sends a bookmark about once a minute; the emulator fixture every 0.3 s, so that "
                           "informer tests are quick")
def test_watch_sends_bookmarks(core):
    start_rv = core.create_node(node("n1")).metadata.resource_version
    stream = watch.Watch().stream(core.list_node, resource_version=start_rv, allow_watch_bookmarks=True, timeout_seconds=1)
    kinds = [e["type"] for e in stream]
    assert "BOOKMARK" in kinds


def test_watch_sees_live_changes(core):
    seen = []
    ready = threading.Event()

    def consume():
        stream = watch.Watch().stream(core.list_node, timeout_seconds=3)
        ready.set()
        for event in stream:
            seen.append((event["type"], event["raw_object"]["metadata"]["name"]))
            if len(seen) == 2:
                return

    thread = threading.Thread(target=consume)
    thread.start()
    ready.wait(2)
    time.sleep(0.3)
    core.create_node(node("live"))
    core.delete_node("live")
    thread.join(5)
    assert seen == [("ADDED", "live"), ("DELETED", "live")]


def test_watch_410_gone_after_compaction(tmp_path):
    server = KubeAPIServer(history_limit=3).start()
    try:
        configuration = client.Configuration()
        configuration.host = server.url
        core = client.CoreV1Api(client.ApiClient(configuration))
        first = core.create_node(node("a"))
        for name in ("b", "c", "d", "e"):
            core.create_node(node(name))
        with pytest.raises(ApiException) as error:
            list(watch.Watch().stream(core.list_node, resource_version=first.metadata.resource_version, timeout_seconds=1))
        assert error.value.status == 410
    finally:
        server.stop()


def test_patches_merge_json_and_strategic(core):
    core.create_node(node("n1", {"keep": "1", "drop": "1"}))
    core.patch_node("n1", {"spec": {"taints": [{"key": "a", "value": "1", "effect": "NoSchedule"}]}})
    patched = core.patch_node("n1", {"metadata": {"labels": {"drop": None}},
                                     "spec": {"taints": [{"key": "b", "value": "2", "effect": "NoExecute"}]}})
    assert [t.key for t in patched.spec.taints] == ["b"]                    # strategic: taints are an atomic list
    assert patched.metadata.labels == {"keep": "1"}                          # null removes
    # status conditions merge by type, and `$patch: delete` removes one
    core.patch_node_status("n1", {"status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    patched = core.patch_node_status("n1", {"status": {"conditions": [{"type": "DiskPressure", "status": "False"}]}})
    assert sorted(c.type for c in patched.status.conditions) == ["DiskPressure", "Ready"]
    patched = core.patch_node_status("n1", {"status": {"conditions": [{"type": "Ready", "$patch": "delete"}]}})
    assert [c.type for c in patched.status.conditions] == ["DiskPressure"]
    patched = core.patch_node("n1", {"spec": {"taints": [{"key": "b", "value": "3", "effect": "NoExecute"}]}},
                              _content_type="application/merge-patch+json")
    assert [(t.key, t.value) for t in patched.spec.taints] == [("b", "3")]   # merge patch replaces lists
    patched = core.patch_node("n1", [{"op": "add", "path": "/metadata/annotations", "value": {"x": "y"}},
                                     {"op": "test", "path": "/metadata/labels/keep", "value": "1"}])
    assert patched.metadata.annotations == {"x": "y"}
    with pytest.raises(ApiException) as error:
        core.patch_node("n1", [{"op": "test", "path": "/metadata/labels/keep", "value": "2"}])
    assert error.value.status == 422
    core.create_namespaced_pod("default", pod("p1", "n1"))
    patched = core.patch_namespaced_pod("p1", "default", {"metadata": {"annotations": {"a": "1"}},
                                                          "spec": {"containers": [{"name": "main", "image": "busybox:2"}]}})
    assert [(c.name, c.image, c.env[0].name) for c in patched.spec.containers] == [("main", "busybox:2", "A")]


def test_strategic_merge_on_custom_resources_is_415(crd):
    crd.create_cluster_custom_object(GROUP, "v1alpha1", "tidenodepools", pool("p1"))
    with pytest.raises(ApiException) as error:
        crd.patch_cluster_custom_object(GROUP, "v1alpha1", "tidenodepools", "p1", {"spec": {}},
                                        _content_type="application/strategic-merge-patch+json")
    assert error.value.status == 415


def test_crd_schema_validation_int_or_string_pruning_defaults(crd):
    created = crd.create_cluster_custom_object(GROUP, "v1alpha1", "tidenodepools",
                                               dict(pool("p1", online=3, offline="25%"), unknown={"x": 1}))
    assert created["spec"]["mode"] == "auto" and "unknown" not in created
    with pytest.raises(ApiException) as error:
        crd.create_cluster_custom_object(GROUP, "v1alpha1", "tidenodepools", pool("p2", online=True))
    body = status_of(error.value)
    assert error.value.status == 422 and body["reason"] == "Invalid"
    assert "spec.nodeConfigs.reserve.online" in body["message"]
    with pytest.raises(ApiException) as error:
        crd.create_cluster_custom_object(GROUP, "v1alpha1", "tidenodepools",
                                         {"apiVersion": "%s/v1alpha1" % GROUP, "kind": "TideNodePool", "metadata": {"name": "p3"}, "spec": {}})
    assert "spec.nodeConfigs: Required value" in status_of(error.value)["message"]


def test_server_side_dry_run_stores_nothing(core, crd):
    core.create_node(node("n1"), dry_run="All")
    assert core.list_node().items == []
    core.create_node(node("n1"))
    before = core.read_node("n1").metadata.resource_version
    result = core.patch_node("n1", {"metadata": {"labels": {"x": "y"}}}, dry_run="All")
    assert result.metadata.labels == {"x": "y"}
    assert core.read_node("n1").metadata.resource_version == before and not core.read_node("n1").metadata.labels
    with pytest.raises(ApiException):
        crd.create_cluster_custom_object(GROUP, "v1alpha1", "tidenodepools", pool("bad", online=True), dry_run="All")


def test_finalizers_hold_deletion(crd):
    crd.create_cluster_custom_object(GROUP, "v1alpha1", "tidenodepools", dict(pool("p1"), metadata={"name": "p1", "finalizers": ["x/y"]}))
    crd.delete_cluster_custom_object(GROUP, "v1alpha1", "tidenodepools", "p1")
    held = crd.get_cluster_custom_object(GROUP, "v1alpha1", "tidenodepools", "p1")
    assert held["metadata"]["deletionTimestamp"]
    crd.patch_cluster_custom_object(GROUP, "v1alpha1", "tidenodepools", "p1", {"metadata": {"finalizers": None}})
    with pytest.raises(ApiException) as error:
        crd.get_cluster_custom_object(GROUP, "v1alpha1", "tidenodepools", "p1")
    assert error.value.status == 404


def test_events_leases_and_binding(kube_client, core):
    core.create_node(node("n1"))
    core.create_namespaced_pod("default", pod("p1"))
    core.create_namespaced_event("default", {"metadata": {"name": "p1.1"}, "involvedObject": {"kind": "Pod", "name": "p1", "namespace": "default"},
                                             "reason": "OOMPriority", "message": "bad annotation", "type": "Warning"})
    events = core.list_namespaced_event("default", field_selector="involvedObject.name=p1").items
    assert [e.reason for e in events] == ["OOMPriority"]
    leases = client.CoordinationV1Api(kube_client)
    lease = leases.create_namespaced_lease("kube-system", {"metadata": {"name": "ctl"}, "spec": {"holderIdentity": "a"}})
    with pytest.raises(ApiException) as error:
        leases.replace_namespaced_lease("ctl", "kube-system", {"metadata": {"name": "ctl", "resourceVersion": "1"}, "spec": {"holderIdentity": "b"}})
    assert error.value.status == 409
    assert lease.spec.holder_identity == "a"
    core.create_namespaced_pod_binding("p1", "default", {"metadata": {"name": "p1"}, "target": {"kind": "Node", "name": "n1"}},
                                       _preload_content=False)
    bound = core.read_namespaced_pod("p1", "default")
    assert bound.spec.node_name == "n1" and [c.type for c in bound.status.conditions] == ["PodScheduled"]


def running_and_ready(core, name):
    core.patch_namespaced_pod_status(name, "default", {"status": {"phase": "Running", "conditions": [
        {"type": "Ready", "status": "True"}, {"type": "PodScheduled", "status": "True"}]}})


def test_eviction_honours_the_pod_disruption_budget(kubeapi, kube_client, core):
    """policy/v1 Eviction: allowed while the budget has room (the pod is deleted), then 429 naming the budget; a pod
    no budget selects is deleted at once; a pod that has not started is not protected."""
    for name in ("web-1", "web-2"):
        core.create_namespaced_pod("default", pod(name, labels={"app": "web"}))
        running_and_ready(core, name)
    core.create_namespaced_pod("default", pod("batch", labels={"app": "batch"}))
    running_and_ready(core, "batch")
    core.create_namespaced_pod("default", pod("web-pending", labels={"app": "web"}))
    policy = client.PolicyV1Api(kube_client)
    policy.create_namespaced_pod_disruption_budget("default", {"metadata": {"name": "web"}, "spec": {
        "minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}}})
    if kubeapi.backend == "real":   # the disruption controller writes the budget's status; the emulator computes it on demand
        wait_until(lambda: (policy.read_namespaced_pod_disruption_budget("web", "default").status.disruptions_allowed or 0) == 1,
                   what="the disruption controller to allow one disruption")

    def evict(name):
        return core.create_namespaced_pod_eviction(name, "default", {"apiVersion": "policy/v1", "kind": "Eviction",
                                                                     "metadata": {"name": name, "namespace": "default"}})
    evict("web-pending")            # Pending: not protected by the budget
    evict("web-1")
    with pytest.raises(ApiException) as refused:
        evict("web-2")
    assert refused.value.status == 429
    status = status_of(refused.value)
    assert status["reason"] == "TooManyRequests" and "disruption budget" in status["message"]
    assert [cause["reason"] for cause in status["details"]["causes"]] == ["DisruptionBudget"]
    evict("batch")                  # no budget selects it
    with pytest.raises(ApiException) as missing:
        evict("nobody")
    assert missing.value.status == 404

    def gone(name):
        try:
            core.read_namespaced_pod(name, "default")
        except ApiException as exc:
            return exc.status == 404
        return False
    wait_until(lambda: gone("web-1") and gone("batch") and gone("web-pending"), what="the evicted pods deleted")
    assert core.read_namespaced_pod("web-2", "default").metadata.deletion_timestamp is None


class _Webhook(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        request = review["request"]
        self.server.requests.append(request)
        ops = [{"op": "add", "path": "/metadata/annotations", "value": {"mutated": request["subResource"]}}]
        body = json.dumps({"apiVersion": review["apiVersion"], "kind": "AdmissionReview",
                           "response": {"uid": request["uid"], "allowed": True, "patchType": "JSONPatch",
                                        "patch": base64.b64encode(json.dumps(ops).encode()).decode()}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_mutating_webhook_for_node_status_over_https(kube_client, core, tmp_path):
    paths = make_ca_and_server_cert(tmp_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Webhook)
    server.requests = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(paths["cert"], paths["key"])
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with open(paths["ca"], "rb") as handle:
            ca_bundle = base64.b64encode(handle.read()).decode()
        hooks = client.AdmissionregistrationV1Api(kube_client)
        rule = {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"], "resources": ["nodes/status"], "scope": "*"}
        hooks.create_mutating_webhook_configuration({"metadata": {"name": "node-status"}, "webhooks": [
            {"name": "node.test.io", "admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Fail",
             "clientConfig": {"url": "https://127.0.0.1:%d/node" % server.server_address[1], "caBundle": ca_bundle}, "rules": [rule]},
            {"name": "dead.test.io", "admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Ignore",
             "timeoutSeconds": 1, "clientConfig": {"url": "https://127.0.0.1:9/dead", "caBundle": ca_bundle}, "rules": [rule]}]})
        core.create_node(node("n1"))
        assert server.requests == []                       # CREATE nodes is not in the rules
        core.patch_node_status("n1", {"status": {"allocatable": {"cpu": "2"}}})
        read = core.read_node("n1")
        assert read.metadata.annotations == {"mutated": "status"}
        assert server.requests[0]["operation"] == "UPDATE" and server.requests[0]["kind"]["kind"] == "Node"
        assert server.requests[0]["oldObject"]["status"]["allocatable"]["cpu"] == "7"
    finally:
        server.shutdown()


def test_state_survives_a_restart(tmp_path):
    state = str(tmp_path / "state.json")
    server = KubeAPIServer(state_file=state).start()
    configuration = client.Configuration()
    configuration.host = server.url
    api = client.ApiClient(configuration)
    client.ApiextensionsV1Api(api).create_custom_resource_definition(POOL_CRD)
    client.CustomObjectsApi(api).create_cluster_custom_object(GROUP, "v1alpha1", "tidenodepools", pool("p1"))
    rv = client.CoreV1Api(api).create_node(node("n1")).metadata.resource_version
    server.stop()
    server = KubeAPIServer(state_file=state).start()
    try:
        configuration.host = server.url
        api = client.ApiClient(configuration)
        assert client.CoreV1Api(api).read_node("n1").metadata.resource_version == rv
        assert client.CustomObjectsApi(api).get_cluster_custom_object(GROUP, "v1alpha1", "tidenodepools", "p1")["spec"]
        newer = client.CoreV1Api(api).create_node(node("n2")).metadata.resource_version
        assert int(newer) > int(rv)
    finally:
        server.stop()


def test_concurrent_lease_takeover_has_one_winner(kube_client):
    leases = client.CoordinationV1Api(kube_client)
    current = leases.create_namespaced_lease("kube-system", {"metadata": {"name": "race"}, "spec": {"holderIdentity": "nobody"}})
    outcomes = {}

    def take(identity):
        body = {"metadata": {"name": "race", "resourceVersion": current.metadata.resource_version}, "spec": {"holderIdentity": identity}}
        try:
            leases.replace_namespaced_lease("race", "kube-system", body)
            outcomes[identity] = "won"
        except ApiException as exc:
            outcomes[identity] = exc.status

    threads = [threading.Thread(target=take, args=("c%d" % index,)) for index in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    winners = [identity for identity, outcome in outcomes.items() if outcome == "won"]
    assert len(winners) == 1 and sorted(o for o in outcomes.values() if o != "won") == [409] * 5
    assert leases.read_namespaced_lease("race", "kube-system").spec.holder_identity == winners[0]


def test_server_side_apply_needs_a_field_manager(core):
    core.create_node(node("n1"))
    with pytest.raises(ApiException) as error:
        core.patch_node("n1", {"metadata": {"labels": {"a": "b"}}}, _content_type="application/apply-patch+yaml")
    assert error.value.status == 422 and "fieldManager: Required value" in status_of(error.value)["message"]
    assert not core.read_node("n1").metadata.labels
    core.patch_node("n1", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "labels": {"a": "b"}}},
                    _content_type="application/apply-patch+yaml", field_manager="test")
    assert core.read_node("n1").metadata.labels == {"a": "b"}
