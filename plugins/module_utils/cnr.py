# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""CustomNodeResource (CNR): reclaimed resources per node and per NUMA node, and the CNR lifecycle.

Cluster spec §3, node spec §4.4. Pure functions: resource maps are ``{resource name: quantity string}``,
NUMA maps are ``{NUMA id string: resource map}``.

* ``revise_reclaimed`` is Katalyst's ``reviseReclaimedResource``: a NUMA node where **any** reclaimed
  resource is at or below its minimum (``MinIgnoredReclaimedResourceForReport``, default cpu 0.1 and
  memory 100Mi) reports zero for **all** its resources; if a NUMA was zeroed the node allocatable becomes
  the sum of the NUMA allocatables; then the same rule applies to the node allocatable. Capacity is
  never revised.
* ``build_cnr_status`` renders ``status.resources`` and ``status.topologyZone`` (Socket zones with Numa
  children) exactly as the headroom reporter does.
* ``plan_cnr_lifecycle`` is the ``cnr-lifecycle`` controller: a CNR per Node (labels merged, node wins,
  one controlling ownerReference) and garbage collection of CNRs whose Node is gone.
"""

from __future__ import annotations

import copy

from .quantity import Quantity, parse_quantity
from .reconcile import Plan

CNR_API_VERSION = "node.katalyst.kubewharf.io/v1alpha1"
CNR_KIND = "CustomNodeResource"
RECLAIMED_MILLICPU = "resource.katalyst.kubewharf.io/reclaimed_millicpu"
RECLAIMED_MEMORY = "resource.katalyst.kubewharf.io/reclaimed_memory"
RECLAIMED_RESOURCES = (RECLAIMED_MILLICPU, RECLAIMED_MEMORY)
ZONE_SOCKET = "Socket"
ZONE_NUMA = "Numa"

# MinIgnoredReclaimedResourceForReport, keyed by the *origin* resource name (Katalyst's dynamic config).
DEFAULT_MIN_IGNORED = {"cpu": "100m", "memory": "100Mi"}
# report name -> (origin resource name, reported as a milli value)
REPORT_ORIGIN = {RECLAIMED_MILLICPU: ("cpu", True), RECLAIMED_MEMORY: ("memory", False)}


class CNRError(ValueError):
    """Bad input for a CNR decision; the message names the field and the value."""


def _quantity(value, where):
    if isinstance(value, Quantity):
        return value
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise CNRError("%s: %r is not a quantity" % (where, value))
    try:
        return parse_quantity(value if isinstance(value, str) else str(value))
    except ValueError as exc:
        raise CNRError("%s: %s" % (where, exc))


def _text(value, where):
    """The caller's spelling when it is a string, else the canonical text."""
    if isinstance(value, str):
        _quantity(value, where)
        return value
    return str(_quantity(value, where))


def _resource_map(mapping, where):
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        raise CNRError("%s must be a map of resource name to quantity, got %r" % (where, mapping))
    return {str(name): _text(value, "%s[%s]" % (where, name)) for name, value in mapping.items()}


def _numa_map(mapping, where):
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        raise CNRError("%s must be a map of NUMA id to resource map, got %r" % (where, mapping))
    out = {}
    for numa, resources in mapping.items():
        key = str(numa)
        if not key.isdigit():
            raise CNRError("%s: NUMA id %r is not a non-negative integer" % (where, numa))
        out[str(int(key))] = _resource_map(resources, "%s[%s]" % (where, key))
    return out


def numa_sort_key(numa):
    return int(numa)


def min_ignored_threshold(resource_name, min_ignored):
    """The revise threshold for a reported resource, or None when that resource is never revised.

    ``min_ignored`` is keyed like Katalyst's config, by origin name (``cpu``, ``memory``); for a resource
    reported as milli units (``reclaimed_millicpu``) the threshold is ``NewQuantity(min.MilliValue())``.
    A key equal to the reported name itself is also accepted and used as written.
    """
    origin, milli = REPORT_ORIGIN.get(resource_name, (resource_name, False))
    if origin in min_ignored:
        threshold = _quantity(min_ignored[origin], "min_ignored[%s]" % origin)
        if milli:
            threshold = Quantity(threshold.milli_value(), threshold.format)
        return threshold
    if resource_name in min_ignored:
        return _quantity(min_ignored[resource_name], "min_ignored[%s]" % resource_name)
    return None


