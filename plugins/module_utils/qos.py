# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""QoS levels, the enhancement annotations and OOM priority alignment (node spec §1-§2, cluster §4.1/§4.4)."""

from __future__ import annotations

import json
import re

QOS_LEVEL_KEY = "katalyst.kubewharf.io/qos_level"
MEMORY_ENHANCEMENT_KEY = "katalyst.kubewharf.io/memory_enhancement"
CPU_ENHANCEMENT_KEY = "katalyst.kubewharf.io/cpu_enhancement"
NETWORK_ENHANCEMENT_KEY = "katalyst.kubewharf.io/network_enhancement"
NUMA_BIND_RESULT_KEY = "katalyst.kubewharf.io/numa_bind_result"

RECLAIMED_CORES = "reclaimed_cores"
SHARED_CORES = "shared_cores"
DEDICATED_CORES = "dedicated_cores"
SYSTEM_CORES = "system_cores"
QOS_LEVELS = (RECLAIMED_CORES, SHARED_CORES, DEDICATED_CORES, SYSTEM_CORES)
DEFAULT_QOS_LEVEL = SHARED_CORES

OOM_PRIORITY_KEY = "oom_priority"
IGNORE_OOM_PRIORITY = -300
TOP_OOM_PRIORITY = 300          # "never kill"
OOM_PRIORITY_RANGES = {         # [low, high) per QoS level; higher survives longer
    RECLAIMED_CORES: (-100, 0),
    SHARED_CORES: (0, 100),
    DEDICATED_CORES: (100, 200),
    SYSTEM_CORES: (200, 300),
}
INVALID_LEVEL_OOM_PRIORITY = -100

_ATOI = re.compile(r"[+-]?[0-9]+")   # Go strconv.Atoi: optional sign, decimal digits only (fullmatch: no trailing newline)
_INT64 = (-(1 << 63), (1 << 63) - 1)


class QoSError(ValueError):
    """An annotation that cannot be honoured; the message names the annotation and the value."""


def resolve_qos_level(annotations):
    """The pod's QoS level from ``katalyst.kubewharf.io/qos_level``; absent means ``shared_cores``.

    An unknown value (including the empty string) is an error, as in Katalyst's GetQoSLevel.
    """
    annotations = annotations or {}
    if QOS_LEVEL_KEY not in annotations:
        return DEFAULT_QOS_LEVEL
    value = annotations[QOS_LEVEL_KEY]
    if value in QOS_LEVELS:
        return value
    raise QoSError("can't get valid qos level: %s=%r (expected one of %s)"
                   % (QOS_LEVEL_KEY, value, ", ".join(QOS_LEVELS)))


def parse_enhancement(annotations, key):
    """Parse a JSON string-map enhancement annotation.

    Returns ``(values, problems)``: ``values`` holds every key whose value is a JSON string;
    ``problems`` lists human-readable reasons for what was refused (bad JSON, not an object, a
    non-string value). Katalyst silently drops the whole annotation in those cases; we keep the
    valid keys and report the rest.
    """
    raw = (annotations or {}).get(key)
    if raw is None or raw == "":
        return {}, []
    try:
        decoded = json.loads(raw)
    except (ValueError, RecursionError) as exc:    # RecursionError: nesting deeper than the decoder's stack
        return {}, ["%s is not valid JSON (%s): %r" % (key, exc, raw[:200])]
    if not isinstance(decoded, dict):
        return {}, ["%s must be a JSON object of strings, got %s" % (key, type(decoded).__name__)]
    values, problems = {}, []
    for name in sorted(decoded):
        value = decoded[name]
        if isinstance(value, str):
            values[name] = value
        else:
            problems.append("%s: %r must be a string, got %s %s (write \"%s\")"
                            % (key, name, type(value).__name__, json.dumps(value), value))
    return values, problems


def memory_enhancement(annotations):
    return parse_enhancement(annotations, MEMORY_ENHANCEMENT_KEY)


def cpu_enhancement(annotations):
    return parse_enhancement(annotations, CPU_ENHANCEMENT_KEY)


