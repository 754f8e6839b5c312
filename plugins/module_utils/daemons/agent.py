# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""katalyst-agent: keeps one node converged between playbook runs.

    python -m katalyst_colocation.daemons.agent --config /etc/katalyst/agent.yaml

It watches this node's pods (``spec.nodeName`` field selector, periodic resync), runs one loop per
enabled feature (each loop calls the same engine functions as the modules do, then applies the
Plan, writing only what differs), serves ``/healthz`` and Prometheus ``/metrics``, re-reads its
configuration on SIGHUP and stops cleanly on SIGTERM.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time

from . import entrypoint, service
from .agent_eviction import DEFAULTS as EVICTION_DEFAULTS, EvictionManager
from .agent_numa import DEFAULTS as NUMA_DEFAULTS, NumaLoops
from .agent_tunables import CPU_BURST_LOOP, CPU_BURST_NOT_SET, HOST_WATERMARK_LOOP, INVALID_CPU_BURST, INVALID_NUMA_IDS, TunableLoops
from .agent_overcommit import DEFAULTS as REALTIME_OVERCOMMIT_DEFAULTS, RealtimeOvercommit
from .token_renewal import DEFAULTS as TOKEN_RENEWAL_DEFAULTS, daemon_api_client
from .informer import Informer
from .pod_events import PodWarnings, pod_uid
from .. import bpf, cgroups, cnr, memorypressure, nodeinfo, oom, oomgather, oomobserver, overcommit, podcgroups, qos, sysctl, tcpmem
from ..podview import pod_view
from ..kube import KubeClient
from ..nodeinfo import parse_cpu_list
from ..quantity import parse_quantity
from ..reconcile import PlanError
from ..sysfs import SysFS, SysFSError

try:
    import prometheus_client
except ImportError:  # pragma: no cover
    prometheus_client = None

LOG = logging.getLogger("katalyst.agent")

# A pass whose inputs are unchanged skips the oom_priority work; its check reads every cgroup.procs (a new process is
# ordered on the next pass) but each known process's statm and oom_score_adj only every this many passes: a resident
# size drift (the plan keeps a growth margin for it) or an oom_score_adj someone else wrote is corrected within as many
# seconds, at a fifth of the reads.
PROCESS_RECHECK_PASSES = 5

# How far back the OOM observer looks for a victim whose container is gone (events are read every second).
VIEW_HISTORY_SECONDS = 30.0

# The agent's own metrics, registered by one loop in Agent(): (key in Agent.metrics, prometheus_client type, name, help,
# labels). scripts/metrics_reference.py reads this table (any NAME_METRICS table of such rows) for docs/metrics.md.
METRICS = (
    ("writes", "Counter", "katalyst_agent_writes_total", "Kernel or API writes by loop", ("loop",)),
    ("plan_errors", "Counter", "katalyst_agent_plan_errors_total", "Plans that failed and were rolled back", ("loop",)),
    ("oom_unordered", "Gauge", "katalyst_oom_priority_unenforceable", "1 when strict OOM priority order is impossible in the allowed "
     "oom_score_adj range (see the log)", ()),
    ("oom_kills", "Counter", "katalyst_oom_kills", "OOM kills seen by the BPF observer, by the victim's QoS level", ("qos_level",)),
    ("oom_inversions", "Counter", "katalyst_oom_priority_inversions", "OOM kills while a strictly lower-priority pod in the same OOM domain was alive",
     ()),
    ("realtime_ratio", "Gauge", "katalyst_realtime_overcommit_ratio", "Realtime overcommit ratio reported on the CNR", ("resource",)),
    ("memory_pressure", "Gauge", "katalyst_memory_pressure_state", "Memory pressure state per NUMA node: 0 no risk, 1 tune memcg, 2 drop cache "
     "(Katalyst's MemoryPressureState)", ("numa",)),
    ("oom_passes", "Counter", "katalyst_oom_priority_passes_total", "oom_priority passes: full (read, plan, write) or unchanged (inputs "
     "as in the last full pass: nothing to do)", ("kind",)),
    ("oom_map_entries", "Gauge", "katalyst_oom_priority_map_entries", "Entries in the pinned OOM priority BPF map", ()),
    ("qos_cpu_shares", "Gauge", "katalyst_qos_cgroup_cpu_shares", "cpu.shares the qos_cgroups loop keeps on the QoS cgroups (cgroup v2: cpu.weight is "
     "written from it), by QoS level and NUMA node (all: the QoS level's root cgroup)", ("qos_level", "numa")),
    ("qos_cpuset_cpus", "Gauge", "katalyst_qos_cgroup_cpuset_cpus", "CPUs in the cpuset.cpus the qos_cgroups loop keeps on each per-NUMA QoS cgroup",
     ("qos_level", "numa")),
    ("qos_memory_limit", "Gauge", "katalyst_qos_cgroup_memory_limit_bytes", "Memory limit the memory_provision loop keeps on the QoS cgroups (v1 "
     "memory.limit_in_bytes, v2 memory.max), by QoS level and NUMA node (all: the root)", ("qos_level", "numa")),
    ("provision", "Gauge", "katalyst_memory_provision_bytes", "Memory provisioned for reclaimed pods per NUMA node (the canonical provision, "
     "before the floor and the memory guard)", ("numa",)),
    ("provision_floor", "Gauge", "katalyst_memory_provision_floor_bytes", "The floor below which the memory limit of a per-NUMA reclaimed cgroup is "
     "never set", ("numa",)),
    ("reclaimed_cpu", "Gauge", "katalyst_reclaimed_cpu_cores", "Reclaimed CPU per NUMA node reported in the CNR (reclaimed_millicpu / 1000)",
     ("numa",)),
    ("reclaimed_memory", "Gauge", "katalyst_reclaimed_memory_bytes", "Reclaimed memory per NUMA node reported in the CNR", ("numa",)),
)

