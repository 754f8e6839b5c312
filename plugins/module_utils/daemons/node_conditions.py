# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""The node conditions of the agent's eviction loop (``SystemRootfs``, ``MemoryPressure``) on its Node: the status
condition (for the conditions the kubelet does not own) and the taint ``node.katalyst.kubewharf.io/<condition>:NoSchedule``
while in force and for the transition period after (``eviction.ConditionTracker``), an Event when one comes or goes, and
no write while nothing changes.
"""

from __future__ import annotations

import datetime
import logging

from .. import eviction
from ..kube import KubeError

LOG = logging.getLogger("katalyst.agent")

# the conditions this loop manages, their reasons, and the kubelet's (eviction.py: uninstall's node_cleanup removes ours)
MANAGED_CONDITIONS, CONDITION_REASONS, KUBELET_CONDITIONS = eviction.MANAGED_CONDITIONS, eviction.CONDITION_REASONS, eviction.KUBELET_CONDITIONS
CONDITION_CONFLICT_RETRIES = 3


def _taint_id(taint):
    return (taint.get("key"), taint.get("effect"))


def wanted_taints(current, in_force, managed=MANAGED_CONDITIONS):
    """The node's taints with the conditions ``in_force`` (Condition tuples): every taint of another key kept in its
    place, the managed conditions' taints (``node.katalyst.kubewharf.io/<condition>``) present exactly for those in force,
    the missing ones appended."""
    managed_keys = {eviction.TAINT_KEY_PREFIX + name for name in managed}
    wanted = [taint for condition in in_force if condition.name in managed for taint in eviction.condition_taint(condition)]
    wanted_ids = {_taint_id(taint) for taint in wanted}
    kept = [taint for taint in current or [] if taint.get("key") not in managed_keys or _taint_id(taint) in wanted_ids]
    kept_ids = {_taint_id(taint) for taint in kept}
    return kept + [taint for taint in wanted if _taint_id(taint) not in kept_ids]


def wanted_condition(current, name, in_force, message, stamp, off_message=None):
    """The node status condition ``name`` to write, or None when the node has it as wanted already.

    In force: status True (reason and message of the pressure); not in force: status False, written only over a True
    one (a node that never had the pressure gets no condition), with ``off_message`` or the transition period's message.
    ``lastTransitionTime`` moves only when the status does; the message is written with a status change only (a new
    reading each pass would be a write each pass)."""
    existing = next((c for c in current or [] if c.get("type") == name), None)
    status = "True" if in_force else "False"
    if existing is None and not in_force:
        return None
    if existing is not None and existing.get("status") == status:
        return None
    on_reason, off_reason = CONDITION_REASONS.get(name, (name, "No" + name))
    return {"type": name, "status": status, "reason": on_reason if in_force else off_reason,
            "message": message if in_force else off_message or "no threshold of %s met for the transition period" % name,
            "lastTransitionTime": stamp, "lastHeartbeatTime": stamp}


def _resource_version(node):
    return ((node or {}).get("metadata") or {}).get("resourceVersion")


class NodeConditions:
    """Converges the node to the conditions in force: status conditions, taints, Events when one turns on or off.

    The informer's Node may not show our last write yet: ``written`` maps the resourceVersion a write started from to
    the Node it returned, so a stale cache is read as the node we wrote (no second write of the same change)."""

    def __init__(self, agent, transition_period):
        self.agent = agent
        self.tracker = eviction.ConditionTracker(transition_period)
        self.written = {}

    def node(self):
        """The newest Node known: the informer's, or what our writes returned since; None while unknown."""
        informer = self.agent.node
        if informer is None or not informer.synced.is_set():
            return None
        node = informer.get(self.agent.config["node_name"])
        seen = set()
        while node is not None and _resource_version(node) in self.written and _resource_version(node) not in seen:
            seen.add(_resource_version(node))
            node = self.written[_resource_version(node)]
        return node

    def remember(self, before, after):
        if len(self.written) > 16:
            self.written.clear()
        if after is not None and _resource_version(before):
            self.written[_resource_version(before)] = after

    def converge(self, conditions, messages, now):
        """Feed the conditions met this pass; write what changed. Returns the names of what was written.

        ``messages``: {condition name: the pressure's message}, or one message for every condition, on or off. A condition the
        kubelet owns (``KUBELET_CONDITIONS``) is written as its taint only, announced when the taint comes or goes."""
        in_force = self.tracker.update(conditions, now)
        node = self.node()
        if node is None:
            return []
        off_message = None
        if not isinstance(messages, dict):
            off_message, messages = messages, {name: messages for name in MANAGED_CONDITIONS}
        written = []
        forced = {condition.name for condition in in_force}
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        current = (node.get("status") or {}).get("conditions")
        changes = [wanted for wanted in (wanted_condition(current, name, name in forced, messages.get(name) or "", stamp, off_message)
                                         for name in MANAGED_CONDITIONS if name not in KUBELET_CONDITIONS) if wanted is not None]
        if changes:
            node = self.patch_conditions(node, changes)
            written.append("conditions")
            for change in changes:
                self.announce(change)
        taints = (node.get("spec") or {}).get("taints") or []
        if wanted_taints(taints, in_force) != taints:
            after = self.patch_taints(node, in_force)
            written.append("taints")
            self.announce_taints(taints, ((after or node).get("spec") or {}).get("taints") or [], messages, stamp)
        return written

    def release(self, now, why):
        """Nothing of ours stays in force (eviction switched off, or a dry run that must not touch the node): what an
        earlier pass set is cleared at once, not after the transition period, with ``why`` as the message. Returns what
        was written."""
        self.tracker = eviction.ConditionTracker(self.tracker.transition_period)
        return self.converge((), why, now)

    def announce_taints(self, before, after, messages, stamp):
        """Announce the taint-only conditions whose taint came or went."""
        for name in MANAGED_CONDITIONS:
            if name not in KUBELET_CONDITIONS:
                continue
            key = eviction.TAINT_KEY_PREFIX + name
            was, present = any(t.get("key") == key for t in before), any(t.get("key") == key for t in after)
            if was != present:
                self.announce(wanted_condition([{"type": name, "status": "False" if present else "True"}], name, present,
                                               messages.get(name) or "", stamp))

    def patch_conditions(self, node, changes):
        """Strategic merge patch of nodes/status: conditions merge by type, the others are kept."""
        kube, name = self.agent.kube, self.agent.config["node_name"]
        after = kube.patch("v1", "Node", name, {"status": {"conditions": changes}}, patch_type="strategic", subresource="status")
        self.remember(node, after)
        return after

    def patch_taints(self, node, in_force):
        """Merge patch of spec.taints with the resourceVersion read: a 409 when the taints changed meanwhile, then read again."""
        kube, name = self.agent.kube, self.agent.config["node_name"]
        for attempt in range(CONDITION_CONFLICT_RETRIES + 1):
            taints = wanted_taints((node.get("spec") or {}).get("taints"), in_force)
            if taints == ((node.get("spec") or {}).get("taints") or []):
                return node
            try:
                after = kube.patch("v1", "Node", name, {"metadata": {"resourceVersion": _resource_version(node)}, "spec": {"taints": taints or None}})
            except KubeError as exc:
                if exc.status != 409 or attempt == CONDITION_CONFLICT_RETRIES:
                    raise
                fresh = kube.list("v1", "Node", field_selector="metadata.name=%s" % name)
                if not fresh:
                    raise
                node = fresh[0]
                continue
            self.remember(node, after)
            LOG.info("node taints now %s", [("%s:%s" % _taint_id(taint)) for taint in taints], extra={"loop": "eviction", "target": name})
            return after
        return node

    def announce(self, change):
        agent, name = self.agent, self.agent.config["node_name"]
        on = change["status"] == "True"
        what = "set, taint %s%s:NoSchedule" % (eviction.TAINT_KEY_PREFIX, change["type"]) if on else "cleared, its taint removed"
        text = "node condition %s %s: %s" % (change["type"], what, change["message"])
        (LOG.warning if on else LOG.info)(text, extra={"loop": "eviction", "target": name})
        node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}
        agent.kube.emit_event(node, change["reason"], text, "Warning" if on else "Normal", "katalyst-agent", host=name)
