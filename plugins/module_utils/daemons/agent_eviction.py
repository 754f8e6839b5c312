# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""The agent's ``eviction`` loop: evict pods under rootfs pressure through the policy/v1 Eviction API.

Each pass (5 s, Katalyst's ``--eviction-manager-sync-period``) reads the rootfs filesystem (``statvfs`` of
``eviction_rootfs_path``: free bytes, free inodes) and each pod's use of it (bytes and inodes under its directories,
``eviction_rootfs_pod_dirs``: the kubelet's pod directory with its emptyDirs, its logs), asks the engine
(``eviction.py``, node spec §5.3) which pods to evict, and evicts them: reclaimed_cores pods first, system_cores
pods and pods annotated ``katalyst.kubewharf.io/do-not-evict: "true"`` never. Evictions go through the Eviction API so
that PodDisruptionBudgets hold (a refusal is reported and tried again next pass); at most ``eviction_max_per_period``
per ``eviction_rate_period_seconds``, and a pod is not evicted again within ``eviction_pod_cooldown_seconds``. Each
eviction is a Warning Event on the pod naming the threshold and the reading (and a log line); ``eviction_dry_run``
only reports what it would evict.

While the threshold is met, and for ``eviction_condition_transition_seconds`` (300 s, Katalyst's
``--eviction-condition-transition-period``) after, the node has the status condition ``SystemRootfs`` True and the taint
``node.katalyst.kubewharf.io/SystemRootfs:NoSchedule`` (§5.3); then the condition turns False (it is kept, like the
kubelet's) and the taint goes. Both are written only when they change (compared with the node informer's Node), the
taint by a merge patch of spec.taints carrying the resourceVersion read (every other taint kept; a conflict reads the
Node again). A dry run does not touch the node.

