"""A daemon renews its own ServiceAccount token: which of the two token files the client sends
(credentials.choose_token, service.follow_token_file), when and what it asks for (credentials.plan_token_renewal), and
the loop's pass (daemons/token_renewal.py TokenRenewer) over real HTTP with the real kubernetes client, against a fake
API server that answers TokenRequests and records the Authorization header of every request."""

import json
import logging
import os
import re
import stat
import threading
from http.server import BaseHTTPRequestHandler

import prometheus_client
import pytest

from ansible_collections.katalyst.colocation.plugins.module_utils import credentials
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons import service, token_renewal
from tests.unit.plugins.module_utils.test_credentials import NOW, LocalServer, jwt, replace_token, sa_token

DAY = 86400


def bound(token, name="node-a", uid="n1"):
    claims = credentials.jwt_claims(token)
    claims["kubernetes.io"]["node"] = {"name": name, "uid": uid}
    return jwt(claims)


# -- which token the client sends ------------------------------------------------------------------------------------
def test_the_later_valid_token_of_the_same_service_account_is_chosen():
    issued = sa_token(lifetime=DAY)
    renewed = sa_token(issued=NOW + 1000, lifetime=DAY)
    assert credentials.choose_token(issued, renewed, NOW + 1000) == renewed
    assert credentials.choose_token(renewed, issued, NOW + 1000) == renewed            # whichever is later
    # ignored: another ServiceAccount, the same one created again (another uid), another node, other audiences
    for other in (sa_token(name="katalyst-controller", issued=NOW + 1000, lifetime=DAY), sa_token(uid="u2", issued=NOW + 1000, lifetime=DAY),
                  sa_token(namespace="elsewhere", issued=NOW + 1000, lifetime=DAY), bound(renewed),
                  sa_token(issued=NOW + 1000, lifetime=DAY, aud=("other",))):
        assert credentials.choose_token(issued, other, NOW + 1000) == issued
    assert credentials.choose_token(bound(issued), bound(renewed), NOW) == bound(renewed)
    assert credentials.choose_token(bound(issued), bound(renewed, "node-b"), NOW) == bound(issued)
    # ignored: expired, not later, not a JWT, missing
    assert credentials.choose_token(issued, renewed, NOW + 1000 + DAY) == issued
    assert credentials.choose_token(issued, sa_token(lifetime=DAY - 1), NOW) == issued
    for garbage in ("", "not-a-jwt", jwt({"exp": NOW + 2 * DAY})):
        assert credentials.choose_token(issued, garbage, NOW) == issued
    # the kubeconfig's token is not a ServiceAccount JWT: it is used as it is
    assert credentials.choose_token("static", renewed, NOW) == "static"


