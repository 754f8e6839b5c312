# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""The agent's realtime overcommit ratio (cluster spec §2.6): how far requests may grow on this node
while real usage stays at the target load, reported on the node's CNR as ``"%.2f"`` annotations,
with the kubelet's CPU/memory manager policies and the guaranteed CPUs of its pods. As Katalyst's
``GetOvercommitRatio``, the reported ratio is capped by the node's own set ratio annotations.

Usage comes from the pods' own cgroups: CPU as the rate of ``cpuacct.usage`` (v1) or ``cpu.stat``
``usage_usec`` (v2) between two passes, memory as the RSS in ``memory.stat`` (v1 ``total_rss``,
v2 ``anon``). Allocatable is the node's CPUs and memory minus the configured reservations, as in
Katalyst (not the Node's status, which the overcommit webhook amplifies).
"""

from __future__ import annotations

import logging

from .. import overcommit, podcgroups
from ..fit import pod_requests
from ..kube import KubeError
from ..podview import pod_view
from ..sysfs import SysFSError

LOG = logging.getLogger("katalyst.agent")
CNR_API = ("node.katalyst.kubewharf.io/v1alpha1", "CustomNodeResource")

DEFAULTS = {
    "realtime_overcommit_enabled": False,
    "realtime_overcommit_period_seconds": 10,
    "realtime_overcommit_cpu_target_load": 0.6,
    "realtime_overcommit_memory_target_load": 0.8,
    "realtime_overcommit_cpu_estimated_load": 0.4,
    "realtime_overcommit_memory_estimated_load": 0.8,
    "reserved_cpu_milli": 0,
    "reserved_memory_bytes": 0,
    "cpu_manager_policy": "none",
    "memory_manager_policy": "None",
}


def cpu_usage_seconds(fs, facts, cgroup_relative):
    """Cumulative CPU seconds of a cgroup, or None when it does not exist (yet, or any more).

    A listed pod whose cgroup the kubelet has not created yet (or has just removed) has no usage to read:
    Katalyst counts it as zero and goes on, so one such pod must not fail the pass for the others.
    A counter that exists but does not parse is still an error (SysFSError naming the file).
    """
    if facts["cgroup"]["mode"] == "v2":
        text = fs.read_text("/sys/fs/cgroup%s/cpu.stat" % cgroup_relative, default="")
        for line in text.splitlines():
            if line.startswith("usage_usec "):
                return int(line.split()[1]) / 1e6
        return None
    mount = facts["cgroup"].get("v1_mounts", {}).get("cpuacct", "/sys/fs/cgroup/cpuacct")
    path = "%s%s/cpuacct.usage" % (mount, cgroup_relative)
    text = fs.read_text(path, default="")
    if not text.strip():
        return None
    if not text.strip().isdigit():
        raise SysFSError("%s: expected an integer, got %r" % (path, text))
    return int(text) / 1e9


def memory_rss_bytes(fs, facts, cgroup_relative):
    if facts["cgroup"]["mode"] == "v2":
        path, key = "/sys/fs/cgroup%s/memory.stat" % cgroup_relative, "anon"
    else:
        path = "%s%s/memory.stat" % (facts["cgroup"].get("v1_mounts", {}).get("memory", "/sys/fs/cgroup/memory"), cgroup_relative)
        key = "total_rss"
    for line in fs.read_text(path, default="").splitlines():
        name, _sep, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return 0


class RealtimeOvercommit:
    """One pass per period: usage since the last pass -> ratios -> CNR annotations (written only when different)."""

    def __init__(self, agent):
        self.agent = agent
        self.previous_cpu = {}      # pod uid -> (cumulative cpu seconds, monotonic time)
        self.last_ratios = None

    def usage(self, fs, facts, pods, now):
        """(cpu cores, memory bytes) used by the pods, CPU as a rate since the previous pass."""
        cpu_cores, memory_bytes, seen = 0.0, 0, {}
        for pod in pods:
            view = pod_view(pod)
            uid = view.uid
            relative = self.agent.cgroup_prefix() + podcgroups.pod_cgroup_path(view, self.agent.config["cgroup_driver"])
            used = cpu_usage_seconds(fs, facts, relative)
            if used is None:
                LOG.debug("pod %s/%s has no CPU counter yet (cgroup %s): counted as zero usage", view.namespace,
                          view.name, relative, extra={"loop": "realtime_overcommit"})
            else:
                seen[uid] = (used, now)
                before = self.previous_cpu.get(uid)
                if before is not None and now > before[1] and used >= before[0]:
                    cpu_cores += (used - before[0]) / (now - before[1])
            memory_bytes += memory_rss_bytes(fs, facts, relative)
        self.previous_cpu = seen
        return cpu_cores, memory_bytes

    def ratios(self, facts, pods, cpu_cores, memory_bytes):
        config = self.agent.config
        requested = {"cpu": 0, "memory": 0}
        for pod in pods:
            for resource, amount in pod_requests(pod).items():
                if resource in requested:
                    requested[resource] += amount
        allocatable_cpu_milli = max(facts["cpu_count"] * 1000 - int(config["reserved_cpu_milli"]), 0)
        allocatable_memory = max(facts["memory_bytes"] - int(config["reserved_memory_bytes"]), 0)
        cpu = overcommit.realtime_overcommit_ratio(allocatable_cpu_milli, requested["cpu"], cpu_cores * 1000,
                                                   config["realtime_overcommit_cpu_target_load"], config["realtime_overcommit_cpu_estimated_load"])
        memory = overcommit.realtime_overcommit_ratio(allocatable_memory * 1000, requested["memory"] * 1000, memory_bytes * 1000,
                                                      config["realtime_overcommit_memory_target_load"],
                                                      config["realtime_overcommit_memory_estimated_load"])
        return cpu, memory

    def desired_annotations(self, facts, pods, node_annotations, now):
        """The CNR annotations to report: the realtime ratios capped by the node's own set ratios (katalyst
        ``GetOvercommitRatio``), the manager policies and the guaranteed CPUs."""
        cpu_cores, memory_bytes = self.usage(self.agent.sysfs, facts, pods, now)
        cpu, memory = overcommit.reported_realtime_ratios(node_annotations, *self.ratios(facts, pods, cpu_cores, memory_bytes))
        self.last_ratios = (cpu, memory)
        desired = overcommit.realtime_ratio_annotations(cpu, memory)
        desired.update(overcommit.manager_annotations(self.agent.config["cpu_manager_policy"], self.agent.config["memory_manager_policy"], pods))
        return desired

    def report(self, kube, node_name, desired):
        """Merge ``desired`` into the CNR's annotations; create the CNR when it does not exist yet."""
        current = kube.get(*CNR_API, node_name)
        if current is None:
            body = {"apiVersion": CNR_API[0], "kind": CNR_API[1], "metadata": {"name": node_name, "annotations": desired}}
            try:
                kube.create(body)
                return desired
            except KubeError as exc:
                if exc.status != 409:      # created meanwhile (controller or another loop): patch it below
                    raise
                current = kube.get(*CNR_API, node_name) or {}
        annotations = (current.get("metadata") or {}).get("annotations") or {}
        changes = {key: value for key, value in desired.items() if annotations.get(key) != value}
        if changes:
            kube.patch(*CNR_API, node_name, {"metadata": {"annotations": changes}})
        return changes