def _revise_list(resources, thresholds):
    """Zero every resource of ``resources`` when any is <= its threshold; True if it did."""
    for name, text in resources.items():
        threshold = thresholds.get(name)
        if threshold is not None and _quantity(text, name) <= threshold:
            for key in resources:
                resources[key] = "0"
            return True
    return False


def _sum_numa(numa_allocatable):
    """Per resource, the sum over NUMA nodes (keeping the spelling when only one NUMA contributes)."""
    addends = {}
    for numa in sorted(numa_allocatable, key=numa_sort_key):
        for name, text in numa_allocatable[numa].items():
            addends.setdefault(name, []).append(text)
    total = {}
    for name, texts in addends.items():
        quantities = [_quantity(t, name) for t in texts]
        nonzero = [(t, q) for t, q in zip(texts, quantities) if not q.is_zero()]
        if not nonzero:
            total[name] = "0"
        elif len(nonzero) == 1:
            total[name] = nonzero[0][0]
        else:
            amount = sum((q.amount for q in quantities), 0)
            total[name] = str(Quantity(amount, nonzero[0][1].format))
    return total


def revise_reclaimed(allocatable, capacity, numa_allocatable, numa_capacity, min_ignored=None):
    """Katalyst's ``reviseReclaimedResource`` (cluster spec §3.3, node spec §4.4).

    Returns ``{"allocatable", "capacity", "numa_allocatable", "numa_capacity"}``; inputs are not modified.
    ``min_ignored=None`` means Katalyst's defaults (cpu 0.1, memory 100Mi).
    """
    if min_ignored is None:
        min_ignored = DEFAULT_MIN_IGNORED
    if not isinstance(min_ignored, dict):
        raise CNRError("min_ignored must be a map of resource name to quantity, got %r" % (min_ignored,))
    out = {
        "allocatable": _resource_map(allocatable, "allocatable"),
        "capacity": _resource_map(capacity, "capacity"),
        "numa_allocatable": _numa_map(numa_allocatable, "numa_allocatable"),
        "numa_capacity": _numa_map(numa_capacity, "numa_capacity"),
    }
    names = set(out["allocatable"])
    for resources in out["numa_allocatable"].values():
        names.update(resources)
    thresholds = {name: min_ignored_threshold(name, min_ignored) for name in names}
    numa_revised = False
    for numa in sorted(out["numa_allocatable"], key=numa_sort_key):
        if _revise_list(out["numa_allocatable"][numa], thresholds):
            numa_revised = True
    if numa_revised:
        out["allocatable"] = _sum_numa(out["numa_allocatable"])
    _revise_list(out["allocatable"], thresholds)
    return out


# -- status ------------------------------------------------------------------------------------
def numa_sockets_from_facts(facts):
    """``{NUMA id string: socket id string}`` from node facts (nodeinfo.gather): the socket of a NUMA's first CPU."""
    return {str(numa["id"]): str(numa.get("socket", 0)) for numa in facts.get("numa_nodes") or [] if numa.get("cpu_count", 1)}


def _zone_order(zone):
    return (zone["type"], zone["name"])


def build_topology_zones(numa_allocatable, numa_capacity, numa_sockets):
    """``status.topologyZone``: Socket zones with Numa children, sorted by type then name (string order)."""
    numa_allocatable = _numa_map(numa_allocatable, "numa_allocatable")
    numa_capacity = _numa_map(numa_capacity, "numa_capacity")
    sockets = {str(numa): str(socket) for numa, socket in (numa_sockets or {}).items()}
    for numa in numa_allocatable:
        if numa not in numa_capacity:
            raise CNRError("miss capacity with numaID: %s" % numa)
        if numa not in sockets:
            raise CNRError("NUMA %s has reclaimed resources but is not in the node's NUMA->socket map %r" % (numa, sockets))
    children = {}
    for numa, socket in sockets.items():
        zone = {"type": ZONE_NUMA, "name": numa}
        if numa in numa_allocatable:
            zone["resources"] = {"allocatable": dict(numa_allocatable[numa]), "capacity": dict(numa_capacity[numa])}
        children.setdefault(socket, []).append(zone)
    zones = []
    for socket, numa_zones in children.items():
        zones.append({"type": ZONE_SOCKET, "name": socket, "children": sorted(numa_zones, key=_zone_order)})
    return sorted(zones, key=_zone_order)


