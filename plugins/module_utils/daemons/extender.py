# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""katalyst-scheduler-extender: a kube-scheduler HTTP extender.

    python -m katalyst_colocation.daemons.extender --config /etc/katalyst/scheduler-extender.yaml

kube-scheduler POSTs ``ExtenderArgs`` (the pod plus full nodes, or node names when the extender is
``nodeCacheCapable``) to ``<urlPrefix>/<filterVerb>`` and ``<urlPrefix>/<prioritizeVerb>``; the answer
is an ``ExtenderFilterResult`` or a ``HostPriorityList``. The decisions are plugins, run in order:
each has ``filter(pod, nodes, cache)`` -> ``{node name: (code, reason)}`` and optionally
``prioritize(pod, nodes, cache)`` -> ``{node name: score}``; today ``NodeOvercommitment`` (cluster
spec 2.7) and ``NUMA`` (extender_numa.py: NUMA topology fit and NUMA-level inter-pod affinity, cluster spec
3.3, 4.2, 4.3). Pods, nodes and CNRs come from informers; plugins keep per-node results in ``ClusterCache.memo``.
``/healthz`` and ``/metrics`` are served on the same port.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import logging
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from . import service
from .extender_numa import NumaPlugin
from .informer import Informer, object_key
from .token_renewal import DEFAULTS as TOKEN_RENEWAL_DEFAULTS, daemon_api_client
from .. import overcommit, placement

try:
    import prometheus_client
except ImportError:  # pragma: no cover
    prometheus_client = None

LOG = logging.getLogger("katalyst.extender")

CNR_GROUP, CNR_VERSION, CNR_PLURAL = "node.katalyst.kubewharf.io", "v1alpha1", "customnoderesources"

DEFAULTS = {
    "kubeconfig": "",
    "listen_address": "0.0.0.0",
    "port": 8889,
    "tls_cert_file": "",
    "tls_key_file": "",
    "log_level": "info",
    "json_logs": True,
    "resync_seconds": 300,
    "plugins": ["NodeOvercommitment"],
    # the NUMA plugin's resource policy (cluster spec 4.2): dynamic (dedicated_cores + numa_binding) or native
    "numa_resource_policy": "dynamic",
    # resources the NUMA plugin aligns (Katalyst's alignedResources, default cpu and memory), e.g. add nvidia.com/gpu
    "numa_aligned_resources": ["cpu", "memory"],
    # what a plugin's Error status does: "error" fails the whole request as kube-scheduler does for an
    # Error from a filter plugin; "fail_node" only marks that node as failed
    "error_policy": "error",
}
DEFAULTS.update(TOKEN_RENEWAL_DEFAULTS)


# -- a small JSON-over-HTTP(S) server with /healthz and /metrics (also used by the webhook) ----------
class JSONServer:
    """POST routes answering JSON, GET /healthz and /metrics of a service.Daemon, optional TLS, keep-alive."""

    def __init__(self, daemon, routes, address, port, ssl_context=None):
        self.daemon = daemon
        self.routes = dict(routes)     # last path segment -> handler(body dict) -> (http code, JSON-able)
        self.address = address
        self.port = port
        self.ssl_context = ssl_context
        self.http = None
        self.metrics = service.http_metrics(daemon.registry)

    def _observe(self, path, code, seconds):
        if self.metrics:
            self.metrics["requests"].labels(self.daemon.name, path, str(code)).inc()
            self.metrics["seconds"].labels(self.daemon.name, path).observe(seconds)

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True     # headers and body are separate writes: no 40 ms delayed-ACK stalls

            def do_GET(self):  # noqa: N802 (http.server naming)
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    ok, loops = server.daemon.health()
                    self._send(200 if ok else 503, "application/json", json.dumps({"ok": ok, "loops": loops}).encode())
                elif path == "/metrics" and prometheus_client is not None:
                    self._send(200, prometheus_client.CONTENT_TYPE_LATEST, prometheus_client.generate_latest(server.daemon.registry))
                else:
                    self._send(404, "text/plain", b"not found\n")

            def do_POST(self):  # noqa: N802
                started = time.monotonic()
                path = self.path.split("?", 1)[0]
                verb = path.rstrip("/").rsplit("/", 1)[-1]
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                handler = server.routes.get(verb)
                if handler is None:
                    code, payload = 404, {"error": "unknown path %s" % path}
                else:
                    try:
                        body = json.loads(raw or b"{}")
                        if not isinstance(body, dict):
                            raise ValueError("expected a JSON object")
                    except ValueError as exc:
                        code, payload = 400, {"error": "invalid JSON body: %s" % exc}
                    else:
                        try:
                            code, payload = handler(body)
                        except Exception as exc:  # pylint: disable=broad-except
                            LOG.exception("%s %s failed", server.daemon.name, path)
                            code, payload = 500, {"error": str(exc)}
                reply = json.dumps(payload, separators=(",", ":")).encode()
                # counted before the answer goes out: a client that reads /metrics after its reply sees its request
                server._observe(verb if handler else "unknown", code, time.monotonic() - started)
                self._send(code, "application/json", reply)

            def _send(self, code, content_type, body):
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # requests are counted in /metrics instead
                pass

        return Handler

    def start(self):
        self.http = ThreadingHTTPServer((self.address, int(self.port)), self._handler_class())
        self.http.daemon_threads = True
        if self.ssl_context is not None:
            self.http.socket = self.ssl_context.wrap_socket(self.http.socket, server_side=True)
        threading.Thread(target=self.http.serve_forever, name="%s-http" % self.daemon.name, daemon=True).start()
        self.port = self.http.server_address[1]
        return self.port

    def stop(self):
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()


