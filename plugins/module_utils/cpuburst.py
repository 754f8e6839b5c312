# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""CPU burst per container (node spec §1.1 cpu enhancement keys, §1.4 CpuBurst, §6.3: every 10 s).

Katalyst's cpu burst manager (``qrm-plugins/cpu/dynamicpolicy/cpuburst/manager.go``) resolves a policy per pod
and writes ``cpu.cfs_burst_us`` (v1) / ``cpu.max.burst`` (v2) of every container, write-if-changed:

* ``static``: burst = ``uint64(float64(quota) * percent / 100)``; percent from ``cpu_burst_percent`` (capped at
  100), 100 when the key is absent (Katalyst's ``defaultCPUBurstPercent``; its dynamic config may change it:
  ``default_percent``).
* ``closed``: burst 0 on every container (also when the quota is unlimited: 0 is always a valid burst, and it
  clears a burst left by an earlier policy). Reclaimed pods that name any other policy are forced to ``closed``.
* ``default`` (the key is absent): the spec is silent; Katalyst's manager leaves the files alone (``continue``),
  and so do we: "default" means "not managed by the agent", whatever the kernel/runtime set stays.
  Not ported: Katalyst turns ``default`` into ``static``/``closed`` for dedicated/shared pods under
  ``--enable-default-{dedicated,shared}-cores-cpu-burst`` and dynamic config; nothing here reads those.
* ``dynamic``: the spec is silent; Katalyst reports "dynamic cpu burst policy is not supported yet" and writes
  nothing. We do the same: a warning for the pod, no write (guessing a dynamic algorithm would be worse).
* Any other value: a warning naming it, no write.

