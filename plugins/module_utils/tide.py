# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""Tidal colocation (``TideNodePool``): which node of a pool is reserve or tide, and which tide node flips.

Pure engine (katalyst-cluster-spec.md §1): Kubernetes objects as dicts in, a plan out; the clock is a
parameter. Both drivers use it: the tide reconciler of ``katalyst-controller`` and the
``tide_node_pool`` / ``tide_plan`` modules.

* ``reserve_counts(reserve, node_count)`` -> ``(online, offline)``: §1.4 step 4 (§0.2 rounding).
* ``PoolConfig(pool)``: the pool's labels, taints and selectors with Katalyst's defaults (§1.2).
* ``classify_nodes`` and the reserve assignment of §1.4 steps 5-8.
* ``decide_flip``: §1.5, the load signal is pod requests; the fit check is ``fit.Snapshot``.
* ``plan_tide_pool(pool, nodes, pods, now)``: all of it -> ``TidePlan`` (node changes, status,
  conditions, the flip and why). ``plan_tide_pool_cleanup`` is §1.8.

Node changes carry an *edit* (labels to set/delete, annotations, the managed evict taint) that
``apply_node_edit`` applies to any version of the node, so a driver can re-apply it after a conflict.

Katalyst bugs fixed here (docs/katalyst-differences.md, "Tide"): a node going offline that never had
an evict taint gets the *online*-eviction taint (Katalyst appends the offline key); a node never ends
up with two evict taints (Katalyst rewrites both to the same key, which the API rejects); a taint
option without a valid effect, equal evict keys or a malformed reserve is refused with a reason
instead of failing every pass. Copied on purpose: reserve nodes turned into tide nodes in a pass stay
listed as reserve in that pass's status (§6 #4); status lists are sorted descending; at least one
online tide node is kept and at most one node flips per pass (§6 #5).
"""

from __future__ import annotations

import datetime
import json
import math
import re

from .fit import Snapshot, is_active, tolerates
from .reconcile import Plan

GROUP = "tide.katalyst.kubewharf.io"
API_VERSION = GROUP + "/v1alpha1"
KIND = "TideNodePool"
PLURAL = "tidenodepools"

LABEL_NODE_POOL = GROUP + "/node-pool"
LABEL_NODE_TYPE = GROUP + "/node-type"
LABEL_TIDE = GROUP + "/tide"
LABEL_RESERVE = GROUP + "/reserve"
LABEL_POD_TYPE = GROUP + "/pod-type"
TAINT_EVICT_ONLINE_POD = GROUP + "/online-not-used"
TAINT_EVICT_OFFLINE_POD = GROUP + "/offline-not-used"
FINALIZER = GROUP + "/finalizer"
# katalyst.colocation's own: when the controller last flipped the node (for spec.cooldownSeconds).
ANNOTATION_LAST_FLIP = "katalyst.colocation/tide-last-flip"

DEFAULT_ONLINE_LABEL = {"key": LABEL_NODE_TYPE, "value": "online"}
DEFAULT_OFFLINE_LABEL = {"key": LABEL_NODE_TYPE, "value": "offline"}
DEFAULT_TIDE_LABEL = {"key": LABEL_TIDE, "value": "true"}
DEFAULT_EVICT_ONLINE_POD_TAINT = {"key": TAINT_EVICT_ONLINE_POD, "value": "true", "effect": "NoExecute"}
DEFAULT_EVICT_OFFLINE_POD_TAINT = {"key": TAINT_EVICT_OFFLINE_POD, "value": "true", "effect": "NoExecute"}
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")

ROLE_ONLINE_RESERVE = "online-reserve"
ROLE_OFFLINE_RESERVE = "offline-reserve"
ROLE_TIDE_ONLINE = "tide-online"
ROLE_TIDE_OFFLINE = "tide-offline"
ROLE_TIDE = "tide"          # tide label but neither the online nor the offline label (never flipped)
ROLE_UNKNOWN = "unknown"    # selected, no node-pool label yet
ROLE_IGNORED = "ignored"    # another pool's node, or this pool's without reserve or tide labels

_ATOI = re.compile(r"^[+-]?[0-9]+$")


def _now_text(now):
    return now.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text):
    try:
        return datetime.datetime.strptime(str(text), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return None


# -- §0.2 / §1.4 step 4 ---------------------------------------------------------------------------
def scaled_value(value, total, round_up, field="value"):
    """``intstr.GetScaledValueFromIntOrPercent``: an int as is, ``"N%"`` of ``total`` rounded up or down.

    ValueError (with ``field`` in the message) when the value is missing, not an int or a percentage
    string, or negative (Katalyst would take a negative count and turn every reserve node into a tide node).
    """
    if value is None:
        raise ValueError(f"{field} is missing: set a node count such as 2 or a percentage such as \"10%\"")
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{field} must be a node count or a percentage string such as \"10%\", got {value!r}")
    if isinstance(value, int):
        number, percent = value, False
    else:
        if not value.endswith("%"):
            raise ValueError(f"{field}: invalid value for IntOrString: string {value!r} is not a percentage "
                             f"(write a number without quotes for a node count, or \"N%\")")
        if not _ATOI.match(value[:-1]):
            raise ValueError(f"{field}: invalid percentage {value!r} (expected an integer followed by %)")
        number, percent = int(value[:-1]), True
    if number < 0:
        raise ValueError(f"{field} must not be negative, got {value!r}")
    if not percent:
        return number
    scaled = float(number) * float(total) / 100
    return int(math.ceil(scaled)) if round_up else int(math.floor(scaled))


def reserve_counts(reserve, node_count):
    """(online, offline) reserve node counts of a pool of ``node_count`` nodes.

    ``reserve`` is the pool's ``spec.nodeConfigs.reserve`` dict: ``online`` rounds up, ``offline``
    rounds down; each is an int or a percentage string (``"30%"`` of 4 nodes -> (2, 1)). ValueError
    with a clear message when either is missing or malformed.
    """
    if reserve is None:
        reserve = {}
    if not isinstance(reserve, dict):
        raise ValueError(f"spec.nodeConfigs.reserve must be an object with online and offline, got {reserve!r}")
    online = scaled_value(reserve.get("online"), node_count, True, "spec.nodeConfigs.reserve.online")
    offline = scaled_value(reserve.get("offline"), node_count, False, "spec.nodeConfigs.reserve.offline")
    return online, offline


# -- §1.2 the pool's options ------------------------------------------------------------------------
class PoolConfig:
    """A TideNodePool's options with Katalyst's defaults; ``problems`` lists what is invalid."""

    def __init__(self, pool):
        meta = pool.get("metadata") or {}
        spec = pool.get("spec") or {}
        node_configs = spec.get("nodeConfigs") or {}
        watermark = (spec.get("evictStrategy") or {}).get("watermark") or {}
        self.name = meta.get("name") or ""
        self.problems = []
        self.node_selector = node_configs.get("nodeSelector") or {}
        if not isinstance(self.node_selector, dict):
            self.problems.append("spec.nodeConfigs.nodeSelector must be a map of labels")
            self.node_selector = {}
        self.online_label = self._label(node_configs.get("onlineLabel"), DEFAULT_ONLINE_LABEL, "spec.nodeConfigs.onlineLabel")
        self.offline_label = self._label(node_configs.get("offlineLabel"), DEFAULT_OFFLINE_LABEL, "spec.nodeConfigs.offlineLabel")
        self.tide_label = self._label(node_configs.get("tideLabel"), DEFAULT_TIDE_LABEL, "spec.nodeConfigs.tideLabel")
        self.evict_online_taint = self._taint(watermark.get("evictOnlinePodTaint"), DEFAULT_EVICT_ONLINE_POD_TAINT,
                                              "spec.evictStrategy.watermark.evictOnlinePodTaint")
        self.evict_offline_taint = self._taint(watermark.get("evictOfflinePodTaint"), DEFAULT_EVICT_OFFLINE_POD_TAINT,
                                               "spec.evictStrategy.watermark.evictOfflinePodTaint")
        if self.evict_online_taint["key"] == self.evict_offline_taint["key"]:
            self.problems.append("evictOnlinePodTaint and evictOfflinePodTaint have the same key %r: online and offline "
                                 "nodes could not be told apart" % self.evict_online_taint["key"])
        if self.online_label == self.offline_label:
            self.problems.append("onlineLabel and offlineLabel are the same label %s=%s"
                                 % (self.online_label["key"], self.online_label["value"]))
        self.reserve = node_configs.get("reserve")
        self.cooldown_seconds = spec.get("cooldownSeconds") or 0
        if isinstance(self.cooldown_seconds, bool) or not isinstance(self.cooldown_seconds, int) or self.cooldown_seconds < 0:
            self.problems.append("spec.cooldownSeconds must be a non-negative integer, got %r" % (spec.get("cooldownSeconds"),))
            self.cooldown_seconds = 0
        self.evict_keys = (self.evict_online_taint["key"], self.evict_offline_taint["key"])
        self.managed_label_keys = tuple(sorted({LABEL_NODE_POOL, LABEL_NODE_TYPE, LABEL_RESERVE, self.online_label["key"],
                                                self.offline_label["key"], self.tide_label["key"]}))

    def _label(self, option, default, field):
        if option is None:
            return dict(default)
        if not isinstance(option, dict) or not option.get("key") or not isinstance(option.get("value", ""), str):
            self.problems.append("%s needs a key and a string value, got %r" % (field, option))
            return dict(default)
        return {"key": option["key"], "value": option.get("value") or ""}

    def _taint(self, option, default, field):
        if option is None:
            return dict(default)
        if not isinstance(option, dict) or not option.get("key"):
            self.problems.append("%s needs a key, got %r" % (field, option))
            return dict(default)
        taint = {"key": option["key"], "value": option.get("value") or "", "effect": option.get("effect") or ""}
        if taint["effect"] not in TAINT_EFFECTS:
            self.problems.append("%s.effect must be one of %s, got %r (the API server rejects such a node taint)"
                                 % (field, ", ".join(TAINT_EFFECTS), option.get("effect")))
        return taint

    # -- the derived selectors of nodepool_wrapper.go (label equalities, AND-ed) ------------------
    def selects(self, labels):
        return all(labels.get(key) == value for key, value in self.node_selector.items())

    def _is(self, labels, label):
        return labels.get(label["key"]) == label["value"]

    def in_pool(self, labels):
        return labels.get(LABEL_NODE_POOL) == self.name

    def is_online_reserve(self, labels):
        return self._is(labels, self.online_label) and self.in_pool(labels) and labels.get(LABEL_RESERVE) == "true"

    def is_offline_reserve(self, labels):
        return self._is(labels, self.offline_label) and self.in_pool(labels) and labels.get(LABEL_RESERVE) == "true"

    def is_tide(self, labels):
        return self.in_pool(labels) and self._is(labels, self.tide_label)

    def is_online_tide(self, labels):
        return self.is_tide(labels) and self._is(labels, self.online_label)

    def is_offline_tide(self, labels):
        return self.is_tide(labels) and self._is(labels, self.offline_label)

    def role(self, labels):
        """§1.4 step 5 (first rule wins), tide nodes split by their online/offline label."""
        if self.is_online_reserve(labels):
            return ROLE_ONLINE_RESERVE
        if self.is_offline_reserve(labels):
            return ROLE_OFFLINE_RESERVE
        if self.is_tide(labels):
            if self.is_online_tide(labels):
                return ROLE_TIDE_ONLINE
            if self.is_offline_tide(labels):
                return ROLE_TIDE_OFFLINE
            return ROLE_TIDE
        if LABEL_NODE_POOL not in labels:
            return ROLE_UNKNOWN
        return ROLE_IGNORED

    # -- label mutators (§1.2) and flip functions (§1.6, fixed) ------------------------------------
    def to_online_reserve(self):
        return {LABEL_NODE_POOL: self.name, self.online_label["key"]: self.online_label["value"], LABEL_RESERVE: "true",
                self.tide_label["key"]: None}

    def to_offline_reserve(self):
        return {LABEL_NODE_POOL: self.name, self.offline_label["key"]: self.offline_label["value"], LABEL_RESERVE: "true",
                self.tide_label["key"]: None}

    def to_tide(self):
        return {LABEL_NODE_POOL: self.name, LABEL_RESERVE: "false", self.tide_label["key"]: self.tide_label["value"]}

    def to_tide_online(self):
        return {LABEL_RESERVE: "false", LABEL_NODE_POOL: self.name, self.online_label["key"]: self.online_label["value"],
                self.tide_label["key"]: self.tide_label["value"]}

    def flip_edit(self, direction, now=None):
        """``changeNodeToOnline`` / ``changeNodeToOffline`` as an edit.

        Online: the evict-offline-pods taint replaces any evict taint; offline: the evict-online-pods
        taint does. Exactly one evict taint remains (Katalyst could leave two with the same key) and a
        node that had none gets the right one (Katalyst appended the offline key when going offline).
        """
        if direction == "online":
            labels = {self.offline_label["key"]: None}
            labels[self.online_label["key"]] = self.online_label["value"]
            taint = self.evict_offline_taint
        else:
            labels = {self.online_label["key"]: None}
            labels[self.offline_label["key"]] = self.offline_label["value"]
            taint = self.evict_online_taint
        annotations = {ANNOTATION_LAST_FLIP: _now_text(now)} if now is not None else {}
        return node_edit(labels, annotations, {"remove_keys": list(self.evict_keys), "put": dict(taint)})

    def cleanup_edit(self):
        """§1.8 ``cleanNode``: every managed label, the evict taints and our flip annotation go."""
        labels = {key: None for key in (self.online_label["key"], self.offline_label["key"], self.tide_label["key"],
                                        LABEL_RESERVE, LABEL_NODE_TYPE, LABEL_NODE_POOL)}
        return node_edit(labels, {ANNOTATION_LAST_FLIP: None}, {"remove_keys": list(self.evict_keys), "put": None})

    def managed_view(self, node):
        """The part of a node this pool manages: its labels, evict taints and flip annotation."""
        meta = node.get("metadata") or {}
        labels = meta.get("labels") or {}
        annotations = meta.get("annotations") or {}
        view = {"labels": {key: labels[key] for key in self.managed_label_keys if key in labels},
                "taints": [{"key": t.get("key"), "value": t.get("value", ""), "effect": t.get("effect")}
                           for t in (node.get("spec") or {}).get("taints") or [] if t.get("key") in self.evict_keys]}
        if ANNOTATION_LAST_FLIP in annotations:
            view["annotations"] = {ANNOTATION_LAST_FLIP: annotations[ANNOTATION_LAST_FLIP]}
        return view


# -- node edits -------------------------------------------------------------------------------------
def node_edit(labels=None, annotations=None, taints=None):
    """``labels``/``annotations``: key -> value, or None to delete; ``taints``: None (leave them) or
    ``{"remove_keys": [...], "put": taint-or-None}`` (drop every taint with one of those keys, put
    ``put`` where the first was, or at the end)."""
    return {"labels": dict(labels or {}), "annotations": dict(annotations or {}), "taints": taints}


def merge_edits(first, second):
    """``first`` then ``second`` as one edit (the later value of a key wins)."""
    labels = dict(first["labels"])
    labels.update(second["labels"])
    annotations = dict(first["annotations"])
    annotations.update(second["annotations"])
    taints = second["taints"] if second["taints"] is not None else first["taints"]
    return node_edit(labels, annotations, taints)


def _edited_map(current, updates):
    result = dict(current or {})
    for key, value in updates.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = value
    return result


def _same_taint(one, other):
    return (one.get("key"), one.get("value") or "", one.get("effect")) == (other.get("key"), other.get("value") or "", other.get("effect"))


def apply_node_edit(node, edit):
    """A new node dict with ``edit`` applied (the input is not modified; untouched parts are shared)."""
    new = dict(node)
    meta = dict(node.get("metadata") or {})
    new["metadata"] = meta
    for field in ("labels", "annotations"):
        if edit[field]:
            updated = _edited_map(meta.get(field), edit[field])
            if updated or field in meta:
                meta[field] = updated
    taint_edit = edit.get("taints")
    if taint_edit is not None:
        spec = dict(node.get("spec") or {})
        remove, put = set(taint_edit.get("remove_keys") or ()), taint_edit.get("put")
        taints, placed = [], False
        for taint in spec.get("taints") or []:
            if taint.get("key") not in remove:
                taints.append(taint)
                continue
            if put is not None and not placed:
                taints.append(taint if _same_taint(taint, put) else dict(put))
                placed = True
        if put is not None and not placed:
            taints.append(dict(put))
        if taints:
            spec["taints"] = taints
        else:
            spec.pop("taints", None)
        new["spec"] = spec
    return new


def _name(obj):
    return (obj.get("metadata") or {}).get("name") or ""


def _labels(obj):
    return (obj.get("metadata") or {}).get("labels") or {}


def pod_ref(pod):
    meta = pod.get("metadata") or {}
    return "%s/%s" % (meta.get("namespace") or "default", meta.get("name"))


# -- §1.4 steps 5-8 -----------------------------------------------------------------------------
def pool_nodes(config, nodes):
    """The nodes the pool's nodeSelector selects (empty selector: every node), sorted by name."""
    return sorted((n for n in nodes if config.selects(_labels(n))), key=_name)


def classify_nodes(config, nodes):
    """§1.4 step 5 over ``nodes`` (already selected), by name: role -> [node names]."""
    groups = {ROLE_ONLINE_RESERVE: [], ROLE_OFFLINE_RESERVE: [], "tide": [], ROLE_UNKNOWN: [], ROLE_IGNORED: []}
    for node in sorted(nodes, key=_name):
        role = config.role(_labels(node))
        if role in (ROLE_TIDE_ONLINE, ROLE_TIDE_OFFLINE, ROLE_TIDE):
            role = "tide"
        groups[role].append(_name(node))
    return groups


def assign_reserves(config, groups, online_expect, offline_expect):
    """§1.4 steps 6-8: ({node: (edit, reason)}, status lists) from the classification."""
    edits = {}
    reserve_online = list(groups[ROLE_ONLINE_RESERVE])
    reserve_offline = list(groups[ROLE_OFFLINE_RESERVE])
    tide = list(groups["tide"])
    for names, expect, what in ((reserve_online, online_expect, "online"), (reserve_offline, offline_expect, "offline")):
        # the converted nodes stay in the status lists of this pass (Katalyst §6 #4)
        for name in names[:max(len(names) - expect, 0)]:
            edits[name] = (node_edit(config.to_tide()), "%s reserve above reserve.%s = %d: becomes a tide node" % (what, what, expect))
    online_count = min(len(reserve_online), online_expect)
    offline_count = min(len(reserve_offline), offline_expect)
    for name in groups[ROLE_UNKNOWN]:
        if online_count < online_expect:
            edits[name] = (node_edit(config.to_online_reserve()), "new node: online reserve (%d of %d)" % (online_count + 1, online_expect))
            reserve_online.append(name)
            online_count += 1
        elif offline_count < offline_expect:
            edits[name] = (node_edit(config.to_offline_reserve()),
                           "new node: offline reserve (%d of %d)" % (offline_count + 1, offline_expect))
            reserve_offline.append(name)
            offline_count += 1
        else:
            edits[name] = (node_edit(config.to_tide_online()), "new node: reserves are full, becomes an online tide node")
            tide.append(name)
    lists = {"online": sorted(reserve_online, reverse=True), "offline": sorted(reserve_offline, reverse=True),
             "tide": sorted(tide, reverse=True)}
    return edits, lists


# -- §1.5 the flip decision -------------------------------------------------------------------------
def is_pending_online_pod(pod):
    """§1.5 step 2: unbound, not finished, PodScheduled=False/Unschedulable, labelled as an online pod."""
    if (pod.get("spec") or {}).get("nodeName") or not is_active(pod):
        return False
    if _labels(pod).get(LABEL_POD_TYPE) != "online":
        return False
    return any(c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable"
               for c in (pod.get("status") or {}).get("conditions") or [])


def is_online_pod(pod):
    return _labels(pod).get(LABEL_POD_TYPE) == "online"


def _fit_class(snapshot, pod):
    """Pods with the same key get the same answer from a fit check on the same snapshot."""
    spec = pod.get("spec") or {}
    return json.dumps([sorted(snapshot.requests(pod).items()), spec.get("tolerations"), spec.get("nodeSelector"),
                       (spec.get("affinity") or {}).get("nodeAffinity")], sort_keys=True, default=str)


def usage_key(snapshot, name):
    """Katalyst's sort key: memory bytes + cpu millis + pod count of the requests (then the name)."""
    requested = snapshot.requested[name]
    return (requested.get("memory", 0) + requested.get("cpu", 0) + snapshot.pod_count[name], name)


def usage_text(snapshot, name):
    requested = snapshot.requested[name]
    return "cpu %dm, memory %d bytes, %d pods requested" % (requested.get("cpu", 0), requested.get("memory", 0), snapshot.pod_count[name])


def in_cooldown(config, node, now):
    """True while ``spec.cooldownSeconds`` have not passed since the node's last flip."""
    if not config.cooldown_seconds or now is None:
        return False
    stamp = ((node.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_LAST_FLIP)
    flipped = _parse_time(stamp) if stamp else None
    return flipped is not None and (now - flipped).total_seconds() < config.cooldown_seconds


def _flip_in_snapshot(snapshot, config, name, direction, now):
    """Flip ``name`` in the snapshot; pods that do not tolerate the new NoExecute taint leave it.

    Returns an undo callable. (Katalyst removes and re-adds the node, which drops all its pods even
    when it rolls the flip back; we keep the pods that stay.)
    """
    node = snapshot.node(name)
    edit = config.flip_edit(direction, now)
    taint = edit["taints"]["put"]
    evicted = []
    if taint.get("effect") == "NoExecute":
        for pod in list(snapshot.pods_by_node[name].values()):
            if not any(tolerates(t, taint) for t in (pod.get("spec") or {}).get("tolerations") or []):
                evicted.append(pod)
    snapshot.replace_node(apply_node_edit(node, edit))
    for pod in evicted:
        snapshot.remove_pod(pod, name)

    def undo():
        snapshot.replace_node(node)
        for pod in evicted:
            snapshot.add_pod(pod, name)
    return undo


def _fits_empty(snapshot, pod, name):
    """Cheap pre-check: would the pod's requests fit the node's allocatable with nothing on it?"""
    return not _beyond(snapshot, pod, snapshot.allocatable[name])


def _most_free(snapshot, names):
    """Per resource, the most any of ``names`` has free (``pods``: free pod slots; no limit is infinite)."""
    best = {"pods": -1}
    for name in names:
        allocatable, requested = snapshot.allocatable[name], snapshot.requested[name]
        for resource, amount in allocatable.items():
            free = amount - (snapshot.pod_count[name] if resource == "pods" else requested.get(resource, 0))
            if free > best.get(resource, -1):
                best[resource] = free
        if "pods" not in allocatable:
            best["pods"] = float("inf")
    return best


def _beyond(snapshot, pod, most):
    """True when a request exceeds what ``most`` offers, so the fit check cannot pass (no need to scan)."""
    if most.get("pods", float("inf")) < 1:
        return True
    return any(amount and amount > most.get(resource, 0) for resource, amount in snapshot.requests(pod).items() if resource != "pods")


def decide_flip(config, snapshot, pods, now=None):
    """§1.5: at most one flip. Returns ``(flip, note)``.

    ``flip`` is None or ``{"node", "direction", "pods", "reason"}``: pending online pods that fit no
    node bring the least-loaded offline tide node online that lets them fit; otherwise the
    least-loaded online tide node goes offline if every online pod on it fits on another node (at
    least one online tide node is kept). Nodes in their cooldown are not flipped. ``note`` says why
    nothing flipped. ``snapshot`` (a ``fit.Snapshot`` of every node and bound pod) is modified.
    """
    names = [n["metadata"]["name"] for n in snapshot.nodes()]
    cooling = {name for name in names if in_cooldown(config, snapshot.node(name), now)}
    pending = sorted((p for p in pods if is_pending_online_pod(p)), key=pod_ref)
    notes = []
    if pending:
        offline = sorted((name for name in names if config.is_offline_tide(_labels(snapshot.node(name)))),
                         key=lambda name: usage_key(snapshot, name))
        if not offline:
            return None, "%d pending online pod(s) but no offline tide node to bring online" % len(pending)
        fits_somewhere, hopeless = {}, set()
        most_free = _most_free(snapshot, names)                     # the snapshot is back to this after every trial flip
        most_offline = {}
        for name in offline:
            for resource, amount in snapshot.allocatable[name].items():
                most_offline[resource] = max(amount, most_offline.get(resource, 0))
        for pod in pending:
            klass = _fit_class(snapshot, pod)
            if klass not in fits_somewhere:
                fits_somewhere[klass] = not _beyond(snapshot, pod, most_free) and snapshot.fits_any_node(pod) is not None
            if fits_somewhere[klass] or klass in hopeless:
                continue
            if _beyond(snapshot, pod, dict(most_offline, pods=1)):    # too big for any offline node, even empty
                hopeless.add(klass)
                continue
            for name in offline:
                if name in cooling or not _fits_empty(snapshot, pod, name):
                    continue
                load = usage_text(snapshot, name)
                undo = _flip_in_snapshot(snapshot, config, name, "online", now)
                if snapshot.fits(pod, name)[0]:
                    helped = _pods_helped(snapshot, pending, name)
                    refs = [pod_ref(p) for p in helped]
                    shown = ", ".join(refs[:10]) + (" and %d more" % (len(refs) - 10) if len(refs) > 10 else "")
                    reason = ("%d pending online pod(s) fit no node; they fit on %s once it is online (lowest requested load "
                              "of %d offline tide nodes: %s): %s" % (len(refs), name, len(offline), load, shown))
                    return {"node": name, "direction": "online", "pods": refs, "reason": reason}, ""
                undo()
            hopeless.add(klass)
        waiting = sum(1 for pod in pending if not fits_somewhere[_fit_class(snapshot, pod)])
        if waiting:
            notes.append("%d pending online pod(s) would not fit even with an offline tide node online%s"
                         % (waiting, " (some offline nodes are in their cooldown)" if cooling & set(offline) else ""))
        else:
            notes.append("%d pending online pod(s) fit existing nodes" % len(pending))
    online = sorted((name for name in names if config.is_online_tide(_labels(snapshot.node(name)))),
                    key=lambda name: usage_key(snapshot, name))
    if len(online) <= 1:
        notes.append("%d online tide node(s): at least one is kept online" % len(online))
        return None, "; ".join(notes)
    candidates = [name for name in online if name not in cooling]
    if not candidates:
        notes.append("every online tide node is in its cooldown")
        return None, "; ".join(notes)
    candidate = candidates[0]
    load = usage_text(snapshot, candidate)
    moved = []
    for pod in sorted((p for p in snapshot.pods_by_node[candidate].values() if is_online_pod(p)), key=pod_ref):
        target = snapshot.fits_any_node(pod, exclude=(candidate,))
        if target is None:
            notes.append("cannot release %s: online pod %s fits no other node" % (candidate, pod_ref(pod)))
            return None, "; ".join(notes)
        snapshot.add_pod(pod, target)
        moved.append(pod_ref(pod))
    reason = "%s has the lowest requested load of %d online tide nodes (%s)" % (candidate, len(online), load)
    reason += "; its %d online pod(s) fit on other nodes" % len(moved) if moved else "; it runs no online pod"
    return {"node": candidate, "direction": "offline", "pods": moved, "reason": reason}, ""


def _pods_helped(snapshot, pending, name):
    """The pending pods that fit no other node and fit on ``name`` (packed one after another)."""
    helped, elsewhere = [], {}
    most_free = _most_free(snapshot, [other["metadata"]["name"] for other in snapshot.nodes() if other["metadata"]["name"] != name])
    for pod in pending:
        klass = _fit_class(snapshot, pod)
        if klass not in elsewhere:
            elsewhere[klass] = not _beyond(snapshot, pod, most_free) and snapshot.fits_any_node(pod, exclude=(name,)) is not None
        if elsewhere[klass] or not snapshot.fits(pod, name)[0]:
            continue
        snapshot.add_pod(pod, name)
        helped.append(pod)
    return helped


# -- status and conditions ------------------------------------------------------------------------
def _condition(current_conditions, ctype, status, reason, message, generation, now):
    previous = next((c for c in current_conditions or [] if c.get("type") == ctype), None)
    if previous and previous.get("status") == status and previous.get("lastTransitionTime"):
        stamp = previous["lastTransitionTime"]
    else:
        stamp = _now_text(now) if now is not None else "1970-01-01T00:00:00Z"
    condition = {"type": ctype, "status": status, "reason": reason, "message": message, "lastTransitionTime": stamp}
    if generation is not None:
        condition["observedGeneration"] = generation
    return condition


def _status_lists(online, offline, tide):
    reserve, tide_nodes = {}, {}
    if online:
        reserve["onlineNodes"] = list(online)
    if offline:
        reserve["offlineNodes"] = list(offline)
    if tide:
        tide_nodes["nodes"] = list(tide)
    return {"reserveNodes": reserve, "tideNodes": tide_nodes}


def normalized_status(status):
    """For comparing: empty lists and empty objects count as absent."""
    status = status or {}
    out = {}
    for key, value in status.items():
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if v not in (None, [], {})}
        if value not in (None, [], {}):
            out[key] = value
    return out


# -- the whole pass ---------------------------------------------------------------------------------
class TidePlan:
    """What one reconcile of a pool would do.

    ``plan``: a ``reconcile.Plan`` of node changes (kind ``api``, target ``Node/<name>``, action
    ``patch``, before/after = the managed view, ``data`` = node, edit, roles, flip); ``status``: the
    desired status (``status_changed`` when it differs); ``flip``/``flip_note``; ``roles``: node ->
    role after the pass; ``error``: why nothing is done (the Ready condition says it too);
    ``add_finalizer``/``remove_finalizer`` for the driver.
    """

    def __init__(self, name):
        self.pool = name
        self.plan = Plan()
        self.status = {}
        self.status_changed = False
        self.flip = None
        self.flip_note = ""
        self.roles = {}
        self.roles_before = {}
        self.reserve = None
        self.error = None
        self.deleting = False
        self.add_finalizer = False
        self.remove_finalizer = False

    @property
    def changed(self):
        return bool(self.plan) or self.status_changed or self.add_finalizer or self.remove_finalizer

    def as_dict(self):
        return {"pool": self.pool, "deleting": self.deleting, "error": self.error, "reserve": self.reserve,
                "roles": dict(sorted(self.roles.items())), "roles_before": dict(sorted(self.roles_before.items())),
                "flip": self.flip, "flip_note": self.flip_note, "changes": self.plan.as_list(), "status": self.status,
                "status_changed": self.status_changed, "add_finalizer": self.add_finalizer, "remove_finalizer": self.remove_finalizer}


def _add_node_change(result, config, node, edit, reasons, role_before, role_after, flip=None):
    after_node = apply_node_edit(node, edit)
    before, after = config.managed_view(node), config.managed_view(after_node)
    if before == after:
        return after_node
    result.plan.add("api", "Node/%s" % _name(node), "patch", before, after, "; ".join(reasons),
                    {"node": _name(node), "edit": edit, "role_before": role_before, "role_after": role_after, "flip": flip})
    return after_node


def plan_tide_pool(pool, nodes, pods, now=None, snapshot_factory=Snapshot, flips=True):
    """One reconcile of ``pool`` (§1.4, §1.5, §1.8) over every node and pod of the cluster.

    ``now`` (an aware datetime) stamps flips and conditions and drives the cooldown; without it no
    cooldown applies. With ``flips=False`` the flip is decided and reported (``flip``) but not part
    of the plan (a playbook that leaves flipping to the controller). Deterministic: nodes and pods
    are taken in name order.
    """
    config = PoolConfig(pool)
    meta = pool.get("metadata") or {}
    result = TidePlan(config.name)
    if meta.get("deletionTimestamp"):
        return plan_tide_pool_cleanup(pool, nodes, result)
    result.add_finalizer = FINALIZER not in (meta.get("finalizers") or [])
    current_status = pool.get("status") or {}
    generation = meta.get("generation")
    selected = pool_nodes(config, nodes)
    result.roles_before = {_name(n): config.role(_labels(n)) for n in selected}
    problem = None
    if config.problems:
        problem = ("InvalidSpec", "; ".join(config.problems))
    else:
        try:
            online_expect, offline_expect = reserve_counts(config.reserve, len(selected))
            result.reserve = {"online": online_expect, "offline": offline_expect, "nodes": len(selected)}
        except ValueError as exc:
            problem = ("InvalidReserve", str(exc))
    if problem is not None:
        result.error = problem[1]
        result.roles = dict(result.roles_before)
        status = {key: value for key, value in current_status.items() if key != "conditions"}
        status["observedGeneration"] = generation
        status["conditions"] = [_condition(current_status.get("conditions"), "Ready", "False", problem[0],
                                           problem[1] + "; nodes are left as they are", generation, now)]
        _set_status(result, current_status, status)
        return result

    groups = classify_nodes(config, selected)
    edits, lists = assign_reserves(config, groups, online_expect, offline_expect)
    by_name = {_name(n): n for n in nodes}
    view = dict(by_name)
    for name, (edit, _reason) in edits.items():
        view[name] = apply_node_edit(by_name[name], edit)
    snapshot = snapshot_factory(list(view.values()), pods)
    flip, result.flip_note = decide_flip(config, snapshot, pods, now)
    result.flip = flip
    if flip is not None and not flips:
        result.flip_note = "not applied here: katalyst-controller makes flips"
    elif flip is not None:
        flip_edit = config.flip_edit(flip["direction"], now)
        previous = edits.get(flip["node"])
        edit = merge_edits(previous[0], flip_edit) if previous else flip_edit
        reason = "flip to %s: %s" % (flip["direction"], flip["reason"])
        edits[flip["node"]] = (edit, previous[1] + "; " + reason if previous else reason)
    for name in sorted(edits):
        edit, reason = edits[name]
        after_node = _add_node_change(result, config, by_name[name], edit, [reason], result.roles_before.get(name),
                                      config.role(_labels(apply_node_edit(by_name[name], edit))),
                                      flip["direction"] if flip and flips and flip["node"] == name else None)
        view[name] = after_node
    result.roles = {_name(n): config.role(_labels(view[_name(n)])) for n in selected}

    status = _status_lists(lists["online"], lists["offline"], lists["tide"])
    counts = {}
    for role in result.roles.values():
        counts[role] = counts.get(role, 0) + 1
    message = ("%d nodes: %d online reserve (want %d), %d offline reserve (want %d), %d tide online, %d tide offline"
               % (len(selected), counts.get(ROLE_ONLINE_RESERVE, 0), online_expect, counts.get(ROLE_OFFLINE_RESERVE, 0),
                  offline_expect, counts.get(ROLE_TIDE_ONLINE, 0), counts.get(ROLE_TIDE_OFFLINE, 0)))
    status["observedGeneration"] = generation
    status["conditions"] = [_condition(current_status.get("conditions"), "Ready", "True", "Reconciled", message, generation, now)]
    _set_status(result, current_status, status)
    return result


def _set_status(result, current_status, status):
    result.status = {key: value for key, value in status.items() if value is not None}
    result.status_changed = normalized_status(result.status) != normalized_status(current_status)


def plan_tide_pool_cleanup(pool, nodes, result=None):
    """§1.8: strip every node labelled ``node-pool=<pool>`` of the pool's labels and taints, then
    the driver removes the finalizer."""
    config = PoolConfig(pool)
    result = result or TidePlan(config.name)
    result.deleting = True
    edit = config.cleanup_edit()
    for node in sorted(nodes, key=_name):
        if _labels(node).get(LABEL_NODE_POOL) != config.name:
            continue
        result.roles_before[_name(node)] = config.role(_labels(node))
        _add_node_change(result, config, node, edit, ["pool %s is deleted: remove its labels and taints" % config.name],
                         result.roles_before[_name(node)], None)
    result.remove_finalizer = FINALIZER in ((pool.get("metadata") or {}).get("finalizers") or [])
    return result