# -- when and what the daemon asks for ------------------------------------------------------------------------------
def test_renewal_is_planned_when_a_third_of_the_lifetime_is_left():
    token = sa_token(lifetime=DAY)
    assert credentials.plan_token_renewal(token, NOW) is None
    assert credentials.plan_token_renewal(token, NOW + DAY * 2 // 3 - 10) is None
    renewal = credentials.plan_token_renewal(token, NOW + DAY * 2 // 3 + 10)
    assert (renewal.namespace, renewal.service_account) == ("katalyst-system", "katalyst-agent")
    assert renewal.reason.startswith("expires in ")
    assert renewal.body == {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                            "spec": {"expirationSeconds": DAY, "audiences": ["https://kubernetes.default.svc"]}}
    assert token not in json.dumps(renewal)


def test_renewal_keeps_the_node_binding_the_audiences_and_at_least_600_seconds():
    token = bound(sa_token(lifetime=300, aud=("b", "a")))
    renewal = credentials.plan_token_renewal(token, NOW + 1, renew_before_seconds=299)
    assert renewal.body["spec"] == {"expirationSeconds": 600, "audiences": ["a", "b"],
                                    "boundObjectRef": {"apiVersion": "v1", "kind": "Node", "name": "node-a", "uid": "n1"}}
    # the threshold override: a fresh token is renewed at once when it is large enough
    assert credentials.plan_token_renewal(sa_token(lifetime=DAY), NOW, renew_before_seconds=DAY) is not None
    assert credentials.plan_token_renewal(sa_token(lifetime=DAY), NOW, renew_before_seconds=60) is None


def test_nothing_to_renew_without_a_service_account_token_that_expires():
    legacy = jwt({"sub": "system:serviceaccount:katalyst-system:katalyst-agent", "iss": "kubernetes/serviceaccount"})
    for token in ("", "static", jwt({"sub": "admin", "exp": NOW + 1, "iat": NOW}), legacy):
        assert credentials.plan_token_renewal(token, NOW + DAY, renew_before_seconds=DAY) is None


# -- the loop's pass, over HTTP --------------------------------------------------------------------------------------
class TokenAPI(LocalServer):
    """GET: an empty list; POST .../serviceaccounts/<name>/token: a new token of that ServiceAccount (the uid of
    ``uid``), or ``refuse`` (an HTTP status) with a Status. Records (method, path, Authorization, body)."""

    def __init__(self):
        self.requests, self.refuse, self.uid, self.now = [], None, "u1", NOW
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, code, body):
                payload = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):  # noqa: N802 (http.server naming)
                api.requests.append(("GET", self.path, self.headers.get("Authorization"), None))
                self._answer(200, {"kind": "ConfigMapList", "apiVersion": "v1", "metadata": {}, "items": []})

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                api.requests.append(("POST", self.path, self.headers.get("Authorization"), body))
                if api.refuse:
                    self._answer(api.refuse, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden",
                                              "message": "denied by the fake", "code": api.refuse})
                    return
                namespace, name = re.match(r"/api/v1/namespaces/([^/]+)/serviceaccounts/([^/]+)/token", self.path).groups()
                spec = body["spec"]
                token = sa_token(namespace, name, api.uid, api.now, spec["expirationSeconds"], spec.get("audiences") or ("x",))
                if spec.get("boundObjectRef"):
                    token = bound(token, spec["boundObjectRef"]["name"], spec["boundObjectRef"].get("uid"))
                self._answer(201, {"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1", "metadata": {"name": name},
                                   "spec": spec, "status": {"token": token, "expirationTimestamp": credentials.timestamp(api.now)}})

            def log_message(self, *args):
                pass
        super().__init__(Handler)

    def authorizations(self, method="GET"):
        return [request[2] for request in self.requests if request[0] == method]


@pytest.fixture
def token_api():
    server = TokenAPI()
    yield server
    server.close()


@pytest.fixture
def renewing(token_api, tmp_path):
    """(api client, renewer, registry, token file, renewed file) of an agent whose kubeconfig token is node-bound and
    expires in 600 s."""
    token_file = str(tmp_path / "agent.token")
    renewed_file = str(tmp_path / "state" / "renewed" / "token")
    kubeconfig = str(tmp_path / "agent.kubeconfig")
    replace_token(token_file, bound(sa_token(issued=NOW, lifetime=600)))
    server = "http://127.0.0.1:%d" % token_api.server_address[1]
    with open(kubeconfig, "w") as handle:
        handle.write(credentials.dump_kubeconfig(credentials.render_kubeconfig(server, token_file, "katalyst-system", "katalyst-agent")))
    daemon = service.Daemon("katalyst-agent")
    config = dict(token_renewal.DEFAULTS, kubeconfig=kubeconfig, renewed_token_file=renewed_file, token_renew_before_seconds=599)
    api_client = token_renewal.daemon_api_client(daemon, config)
    [loop] = daemon.loops
    assert loop.name == "token_renewal" and loop.period_seconds == 60
    renewer = loop.run_once.__self__
    renewer.clock = lambda: token_api.now
    yield api_client, renewer, daemon.registry, token_file, renewed_file
    api_client.close()


def sample(registry, name, **labels):
    return registry.get_sample_value(name, dict(labels, daemon="katalyst-agent"))