def server_ssl_context(cert_file, key_file):
    """TLS for a server; re-read on SIGHUP by building a new context (certificates rotate)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


# -- the cluster view ----------------------------------------------------------------------------------
_MISSING = object()


def _version(obj):
    return ((obj or {}).get("metadata") or {}).get("resourceVersion")


class ClusterCache:
    """Nodes, CNRs and pods by node, kept by informers (or fed directly in tests)."""

    def __init__(self):
        self.lock = threading.RLock()
        self.nodes = {}
        self.cnrs = {}
        self.pods = {}           # key -> pod
        self.pods_by_node = {}   # node name -> {key: pod}
        self.informers = []
        self.memos = {}          # node name -> {key: value computed from that node's CNR and pods}, at most ``limit`` (FIFO)
        self.kept = {}           # node name -> {key: value}: node state every request reads (never evicted, only invalidated)
        self.generations = {}    # node name -> count of changes to its CNR or pods

    def _changed(self, name, old, new):
        """Forget what was computed from node ``name`` unless the object is the same version (resync)."""
        if name is None:
            return
        if old is not None and new is not None and _version(old) is not None and _version(old) == _version(new):
            return
        self.memos.pop(name, None)
        self.kept.pop(name, None)
        self.generations[name] = self.generations.get(name, 0) + 1

    def memo(self, name, key, build, limit=64, keep=False):
        """``build()``, kept until node ``name``'s CNR or pods change (plugins share parsed node state this way).

        Hits take no lock (a dict read is atomic). Per-pod results (``keep=False``) are bounded per node, oldest
        first out; ``keep=True`` is for the node's own parsed state, which every request reads: never evicted.
        """
        entries = (self.kept if keep else self.memos).get(name)
        if entries is not None:
            value = entries.get(key, _MISSING)
            if value is not _MISSING:
                return value
        with self.lock:
            generation = self.generations.get(name, 0)
        value = build()
        with self.lock:
            if self.generations.get(name, 0) == generation:
                entries = (self.kept if keep else self.memos).setdefault(name, {})
                while not keep and len(entries) >= limit:
                    entries.pop(next(iter(entries)))
                entries[key] = value
        return value

    def on_node(self, event_type, node):
        with self.lock:
            if event_type == "DELETED":
                self.nodes.pop(node["metadata"]["name"], None)
            else:
                self.nodes[node["metadata"]["name"]] = node

    def on_cnr(self, event_type, cnr):
        with self.lock:
            name = cnr["metadata"]["name"]
            self._changed(name, self.cnrs.get(name), None if event_type == "DELETED" else cnr)
            if event_type == "DELETED":
                self.cnrs.pop(name, None)
            else:
                self.cnrs[name] = cnr

    def on_pod(self, event_type, pod):
        key = object_key(pod)
        with self.lock:
            old = self.pods.pop(key, None)
            node_name = (pod.get("spec") or {}).get("nodeName")
            if old is not None:
                old_node = (old.get("spec") or {}).get("nodeName")
                self.pods_by_node.get(old_node, {}).pop(key, None)
                if old_node != node_name or event_type == "DELETED":
                    self._changed(old_node, None, None)
            if event_type != "DELETED":
                self._changed(node_name, old, pod)
            if event_type == "DELETED":
                return
            self.pods[key] = pod
            if node_name:
                self.pods_by_node.setdefault(node_name, {})[key] = pod

    def node(self, name):
        with self.lock:
            return self.nodes.get(name)

    def node_names(self):
        with self.lock:
            return list(self.nodes)

    def cnr(self, name):
        with self.lock:
            return self.cnrs.get(name)

    def pods_on(self, name):
        with self.lock:
            return list((self.pods_by_node.get(name) or {}).values())

    def start(self, api_client, stop, resync_seconds=300, on_retry=None):
        """``on_retry(reason)``: each list/watch the informers start again after a failure (katalyst_api_retries_total)."""
        from kubernetes import client  # pylint: disable=import-outside-toplevel
        core = client.CoreV1Api(api_client)
        custom = client.CustomObjectsApi(api_client)
        cnr_list = functools.partial(custom.list_cluster_custom_object, CNR_GROUP, CNR_VERSION, CNR_PLURAL)
        self.informers = [Informer(core.list_node, self.on_node, resync_seconds=resync_seconds, name="extender-nodes", on_retry=on_retry),
                          Informer(core.list_pod_for_all_namespaces, self.on_pod, resync_seconds=resync_seconds, name="extender-pods",
                                   on_retry=on_retry),
                          Informer(cnr_list, self.on_cnr, resync_seconds=resync_seconds, name="extender-cnrs", on_retry=on_retry)]
        for informer in self.informers:
            informer.start(stop)
        return self.informers

    def synced(self, timeout=None):
        return all(informer.synced.wait(timeout) for informer in self.informers)


# -- plugins ---------------------------------------------------------------------------------------------
class NodeOvercommitmentPlugin:
    """katalyst's NodeOvercommitment filter: protects cpuset-bound pods on static-CPU-manager nodes."""

    name = "NodeOvercommitment"

    def filter(self, pod, nodes, cache):
        pod_state = overcommit.pod_filter_state(pod)
        verdicts = {}
        for node in nodes:
            name = node["metadata"]["name"]
            verdicts[name] = overcommit.filter_node_overcommitment(pod_state, node, self.node_state(name, cache))
        return verdicts

    def node_state(self, name, cache):
        return cache.memo(name, self.name, lambda: overcommit.node_filter_state(cache.cnr(name), cache.pods_on(name)), keep=True)

    def warm(self, cache):
        for name in cache.node_names():
            self.node_state(name, cache)


