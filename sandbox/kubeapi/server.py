"""HTTP front of the emulator: routing, discovery, JSON responses, chunked watch streams, persistence.

    server = KubeAPIServer(state_file=None, port=0).start()
    server.url            # http://127.0.0.1:<port>
    write_kubeconfig(path, server.url)
    server.stop()         # saves the state file when one was given

    KubeAPIServer(port=P, fallback_to_any_port=True)   # P, or a free port when P is taken (server.port_taken says so)
    KubeAPIServer(request_log=FILE)   # one JSON line per request: User-Agent and the authorizer's attributes (requestlog.py)
"""

import errno
import json
import logging
import os
import ssl
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sandbox.kube.cluster import pinned_version
from sandbox.kubeapi import openapiv2_proto, tables, tokens
from sandbox.kubeapi.api import APIError, KubeAPI, WriteOptions
from sandbox.kubeapi.requestlog import RequestLog

LOG = logging.getLogger("sandbox.kubeapi")
# The release the real backend runs (sandbox/kube/go.mod), whose API the emulator stands in for.
_RELEASE = pinned_version()
VERSION_INFO = {"major": _RELEASE[1:].split(".")[0], "minor": _RELEASE.split(".")[1], "gitVersion": _RELEASE + "-katalyst-sandbox",
                "gitCommit": "", "gitTreeState": "clean", "buildDate": "2026-11-24T00:00:00Z", "goVersion": "go1.26",
                "compiler": "gc", "platform": "linux/amd64"}


