# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""The agent's ``eviction`` loop: evict pods under rootfs and memory pressure through the policy/v1 Eviction API.

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

The same pass also runs the §5.4 memory plugins, each behind its own switch (off by default, like Katalyst's plugins):

* ``eviction_numa_memory_enabled``: per NUMA node the Normal zone of ``/proc/zoneinfo`` (free, min, low, inactive file;
  without it the node's ``meminfo`` MemFree/MemTotal and ``vm.watermark_scale_factor``) feeds ``NumaPressure``; the
  victims are ranked by their per-NUMA usage (the containers' ``memory.numa_stat``, agent_numa's reader).
* ``eviction_system_memory_enabled``: ``/proc/meminfo`` MemFree below MemTotal x watermark_scale_factor / 10000 evicts
  reclaimed pods and puts the ``MemoryPressure`` condition (a taint, see below) on the node; with
  ``eviction_system_memory_kswapd_enabled`` a kswapd steal rate (``/proc/vmstat`` ``pgsteal_kswapd*``) over 2000 pages/s
  for 120 s evicts any pod.
* ``eviction_reclaimed_resources_enabled``: the reclaimed pods' reclaimed_millicpu / reclaimed_memory requests over 5x
  this node's CNR ``status.resources.allocatable`` evict the reclaimed pod with the largest request.

The plugins' plans are merged (``eviction.merge_plans``: a pod wanted by several plugins is evicted once, by the first)
and go through the same rate limiter, Eviction API path and Events. ``MemoryPressure`` is a node status condition type
the kubelet owns (it rewrites it on each status update), so that condition is carried by its taint
``node.katalyst.kubewharf.io/MemoryPressure:NoSchedule`` and Node Events only, as Katalyst reports its conditions.
"""

from __future__ import annotations

import logging
import os
import stat
import time

from .agent_numa import container_dicts, read_numa_stat, read_scale_factor
from .node_conditions import NodeConditions
from .service import prometheus_client
from .. import cnr, eviction, nodeinfo
from ..kube import KubeError
from ..quantity import parse_quantity
from ..sysfs import SysFSError


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
    # how long a node condition (SystemRootfs, MemoryPressure) and its taint stay after last met (--eviction-condition-transition-period)
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
    # §5.4 memory plugins, each off by default (Katalyst's plugins are opt-in)
    "eviction_numa_memory_enabled": False,
    "eviction_numa_free_below_watermark_times_threshold": eviction.NUMA_T_NON_RECLAIMED,
    "eviction_numa_free_below_watermark_times_reclaimed_threshold": eviction.NUMA_T_RECLAIMED,
    "eviction_system_memory_enabled": False,
    # Katalyst's SystemFreeMemoryThresholdMinimum: the free-memory threshold is at least this (a quantity; "0" by default)
    "eviction_system_free_memory_threshold_minimum": "0",
    # Katalyst defines the kswapd steal-rate detector but does not call it at the pinned commit: off unless asked
    "eviction_system_memory_kswapd_enabled": False,
    "eviction_reclaimed_resources_enabled": False,
    # how often the reclaimed-resource plugin reads this node's CNR (its allocatable changes with the reporter's writes)
    "eviction_cnr_refresh_seconds": 30,
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
    thresholds = rootfs_thresholds(config)
    met = eviction.rootfs_threshold_met(readings, thresholds)
    if not any(met):
        return eviction.Plan((), ()), readings, met
    usage = pod_usage(config, pods, os.stat(root).st_dev)
    plan = eviction.rootfs_top_eviction_pods(pods, usage, readings, thresholds, int(config["eviction_top_n"]), met)
    return plan, readings, met


# --- §5.4 memory readings (malachite's metrics, read from the node's files below sysroot) ---------------------------

ZONE_FIELDS = ("free", "min", "low")


def parse_zoneinfo(text):
    """``/proc/zoneinfo`` -> ``{numa id: {"free", "min", "low"[, "inactive_file"]}}`` in pages, of each node's Normal
    zone (``pages free``, the ``min`` and ``low`` watermarks, ``nr_zone_inactive_file``); a Normal zone missing one of
    free/min/low is left out (that NUMA node falls back to its meminfo, as Katalyst does without zoneinfo)."""
    zones, current = {}, None
    for line in (text or "").splitlines():
        fields = line.replace(",", " ").split()
        if len(fields) >= 4 and fields[0] == "Node" and fields[2] == "zone":
            current = {} if fields[3] == "Normal" and fields[1].isdigit() else None
            if current is not None:
                zones[int(fields[1])] = current
        elif current is not None and len(fields) == 3 and fields[:2] == ["pages", "free"] and fields[2].isdigit():
            current["free"] = int(fields[2])
        elif current is not None and len(fields) == 2 and fields[1].isdigit():
            name = "inactive_file" if fields[0] == "nr_zone_inactive_file" else fields[0]
            if name in ("min", "low", "inactive_file"):
                current.setdefault(name, int(fields[1]))
    return {numa: zone for numa, zone in zones.items() if all(field in zone for field in ZONE_FIELDS)}


def numa_memory_readings(fs, numa_ids, page_size=eviction.DEFAULT_PAGE_SIZE):
    """``{numa id: reading}`` for ``NumaPressure.update``: the Normal zone of ``/proc/zoneinfo`` (its inactive file
    pages from the node's ``meminfo`` when the zone has no ``nr_zone_inactive_file``), the node's MemFree and MemTotal
    and ``vm.watermark_scale_factor`` for the fallback."""
    zones = parse_zoneinfo(fs.read_text("/proc/zoneinfo", default=""))
    scale = read_scale_factor(fs)
    readings = {}
    for numa in numa_ids:
        meminfo = nodeinfo.parse_node_meminfo(fs.read_text("/sys/devices/system/node/node%d/meminfo" % numa, default=""))
        zone = zones.get(numa)
        if zone is not None and "inactive_file" not in zone:
            zone = dict(zone, inactive_file=meminfo["Inactive(file)"] // page_size) if "Inactive(file)" in meminfo else None
        readings[numa] = {"zoneinfo": zone, "free": meminfo.get("MemFree"), "total": meminfo.get("MemTotal"), "scale_factor": scale}
    return readings


def system_memory_readings(fs):
    """(MemFree, MemTotal) of ``/proc/meminfo`` in bytes (None when absent) and ``vm.watermark_scale_factor``."""
    meminfo = nodeinfo.parse_meminfo(fs.read_text("/proc/meminfo", default=""))
    return meminfo.get("MemFree"), meminfo.get("MemTotal"), read_scale_factor(fs)


def kswapd_steal(fs):
    """Pages kswapd has stolen (the ``pgsteal_kswapd*`` lines of ``/proc/vmstat`` summed); None without the file or lines."""
    values = [int(fields[1]) for fields in (line.split() for line in fs.read_text("/proc/vmstat", default="").splitlines())
              if len(fields) == 2 and fields[0].startswith("pgsteal_kswapd") and fields[1].isdigit()]
    return sum(values) if values else None


def pod_memory_usage(fs, facts, pods, driver, cgroup_prefix, numa_stat=read_numa_stat):
    """``({numa id: {uid: bytes}}, {uid: bytes})``: each pod's memory per NUMA node (its containers' ``memory.numa_stat``,
    mem.total.numa.container summed) and in all (``memory.usage_in_bytes`` / ``memory.current``, else the NUMA sum). A
    pod without a container cgroup has no reading."""
    per_numa, usage = {}, {}
    for container in container_dicts(pods, facts, fs, driver, cgroup_prefix, numa_stat):
        metrics, uid = container["metrics"], container["pod_uid"]
        if "numa_total" not in metrics:
            continue
        for numa, amount in metrics["numa_total"].items():
            per_numa.setdefault(numa, {})[uid] = per_numa.get(numa, {}).get(uid, 0) + amount
        usage[uid] = usage.get(uid, 0) + metrics.get("usage", sum(metrics["numa_total"].values()))
    return per_numa, usage


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


class EvictionManager:
    """State and pass of the agent's eviction loop (rate limiter and cool-downs live as long as the agent)."""

    def __init__(self, agent):
        self.agent = agent
        config = agent.config
        self.limiter = eviction.EvictionRateLimiter(int(config["eviction_max_per_period"]), float(config["eviction_rate_period_seconds"]),
                                                    float(config["eviction_pod_cooldown_seconds"]))
        if config["eviction_enabled"]:
            rootfs_thresholds(config)       # a bad threshold stops the agent at its start, naming the option
            try:
                parse_quantity(str(config["eviction_system_free_memory_threshold_minimum"]))
            except ValueError as exc:
                raise ValueError("eviction_system_free_memory_threshold_minimum: %s" % exc) from None
        self.conditions = NodeConditions(agent, float(config["eviction_condition_transition_seconds"]))
        self.numa_pressure = eviction.NumaPressure(int(config["eviction_numa_free_below_watermark_times_threshold"]),
                                                   int(config["eviction_numa_free_below_watermark_times_reclaimed_threshold"]))
        self.kswapd = eviction.KswapdRateDetector()
        self.cnr, self.cnr_read_at = None, None
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
        config = self.agent.config
        if all(config["eviction_rootfs_" + name] in (None, "") for name in ("minimum_free", "minimum_inodes_free")):
            # no rootfs threshold that can be met: nothing to read (the memory plugins may run alone)
            plan, readings, met = eviction.Plan((), ()), {}, eviction.RootfsMet(False, False)
        else:
            plan, readings, met = rootfs_plan(config, pods)
        if self.metrics:
            self.metrics["threshold_met"].labels(eviction.PLUGIN_ROOTFS, "free").set(1 if met.free_met else 0)
            self.metrics["threshold_met"].labels(eviction.PLUGIN_ROOTFS, "inodes").set(1 if met.inodes_met else 0)
        return plan, readings, met, started

    def _gauge(self, plugin, threshold, met):
        if self.metrics:
            self.metrics["threshold_met"].labels(plugin, threshold).set(1 if met else 0)

    def _usage(self, pods):
        agent = self.agent
        numa = getattr(agent, "numa", None)
        return pod_memory_usage(agent.sysfs, agent.node_facts(), pods, agent.config["cgroup_driver"], agent.cgroup_prefix(),
                                numa.numa_stat if numa is not None else read_numa_stat)

    def numa_memory_plan(self, pods):
        """(plan, {}): §5.4 NUMA pressure; the counters advance every pass, the pods' usage is read only under pressure."""
        agent = self.agent
        numa_ids = [numa["id"] for numa in agent.node_facts()["numa_nodes"]]
        actions = self.numa_pressure.update(numa_memory_readings(agent.sysfs, numa_ids))
        for error in self.numa_pressure.errors:
            LOG.debug("numa memory pressure: %s", error, extra={"loop": "eviction"})
        for numa_id, action in actions.items():
            self._gauge(eviction.PLUGIN_NUMA_MEMORY, "numa%s" % numa_id, action != eviction.ACTION_NONE)
        if all(action == eviction.ACTION_NONE for action in actions.values()):
            return eviction.Plan((), ()), {}
        totals = {numa["id"]: numa.get("memory_bytes") for numa in agent.node_facts()["numa_nodes"]}
        per_numa = self._usage(pods)[0]
        return eviction.numa_eviction_plan(pods, actions, totals, per_numa, int(agent.config["eviction_top_n"]),
                                           watermarks=self.numa_pressure.watermarks), {}

    def system_memory_plan(self, pods):
        """(plan, messages): §5.4 system free memory below the watermark (and, if enabled, sustained kswapd stealing)."""
        agent = self.agent
        fs = agent.sysfs
        free, total, scale = system_memory_readings(fs)
        kswapd = False
        if agent.config["eviction_system_memory_kswapd_enabled"]:
            kswapd = self.kswapd.update(kswapd_steal(fs), time.monotonic())
            self._gauge(eviction.PLUGIN_SYSTEM_MEMORY, "kswapd", kswapd)
        if free is None or total is None:
            raise SysFSError("/proc/meminfo: no MemFree or MemTotal")
        minimum = parse_quantity(str(agent.config["eviction_system_free_memory_threshold_minimum"])).value()
        pressure = eviction.system_memory_pressure(free, total, scale, minimum)
        self._gauge(eviction.PLUGIN_SYSTEM_MEMORY, "free", pressure)
        if not pressure and not kswapd:
            return eviction.Plan((), ()), {}
        plan = eviction.system_memory_pressure_plan(pods, free, total, scale, self._usage(pods)[1], int(agent.config["eviction_top_n"]),
                                                    kswapd_pressure=kswapd, minimum=minimum)
        message = "mem.free.system<max(%d, MemTotal*watermark_scale_factor/10000)=%d: %d of %d bytes free, kswapd pressure %s" % (
            minimum, eviction.system_memory_threshold(total, scale, minimum), free, total, kswapd)
        return plan, {eviction.CONDITION_MEMORY_PRESSURE: message}

    def reclaimed_resources_plan(self, pods):
        """(plan, {}): §5.4 the reclaimed pods' requests over 5x this node's CNR reclaimed allocatable."""
        agent, now = self.agent, time.monotonic()
        if self.cnr_read_at is None or now - self.cnr_read_at >= float(agent.config["eviction_cnr_refresh_seconds"]):
            self.cnr = agent.kube.get(cnr.CNR_API_VERSION, cnr.CNR_KIND, agent.config["node_name"])
            self.cnr_read_at = now
        allocatable = (((self.cnr or {}).get("status") or {}).get("resources") or {}).get("allocatable")
        met = eviction.reclaimed_resource_threshold_met(pods, allocatable) if allocatable else None
        for name in (eviction.RECLAIMED_MILLICPU, eviction.RECLAIMED_MEMORY):
            self._gauge(eviction.PLUGIN_RECLAIMED_RESOURCES, name.rsplit("/", 1)[-1], met is not None and met.resource == name)
        return eviction.reclaimed_resource_plan(pods, met, int(agent.config["eviction_top_n"])), {}

    def memory_plans(self, pods, failures):
        """The enabled memory plugins' (plan, messages); a plugin whose readings fail is left out this pass (in ``failures``)."""
        config, out = self.agent.config, []
        for switch, plugin, planner in (("eviction_numa_memory_enabled", eviction.PLUGIN_NUMA_MEMORY, self.numa_memory_plan),
                                        ("eviction_system_memory_enabled", eviction.PLUGIN_SYSTEM_MEMORY, self.system_memory_plan),
                                        ("eviction_reclaimed_resources_enabled", eviction.PLUGIN_RECLAIMED_RESOURCES,
                                         self.reclaimed_resources_plan)):
            if not config[switch]:
                continue
            try:
                out.append(planner(pods))
            except (KubeError, SysFSError, OSError, ValueError) as exc:
                failures.append("%s: %s" % (plugin, exc))
        return out

    def run_once(self):
        """One pass: every enabled plugin's plan, merged (a pod once), node conditions and taints (not in a dry run),
        rate-limit, evict (or report, dry run). Raises when a plugin's readings, the node or an eviction could not be read
        or written (the loop counts it); the other plugins still ran."""
        agent = self.agent
        if agent.kube is None:
            return
        if not agent.config["eviction_enabled"]:
            # switched off by a reload: a condition or taint set before must not outlive the loop that would lift it
            self.conditions.release(time.monotonic(), "the agent's eviction is switched off")
            return
        if agent.pods_unknown():
            return
        pods = [p for p in agent.node_pods() if (p.get("status") or {}).get("phase") == "Running"
                and not (p.get("metadata") or {}).get("deletionTimestamp")]
        failures = []
        try:
            rootfs, readings, met, started = self.plan(pods)
        except OSError as exc:
            failures.append("%s: %s" % (eviction.PLUGIN_ROOTFS, exc))
            rootfs, readings, met, started = eviction.Plan((), ()), {}, eviction.RootfsMet(False, False), time.monotonic()
        messages = {eviction.CONDITION_SYSTEM_ROOTFS: pressure_message(readings, met, rootfs_thresholds(agent.config))}
        plans = [rootfs]
        for plan, more in self.memory_plans(pods, failures):
            plans.append(plan)
            messages.update(more)
        plan = eviction.merge_plans(plans)
        now = time.monotonic()
        try:
            if agent.config["eviction_dry_run"]:
                # a dry run only reports; what a live run set before is lifted
                self.conditions.release(now, "the agent's eviction is in dry-run mode")
            else:
                self.conditions.converge(plan.conditions, messages, now)
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
            raise KubeError("%d eviction pass read(s) or write(s) failed: %s" % (len(failures), "; ".join(failures[:5])))

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