PLUGINS = {NodeOvercommitmentPlugin.name: NodeOvercommitmentPlugin, NumaPlugin.name: NumaPlugin}


def extender_args(body):
    """kube-scheduler's ExtenderArgs with lower-case keys. Its Go struct has no json tags, so kube-scheduler sends the
    field names (`Pod`, `Nodes`, `NodeNames`) and Go's decoder matches names case-insensitively: read them the same way."""
    return {str(key).lower(): value for key, value in (body or {}).items()}


class SchedulerExtender:
    """The filter/prioritize verbs over a list of plugins."""

    def __init__(self, cache, plugins, error_policy="error", metrics=None):
        self.cache = cache
        self.plugins = list(plugins)
        self.error_policy = error_policy
        self.metrics = metrics or {}

    def _nodes(self, args):
        """(node objects, names that were asked for but are unknown, names-only request?)"""
        if args.get("nodenames") is not None and not (args.get("nodes") or {}).get("items"):
            nodes, unknown = [], []
            with self.cache.lock:
                known = self.cache.nodes
                for name in args.get("nodenames") or []:
                    node = known.get(name)
                    if node is None:
                        unknown.append(name)
                    else:
                        nodes.append(node)
            return nodes, unknown, True
        return list((args.get("nodes") or {}).get("items") or []), [], False

    def _count(self, plugin_name, counts):
        if self.metrics:
            for code, count in counts.items():
                self.metrics["verdicts"].labels(plugin_name, code).inc(count)

    def filter(self, args):
        args = extender_args(args)
        pod = args.get("pod") or {}
        nodes, unknown, by_name = self._nodes(args)
        failed = {name: "node not found in the extender's cache" for name in unknown}
        for plugin in self.plugins:
            if not nodes:
                break
            verdicts = plugin.filter(pod, nodes, self.cache)
            passing, counts = [], {}
            for node in nodes:
                name = node["metadata"]["name"]
                code, reason = verdicts.get(name, (overcommit.SUCCESS, ""))
                counts[code] = counts.get(code, 0) + 1
                if code == overcommit.SUCCESS:
                    passing.append(node)
                elif code == overcommit.ERROR and self.error_policy == "error":
                    self._count(plugin.name, counts)
                    return {"nodes": None, "nodenames": None, "failedNodes": {}, "failedAndUnresolvableNodes": {},
                            "error": "%s: %s" % (plugin.name, reason)}
                else:
                    failed[name] = reason
            self._count(plugin.name, counts)
            nodes = passing
        result = {"failedNodes": failed, "failedAndUnresolvableNodes": {}, "error": ""}
        if by_name:
            result.update(nodes=None, nodenames=[n["metadata"]["name"] for n in nodes])
        else:
            result.update(nodes={"items": nodes}, nodenames=None)
        return result

    def prioritize(self, args):
        args = extender_args(args)
        pod = args.get("pod") or {}
        nodes, _unknown, _by_name = self._nodes(args)
        scores = {node["metadata"]["name"]: 0 for node in nodes}
        for plugin in self.plugins:
            if hasattr(plugin, "prioritize"):
                for name, score in plugin.prioritize(pod, nodes, self.cache).items():
                    if name in scores:
                        scores[name] += int(score)
        return [{"host": name, "score": score} for name, score in scores.items()]


