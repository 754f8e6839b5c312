# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""A daemon's own credential: a bound ServiceAccount token (TokenRequest API) in a token file, and a kubeconfig whose
user reads it (``tokenFile:``), so that a refreshed token reaches a running daemon without a restart.

Why a TokenRequest token and not a client certificate from a CertificateSigningRequest: the token is bound to the
ServiceAccount (and to an audience), expires on its own, stops working when the ServiceAccount is deleted, needs no
private key on the host and no signer or approver, and every cluster (1.22+) issues it. A CSR client certificate
needs a signer that issues client certificates for identities other than nodes (``kubernetes.io/kube-apiserver-client``
is not approved by anything by default) and an approver, and cannot be revoked before it expires.

Plain functions over dicts and strings: ``decide_refresh`` takes ``now`` and the file contents it is given. The
daemons' client re-reads the token file on change with ``daemons.service.follow_token_file``.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import os

SERVICE_ACCOUNT_USER = "system:serviceaccount:%s:%s"
KUBECONFIG_NAME = "katalyst"
# With no refresh_before_seconds, a token is refreshed when less than this share of its lifetime is left (as the
# kubelet does for projected tokens: at 80% of the lifetime; a third leaves a timer two more chances on a 24 h token).
REFRESH_WHEN_LEFT = 1.0 / 3.0


def jwt_claims(token):
    """The claims of a JWT, read without verifying the signature (the API server verifies; we only read ``exp``).
    None when ``token`` is not a JWT."""
    parts = (token or "").strip().split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload.encode("ascii")).decode("utf-8"))
    except (ValueError, binascii.Error, UnicodeError):
        return None
    return claims if isinstance(claims, dict) else None


def token_identity(claims):
    """``(namespace, service account name, uid)`` a ServiceAccount token is for, from its ``kubernetes.io`` claim, else
    from ``sub`` (``system:serviceaccount:<namespace>:<name>``); Nones when it is not a ServiceAccount token."""
    claims = claims or {}
    private = claims.get("kubernetes.io") or {}
    account = private.get("serviceaccount") or {}
    if private.get("namespace") and account.get("name"):
        return private["namespace"], account["name"], account.get("uid")
    prefix, _sep, rest = str(claims.get("sub") or "").rpartition(":")
    namespace = prefix.rpartition(":")[2]
    if prefix.startswith("system:serviceaccount:") and namespace and rest:
        return namespace, rest, None
    return None, None, None


def token_node(claims):
    """``(name, uid)`` of the Node a token is bound to (its ``kubernetes.io.node`` claim: a TokenRequest with a Node
    ``boundObjectRef``, or a pod-bound token), or None."""
    node = ((claims or {}).get("kubernetes.io") or {}).get("node") or {}
    return (node["name"], node.get("uid")) if node.get("name") else None


