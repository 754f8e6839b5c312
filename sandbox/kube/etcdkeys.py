"""The keys of the real control plane's etcd, through etcd's JSON gateway (`/v3/kv/...`): list them, delete them.

The two-backend test suite resets the shared control plane between tests by deleting every key a test added (nodes,
pods, CRDs and their objects, webhooks, leases, events). The apiserver watches etcd, so it sees the deletions as any
other: its caches, the CRD handlers and the controller-manager's informers follow.
"""

import base64
import json
import urllib.request

REGISTRY = "/registry/"


def _b64(text):
    return base64.b64encode(text.encode()).decode()


def _prefix_end(prefix):
    """The range end that covers every key starting with `prefix` (etcd's convention: last byte + 1)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _post(url, path, body, timeout=30.0):
    request = urllib.request.Request(url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # nosec: loopback etcd of the test bed
        return json.loads(response.read() or b"{}")


def list_keys(url, prefix=REGISTRY):
    """Every key under `prefix` (keys only, no values)."""
    answer = _post(url, "/v3/kv/range", {"key": _b64(prefix), "range_end": _b64(_prefix_end(prefix)), "keys_only": True})
    return {base64.b64decode(kv["key"]).decode() for kv in answer.get("kvs", [])}


def delete_keys(url, keys):
    """Delete each key; the number etcd reports deleted (a key deleted meanwhile counts 0)."""
    deleted = 0
    for key in sorted(keys):
        deleted += int(_post(url, "/v3/kv/deleterange", {"key": _b64(key)}).get("deleted", 0))
    return deleted
