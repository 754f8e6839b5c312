# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""katalyst-scheduler-extender: a kube-scheduler HTTP extender.

    python -m katalyst_colocation.daemons.extender --config /etc/katalyst/scheduler-extender.yaml

kube-scheduler POSTs ``ExtenderArgs`` (the pod plus full nodes, or node names when the extender is
``nodeCacheCapable``) to ``<urlPrefix>/<filterVerb>`` and ``<urlPrefix>/<prioritizeVerb>``; the answer
is an ``ExtenderFilterResult`` or a ``HostPriorityList``. The decisions are plugins, run in order:
each has ``filter(pod, nodes, cache)`` -> ``{node name: (code, reason)}`` (a node left out passes) and optionally
``prioritize(pod, nodes, cache)`` -> ``{node name: score}``; today ``NodeOvercommitment`` (cluster
spec 2.7) and ``NUMA`` (extender_numa.py: NUMA topology fit and NUMA-level inter-pod affinity, cluster spec
3.3, 4.2, 4.3). Pods, nodes and CNRs come from informers; plugins keep per-node results in ``ClusterCache.memo``.
Served by ``http_server.KeepAliveServer`` (one asyncio loop, keep-alive, as the webhook); ``/healthz`` and ``/metrics``
are on the same port.
"""

from __future__ import annotations

import functools
import gc
import itertools
import logging
import operator
import threading
import time

from . import entrypoint, service
from .http_server import KeepAliveServer, answer_object, server_ssl_context
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
        self.kept = {}           # key -> {node name: value}: node state every request reads (never evicted, only invalidated;
        #                          by key first, so a request reads every node's value with one lookup each)
        self.generations = {}    # node name -> count of changes to its CNR or pods
        self.placed_keys = {}    # placement.pod_key -> how many cached pods on a node have it (a pod absent here is on no node)
        self.ratio_nodes = set()   # names of the nodes whose Node carries an overcommit ratio (overcommit.overcommit_annotated)

    def _changed(self, name, old, new):
        """Forget what was computed from node ``name`` unless the object is the same version (resync)."""
        if name is None:
            return
        if old is not None and new is not None and _version(old) is not None and _version(old) == _version(new):
            return
        self.memos.pop(name, None)
        for values in self.kept.values():
            values.pop(name, None)
        self.generations[name] = self.generations.get(name, 0) + 1

    def memo(self, name, key, build, limit=64, keep=False):
        """``build()``, kept until node ``name``'s CNR or pods change (plugins share parsed node state this way).

        Hits take no lock (a dict read is atomic). Per-pod results (``keep=False``) are bounded per node, oldest
        first out; ``keep=True`` is for the node's own parsed state, which every request reads: never evicted.
        """
        if keep:
            entries, entry_key = self.kept.get(key), name
        else:
            entries, entry_key = self.memos.get(name), key
        if entries is not None:
            value = entries.get(entry_key, _MISSING)
            if value is not _MISSING:
                return value
        with self.lock:
            generation = self.generations.get(name, 0)
        value = build()
        with self.lock:
            if self.generations.get(name, 0) == generation:
                entries = self.kept.setdefault(key, {}) if keep else self.memos.setdefault(name, {})
                while not keep and len(entries) >= limit:
                    entries.pop(next(iter(entries)))
                entries[entry_key] = value
        return value

    def memo_each(self, names, key, build):
        """``[memo(name, key, lambda: build(name), keep=True) for name in names]``, with the hits read inline: a request
        reads every node's kept state, and a function call per node is a large part of its cost."""
        values = list(map((self.kept.get(key) or {}).get, names, itertools.repeat(_MISSING)))
        if _MISSING in values:
            for index, name in enumerate(names):
                if values[index] is _MISSING:
                    values[index] = self.memo(name, key, functools.partial(build, name), keep=True)
        return values

    def on_node(self, event_type, node):
        with self.lock:
            name = node["metadata"]["name"]
            if event_type == "DELETED":
                self.nodes.pop(name, None)
                self.ratio_nodes.discard(name)
            else:
                self.nodes[name] = node
                if overcommit.overcommit_annotated([node])[0]:
                    self.ratio_nodes.add(name)
                else:
                    self.ratio_nodes.discard(name)

    def ratio_free(self, nodes, names):
        """True when none of ``nodes`` (the cache's current Node objects of ``names``) carries an overcommit ratio,
        read from ``ratio_nodes``; None when that cannot tell (a node is not the cache's current object)."""
        with self.lock:
            if not all(map(operator.is_, nodes, map(self.nodes.get, names))):
                return None
            return self.ratio_nodes.isdisjoint(names)

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
                if old_node:
                    self._unplace(placement.pod_key(old))
                if old_node != node_name or event_type == "DELETED":
                    self._changed(old_node, None, None)
            if event_type != "DELETED":
                self._changed(node_name, old, pod)
            if event_type == "DELETED":
                return
            self.pods[key] = pod
            if node_name:
                self.pods_by_node.setdefault(node_name, {})[key] = pod
                placed = placement.pod_key(pod)
                self.placed_keys[placed] = self.placed_keys.get(placed, 0) + 1

    def _unplace(self, placed):
        count = self.placed_keys.pop(placed, 0) - 1
        if count > 0:
            self.placed_keys[placed] = count

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

    def filter(self, pod, nodes, cache, names=None):
        """``{node name: (code, reason)}`` of the nodes that need the full check (``names``: the nodes' names when the caller has them)."""
        pod_state = overcommit.pod_filter_state(pod)
        if pod_state["guaranteed_cpus"] == 0 and pod_state["milli_cpu"] == 0:
            return {}     # a pod that requests no CPU passes every node (a missing verdict is Success)
        if names is None:
            names = [node["metadata"]["name"] for node in nodes]
        states, ratio_free = self.node_states(names, cache), getattr(cache, "ratio_free", None)
        if None not in states and ratio_free is not None and ratio_free(nodes, names):
            return {}     # no node needs the full check: every verdict is Success (read from the cache's index of ratios)
        annotated = overcommit.overcommit_annotated(nodes)
        if None not in states and True not in annotated:
            return {}     # no node needs the full check: every verdict is Success
        # a node the cache knows and that has no overcommit ratio passes without the full check (its answer is Success)
        return {name: overcommit.filter_node_overcommitment(pod_state, node, state)
                for name, node, state, ratio in zip(names, nodes, states, annotated) if state is None or ratio}

    def failures(self, pod, nodes, cache, names=None):
        """``filter`` without its Success verdicts."""
        verdicts = self.filter(pod, nodes, cache, names)
        return {name: verdict for name, verdict in verdicts.items() if verdict[0] != overcommit.SUCCESS} if verdicts else verdicts

    def node_states(self, names, cache):
        return cache.memo_each(names, self.name, functools.partial(self._build_state, cache))

    @staticmethod
    def _build_state(cache, name):
        return overcommit.node_filter_state(cache.cnr(name), cache.pods_on(name))

    def warm(self, cache):
        self.node_states(cache.node_names(), cache)