DEFAULTS = {
    "node_name": "",
    "kubeconfig": "",
    "sysroot": "/",
    "state_dir": "/var/lib/katalyst",
    "listen_address": "127.0.0.1",
    "port": 9316,
    "log_level": "info",
    "json_logs": True,
    "resync_seconds": 60,
    "qos_cgroups_enabled": True,
    "qos_cgroups_period_seconds": 30,
    "cgroup_driver": "cgroupfs",
    "cgroup_root": "/",
    "reclaim_root": "/kubepods/besteffort",
    "reclaimed_cpu_shares": 2,
    "oom_priority_enabled": True,
    "oom_priority_period_seconds": 1,
    # a pass whose inputs are unchanged (pods, cgroups, their processes' pids, resident sizes and oom_score_adj, the
    # OOM domain's size) skips planning and writing; a full pass still runs at least this often, for what the cheap
    # check does not read (swap-only moves, BPF map entries changed by someone else). 0: every pass is a full pass.
    "oom_priority_full_pass_seconds": 60,
    # false: observe only (priority map and kill explanations, oom_score_adj left as the kubelet set it)
    "oom_score_adj_enabled": True,
    # the pinned maps of the oom_hook role: priority map kept in sync, kill events explained (skipped when absent)
    "oom_bpf_pin_dir": bpf.DEFAULT_PIN_DIR,
    "oom_observer_period_seconds": 1,
    "tcp_memory_enabled": False,
    "tcp_memory_period_seconds": 240,
    "tcp_memory_cgroup_ratio": 100,
    # NUMA (agent_numa.py): reclaimed resources per NUMA into this node's CNR, memory provisioning, NUMA binding
    "reclaim_enabled": True,
    "reclaimed_resources_enabled": True,
    "reclaimed_resources_period_seconds": 30,
    "reclaimed_window_seconds": 120,
    "reclaimed_memory_policy": "canonical",
    "reserved_memory_for_allocate": "5Gi",
    "numa_topology_report": True,
    "cnr_topology_policy": "",
    "cnr_refresh_seconds": 300,
    "memory_provision_enabled": False,
    "memory_provision_period_seconds": 10,
    "memory_provision_floor": "1Gi",
    "memory_provision_floor_ratio": 0.05,
    "memory_guard_enabled": True,
    "numa_binding_enabled": True,
    "numa_binding_period_seconds": 5,
    # tunables (agent_tunables.py): cpu burst per container (Katalyst's --enable-cpu-burst, off by default) and
    # vm.watermark_scale_factor (explicit value; 0 = auto from the kswapd reserve; reserve 0 = leave it alone)
    "cpu_burst_enabled": False,
    "cpu_burst_period_seconds": 10,
    "host_watermark_enabled": False,
    "host_watermark_period_seconds": 300,
    "host_watermark_scale_factor": 0,
    "host_watermark_kswapd_reserved_gb": 0,
}


DEFAULTS.update(REALTIME_OVERCOMMIT_DEFAULTS)
DEFAULTS.update(TOKEN_RENEWAL_DEFAULTS)
DEFAULTS.update(EVICTION_DEFAULTS)
DEFAULTS.update(NUMA_DEFAULTS)


def apply_each(plan, apply):
    """Apply every change of ``plan`` on its own: ``(applied, [(change, failure message)])``. For per-process and
    per-container values (oom_score_adj, TCP limits), where one that cannot be written must neither hold back nor roll
    back the others (``Plan.apply`` stops at the first failure and undoes what it did)."""
    applied, failures = [], []
    for change in plan.changes:
        try:
            apply(change)
            applied.append(change)
        except (SysFSError, OSError) as exc:
            failures.append((change, str(exc)))
    return applied, failures


