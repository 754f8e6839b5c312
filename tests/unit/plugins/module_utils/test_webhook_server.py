"""katalyst-webhook's fast paths: the directly built JSONPatch, the remembered quantities, the optional orjson parser,
the collector settings, and its HTTP/1.1 server (keep-alive, pipelining, errors) over plain HTTP."""

import base64
import copy
import gc
import json
import logging
import socket
import time

import jsonpatch
import pytest

from ansible_collections.katalyst.colocation.plugins.module_utils import overcommit
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons import http_server, service, webhook
from ansible_collections.katalyst.colocation.plugins.module_utils.quantity import multiply_resource_quantity, parse_quantity

PREFIX = "katalyst.kubewharf.io/"


def kubelet_node(annotations):
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "annotations": annotations},
            "status": {"capacity": {"cpu": "48", "memory": "192Gi"}, "allocatable": {"cpu": "44", "memory": "186Gi"},
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def admission_review(node, uid="u1", old_node=None):
    request = {"uid": uid, "operation": "UPDATE", "subResource": "status", "object": node,
               "kind": {"group": "", "version": "v1", "kind": "Node"}, "resource": {"group": "", "version": "v1", "resource": "nodes"}}
    if old_node is not None:
        request["oldObject"] = old_node
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


# -- the patch -----------------------------------------------------------------------------------------
def shapes():
    bare = kubelet_node({})
    del bare["metadata"]["annotations"]
    no_metadata = kubelet_node({})
    del no_metadata["metadata"]
    no_status_fields = kubelet_node({PREFIX + "cpu_overcommit_ratio": "2"})
    no_status_fields["status"] = {"conditions": []}
    none_annotations = kubelet_node(None)
    return [kubelet_node({}), kubelet_node({PREFIX + "cpu_overcommit_ratio": "2", PREFIX + "memory_overcommit_ratio": "1.5"}),
            kubelet_node({PREFIX + "cpu_overcommit_ratio": "1.5", PREFIX + "overcommit_allocatable_cpu": "66",
                          PREFIX + "overcommit_capacity_cpu": "72", PREFIX + "original_allocatable_cpu": "44",
                          PREFIX + "original_capacity_cpu": "48", "a~b/c": "x"}),
            bare, no_metadata, no_status_fields, none_annotations]


@pytest.mark.parametrize("node", shapes())
def test_node_patch_gives_what_mutate_node_gives(node):
    before = copy.deepcopy(node)
    mutated = overcommit.mutate_node(node, "UPDATE", "status")
    operations = webhook.node_patch(node, mutated)
    assert node == before
    assert jsonpatch.apply_patch(node, operations) == mutated
    # the same document as the generic diff of the touched parts gives
    generic = jsonpatch.make_patch(webhook._touched(node), webhook._touched(mutated)).patch   # pylint: disable=protected-access
    assert jsonpatch.apply_patch(node, operations) == jsonpatch.apply_patch(node, generic)


def test_node_patch_through_review_and_the_old_object():
    stored = overcommit.mutate_node(kubelet_node({PREFIX + "cpu_overcommit_ratio": "2"}), "UPDATE", "status")
    passed_through = copy.deepcopy(stored)
    answer = webhook.review(admission_review(passed_through, old_node=stored))
    operations = json.loads(base64.b64decode(answer["response"]["patch"])) if "patch" in answer["response"] else []
    patched = jsonpatch.apply_patch(passed_through, operations)
    assert patched == overcommit.mutate_node(passed_through, "UPDATE", "status", old_node=stored)
    assert patched["status"]["allocatable"]["cpu"] == "88"


def test_diff_removes_adds_replaces_and_escapes():
    old = {"a": {"x/y": 1, "gone": True, "same": [1, 2]}, "b": 1, "c": [1], "d": {"k": "v"}}
    new = {"a": {"x/y": 2, "same": [1, 2], "new~": None}, "b": True, "c": [1, 2], "d": "flat", "e": {"f": 1}}
    operations = webhook._diff(old, new, "", [])   # pylint: disable=protected-access
    assert jsonpatch.apply_patch(old, operations) == new
    assert {"op": "replace", "path": "/a/x~1y", "value": 2} in operations
    assert {"op": "add", "path": "/a/new~0", "value": None} in operations
    assert {"op": "remove", "path": "/a/gone"} in operations
    assert {"op": "replace", "path": "/b", "value": True} in operations     # 1 and true differ in JSON
    assert not [operation for operation in operations if operation["path"] == "/a/same"]


# -- remembered quantities -----------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["0", "32", "31850m", "124Gi", "1.5", "1e3", "100M", "0.5Ki", "-2"])
def test_remembered_quantities_equal_fresh_ones(text):
    fresh = parse_quantity(text)
    for _attempt in range(2):
        remembered = overcommit._quantity(text)   # pylint: disable=protected-access
        assert remembered == fresh and remembered.format == fresh.format and str(remembered) == str(fresh)
        assert overcommit._text(remembered) == str(fresh)   # pylint: disable=protected-access
    for resource in ("cpu", "memory"):
        for ratio in (1.2, 1.5, 2.0):
            product = overcommit._multiplied(resource, fresh, ratio)   # pylint: disable=protected-access
            expected = multiply_resource_quantity(resource, fresh, ratio)
            assert product == expected and str(product) == str(expected)


def test_junk_quantities_raise_every_time():
    for _attempt in range(2):
        with pytest.raises(ValueError):
            overcommit._quantity("lots")   # pylint: disable=protected-access


# -- the optional parser -------------------------------------------------------------------------------
class RefusingOrjson:
    JSONDecodeError = json.JSONDecodeError
    calls = 0

    @classmethod
    def loads(cls, raw):
        cls.calls += 1
        raise cls.JSONDecodeError("refused", "", 0)


def test_parse_json_falls_back_to_the_stdlib(monkeypatch):
    monkeypatch.setattr(http_server, "orjson", RefusingOrjson)
    assert http_server.parse_json(b'{"a": NaN}')["a"] != http_server.parse_json(b'{"a": NaN}')["a"]   # NaN, as json reads it
    assert RefusingOrjson.calls == 2
    with pytest.raises(ValueError):
        http_server.parse_json(b"{")
    monkeypatch.setattr(http_server, "orjson", None)
    assert http_server.parse_json(b'{"a": [1, 2.5, "x"]}') == {"a": [1, 2.5, "x"]}


def test_tune_gc_sets_the_thresholds():
    saved = gc.get_threshold()
    try:
        webhook.tune_gc((12345, 11, 12))
        assert gc.get_threshold() == (12345, 11, 12)
    finally:
        gc.unfreeze()
        gc.set_threshold(*saved)


# -- the HTTP server -----------------------------------------------------------------------------------
@pytest.fixture
def server():
    daemon = webhook.WebhookDaemon({"listen_address": "127.0.0.1", "port": 0, "plain_http": True})

    def boom(raw):
        raise RuntimeError("boom")
    daemon.server.routes["boom"] = boom
    port = daemon.start()
    daemon.address = ("127.0.0.1", port)
    yield daemon
    daemon.stop()


def request(path, body=b"", method="POST", headers=""):
    return ("%s %s HTTP/1.1\r\nHost: x\r\n%sContent-Length: %d\r\n\r\n" % (method, path, headers, len(body))).encode() + body


class Reader:
    def __init__(self, sock):
        self.sock = sock
        self.pending = b""

    def response(self):
        """(status, headers, body) of the next response; None when the server closed the connection."""
        while b"\r\n\r\n" not in self.pending:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.pending += chunk
        head, _sep, self.pending = self.pending.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {name.strip().lower(): value.strip() for name, _colon, value in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", 0))
        while len(self.pending) < length:
            self.pending += self.sock.recv(65536)
        body, self.pending = self.pending[:length], self.pending[length:]
        return int(lines[0].split()[1]), headers, body

    def closed(self):
        return not self.pending and self.sock.recv(1) == b""


def connect(server):
    sock = socket.create_connection(server.address, timeout=5)
    return sock, Reader(sock)


def test_keep_alive_and_pipelined_reviews(server):
    sock, reader = connect(server)
    with sock:
        first = json.dumps(admission_review(kubelet_node({PREFIX + "cpu_overcommit_ratio": "2"}), "u1")).encode()
        second = json.dumps(admission_review(kubelet_node({}), "u2")).encode()
        sock.sendall(request("/node", first))
        status, headers, body = reader.response()
        assert status == 200 and headers["content-type"] == "application/json" and "connection" not in headers
        assert json.loads(body)["response"]["uid"] == "u1" and "patch" in json.loads(body)["response"]
        sock.sendall(request("/node", second) + request("/node", first))      # two at once: answered in order
        assert [json.loads(reader.response()[2])["response"]["uid"] for _index in range(2)] == ["u2", "u1"]


def test_answers_match_the_json_server(server):
    sock, reader = connect(server)
    with sock:
        sock.sendall(request("/nowhere", b"{}"))
        assert reader.response()[:3:2] == (404, b'{"error":"unknown path /nowhere"}')
        sock.sendall(request("/node", b"{"))
        status, _headers, body = reader.response()
        assert status == 400 and json.loads(body)["error"].startswith("invalid JSON body")
        sock.sendall(request("/node", b"[1]"))
        assert reader.response()[2] == b'{"error":"invalid JSON body: expected a JSON object"}'
        sock.sendall(request("/boom", b"{}"))
        assert reader.response()[:3:2] == (500, b'{"error":"boom"}')
        sock.sendall(request("/node"))      # no body: an empty review, allowed
        assert json.loads(reader.response()[2])["response"] == {"uid": "", "allowed": True}
        sock.sendall(request("/healthz", method="GET"))
        status, _headers, body = reader.response()
        assert status == 200 and json.loads(body)["ok"] is True
        sock.sendall(request("/metrics?x=1", method="GET"))
        text = reader.response()[2].decode()
        assert 'katalyst_http_requests_total{code="404",daemon="katalyst-webhook",path="unknown"} 1.0' in text
        assert 'katalyst_http_requests_total{code="500",daemon="katalyst-webhook",path="boom"} 1.0' in text
        assert 'katalyst_webhook_reviews_total{outcome="ignored"} 1.0' in text
        sock.sendall(request("/other", method="GET"))
        assert reader.response()[:3:2] == (404, b"not found\n")


@pytest.mark.parametrize("raw, status", [
    (b"PUT /node HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 501),
    (b"GARBAGE\r\n\r\n", 400),
    (b"POST /node HTTP/1.1\r\nContent-Length: nope\r\n\r\n", 400),
    (b"POST /node HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
    (b"POST /node HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411),
    (b"GET / HTTP/1.1\r\n" + b"X-Long: " + b"x" * 70000 + b"\r\n\r\n", 431),
    (b"POST /node HTTP/1.1\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}", 200),
    (b"POST /node HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}", 200),
], ids=["method", "request-line", "length-text", "length-negative", "chunked", "long-head", "connection-close", "http-1.0"])
def test_closing_answers(server, raw, status):
    sock, reader = connect(server)
    with sock:
        sock.sendall(raw)
        answer = reader.response()
        assert answer[0] == status and answer[1]["connection"] == "close"
        assert reader.closed()


def test_http_1_0_keep_alive_and_expect_continue(server):
    sock, reader = connect(server)
    with sock:
        sock.sendall(b"POST /node HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n{}")
        assert reader.response()[0] == 200
        sock.sendall(b"POST /node HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
        assert reader.response()[0] == 100
        sock.sendall(b"{}")
        assert reader.response()[0] == 200


def test_a_client_gone_mid_request_does_not_stop_the_server(server):
    sock, _reader = connect(server)
    sock.sendall(b"POST /node HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
    sock.close()
    sock, reader = connect(server)
    with sock:
        sock.sendall(request("/node", b"{}"))
        assert reader.response()[0] == 200


def test_stop_closes_connections_and_frees_the_port():
    daemon = webhook.WebhookDaemon({"listen_address": "127.0.0.1", "port": 0, "plain_http": True})
    port = daemon.start()
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    with sock:
        daemon.stop()
        try:
            assert sock.recv(1) == b""
        except ConnectionResetError:        # aborted: the server does not wait for idle clients
            pass
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    daemon.stop()     # twice: nothing happens


def test_stop_with_an_open_connection_logs_no_error(caplog):
    """stop() cancels the connection handlers: none may end as a cancelled task (asyncio on Python 3.11 logged each
    as "Exception in callback ... CancelledError" at every daemon stop with a client connected)."""
    daemon = webhook.WebhookDaemon({"listen_address": "127.0.0.1", "port": 0, "plain_http": True})
    port = daemon.start()
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        deadline = time.monotonic() + 30
        while not daemon.server.writers:        # the connection's handler is waiting for a request
            assert time.monotonic() < deadline
            time.sleep(0.001)
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            daemon.stop()
    assert not [record for record in caplog.records if record.name == "asyncio"], caplog.text


def test_handler_routes_are_raw(monkeypatch):
    daemon = service.Daemon("t", registry=None)
    server = http_server.KeepAliveServer(daemon, {"echo": lambda raw: (201, raw)}, "127.0.0.1", 0)
    port = server.start()
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        with sock:
            sock.sendall(request("/x/echo/", b'"raw"'))
            assert Reader(sock).response()[:3:2] == (201, b'"raw"')
    finally:
        server.stop()
