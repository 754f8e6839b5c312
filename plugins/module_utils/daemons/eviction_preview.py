# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""One eviction pass as the agent would make it now, touching nothing: the ``eviction_plan`` module's engine.

It drives the agent's own ``EvictionManager`` planners (rootfs and the §5.4 memory plugins) over a stand-in for the
agent that has only what they read: the settings, the node's files below ``sysroot``, the API client. No metrics, no
node condition, no rate limiter: what comes out is the merged plan the next pass would hand to the rate limiter.

One reading stands for a lasting one: the NUMA plugin's counter needs ``T_rec`` passes below the low watermark before
it evicts reclaimed pods; the preview counts the current reading as those passes (``t_rec`` 0), so it shows who goes
first if the pressure lasts, and any pod only where ``T_non`` would already be reached in one pass.
"""

from __future__ import annotations

from types import SimpleNamespace

from .agent_eviction import DEFAULTS as EVICTION_DEFAULTS, EvictionManager, system_memory_readings
from .. import eviction, nodeinfo
from ..quantity import parse_quantity
from ..sysfs import SysFS

PLUGINS = ("rootfs", "numa_memory", "system_memory", "reclaimed_resources")
# the agent's settings the planners read besides the eviction ones (agent.py's defaults)
NODE_DEFAULTS = {"sysroot": "/", "cgroup_driver": "cgroupfs", "cgroup_root": "", "node_name": ""}


class PreviewAgent:  # pylint: disable=too-few-public-methods
    """What ``EvictionManager`` reads of the agent, for one pass: settings, files, API client (no daemon, no metrics)."""

    def __init__(self, config, kube):
        self.config, self.kube = config, kube
        self.daemon = SimpleNamespace(registry=None)
        self.numa = self.node = None
        self._facts = None

    @property
    def sysfs(self):
        return SysFS(self.config["sysroot"])

    def node_facts(self):
        if self._facts is None:
            self._facts = nodeinfo.gather(self.sysfs)
        return self._facts

    def cgroup_prefix(self):
        return self.config["cgroup_root"].rstrip("/")


def preview_config(settings):
    """The agent's eviction settings (its defaults under ``settings``), eviction switched on."""
    unknown = sorted(set(settings) - set(EVICTION_DEFAULTS) - set(NODE_DEFAULTS))
    if unknown:
        raise ValueError("unknown setting(s): %s" % ", ".join(unknown))
    return dict(EVICTION_DEFAULTS, **dict(NODE_DEFAULTS, **dict(settings, eviction_enabled=True)))


def memory_readings(manager, plugin, pods):
    """``(what plugin read, whether its threshold is met now)``, for the report (the planners keep no readings)."""
    agent = manager.agent
    if plugin == "system_memory":
        free, total, scale = system_memory_readings(agent.sysfs)
        minimum = parse_quantity(str(agent.config["eviction_system_free_memory_threshold_minimum"])).value()
        threshold = eviction.system_memory_threshold(total, scale, minimum) if total is not None else None
        met = free is not None and total is not None and eviction.system_memory_pressure(free, total, scale, minimum)
        return {"free": free, "total": total, "watermark_scale_factor": scale, "threshold": threshold}, bool(met)
    if plugin == "numa_memory":
        marks = manager.numa_pressure.watermarks
        return ({numa: dict(zip(("free_pages", "min_pages", "low_pages"), found)) for numa, found in marks.items()},
                any(found[0] < found[2] for found in marks.values()))
    allocatable = (((manager.cnr or {}).get("status") or {}).get("resources") or {}).get("allocatable")
    over = eviction.reclaimed_resource_threshold_met(pods, allocatable) if allocatable else None
    return {"allocatable": allocatable, "over": over.resource if over else None}, over is not None


def preview(settings, kube, pods, plugins=("rootfs",)):
    """``(plan, readings, met)`` of one pass of ``plugins`` over ``pods`` (running, on this node): the merged plan,
    ``{plugin: what it read}`` and ``{plugin: whether its threshold is met}`` (rootfs: ``{"free", "inodes"}``).

    Raises ValueError on a bad setting (named as the agent's), OSError / SysFSError / KubeError when a reading fails."""
    config = preview_config(settings)
    manager = EvictionManager(PreviewAgent(config, kube))
    manager.numa_pressure = eviction.NumaPressure(int(config["eviction_numa_free_below_watermark_times_threshold"]), 0)
    plans, readings, met = [], {}, {}
    if "rootfs" in plugins:
        plan, readings["rootfs"], rootfs_met, _started = manager.plan(pods)
        plans.append(plan)
        met["rootfs"] = {"free": rootfs_met.free_met, "inodes": rootfs_met.inodes_met}
    planners = {"numa_memory": manager.numa_memory_plan, "system_memory": manager.system_memory_plan,
                "reclaimed_resources": manager.reclaimed_resources_plan}
    for plugin in PLUGINS[1:]:
        if plugin in plugins:
            plan, _messages = planners[plugin](pods)
            plans.append(plan)
            readings[plugin], met[plugin] = memory_readings(manager, plugin, pods)
    return eviction.merge_plans(plans), readings, met