def build_cnr_status(reclaimed, numa_sockets):
    """The CNR status fields the headroom reporter owns, from a ``revise_reclaimed`` result.

    Returns ``{"resources": {"allocatable", "capacity"}, "topologyZone": [...]}``.
    """
    for key in ("allocatable", "capacity", "numa_allocatable", "numa_capacity"):
        if key not in reclaimed:
            raise CNRError("reclaimed resources lack %r" % key)
    return {
        "resources": {"allocatable": _resource_map(reclaimed["allocatable"], "allocatable"),
                      "capacity": _resource_map(reclaimed["capacity"], "capacity")},
        "topologyZone": build_topology_zones(reclaimed["numa_allocatable"], reclaimed["numa_capacity"], numa_sockets),
    }


def _same_resources(current, desired):
    """Every desired resource is present with the same quantity (other reporters' resources are ignored)."""
    current = current or {}
    for name, value in desired.items():
        if name not in current:
            return False
        try:
            if _quantity(current[name], name) != _quantity(value, name):
                return False
        except CNRError:
            return False
    return True


def _zones_by_key(zones):
    return {(z.get("type"), z.get("name")): z for z in zones or [] if isinstance(z, dict)}


def _same_zone_resources(current, desired):
    resources_now, resources_want = current.get("resources") or {}, desired.get("resources") or {}
    for field in ("allocatable", "capacity"):
        if field in resources_want and not _same_resources(resources_now.get(field), resources_want[field]):
            return False
    return True


def _same_zones(current, desired):
    current_by_key = _zones_by_key(current)
    if not set(_zones_by_key(desired)) <= set(current_by_key):
        return False
    for zone in desired:
        now = current_by_key[(zone["type"], zone["name"])]
        if not _same_zone_resources(now, zone):
            return False
        if not _same_zones(now.get("children") or [], zone.get("children") or []):
            return False
    return True


def merge_topology_zones(current, desired):
    """Katalyst's ``MergeTopologyZone`` for our fields: zones matched by (type, name), resources maps merged
    (desired wins), zones and attributes of other reporters kept; output sorted by type then name."""
    merged = {key: copy.deepcopy(zone) for key, zone in _zones_by_key(current).items()}
    for zone in desired:
        key = (zone["type"], zone["name"])
        target = merged.setdefault(key, {"type": zone["type"], "name": zone["name"]})
        if "resources" in zone:
            resources = target.setdefault("resources", {})
            for field, values in zone["resources"].items():
                resources[field] = dict(resources.get(field) or {}, **values)
        if zone.get("children"):
            target["children"] = merge_topology_zones(target.get("children") or [], zone["children"])
    return sorted(merged.values(), key=_zone_order)


def plan_cnr_status(node_name, current_cnr, desired_status, labels=None):
    """The Plan that brings a node's CNR status to ``desired_status`` (from ``build_cnr_status``).

    A missing CNR is created (the agent may start before the controller); the status is patched
    (``status`` subresource, merge patch) only when a quantity differs semantically. Other reporters'
    resources and zones are kept.
    """
    plan = Plan()
    target = "%s/%s" % (CNR_KIND, node_name)
    if current_cnr is None:
        body = {"apiVersion": CNR_API_VERSION, "kind": CNR_KIND, "metadata": {"name": node_name}}
        if labels:
            body["metadata"]["labels"] = dict(labels)
        plan.add("api", target, "create", None, {"metadata": body["metadata"]}, "the node has no CNR yet",
                 {"object": body, "api_version": CNR_API_VERSION, "kind": CNR_KIND, "name": node_name})
        current_status = {}
    else:
        current_status = current_cnr.get("status") or {}
    current_resources = current_status.get("resources") or {}
    want_resources = desired_status.get("resources") or {}
    same = all(_same_resources(current_resources.get(f), want_resources.get(f) or {}) for f in ("allocatable", "capacity"))
    if same and _same_zones(current_status.get("topologyZone") or [], desired_status.get("topologyZone") or []):
        return plan
    resources = copy.deepcopy(current_resources)
    for field in ("allocatable", "capacity"):
        resources[field] = dict(resources.get(field) or {}, **(want_resources.get(field) or {}))
    zones = merge_topology_zones(current_status.get("topologyZone") or [], desired_status.get("topologyZone") or [])
    patch = {"status": {"resources": resources, "topologyZone": zones}}
    before = {"resources": current_resources, "topologyZone": current_status.get("topologyZone") or []}
    plan.add("api", target, "patch", before, patch["status"], "reclaimed resources changed",
             {"patch": patch, "subresource": "status", "patch_type": "merge", "api_version": CNR_API_VERSION,
              "kind": CNR_KIND, "name": node_name})
    return plan