def test_the_daemon_renews_its_token_and_sends_the_new_one(token_api, renewing, caplog):
    from kubernetes import client
    api_client, renewer, registry, token_file, renewed_file = renewing
    first = open(token_file).read()
    core = client.CoreV1Api(api_client)
    core.list_namespaced_config_map("default")
    token_api.now = NOW + 5
    with caplog.at_level(logging.DEBUG):
        assert renewer.run_once().startswith("expires in 595s")
    [(method, path, authorization, body)] = [r for r in token_api.requests if r[0] == "POST"]
    assert path == "/api/v1/namespaces/katalyst-system/serviceaccounts/katalyst-agent/token" and authorization == "Bearer " + first
    assert body["spec"] == {"expirationSeconds": 600, "audiences": ["https://kubernetes.default.svc"],
                            "boundObjectRef": {"apiVersion": "v1", "kind": "Node", "name": "node-a", "uid": "n1"}}
    # the renewed file: 0600 in a 0700 directory created for it, a token of the same ServiceAccount bound to the same node
    assert stat.S_IMODE(os.stat(renewed_file).st_mode) == 0o600 and stat.S_IMODE(os.stat(os.path.dirname(renewed_file)).st_mode) == 0o700
    renewed = open(renewed_file).read().strip()
    claims = credentials.jwt_claims(renewed)
    assert credentials.token_identity(claims) == ("katalyst-system", "katalyst-agent", "u1") and credentials.token_node(claims) == ("node-a", "n1")
    assert os.listdir(os.path.dirname(renewed_file)) == ["token"]       # no temporary file left
    core.list_namespaced_config_map("default")
    assert token_api.authorizations() == ["Bearer " + first, "Bearer " + renewed]
    assert sample(registry, "katalyst_token_renewals_total", result="renewed") == 1
    assert sample(registry, "katalyst_token_expiry_timestamp_seconds") == NOW + 5 + 600
    assert "renewed the token of system:serviceaccount:katalyst-system:katalyst-agent" in caplog.text
    assert first.strip() not in caplog.text and renewed not in caplog.text
    # the new token is fresh (599 s threshold, 600 s lifetime: due once a second has passed)
    assert renewer.run_once() is None

    # the playbook re-issues a token for a re-created ServiceAccount (another uid): it wins over the older renewal at once
    fresh = bound(sa_token(uid="u2", issued=NOW + 1, lifetime=DAY))
    replace_token(token_file, fresh)
    core.list_namespaced_config_map("default")
    assert token_api.authorizations()[-1] == "Bearer " + fresh
    # and a later renewal of that token wins over it
    token_api.uid, token_api.now = "u2", NOW + 100
    renewer.renew_before_seconds = DAY
    renewer.run_once()
    core.list_namespaced_config_map("default")
    assert credentials.jwt_claims(token_api.authorizations()[-1][len("Bearer "):])["iat"] == NOW + 100


def test_a_failed_renewal_is_reported_without_the_token_and_retried(token_api, renewing, caplog):
    api_client, renewer, registry, token_file, renewed_file = renewing
    token = open(token_file).read()
    token_api.refuse, token_api.now = 403, NOW + 10
    with pytest.raises(RuntimeError) as raised:
        renewer.run_once()
    message = str(raised.value)
    assert message == "renewing the token of system:serviceaccount:katalyst-system:katalyst-agent failed: HTTP 403 Forbidden: denied by the fake"
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    assert not os.path.exists(renewed_file)
    assert sample(registry, "katalyst_token_renewals_total", result="error") == 1
    # the loop logs it (as every loop failure) and tries again next period: no token in the log
    daemon = service.Daemon("katalyst-agent", registry=prometheus_client.CollectorRegistry())
    loop = daemon.add_loop(service.Loop("token_renewal", 0.01, renewer.run_once))
    with caplog.at_level(logging.DEBUG):
        threading.Timer(0.5, daemon.stop).start()
        daemon.run_forever()
    assert loop.failures >= 1 and "HTTP 403" in caplog.text and token.strip() not in caplog.text
    token_api.refuse = None
    assert renewer.run_once() is not None and os.path.exists(renewed_file)
    assert sample(registry, "katalyst_token_renewals_total", result="renewed") == 1


def test_no_renewal_loop_unless_configured(tmp_path, token_api):
    """Off by default; and a daemon run on a test's client (``like``) never renews that client's credential."""
    daemon = service.Daemon("katalyst-controller")
    kubeconfig = str(tmp_path / "kc")
    replace_token(str(tmp_path / "t"), sa_token())
    with open(kubeconfig, "w") as handle:
        handle.write(credentials.dump_kubeconfig(credentials.render_kubeconfig("http://127.0.0.1:%d" % token_api.server_address[1],
                                                                               str(tmp_path / "t"), "katalyst-system", "katalyst-controller")))
    plain = token_renewal.daemon_api_client(daemon, dict(token_renewal.DEFAULTS, kubeconfig=kubeconfig))
    assert daemon.loops == []
    token_renewal.daemon_api_client(daemon, dict(token_renewal.DEFAULTS, kubeconfig=kubeconfig, renewed_token_file=str(tmp_path / "r")),
                                    like=plain)
    assert daemon.loops == []
    plain.close()


def test_every_daemon_takes_the_renewal_settings():
    from ansible_collections.katalyst.colocation.plugins.module_utils.daemons import agent, controller, extender
    for defaults in (agent.DEFAULTS, controller.DEFAULTS, extender.DEFAULTS):
        assert {key: defaults[key] for key in token_renewal.DEFAULTS} == {"renewed_token_file": "", "token_renewal_period_seconds": 60,
                                                                          "token_renew_before_seconds": None}