SUCCESS_VERDICT = (overcommit.SUCCESS, "")
ALL_SUCCESS = frozenset([SUCCESS_VERDICT])
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
        """(node objects, their names (None for full nodes: read from them when needed, as the plugins do), names that
        were asked for but are unknown, names-only request?)"""
        if args.get("nodenames") is not None and not (args.get("nodes") or {}).get("items"):
            requested = list(args.get("nodenames") or [])
            with self.cache.lock:
                nodes = list(map(self.cache.nodes.get, requested))
            if None not in nodes:
                return nodes, requested, [], True
            unknown = [name for name, node in zip(requested, nodes) if node is None]
            names = [name for name, node in zip(requested, nodes) if node is not None]
            return [node for node in nodes if node is not None], names, unknown, True
        return list((args.get("nodes") or {}).get("items") or []), None, [], False

    def _count(self, plugin_name, counts):
        if self.metrics:
            for code, count in counts.items():
                self.metrics["verdicts"].labels(plugin_name, code).inc(count)

    def filter(self, args):
        args = extender_args(args)
        pod = args.get("pod") or {}
        nodes, names, unknown, by_name = self._nodes(args)
        failed = {name: "node not found in the extender's cache" for name in unknown}
        for plugin in self.plugins:
            if not nodes:
                break
            if hasattr(plugin, "failures"):
                verdicts = plugin.failures(pod, nodes, self.cache, names)     # only the verdicts that are not Success
            else:
                verdicts = plugin.filter(pod, nodes, self.cache)
            if set(verdicts.values()) <= ALL_SUCCESS:
                self._count(plugin.name, {overcommit.SUCCESS: len(nodes)})    # a missing verdict is Success
                continue
            passing, passing_names, counts = [], [], {}
            for name, node in zip(names if names is not None else [node["metadata"]["name"] for node in nodes], nodes):
                code, reason = verdicts.get(name, SUCCESS_VERDICT)
                counts[code] = counts.get(code, 0) + 1
                if code == overcommit.SUCCESS:
                    passing.append(node)
                    passing_names.append(name)
                elif code == overcommit.ERROR and self.error_policy == "error":
                    self._count(plugin.name, counts)
                    return {"nodes": None, "nodenames": None, "failedNodes": {}, "failedAndUnresolvableNodes": {},
                            "error": "%s: %s" % (plugin.name, reason)}
                else:
                    failed[name] = reason
            self._count(plugin.name, counts)
            nodes, names = passing, passing_names
        result = {"failedNodes": failed, "failedAndUnresolvableNodes": {}, "error": ""}
        if by_name:
            result.update(nodes=None, nodenames=names)
        else:
            result.update(nodes={"items": nodes}, nodenames=None)
        return result

    def prioritize(self, args):
        args = extender_args(args)
        pod = args.get("pod") or {}
        nodes, names, _unknown, _by_name = self._nodes(args)
        if names is None:
            names = [node["metadata"]["name"] for node in nodes]
        scores, summed = dict.fromkeys(names, 0), False
        for plugin in self.plugins:
            if hasattr(plugin, "scores"):
                found = plugin.scores(pod, nodes, self.cache, names)
            elif hasattr(plugin, "prioritize"):
                found = plugin.prioritize(pod, nodes, self.cache)
            else:
                continue
            if found:     # each node's sum, read in C: + int(found.get(name, 0)) for the nodes asked about (the first: 0 + it)
                added = map(int, map(found.get, scores, itertools.repeat(0)))
                scores, summed = dict(zip(scores, map(operator.add, scores.values(), added) if summed else added)), True
        return [{"host": name, "score": score} for name, score in scores.items()]


