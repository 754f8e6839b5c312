"""katalyst-webhook over HTTPS: AdmissionReview v1 and v1beta1 directly, and registered in the emulator,
where a kubelet-style nodes/status update comes back amplified (and is never amplified twice)."""

import base64
import json
import ssl
import urllib.request

import jsonpatch
import pytest
from kubernetes import client

from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.webhook import WebhookDaemon, review, webhook_configuration
from ansible_collections.katalyst.colocation.plugins.module_utils.overcommit import mutate_node
from tests.integration.tlsutil import make_ca_and_server_cert

PREFIX = "katalyst.kubewharf.io/"


@pytest.fixture
def certs(tmp_path):
    return make_ca_and_server_cert(tmp_path)


@pytest.fixture
def webhook(certs):
    daemon = WebhookDaemon({"listen_address": "127.0.0.1", "port": 0, "tls_cert_file": certs["cert"], "tls_key_file": certs["key"]})
    port = daemon.start()
    daemon.url = "https://127.0.0.1:%d" % port
    yield daemon
    daemon.stop()


def post(url, body, cafile):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5, context=ssl.create_default_context(cafile=cafile)) as response:
        return json.loads(response.read())


def kubelet_node(annotations):
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "annotations": annotations},
            "status": {"capacity": {"cpu": "48", "memory": "192Gi"}, "allocatable": {"cpu": "44", "memory": "186Gi"}}}