def write_kubeconfig(path, url, context="sandbox", ca_file=None):
    cluster = {"server": url}
    if ca_file:
        cluster["certificate-authority"] = os.path.abspath(ca_file)
    config = {"apiVersion": "v1", "kind": "Config", "current-context": context,
              "clusters": [{"name": context, "cluster": cluster}],
              "users": [{"name": context, "user": {"token": "sandbox"}}],
              "contexts": [{"name": context, "context": {"cluster": context, "user": context, "namespace": "default"}}]}
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(config, handle, indent=2)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # headers and body go out in separate writes: with Nagle's algorithm and the client's delayed ACK
    # every keep-alive response would wait ~40 ms
    disable_nagle_algorithm = True
    server_version = "katalyst-sandbox-apiserver"
    _raw = None
    _warnings = ()

    def log_message(self, fmt, *args):  # noqa: A003 (http.server naming)
        LOG.debug("%s %s", self.address_string(), fmt % args)

    @property
    def api(self):
        return self.server.api

    # -- plumbing -----------------------------------------------------------------------------
    def _send_json(self, code, body):
        self._send_bytes(code, json.dumps(body).encode())

    def _send_bytes(self, code, data, content_type="application/json"):
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for warning in self._warnings:
            # RFC 7234 warn-code 299 with the agent "-", as kube-apiserver sends them (kubectl prints "Warning: ...")
            self.send_header("Warning", '299 - %s' % json.dumps(warning))
        self.end_headers()
        self.wfile.write(data)

    def _read(self):
        """The request body, read once up front so an early error never leaves it in a kept-alive connection."""
        if self._raw is None:
            length = int(self.headers.get("Content-Length") or 0)
            self._raw = self.rfile.read(length) if length else b""
        return self._raw

    def _body(self):
        raw = self._read()
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise APIError(400, "BadRequest", "the request body is not valid JSON: %s" % exc)

    def _dispatch(self, method):
        self._raw = None
        self._warnings = ()
        self._read()
        if self.server.request_log is not None:
            self.server.request_log.record(self.headers.get("User-Agent"), method, self.path)
        parsed = urllib.parse.urlsplit(self.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(parsed.query, keep_blank_values=True).items()}
        try:
            # segments are percent-decoded, as the real server does (the typed clients quote names: `a:b` is `a%3Ab`)
            result = self._route(method, [urllib.parse.unquote(p) for p in parsed.path.split("/") if p], query)
            if result is not None:
                code, body = result
                self._send_json(code, body)
        except APIError as exc:
            self._send_json(exc.code, exc.status())
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:  # pylint: disable=broad-except
            LOG.exception("internal error on %s %s", method, self.path)
            self._send_json(500, APIError(500, "InternalError", "internal error: %s" % exc).status())

    def do_GET(self):  # noqa: N802
        self._dispatch("GET")

    def do_POST(self):  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self):  # noqa: N802
        self._dispatch("PUT")

    def do_PATCH(self):  # noqa: N802
        self._dispatch("PATCH")

    def do_DELETE(self):  # noqa: N802
        self._dispatch("DELETE")

    # -- routing ------------------------------------------------------------------------------
    def _route(self, method, parts, query):
        if parts == ["version"]:
            return 200, VERSION_INFO
        if parts in (["healthz"], ["readyz"], ["livez"]):
            data = b"ok"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return None
        if parts[:1] == ["openapi"]:
            return self._openapi(parts[1:])
        if parts == ["api"]:
            return 200, {"kind": "APIVersions", "versions": ["v1"],
                         "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": self.server.server_address[0]}]}
        if parts == ["apis"]:
            return 200, {"kind": "APIGroupList", "apiVersion": "v1",
                         "groups": [self._group_doc(g, vs) for g, vs in sorted(self.api.registry.groups().items())]}
        if parts[:1] == ["api"] and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 2:
            if len(parts) == 2:
                versions = self.api.registry.groups().get(parts[1])
                if not versions:
                    raise APIError(404, "NotFound", "the server could not find the requested resource")
                return 200, self._group_doc(parts[1], versions)
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise APIError(404, "NotFound", "the server could not find the requested resource")
        if not rest:
            types = self.api.registry.in_group_version(group, version)
            if not types:
                raise APIError(404, "NotFound", "the server could not find the requested resource")
            resources = [entry for rtype in types for entry in rtype.discovery()]
            return 200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": types[0].api_version, "resources": resources}
        return self._resource(method, group, version, rest, query)

    def _openapi(self, parts):
        """/openapi/v3 (index), /openapi/v3/<group-version> and /openapi/v2 (protobuf, as client-go asks, or JSON)."""
        documents = self.api.openapi
        if parts == ["v3"]:
            return 200, documents.v3_index()
        if parts[:1] == ["v3"] and len(parts) > 2:
            group, version = ("", parts[2]) if parts[1] == "api" and len(parts) == 3 else (parts[2], parts[3]) if len(parts) == 4 else (None, None)
            served = documents.v3_bytes(group, version) if version else None
            if served is None:
                raise APIError(404, "NotFound", "the server could not find the requested resource")
            self._send_bytes(200, served[0])
            return None
        if parts == ["v2"]:
            accept = [media.split(";")[0].strip() for media in (self.headers.get("Accept") or "*/*").split(",")]
            if openapiv2_proto.MEDIA_TYPE in accept:
                self._send_bytes(200, documents.v2_protobuf(), openapiv2_proto.RESPONSE_TYPE)
                return None
            if not set(accept) & {"application/json", "*/*", "application/*"}:
                raise APIError(406, "NotAcceptable", "the server cannot answer /openapi/v2 in %s" % ", ".join(accept))
            return 200, documents.v2_document()
        raise APIError(404, "NotFound", "the server could not find the requested resource")

    def _write_options(self, query):
        return WriteOptions(dry_run=query.get("dryRun") == "All", field_validation=query.get("fieldValidation", ""),
                            field_manager=query.get("fieldManager", ""), user_agent=self.headers.get("User-Agent") or "",
                            force=query.get("force") in ("true", "1"))

    def _table_or(self, rtype, body, query):
        """``body`` as a Table when the client asked for one (kubectl get), else as it is."""
        if not tables.wants_table(self.headers.get("Accept")):
            return body
        return tables.to_table(rtype, self.api.crd_of(rtype), body, query.get("includeObject") or "Metadata")

    @staticmethod
    def _group_doc(group, versions):
        entries = [{"groupVersion": "%s/%s" % (group, v), "version": v} for v in versions]
        return {"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": entries, "preferredVersion": entries[0]}

    def _resource(self, method, group, version, rest, query):
        namespace = None
        registry = self.api.registry
        if rest[0] == "namespaces" and len(rest) >= 3:
            candidate = registry.get(group, version, rest[2])
            if candidate is not None and candidate.namespaced:
                namespace, rest = rest[1], rest[2:]
        rtype = registry.get(group, version, rest[0])
        if rtype is None:
            raise APIError(404, "NotFound", "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else ""
        dry_run = query.get("dryRun") == "All"
        if sub and sub != "status" and (rtype.kind, sub) not in (("Pod", "binding"), ("Pod", "eviction"), ("ServiceAccount", "token")):
            raise APIError(404, "NotFound", "the server could not find the requested resource")
        if sub == "status" and not rtype.status:
            raise APIError(404, "NotFound", "the server could not find the requested resource")
        if name is None:
            if method == "GET":
                if query.get("watch") in ("true", "1"):
                    self._stream_watch(rtype, namespace, query)
                    return None
                limit = query.get("limit") or "0"
                if not limit.isdigit():
                    raise APIError(400, "BadRequest", "limit must be a non-negative integer")
                return 200, self._table_or(rtype, self.api.list(rtype, namespace, query.get("labelSelector"), query.get("fieldSelector"),
                                                                int(limit), query.get("continue")), query)
            if method == "POST":
                options = self._write_options(query)
                return 201, self._warned(options, self.api.create(rtype, namespace, self._body(), dry_run, options))
            if method == "DELETE":
                return 200, self.api.delete_collection(rtype, namespace, query.get("labelSelector"), query.get("fieldSelector"), dry_run)
            raise APIError(405, "MethodNotAllowed", "method %s is not allowed on a collection" % method)
        if method == "GET":
            return 200, self._table_or(rtype, self.api.get(rtype, namespace, name), query)
        if method == "PUT":
            options = self._write_options(query)
            return 200, self._warned(options, self.api.update(rtype, namespace, name, self._body(), dry_run, sub, options))
        if method == "PATCH":
            content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            # an unknown media type is 415 before its body is looked at, as on a real server
            body = self._body() if content_type.endswith("+json") else self._read()
            options = self._write_options(query)
            if content_type == "application/apply-patch+yaml":
                return self._applied(rtype, namespace, name, body, options, sub)
            return 200, self._warned(options, self.api.patch(rtype, namespace, name, body, content_type, dry_run, sub, options))
        if method == "DELETE":
            options = self._body() or {}
            return 200, self.api.delete(rtype, namespace, name, dry_run or "All" in (options.get("dryRun") or []),
                                        options.get("preconditions"))
        if method == "POST" and sub == "binding":
            return 201, self.api.bind(namespace, name, self._body() or {}, dry_run)
        if method == "POST" and sub == "eviction":
            return 201, self.api.evict(namespace, name, self._body() or {}, dry_run)
        if method == "POST" and sub == "token":
            return 201, tokens.token_request(self.api, namespace, name, self._body())
        raise APIError(405, "MethodNotAllowed", "method %s is not allowed here" % method)

    def _warned(self, options, result):
        self._warnings = tuple(options.warnings)
        return result

    def _applied(self, rtype, namespace, name, body, options, sub):
        """Server-side apply answers 201 when it created the object, 200 when it merged into one."""
        existed = self.api.store.get(rtype.storage_key, namespace if rtype.namespaced else "", name) is not None
        result = self.api.apply(rtype, namespace, name, body, options, sub)
        return (200 if existed else 201), self._warned(options, result)

    def _stream_watch(self, rtype, namespace, query):
        timeout = float(query.get("timeoutSeconds") or 1800)
        events = self.api.watch(rtype, namespace, query.get("resourceVersion"), query.get("labelSelector"), query.get("fieldSelector"),
                                timeout=timeout, bookmarks=query.get("allowWatchBookmarks") in ("true", "1"),
                                stopped=self.server.stopping.is_set, bookmark_interval=self.server.bookmark_interval,
                                send_initial_events=query.get("sendInitialEvents") in ("true", "1"))
        first = next(events, None)   # selector errors surface before the 200 is sent
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")   # the stream ends the connection; clients must not reuse it
        self.end_headers()
        try:
            if first is not None:
                self._chunk(first)
                for event in events:
                    self._chunk(event)
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    def _chunk(self, event):
        data = json.dumps(event).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()


class QuietThreadingHTTPServer(ThreadingHTTPServer):
    """Clients that hang up mid-request (closed pools, stopped watches) are normal, not tracebacks."""

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)


