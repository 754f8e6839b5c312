# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""katalyst-agent's kernel tunables: CPU burst per container and the host watermark (plus the numa_ids check).

* ``cpu_burst`` (node spec §1.1 cpu enhancement keys, §1.4 CpuBurst, §6.3 every 10 s; ``cpuburst.py``): for every
  running pod that names a ``cpu_burst_policy``, each container's quota is read and ``cpu.cfs_burst_us`` (v1) /
  ``cpu.max.burst`` (v2) written when it differs. A kernel without the burst file (before 5.14) is noted once in the log,
  not on every pass, and its containers are skipped. The same pass checks the ``numa_ids`` / ``numa_number`` annotations
  (§1.1; ``numaids.py``) against the node's NUMA nodes and reports a bad value; nothing places pods by them yet (neither
  ``placement.py`` nor the agent's NUMA binding reads them), so the check is all they do here.
* ``host_watermark`` (§5.2 every 300 s; ``hostwatermark.py``): ``vm.watermark_scale_factor`` from an explicit value or
  from the kswapd reserve against the first NUMA node's memory, less huge pages; written only when it differs.

The Agent (agent.py) applies the plans one change at a time and reports per-pod problems as Warning Events.
"""

from __future__ import annotations

import logging

from .service import prometheus_client
from .pod_events import pod_uid
from .. import cpuburst, hostwatermark, nodeinfo, numaids, podcgroups
from ..podview import as_view, pod_view
from ..reconcile import Plan
from ..sysctl import proc_path
from ..sysfs import SysFSError


LOG = logging.getLogger("katalyst.agent")

CPU_BURST_LOOP = "cpu_burst"
HOST_WATERMARK_LOOP = "host_watermark"
INVALID_CPU_BURST = "InvalidCPUBurst"          # a bad cpu_enhancement (policy, percent, JSON) or quota file
CPU_BURST_NOT_SET = "CPUBurstNotSet"           # a burst file that could not be read or written
INVALID_NUMA_IDS = "InvalidNUMAIds"            # a bad numa_ids / numa_number annotation
CPU_ROOT = {cpuburst.V1: "/sys/fs/cgroup/cpu", cpuburst.V2: "/sys/fs/cgroup"}
NODE_MEMINFO = "/sys/devices/system/node/node%d/meminfo"
MANAGED_POLICIES = (cpuburst.POLICY_STATIC, cpuburst.POLICY_CLOSED)


def cgroup_version(facts):
    """``v2`` on the unified hierarchy, ``v1`` otherwise (hybrid nodes keep cpu on v1)."""
    return cpuburst.V2 if facts["cgroup"]["mode"] == "v2" else cpuburst.V1


def pod_name(pod):
    """``namespace/name`` of a pod or its PodView (``None/name`` when the namespace is not set, as always written here)."""
    view = as_view(pod)
    return "%s/%s" % (view.namespace, view.name)


def burst_entry(pod):
    """``(entry, problems)``: the pod as ``cpuburst.plan_container_bursts`` takes it, without containers, and what is
    wrong with its ``cpu_enhancement`` annotation (a non-string value is dropped from the map and said here). ``pod``: a pod
    or its PodView."""
    view = as_view(pod)
    enhancement = dict(view.cpu_enhancement)
    # the annotation as a whole unusable, or a burst key dropped; other keys' problems are not this loop's business
    problems = [problem for problem in view.cpu_enhancement_problems if not enhancement or "cpu_burst" in problem]
    return {"name": pod_name(view), "qos_level": view.qos_level, "cpu_enhancement": enhancement, "containers": []}, problems


def numa_problem(pod, machine_numas):
    """The problem with the pod's ``numa_ids`` / ``numa_number`` (as the cpu plugin's hint handler reads them: a non-empty
    ``numa_ids`` wins and ``numa_number`` is then not read), or None. ``pod``: a pod or its PodView."""
    return numaids.pod_numa_request(as_view(pod).annotations, machine_numas)[2]


def first_numa_total(meminfo_text):
    """``MemTotal`` (bytes) of a NUMA node's ``meminfo``; None when it has none."""
    return nodeinfo.parse_node_meminfo(meminfo_text).get("MemTotal")


def wanted_watermark(config, first_numa_meminfo, meminfo):
    """The ``vm.watermark_scale_factor`` the configuration asks for (None: leave it alone). ValueError on a bad setting or
    when the reserve needs a first NUMA node total that is missing.

    ``first_numa_meminfo``: that node's ``meminfo`` text; None on a kernel without NUMA (no node directory), where the
    whole machine is the first node and ``/proc/meminfo``'s MemTotal is used."""
    explicit = config["host_watermark_scale_factor"]
    if isinstance(explicit, int) and explicit > hostwatermark.SCALE_DENOMINATOR:
        raise ValueError("host_watermark_scale_factor=%r is out of range 0-%d" % (explicit, hostwatermark.SCALE_DENOMINATOR))
    total = nodeinfo.parse_meminfo(meminfo).get("MemTotal") if first_numa_meminfo is None else first_numa_total(first_numa_meminfo)
    return hostwatermark.watermark_scale_factor(config["host_watermark_scale_factor"], config["host_watermark_kswapd_reserved_gb"],
                                                total, meminfo)


