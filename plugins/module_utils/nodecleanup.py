# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""What katalyst.colocation's daemons leave on Node objects, and the edit that takes it off again (uninstall).

The keys are the ones the controller (tide, overcommit) and the webhook write: tide labels and eviction taints,
overcommit ratios and the original/overcommit capacity annotations, the tide flip annotation; and the agent's eviction
taints (``node.katalyst.kubewharf.io/<condition>``) and the status conditions it writes (``SystemRootfs``: the conditions the
kubelet does not own, with the agent's reasons), taken off with a patch of ``nodes/status``. The overcommit pool
label (``katalyst.kubewharf.io/overcommit_node_pool``) and a TideNodePool's nodeSelector labels are the user's and stay.
"""

from __future__ import annotations

from . import eviction, overcommit, tide

OWNED_LABELS = (tide.LABEL_NODE_POOL, tide.LABEL_NODE_TYPE, tide.LABEL_TIDE, tide.LABEL_RESERVE)
OWNED_TAINTS = (tide.TAINT_EVICT_ONLINE_POD, tide.TAINT_EVICT_OFFLINE_POD)
OWNED_TAINT_PREFIX = eviction.TAINT_KEY_PREFIX
# condition type: the reasons the agent writes it with (on, off)
OWNED_CONDITIONS = {name: eviction.CONDITION_REASONS[name] for name in eviction.MANAGED_CONDITIONS if name not in eviction.KUBELET_CONDITIONS}
OWNED_ANNOTATIONS = tuple(sorted(
    [tide.ANNOTATION_LAST_FLIP]
    + [keys[resource] for keys in (overcommit.RATIO_KEY, overcommit.REALTIME_RATIO_KEY, overcommit.ORIGINAL_CAPACITY_KEY,
                                   overcommit.ORIGINAL_ALLOCATABLE_KEY, overcommit.OVERCOMMIT_CAPACITY_KEY,
                                   overcommit.OVERCOMMIT_ALLOCATABLE_KEY)
       for resource in overcommit.RESOURCES]))


def is_owned_taint(taint):
    key = taint.get("key") or ""
    return key in OWNED_TAINTS or key.startswith(OWNED_TAINT_PREFIX)


def owned_metadata(node):
    """{"labels": {...}, "annotations": {...}, "taints": [...]}: what of ``node`` katalyst.colocation put there."""
    metadata = node.get("metadata") or {}
    labels = {key: value for key, value in (metadata.get("labels") or {}).items() if key in OWNED_LABELS}
    annotations = {key: value for key, value in (metadata.get("annotations") or {}).items() if key in OWNED_ANNOTATIONS}
    taints = [taint for taint in (node.get("spec") or {}).get("taints") or [] if is_owned_taint(taint)]
    return {"labels": labels, "annotations": annotations, "taints": taints}


def strip_node(node):
    """``node`` without what katalyst.colocation put there, or None when it carries none of it."""
    owned = owned_metadata(node)
    if not any(owned.values()):
        return None
    metadata = node.setdefault("metadata", {})
    metadata["labels"] = {key: value for key, value in (metadata.get("labels") or {}).items() if key not in owned["labels"]}
    metadata["annotations"] = {key: value for key, value in (metadata.get("annotations") or {}).items() if key not in owned["annotations"]}
    if owned["taints"]:
        spec = node.setdefault("spec", {})
        spec["taints"] = [taint for taint in spec.get("taints") or [] if not is_owned_taint(taint)]
    return node


def owned_conditions(node):
    """The status conditions of ``node`` the agent's eviction loop wrote (its types, with its reasons)."""
    return [condition for condition in (node.get("status") or {}).get("conditions") or []
            if condition.get("reason") in OWNED_CONDITIONS.get(condition.get("type"), ())]


def conditions_patch(node):
    """The strategic merge patch of ``nodes/status`` that deletes the conditions of ``owned_conditions`` (conditions
    merge by type: the kubelet's stay as they are), or None when there are none."""
    owned = owned_conditions(node)
    if not owned:
        return None
    return {"status": {"conditions": [{"type": condition["type"], "$patch": "delete"} for condition in owned]}}
