"""A log of the requests the emulator receives, one JSON line each, with the attributes an authorizer sees.

    KubeAPIServer(request_log="/tmp/requests.jsonl")          # or: python -m sandbox.kubeapi --request-log FILE

Each line: ``user_agent`` and kube-apiserver's request attributes (``RequestInfo``): ``verb`` (get, list, watch,
create, update, patch, delete, deletecollection), ``group``, ``version``, ``resource``, ``subresource``,
``namespace``, ``name``; or ``path`` and ``verb`` (the HTTP method, lower case) for a non-resource URL (discovery,
``/version``, ``/openapi/...``). The emulator has no authorizer; the RBAC tests read this log to check each
daemon's calls (told apart by their User-Agent) against its rules.
"""

import json
import threading
import urllib.parse

HTTP_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
# /api/v1/namespaces/<name>/<this> is a subresource of the Namespace, not a resource in it
NAMESPACE_SUBRESOURCES = ("status", "finalize")


def request_info(method, path, query):
    """The attributes kube-apiserver's RequestInfoFactory derives from a request (``query``: name -> last value)."""
    parts = [urllib.parse.unquote(part) for part in path.split("/") if part]
    if parts[:1] == ["api"] and len(parts) >= 3:
        group, version, rest = "", parts[1], parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 4:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return {"verb": method.lower(), "path": path}
    namespace = ""
    if rest[0] == "namespaces" and len(rest) > 1:
        namespace = rest[1]
        if len(rest) > 2 and rest[2] not in NAMESPACE_SUBRESOURCES:
            rest = rest[2:]
    info = {"group": group, "version": version, "resource": rest[0], "name": rest[1] if len(rest) > 1 else "",
            "subresource": rest[2] if len(rest) > 2 else "", "namespace": namespace}
    if method == "GET":
        watching = query.get("watch") in ("true", "1")
        info["verb"] = "watch" if watching else ("get" if info["name"] else "list")
    elif method == "DELETE" and not info["name"]:
        info["verb"] = "deletecollection"
    else:
        info["verb"] = HTTP_VERBS.get(method, method.lower())
    if info["verb"] in ("list", "watch", "deletecollection") and not info["name"]:
        # a metadata.name field selector names the object, as for a get (RBAC resourceNames then apply)
        for term in (query.get("fieldSelector") or "").split(","):
            key, _sep, value = term.partition("=")
            if key.strip() == "metadata.name" and value:
                info["name"] = value.lstrip("=").strip()
    return info


class RequestLog:
    """Appends one JSON line per request to ``path`` (several servers may share the file)."""

    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()

    def record(self, user_agent, method, raw_path):
        parsed = urllib.parse.urlsplit(raw_path)
        query = {key: values[-1] for key, values in urllib.parse.parse_qs(parsed.query, keep_blank_values=True).items()}
        entry = dict(request_info(method, parsed.path, query), user_agent=user_agent or "")
        line = json.dumps(entry, sort_keys=True) + "\n"
        with self.lock, open(self.path, "a") as handle:
            handle.write(line)


def read(path):
    """The entries of a request log file, in order."""
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]