class ExtenderDaemon:
    def __init__(self, config, api_client=None, cache=None):
        self.config = service.with_defaults(config or {}, DEFAULTS)
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
        self.server = KeepAliveServer(self.daemon, {"filter": self.filter_raw, "prioritize": self.prioritize_raw},
                                      self.config["listen_address"], self.config["port"], context)

    def filter_raw(self, raw):
        """POST <urlPrefix>/filter: an ExtenderFilterResult as JSON bytes (400 when the body is not a JSON object)."""
        return answer_object(raw, self.extender.filter)

    def prioritize_raw(self, raw):
        """POST <urlPrefix>/prioritize: a HostPriorityList as JSON bytes."""
        return answer_object(raw, self.extender.prioritize)

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


def load(config_path):
    """The extender of a config file (main's)."""
    return ExtenderDaemon(service.load_config(config_path, DEFAULTS))


def freeze_heap():
    """Collect once, then leave everything alive now (the synced informer caches and parsed node states, which
    live as long as the process) out of the garbage collector's passes. Python's full collection walks every
    tracked object: over the cache of a 1,000-node cluster that is a 50-100 ms stop in the middle of a request.
    Objects created later are collected as usual; frozen ones are still freed by reference counting."""
    gc.collect()
    gc.freeze()


def main(argv=None):
    return entrypoint.run_daemon("katalyst-scheduler-extender", load, argv, settle=freeze_heap)


if __name__ == "__main__":
    raise SystemExit(main())