class ExtenderDaemon:
    def __init__(self, config, api_client=None, cache=None):
        self.config = dict(DEFAULTS, **(config or {}))
        unknown = sorted(set(self.config) - set(DEFAULTS))
        if unknown:
            raise ValueError("unknown setting(s): %s" % ", ".join(unknown))
        if self.config["error_policy"] not in ("error", "fail_node"):
            raise ValueError("error_policy must be error or fail_node")
        try:
            placement.aligned_resource_names(self.config["numa_aligned_resources"])
        except ValueError as exc:
            raise ValueError("numa_aligned_resources: %s" % exc) from None
        missing = [name for name in self.config["plugins"] if name not in PLUGINS]
        if missing:
            raise ValueError("unknown plugin(s): %s (known: %s)" % (", ".join(missing), ", ".join(sorted(PLUGINS))))
        self.daemon = service.Daemon("katalyst-scheduler-extender")
        self.api_client = api_client
        self.cache = cache or ClusterCache()
        metrics = {}
        if prometheus_client is not None:
            metrics["verdicts"] = prometheus_client.Counter(
                "katalyst_extender_filter_verdicts_total", "Per-node filter verdicts by plugin and code", ["plugin", "code"],
                registry=self.daemon.registry)
        plugins = [NumaPlugin(self.config["numa_resource_policy"], self.config["numa_aligned_resources"]) if name == NumaPlugin.name
                   else PLUGINS[name]() for name in self.config["plugins"]]
        self.extender = SchedulerExtender(self.cache, plugins, self.config["error_policy"], metrics)
        context = None
        if self.config["tls_cert_file"]:
            context = server_ssl_context(self.config["tls_cert_file"], self.config["tls_key_file"])
        self.server = JSONServer(self.daemon, {"filter": lambda body: (200, self.extender.filter(body)),
                                               "prioritize": lambda body: (200, self.extender.prioritize(body))},
                                 self.config["listen_address"], self.config["port"], context)

    def start(self, wait_synced=30.0):
        """Start informers (when there is an API client) and the HTTP server; returns the port."""
        if self.api_client is not None or self.config["kubeconfig"]:
            self.api_client = daemon_api_client(self.daemon, self.config, like=self.api_client)
        if self.api_client is not None:
            for plugin in self.extender.plugins:
                if hasattr(plugin, "attach"):
                    plugin.attach(self.api_client, on_retry=self.daemon.api_retry_counter("client"))
            self.cache.start(self.api_client, self.daemon.stop_event, self.config["resync_seconds"], on_retry=self.daemon.api_retry_counter("informer"))
            if wait_synced:
                self.cache.synced(wait_synced)
                self.warm()
        port = self.server.start()
        LOG.info("katalyst-scheduler-extender serving on %s:%d (plugins: %s; NUMA aligned resources: %s)", self.config["listen_address"],
                 port, ", ".join(self.config["plugins"]), ", ".join(sorted(set(self.config["numa_aligned_resources"]))))
        return port

    def warm(self):
        """Parse every node's state now (the plugins' kept memos) rather than in the first request: a cold request
        over 1,000 nodes costs ~0.2 s. Returns the seconds it took."""
        started = time.monotonic()
        for plugin in self.extender.plugins:
            if hasattr(plugin, "warm"):
                plugin.warm(self.cache)
        return time.monotonic() - started

    def stop(self):
        self.daemon.stop()
        for informer in self.cache.informers:
            informer.stop()
        self.server.stop()


def freeze_heap():
    """Collect once, then leave everything alive now (the synced informer caches and parsed node states, which
    live as long as the process) out of the garbage collector's passes. Python's full collection walks every
    tracked object: over the cache of a 1,000-node cluster that is a 50-100 ms stop in the middle of a request.
    Objects created later are collected as usual; frozen ones are still freed by reference counting."""
    gc.collect()
    gc.freeze()


def main(argv=None):
    parser = argparse.ArgumentParser(prog="katalyst-scheduler-extender")
    parser.add_argument("--config", required=True)
    args = parser.parse_args(argv)
    try:
        extender = ExtenderDaemon(service.load_config(args.config, DEFAULTS))
    except (OSError, ValueError) as exc:
        sys.stderr.write("katalyst-scheduler-extender: %s\n" % exc)
        return 2
    service.setup_logging(extender.config["log_level"], extender.config["json_logs"])
    extender.daemon.install_signal_handlers()   # before start(): a signal right after the first log line is handled
    extender.start()
    freeze_heap()
    extender.daemon.run_forever()
    extender.stop()
    return service.exit_cleanly(0)


if __name__ == "__main__":
    raise SystemExit(main())
