"""The kube wrapper against the emulator: conflicts are retried, transient failures too, dry-run stores nothing."""

import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kubernetes import client

from ansible_collections.katalyst.colocation.plugins.module_utils.kube import KubeClient, KubeError
from tests.integration.backends import api_client


def make_client(cluster, **kwargs):
    return KubeClient(api_client=api_client(cluster), sleep=lambda _s: None, **kwargs)


NODE = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}, "spec": {}}


def test_mutate_retries_on_conflict(kubeapi):
    kube = make_client(kubeapi)
    kube.create(NODE)
    other = make_client(kubeapi)
    calls = []

    def add_label(node):
        calls.append(1)
        if len(calls) == 1:   # a concurrent writer changes the node between our read and our write
            other.patch("v1", "Node", "n1", {"metadata": {"annotations": {"other": "x"}}})
        node["metadata"].setdefault("labels", {})["mine"] = "y"
        return node

    _before, after = kube.mutate("v1", "Node", "n1", add_label)
    assert len(calls) == 2
    # (a real controller-manager's ttl controller annotates nodes too)
    assert after["metadata"]["labels"] == {"mine": "y"} and after["metadata"]["annotations"]["other"] == "x"
    before, after = kube.mutate("v1", "Node", "n1", add_label)
    assert before == after                      # nothing to change: no write


def test_dry_run_stores_nothing(kubeapi):
    kube = make_client(kubeapi)
    created = kube.create(NODE, dry_run=True)
    assert created["metadata"]["name"] == "n1"
    assert kube.get("v1", "Node", "n1") is None
    assert kube.delete("v1", "Node", "n1") is False


class FlakyProxy(BaseHTTPRequestHandler):
    """Answers 503 to the first ``failures`` requests, then forwards to the emulator."""

    def _handle(self):
        with self.server.lock:
            self.server.seen += 1
            fail = self.server.seen <= self.server.failures
        if fail:
            body = b'{"kind":"Status","code":503,"message":"etcd leader changed"}'
            self.send_response(503)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length) if length else None
        request = urllib.request.Request(self.server.target + self.path, data=data, method=self.command,
                                         headers={k: v for k, v in self.headers.items() if k.lower() in ("content-type", "accept")})
        try:
            with urllib.request.urlopen(request) as response:
                status, payload = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, payload = error.code, error.read()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    def log_message(self, *args):
        pass


@pytest.fixture
def flaky(kubeapi):
    server = ThreadingHTTPServer(("127.0.0.1", 0), FlakyProxy)
    server.lock, server.seen, server.failures, server.target = threading.Lock(), 0, 0, kubeapi.url
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


@pytest.mark.emulator_only("the fault-injecting proxy speaks plain HTTP to the emulator")
def test_transient_errors_are_retried(flaky):
    configuration = client.Configuration()
    configuration.host = "http://127.0.0.1:%d" % flaky.server_address[1]
    kube = KubeClient(api_client=client.ApiClient(configuration), sleep=lambda _s: None, retries=3)
    kube.dynamic   # discovery first, without faults
    flaky.failures = flaky.seen + 2
    created = kube.create(NODE)
    assert created["metadata"]["name"] == "n1"
    flaky.failures = flaky.seen + 10
    with pytest.raises(KubeError) as error:
        kube.get("v1", "Node", "n1")
    assert error.value.status == 503 and "etcd leader changed" in str(error.value)


def test_events_are_recorded(kubeapi):
    kube = make_client(kubeapi)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default", "uid": "u1"}}
    assert kube.emit_event(pod, "InvalidOOMPriority", "bad value", "Warning")
    events = kube.list("v1", "Event", namespace="default", field_selector="involvedObject.name=p")
    assert [(e["reason"], e["type"]) for e in events] == [("InvalidOOMPriority", "Warning")]
