"""credentials.py: reading a ServiceAccount token's claims, the refresh decision, the kubeconfig, and the daemons'
client following a refreshed token file (the real kubernetes client over real HTTP, to a server that records the
Authorization header of every request)."""

import base64
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from ansible_collections.katalyst.colocation.plugins.module_utils import credentials
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons import service

NOW = 1_800_000_000


def jwt(claims):
    def segment(data):
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    return "%s.%s.%s" % (segment({"alg": "RS256"}), segment(claims), segment({"sig": 1}))


def sa_token(namespace="katalyst-system", name="katalyst-agent", uid="u1", issued=NOW, lifetime=600, aud=("https://kubernetes.default.svc",)):
    return jwt({"aud": list(aud), "exp": issued + lifetime, "iat": issued, "sub": "system:serviceaccount:%s:%s" % (namespace, name),
                "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": uid}}})


def decide(token, now=NOW, server="https://api:6443", current_server="https://api:6443", **kwargs):
    return credentials.decide_refresh(token, now, server, current_server, "katalyst-system", "katalyst-agent", **kwargs)


def test_claims_are_read_without_verifying_and_garbage_is_not_a_jwt():
    token = sa_token()
    assert credentials.jwt_claims(token)["exp"] == NOW + 600
    assert credentials.token_identity(credentials.jwt_claims(token)) == ("katalyst-system", "katalyst-agent", "u1")
    assert credentials.token_identity({"sub": "system:serviceaccount:ns:sa"}) == ("ns", "sa", None)
    assert credentials.token_identity({"sub": "admin"}) == (None, None, None)
    for garbage in ("", None, "abc", "a.b", "a.!!!.c", "a.%s.c" % base64.urlsafe_b64encode(b"[1]").decode()):
        assert credentials.jwt_claims(garbage) is None


def test_refresh_decision():
    token = sa_token()
    # a fresh token is kept; by default it is replaced when a third of its lifetime or less is left
    assert decide(token) is None
    assert decide(token, now=NOW + 399) is None
    assert "expires in 200s" in decide(token, now=NOW + 400)
    assert "expires in -10s" in decide(token, now=NOW + 610)
    # an explicit threshold
    assert decide(token, refresh_before_seconds=500) is None
    assert "refresh when 700s" in decide(token, refresh_before_seconds=700)
    # anything else about it differs: replaced
    assert decide(None) == "no token" and decide("  \n") == "no token" and decide("opaque") == "not a JWT"
    assert "another identity" in decide(sa_token(name="katalyst-controller"))
    assert "another identity" in decide(sa_token(namespace="default"))
    assert "created again" in decide(token, uid="u2")
    assert decide(token, uid="u1") is None
    assert "another server" in decide(token, current_server="https://old:6443")
    assert "other audiences" in decide(token, audiences=["vault"])
    assert decide(token, audiences=["https://kubernetes.default.svc"]) is None
    assert decide(jwt({"sub": "system:serviceaccount:katalyst-system:katalyst-agent"})) == "no exp claim"


def test_kubeconfig_reads_an_absolute_token_file_and_embeds_the_ca(tmp_path):
    rendered = credentials.render_kubeconfig("https://api:6443", "/etc/k/agent.token", "katalyst-system", "katalyst-agent", b"PEM")
    cluster, user, context = credentials.kubeconfig_user(rendered)
    assert cluster == {"server": "https://api:6443", "certificate-authority-data": base64.b64encode(b"PEM").decode()}
    assert user == {"tokenFile": "/etc/k/agent.token"} and context["namespace"] == "katalyst-system"
    assert credentials.token_file_of(rendered, str(tmp_path / "kc")) == "/etc/k/agent.token"
    insecure = credentials.render_kubeconfig("https://api:6443", "t", "ns", "sa", insecure=True)
    assert credentials.kubeconfig_user(insecure)[0]["insecure-skip-tls-verify"] is True
    # relative to the kubeconfig's directory, as the kubernetes client resolves it; other credentials: None
    assert credentials.token_file_of(insecure, str(tmp_path / "kc")) == str(tmp_path / "t")
    assert credentials.token_file_of({"users": [{"name": "u", "user": {"token": "x"}}]}, "kc") is None
    assert yaml.safe_load(credentials.dump_kubeconfig(rendered)) == rendered
    shown = credentials.describe("https://api:6443", "katalyst-system", "katalyst-agent", NOW)
    assert shown == {"server": "https://api:6443", "user": "system:serviceaccount:katalyst-system:katalyst-agent",
                     "namespace": "katalyst-system", "service_account": "katalyst-agent", "expires": "2027-01-15T08:00:00Z"}


