"""More of the API server's contract through the real client: events.k8s.io, collections, pagination, namespaced
custom resources, CRD and namespace deletion, error Status objects, TLS, and the command-line entry point."""

import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import yaml
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from sandbox.kubeapi.server import KubeAPIServer, write_kubeconfig
from tests.integration.tlsutil import make_ca_and_server_cert

pytestmark = pytest.mark.emulator_only("the emulator's own HTTP surface, over plain HTTP")

GROUP = "config.katalyst.kubewharf.io"
CNC_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "customnodeconfigs.%s" % GROUP},
    "spec": {"group": GROUP, "scope": "Namespaced",
             "names": {"plural": "customnodeconfigs", "singular": "customnodeconfig", "kind": "CustomNodeConfig", "shortNames": ["cnc"]},
             "versions": [{"name": "v1alpha1", "served": True, "storage": True,
                           "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                               "spec": {"type": "object", "properties": {"ratio": {"type": "number", "minimum": 1}}}}}}}]}}


def cnc(name, ratio=1.5):
    return {"apiVersion": "%s/v1alpha1" % GROUP, "kind": "CustomNodeConfig", "metadata": {"name": name}, "spec": {"ratio": ratio}}


def node(name, labels=None):
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels or {}}, "spec": {}}


def status_of(error):
    return json.loads(error.body)


@pytest.fixture
def core(kube_client):
    return client.CoreV1Api(kube_client)


def test_events_k8s_io_v1_and_core_events_are_stored_objects(kube_client, core):
    events = client.EventsV1Api(kube_client)
    events.create_namespaced_event("default", {"metadata": {"name": "e1"}, "eventTime": "2026-11-24T00:00:00.000000Z",
                                               "reportingController": "katalyst.io/agent", "reportingInstance": "n1",
                                               "action": "Reconcile", "reason": "Overcommit", "type": "Normal",
                                               "regarding": {"kind": "Node", "name": "n1"}, "note": "ratio 1.5"})
    read = events.read_namespaced_event("e1", "default")
    assert read.reason == "Overcommit" and read.regarding.name == "n1" and read.metadata.uid
    assert [e.metadata.name for e in events.list_event_for_all_namespaces().items] == ["e1"]
    # the core v1 events are a different resource with their own storage
    assert core.list_event_for_all_namespaces().items == []


def test_delete_collection_with_selector(core):
    for name, pool in (("a", "x"), ("b", "x"), ("c", "y")):
        core.create_node(node(name, {"pool": pool}))
    core.delete_collection_node(label_selector="pool=x")
    assert [n.metadata.name for n in core.list_node().items] == ["c"]


@pytest.mark.parametrize("limit", [1, 2, 4, 10])
def test_list_pagination_limit_and_continue(core, limit):
    names = ["n%d" % index for index in range(7)]
    for name in names:
        core.create_node(node(name))
    seen, token, pages = [], None, 0
    while True:
        page = core.list_node(limit=limit, _continue=token)
        seen.extend(n.metadata.name for n in page.items)
        pages += 1
        token = page.metadata._continue
        if not token:
            break
        assert page.metadata.remaining_item_count == len(names) - len(seen)
    assert seen == sorted(names) and pages == -(-len(names) // limit)


def test_namespaced_custom_resources_and_crd_delete(kube_client):
    client.ApiextensionsV1Api(kube_client).create_custom_resource_definition(CNC_CRD)
    custom = client.CustomObjectsApi(kube_client)
    client.CoreV1Api(kube_client).create_namespace({"metadata": {"name": "team"}})
    custom.create_namespaced_custom_object(GROUP, "v1alpha1", "default", "customnodeconfigs", cnc("a"))
    custom.create_namespaced_custom_object(GROUP, "v1alpha1", "team", "customnodeconfigs", cnc("a", 2))
    listed = custom.list_cluster_custom_object(GROUP, "v1alpha1", "customnodeconfigs")
    assert sorted((o["metadata"]["namespace"], o["spec"]["ratio"]) for o in listed["items"]) == [("default", 1.5), ("team", 2)]
    only_team = custom.list_namespaced_custom_object(GROUP, "v1alpha1", "team", "customnodeconfigs")["items"]
    assert [o["metadata"]["namespace"] for o in only_team] == ["team"]
    with pytest.raises(ApiException) as error:
        custom.create_namespaced_custom_object(GROUP, "v1alpha1", "default", "customnodeconfigs", cnc("b", 0.5))
    body = status_of(error.value)
    assert error.value.status == 422 and body["details"]["causes"] and "spec.ratio" in body["details"]["causes"][0]["field"]
    with pytest.raises(ApiException) as error:
        custom.create_namespaced_custom_object(GROUP, "v1alpha1", "nowhere", "customnodeconfigs", cnc("c"))
    assert error.value.status == 404
    client.ApiextensionsV1Api(kube_client).delete_custom_resource_definition(CNC_CRD["metadata"]["name"])
    with pytest.raises(ApiException) as error:
        custom.list_cluster_custom_object(GROUP, "v1alpha1", "customnodeconfigs")
    assert error.value.status == 404
    # created again, the type starts empty: the objects went with their CRD
    client.ApiextensionsV1Api(kube_client).create_custom_resource_definition(CNC_CRD)
    assert custom.list_cluster_custom_object(GROUP, "v1alpha1", "customnodeconfigs")["items"] == []


def test_namespace_delete_removes_its_objects(core):
    core.create_namespace({"metadata": {"name": "gone"}})
    core.create_namespaced_config_map("gone", {"metadata": {"name": "cm"}, "data": {"a": "1"}})
    core.create_namespaced_config_map("default", {"metadata": {"name": "cm"}, "data": {"a": "1"}})
    core.delete_namespace("gone")
    assert [(c.metadata.namespace, c.metadata.name) for c in core.list_config_map_for_all_namespaces().items] == [("default", "cm")]


@pytest.mark.parametrize("method, path, content_type, body, code, reason", [
    ("PATCH", "/api/v1/nodes/n1", "text/plain", b"x", 415, "UnsupportedMediaType"),
    ("PATCH", "/api/v1/nodes/n1", "application/merge-patch+json", b"{not json", 400, "BadRequest"),
    ("PATCH", "/api/v1/nodes/n1", "application/json-patch+json", b'[{"op": "remove", "path": "/metadata/labels/nope"}]', 422, "Invalid"),
    ("POST", "/api/v1/nodes", "application/json", b"[1]", 400, "BadRequest"),
    ("PUT", "/api/v1/nodes/n1", "application/json", b'{"metadata": {"name": "other"}}', 400, "BadRequest"),
    ("GET", "/api/v1/nodes?limit=x", None, None, 400, "BadRequest"),
    ("GET", "/api/v1/nodes?continue=@@@", None, None, 400, "BadRequest"),
    ("GET", "/api/v1/widgets", None, None, 404, "NotFound"),
])
def test_errors_are_status_objects(kubeapi, core, method, path, content_type, body, code, reason):
    before = core.create_node(node("n1")).metadata.resource_version
    request = urllib.request.Request(kubeapi.url + path, data=body, method=method, headers={"Content-Type": content_type} if content_type else {})
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request)
    status = json.loads(error.value.read())
    assert (error.value.code, status["kind"], status["code"], status["reason"]) == (code, "Status", code, reason)
    assert core.read_node("n1").metadata.resource_version == before


def test_an_early_error_keeps_the_connection_usable(kubeapi):
    connection = http.client.HTTPConnection(kubeapi.url.split("//")[1])
    try:
        connection.request("PUT", "/api/v1/widgets/x", body=json.dumps({"metadata": {"name": "x"}}), headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 404 and json.loads(response.read())["kind"] == "Status"
        connection.request("GET", "/api/v1/namespaces/default")      # same kept-alive connection
        response = connection.getresponse()
        assert response.status == 200 and json.loads(response.read())["metadata"]["name"] == "default"
    finally:
        connection.close()


def test_watch_timeout_seconds_ends_the_stream(core):
    started = time.monotonic()
    assert list(watch.Watch().stream(core.list_node, timeout_seconds=1)) == []
    assert time.monotonic() - started < 5


def test_pod_generation_and_status_phase_selector(core):
    pod = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}
    created = core.create_namespaced_pod("default", pod)
    assert created.metadata.generation == 1 and created.status.phase == "Pending"
    core.patch_namespaced_pod_status("p", "default", {"status": {"phase": "Running"}})
    assert core.read_namespaced_pod("p", "default").metadata.generation == 1
    assert [p.metadata.name for p in core.list_namespaced_pod("default", field_selector="status.phase=Running").items] == ["p"]
    bumped = core.patch_namespaced_pod("p", "default", {"spec": {"activeDeadlineSeconds": 30}})
    assert bumped.metadata.generation == 2


def test_https_serving_with_a_kubeconfig(tmp_path):
    paths = make_ca_and_server_cert(tmp_path)
    server = KubeAPIServer(tls_cert=paths["cert"], tls_key=paths["key"]).start()
    try:
        assert server.url.startswith("https://")
        kubeconfig = str(tmp_path / "kubeconfig")
        write_kubeconfig(kubeconfig, server.url, ca_file=paths["ca"])
        api = config.new_client_from_config(config_file=kubeconfig)
        assert client.CoreV1Api(api).read_namespace("default").status.phase == "Active"
    finally:
        server.stop()


def test_command_line_entry_point_persists_on_sigterm(tmp_path):
    state, kubeconfig, pidfile = (str(tmp_path / name) for name in ("state.json", "kubeconfig", "pid"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))

    def start():
        proc = subprocess.Popen([sys.executable, "-m", "sandbox.kubeapi", "--port", "0", "--state", state, "--kubeconfig", kubeconfig,
                                 "--pidfile", pidfile], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
        line = proc.stdout.readline()
        assert "serving on http://127.0.0.1:" in line
        with open(kubeconfig) as handle:
            assert yaml.safe_load(handle)["clusters"][0]["cluster"]["server"] == line.split()[-1]
        return proc

    proc = start()
    try:
        with open(pidfile) as handle:
            assert int(handle.read()) == proc.pid
        rv = client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig)).create_node(node("kept")).metadata.resource_version
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    proc = start()
    try:
        core = client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))
        assert core.read_node("kept").metadata.resource_version == rv
        assert int(core.create_node(node("next")).metadata.resource_version) > int(rv)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_state_is_saved_while_running(tmp_path):
    state = str(tmp_path / "state.json")
    server = KubeAPIServer(state_file=state, save_interval=0.1).start()
    try:
        configuration = client.Configuration()
        configuration.host = server.url
        client.CoreV1Api(client.ApiClient(configuration)).create_node(node("n1"))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if os.path.exists(state):
                with open(state) as handle:
                    if any(o["metadata"]["name"] == "n1" for o in json.load(handle)["objects"].get("/nodes", [])):
                        break
            time.sleep(0.05)
        else:
            pytest.fail("the state file never showed the new node")
    finally:
        server.stop()


