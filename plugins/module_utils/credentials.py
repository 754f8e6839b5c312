# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""A daemon's own credential: a bound ServiceAccount token (TokenRequest API) in a token file, and a kubeconfig whose
user reads it (``tokenFile:``), so that a refreshed token reaches a running daemon without a restart.

Why a TokenRequest token and not a client certificate from a CertificateSigningRequest: the token is bound to the
ServiceAccount (and to an audience), expires on its own, stops working when the ServiceAccount is deleted, needs no
private key on the host and no signer or approver, and every cluster (1.22+) issues it. A CSR client certificate
needs a signer that issues client certificates for identities other than nodes (``kubernetes.io/kube-apiserver-client``
is not approved by anything by default) and an approver, and cannot be revoked before it expires.

Plain functions over dicts and strings: ``decide_refresh`` takes ``now`` and the file contents it is given (the files
are written by ``privatefiles.write_private``). The
daemons' client re-reads the token file on change with ``daemons.service.follow_token_file``; a daemon renews its own
token with ``plan_token_renewal`` and sends the later one of the same credential (``choose_token``,
daemons/token_renewal.py).
"""

from __future__ import annotations

import base64
import binascii
import collections
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
    token_audiences = _audiences(claims)
    if audiences and token_audiences != sorted(audiences):
        return "other audiences (%s)" % ", ".join(token_audiences)
    expiry = _expiry(claims)
    if expiry is None:
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


# -- a daemon renews its own token (daemons/token_renewal.py) --------------------------------------------------------
# The API server refuses a TokenRequest for less than 10 minutes.
MIN_EXPIRATION_SECONDS = 600
TokenRenewal = collections.namedtuple("TokenRenewal", "namespace service_account reason body")


def _audiences(claims):
    audiences = (claims or {}).get("aud")
    return sorted([audiences] if isinstance(audiences, str) else list(audiences or []))


def _expiry(claims):
    try:
        return int(claims["exp"])
    except (KeyError, TypeError, ValueError):
        return None


def choose_token(issued, renewed, now):
    """The token a daemon sends: ``renewed`` (the daemon's own renewal, ``renewed_token_file``) when it is a valid token
    of the same credential as ``issued`` (the kubeconfig's ``tokenFile``, which the playbook writes) and expires later;
    else ``issued``.

    The same credential: a JWT of the same ServiceAccount (namespace, name and, when both tokens carry it, uid: a
    ServiceAccount created again invalidates the old renewals), for the same audiences and bound to the same Node. A
    fresh token the playbook issues for a re-created ServiceAccount or another node therefore wins over an older
    renewal at once. Valid: not expired at ``now``."""
    issued_claims, renewed_claims = jwt_claims(issued), jwt_claims(renewed)
    if issued_claims is None or renewed_claims is None:
        return issued
    issued_identity, renewed_identity = token_identity(issued_claims), token_identity(renewed_claims)
    if issued_identity[1] is None or issued_identity[:2] != renewed_identity[:2]:
        return issued
    if issued_identity[2] and renewed_identity[2] and issued_identity[2] != renewed_identity[2]:
        return issued
    issued_node, renewed_node = token_node(issued_claims), token_node(renewed_claims)
    if (issued_node or (None,))[0] != (renewed_node or (None,))[0] or _audiences(issued_claims) != _audiences(renewed_claims):
        return issued
    renewed_expiry, issued_expiry = _expiry(renewed_claims), _expiry(issued_claims)
    if renewed_expiry is None or renewed_expiry <= now or (issued_expiry is not None and renewed_expiry <= issued_expiry):
        return issued
    return renewed


def plan_token_renewal(token, now, renew_before_seconds=None):
    """The TokenRequest that renews ``token``, a ServiceAccount token the daemon is using, or None while it may be kept
    (more than ``renew_before_seconds`` left, default a third of its lifetime: ``decide_refresh``) or when it is not a
    ServiceAccount JWT (nothing to renew it as).

    The new token is the same credential: same ServiceAccount, same audiences, the same lifetime (``exp - iat``, at least
    600 s) and, for a node-bound token, bound to the same Node (name and uid): what the node isolation policy lets the
    agent ask for. A ``TokenRenewal`` (namespace, service account, reason, TokenRequest body); never the token."""
    claims = jwt_claims(token)
    namespace, name, uid = token_identity(claims)
    if name is None or _expiry(claims) is None:
        return None         # not a ServiceAccount token, or one that never expires (a legacy Secret token)
    node = token_node(claims)
    audiences = _audiences(claims)
    reason = decide_refresh(token, now, "", "", namespace, name, audiences, uid, renew_before_seconds, node)
    if reason is None:
        return None
    try:
        lifetime = int(claims["exp"]) - int(claims["iat"])
    except (KeyError, TypeError, ValueError):
        lifetime = 0
    return TokenRenewal(namespace, name, reason, token_request(max(MIN_EXPIRATION_SECONDS, lifetime), audiences, node))


def token_request(expiration_seconds, audiences=None, node=None):
    """The TokenRequest body: a token for ``expiration_seconds``, for ``audiences`` (none: the API server's own) and,
    with ``node`` ((name, uid) of a Node), bound to that Node."""
    spec = {"expirationSeconds": expiration_seconds}
    if audiences:
        spec["audiences"] = list(audiences)
    if node is not None:
        spec["boundObjectRef"] = {"apiVersion": "v1", "kind": "Node", "name": node[0]}
        if node[1]:
            spec["boundObjectRef"]["uid"] = node[1]
    return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
