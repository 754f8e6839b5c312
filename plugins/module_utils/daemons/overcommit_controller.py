# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""The NodeOvercommitConfig reconciler of katalyst-controller (cluster spec 2.4, katalyst's ``noc``).

Level-triggered: every pass reads configs, nodes, CNRs and pods (from informer caches when the
controller runs them, else one LIST each), asks ``overcommit.plan_node_overcommit`` what should be,
and writes only what differs: node annotation merge patches, NodeOvercommitConfig ``status`` (sorted
``matchedNodeList``, ``observedGeneration``, conditions ``Conflict``/``InvalidRatio``/``DecreaseRefused``)
and Events when a condition turns True or resolves. A node deleted meanwhile is done (404 is success),
a restart converges to the same state, and a second pass writes nothing.
"""

from __future__ import annotations

import datetime
import functools
import logging

from .. import overcommit
from ..kube import KubeError

LOG = logging.getLogger("katalyst.controller.overcommit")

CNR_API_VERSION = "node.katalyst.kubewharf.io/v1alpha1"
CNR_KIND = "CustomNodeResource"

DEFAULTS = {
    "dry_run": False,
    "resync_seconds": 1800,      # katalyst --nodeovercommit-reconcile-period (30m)
}


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class OvercommitReconciler:
    """``reconcile_all()`` converges every node and NodeOvercommitConfig once; returns a summary dict."""

    name = "overcommit"

    def __init__(self, client, config=None, clock=utc_now):
        self.client = client
        self.config = dict(DEFAULTS, **(config or {}))
        self.clock = clock
        self.informers = {}
        self.last_summary = {}

    # -- inputs ---------------------------------------------------------------------------------
    def snapshot(self):
        """configs, nodes, cnrs, pods: from informer caches when synced, else one LIST each."""
        if self.informers and all(informer.synced.is_set() for informer in self.informers.values()):
            return {kind: informer.items() for kind, informer in self.informers.items()}
        return {"configs": self.client.list(overcommit.NOC_API_VERSION, overcommit.NOC_KIND),
                "nodes": self.client.list("v1", "Node"),
                "cnrs": self._list_cnrs(),
                "pods": self.client.list("v1", "Pod")}

    def _list_cnrs(self):
        try:
            return self.client.list(CNR_API_VERSION, CNR_KIND)
        except KubeError as exc:
            if exc.status == 404:      # the CNR CRD is not installed: no realtime ratios, no guaranteed cpus
                return []
            raise

    def build_informers(self, api_client, on_change, resync_seconds=None):
        """Informers for the four inputs; ``on_change(kind, event_type, obj)`` is called on every event.

        The caller starts them (``informer.start(stop)``) and triggers ``reconcile_all`` from ``on_change``.
        """
        from kubernetes import client  # pylint: disable=import-outside-toplevel
        from .informer import Informer  # pylint: disable=import-outside-toplevel
        core = client.CoreV1Api(api_client)
        custom = client.CustomObjectsApi(api_client)
        resync = resync_seconds or self.config["resync_seconds"]
        sources = {
            "configs": functools.partial(custom.list_cluster_custom_object, "overcommit.katalyst.kubewharf.io", "v1alpha1",
                                         "nodeovercommitconfigs"),
            "nodes": core.list_node,
            "cnrs": functools.partial(custom.list_cluster_custom_object, "node.katalyst.kubewharf.io", "v1alpha1", "customnoderesources"),
            "pods": core.list_pod_for_all_namespaces,
        }
        self.informers = {kind: Informer(func, functools.partial(on_change, kind), resync_seconds=resync, name="overcommit-" + kind)
                          for kind, func in sources.items()}
        return self.informers

    @staticmethod
    def relevant(kind, obj):
        """Whether an event can change the plan: pods matter only once bound (their requests feed the guard)."""
        if kind == "pods":
            return bool((obj.get("spec") or {}).get("nodeName"))
        return True

    # -- the pass ---------------------------------------------------------------------------------
    def reconcile_all(self, snapshot=None):
        snapshot = snapshot or self.snapshot()
        plan = overcommit.plan_node_overcommit(snapshot["configs"], snapshot["nodes"], snapshot["cnrs"], snapshot["pods"],
                                               now=self.clock())
        dry_run = bool(self.config["dry_run"])
        summary = {"nodes": len(snapshot["nodes"]), "configs": len(snapshot["configs"]), "nodes_patched": 0, "nodes_gone": 0,
                   "configs_updated": 0, "events": 0, "refused": sorted(plan.refused), "errors": []}
        for node_name in sorted(plan.node_patches):
            patch = plan.node_patches[node_name]
            try:
                self.client.patch("v1", "Node", node_name, {"metadata": {"annotations": patch}}, patch_type="merge", dry_run=dry_run)
                summary["nodes_patched"] += 1
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
                self.client.patch(overcommit.NOC_API_VERSION, overcommit.NOC_KIND, config_name,
                                  {"status": plan.config_status[config_name]}, patch_type="merge", subresource="status", dry_run=dry_run)
                summary["configs_updated"] += 1
            except KubeError as exc:
                if exc.status != 404:
                    summary["errors"].append(str(exc))
        if not dry_run:
            for event in plan.events:
                if self.client.emit_event(event["object"], event["reason"], event["message"], event["type"], "katalyst-controller"):
                    summary["events"] += 1
                LOG.log(logging.WARNING if event["type"] == "Warning" else logging.INFO, "%s %s: %s",
                        event["object"]["metadata"].get("name"), event["reason"], event["message"])
        self.last_summary = summary
        if summary["errors"]:
            raise KubeError("overcommit reconcile: %d write(s) failed: %s" % (len(summary["errors"]), "; ".join(summary["errors"][:3])))
        return summary