def bind_http_server(host, port, fallback_to_any_port=False):
    """(server, taken): the HTTP server on host:port; with ``fallback_to_any_port``, on a free port when ``port`` is taken."""
    try:
        return QuietThreadingHTTPServer((host, port), Handler), False
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE or not port or not fallback_to_any_port:
            raise
        LOG.warning("port %d on %s is taken; serving on a free port instead", port, host)
        return QuietThreadingHTTPServer((host, 0), Handler), True


class KubeAPIServer:
    """The emulator: an HTTP server over a KubeAPI, optionally persisted to ``state_file``."""

    def __init__(self, state_file=None, host="127.0.0.1", port=0, history_limit=10000, save_interval=1.0,
                 bookmark_interval=5.0, tls_cert=None, tls_key=None, fallback_to_any_port=False, request_log=None):
        self.api = KubeAPI(history_limit=history_limit)
        self.state_file = state_file
        if state_file and os.path.exists(state_file):
            with open(state_file) as handle:
                self.api.restore(json.load(handle))
        self.httpd, self.port_taken = bind_http_server(host, port, fallback_to_any_port)
        self.httpd.daemon_threads = True
        self.scheme = "http"
        if tls_cert:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls_cert, tls_key)
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
            self.scheme = "https"
        self.httpd.api = self.api
        self.httpd.stopping = threading.Event()
        self.httpd.bookmark_interval = bookmark_interval
        self.httpd.request_log = RequestLog(request_log) if request_log else None
        self.save_interval = save_interval
        self.threads = []

    @property
    def store(self):
        return self.api.store

    @property
    def port(self):
        return self.httpd.server_address[1]

    @property
    def url(self):
        return "%s://%s:%d" % (self.scheme, self.httpd.server_address[0], self.port)

    def _saver(self):
        while not self.httpd.stopping.wait(self.save_interval):
            if self.store.dirty:
                self.save()

    def save(self):
        if self.state_file:
            self.store.save(self.state_file)

    def start(self):
        serve = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="kubeapi-http", daemon=True)
        serve.start()
        self.threads.append(serve)
        if self.state_file:
            saver = threading.Thread(target=self._saver, name="kubeapi-saver", daemon=True)
            saver.start()
            self.threads.append(saver)
        return self

    def stop(self):
        self.httpd.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.save()