def timestamp(seconds):
    """RFC 3339 (UTC, seconds) of a Unix time."""
    return datetime.datetime.fromtimestamp(int(seconds), datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def render_kubeconfig(server, token_file, namespace, service_account, ca_data=None, insecure=False):
    """The kubeconfig of a ServiceAccount whose token is read from ``token_file`` (absolute: the kubeconfig may be
    read from a copy elsewhere, systemd's ``LoadCredential=`` for one, and must still follow the live file)."""
    cluster = {"server": server}
    if ca_data:
        cluster["certificate-authority-data"] = base64.b64encode(ca_data if isinstance(ca_data, bytes) else ca_data.encode()).decode()
    elif insecure:
        cluster["insecure-skip-tls-verify"] = True
    user = SERVICE_ACCOUNT_USER % (namespace, service_account)
    return {"apiVersion": "v1", "kind": "Config", "preferences": {}, "current-context": KUBECONFIG_NAME,
            "clusters": [{"name": KUBECONFIG_NAME, "cluster": cluster}],
            "users": [{"name": user, "user": {"tokenFile": token_file}}],
            "contexts": [{"name": KUBECONFIG_NAME, "context": {"cluster": KUBECONFIG_NAME, "user": user, "namespace": namespace}}]}


def dump_kubeconfig(kubeconfig):
    """The file text: JSON is YAML, so every kubeconfig reader takes it; stable key order for comparisons."""
    return json.dumps(kubeconfig, indent=2, sort_keys=True) + "\n"


def _current(kubeconfig, kind, name):
    for entry in (kubeconfig or {}).get(kind) or []:
        if isinstance(entry, dict) and entry.get("name") == name:
            return entry.get(kind[:-1]) or {}
    return {}


def kubeconfig_user(kubeconfig):
    """``(cluster, user, context)`` sections of the current context (empty dicts when missing)."""
    kubeconfig = kubeconfig if isinstance(kubeconfig, dict) else {}
    context = _current(kubeconfig, "contexts", kubeconfig.get("current-context"))
    return _current(kubeconfig, "clusters", context.get("cluster")), _current(kubeconfig, "users", context.get("user")), context


def token_file_of(kubeconfig, kubeconfig_path):
    """The absolute path of the current user's ``tokenFile`` (relative to the kubeconfig's directory, as the
    kubernetes client resolves it), or None when the user has another kind of credential."""
    user = kubeconfig_user(kubeconfig)[1]
    if not user.get("tokenFile") or user.get("exec") or user.get("auth-provider"):
        return None
    return os.path.join(os.path.dirname(os.path.abspath(kubeconfig_path)), os.path.expanduser(user["tokenFile"]))


def describe(server, namespace, service_account, expiry):
    """What --diff shows of a credential: never the token."""
    return {"server": server, "user": SERVICE_ACCOUNT_USER % (namespace, service_account), "namespace": namespace,
            "service_account": service_account, "expires": timestamp(expiry) if expiry is not None else None}


def decide_refresh(token, now, server, current_server, namespace, service_account, audiences=None, uid=None,
                   refresh_before_seconds=None, node=None):
    """Why the token must be replaced (a short reason), or None when it may be kept.

    Kept only when it is a JWT for this ServiceAccount (and ``uid``, when the live ServiceAccount's is known: a
    ServiceAccount deleted and created again invalidates its tokens), for these ``audiences`` when given, on the same
    server, bound to ``node`` (``(name, uid)`` of a Node; None: bound to no Node), and valid for more than
    ``refresh_before_seconds`` (default: a third of its lifetime) from ``now``."""
    claims = jwt_claims(token)
    if claims is None:
        return "no token" if not (token or "").strip() else "not a JWT"
    token_namespace, token_name, token_uid = token_identity(claims)
    if (token_namespace, token_name) != (namespace, service_account):
        return "a token of another identity (%s)" % (SERVICE_ACCOUNT_USER % (token_namespace, token_name))
    if uid and token_uid and uid != token_uid:
        return "the ServiceAccount was created again (uid %s, the token's %s)" % (uid, token_uid)
    if current_server != server:
        return "another server (%s)" % current_server
    bound = token_node(claims)
    if node is None and bound is not None:
        return "bound to node %s" % bound[0]
    if node is not None and (bound is None or bound[0] != node[0] or (node[1] and bound[1] and bound[1] != node[1])):
        return "not bound to node %s (%s)" % (node[0], "bound to %s" % bound[0] if bound else "unbound")
    token_audiences = claims.get("aud")
    token_audiences = [token_audiences] if isinstance(token_audiences, str) else list(token_audiences or [])
    if audiences and sorted(token_audiences) != sorted(audiences):
        return "other audiences (%s)" % ", ".join(token_audiences)
    try:
        expiry = int(claims["exp"])
    except (KeyError, TypeError, ValueError):
        return "no exp claim"
    if refresh_before_seconds is None:
        try:
            refresh_before_seconds = (expiry - int(claims["iat"])) * REFRESH_WHEN_LEFT
        except (KeyError, TypeError, ValueError):
            refresh_before_seconds = 0
    left = expiry - now
    if left <= refresh_before_seconds:
        return "expires in %ds (refresh when %ds or less are left)" % (left, refresh_before_seconds)
    return None
