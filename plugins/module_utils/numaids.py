# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""The separate pod annotations ``numa_ids``, ``numa_number`` and ``pod_evict_score`` (node spec §1.1).

Katalyst's ``AnnotationsGetNUMAIDs`` / ``AnnotationsGetNUMANumber`` (``pkg/util/qos/cpu_enhancement.go``) fail the
allocation on a bad value. These return ``(value, problem)`` and never raise: ``problem`` is None or a message for a
Warning Event, and the value is then the "not set" value (empty tuple / 0 / None).

Deviation: the list is read with ``nodeinfo.parse_cpu_list`` (the kernel's syntax). Go's ``machine.Parse`` silently
ignores parts such as ``1-2-3`` and reversed ranges such as ``3-1``; here they are problems. Spaces around parts are
tolerated here and refused by Go.
"""

from __future__ import annotations

import math

from .cpuburst import parse_go_float
from .nodeinfo import parse_cpu_list
from .qos import parse_go_int

NUMA_IDS_KEY = "katalyst.kubewharf.io/numa_ids"
NUMA_NUMBER_KEY = "katalyst.kubewharf.io/numa_number"
EVICT_SCORE_KEY = "katalyst.kubewharf.io/pod_evict_score"


def pod_numa_ids(annotations, machine_numas=None, key=NUMA_IDS_KEY):
    """The NUMA ids the pod asks for as a sorted tuple (empty when absent or empty).

    With ``machine_numas`` the ids must all be among them (Katalyst: "not a subset of machine numa nodes").
    """
    text = (annotations or {}).get(key)
    if text is None or text == "":
        return (), None
    if not isinstance(text, str):
        return (), "%s=%r: a NUMA id list such as \"0,2-3\" is required" % (key, text)
    try:
        ids = tuple(parse_cpu_list(text))
    except ValueError as exc:
        return (), "%s: failed to parse numa ids: %s" % (key, exc)
    if machine_numas is not None:
        outside = sorted(set(ids) - set(machine_numas))
        if outside:
            return (), ("%s=%r: invalid numa ids %s: not among the machine's NUMA nodes %s"
                        % (key, text, outside, sorted(machine_numas)))
    return ids, None


def pod_numa_number(annotations, max_numa_number=None, key=NUMA_NUMBER_KEY):
    """How many NUMA nodes the pod wants (0 when absent or empty); within [0, max_numa_number] when that is given."""
    text = (annotations or {}).get(key)
    if text is None or text == "":
        return 0, None
    number = parse_go_int(text)
    if number is None:
        return 0, "%s=%r: failed to parse numa number (an integer is required)" % (key, text)
    if number < 0 or (max_numa_number is not None and number > max_numa_number):
        return 0, "%s=%r: numa number %d out of range, lowest 0 and highest: %s" % (key, text, number, max_numa_number)
    return number, None


def pod_numa_request(annotations, machine_numas):
    """What the cpu plugin's hint handler uses: ``(numa_ids, numa_number, problem)``.

    Non-empty ``numa_ids`` win and the number is their count; otherwise ``numa_number`` (at most the machine's count).
    """
    ids, problem = pod_numa_ids(annotations, machine_numas)
    if problem or ids:
        return ids, len(ids), problem
    number, problem = pod_numa_number(annotations, len(machine_numas))
    return (), number, problem


def pod_evict_score(annotations, key=EVICT_SCORE_KEY):
    """The pod's eviction score as a finite float, None when absent.

    Katalyst-core only declares a ``*float64`` score getter (its OSS build has no reader of the annotation), so this
    reads it as a decimal float; anything else is a problem.
    """
    text = (annotations or {}).get(key)
    if text is None:
        return None, None
    try:
        score = parse_go_float(key, text)
    except ValueError as exc:
        return None, "%s (a finite decimal number is required)" % exc
    if not math.isfinite(score):
        return None, "%s=%r: a finite decimal number is required" % (key, text)
    return score, None