def parse_go_int(text):
    """Go ``strconv.Atoi``: optional sign and decimal digits within int64; anything else is None."""
    if not isinstance(text, str) or not _ATOI.fullmatch(text) or len(text.lstrip("+-0")) > 19:
        return None
    value = int(text)
    return value if _INT64[0] <= value <= _INT64[1] else None


def align_oom_priority(qos_level, user_priority=None):
    """Katalyst's AlignOOMPriority: the user's value clamped into the QoS level's range.

    No user value gives the level's default (its range floor); 300 means never kill and passes
    through; an unknown level gives -100.
    """
    if qos_level not in OOM_PRIORITY_RANGES:
        return INVALID_LEVEL_OOM_PRIORITY
    low, high = OOM_PRIORITY_RANGES[qos_level]
    if user_priority is None:
        return low
    if user_priority == TOP_OOM_PRIORITY:
        return TOP_OOM_PRIORITY
    if user_priority < low:
        return low
    if user_priority >= high:
        return high - 1
    return user_priority


def pod_oom_priority(annotations):
    """``(priority, problem)`` for a pod's annotations.

    ``problem`` is None when everything parsed. When the QoS level is unknown the priority is
    -100 (Katalyst's invalid-level value); when ``oom_priority`` is present but not an integer
    string the QoS default is used. Either way the problem says why, for an Event.
    """
    try:
        level = resolve_qos_level(annotations)
    except QoSError as exc:
        return INVALID_LEVEL_OOM_PRIORITY, str(exc)
    values, problems = memory_enhancement(annotations)
    return enhanced_oom_priority(level, values, problems)


def enhanced_oom_priority(level, values, problems):
    """``pod_oom_priority`` of a valid QoS level and the parsed memory_enhancement (``parse_enhancement``'s pair)."""
    for problem in problems:
        if "%r" % OOM_PRIORITY_KEY in problem or "valid JSON" in problem or "JSON object" in problem:
            return align_oom_priority(level), problem
    if OOM_PRIORITY_KEY not in values:
        return align_oom_priority(level), None
    user = parse_go_int(values[OOM_PRIORITY_KEY])
    if user is None:
        return align_oom_priority(level), ("%s: invalid oom_priority %r (an integer string is expected);"
                                           " using the %s default" % (MEMORY_ENHANCEMENT_KEY, values[OOM_PRIORITY_KEY], level))
    return align_oom_priority(level, user), None


def parse_numa_bind_result(text):
    """``numa_bind_result`` text -> sorted tuple of NUMA ids (``"2"``, or ``"0,1"`` for a pod bound to several).

    QoSError naming the annotation and the value when it is not a comma-separated list of distinct non-negative
    decimal integers (Katalyst's ``GetActualNUMABindingResult`` returns an error for such a value).
    """
    if not isinstance(text, str):
        raise QoSError("%s=%r must be a string of NUMA ids such as \"0\" or \"0,1\"" % (NUMA_BIND_RESULT_KEY, text))
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isdigit() and part.isascii() for part in parts):
        raise QoSError("%s=%r is not a NUMA id or a comma-separated list of NUMA ids" % (NUMA_BIND_RESULT_KEY, text))
    if any(len(part.lstrip("0")) > 18 for part in parts):    # beyond int64 for Go; beyond int()'s digit limit for huge ones
        raise QoSError("%s=%r names a NUMA id out of range" % (NUMA_BIND_RESULT_KEY, text[:200]))
    numas = sorted(int(part) for part in parts)
    if len(set(numas)) != len(numas):
        raise QoSError("%s=%r names a NUMA id twice" % (NUMA_BIND_RESULT_KEY, text))
    return tuple(numas)


def is_numa_binding(annotations):
    return memory_enhancement(annotations)[0].get("numa_binding") == "true"


def is_numa_exclusive(annotations):
    values = memory_enhancement(annotations)[0]
    return values.get("numa_binding") == "true" and values.get("numa_exclusive") == "true"
