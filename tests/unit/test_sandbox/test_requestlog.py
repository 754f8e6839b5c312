"""The emulator's request log: kube-apiserver's request attributes, and one line per request with the User-Agent."""

import pytest
from kubernetes import client

from sandbox.kubeapi import requestlog
from sandbox.kubeapi.server import KubeAPIServer


@pytest.mark.parametrize("method, path, query, expected", [
    ("GET", "/api/v1/namespaces/web/pods", {}, {"verb": "list", "group": "", "resource": "pods", "namespace": "web", "name": ""}),
    ("GET", "/api/v1/pods", {"watch": "true", "fieldSelector": "spec.nodeName=n1"},
     {"verb": "watch", "resource": "pods", "namespace": "", "name": ""}),
    ("GET", "/api/v1/nodes", {"fieldSelector": "metadata.name=n1"}, {"verb": "list", "resource": "nodes", "name": "n1"}),
    ("PATCH", "/apis/node.katalyst.kubewharf.io/v1alpha1/customnoderesources/n1/status", {},
     {"verb": "patch", "group": "node.katalyst.kubewharf.io", "version": "v1alpha1", "resource": "customnoderesources",
      "subresource": "status", "name": "n1", "namespace": ""}),
    ("PUT", "/apis/coordination.k8s.io/v1/namespaces/katalyst-system/leases/katalyst-controller", {},
     {"verb": "update", "group": "coordination.k8s.io", "resource": "leases", "namespace": "katalyst-system", "name": "katalyst-controller"}),
    ("POST", "/api/v1/namespaces/default/events", {}, {"verb": "create", "resource": "events", "namespace": "default", "name": ""}),
    ("DELETE", "/api/v1/namespaces/default/pods", {}, {"verb": "deletecollection", "resource": "pods"}),
    ("DELETE", "/apis/rbac.authorization.k8s.io/v1/clusterroles/katalyst-colocation%3Akatalyst-agent", {},
     {"verb": "delete", "resource": "clusterroles", "name": "katalyst-colocation:katalyst-agent"}),
    ("GET", "/api/v1/namespaces/web", {}, {"verb": "get", "resource": "namespaces", "namespace": "web", "name": "web"}),
    ("PUT", "/api/v1/namespaces/web/finalize", {}, {"verb": "update", "resource": "namespaces", "subresource": "finalize",
                                                    "namespace": "web", "name": "web"}),
    ("GET", "/apis/tide.katalyst.kubewharf.io/v1alpha1", {}, {"verb": "get", "path": "/apis/tide.katalyst.kubewharf.io/v1alpha1"}),
    ("GET", "/version", {}, {"verb": "get", "path": "/version"}),
])
def test_request_attributes_as_the_apiserver_derives_them(method, path, query, expected):
    info = requestlog.request_info(method, path, query)
    assert {key: info.get(key) for key in expected} == expected


def test_every_request_is_logged_with_its_user_agent(tmp_path):
    path = str(tmp_path / "requests.jsonl")
    server = KubeAPIServer(request_log=path).start()
    try:
        configuration = client.Configuration()
        configuration.host = server.url
        with client.ApiClient(configuration) as api_client:
            api_client.user_agent = "katalyst-test (unit)"
            core = client.CoreV1Api(api_client)
            core.create_namespaced_config_map("default", {"metadata": {"name": "c"}})
            core.read_namespaced_config_map("c", "default")
    finally:
        server.stop()
    entries = requestlog.read(path)
    assert [(e["user_agent"], e["verb"], e["resource"], e["namespace"], e["name"]) for e in entries] == [
        ("katalyst-test (unit)", "create", "configmaps", "default", ""), ("katalyst-test (unit)", "get", "configmaps", "default", "c")]