def failures_by_pod(failures, pod_of):
    """``[(target, message)]`` -> {pod uid: (pod, [messages])} for the targets ``pod_of`` knows."""
    grouped = {}
    for target, message in failures:
        pod = pod_of.get(target)
        if pod is not None:
            grouped.setdefault(pod_uid(pod), (pod, []))[1].append(message)
    return grouped


# the numa label of the reclaimed root cgroup (its children are besteffort-<N>, numa="<N>")
ALL_NUMAS = "all"


def qos_cgroup_cpus(desired, per_numa):
    """{numa label: CPUs in the cpuset.cpus the QoS cgroup plan ``desired`` writes} for each per-NUMA cgroup
    (``per_numa``: NUMA id -> relative path, from ``cgroups.reclaim_paths``)."""
    counts = {}
    for cgroup in desired["cgroups"]:
        for numa, relative in per_numa.items():
            if cgroup["path"].endswith(relative):
                for name, value in cgroup["files"].items():
                    if name.endswith("/cpuset.cpus"):
                        counts[str(numa)] = len(parse_cpu_list(value))
    return counts


def reclaimed_per_numa(reclaimed):
    """{(numa, resource): amount} of a ``cnr.revise_reclaimed`` result's per-NUMA allocatable: cpu in cores, memory in bytes."""
    amounts = {}
    for numa, resources in (reclaimed.get("numa_allocatable") or {}).items():
        if cnr.RECLAIMED_MILLICPU in resources:
            amounts[(str(numa), "cpu")] = float(parse_quantity(resources[cnr.RECLAIMED_MILLICPU]).amount) / 1000.0
        if cnr.RECLAIMED_MEMORY in resources:
            amounts[(str(numa), "memory")] = float(parse_quantity(resources[cnr.RECLAIMED_MEMORY]).amount)
    return amounts