Deliberate deviations: an unlimited quota (v1 ``-1``, v2 ``max``) gets no static burst (Katalyst would compute from
-1 or from MaxInt64 and the kernel refuses the result); a negative or NaN percent, or one Go's ParseFloat rejects,
is an error for that pod, not a burst.
"""

from __future__ import annotations

import math
import re

from . import overcommit
from .cgroupv2 import V1, V2, plan_file_writes
from .qos import RECLAIMED_CORES
from .reconcile import Plan

POLICY_KEY = "cpu_burst_policy"
PERCENT_KEY = "cpu_burst_percent"
POLICY_DEFAULT = "default"
POLICY_CLOSED = "closed"
POLICY_STATIC = "static"
POLICY_DYNAMIC = "dynamic"
POLICIES = (POLICY_DEFAULT, POLICY_CLOSED, POLICY_STATIC, POLICY_DYNAMIC)
DEFAULT_BURST_PERCENT = 100.0
MAX_BURST_PERCENT = 100.0
PERIOD_SECONDS = 10
QUOTA_FILE = {V1: "cpu.cfs_quota_us", V2: "cpu.max"}
BURST_FILE = {V1: "cpu.cfs_burst_us", V2: "cpu.max.burst"}
_UINT64_MAX = (1 << 64) - 1


def parse_go_float(name, text):
    """Go ``strconv.ParseFloat(text, 64)`` (``overcommit.parse_go_float``) for an annotation value: the float
    (``inf`` allowed), or ValueError naming ``name`` and the text. NaN and hex floats, which Go takes, are refused."""
    try:
        value = overcommit.parse_go_float(text)
    except ValueError as exc:
        raise ValueError("%s=%r is %s" % (name, text, "out of range" if "out of range" in str(exc) else "not a number")) from None
    if math.isnan(value) or "x" in text.lower():
        raise ValueError("%s=%r is not a number" % (name, text))
    return value


def burst_policy(qos_level, enhancement):
    """``GetPodCPUBurstPolicyFromCPUEnhancement``: the pod's policy from its parsed cpu enhancement map.

    Reclaimed pods naming any policy other than ``closed`` get ``closed``; no key gives ``default``. Other values
    pass through unchanged (``plan_container_bursts`` reports them).
    """
    enhancement = enhancement or {}
    if POLICY_KEY not in enhancement:
        return POLICY_DEFAULT
    if qos_level == RECLAIMED_CORES:
        return POLICY_CLOSED
    return enhancement[POLICY_KEY]


def burst_percent(enhancement):
    """``GetPodCPUBurstPercentFromCPUEnhancement``: None when the key is absent, the float (at most 100) otherwise.

    ValueError naming the value when it is not a number Go's ParseFloat takes, is out of float64 range, is NaN
    or is negative.
    """
    enhancement = enhancement or {}
    if PERCENT_KEY not in enhancement:
        return None
    value = parse_go_float(PERCENT_KEY, enhancement[PERCENT_KEY])
    if value < 0:
        raise ValueError("%s=%r is negative (0-100 is expected)" % (PERCENT_KEY, enhancement[PERCENT_KEY]))
    return min(value, MAX_BURST_PERCENT)


def _check_percent(percent):
    if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not 0 <= percent <= MAX_BURST_PERCENT:
        raise ValueError("cpu burst percent %r: a number 0-100 is required" % (percent,))


def burst_value(quota, percent):
    """``CalculateCPUBurstFromPercent``: ``uint64(float64(quota) * percent / 100)`` for a limited quota (> 0)."""
    if isinstance(quota, bool) or not isinstance(quota, int) or quota <= 0:
        raise ValueError("cpu quota %r: a positive integer is required for a burst" % (quota,))
    _check_percent(percent)
    return min(int(float(quota) * percent / 100), _UINT64_MAX)


def parse_quota(version, text):
    """The quota from ``cpu.cfs_quota_us`` (v1) or ``cpu.max`` (v2); None when unlimited. ValueError on junk."""
    fields = (text or "").split()
    if version == V1 and len(fields) == 1 and re.fullmatch(r"-?[0-9]+", fields[0]):
        quota = int(fields[0])
    elif version == V2 and len(fields) == 2 and re.fullmatch(r"max|-?[0-9]+", fields[0]) and fields[1].isdigit():
        quota = -1 if fields[0] == "max" else int(fields[0])
    else:
        raise ValueError("%s: cannot parse %r" % (QUOTA_FILE.get(version, "cpu quota"), text))
    return quota if quota > 0 else None


def plan_container_bursts(pods, version, default_percent=DEFAULT_BURST_PERCENT):
    """The burst writes for one pass of the manager, as a Plan of ``cgroup_file`` Changes plus warnings.

    ``pods``: ``[{"name": "ns/name", "qos_level": ..., "cpu_enhancement": {parsed map}, "containers":
    [{"name", "cgroup": absolute dir, "quota": text of the quota file, "burst": text of the burst file}]}]``.
    A container without ``cgroup`` (not created yet) is skipped silently, as Katalyst does; ``burst`` None means
    unknown (it is written). Problems are warnings naming the pod, for Warning Events; nothing raises for them.
    """
    if version not in QUOTA_FILE:
        raise ValueError("cgroup version %r: expected v1 or v2" % (version,))
    _check_percent(default_percent)
    plan = Plan()
    burst_file = BURST_FILE[version]
    for pod in pods:
        name = pod.get("name", "?")
        policy = burst_policy(pod.get("qos_level"), pod.get("cpu_enhancement"))
        if policy == POLICY_DEFAULT:
            continue
        if policy == POLICY_DYNAMIC:
            plan.warn("pod %s: dynamic cpu burst policy is not supported yet; cpu burst left as it is" % name)
            continue
        if policy not in POLICIES:
            plan.warn("pod %s: cpu burst policy %r is not supported (expected one of %s); cpu burst left as it is"
                      % (name, policy, ", ".join(POLICIES)))
            continue
        percent = 0.0
        if policy == POLICY_STATIC:
            try:
                percent = burst_percent(pod.get("cpu_enhancement"))
            except ValueError as exc:
                plan.warn("pod %s: %s; cpu burst left as it is" % (name, exc))
                continue
            percent = default_percent if percent is None else percent
        for container in pod.get("containers", ()):
            if not container.get("cgroup"):
                continue
            value = 0
            if policy == POLICY_STATIC:
                try:
                    quota = parse_quota(version, container.get("quota"))
                except ValueError as exc:
                    plan.warn("pod %s container %s: %s; cpu burst not set" % (name, container.get("name"), exc))
                    continue
                if quota is None:
                    continue
                value = burst_value(quota, percent)
            plan_file_writes(container["cgroup"], {burst_file: str(value)}, {burst_file: container.get("burst")},
                             "cpu burst policy %s for pod %s container %s" % (policy, name, container.get("name")), plan)
    return plan
