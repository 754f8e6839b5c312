# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""The ``cnr`` reconciler of katalyst-controller: Katalyst's ``cnr-lifecycle`` (katalyst-cluster-spec.md §3.2).

Every pass plans with ``cnr.plan_cnr_lifecycle`` over the node and CNR caches: a CNR for every Node
(labels merged, the node's win; one controlling ownerReference), labels/owner patched where they differ,
and CNRs whose Node is gone deleted, but only after a live GET confirms the Node is really absent (a
cache can lag behind a Node that was just created). A create that finds the CNR already there (the agent
may have made it first) goes on to the label patch in the next pass.

Options (``cnr:`` in the controller configuration): ``period_seconds`` (30, Katalyst's clearCNRPeriod).
"""

from __future__ import annotations

import logging

from .. import cnr
from ..kube import KubeError

try:
    import prometheus_client
except ImportError:  # pragma: no cover
    prometheus_client = None

LOG = logging.getLogger("katalyst.controller.cnr")


def _labels(obj):
    return ((obj or {}).get("metadata") or {}).get("labels") or {}


class CNRReconciler:
    name = "cnr"
    informers = ("nodes", "customnoderesources")

    def __init__(self, context):
        self.context = context
        self.node_labels = {}
        self.metrics = {}
        if prometheus_client is not None and context.registry is not None:
            self.metrics["writes"] = prometheus_client.Counter(
                "katalyst_cnr_lifecycle_writes_total", "CNR creates, patches and deletes by the cnr reconciler", ["action"],
                registry=context.registry)
            self.metrics["kept"] = prometheus_client.Counter(
                "katalyst_cnr_lifecycle_deletes_skipped_total", "CNR deletes skipped because a live GET found the Node",
                registry=context.registry)

    @property
    def period_seconds(self):
        return float(self.context.options.get("period_seconds", 30))

    def wants(self, informer, event_type, obj):
        """Node add/delete and label changes, any CNR change (heartbeats of node status are ignored)."""
        if informer != "nodes":
            return True
        name = (obj.get("metadata") or {}).get("name")
        if event_type == "DELETED":
            self.node_labels.pop(name, None)
            return True
        labels = dict(_labels(obj))
        if self.node_labels.get(name) == labels:
            return False
        self.node_labels[name] = labels
        return True

    def _count(self, action):
        if self.metrics:
            self.metrics["writes"].labels(action).inc()

    def reconcile_all(self):
        nodes = self.context.informers["nodes"].items()
        cnrs = self.context.informers["customnoderesources"].items()
        plan = cnr.plan_cnr_lifecycle(nodes, cnrs)
        failures = []
        for change in plan:
            try:
                self.apply(change)
            except KubeError as exc:
                LOG.error("%s %s: %s", change.action, change.target, exc, extra={"target": change.target})
                failures.append("%s %s: %s" % (change.action, change.target, exc))
        if failures:
            raise RuntimeError("cnr: %d change(s) failed: %s" % (len(failures), "; ".join(failures)))

    def apply(self, change):
        kube, data = self.context.kube, change.data
        if change.action == "create":
            try:
                kube.create(data["object"])
            except KubeError as exc:
                if exc.status != 409:
                    raise
                LOG.debug("CNR %s already exists", data["name"])
                return
        elif change.action == "patch":
            if kube.get(data["api_version"], data["kind"], data["name"]) is None:
                return      # deleted meanwhile; the next pass recreates it if the node is there
            kube.patch(data["api_version"], data["kind"], data["name"], data["patch"], patch_type=data.get("patch_type", "merge"))
        elif change.action == "delete":
            if data.get("confirm_node_absent") and kube.get("v1", "Node", data["name"]) is not None:
                LOG.info("CNR %s: its node exists (the cache lags); not deleting", data["name"], extra={"target": change.target})
                if self.metrics:
                    self.metrics["kept"].inc()
                return
            if not kube.delete(data["api_version"], data["kind"], data["name"]):
                return
        LOG.info("%s %s: %s", change.action, change.target, change.reason, extra={"target": change.target})
        self._count(change.action)
