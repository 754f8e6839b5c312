# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""The agent's NUMA loops: reclaimed resources into the CNR, memory provisioning, NUMA binding.

The decisions are the engine's (``headroom``, ``cnr``, ``memprovision``, ``placement``); this module only
gathers their inputs from the node (``nodeinfo`` facts and cgroup/proc files through a SysFS, pods from
the agent's informer) and applies the Plans. ``NumaLoops`` keeps the state the loops need between
passes (the two ``ReclaimedReporter`` windows, the previous CPU counters, the CNR last read or written).

Readings that a node does not have (no ``/proc/stat``, no cgroup for a pod yet, no ``memory.numa_stat``)
count as idle / unused / absent, and the reason is logged once; the loops never crash on them. A
``memory.numa_stat`` that exists but cannot be parsed (``NumaStatError``, naming the file and quoting it) is
logged once per content and that cgroup's last good reading is used (absent when it never had one); a malformed
``numa_bind_result`` is reported once per value (log line and Warning Event on the pod), the pod is not pinned
or moved, and the other pods go on.
"""

from __future__ import annotations

import collections
import logging
import math
import re
import time

from .. import cgroups, cnr, headroom, memorypressure, memprovision, nodeinfo, placement, podcgroups
from ..kube import KubeError
from ..podview import AffinityError, as_view, pod_view
from ..qos import NUMA_BIND_RESULT_KEY
from ..quantity import parse_quantity
from ..reconcile import Change, Plan, PlanError
from .pod_events import PodWarnings, pod_uid

LOG = logging.getLogger("katalyst.agent.numa")

# Seconds between two page-cache drops of the reclaimed containers of one NUMA node in DropCache: dropping is costly
# (the kernel scans the whole cgroup) and the free memory reading lags the drop by a pass or two.
DROP_CACHE_COOLDOWN_SECONDS = 300
# --memory-advisor-min-critical-watermark (the pressure states' floor of the critical watermark)
MIN_CRITICAL_WATERMARK = "4Gi"
# --memory-resource-plugin-reserved (GB), taken per NUMA node (ceil(GB/numNUMA) GiB) from the NUMA zones' allocatable memory
RESERVED_GB = 0
# the agent's settings of these (agent.py merges them into its DEFAULTS); read with config.get, so a partial config works
DEFAULTS = {"memory_drop_cache_cooldown_seconds": DROP_CACHE_COOLDOWN_SECONDS,
            "memory_advisor_min_critical_watermark": MIN_CRITICAL_WATERMARK,
            "memory_resource_plugin_reserved_gb": RESERVED_GB}

# the kubelet's topologyManagerPolicy x topologyManagerScope -> CNR status.topologyPolicy (GenerateTopologyPolicy)
TOPOLOGY_POLICIES = {"single-numa-node": "SingleNUMANode", "restricted": "Restricted", "best-effort": "BestEffort",
                     "numeric": "Numeric"}


def generate_topology_policy(policy, scope):
    """Katalyst's ``GenerateTopologyPolicy``: ``none`` or an unknown policy/scope gives ``None``."""
    prefix = TOPOLOGY_POLICIES.get(str(policy or "none").lower())
    level = {"container": "ContainerLevel", "pod": "PodLevel"}.get(str(scope or "container").lower())
    if prefix is None or level is None:
        return "None"
    return prefix + level


def kubelet_topology_policy(fs):
    """The CNR ``topologyPolicy`` from the kubelet configuration in the sysroot."""
    text = fs.read_text("/var/lib/kubelet/config.yaml", default="")
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("topologyManagerPolicy", "topologyManagerScope"):
            values[key.strip()] = value.strip().strip("'\"")
    return generate_topology_policy(values.get("topologyManagerPolicy"), values.get("topologyManagerScope"))


# -- readings ---------------------------------------------------------------------------------------
def numa_metrics_from_facts(facts):
    """``{numa id: {"free", "total", "inactive_file"}}`` (bytes) from ``nodeinfo.gather``."""
    return {n["id"]: {"free": n.get("memory_free_bytes", 0), "total": n.get("memory_bytes", 0),
                      "inactive_file": n.get("inactive_file_bytes", 0)} for n in facts["numa_nodes"]}


def require_numa_memory(fs, facts):
    """ValueError naming the file when an online NUMA node's ``meminfo`` exists but holds no MemTotal (empty or cut):
    reporting or provisioning from it would publish that NUMA node without memory; the pass fails (logged, counted)
    and the last report stays until the reading is back. (A memoryless node says ``MemTotal: 0 kB``; a kernel without
    NUMA has no such file: both are fine.)"""
    empty = []
    for numa in facts["numa_nodes"]:
        path = "/sys/devices/system/node/node%d/meminfo" % numa["id"]
        if fs.exists(path) and "MemTotal" not in nodeinfo.parse_node_meminfo(fs.read_text(path, default="")):
            empty.append(path)
    if empty:
        raise ValueError("no MemTotal in %s: NUMA memory unknown, nothing reported or provisioned" % ", ".join(empty))


def numa_socket_ids(facts):
    return {n["id"]: n.get("socket", 0) for n in facts["numa_nodes"]}


def read_scale_factor(fs):
    """``vm.watermark_scale_factor`` (node metric ``mem.scale.factor.system``)."""
    return fs.read_int("/proc/sys/vm/watermark_scale_factor", default=10)


class NumaStatError(ValueError):
    """A ``memory.numa_stat`` that is not in the kernel's format; the message names the file and quotes the content."""


_NUMA_AMOUNT = re.compile(r"^N([0-9]+)=([0-9]+)$")
_V1_TOTAL = re.compile(r"^([a-z][a-z0-9_]*)=([0-9]+)$")
_V2_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def parse_numa_stat(text, version, source="memory.numa_stat"):
    """``memory.numa_stat`` -> ``{numa id: bytes}`` (v1 ``total=`` line in pages; v2 anon + file + unevictable in bytes,
    as malachite's ``ParseCgroupNumaValue``; ``unevictable`` is optional: kernels before 5.x lack it).

    Empty text (the file does not exist) gives ``{}``. NumaStatError naming ``source`` and quoting the content
    when a line is not in the kernel's format (v1 ``name=<pages> N0=<pages> ...``, v2 ``name N0=<bytes> ...``)
    or a line the reading needs (v1 ``total``, v2 ``anon`` and ``file``) is missing.
    """
    if not (text or "").strip():
        return {}

    def malformed(reason):
        quoted = text if len(text) <= 300 else text[:300] + "..."
        return NumaStatError("%s: malformed memory.numa_stat (cgroup %s), %s: %r" % (source, version, reason, quoted))

    needed = {"total"} if version == "v1" else {"anon", "file"}
    usage, seen = {}, set()
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        head = (_V1_TOTAL if version == "v1" else _V2_NAME).match(fields[0])
        if head is None:
            raise malformed("line %d starts with %r, not %s" % (number, fields[0], "name=<pages>" if version == "v1" else "a name"))
        amounts = []
        for field in fields[1:]:
            match = _NUMA_AMOUNT.match(field)
            if match is None:
                raise malformed("line %d: %r is not N<id>=<amount>" % (number, field))
            amounts.append((int(match.group(1)), int(match.group(2))))
        name = head.group(1) if version == "v1" else fields[0]
        if name not in needed and (version == "v1" or name != "unevictable"):
            continue
        seen.add(name)
        for numa, amount in amounts:
            usage[numa] = usage.get(numa, 0) + amount * (4096 if version == "v1" else 1)
    if not needed <= seen:
        raise malformed("no %s line" % " or ".join(sorted(needed - seen)))
    return usage


def parse_proc_stat(text):
    """``/proc/stat`` per-CPU lines -> ``{cpu: (busy jiffies, total jiffies)}``."""
    counters = {}
    for line in (text or "").splitlines():
        fields = line.split()
        if not fields or not fields[0].startswith("cpu") or fields[0] == "cpu" or not fields[0][3:].isdigit():
            continue
        values = [int(v) for v in fields[1:9] if v.isdigit()]
        idle = sum(values[3:5])
        counters[int(fields[0][3:])] = (sum(values) - idle, sum(values))
    return counters


def usage_ratios(previous, current):
    """Busy ratio per CPU between two ``parse_proc_stat`` samples (CPUs without a delta are left out = idle)."""
    ratios = {}
    for cpu, (busy, total) in current.items():
        if cpu in previous and total > previous[cpu][1]:
            ratios[cpu] = min(max(float(busy - previous[cpu][0]) / float(total - previous[cpu][1]), 0.0), 1.0)
    return ratios


def _memory_base(version):
    return "/sys/fs/cgroup" if version == "v2" else "/sys/fs/cgroup/memory"


def _cgroup_version(facts):
    return "v2" if facts["cgroup"]["mode"] == "v2" else "v1"


def read_numa_stat(fs, path, version):
    """``parse_numa_stat`` of the cgroup directory ``path`` (NumaStatError when the file is malformed)."""
    source = path + "/memory.numa_stat"
    return parse_numa_stat(fs.read_text(source, default=""), version, source)


def read_container_metrics(fs, path, version, numa_ids, numa_stat=read_numa_stat):
    """Memory metrics of one cgroup (``rss``, ``cache``, ``shmem``, ``usage``, ``numa_total``); {} when it does not exist.

    ``numa_stat(fs, path, version)`` reads ``memory.numa_stat`` (``NumaLoops.numa_stat`` keeps the last good reading
    of a malformed file; None counts as no reading).
    """
    if not fs.isdir(path):
        return {}
    stat = {}
    for line in fs.read_text(path + "/memory.stat", default="").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            stat[parts[0]] = int(parts[1])
    metrics = {}
    names = {"rss": ("total_rss", "rss"), "cache": ("total_cache", "cache"), "shmem": ("total_shmem", "shmem")}
    if version == "v2":
        names = {"rss": ("anon",), "cache": ("file",), "shmem": ("shmem",)}
    for metric, keys in names.items():
        for key in keys:
            if key in stat:
                metrics[metric] = stat[key]
                break
    usage = fs.read_text(path + ("/memory.current" if version == "v2" else "/memory.usage_in_bytes"), default="")
    if usage.isdigit():
        metrics["usage"] = int(usage)
    numa = numa_stat(fs, path, version) or {}
    metrics["numa_total"] = {n: numa.get(n, 0) for n in numa_ids}
    return metrics


def bind_result(pod):
    """NUMA ids of the pod's ``numa_bind_result`` as a list (None when absent or malformed: ``PodView.bind_result``);
    ``pod``: a pod or its PodView."""
    numas = as_view(pod).bind_result
    return None if numas is None else list(numas)


def container_dicts(pods, facts, fs, driver="cgroupfs", cgroup_prefix="", numa_stat=read_numa_stat):
    """The engine's container dicts (see ``headroom``) for the pods (or their PodViews) on this node, with real cgroup
    metrics (``numa_stat``: see ``read_container_metrics``)."""
    numa_ids = [n["id"] for n in facts["numa_nodes"]]
    version = _cgroup_version(facts)
    base = _memory_base(version) + cgroup_prefix
    out = []
    for pod in pods:
        view = as_view(pod)
        if not view.uid:
            continue
        level = view.qos_level
        bound = bind_result(view)
        binding, exclusive = view.numa_binding, view.numa_exclusive
        paths = podcgroups.container_cgroup_paths(view, driver)
        main = view.main_container_name
        running = view.phase == "Running"
        for container in view.containers:
            name = container.name
            metrics = {}
            if name in paths:
                metrics = read_container_metrics(fs, base + paths[name], version, numa_ids, numa_stat)
            if level == headroom.RECLAIMED_CORES and "numa_total" not in metrics:
                metrics["numa_total"] = {n: 0 for n in numa_ids}     # no cgroup yet: it uses no memory
            assignments = bound if bound else (None if binding else list(numa_ids))
            out.append({"pod_uid": view.uid, "container_name": name, "qos_level": level, "main": name == main,
                        "memory_request": container.memory_request_bytes, "numa_assignments": assignments,
                        "ramp_up": not running or (binding and not bound), "numa_exclusive": exclusive,
                        "numa_hint": bound if level == headroom.RECLAIMED_CORES and bound else [],
                        "metrics": metrics})
    return out


def reclaim_pool_cpus(facts, pods):
    """The reclaim pool per NUMA: the NUMA's CPUs minus whole CPUs held by dedicated_cores pods bound there
    (``pods``: pods or their PodViews)."""
    held = {}
    for pod in pods:
        view = as_view(pod)
        numas = view.bind_result
        if not numas or view.qos_level != headroom.DEDICATED_CORES or not view.pod_is_active:
            continue
        cpus = view.requests.get("cpu", 0)
        for numa in numas:
            held[numa] = held.get(numa, 0) + int(math.ceil(cpus / 1000.0 / len(numas)))
    pool = {}
    for numa in facts["numa_nodes"]:
        cpus = nodeinfo.parse_cpu_list(numa["cpus"])
        pool[numa["id"]] = cpus[held.get(numa["id"], 0):]
    return pool


def binding_numas(pods):
    """NUMAs with a NUMA-bound non-system pod (dedicated, or shared/reclaimed with a ``numa_bind_result``); ``pods``:
    pods or their PodViews."""
    numas = set()
    for pod in pods:
        view = as_view(pod)
        if view.pod_is_active and view.qos_level != headroom.SYSTEM_CORES:
            numas.update(view.bind_result or [])
    return numas


def read_cpu_cgroup(fs, version, relative):
    """``(cumulative usage in seconds or None, quota, period)`` of a cgroup."""
    if version == "v2":
        path = "/sys/fs/cgroup" + relative
        usage = None
        for line in fs.read_text(path + "/cpu.stat", default="").splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == "usage_usec" and parts[1].isdigit():
                usage = int(parts[1]) / 1e6
        quota_text, _sep, period_text = fs.read_text(path + "/cpu.max", default="max 100000").partition(" ")
        quota = int(quota_text) if quota_text.isdigit() else None
        period = int(period_text) if period_text.strip().isdigit() else None
        return usage, quota, period
    text = fs.read_text("/sys/fs/cgroup/cpuacct%s/cpuacct.usage" % relative, default="")
    usage = int(text) / 1e9 if text.isdigit() else None
    quota_text = fs.read_text("/sys/fs/cgroup/cpu%s/cpu.cfs_quota_us" % relative, default="-1")
    period_text = fs.read_text("/sys/fs/cgroup/cpu%s/cpu.cfs_period_us" % relative, default="")
    quota = int(quota_text) if quota_text.lstrip("-").isdigit() and int(quota_text) > 0 else None
    return usage, quota, int(period_text) if period_text.isdigit() else None


class NumaLoops:
    """State and passes of the three NUMA loops of one agent."""

    def __init__(self, node_name):
        self.node_name = node_name
        self.reporters = {}
        self.reporter_settings = None
        self.cpu_previous = None
        self.cgroup_previous = {}
        self.cnr = None
        self.cnr_read_at = None
        self.cnr_unserved = False
        self.warnings = PodWarnings(node_name)
        self.binding_failures = []                           # "<pod>: why" of the last numa_binding pass
        self.notes = set()
        self.numa_stat_good = collections.OrderedDict()      # cgroup path -> last good memory.numa_stat reading
        self.numa_stat_reported = collections.OrderedDict()  # (file, content) of malformed files already logged
        self.last_status = None
        self.last_limits = None
        self.written_limits = None                           # last_limits once the cgroups held them (not while they are missing)
        self.last_reclaimed = None                           # the last revise_reclaimed result that went into the CNR status
        self.last_pressure = None                            # {"node": PressureCondition, "numa": {numa: PressureCondition}}
        self.drop_cache_at = {}                              # numa -> monotonic time of its last page-cache drop

    def note(self, message):
        """Log a degraded reading once."""
        if message not in self.notes:
            self.notes.add(message)
            LOG.info(message, extra={"loop": "numa"})

    def numa_stat(self, fs, path, version):
        """``read_numa_stat`` of one cgroup; a malformed file is logged once per content (naming the file and
        quoting it) and the cgroup's last good reading is returned instead (None when it never had one)."""
        try:
            usage = read_numa_stat(fs, path, version)
        except NumaStatError as exc:
            key = (path, str(exc))
            if key not in self.numa_stat_reported:
                self.numa_stat_reported[key] = True
                while len(self.numa_stat_reported) > 1024:
                    self.numa_stat_reported.popitem(last=False)
                kept = self.numa_stat_good.get(path)
                LOG.warning("%s; %s", exc, "its last good reading is kept" if kept is not None else "it counts as not readable",
                            extra={"loop": "numa"})
            return self.numa_stat_good.get(path)
        if usage:
            self.numa_stat_good[path] = usage
            self.numa_stat_good.move_to_end(path)
            while len(self.numa_stat_good) > 4096:
                self.numa_stat_good.popitem(last=False)
        return usage

    def report_bind_results(self, kube, pods):
        """Report each malformed ``numa_bind_result`` once per value; the loops read it as absent and go on."""
        for pod, problem in placement.bind_result_problems(pods):
            self.report(kube, pod, "InvalidNUMABindResult", problem)

    # -- reclaimed resources ----------------------------------------------------------------------
    def reporter(self, resource, config):
        settings = (float(config["reclaimed_resources_period_seconds"]), float(config["reclaimed_window_seconds"]))
        if settings != self.reporter_settings:
            self.reporters, self.reporter_settings = {}, settings
        if resource not in self.reporters:
            period, window = settings
            self.reporters[resource] = headroom.ReclaimedReporter(resource, size=max(int(round(window / period)), 1),
                                                                  ttl=2 * window)
        return self.reporters[resource]

    def cpu_readings(self, fs, facts, config, now):
        """Per-CPU busy ratios and the reclaimed cgroups' usage (cores) since the previous pass."""
        current = parse_proc_stat(fs.read_text("/proc/stat", default=""))
        if not current:
            self.note("no /proc/stat in the sysroot: CPUs count as idle")
        ratios = usage_ratios(self.cpu_previous or {}, current)
        self.cpu_previous = current
        version = _cgroup_version(facts)
        root, per_numa = cgroups.reclaim_paths(config["cgroup_driver"], config["reclaim_root"], [n["id"] for n in facts["numa_nodes"]])
        readings = {}
        for key, relative in [("root", root)] + sorted(per_numa.items()):
            usage, quota, period = read_cpu_cgroup(fs, version, relative)
            cores = 0.0
            previous = self.cgroup_previous.get(key)
            if usage is not None and previous is not None and now > previous[1]:
                cores = max(usage - previous[0], 0.0) / (now - previous[1])
            if usage is not None:
                self.cgroup_previous[key] = (usage, now)
            readings[key] = {"usage": cores, "quota": quota, "period": period}
        return {"cpu_usage_ratio": ratios, "cgroups": readings}

    def desired_status(self, fs, facts, pods, config, now):
        """The CNR status (reclaimed resources and NUMA zones) or None while the windows fill."""
        pods = [pod_view(p) for p in pods]      # each pod read once for every engine below
        pods_by_uid = {p.uid: p for p in pods}
        containers = container_dicts(pods, facts, fs, config["cgroup_driver"], config["cgroup_root"].rstrip("/"), self.numa_stat)
        all_numas = [n["id"] for n in facts["numa_nodes"]]
        sockets = numa_socket_ids(facts)
        metrics = numa_metrics_from_facts(facts)
        enable = bool(config["reclaim_enabled"])
        scale = read_scale_factor(fs)
        reserved = parse_quantity(str(config["reserved_memory_for_allocate"])).value()
        if config["reclaimed_memory_policy"] == "numa-aware":
            version = _cgroup_version(facts)
            root, per_numa = cgroups.reclaim_paths(config["cgroup_driver"], config["reclaim_root"], all_numas)
            limits = {}
            for key, relative in [("root", root)] + sorted(per_numa.items()):
                text = fs.read_text(_memory_base(version) + relative + ("/memory.max" if version == "v2" else "/memory.limit_in_bytes"),
                                    default="")
                limits[key] = int(text) if text.isdigit() else cgroups.V1_MAX
            memory = headroom.memory_headroom_numa_aware(containers, pods_by_uid, all_numas, sockets, metrics, scale, reserved,
                                                         enable_reclaim=enable, reclaim_limits=limits)
        else:
            memory = headroom.memory_headroom_canonical(containers, pods_by_uid, all_numas, sockets, metrics, facts["memory_bytes"],
                                                        {n["id"]: n.get("memory_bytes", 0) for n in facts["numa_nodes"]}, reserved,
                                                        enable_reclaim=enable)
        avail, _reclaimed = headroom.get_available_numas_and_reclaimed(containers, pods_by_uid, all_numas, sockets, enable)
        readings = self.cpu_readings(fs, facts, config, now)
        cpu = headroom.cpu_headroom(enable, reclaim_pool_cpus(facts, pods), avail, binding_numas(pods), readings)
        reports = {}
        for resource, result in (("cpu", cpu), ("memory", memory)):
            reporter = self.reporter(resource, config)
            report = reporter.sync(result["total"], result["numa"], now, enable_reclaim=enable, numa_ids=all_numas)
            reports[resource] = report if report is not None else reporter.last
        if reports["cpu"] is None or reports["memory"] is None:
            return None
        reclaimed = cnr.revise_reclaimed(**headroom.reclaimed_report_maps(reports["cpu"], reports["memory"]))
        self.last_reclaimed = reclaimed
        status = cnr.build_cnr_status(reclaimed, cnr.numa_sockets_from_facts(facts))
        if config["numa_topology_report"]:
            add_numa_capacity(status, facts, memprovision.reserved_memory_per_numa(config.get("memory_resource_plugin_reserved_gb", RESERVED_GB),
                                                                                   all_numas))
            policy = config["cnr_topology_policy"] or kubelet_topology_policy(fs)
            status["topologyPolicy"] = policy
        return status

    def current_cnr(self, kube, refresh_seconds, now):
        if self.cnr is None or self.cnr_read_at is None or now - self.cnr_read_at >= refresh_seconds:
            self.cnr = kube.get(cnr.CNR_API_VERSION, cnr.CNR_KIND, self.node_name)
            self.cnr_read_at = now
        return self.cnr

    def reclaimed_resources(self, fs, pods, kube, config, now):
        """One pass: compute, and write the CNR status when it differs. Returns the applied Changes."""
        facts = nodeinfo.gather(fs)
        self.report_bind_results(kube, pods)
        require_numa_memory(fs, facts)
        status = self.desired_status(fs, facts, pods, config, now)
        if status is None or kube is None:
            return []
        self.last_status = status
        try:
            current = self.current_cnr(kube, float(config["cnr_refresh_seconds"]), now)
        except KubeError as exc:
            if exc.status == 404:
                if not self.cnr_unserved:
                    LOG.warning("the API server does not serve %s %s; reclaimed resources are not reported (%s)",
                                cnr.CNR_API_VERSION, cnr.CNR_KIND, exc, extra={"loop": "reclaimed_resources"})
                self.cnr_unserved = True
                return []
            raise
        self.cnr_unserved = False
        plan = plan_status_with_policy(self.node_name, current, status)
        applied = []
        try:
            for change in plan:
                self.cnr = apply_cnr_change(kube, change)
                self.cnr_read_at = now
                applied.append(change)
        except KubeError:
            self.cnr = None     # re-read next time (conflict, deleted, ...)
            raise
        return applied

    # -- memory provision -------------------------------------------------------------------------
    def provision_inputs(self, fs, facts, pods, config):
        """The readings one memory provision pass works from: containers, pods by uid, NUMA metrics, scale factor, and
        the available NUMA nodes and reclaimed containers (``headroom.get_available_numas_and_reclaimed``); pods as PodViews."""
        pods = [pod_view(p) for p in pods]
        pods_by_uid = {p.uid: p for p in pods}
        containers = container_dicts(pods, facts, fs, config["cgroup_driver"], config["cgroup_root"].rstrip("/"), self.numa_stat)
        all_numas = [n["id"] for n in facts["numa_nodes"]]
        enable = bool(config["reclaim_enabled"])
        avail, reclaimed = headroom.get_available_numas_and_reclaimed(containers, pods_by_uid, all_numas, numa_socket_ids(facts), enable)
        return {"containers": containers, "pods_by_uid": pods_by_uid, "metrics": numa_metrics_from_facts(facts),
                "scale": read_scale_factor(fs), "avail": avail, "reclaimed": reclaimed}

    def memory_limits(self, fs, facts, pods, config, inputs=None):
        """The per-NUMA and root limits to enforce (``memprovision.reclaimed_cgroup_limits``)."""
        inputs = inputs or self.provision_inputs(fs, facts, pods, config)
        containers, metrics, scale = inputs["containers"], inputs["metrics"], inputs["scale"]
        avail, reclaimed = inputs["avail"], inputs["reclaimed"]
        all_numas = [n["id"] for n in facts["numa_nodes"]]
        enable = bool(config["reclaim_enabled"])
        reserved = parse_quantity(str(config["reserved_memory_for_allocate"])).value()
        provisions = memprovision.canonical_memory_provision(containers, inputs["pods_by_uid"], all_numas, numa_socket_ids(facts), metrics,
                                                             scale, reserved, enable)
        requests = {}
        for container in reclaimed:
            numas = container.get("numa_assignments") or all_numas
            for numa in numas:
                requests[numa] = requests.get(numa, 0) + int(container.get("memory_request") or 0) // len(numas)
        guard = None
        if config["memory_guard_enabled"]:
            guard = self.guard(fs, facts, config, avail, reclaimed, metrics, scale)
        floor = parse_quantity(str(config["memory_provision_floor"])).value()
        limits = memprovision.reclaimed_cgroup_limits(provisions, {n["id"]: n.get("memory_bytes", 0) for n in facts["numa_nodes"]},
                                                      requests, headroom.actual_numa_binding_numas(reclaimed), guard,
                                                      floor_bytes=floor, floor_ratio=float(config["memory_provision_floor_ratio"]))
        limits["provisions"] = provisions
        return limits

    def guard(self, fs, facts, config, avail, reclaimed, metrics, scale):
        version = _cgroup_version(facts)
        all_numas = [n["id"] for n in facts["numa_nodes"]]
        root, per_numa = cgroups.reclaim_paths(config["cgroup_driver"], config["reclaim_root"], all_numas)
        usage, existing = {}, []
        for key, relative in [("root", root)] + sorted(per_numa.items()):
            path = _memory_base(version) + relative
            reading = self.numa_stat(fs, path, version)
            if not reading:
                self.note("no readable memory.numa_stat for %s: the memory guard is skipped" % path)
                return None
            usage[key] = reading
            if key != "root":
                existing.append(key)
        return memprovision.memory_guard_limits(avail, reclaimed, metrics, scale, usage, numa_cgroups=existing)

    def memory_provision(self, fs, pods, config, now=None):
        """One pass: write the limits on ``<root>-<N>`` and the root where they differ, and drop the page cache of the
        reclaimed containers on NUMA nodes in DropCache (``drop_caches``). Returns the applied Changes.

        TuneMemCg needs nothing more: every pass already lowers the limits to the memory guard's (``memory_limits``).
        """
        now = time.monotonic() if now is None else now
        facts = nodeinfo.gather(fs)
        require_numa_memory(fs, facts)
        inputs = self.provision_inputs(fs, facts, pods, config)
        limits = self.memory_limits(fs, facts, pods, config, inputs)
        limits["pressure"] = self.pressure(inputs, config)
        self.last_limits = limits
        desired = memprovision.desired_memory_limits(facts, limits, config["cgroup_driver"], config["reclaim_root"])
        try:
            applied = cgroups.converge(fs, desired)[1]
            self.written_limits = limits
        except cgroups.CgroupError as exc:
            self.note("memory provision waits for the reclaimed cgroups: %s" % exc)
            applied = []
        return applied + self.drop_caches(fs, facts, config, inputs, now)

    def pressure(self, inputs, config):
        """``memorypressure.pressure_states`` of this pass's NUMA readings (the node's: their sums), kept in
        ``last_pressure`` (``{"node": condition, "numa": {numa: condition}}``); a NUMA node's change of state is logged.
        Returns ``{numa: state}``."""
        # memoryless NUMA nodes (MemTotal 0) have no pressure and hold no reclaimed memory: left out
        numa_metrics = {numa: {"free": float(m["free"]), "total": float(m["total"])} for numa, m in inputs["metrics"].items() if m["total"]}
        if not numa_metrics:
            self.last_pressure = {"node": None, "numa": {}}
            return {}
        node = {"free": sum(m["free"] for m in numa_metrics.values()), "total": sum(m["total"] for m in numa_metrics.values())}
        minimum = parse_quantity(str(config.get("memory_advisor_min_critical_watermark", MIN_CRITICAL_WATERMARK))).value()
        node_condition, conditions = memorypressure.pressure_states(node, numa_metrics, float(inputs["scale"]), minimum)
        before = (self.last_pressure or {}).get("numa") or {}
        for numa, condition in sorted(conditions.items()):
            previous = before.get(numa)
            if condition.state != (previous.state if previous else memorypressure.NO_RISK):
                LOG.info("NUMA %s memory pressure %s (free %d bytes, critical watermark %d bytes)", numa, condition.state,
                         numa_metrics[numa]["free"], condition.critical_watermark, extra={"loop": "memory_provision"})
        self.last_pressure = {"node": node_condition, "numa": conditions}
        return {numa: condition.state for numa, condition in conditions.items()}

    def drop_caches(self, fs, facts, config, inputs, now):
        """Drop the page cache of the reclaimed containers on each NUMA node in DropCache, at most once per NUMA node
        per ``DROP_CACHE_COOLDOWN_SECONDS`` (``memorypressure.drop_cache_writes``). Returns the Changes written; a write
        the kernel refuses is logged and the others go on."""
        cooldown = float(config.get("memory_drop_cache_cooldown_seconds", DROP_CACHE_COOLDOWN_SECONDS))
        due = {numa: condition for numa, condition in self.last_pressure["numa"].items()
               if condition.state == memorypressure.DROP_CACHE and now - self.drop_cache_at.get(numa, now - cooldown) >= cooldown}
        if not due:
            return []
        version = _cgroup_version(facts)
        base = _memory_base(version) + config["cgroup_root"].rstrip("/")
        containers = []
        for container in sorted(inputs["reclaimed"], key=lambda c: (c.get("pod_uid") or "", c.get("container_name") or "")):
            pod = inputs["pods_by_uid"].get(container.get("pod_uid"))
            relative = podcgroups.container_cgroup_paths(pod, config["cgroup_driver"]).get(container.get("container_name")) if pod else None
            if relative is None or not fs.isdir(base + relative):
                continue
            containers.append({"cgroup": base + relative, "numas": container.get("numa_assignments"),
                               "cache": (container.get("metrics") or {}).get("cache")})
        applied = []
        for numa in sorted(due):
            self.drop_cache_at[numa] = now
            writes = [w for w in memorypressure.drop_cache_writes(version, {numa: due[numa]}, containers) if w[1] not in
                      {c.target for c in applied}]
            LOG.info("NUMA %s in DropCache (free below the %d bytes critical watermark, target %d bytes): dropping the page cache of "
                     "%d reclaimed container(s); next drop there in %gs at the earliest", numa, due[numa].critical_watermark,
                     due[numa].target_reclaimed, len(writes), cooldown, extra={"loop": "memory_provision"})
            for _numa, path, content in writes:
                try:
                    fs.write_text(path, content)
                except OSError as exc:
                    LOG.warning("dropping the page cache with %s <- %s failed: %s", path, content, exc, extra={"loop": "memory_provision"})
                    continue
                applied.append(Change("cgroup_file", path, "set", None, content, "NUMA %s in DropCache" % numa))
        return applied

    # -- NUMA binding -------------------------------------------------------------------------------
    def report(self, kube, pod, reason, message):
        """A log line and a Warning Event on the pod, once per (pod, reason, message)."""
        self.warnings.report(kube, pod, reason, message, "numa_binding")

    def numa_binding(self, fs, pods, kube, config):
        """Pin every running dedicated_cores + numa_binding pod to its NUMA node; returns the applied Changes."""
        facts = nodeinfo.gather(fs)
        version = _cgroup_version(facts)
        pods = [dict(p, metadata=dict(p.get("metadata") or {})) for p in pods]
        order = sorted(pods, key=_binding_order)
        self.report_bind_results(kube, pods)
        applied, failed, failing = [], [], set()
        for pod in order:
            view = pod_view(pod)      # read again for each pod: the passes before may have written a numa_bind_result
            if view.phase != "Running" or not view.numa_binding:
                continue
            if view.bind_result_problem is not None:
                continue        # reported above; neither re-pinned nor moved until the annotation is fixed
            try:
                choice = placement.choose_numa_for_pod(pod, facts, pods)
            except AffinityError as exc:
                self.report(kube, pod, "InvalidMicrotopology", "NUMA binding refused: %s" % exc)
                continue
            if choice.get("numa") is None:
                self.report(kube, pod, "NUMABindingFailed", choice.get("reason") or "no NUMA node fits")
                continue
            wanted = choice["annotations"][NUMA_BIND_RESULT_KEY]
            if view.annotations.get(NUMA_BIND_RESULT_KEY) != wanted:
                if kube is None:
                    continue
                kube.patch("v1", "Pod", view.name, {"metadata": {"annotations": {NUMA_BIND_RESULT_KEY: wanted}}}, namespace=view.namespace)
                # written into this pass's copy of the pod: the next pods' choices and views see the result
                annotations = dict(view.annotations)
                annotations[NUMA_BIND_RESULT_KEY] = wanted
                pod["metadata"]["annotations"] = annotations
                applied.append(Change("api", "Pod/%s" % view.key, "set", None, wanted, "numa_bind_result"))
            plan = plan_cpuset(fs, pod, version, config, choice)
            try:
                applied.extend(plan.apply(cgroups.applier(fs)))
            except PlanError as exc:
                # this pod's cpusets are rolled back; the next pods are pinned all the same
                failed.append("%s: %s" % (view.key, exc))
                self.report(kube, pod, "NUMABindingNotApplied", "pinning to NUMA %s failed: %s" % (choice["numa"], exc))
                failing.add(pod_uid(pod))
        self.warnings.settle("NUMABindingNotApplied", failing)
        self.binding_failures = failed
        return applied


def _binding_order(pod):
    """Oldest pod first (by creationTimestamp), then by namespace/name: the order pods are bound in."""
    view = pod_view(pod)
    return (view.created or "", view.key)


def plan_cpuset(fs, pod, version, config, choice):
    """cpuset.cpus / cpuset.mems of the pod's container cgroups (first: they narrow) and of the pod cgroup."""
    prefix = config["cgroup_root"].rstrip("/")
    base = ("/sys/fs/cgroup" if version == "v2" else "/sys/fs/cgroup/cpuset") + prefix
    driver = config["cgroup_driver"]
    paths = [base + p for _name, p in sorted(podcgroups.container_cgroup_paths(pod, driver).items())]
    paths.append(base + podcgroups.pod_cgroup_path(pod, driver))
    plan = Plan()
    for path in paths:
        if not fs.isdir(path):
            continue
        for name, value in (("cpuset.cpus", choice["cpuset_cpus"]), ("cpuset.mems", choice["cpuset_mems"])):
            current = fs.read_text("%s/%s" % (path, name), default="").strip()
            try:
                same = nodeinfo.parse_cpu_list(current) == nodeinfo.parse_cpu_list(value) and current != ""
            except ValueError:
                same = False
            if not same:
                plan.add("cgroup_file", "%s/%s" % (path, name), "set", current or None, value, "NUMA binding of %s" % placement.pod_key(pod))
    return plan


def add_numa_capacity(status, facts, reserved=None):
    """Add each NUMA zone's ``cpu`` and ``memory`` (what the kubelet topology adapter reports) for NUMA fit.

    ``reserved``: ``{numa: bytes}`` (``memprovision.reserved_memory_per_numa``) taken from the allocatable memory only,
    as Katalyst's QRM memory plugin reports it; the capacity stays the NUMA node's total."""
    by_id = {str(n["id"]): n for n in facts["numa_nodes"]}
    reserved = {str(n): int(v) for n, v in (reserved or {}).items()}
    for socket in status["topologyZone"]:
        for zone in socket.get("children") or []:
            info = by_id.get(zone["name"])
            if info is None:
                continue
            resources = zone.setdefault("resources", {})
            for field in ("allocatable", "capacity"):
                values = resources.setdefault(field, {})
                values["cpu"] = str(info.get("cpu_count", 0))
                memory = info.get("memory_bytes", 0)
                values["memory"] = str(max(memory - reserved.get(zone["name"], 0), 0) if field == "allocatable" else memory)


def plan_status_with_policy(node_name, current, status):
    """``cnr.plan_cnr_status`` plus ``status.topologyPolicy`` when we report it and it differs."""
    policy = status.get("topologyPolicy")
    plan = cnr.plan_cnr_status(node_name, current, {k: v for k, v in status.items() if k != "topologyPolicy"})
    current_policy = ((current or {}).get("status") or {}).get("topologyPolicy")
    if policy is None or policy == current_policy:
        return plan
    for change in plan:
        if change.action == "patch":
            change.data["patch"]["status"]["topologyPolicy"] = policy
            return plan
    plan.add("api", "%s/%s" % (cnr.CNR_KIND, node_name), "patch", {"topologyPolicy": current_policy}, {"topologyPolicy": policy},
             "topology policy changed", {"patch": {"status": {"topologyPolicy": policy}}, "subresource": "status", "patch_type": "merge",
                                         "api_version": cnr.CNR_API_VERSION, "kind": cnr.CNR_KIND, "name": node_name})
    return plan


def apply_cnr_change(kube, change):
    """Apply one ``api`` Change of a CNR plan; returns the object the API answered with."""
    data = change.data
    if change.action == "create":
        try:
            return kube.create(data["object"])
        except KubeError as exc:
            if exc.status != 409:
                raise
            return kube.get(data["api_version"], data["kind"], data["name"])
    if change.action == "patch":
        return kube.patch(data["api_version"], data["kind"], data["name"], data["patch"], patch_type=data.get("patch_type", "merge"),
                          subresource=data.get("subresource"))
    if change.action == "delete":
        kube.delete(data["api_version"], data["kind"], data["name"])
        return None
    raise ValueError("not a CNR change: %r" % change)