def reclaimed_from_cnr(cnr):
    """Read back what the scheduler uses: node allocatable and per-NUMA allocatable of the reclaimed resources.

    Returns ``{"allocatable": {name: Quantity}, "numa_allocatable": {numa id string: {name: Quantity}},
    "numa_sockets": {numa: socket}}``; unparsable quantities count as zero (as a missing key does).
    """
    status = (cnr or {}).get("status") or {}

    def parse_map(mapping):
        out = {}
        for name, value in (mapping or {}).items():
            try:
                out[name] = _quantity(value, name)
            except CNRError:
                out[name] = Quantity(0)
        return out

    allocatable = parse_map(((status.get("resources") or {}).get("allocatable")))
    numa_allocatable, numa_sockets = {}, {}
    for socket in status.get("topologyZone") or []:
        if not isinstance(socket, dict) or socket.get("type") != ZONE_SOCKET:
            continue
        for child in socket.get("children") or []:
            if isinstance(child, dict) and child.get("type") == ZONE_NUMA and str(child.get("name", "")).isdigit():
                numa = str(int(child["name"]))
                numa_sockets[numa] = str(socket.get("name"))
                numa_allocatable[numa] = parse_map(((child.get("resources") or {}).get("allocatable")))
    return {"allocatable": allocatable, "numa_allocatable": numa_allocatable, "numa_sockets": numa_sockets}


# -- lifecycle (cluster spec §3.2) -------------------------------------------------------------
def cnr_owner_reference(node):
    meta = node.get("metadata") or {}
    return {"apiVersion": "v1", "kind": "Node", "name": meta.get("name"), "uid": meta.get("uid", ""),
            "controller": True, "blockOwnerDeletion": True}


def desired_cnr_metadata(node, cnr=None):
    """``updateOrCreateCNR``: labels = merge(CNR labels, node labels) (node wins), one controlling owner."""
    node_meta = node.get("metadata") or {}
    labels = dict(((cnr or {}).get("metadata") or {}).get("labels") or {})
    labels.update(node_meta.get("labels") or {})
    return {"name": node_meta.get("name"), "labels": labels, "ownerReferences": [cnr_owner_reference(node)]}


def plan_cnr_lifecycle(nodes, cnrs):
    """What the ``cnr-lifecycle`` controller does for these Nodes and CNRs (both lists of dicts).

    Create a CNR for every Node that has none, patch labels/ownerReferences where they differ, and
    delete CNRs whose Node is absent. The controller double-checks a delete with a live GET of the
    Node before applying it (Katalyst does the same).
    """
    plan = Plan()
    by_name = {}
    for cnr in cnrs or []:
        name = (cnr.get("metadata") or {}).get("name")
        if name:
            by_name[name] = cnr
    node_names = set()
    for node in sorted(nodes or [], key=lambda n: (n.get("metadata") or {}).get("name") or ""):
        name = (node.get("metadata") or {}).get("name")
        if not name:
            continue
        node_names.add(name)
        target = "%s/%s" % (CNR_KIND, name)
        cnr = by_name.get(name)
        want = desired_cnr_metadata(node, cnr)
        if cnr is None:
            metadata = {"name": name, "ownerReferences": want["ownerReferences"]}
            if want["labels"]:
                metadata["labels"] = want["labels"]
            body = {"apiVersion": CNR_API_VERSION, "kind": CNR_KIND, "metadata": metadata}
            plan.add("api", target, "create", None, {"metadata": metadata}, "the node has no CNR",
                     {"object": body, "api_version": CNR_API_VERSION, "kind": CNR_KIND, "name": name})
            continue
        meta = cnr.get("metadata") or {}
        before = {"labels": meta.get("labels") or {}, "ownerReferences": meta.get("ownerReferences") or []}
        after = {"labels": want["labels"], "ownerReferences": want["ownerReferences"]}
        if before != after:
            patch = {"metadata": {"labels": dict(after["labels"]), "ownerReferences": after["ownerReferences"]}}
            plan.add("api", target, "patch", before, after, "labels or owner differ from the node's",
                     {"patch": patch, "patch_type": "merge", "api_version": CNR_API_VERSION, "kind": CNR_KIND, "name": name})
    for name in sorted(set(by_name) - node_names):
        plan.add("api", "%s/%s" % (CNR_KIND, name), "delete", {"metadata": {"name": name}}, None,
                 "its node is gone (double-check with a live GET before deleting)",
                 {"api_version": CNR_API_VERSION, "kind": CNR_KIND, "name": name, "confirm_node_absent": True})
    return plan