class BurstPass:
    """What one ``cpu_burst`` pass found: the write plan, the pod of every file, problems by pod uid (``{uid: (pod,
    message)}``), read failures (``[(file, message)]``) and the burst files that do not exist."""

    def __init__(self):
        self.plan = Plan()
        self.pod_of = {}
        self.invalid = {}
        self.invalid_numa = {}
        self.failures = []
        self.missing = []


class TunableLoops:
    """State of the tunables loops of one agent: what was logged once, the watermark gauge."""

    def __init__(self, registry=None):
        self.notes = {}
        self.gauge = None
        if prometheus_client is not None and registry is not None:
            self.gauge = prometheus_client.Gauge("katalyst_host_watermark_scale_factor",
                                                 "vm.watermark_scale_factor the host_watermark loop wants (0: left alone)", registry=registry)

    def note(self, topic, message):
        """Log ``message`` once while it stays the same for ``topic``; None clears it (the next message is news)."""
        if message is None:
            self.notes.pop(topic, None)
        elif self.notes.get(topic) != message:
            self.notes[topic] = message
            LOG.info(message, extra={"loop": topic})

    def read_containers(self, fs, pod, version, driver, cgroup_prefix, found):
        """The pod's containers whose cgroup and burst file exist, with their quota and burst text."""
        containers = []
        for name, relative in sorted(podcgroups.container_cgroup_paths(pod, driver).items()):
            directory = CPU_ROOT[version] + cgroup_prefix + relative
            if not fs.isdir(directory):
                continue        # not created yet (or gone): skipped, as Katalyst does
            burst_file = directory + "/" + cpuburst.BURST_FILE[version]
            if not fs.exists(burst_file):
                found.missing.append(burst_file)
                continue
            found.pod_of[burst_file] = pod
            try:
                containers.append({"name": name, "cgroup": directory, "burst": fs.read_text(burst_file),
                                   "quota": fs.read_text(directory + "/" + cpuburst.QUOTA_FILE[version])})
            except SysFSError as exc:
                found.failures.append((burst_file, str(exc)))
        return containers

    def cpu_burst(self, fs, pods, facts, driver="cgroupfs", cgroup_prefix=""):
        """One pass over ``pods`` (running, on this node): a BurstPass. Reads only the cgroups of pods whose policy is
        managed (static or closed); the others cost nothing."""
        version = cgroup_version(facts)
        machine_numas = [numa["id"] for numa in facts["numa_nodes"]]
        found = BurstPass()
        for pod in pods:
            view = pod_view(pod)        # both checks below read the pod's annotations
            problem = numa_problem(view, machine_numas)
            if problem:
                found.invalid_numa[pod_uid(pod)] = (pod, problem)
            entry, problems = burst_entry(view)
            if cpuburst.burst_policy(entry["qos_level"], entry["cpu_enhancement"]) in MANAGED_POLICIES:
                entry["containers"] = self.read_containers(fs, pod, version, driver, cgroup_prefix, found)
            plan = cpuburst.plan_container_bursts([entry], version)
            problems += plan.warnings
            if problems:
                found.invalid[pod_uid(pod)] = (pod, "; ".join(problems))
            found.plan.changes.extend(plan.changes)
        # the same words whatever the containers: logged once while the kernel lacks the file, not on every pass or pod
        self.note(CPU_BURST_LOOP, "cpu burst is not supported by this kernel (no %s in the container cgroups): those containers "
                  "are skipped" % cpuburst.BURST_FILE[version] if found.missing else None)
        return found

    def host_watermark(self, fs, facts, config):
        """``(plan, wanted)`` for ``vm.watermark_scale_factor``; the gauge shows ``wanted`` (0 when left alone)."""
        numa = facts["numa_nodes"][0]["id"] if facts["numa_nodes"] else 0
        needs_memory = not config["host_watermark_scale_factor"] and config["host_watermark_kswapd_reserved_gb"]
        first, meminfo = "", ""
        if needs_memory:
            path = NODE_MEMINFO % numa
            first = fs.read_text(path, default="") if fs.exists(path) else None
            meminfo = fs.read_text("/proc/meminfo", default="")
        wanted = wanted_watermark(config, first, meminfo)
        if self.gauge is not None:
            self.gauge.set(wanted or 0)
        if wanted is None:
            return Plan(), None
        return hostwatermark.plan_watermark(fs.read_text(proc_path(hostwatermark.SYSCTL), default=""), wanted), wanted
