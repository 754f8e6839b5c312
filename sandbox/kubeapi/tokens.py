"""POST serviceaccounts/<name>/token (TokenRequest), as kube-apiserver answers it.

The emulator authenticates nobody (any bearer token is accepted), so the token is a JWT with the real claims
(``aud``, ``exp``, ``iat``, ``nbf``, ``iss``, ``sub``, ``kubernetes.io``) and a random signature that nothing checks.
Validation and defaults are the API server's: expirationSeconds at least 600 (10 minutes), at most 2^32, 3600 when
omitted; audiences default to the API server's (its service-account issuer, as the real backend's --api-audiences).
"""

import base64
import datetime
import json
import os
import time
import uuid

from sandbox.kubeapi.api import APIError, invalid, not_found

ISSUER = "https://kubernetes.default.svc.cluster.local"     # sandbox/kube/cluster.py SA_ISSUER
MIN_EXPIRATION_SECONDS = 600
MAX_EXPIRATION_SECONDS = 1 << 32
DEFAULT_EXPIRATION_SECONDS = 3600


def _segment(data):
    raw = data if isinstance(data, bytes) else json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _rfc3339(seconds):
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _bound_node(api, ref):
    """The ``kubernetes.io.node`` claim of a token bound to a Node (``boundObjectRef`` kind Node), or None when unbound.

    Only Node binding is served (what the agent's credential uses); the Node must exist and, when given, have that uid."""
    if not ref:
        return None
    if ref.get("kind") != "Node" or ref.get("apiVersion") != "v1":
        raise APIError(400, "BadRequest", "spec.boundObjectRef: the emulator binds tokens to a v1 Node only")
    nodes = api.registry.get("", "v1", "nodes")
    node = api.store.get(nodes.storage_key, None, ref.get("name"))
    if node is None:
        raise not_found(nodes, ref.get("name"))
    uid = node["metadata"].get("uid")
    if ref.get("uid") and ref["uid"] != uid:
        raise APIError(409, "Conflict", "the UID in the bound object reference (%s) does not match the UID in record (%s)" % (ref["uid"], uid))
    return {"name": ref["name"], "uid": uid}


def token_request(api, namespace, name, body, now=None):
    """The TokenRequest answered for ServiceAccount ``namespace/name`` (404 when it does not exist, 422 on a bad spec)."""
    accounts = api.registry.get("", "v1", "serviceaccounts")
    account = api.store.get(accounts.storage_key, namespace, name)
    if account is None:
        raise not_found(accounts, name)
    spec = dict((body or {}).get("spec") or {})
    seconds = spec.get("expirationSeconds")
    seconds = DEFAULT_EXPIRATION_SECONDS if seconds is None else seconds
    if not isinstance(seconds, int) or isinstance(seconds, bool):
        raise APIError(400, "BadRequest", "spec.expirationSeconds: expected an integer")
    if seconds < MIN_EXPIRATION_SECONDS:
        raise invalid(accounts, name, ["spec.expirationSeconds: Invalid value: %d: may not specify a duration less than 10 minutes" % seconds])
    if seconds > MAX_EXPIRATION_SECONDS:
        raise invalid(accounts, name, ["spec.expirationSeconds: Invalid value: %d: may not specify a duration larger than 2^32 seconds" % seconds])
    bound = _bound_node(api, spec.get("boundObjectRef"))
    audiences = list(spec.get("audiences") or [ISSUER])
    issued = int(now if now is not None else time.time())
    claims = {"aud": audiences, "exp": issued + seconds, "iat": issued, "nbf": issued, "iss": ISSUER, "jti": str(uuid.uuid4()),
              "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": account["metadata"].get("uid")}},
              "sub": "system:serviceaccount:%s:%s" % (namespace, name)}
    if bound is not None:
        claims["kubernetes.io"]["node"] = bound
    token = ".".join((_segment({"alg": "RS256", "kid": "katalyst-sandbox"}), _segment(claims), _segment(os.urandom(64))))
    spec.update(audiences=audiences, expirationSeconds=seconds, boundObjectRef=spec.get("boundObjectRef"))
    return {"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": _rfc3339(issued)},
            "spec": spec, "status": {"token": token, "expirationTimestamp": _rfc3339(issued + seconds)}}