class LocalServer(ThreadingHTTPServer):
    """An HTTP server on a free 127.0.0.1 port, answering from a daemon thread until ``close()``."""

    def __init__(self, handler):
        super().__init__(("127.0.0.1", 0), handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def close(self):
        self.shutdown()
        self.server_close()


class RecordingAPI(LocalServer):
    """Answers every GET with an empty ConfigMapList and records the Authorization header it came with."""

    EMPTY_LIST = json.dumps({"kind": "ConfigMapList", "apiVersion": "v1", "metadata": {}, "items": []}).encode()

    def __init__(self):
        self.authorizations = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server naming)
                server.authorizations.append(self.headers.get("Authorization"))
                self.send_response(200)
                self.end_headers()          # HTTP/1.0: the body ends where the connection closes
                self.wfile.write(server.EMPTY_LIST)

            def log_message(self, *args):
                pass
        super().__init__(Handler)


@pytest.fixture
def recording_api():
    server = RecordingAPI()
    yield server
    server.close()


def replace_token(path, token):
    """As the module writes it: a new file renamed over the old one."""
    with open(path + ".new", "w") as handle:
        handle.write(token)
    os.replace(path + ".new", path)


def test_the_daemons_client_follows_a_refreshed_token_file(recording_api, tmp_path):
    from kubernetes import client, config as kube_config
    token_file = str(tmp_path / "agent.token")
    kubeconfig = str(tmp_path / "agent.kubeconfig")
    replace_token(token_file, "first")
    server = "http://127.0.0.1:%d" % recording_api.server_address[1]
    with open(kubeconfig, "w") as handle:
        handle.write(credentials.dump_kubeconfig(credentials.render_kubeconfig(server, token_file, "katalyst-system", "katalyst-agent")))
    daemon_client = service.kube_api_client("katalyst-agent", kubeconfig)
    plain_client = kube_config.new_client_from_config(config_file=kubeconfig)      # what the daemons had before
    in_process = service.kube_api_client("katalyst-agent", like=daemon_client)     # a daemon run on a client it is given
    try:
        apis = [client.CoreV1Api(api) for api in (daemon_client, plain_client, in_process)]
        for api in apis:
            api.list_namespaced_config_map("default")
        assert recording_api.authorizations == ["Bearer first"] * 3
        replace_token(token_file, "second\n")     # a trailing newline (an editor's) is no part of the token
        for api in apis:
            api.list_namespaced_config_map("default")
        # the kubernetes client alone keeps the token it read first; the daemons' client (and its in-process copy) do not
        assert recording_api.authorizations[3:] == ["Bearer second", "Bearer first", "Bearer second"]
        os.unlink(token_file)           # gone for a moment: the last token is kept
        apis[0].list_namespaced_config_map("default")
        assert recording_api.authorizations[-1] == "Bearer second"
    finally:
        for api_client in (daemon_client, plain_client):
            api_client.close()


def test_a_kubeconfig_without_a_token_file_is_left_alone(tmp_path):
    from kubernetes import client
    kubeconfig = tmp_path / "kc"
    kubeconfig.write_text(json.dumps({"current-context": "c", "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                                      "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:1"}}],
                                      "users": [{"name": "u", "user": {"token": "static"}}]}))
    configuration = client.Configuration()
    assert service.follow_token_file(configuration, str(kubeconfig)) is None
    assert configuration.refresh_api_key_hook is None


def test_a_node_bound_token_is_kept_only_for_its_node():
    def bound(name="node-a", uid="n1"):
        claims = credentials.jwt_claims(sa_token())
        claims["kubernetes.io"]["node"] = {"name": name, "uid": uid}
        return jwt(claims)
    token = bound()
    assert credentials.token_node(credentials.jwt_claims(token)) == ("node-a", "n1")
    assert credentials.token_node(credentials.jwt_claims(sa_token())) is None
    assert decide(token, node=("node-a", "n1")) is None and decide(token, node=("node-a", None)) is None
    assert decide(token, node=("node-b", "n2")) == "not bound to node node-b (bound to node-a)"
    assert decide(sa_token(), node=("node-a", "n1")) == "not bound to node node-a (unbound)"
    # the Node deleted and created again (a new uid): the old binding is void
    assert decide(token, node=("node-a", "n9")) == "not bound to node node-a (bound to node-a)"
    # no node wanted: a node-bound token is replaced by an unbound one
    assert decide(token) == "bound to node node-a"