def test_admission_order_mutate_then_schema_then_validate(kube_client, monkeypatch):
    """Webhook output is checked against the CRD schema, and validating webhooks see the final object."""
    from sandbox.kubeapi import admission   # pylint: disable=import-outside-toplevel
    seen = []

    def mutate(_configs, request, _store=None):
        obj = request["object"]
        if request["kind"]["kind"] != "CustomNodeConfig":
            return obj
        return dict(obj, spec=dict(obj["spec"], ratio=obj["spec"]["ratio"] - 1))

    def validate(_configs, request):
        if request["kind"]["kind"] != "CustomNodeConfig":
            return
        seen.append(request["object"]["spec"]["ratio"])
        if request["object"]["metadata"]["name"] == "deny":
            raise admission.AdmissionDenied('admission webhook "v.test.io" denied the request: no', 403)

    monkeypatch.setattr(admission, "run_mutating_webhooks", mutate)
    monkeypatch.setattr(admission, "run_validating_webhooks", validate, raising=False)
    hooks = client.AdmissionregistrationV1Api(kube_client)
    webhook = {"name": "x.test.io", "admissionReviewVersions": ["v1"], "sideEffects": "None", "clientConfig": {"url": "https://127.0.0.1:9/"}}
    hooks.create_mutating_webhook_configuration({"metadata": {"name": "m"}, "webhooks": [webhook]})
    hooks.create_validating_webhook_configuration({"metadata": {"name": "v"}, "webhooks": [webhook]})
    client.ApiextensionsV1Api(kube_client).create_custom_resource_definition(CNC_CRD)
    custom = client.CustomObjectsApi(kube_client)
    created = custom.create_namespaced_custom_object(GROUP, "v1alpha1", "default", "customnodeconfigs", cnc("ok", 2.5))
    assert created["spec"]["ratio"] == 1.5 and seen == [1.5]
    with pytest.raises(ApiException) as error:        # mutated to 0.5, below the schema's minimum
        custom.create_namespaced_custom_object(GROUP, "v1alpha1", "default", "customnodeconfigs", cnc("low", 1.5))
    assert error.value.status == 422 and seen == [1.5]
    with pytest.raises(ApiException) as error:
        custom.create_namespaced_custom_object(GROUP, "v1alpha1", "default", "customnodeconfigs", cnc("deny", 3))
    assert error.value.status == 403 and status_of(error.value)["reason"] == "Forbidden"
    assert [o["metadata"]["name"] for o in custom.list_cluster_custom_object(GROUP, "v1alpha1", "customnodeconfigs")["items"]] == ["ok"]


