# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""The NodeOvercommitConfig reconciler of katalyst-controller (cluster spec 2.4, katalyst's ``noc``).

Level-triggered: every pass reads configs, nodes, CNRs and pods (from informer caches when the
controller runs them, else one LIST each), asks ``overcommit.plan_node_overcommit`` what should be,
and writes only what differs: node annotation merge patches, NodeOvercommitConfig ``status`` (sorted
``matchedNodeList``, ``observedGeneration``, conditions ``Conflict``/``InvalidRatio``/``DecreaseRefused``)
and Events when a condition turns True or resolves. It follows the reconciler interface of
``controller.py`` (``OvercommitReconciler(context)``); ``OvercommitReconciler.standalone(kube)`` runs it
without the controller daemon (one LIST per kind per pass), for modules, tests and benchmarks. A node deleted meanwhile is done (404 is success),
a restart converges to the same state, and a second pass writes nothing.
"""

from __future__ import annotations

import datetime
import logging
import threading

from .. import overcommit
from ..fit import is_active, pod_requests
from ..kube import KubeError
from .service import set_gauge_series

try:
    import prometheus_client
except ImportError:  # pragma: no cover
    prometheus_client = None

LOG = logging.getLogger("katalyst.controller.overcommit")

CNR_API_VERSION = "node.katalyst.kubewharf.io/v1alpha1"
CNR_KIND = "CustomNodeResource"

DEFAULT_PERIOD_SECONDS = 300.0      # katalyst resyncs every 30m; watch events trigger passes in between
INFORMERS = {"nodeovercommitconfigs": (overcommit.NOC_API_VERSION, overcommit.NOC_KIND), "nodes": ("v1", "Node"),
             "customnoderesources": (CNR_API_VERSION, CNR_KIND), "pods": ("v1", "Pod")}


def rfc3339(moment):
    if isinstance(moment, str):
        return moment
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class _ListSource:
    """An informer stand-in that LISTs on every ``items()`` (standalone use)."""

    def __init__(self, client, api_version, kind):
        self.client, self.api_version, self.kind = client, api_version, kind
        self.synced = threading.Event()
        self.synced.set()

    def items(self):
        try:
            return self.client.list(self.api_version, self.kind)
        except KubeError as exc:
            if exc.status == 404 and self.kind == CNR_KIND:   # no CNR CRD: no realtime ratios, no guaranteed cpus
                return []
            raise


class _StandaloneContext:
    def __init__(self, client, options, now):
        self.kube = client
        self.options = dict(options or {})
        self.informers = {name: _ListSource(client, *source) for name, source in INFORMERS.items()}
        self.registry = None
        self._now = now

    def now(self):
        return self._now() if self._now else datetime.datetime.now(datetime.timezone.utc)


def _fingerprint(informer, obj):
    meta = obj.get("metadata") or {}
    if informer == "nodes":
        return ((meta.get("labels") or {}).get(overcommit.POOL_LABEL), tuple(sorted((meta.get("annotations") or {}).items())),
                tuple(sorted(((obj.get("status") or {}).get("allocatable") or {}).items())))
    if informer == "customnoderesources":
        return tuple(sorted((meta.get("annotations") or {}).items()))
    if informer == "pods":
        node_name = (obj.get("spec") or {}).get("nodeName")
        if not node_name:
            return None
        try:
            requests = tuple(sorted(pod_requests(obj).items()))
        except ValueError:
            requests = ()
        return (node_name, is_active(obj), requests)
    return None


class OvercommitReconciler:
    """``reconcile_all()`` converges every node and NodeOvercommitConfig once; returns a summary dict.

    Options (``overcommit:`` in the controller's config): ``period_seconds`` (full pass at least this
    often, default 300), ``dry_run`` (plan and count, write nothing), ``incremental`` (default true: a node whose
    resourceVersion, CNR, requests and the configs are those of the last pass keeps its last decision, see
    ``overcommit.plan_node_overcommit``'s memo; false computes every node on every pass).
    """

    name = "overcommit"
    informers = tuple(INFORMERS)

    def __init__(self, context):
        self.context = context
        self.fingerprints = {}
        self.memo = {}
        self.last_summary = {}
        self.metrics = {}
        if prometheus_client is not None and getattr(context, "registry", None) is not None:
            self.metrics["writes"] = prometheus_client.Counter(
                "katalyst_overcommit_api_writes_total", "API writes by the overcommit reconciler", ["kind"], registry=context.registry)
            self.metrics["refused"] = prometheus_client.Gauge(
                "katalyst_overcommit_refused_nodes", "Nodes where a ratio decrease is refused by the guard", registry=context.registry)
            self.metrics["config_ratio"] = prometheus_client.Gauge(
                "katalyst_overcommit_config_ratio", "Overcommit ratio a NodeOvercommitConfig sets, by config, pool (its "
                "nodeOvercommitSelectorVal) and resource (1 where it sets none; no series while the ratio is invalid)",
                ["config", "pool", "resource"], registry=context.registry)
            self.metrics["config_nodes"] = prometheus_client.Gauge(
                "katalyst_overcommit_config_nodes", "Nodes a NodeOvercommitConfig applies to (of a pool's configs the newest wins a node), "
                "by config and pool", ["config", "pool"], registry=context.registry)
        self.series = {"config_ratio": set(), "config_nodes": set()}

    @classmethod
    def standalone(cls, client, options=None, now=None):
        """A reconciler that LISTs its inputs through ``client`` (a KubeClient) on each pass."""
        return cls(_StandaloneContext(client, options, now))

    @property
    def period_seconds(self):
        return float(self.context.options.get("period_seconds", DEFAULT_PERIOD_SECONDS))

    def wants(self, informer, event_type, obj):
        """Only changes that can alter the plan trigger a pass (not every kubelet heartbeat or pod status)."""
        if informer == "nodeovercommitconfigs":
            return True
        meta = obj.get("metadata") or {}
        key = (informer, meta.get("namespace"), meta.get("name"))
        if event_type == "DELETED":
            return self.fingerprints.pop(key, None) is not None or informer != "pods"
        fingerprint = _fingerprint(informer, obj)
        if fingerprint is None or self.fingerprints.get(key) == fingerprint:
            return False
        self.fingerprints[key] = fingerprint
        return True

    def snapshot(self):
        informers = self.context.informers
        return {"configs": informers["nodeovercommitconfigs"].items(), "nodes": informers["nodes"].items(),
                "cnrs": informers["customnoderesources"].items(), "pods": informers["pods"].items()}

    def _count(self, kind):
        if self.metrics:
            self.metrics["writes"].labels(kind).inc()

    def export_configs(self, configs, plan):
        """Per config: its ratios (those the plan applies: valid ones) and the nodes it applies to in this plan."""
        ratios, nodes, applied = {}, {}, {}
        for config_name in plan.node_config.values():
            if config_name is not None:
                applied[config_name] = applied.get(config_name, 0) + 1
        for config in configs:
            name = (config.get("metadata") or {}).get("name")
            spec = config.get("spec") or {}
            pool = spec.get("nodeOvercommitSelectorVal") or ""
            nodes[(name, pool)] = applied.get(name, 0)
            if overcommit.config_ratio_problems(config):
                continue
            set_ratios = spec.get("resourceOvercommitRatio") or {}
            for resource in overcommit.RESOURCES:
                ratios[(name, pool, resource)] = overcommit.check_ratio_value(set_ratios.get(resource, overcommit.DEFAULT_RATIO))
        self.series["config_ratio"] = set_gauge_series(self.metrics["config_ratio"], ratios, self.series["config_ratio"])
        self.series["config_nodes"] = set_gauge_series(self.metrics["config_nodes"], nodes, self.series["config_nodes"])

    # -- the pass ---------------------------------------------------------------------------------
    def reconcile_all(self, snapshot=None):
        snapshot = snapshot or self.snapshot()
        memo = self.memo if self.context.options.get("incremental", True) else None
        plan = overcommit.plan_node_overcommit(snapshot["configs"], snapshot["nodes"], snapshot["cnrs"], snapshot["pods"],
                                               now=rfc3339(self.context.now()), memo=memo)
        client = self.context.kube
        dry_run = bool(self.context.options.get("dry_run", False))
        summary = {"nodes": len(snapshot["nodes"]), "configs": len(snapshot["configs"]), "nodes_patched": 0, "nodes_gone": 0,
                   "configs_updated": 0, "events": 0, "refused": sorted(plan.refused), "errors": [],
                   "nodes_planned": len(snapshot["nodes"]) if memo is None else memo["planned"]}
        nodes = {(node.get("metadata") or {}).get("name"): node for node in snapshot["nodes"]} if plan.node_patches and memo is not None else {}
        if self.metrics:
            self.metrics["refused"].set(len(plan.refused))
            self.export_configs(snapshot["configs"], plan)
        for node_name in sorted(plan.node_patches):
            patch = plan.node_patches[node_name]
            try:
                written = client.patch("v1", "Node", node_name, {"metadata": {"annotations": patch}}, patch_type="merge", dry_run=dry_run)
                if not dry_run and node_name in nodes:
                    overcommit.record_patched(memo, nodes[node_name], patch, written)
                summary["nodes_patched"] += 1
                self._count("node")
                LOG.info("node %s annotations: %s", node_name, patch, extra={"node": node_name})
            except KubeError as exc:
                if exc.status == 404:
                    summary["nodes_gone"] += 1        # deleted meanwhile: nothing left to do (katalyst retries forever)
                else:
                    summary["errors"].append(str(exc))
        for config_name in sorted(plan.config_status):
            if not plan.status_changed.get(config_name):
                continue
            try:
                client.patch(overcommit.NOC_API_VERSION, overcommit.NOC_KIND, config_name, {"status": plan.config_status[config_name]},
                             patch_type="merge", subresource="status", dry_run=dry_run)
                summary["configs_updated"] += 1
                self._count("nodeovercommitconfig_status")
            except KubeError as exc:
                if exc.status != 404:
                    summary["errors"].append(str(exc))
        if not dry_run:
            for event in plan.events:
                if client.emit_event(event["object"], event["reason"], event["message"], event["type"], "katalyst-controller"):
                    summary["events"] += 1
                    self._count("event")
                LOG.log(logging.WARNING if event["type"] == "Warning" else logging.INFO, "%s %s: %s",
                        event["object"]["metadata"].get("name"), event["reason"], event["message"])
        self.last_summary = summary
        if summary["errors"]:
            raise KubeError("overcommit reconcile: %d write(s) failed: %s" % (len(summary["errors"]), "; ".join(summary["errors"][:3])))
        return summary
