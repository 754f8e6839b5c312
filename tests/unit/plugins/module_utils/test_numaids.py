# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""numa_ids / numa_number / pod_evict_score pod annotations (node spec §1.1 "separate pod annotations")."""

from __future__ import annotations

import pytest

from ansible_collections.katalyst.colocation.plugins.module_utils import numaids

IDS = "katalyst.kubewharf.io/numa_ids"
NUMBER = "katalyst.kubewharf.io/numa_number"
SCORE = "katalyst.kubewharf.io/pod_evict_score"


@pytest.mark.parametrize("annotations, machine, ids", [
    ({}, None, ()),
    (None, [0, 1], ()),
    ({IDS: ""}, [0, 1], ()),
    ({IDS: "0,2-3"}, None, (0, 2, 3)),
    ({IDS: "0,2-3"}, [0, 1, 2, 3], (0, 2, 3)),
    ({IDS: "3,1"}, [0, 1, 2, 3], (1, 3)),
])
def test_pod_numa_ids(annotations, machine, ids):
    assert numaids.pod_numa_ids(annotations, machine) == (ids, None)


@pytest.mark.parametrize("value, machine, problem", [
    ("4", [0, 1], "invalid numa ids [4]: not among the machine's NUMA nodes [0, 1]"),
    ("a", None, "failed to parse numa ids: invalid CPU list 'a'"),
    ("3-1", None, "failed to parse numa ids: invalid CPU range '3-1'"),
    ("1-2-3", None, "failed to parse numa ids"),
    (3, None, "a NUMA id list such as"),
])
def test_pod_numa_ids_problems(value, machine, problem):
    ids, message = numaids.pod_numa_ids({IDS: value}, machine)
    assert ids == ()
    assert message.startswith(IDS) and problem in message


@pytest.mark.parametrize("annotations, maximum, number", [
    ({}, 4, 0), ({NUMBER: ""}, 4, 0), ({NUMBER: "2"}, None, 2), ({NUMBER: "2"}, 4, 2), ({NUMBER: "4"}, 4, 4), ({NUMBER: "0"}, 4, 0),
])
def test_pod_numa_number(annotations, maximum, number):
    assert numaids.pod_numa_number(annotations, maximum) == (number, None)


@pytest.mark.parametrize("value, maximum, problem", [
    ("5", 4, "numa number 5 out of range, lowest 0 and highest: 4"),
    ("-1", None, "numa number -1 out of range"),
    ("x", 4, "failed to parse numa number"),
    ("1.5", 4, "failed to parse numa number"),
    (" 1", 4, "failed to parse numa number"),
])
def test_pod_numa_number_problems(value, maximum, problem):
    number, message = numaids.pod_numa_number({NUMBER: value}, maximum)
    assert number == 0 and message.startswith(NUMBER) and problem in message


@pytest.mark.parametrize("annotations, result", [
    ({IDS: "0-1", NUMBER: "3"}, ((0, 1), 2, None)),     # ids win, number is their count
    ({NUMBER: "3"}, ((), 3, None)),
    ({}, ((), 0, None)),
])
def test_pod_numa_request(annotations, result):
    assert numaids.pod_numa_request(annotations, [0, 1, 2, 3]) == result


@pytest.mark.parametrize("annotations, problem", [({IDS: "7", NUMBER: "1"}, "invalid numa ids [7]"), ({NUMBER: "5"}, "highest: 4")])
def test_pod_numa_request_problems(annotations, problem):
    ids, number, message = numaids.pod_numa_request(annotations, [0, 1, 2, 3])
    assert (ids, number) == ((), 0) and problem in message


@pytest.mark.parametrize("annotations, score", [({}, None), (None, None), ({SCORE: "1.5"}, 1.5), ({SCORE: "-2"}, -2.0), ({SCORE: "1e3"}, 1000.0)])
def test_pod_evict_score(annotations, score):
    assert numaids.pod_evict_score(annotations) == (score, None)


@pytest.mark.parametrize("value, problem", [
    ("inf", "'inf': a finite decimal number is required"),
    ("x", "'x' is not a number"),
    ("1e400", "'1e400' is out of range"),
    ("", "'' is not a number"),
])
def test_pod_evict_score_problems(value, problem):
    score, message = numaids.pod_evict_score({SCORE: value})
    assert score is None and message.startswith(SCORE) and problem in message