Not here yet: memory pressure and reclaimed-resource eviction (their engine functions exist in eviction.py).
"""

from __future__ import annotations

import datetime
import logging
import os
import stat
import time

from .service import prometheus_client
from .. import eviction
from ..kube import KubeError


LOG = logging.getLogger("katalyst.agent")

DEFAULTS = {
    "eviction_enabled": False,
    # Katalyst syncs every 5 s; a pass without pressure is one statvfs (~0.1 ms), so every second costs nothing
    "eviction_period_seconds": 1,
    "eviction_dry_run": False,
    "eviction_top_n": 1,
    "eviction_max_per_period": 2,
    "eviction_rate_period_seconds": 60,
    "eviction_pod_cooldown_seconds": 300,
    # how long the SystemRootfs condition and its taint stay after the threshold was last met (--eviction-condition-transition-period)
    "eviction_condition_transition_seconds": eviction.CONDITION_TRANSITION_PERIOD,
    # §5.3 thresholds: "" unset, "10%" of the filesystem, or a quantity ("2Gi", "5000" inodes)
    "eviction_rootfs_path": "/var/lib/kubelet",
    "eviction_rootfs_minimum_free": "",
    "eviction_rootfs_minimum_inodes_free": "",
    "eviction_rootfs_pod_minimum_used": "",
    "eviction_rootfs_pod_minimum_inodes_used": "",
    "eviction_rootfs_reclaimed_pod_used_priority": "",
    "eviction_rootfs_reclaimed_pod_inodes_used_priority": "",
    "eviction_rootfs_minimum_disk_capacity": "",
    "eviction_rootfs_grace_period_seconds": 0,
    # where a pod's use of the rootfs lives ({uid}, {namespace}, {name} filled in), below sysroot
    "eviction_rootfs_pod_dirs": ["/var/lib/kubelet/pods/{uid}", "/var/log/pods/{namespace}_{name}_{uid}"],
}


ROOTFS_THRESHOLDS = ("minimum_free", "minimum_inodes_free", "pod_minimum_used", "pod_minimum_inodes_used", "reclaimed_pod_used_priority",
                     "reclaimed_pod_inodes_used_priority", "minimum_disk_capacity")


def rootfs_thresholds(config):
    """The engine's RootfsThresholds from the agent's configuration (ValueError naming the bad option)."""
    texts = {name: str(config["eviction_rootfs_" + name] or "") for name in ROOTFS_THRESHOLDS}
    for name, text in texts.items():
        try:
            eviction.RootfsThresholds.from_strings(**{name: text})
        except ValueError as exc:
            raise ValueError("eviction_rootfs_%s: %s" % (name, exc)) from None
    return eviction.RootfsThresholds.from_strings(enabled=True, grace_period=int(config["eviction_rootfs_grace_period_seconds"]), **texts)


def filesystem_readings(path):
    """§5.3 readings of the filesystem holding ``path``: available bytes (to unprivileged users, as df), capacity,
    free inodes, inodes."""
    info = os.statvfs(path)
    return {"available": info.f_bavail * info.f_frsize, "capacity": info.f_blocks * info.f_frsize,
            "inodes_free": info.f_favail, "inodes": info.f_files}


def directory_usage(path, device):
    """(bytes allocated, inodes) under ``path`` on ``device`` (another filesystem mounted below is not this one's);
    files vanishing meanwhile are skipped. (0, 0) when ``path`` is absent."""
    used, inodes, seen = 0, 0, set()
    stack = [path]
    while stack:
        current = stack.pop()
        try:
            info = os.lstat(current)
        except OSError:
            continue
        if info.st_dev != device or (info.st_ino in seen and info.st_nlink > 1):
            continue
        seen.add(info.st_ino)
        used += info.st_blocks * 512
        inodes += 1
        if stat.S_ISDIR(info.st_mode):
            try:
                stack.extend(entry.path for entry in os.scandir(current))
            except OSError:
                continue
    return used, inodes


def pod_usage(config, pods, device):
    """{pod uid: {"used": bytes, "inodes_used": n}} from the pods' directories on the rootfs (below ``sysroot``)."""
    usage = {}
    for pod in pods:
        meta = pod.get("metadata") or {}
        names = {"uid": meta.get("uid") or "", "namespace": meta.get("namespace") or "", "name": meta.get("name") or ""}
        used = inodes = 0
        for template in config["eviction_rootfs_pod_dirs"]:
            more_used, more_inodes = directory_usage(below(config, template.format(**names)), device)
            used, inodes = used + more_used, inodes + more_inodes
        usage[names["uid"]] = {"used": used, "inodes_used": inodes}
    return usage


def below(config, path):
    return os.path.join(config["sysroot"], path.lstrip("/"))


def rootfs_plan(config, pods):
    """(plan, readings, met) for ``pods`` (running, on this node) under the ``eviction_rootfs_*`` settings of ``config``:
    shared by the agent's loop and the eviction_plan module."""
    root = below(config, config["eviction_rootfs_path"])
    readings = filesystem_readings(root)
    met = eviction.rootfs_threshold_met(readings, rootfs_thresholds(config))
    if not any(met):
        return eviction.Plan((), ()), readings, met
    usage = pod_usage(config, pods, os.stat(root).st_dev)
    plan = eviction.rootfs_top_eviction_pods(pods, usage, readings, rootfs_thresholds(config), int(config["eviction_top_n"]), met)
    return plan, readings, met


# the node conditions this loop manages (the others on the node, and their taints, are not its business)
MANAGED_CONDITIONS = (eviction.CONDITION_SYSTEM_ROOTFS,)
CONDITION_REASONS = {eviction.CONDITION_SYSTEM_ROOTFS: ("RootfsPressure", "NoRootfsPressure")}
CONDITION_CONFLICT_RETRIES = 3


def pressure_message(readings, met, thresholds):
    """The node condition's message: each threshold met, with its reading."""
    parts = []
    if met.free_met:
        parts.append("available.rootfs.system<%s: %s of %s bytes available"
                     % (eviction.describe_threshold(thresholds.minimum_free), readings.get("available"), readings.get("capacity")))
    if met.inodes_met:
        parts.append("free.inodes.rootfs.system<%s: %s of %s inodes free"
                     % (eviction.describe_threshold(thresholds.minimum_inodes_free), readings.get("inodes_free"), readings.get("inodes")))
    return "; ".join(parts) or "no rootfs threshold met"


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


def wanted_condition(current, name, in_force, message, stamp):
    """The node status condition ``name`` to write, or None when the node has it as wanted already.

    In force: status True (reason and message of the pressure); not in force: status False, written only over a True
    one (a node that never had the pressure gets no condition). ``lastTransitionTime`` moves only when the status
    does; the message is written with a status change only (a new reading each pass would be a write each pass)."""
    existing = next((c for c in current or [] if c.get("type") == name), None)
    status = "True" if in_force else "False"
    if existing is None and not in_force:
        return None
    if existing is not None and existing.get("status") == status:
        return None
    on_reason, off_reason = CONDITION_REASONS.get(name, (name, "No" + name))
    return {"type": name, "status": status, "reason": on_reason if in_force else off_reason,
            "message": message if in_force else "no threshold of %s met for the transition period" % name,
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

    def converge(self, conditions, message, now):
        """Feed the conditions met this pass; write what changed. Returns the names of what was written."""
        in_force = self.tracker.update(conditions, now)
        node = self.node()
        if node is None:
            return []
        written = []
        forced = {condition.name for condition in in_force}
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        changes = [wanted for wanted in (wanted_condition((node.get("status") or {}).get("conditions"), name, name in forced, message, stamp)
                                         for name in MANAGED_CONDITIONS) if wanted is not None]
        if changes:
            node = self.patch_conditions(node, changes)
            written.append("conditions")
            for change in changes:
                self.announce(change)
        if wanted_taints((node.get("spec") or {}).get("taints"), in_force) != ((node.get("spec") or {}).get("taints") or []):
            self.patch_taints(node, in_force)
            written.append("taints")
        return written

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


class RootfsEviction:
    """State and pass of the agent's eviction loop (rate limiter and cool-downs live as long as the agent)."""

    def __init__(self, agent):
        self.agent = agent
        config = agent.config
        self.limiter = eviction.EvictionRateLimiter(int(config["eviction_max_per_period"]), float(config["eviction_rate_period_seconds"]),
                                                    float(config["eviction_pod_cooldown_seconds"]))
        if config["eviction_enabled"]:
            rootfs_thresholds(config)       # a bad threshold stops the agent at its start, naming the option
        self.conditions = NodeConditions(agent, float(config["eviction_condition_transition_seconds"]))
        self.metrics = {}
        registry = agent.daemon.registry
        if prometheus_client is not None and registry is not None:
            self.metrics["evictions"] = prometheus_client.Counter(
                "katalyst_agent_evictions_total", "Pods the agent evicted (or, dry run, would have), by plugin and result",
                ["plugin", "result"], registry=registry)
            self.metrics["threshold_met"] = prometheus_client.Gauge(
                "katalyst_agent_eviction_threshold_met", "1 while an eviction threshold is met, by plugin and threshold",
                ["plugin", "threshold"], registry=registry)
            self.metrics["decision_seconds"] = prometheus_client.Histogram(
                "katalyst_agent_eviction_decision_seconds", "From reading the filesystem to the Eviction API call",
                buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=registry)

    def plan(self, pods):
        """(plan, readings, met, started): what the engine would evict now; the threshold gauges set."""
        started = time.monotonic()
        plan, readings, met = rootfs_plan(self.agent.config, pods)
        if self.metrics:
            self.metrics["threshold_met"].labels(eviction.PLUGIN_ROOTFS, "free").set(1 if met.free_met else 0)
            self.metrics["threshold_met"].labels(eviction.PLUGIN_ROOTFS, "inodes").set(1 if met.inodes_met else 0)
        return plan, readings, met, started

    def run_once(self):
        """One pass: plan, node condition and taint (not in a dry run), rate-limit, evict (or report, dry run). Raises when
        the node or an eviction could not be written (the loop counts it)."""
        agent = self.agent
        if not agent.config["eviction_enabled"] or agent.pods_unknown() or agent.kube is None:
            return
        pods = [p for p in agent.node_pods() if (p.get("status") or {}).get("phase") == "Running"
                and not (p.get("metadata") or {}).get("deletionTimestamp")]
        plan, readings, met, started = self.plan(pods)
        now = time.monotonic()
        failures = []
        if not agent.config["eviction_dry_run"]:
            try:
                self.conditions.converge(plan.conditions, pressure_message(readings, met, rootfs_thresholds(agent.config)), now)
            except KubeError as exc:
                failures.append("node condition: %s" % exc)
        allowed, deferred = self.limiter.admit(plan.evictions, now)
        for wanted in deferred:
            LOG.info("eviction of %s deferred (rate limit or cool-down): %s", wanted.pod_key, wanted.reason_message,
                     extra={"loop": "eviction", "target": wanted.pod_key})
        by_uid = {(p.get("metadata") or {}).get("uid"): p for p in pods}
        for wanted in allowed:
            failure = self.evict(wanted, by_uid.get(wanted.uid), started)
            if failure:
                self.limiter.release(wanted)
                failures.append(failure)
        if failures:
            raise KubeError("%d eviction pass write(s) failed: %s" % (len(failures), "; ".join(failures[:5])))

    def evict(self, wanted, pod, started):
        """Evict one pod (or report it, dry run); returns why it failed, or None."""
        agent, dry_run = self.agent, bool(self.agent.config["eviction_dry_run"])
        try:
            if dry_run:
                done = True
            else:
                if self.metrics:
                    self.metrics["decision_seconds"].observe(time.monotonic() - started)
                done = agent.kube.evict(wanted.name, wanted.namespace, wanted.grace_period_seconds)
        except KubeError as exc:
            result = "refused_by_budget" if exc.status == 429 else "error"
            self._count(wanted, result)
            if pod is not None and exc.status == 429:
                agent.warnings.report(agent.kube, pod, "EvictionBlocked", "%s; the Eviction API refused: %s" % (wanted.reason_message, exc),
                                      "eviction")
            return "%s: %s" % (wanted.pod_key, exc)
        if not done:
            self._count(wanted, "gone")
            return None
        self._count(wanted, "dry_run" if dry_run else "evicted")
        verb = "would evict (dry run)" if dry_run else "evicted"
        LOG.warning("%s %s: %s", verb, wanted.pod_key, wanted.reason_message, extra={"loop": "eviction", "target": wanted.pod_key})
        node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": agent.config["node_name"]}}
        reason = "EvictionDryRun" if dry_run else "Evicted"
        for involved, message in ((dict(pod, apiVersion="v1", kind="Pod") if pod else None, "%s by katalyst-agent: %s" % (verb, wanted.reason_message)),
                                  (node, "%s %s: %s" % (verb, wanted.pod_key, wanted.reason_message))):
            if involved is not None:
                agent.kube.emit_event(involved, reason, message, "Warning", "katalyst-agent", host=agent.config["node_name"])
        return None

    def _count(self, wanted, result):
        if self.metrics:
            self.metrics["evictions"].labels(wanted.plugin, result).inc()