@pytest.mark.parametrize("version", ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"])
def test_admission_review_over_https(webhook, certs, version):
    node = kubelet_node({PREFIX + "cpu_overcommit_ratio": "2", PREFIX + "memory_overcommit_ratio": "1.2"})
    body = {"apiVersion": version, "kind": "AdmissionReview",
            "request": {"uid": "case0", "operation": "UPDATE", "subResource": "status", "object": node,
                        "kind": {"group": "", "version": "v1", "kind": "Node"},
                        "resource": {"group": "", "version": "v1", "resource": "nodes"}}}
    answer = post(webhook.url + "/node", body, certs["ca"])
    assert answer["apiVersion"] == version and answer["kind"] == "AdmissionReview"
    response = answer["response"]
    assert response["uid"] == "case0" and response["allowed"] is True and response["patchType"] == "JSONPatch"
    patched = jsonpatch.apply_patch(node, json.loads(base64.b64decode(response["patch"])))
    assert patched["status"]["allocatable"] == {"cpu": "88", "memory": "239659175116"}
    assert patched["status"]["capacity"] == {"cpu": "96", "memory": "247390116249"}
    assert patched["metadata"]["annotations"][PREFIX + "original_allocatable_memory"] == "186Gi"
    # CREATE and other subresources: allowed, no patch
    body["request"]["operation"] = "CREATE"
    assert "patch" not in post(webhook.url + "/node", body, certs["ca"])["response"]


def test_bad_node_is_allowed_unchanged():
    node = kubelet_node({PREFIX + "cpu_overcommit_ratio": "2"})
    node["status"]["allocatable"]["cpu"] = "lots"
    answer = review({"apiVersion": "admission.k8s.io/v1", "request": {"uid": "x", "operation": "UPDATE", "subResource": "status",
                                                                      "object": node}})
    assert answer["response"]["allowed"] is True and "patch" not in answer["response"]
    assert "left the node unchanged" in answer["response"]["warnings"][0]


def test_requires_tls_unless_plain_http():
    with pytest.raises(ValueError, match="tls_cert_file"):
        WebhookDaemon({"port": 0})


def test_health_and_metrics(webhook, certs):
    context = ssl.create_default_context(cafile=certs["ca"])
    with urllib.request.urlopen(webhook.url + "/healthz", timeout=5, context=context) as response:
        assert json.loads(response.read())["ok"] is True
    post(webhook.url + "/node", {"apiVersion": "admission.k8s.io/v1", "request": {"uid": "u"}}, certs["ca"])
    with urllib.request.urlopen(webhook.url + "/metrics", timeout=5, context=context) as response:
        text = response.read().decode()
    assert 'katalyst_webhook_reviews_total{outcome="ignored"} 1.0' in text


def register(kube_client, url, ca_file):
    with open(ca_file) as handle:
        ca_pem = handle.read()
    client.AdmissionregistrationV1Api(kube_client).create_mutating_webhook_configuration(webhook_configuration(url + "/node", ca_pem))


def test_node_status_update_through_the_emulator(kubeapi, kube_client, webhook, certs):
    register(kube_client, webhook.url, certs["ca"])
    core = client.CoreV1Api(kube_client)
    core.create_node({"apiVersion": "v1", "kind": "Node", "metadata": {
        "name": "n1", "annotations": {PREFIX + "cpu_overcommit_ratio": "2", PREFIX + "memory_overcommit_ratio": "1.5"}}})
    kubelet_status = {"status": {"capacity": {"cpu": "8", "memory": "16Gi", "pods": "110"},
                                 "allocatable": {"cpu": "7500m", "memory": "15Gi", "pods": "110"}}}
    # a kubelet heartbeat, twice: each time the stored node is amplified from what the kubelet reported
    for _attempt in range(2):
        core.patch_node_status("n1", kubelet_status)
        node = core.read_node("n1")
        assert node.status.allocatable == {"cpu": "15", "memory": "23040Mi", "pods": "110"}
        assert node.status.capacity == {"cpu": "16", "memory": "24Gi", "pods": "110"}
        assert node.metadata.annotations[PREFIX + "original_allocatable_cpu"] == "7500m"
        assert node.metadata.annotations[PREFIX + "original_capacity_memory"] == "16Gi"
    # another client updates a condition and passes the stored (amplified) values through: not amplified twice
    core.patch_node_status("n1", {"status": {"conditions": [{"type": "Example", "status": "True"}]}})
    node = core.read_node("n1")
    assert node.status.allocatable["cpu"] == "15" and node.status.capacity["memory"] == "24Gi"
    assert node.metadata.annotations[PREFIX + "original_allocatable_cpu"] == "7500m"
    # ratio back to 1 (config deleted): the next pass-through update restores the originals
    core.patch_node("n1", {"metadata": {"annotations": {PREFIX + "cpu_overcommit_ratio": "1", PREFIX + "memory_overcommit_ratio": "1"}}})
    core.patch_node_status("n1", {"status": {"conditions": [{"type": "Example", "status": "False"}]}})
    node = core.read_node("n1")
    assert node.status.allocatable == {"cpu": "7500m", "memory": "15Gi", "pods": "110"}


def test_failure_policy_ignore_when_the_webhook_is_down(kubeapi, kube_client, certs):
    daemon = WebhookDaemon({"listen_address": "127.0.0.1", "port": 0, "tls_cert_file": certs["cert"], "tls_key_file": certs["key"]})
    url = "https://127.0.0.1:%d" % daemon.start()
    daemon.stop()
    register(kube_client, url, certs["ca"])
    core = client.CoreV1Api(kube_client)
    core.create_node({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n2", "annotations": {PREFIX + "cpu_overcommit_ratio": "2"}}})
    core.patch_node_status("n2", {"status": {"capacity": {"cpu": "8"}, "allocatable": {"cpu": "8"}}})
    assert core.read_node("n2").status.allocatable == {"cpu": "8"}


@pytest.mark.parametrize("annotations", [None, {}, {PREFIX + "cpu_overcommit_ratio": "2"},
                                         {PREFIX + "memory_overcommit_ratio": "1.2", PREFIX + "original_capacity_cpu": "1"}])
def test_patch_of_the_touched_parts_equals_the_full_diff(annotations):
    node = kubelet_node(annotations)
    if annotations is None:
        del node["metadata"]["annotations"]
    node["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    answer = review({"apiVersion": "admission.k8s.io/v1", "request": {"uid": "x", "operation": "UPDATE", "subResource": "status",
                                                                      "object": node}})
    patched = jsonpatch.apply_patch(node, json.loads(base64.b64decode(answer["response"]["patch"])))
    assert patched == mutate_node(node, "UPDATE", "status")