@pytest.mark.parametrize("containers, qos, first_requests", [
    ([{}], "BestEffort", None),
    ([{"limits": {"cpu": "1", "memory": "1Gi"}}], "Guaranteed", {"cpu": "1", "memory": "1Gi"}),
    ([{"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "1000m", "memory": "1024Mi"}}], "Guaranteed",
     {"cpu": "1000m", "memory": "1024Mi"}),
    ([{"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "500m"}}], "Burstable", {"cpu": "500m", "memory": "1Gi"}),
    ([{"limits": {"cpu": "1"}}], "Burstable", {"cpu": "1"}),
    ([{"requests": {"memory": "1Gi"}}], "Burstable", {"memory": "1Gi"}),
    ([{"limits": {"cpu": "1", "memory": "1Gi"}}, {}], "Burstable", {"cpu": "1", "memory": "1Gi"}),
    ([{"requests": {"ephemeral-storage": "1Gi"}}], "BestEffort", {"ephemeral-storage": "1Gi"}),
])
def test_new_pods_get_requests_from_limits_and_a_qos_class(core, containers, qos, first_requests):
    """pkg/apis/core/v1 defaulting and helper/qos: what a real API server sets on create."""
    spec = {"containers": [{"name": "c%d" % index, "image": "i", "resources": resources} for index, resources in enumerate(containers)]}
    created = core.create_namespaced_pod("default", {"metadata": {"name": "p"}, "spec": spec})
    assert created.status.qos_class == qos and created.status.phase == "Pending"
    assert created.spec.containers[0].resources.requests == first_requests


@pytest.mark.parametrize("group_api, resources_api, group, expected", [
    (None, client.CoreV1Api, "", {"nodes": (False, ["no"]), "nodes/status": (False, []), "pods/binding": (True, []),
                                  "pods/status": (True, []), "events": (True, ["ev"]), "namespaces": (False, ["ns"])}),
    (client.CoordinationApi, client.CoordinationV1Api, "coordination.k8s.io", {"leases": (True, [])}),
    (client.EventsApi, client.EventsV1Api, "events.k8s.io", {"events": (True, ["ev"])}),
    (client.ApiextensionsApi, client.ApiextensionsV1Api, "apiextensions.k8s.io", {"customresourcedefinitions": (False, ["crd", "crds"])}),
    (client.AdmissionregistrationApi, client.AdmissionregistrationV1Api, "admissionregistration.k8s.io",
     {"mutatingwebhookconfigurations": (False, []), "validatingwebhookconfigurations": (False, [])}),
    (client.RbacAuthorizationApi, client.RbacAuthorizationV1Api, "rbac.authorization.k8s.io",
     {"clusterroles": (False, []), "clusterrolebindings": (False, []), "roles": (True, []), "rolebindings": (True, [])}),
])
def test_discovery_of_builtin_groups(kube_client, group_api, resources_api, group, expected):
    if group_api is None:
        assert client.CoreApi(kube_client).get_api_versions().versions == ["v1"]
    else:
        doc = group_api(kube_client).get_api_group()
        assert doc.name == group and doc.preferred_version.group_version == group + "/v1"
    listed = {r.name: r for r in resources_api(kube_client).get_api_resources().resources}
    for name, (namespaced, short_names) in expected.items():
        assert listed[name].namespaced is namespaced and (listed[name].short_names or []) == short_names
    assert listed[next(iter(expected))].verbs == ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
    if "pods/binding" in expected:
        assert listed["pods/binding"].verbs == ["create"] and listed["nodes/status"].verbs == ["get", "patch", "update"]
