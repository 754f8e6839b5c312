# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""The ``tide`` reconciler of katalyst-controller (katalyst-cluster-spec.md §1.3-§1.8).

Every pass, for every TideNodePool (by name): add the finalizer (and go on with the object the API
returned: Katalyst kept the stale one and its status update conflicted), plan with
``tide.plan_tide_pool`` (the same engine the modules use), write the node edits (only what differs: one merge
patch per node from the cached node, its resourceVersion as precondition, no read; on a conflict read again,
edit, patch, retried), emit an Event on every flip naming the pods that caused it, write status with the
``Ready`` condition (``InvalidReserve``/``InvalidSpec`` instead of a crash loop), and on deletion clean every node of the pool before removing the finalizer.

Options (``tide:`` in the controller configuration): ``period_seconds`` (10, Katalyst's tidePeriod).
"""

from __future__ import annotations

import logging
import time

from .. import tide
from ..kube import KubeError
from .service import set_gauge_series

try:
    import prometheus_client
except ImportError:  # pragma: no cover
    prometheus_client = None

LOG = logging.getLogger("katalyst.controller.tide")
COMPONENT = "katalyst-controller"
OVERLAY_SECONDS = 30.0
# the roles katalyst_tide_pool_nodes always shows (0 when no node has them); the others only when a node has them
MAIN_ROLES = (tide.ROLE_ONLINE_RESERVE, tide.ROLE_OFFLINE_RESERVE, tide.ROLE_TIDE_ONLINE, tide.ROLE_TIDE_OFFLINE)


def _name(obj):
    return obj["metadata"]["name"]


def _resource_version(obj):
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


def node_fingerprint(node):
    """What tide decisions read from a node (heartbeats change none of it)."""
    meta, spec = node.get("metadata") or {}, node.get("spec") or {}
    return (tuple(sorted((meta.get("labels") or {}).items())), repr(spec.get("taints")), spec.get("unschedulable"),
            repr((node.get("status") or {}).get("allocatable")), (meta.get("annotations") or {}).get(tide.ANNOTATION_LAST_FLIP))


def pod_fingerprint(pod):
    """What a tide pass reads of a pod, for the event filter. Read directly, not through podview: it runs on every pod
    event of the cluster and reads no Katalyst annotation (a view costs 11.3 us here, this 0.6 us)."""
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    scheduled = [(c.get("status"), c.get("reason")) for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"]
    return (spec.get("nodeName"), status.get("phase"), tuple(scheduled), ((pod.get("metadata") or {}).get("labels") or {}).get(tide.LABEL_POD_TYPE))


# -- writes shared by the reconciler and the modules ----------------------------------------------
def patch_from_copy(kube, api_version, kind, name, held, make_patch, subresource=None, dry_run=False):
    """Merge-patch an object from the copy we hold (the informer's, or what the API last returned) without reading it
    first: ``make_patch(obj)`` gives the merge patch (None: nothing to change), sent with ``obj``'s resourceVersion as a
    precondition, so an object changed since answers 409 as a read-modify-replace would. On 409 the object is read
    and the patch made anew (bounded, as KubeClient.mutate); ``held`` None (or without a resourceVersion) is read first.

    Returns ``(written, obj)``: the object after the write, or the current one when nothing changed; obj is None
    when the object is gone (404)."""
    obj = held
    for _attempt in range(getattr(kube, "conflict_retries", 10) + 1):
        if obj is None or not (obj.get("metadata") or {}).get("resourceVersion"):
            obj = kube.get(api_version, kind, name)
            if obj is None:
                return False, None
        patch = make_patch(obj)
        if patch is None:
            return False, obj
        patch = dict(patch, metadata=dict(patch.get("metadata") or {}, resourceVersion=obj["metadata"]["resourceVersion"]))
        try:
            return True, kube.patch(api_version, kind, name, patch, patch_type="merge", subresource=subresource, dry_run=dry_run)
        except KubeError as exc:
            if exc.status == 404:
                return False, None
            if exc.status != 409:
                raise
            obj = None
    raise KubeError("patch %s %s: still conflicting after %d attempts" % (kind, name, getattr(kube, "conflict_retries", 10)), 409)


def _finalizers_patch(obj, add):
    finalizers = list((obj.get("metadata") or {}).get("finalizers") or [])
    if (tide.FINALIZER in finalizers) == add:
        return None
    # a merge patch replaces the list whole; the resourceVersion precondition keeps a finalizer added meanwhile
    finalizers = finalizers + [tide.FINALIZER] if add else [f for f in finalizers if f != tide.FINALIZER]
    return {"metadata": {"finalizers": finalizers or None}}


def add_finalizer(kube, name, pool=None, dry_run=False):
    """Add the finalizer; returns the pool as the API returned it (None when it is gone). ``pool``: the copy held."""
    return patch_from_copy(kube, tide.API_VERSION, tide.KIND, name, pool, lambda obj: _finalizers_patch(obj, True), dry_run=dry_run)[1]


def remove_finalizer(kube, name, pool=None, dry_run=False):
    return patch_from_copy(kube, tide.API_VERSION, tide.KIND, name, pool, lambda obj: _finalizers_patch(obj, False), dry_run=dry_run)[1]


def write_status(kube, name, status, pool=None, dry_run=False):
    """Make the pool's status ``status`` (keys it no longer has are removed); returns the pool after."""
    def status_patch(obj):
        changes = merge_patch(obj.get("status"), status)
        return {"status": changes} if changes else None
    return patch_from_copy(kube, tide.API_VERSION, tide.KIND, name, pool, status_patch, subresource="status", dry_run=dry_run)[1]


def merge_patch(before, after):
    """The JSON merge patch (RFC 7386) that turns ``before`` into ``after``: maps recursively, removed keys as None,
    anything else whole; {} when nothing differs."""
    if not isinstance(before, dict) or not isinstance(after, dict):
        return after
    patch = {key: (merge_patch(before[key], value) if key in before else value) for key, value in after.items() if before.get(key) != value}
    patch.update({key: None for key in before if key not in after})
    return patch


def node_edit_patch(node, edit):
    """The merge patch that makes ``node`` what ``tide.apply_node_edit(node, edit)`` makes of it: the changed labels and
    annotations (removed ones as None), ``spec.taints`` whole when they change. None when nothing changes."""
    after = tide.apply_node_edit(node, edit)
    meta, after_meta = node.get("metadata") or {}, after.get("metadata") or {}
    patch_meta = {}
    for field in ("labels", "annotations"):
        changed = merge_patch(meta.get(field) or {}, after_meta.get(field) or {})
        if changed:
            patch_meta[field] = changed
    patch = {}
    taints = (after.get("spec") or {}).get("taints") or None
    if taints != ((node.get("spec") or {}).get("taints") or None):
        patch["spec"] = {"taints": taints}
    if not patch_meta and not patch:
        return None
    if patch_meta:
        patch["metadata"] = patch_meta
    return patch


def write_node_changes(kube, result, dry_run=False, nodes=None):
    """Apply a TidePlan's node edits, one merge patch per node that differs (a node that already matches is not
    written), each from the node in ``nodes`` (name -> node, e.g. the informer cache the plan was made from) without
    reading it (patch_from_copy). Returns [(change, node after)] for the nodes written."""
    written = []
    nodes = nodes or {}
    for change in result.plan:
        edit, name = change.data["edit"], change.data["node"]
        wrote, after = patch_from_copy(kube, "v1", "Node", name, nodes.get(name), lambda node, edit=edit: node_edit_patch(node, edit),
                                       dry_run=dry_run)
        if wrote:
            written.append((change, after))
    return written


def flip_event(kube, pool, flip):
    """The Event every flip gets: which node, which way, and the pods that caused it."""
    reason = "TideNodeOnline" if flip["direction"] == "online" else "TideNodeOffline"
    message = "node %s flipped %s: %s" % (flip["node"], flip["direction"], flip["reason"])
    kube.emit_event(pool, reason, message, "Normal", COMPONENT)
    return message


class TideReconciler:
    name = "tide"
    informers = ("nodes", "pods", "tidenodepools")

    def __init__(self, context):
        self.context = context
        self.fingerprints = {}
        self.written_nodes = {}      # name -> (object we wrote, monotonic time): our writes before the watch shows them
        self.reported = {}           # pool -> last problem reported as an Event
        self.last_plans = {}         # pool -> the last TidePlan (for logs and tests)
        self.metrics = {}
        if prometheus_client is not None and context.registry is not None:
            self.metrics["flips"] = prometheus_client.Counter(
                "katalyst_tide_flips_total", "Tide nodes flipped", ["pool", "direction"], registry=context.registry)
            self.metrics["writes"] = prometheus_client.Counter(
                "katalyst_tide_api_writes_total", "API writes by the tide reconciler", ["kind"], registry=context.registry)
            self.metrics["plan_seconds"] = prometheus_client.Histogram(
                "katalyst_tide_plan_seconds", "Time to plan one pool", registry=context.registry,
                buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5))
            self.metrics["pool_nodes"] = prometheus_client.Gauge(
                "katalyst_tide_pool_nodes", "Nodes of a tide pool by role after the last pass (online-reserve, offline-reserve, tide-online, "
                "tide-offline; tide, unknown, ignored when any)", ["pool", "role"], registry=context.registry)
        self.pool_series = set()

    @property
    def period_seconds(self):
        return float(self.context.options.get("period_seconds", 10))

    # -- event filter --------------------------------------------------------------------------
    def wants(self, informer, event_type, obj):
        if informer == "tidenodepools":
            return True
        key = (informer, (obj.get("metadata") or {}).get("namespace"), (obj.get("metadata") or {}).get("name"))
        if event_type == "DELETED":
            self.fingerprints.pop(key, None)
            return True
        fingerprint = node_fingerprint(obj) if informer == "nodes" else pod_fingerprint(obj)
        if self.fingerprints.get(key) == fingerprint:
            return False
        self.fingerprints[key] = fingerprint
        return True

    # -- the pass ------------------------------------------------------------------------------
    def current_nodes(self):
        """The node cache, with our own writes the watch has not delivered yet."""
        nodes = {_name(n): n for n in self.context.informers["nodes"].items()}
        now = time.monotonic()
        for name, (written, stamp) in list(self.written_nodes.items()):
            cached = nodes.get(name)
            if cached is None or now - stamp > OVERLAY_SECONDS or _resource_version(cached) >= _resource_version(written):
                del self.written_nodes[name]
            else:
                nodes[name] = written
        return nodes

    def reconcile_all(self):
        nodes = self.current_nodes()
        pods = self.context.informers["pods"].items()
        failures = []
        for pool in sorted(self.context.informers["tidenodepools"].items(), key=_name):
            try:
                self.reconcile_pool(pool, nodes, pods)
            except Exception as exc:  # pylint: disable=broad-except
                LOG.exception("tide pool %s: %s", _name(pool), exc, extra={"pool": _name(pool)})
                failures.append("%s: %s" % (_name(pool), exc))
        if self.metrics:
            self.export_roles(self.context.informers["tidenodepools"].items())
        if failures:
            raise RuntimeError("tide: %d pool(s) failed: %s" % (len(failures), "; ".join(failures)))

    def export_roles(self, pools):
        """katalyst_tide_pool_nodes from each pool's last plan (a pool that failed this pass keeps its last counts; a pool
        being deleted or gone has no series)."""
        counts = {}
        for pool in pools:
            name = _name(pool)
            result = self.last_plans.get(name)
            if result is None or result.deleting:
                continue
            for role in MAIN_ROLES:
                counts[(name, role)] = 0
            for role in result.roles.values():
                counts[(name, role)] = counts.get((name, role), 0) + 1
        self.pool_series = set_gauge_series(self.metrics["pool_nodes"], counts, self.pool_series)

    def _count(self, kind):
        if self.metrics:
            self.metrics["writes"].labels(kind).inc()

    def reconcile_pool(self, pool, nodes, pods):
        """One pool; ``nodes`` (name -> node) is updated with what we write, so later pools see it."""
        kube = self.context.kube
        name = _name(pool)
        meta = pool["metadata"]
        if not meta.get("deletionTimestamp") and tide.FINALIZER not in (meta.get("finalizers") or []):
            pool = add_finalizer(kube, name, pool)    # and go on with the object the API returned
            if pool is None:
                return None
            self._count("pool")
        started = time.monotonic()
        result = tide.plan_tide_pool(pool, list(nodes.values()), pods, now=self.context.now())
        if self.metrics:
            self.metrics["plan_seconds"].observe(time.monotonic() - started)
        self.last_plans[name] = result
        for change, after in write_node_changes(kube, result, nodes=nodes):
            node_name = change.data["node"]
            self._count("node")
            nodes[node_name] = after
            self.written_nodes[node_name] = (after, time.monotonic())
            LOG.info("tide pool %s: node %s %s -> %s (%s)", name, node_name, change.data["role_before"], change.data["role_after"],
                     change.reason, extra={"pool": name, "node": node_name})
        if result.flip is not None:
            message = flip_event(kube, pool, result.flip)
            if self.metrics:
                self.metrics["flips"].labels(name, result.flip["direction"]).inc()
            LOG.info("tide pool %s: %s", name, message, extra={"pool": name, "node": result.flip["node"], "pods": result.flip["pods"]})
        if result.deleting:
            if result.remove_finalizer:
                remove_finalizer(kube, name)      # from the live pool: the last write before it goes, so no stale copy
                self._count("pool")
                LOG.info("tide pool %s deleted: nodes cleaned, finalizer removed", name, extra={"pool": name})
            return result
        if result.error and self.reported.get(name) != result.error:
            kube.emit_event(pool, result.status["conditions"][0]["reason"], result.error, "Warning", COMPONENT)
            LOG.warning("tide pool %s: %s", name, result.error, extra={"pool": name})
        self.reported[name] = result.error
        if result.status_changed:
            write_status(kube, name, result.status, pool)
            self._count("status")
        return result