class Agent:
    def __init__(self, config_path, kube_api_client=None):
        self.config_path = config_path
        self.config = service.load_config(config_path, DEFAULTS)
        if not self.config["node_name"]:
            raise ValueError("%s: node_name is required" % config_path)
        self.daemon = service.Daemon("katalyst-agent")
        self.daemon.on_reload(self.reload)
        self.lock = threading.Lock()
        self.api_client = kube_api_client
        self.pods = None
        self.node = None            # informer on this node only: its overcommit ratio annotations cap the realtime ratio
        self.kube = None
        self.warnings = PodWarnings(self.config["node_name"])
        self.unparsable_tcp_limits = {}   # memory.kmem.tcp.limit_in_bytes file -> content already logged
        self._node_facts = None
        self.pod_views, self.previous_pod_views = [], []
        self.oom_membership = oomgather.MembershipCache(PROCESS_RECHECK_PASSES)
        self.oom_last_full = None     # (inputs, monotonic time) of the last full oom_priority pass that fully succeeded
        # (monotonic time, views) of the recent passes: a kill is read after the victim's container (its cgroup, its
        # pid) is gone, and pod events may have made several passes since, so the observer looks further back
        self.view_history = collections.deque()
        self.realtime_overcommit = RealtimeOvercommit(self)
        self.numa = NumaLoops(self.config["node_name"])
        self.metrics = {}
        if prometheus_client is not None:
            for key, kind, name, documentation, labels in METRICS:
                self.metrics[key] = getattr(prometheus_client, kind)(name, documentation, labels, registry=self.daemon.registry)
        self.series = collections.defaultdict(set)      # metric key -> label values set by the last pass

    # -- configuration ------------------------------------------------------------------------
    def reload(self):
        fresh = service.load_config(self.config_path, DEFAULTS)
        if fresh["node_name"] != self.config["node_name"]:
            raise ValueError("node_name cannot change on reload (restart the agent instead)")
        with self.lock:
            self.config = fresh
            self._node_facts = None
            self.oom_last_full = None
        service.set_log_level(fresh["log_level"])

    def node_facts(self):
        """Topology, cgroup mode and capabilities: read once (and again after a reload), not on every pass of the
        fast loops; the loops that need live memory readings gather their own."""
        if self._node_facts is None:
            self._node_facts = nodeinfo.gather(self.sysfs)
        return self._node_facts

    @property
    def sysfs(self):
        return SysFS(self.config["sysroot"])

    # -- loops --------------------------------------------------------------------------------
    def record(self, loop, applied):
        if self.metrics and applied:
            self.metrics["writes"].labels(loop).inc(len(applied))
        for change in applied:
            LOG.info("%s: %s %s %r -> %r", loop, change.action, change.target, change.before, change.after,
                     extra={"loop": loop, "target": change.target})

    def converge_qos_cgroups(self):
        """The QoS cgroups of the qos_cgroups module, kept converged between playbook runs."""
        if not self.config["qos_cgroups_enabled"]:
            return
        fs = self.sysfs
        facts = nodeinfo.gather(fs)
        desired = cgroups.desired_qos_cgroups(facts, driver=self.config["cgroup_driver"], reclaim_root=self.config["reclaim_root"],
                                              cpu_shares=self.config["reclaimed_cpu_shares"])
        try:
            applied = cgroups.converge(fs, desired)[1]
        except PlanError:
            if self.metrics:
                self.metrics["plan_errors"].labels("qos_cgroups").inc()
            raise
        self.record("qos_cgroups", applied)
        if self.metrics:
            per_numa = cgroups.reclaim_paths(self.config["cgroup_driver"], self.config["reclaim_root"], [n["id"] for n in facts["numa_nodes"]])[1]
            shares = {(qos.RECLAIMED_CORES, numa): self.config["reclaimed_cpu_shares"] for numa in [ALL_NUMAS] + [str(n) for n in per_numa]}
            self.export("qos_cpu_shares", shares)
            self.export("qos_cpuset_cpus", {(qos.RECLAIMED_CORES, numa): count for numa, count in qos_cgroup_cpus(desired, per_numa).items()})

    def export(self, metric, values):
        """The gauge ``metric`` shows exactly ``values`` ({label values: number}); series of the last call not in it are removed."""
        self.series[metric] = service.set_gauge_series(self.metrics[metric], values, self.series[metric])

    def cgroup_prefix(self):
        """The kubelet's --cgroup-root: kubepods lives below it."""
        return self.config["cgroup_root"].rstrip("/")

    def active_pods(self):
        return [p for p in (self.pods.items() if self.pods else []) if (p.get("status") or {}).get("phase") == "Running"]

    def converge_tcp_memory(self):
        """memory.kmem.tcp.limit_in_bytes of every container from its own memory limit (cgroup v1 only)."""
        if not self.config["tcp_memory_enabled"] or not tcpmem.cgroup_limits_enabled(self.config["tcp_memory_cgroup_ratio"]):
            return      # ratio 0: no per-container limits (Katalyst's --qrm-memory-cgroup-tcpmem-ratio 0), nothing read
        fs = self.sysfs
        version = "v2" if self.node_facts()["cgroup"]["mode"] == "v2" else "v1"
        containers, failures, pod_of = [], [], {}
        for pod in self.active_pods():
            limits = {c["name"]: ((c.get("resources") or {}).get("limits") or {}).get("memory") for c in pod["spec"].get("containers", [])}
            for name, relative in podcgroups.container_cgroup_paths(pod, self.config["cgroup_driver"]).items():
                path = "/sys/fs/cgroup/memory" + self.cgroup_prefix() + relative
                if not limits.get(name) or not fs.isdir(path):
                    continue
                tcp_file = path + "/" + tcpmem.TCP_LIMIT_FILE
                pod_of[tcp_file] = pod
                try:
                    content = fs.read_text(tcp_file) if fs.exists(tcp_file) else None
                except SysFSError as exc:
                    failures.append((tcp_file, str(exc)))   # this container is skipped; the others go on
                    continue
                containers.append({"path": path, "memory_limit_bytes": parse_quantity(str(limits[name])).value(),
                                   "tcp_limit_content": content})
        plan, report = tcpmem.plan_tcp_limits(version, containers, self.config["tcp_memory_cgroup_ratio"])
        if not report["supported"]:
            LOG.info(report["reason"], extra={"loop": "tcp_memory"})
            return
        self.report_unparsable_tcp_limits(report["unparsable"])
        applied, unwritten = apply_each(plan, cgroups.applier(fs))
        failures += [(change.target, message) for change, message in unwritten]
        self.record("tcp_memory", applied)
        self.report_pod_failures("TCPMemoryLimitNotSet", failures, pod_of, "TCP memory limit(s) not read or written", "tcp_memory")
        if failures:
            if self.metrics:
                self.metrics["plan_errors"].labels("tcp_memory").inc()
            raise SysFSError("%d TCP limit(s) not read or written (the other containers were converged): %s"
                             % (len(failures), "; ".join(message for _target, message in failures[:5])))

    def report_unparsable_tcp_limits(self, unparsable):
        """A TCP limit file that does not hold a byte count: its container is skipped; logged once per file and content."""
        seen = {entry["file"]: entry["content"] for entry in unparsable}
        for tcp_file, content in seen.items():
            if self.unparsable_tcp_limits.get(tcp_file) != content:
                LOG.warning("tcp_memory: %s holds %r, not a byte count: container skipped, file left as it is", tcp_file, content,
                            extra={"loop": "tcp_memory", "target": tcp_file})
        self.unparsable_tcp_limits = seen

    def report_pod_failures(self, reason, failures, pod_of, what, loop):
        """One Warning Event per pod whose ``failures`` (``[(target, message)]``) ``pod_of`` maps to it: ``what`` and
        the first failure; pods that failed before and not now are settled."""
        grouped = failures_by_pod(failures, pod_of)
        for pod, messages in grouped.values():
            self.warnings.report(self.kube, pod, reason, "%d %s: %s" % (len(messages), what, "; ".join(sorted(messages)[:3])), loop)
        self.warnings.settle(reason, set(grouped))

    def converge_oom_priority(self):
        """oom_score_adj of every pod process so the kernel kills strictly by OOM priority (+ the BPF priority map)."""
        if not self.config["oom_priority_enabled"]:
            return
        fs = self.sysfs
        facts = self.node_facts()
        memory_root = "/sys/fs/cgroup" if facts["cgroup"]["mode"] == "v2" else "/sys/fs/cgroup/memory"
        groups, views, pod_dirs, pod_of = [], [], [], {}
        # whether a pod still runs a container of its own matters only to the OOM observer: read only when it runs
        observing = self.pinned(bpf.EVENTS_MAP) is not None
        pods = self.active_pods()
        started = time.monotonic()
        inputs = None
        if self.config["oom_priority_full_pass_seconds"] > 0:
            inputs = self.oom_inputs(fs, facts, memory_root, observing, pods)
            last = self.oom_last_full
            if last is not None and last[0] == inputs and started - last[1] < self.config["oom_priority_full_pass_seconds"]:
                self.oom_pass_unchanged(started)
                return
        self.oom_last_full = None
        if self.metrics:
            self.metrics["oom_passes"].labels("full").inc()
        for pod in pods:
            view = pod_view(pod)
            priority, problem = view.oom_priority, view.oom_priority_problem
            if problem:
                self.warnings.report(self.kube, pod, "InvalidOOMPriority", problem, "oom_priority")
            name = "%s/%s" % (pod["metadata"].get("namespace"), pod["metadata"]["name"])
            pod_of[name] = pod
            cgroup_dir = memory_root + self.cgroup_prefix() + podcgroups.pod_cgroup_path(view, self.config["cgroup_driver"])
            exists = fs.isdir(cgroup_dir)
            pod_dirs += [cgroup_dir] if exists else []
            group = oomgather.read_group(fs, name, priority, [cgroup_dir] if exists else [])
            groups.append(group)
            container_dirs = [memory_root + self.cgroup_prefix() + path
                              for path in podcgroups.container_cgroup_paths(view, self.config["cgroup_driver"]).values()] if observing else []
            own = oomgather.own_processes(fs, container_dirs, group.processes) if observing else set()
            views.append(oomobserver.PodView(
                name, view.qos_level, priority, oomgather.cgroup_tree_ids(fs, cgroup_dir) if exists else set(), set(group.processes),
                oomgather.cgroup_lineage(fs, cgroup_dir, memory_root) if exists else [],
                bool(own) if observing else bool(group.processes), own))
        totalpages = oomgather.shared_domain_pages(fs, pod_dirs, memory_root, oomgather.node_totalpages(fs))
        plan, _adjustments = oom.plan_oom_score_adj(groups, totalpages, facts["negative_oom_score_adj"])
        if self.metrics:
            self.metrics["oom_unordered"].set(1 if plan.warnings else 0)
        for warning in plan.warnings:
            LOG.warning(warning, extra={"loop": "oom_priority"})
        failures = []
        if self.config["oom_score_adj_enabled"]:
            applied, failures = apply_each(plan, oomgather.applier(fs))
            self.record("oom_priority", applied)
        with self.lock:
            self.previous_pod_views, self.pod_views = self.pod_views, views
            now = time.monotonic()
            self.view_history.append((now, views))
            while now - self.view_history[0][0] > VIEW_HISTORY_SECONDS:
                self.view_history.popleft()
        self.sync_priority_map(views)
        self.report_pod_failures("OOMScoreAdjNotSet", [(change.data["group"], message) for change, message in failures], pod_of,
                                 "oom_score_adj write(s) failed: this pod's OOM priority is not enforced", "oom_priority")
        if failures:
            if self.metrics:
                self.metrics["plan_errors"].labels("oom_priority").inc()
            raise SysFSError("%d oom_score_adj write(s) failed (the other processes were set): %s"
                             % (len(failures), "; ".join(message for _change, message in failures[:5])))
        self.oom_membership.forget_readings()       # what this pass wrote is read back in full next time
        if inputs is not None:
            # the inputs were read before this pass: whatever changed while it ran differs from them, so the next
            # pass is a full one again (a pass that failed saves nothing: the next one retries in full)
            self.oom_last_full = (inputs, started)

    def oom_inputs(self, fs, facts, memory_root, observing, pods):
        """Everything a full oom_priority pass depends on that can change without a pod event, read cheaply: compared
        with the inputs of the last full pass to skip a pass that would plan and write exactly the same."""
        pods_key = tuple((meta.get("namespace"), meta.get("name"), meta.get("uid"), meta.get("resourceVersion") or repr(pod))
                         for pod in pods for meta in [pod["metadata"]])
        prefix, driver = self.cgroup_prefix(), self.config["cgroup_driver"]
        pod_dirs = [memory_root + prefix + podcgroups.pod_cgroup_path(pod, driver) for pod in pods]
        priority_map = self.pinned(bpf.PRIORITY_MAP)       # pinned again (the oom_hook role ran): a new, empty map
        try:
            map_key = (priority_map, os.stat(priority_map).st_ino if priority_map else None)
        except OSError:
            map_key = (priority_map, None)
        totalpages = oomgather.shared_domain_pages(fs, pod_dirs, memory_root, oomgather.node_totalpages(fs))
        return (pods_key, prefix, driver, observing, map_key, totalpages, facts["negative_oom_score_adj"], self.config["oom_score_adj_enabled"],
                self.oom_membership.fingerprint(fs, pod_dirs))

    def oom_pass_unchanged(self, now):
        """A pass whose inputs are those of the last full pass: the node is as it left it; the views stay current."""
        if self.metrics:
            self.metrics["oom_passes"].labels("unchanged").inc()
        with self.lock:
            self.previous_pod_views = self.pod_views
            if self.view_history and self.view_history[-1][1] is self.pod_views:
                self.view_history[-1] = (now, self.pod_views)       # still what the node looks like
            while self.view_history and now - self.view_history[0][0] > VIEW_HISTORY_SECONDS:
                self.view_history.popleft()

    def pinned(self, name):
        path = os.path.join(self.config["oom_bpf_pin_dir"], name)
        return path if os.path.exists(path) else None

    def sync_priority_map(self, views):
        """The Katalyst-compatible map: every cgroup id of every pod -> its priority; stale ids removed."""
        path = self.pinned(bpf.PRIORITY_MAP)
        if path is None:
            return
        desired = {cgroup_id: view.priority for view in views for cgroup_id in view.cgroup_ids}
        with bpf.PinnedMap(path) as pinned:
            plan = bpf.plan_priority_map(pinned.items(), desired)
            self.record("oom_priority_map", plan.apply(bpf.map_applier(pinned), rollback=False))
        if self.metrics:
            self.metrics["oom_map_entries"].set(len(desired))

    def observe_oom_kills(self):
        """Explain every kill the BPF observer recorded: a log line each, kill and inversion metrics."""
        if not self.config["oom_priority_enabled"] or self.pinned(bpf.EVENTS_MAP) is None:
            return
        events = bpf.drain_events(self.config["oom_bpf_pin_dir"])
        if not events:
            return
        with self.lock:
            current = list(self.pod_views)
            known = {view.name for view in current}
            gone = [view for view in self.previous_pod_views if view.name not in known]
            history = [view for _seen, views in reversed(self.view_history) for view in views]     # newest first
        for kill in oomobserver.explain_kills(events, current + gone, history=history):
            extra = {"loop": "oom_observer", "pod": kill["pod"], "inversion": kill["inversion"], "priority": kill["priority"]}
            (LOG.warning if kill["inversion"] else LOG.info)(kill["message"], extra=extra)
            if self.metrics:
                self.metrics["oom_kills"].labels(kill["qos_level"]).inc()
                if kill["inversion"]:
                    self.metrics["oom_inversions"].inc()

    # -- NUMA loops (agent_numa.py) ------------------------------------------------------------
    def node_pods(self):
        return self.pods.items() if self.pods else []

    def pods_unknown(self):
        """Whether the pod informer has not listed yet (just started): a pass then would see a node without pods, report
        its whole capacity as reclaimed and bind or provision as if it were empty. (No API at all: node-local, no pods.)"""
        return self.pods is not None and not self.pods.synced.is_set()

    def report_reclaimed_resources(self):
        """Per-NUMA reclaimed CPU and memory into this node's CNR (written only when it differs)."""
        if self.pods_unknown() or not self.config["reclaimed_resources_enabled"]:
            return
        self.record("reclaimed_resources", self.numa.reclaimed_resources(self.sysfs, self.node_pods(), self.kube, self.config,
                                                                         time.monotonic()))
        if self.metrics and self.numa.last_reclaimed is not None:
            amounts = reclaimed_per_numa(self.numa.last_reclaimed)
            self.export("reclaimed_cpu", {(numa,): amount for (numa, resource), amount in amounts.items() if resource == "cpu"})
            self.export("reclaimed_memory", {(numa,): amount for (numa, resource), amount in amounts.items() if resource == "memory"})

    def converge_memory_provision(self):
        """Per-NUMA memory limits of besteffort-<N> and the reclaimed root, from the canonical provision (with a floor)."""
        if self.pods_unknown() or not self.config["memory_provision_enabled"]:
            return
        self.record("memory_provision", self.numa.memory_provision(self.sysfs, self.node_pods(), self.config))
        if self.metrics and self.numa.last_pressure:
            for numa, condition in self.numa.last_pressure["numa"].items():
                self.metrics["memory_pressure"].labels(str(numa)).set(memorypressure.STATE_VALUES[condition.state])
        if self.metrics and self.numa.last_limits is not None:
            limits = self.numa.last_limits
            self.export("provision", {(str(numa),): amount for numa, amount in limits["provisions"].items()})
            self.export("provision_floor", {(str(numa),): amount for numa, amount in limits["floors"].items()})
        if self.metrics and self.numa.written_limits is not None:
            written = self.numa.written_limits
            # the kernel keeps whole pages: the value written and read back
            memory_limits = {(qos.RECLAIMED_CORES, str(numa)): cgroups.page_aligned(amount) for numa, amount in written["numa"].items()}
            memory_limits[(qos.RECLAIMED_CORES, ALL_NUMAS)] = cgroups.page_aligned(written["root"])
            self.export("qos_memory_limit", memory_limits)

    def converge_numa_binding(self):
        """cpuset.cpus/mems of dedicated_cores + numa_binding pods, and their numa_bind_result annotation."""
        if self.pods_unknown() or not self.config["numa_binding_enabled"]:
            return
        self.record("numa_binding", self.numa.numa_binding(self.sysfs, self.node_pods(), self.kube, self.config))
        failures = self.numa.binding_failures
        if failures:
            if self.metrics:
                self.metrics["plan_errors"].labels("numa_binding").inc()
            raise SysFSError("%d pod(s) not pinned (the others were): %s" % (len(failures), "; ".join(failures[:5])))

    def converge_realtime_overcommit(self):
        """The realtime overcommit ratio (and manager policies, guaranteed CPUs) on this node's CNR."""
        if not self.config["realtime_overcommit_enabled"] or self.kube is None or self.pods is None:
            return
        overcommit.validate_realtime_options(self.config["realtime_overcommit_cpu_target_load"], self.config["realtime_overcommit_memory_target_load"],
                                             self.config["realtime_overcommit_cpu_estimated_load"],
                                             self.config["realtime_overcommit_memory_estimated_load"])
        if self.node is None or not self.node.synced.is_set():
            return      # the node's set ratios are not known yet: report nothing rather than an uncapped ratio
        node = self.node.get(self.config["node_name"])
        if node is None:
            raise LookupError("node %s not found: its overcommit ratio annotations cap the realtime ratio; nothing reported"
                              % self.config["node_name"])
        pods = [p for p in self.pods.items() if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
        desired = self.realtime_overcommit.desired_annotations(self.node_facts(), pods, (node.get("metadata") or {}).get("annotations") or {},
                                                               time.monotonic())
        changes = self.realtime_overcommit.report(self.kube, self.config["node_name"], desired)
        if self.metrics:
            cpu, memory = self.realtime_overcommit.last_ratios
            self.metrics["realtime_ratio"].labels("cpu").set(cpu)
            self.metrics["realtime_ratio"].labels("memory").set(memory)
        if changes:
            LOG.info("realtime overcommit: %s", changes, extra={"loop": "realtime_overcommit"})

    # -- tunables loops (agent_tunables.py) ---------------------------------------------------
    def converge_cpu_burst(self):
        """cpu.cfs_burst_us / cpu.max.burst of every container from its pod's cpu_enhancement; numa_ids checked."""
        if self.pods_unknown() or not self.config["cpu_burst_enabled"]:
            return
        fs = self.sysfs
        found = self.tunables.cpu_burst(fs, self.active_pods(), self.node_facts(), self.config["cgroup_driver"], self.cgroup_prefix())
        for reason, problems in ((INVALID_CPU_BURST, found.invalid), (INVALID_NUMA_IDS, found.invalid_numa)):
            for pod, message in problems.values():
                self.warnings.report(self.kube, pod, reason, message, CPU_BURST_LOOP)
            self.warnings.settle(reason, set(problems))
        applied, unwritten = apply_each(found.plan, cgroups.applier(fs))
        failures = found.failures + [(change.target, message) for change, message in unwritten]
        self.record(CPU_BURST_LOOP, applied)
        self.report_pod_failures(CPU_BURST_NOT_SET, failures, found.pod_of, "cpu burst file(s) not read or written", CPU_BURST_LOOP)
        if failures:
            if self.metrics:
                self.metrics["plan_errors"].labels(CPU_BURST_LOOP).inc()
            raise SysFSError("%d cpu burst file(s) not read or written (the other containers were converged): %s"
                             % (len(failures), "; ".join(message for _target, message in failures[:5])))

    def converge_host_watermark(self):
        """vm.watermark_scale_factor, explicit or from the kswapd reserve (written only when it differs)."""
        if not self.config["host_watermark_enabled"]:
            return
        fs = self.sysfs
        plan = self.tunables.host_watermark(fs, self.node_facts(), self.config)[0]
        try:
            self.record(HOST_WATERMARK_LOOP, plan.apply(sysctl.applier(fs), rollback=False))
        except PlanError:
            if self.metrics:
                self.metrics["plan_errors"].labels(HOST_WATERMARK_LOOP).inc()
            raise

    # -- wiring -------------------------------------------------------------------------------
    def build(self):
        cfg = self.config
        self.daemon.add_loop(service.Loop("qos_cgroups", cfg["qos_cgroups_period_seconds"], self.converge_qos_cgroups))
        self.daemon.add_loop(service.Loop("tcp_memory", cfg["tcp_memory_period_seconds"], self.converge_tcp_memory))
        self.daemon.add_loop(service.Loop("oom_priority", cfg["oom_priority_period_seconds"], self.converge_oom_priority))
        self.daemon.add_loop(service.Loop("oom_observer", cfg["oom_observer_period_seconds"], self.observe_oom_kills))
        self.daemon.add_loop(service.Loop("realtime_overcommit", cfg["realtime_overcommit_period_seconds"], self.converge_realtime_overcommit))
        self.daemon.add_loop(service.Loop("reclaimed_resources", cfg["reclaimed_resources_period_seconds"], self.report_reclaimed_resources))
        self.daemon.add_loop(service.Loop("memory_provision", cfg["memory_provision_period_seconds"], self.converge_memory_provision))
        self.daemon.add_loop(service.Loop("numa_binding", cfg["numa_binding_period_seconds"], self.converge_numa_binding))
        self.daemon.add_loop(service.Loop("eviction", cfg["eviction_period_seconds"], EvictionManager(self).run_once))
        self.tunables = TunableLoops(self.daemon.registry)
        self.daemon.add_loop(service.Loop(CPU_BURST_LOOP, cfg["cpu_burst_period_seconds"], self.converge_cpu_burst))
        self.daemon.add_loop(service.Loop(HOST_WATERMARK_LOOP, cfg["host_watermark_period_seconds"], self.converge_host_watermark))
        if self.api_client is None and cfg["kubeconfig"] and not os.path.exists(cfg["kubeconfig"]):
            LOG.warning("kubeconfig %s does not exist: running the node-local loops only", cfg["kubeconfig"])
        elif self.api_client is not None or cfg["kubeconfig"]:
            self.api_client = daemon_api_client(self.daemon, cfg, like=self.api_client)
        if self.api_client is not None:
            from kubernetes import client  # pylint: disable=import-outside-toplevel
            core = client.CoreV1Api(self.api_client)
            self.kube = KubeClient(api_client=self.api_client, on_retry=self.daemon.api_retry_counter("client"))
            self.pods = Informer(core.list_pod_for_all_namespaces, handler=self.on_pod_event,
                                 list_kwargs={"field_selector": "spec.nodeName=%s" % cfg["node_name"]},
                                 resync_seconds=cfg["resync_seconds"], name="agent-pods", on_retry=self.daemon.api_retry_counter("informer"))
            self.node = Informer(core.list_node, list_kwargs={"field_selector": "metadata.name=%s" % cfg["node_name"]},
                                 resync_seconds=cfg["resync_seconds"], name="agent-node", on_retry=self.daemon.api_retry_counter("informer"))
        return self

    def on_pod_event(self, event_type, pod):
        LOG.debug("pod %s %s/%s", event_type, pod["metadata"].get("namespace"), pod["metadata"].get("name"))
        for loop in self.daemon.loops:
            if loop.name in ("oom_priority", "tcp_memory", "numa_binding", CPU_BURST_LOOP):
                loop.trigger()

    def start(self):
        """Serve /healthz and /metrics and start the informers (after build()); returns the port."""
        port = entrypoint.serve_health(self, LOG, "katalyst-agent for node %s" % self.config["node_name"], extra={"node": self.config["node_name"]})
        for informer in (self.pods, self.node):
            if informer is not None:
                informer.start(self.daemon.stop_event)
        return port

    def stop(self):
        """Stop the informers (once the loops have stopped)."""
        for informer in (self.pods, self.node):
            if informer is not None:
                informer.stop()


def main(argv=None):
    return entrypoint.run_daemon("katalyst-agent", Agent, argv, build=Agent.build)


if __name__ == "__main__":
    raise SystemExit(main())
