import json

import pytest

from ansible_collections.katalyst.colocation.plugins.module_utils import qos

QOS = qos.QOS_LEVEL_KEY
MEM = qos.MEMORY_ENHANCEMENT_KEY


@pytest.mark.parametrize("annotations, expected", [
    ({}, "shared_cores"),
    (None, "shared_cores"),
    ({QOS: "reclaimed_cores"}, "reclaimed_cores"),
    ({QOS: "dedicated_cores"}, "dedicated_cores"),
    ({QOS: "system_cores"}, "system_cores"),
    ({"other": "x"}, "shared_cores"),
])
def test_resolve_qos_level(annotations, expected):
    assert qos.resolve_qos_level(annotations) == expected


@pytest.mark.parametrize("value", ["foo", "", "Shared_Cores"])
def test_unknown_qos_level_is_an_error(value):
    with pytest.raises(qos.QoSError, match="can't get valid qos level"):
        qos.resolve_qos_level({QOS: value})


# AlignOOMPriority cases (cluster spec §4.4 / node spec §2.2)
@pytest.mark.parametrize("level, user, expected", [
    ("reclaimed_cores", None, -100), ("shared_cores", None, 0), ("dedicated_cores", None, 100), ("system_cores", None, 200),
    ("bogus", None, -100), ("bogus", 50, -100),
    ("shared_cores", 300, 300), ("reclaimed_cores", 300, 300),
    ("reclaimed_cores", -300, -100), ("reclaimed_cores", -50, -50), ("reclaimed_cores", 0, -1), ("reclaimed_cores", 99, -1),
    ("shared_cores", -1, 0), ("shared_cores", 42, 42), ("shared_cores", 100, 99), ("shared_cores", 299, 99),
    ("dedicated_cores", 99, 100), ("dedicated_cores", 150, 150), ("dedicated_cores", 200, 199),
    ("system_cores", 0, 200), ("system_cores", 250, 250), ("system_cores", 301, 299),
])
def test_align_oom_priority(level, user, expected):
    assert qos.align_oom_priority(level, user) == expected


@pytest.mark.parametrize("text, expected", [("5", 5), ("+5", 5), ("-7", -7), ("0", 0), (" 5", None), ("5.0", None), ("", None),
                                            ("1e2", None), ("0x10", None), (5, None)])
def test_parse_go_int(text, expected):
    assert qos.parse_go_int(text) == expected


def test_enhancement_non_string_value_is_reported_not_dropped():
    values, problems = qos.parse_enhancement({MEM: json.dumps({"oom_priority": 150, "numa_binding": "true"})}, MEM)
    assert values == {"numa_binding": "true"}
    assert len(problems) == 1 and "'oom_priority' must be a string" in problems[0]


@pytest.mark.parametrize("raw, problem", [("{not json", "not valid JSON"), ("[1, 2]", "JSON object"), ('"x"', "JSON object")])
def test_enhancement_bad_json(raw, problem):
    values, problems = qos.parse_enhancement({MEM: raw}, MEM)
    assert values == {} and problem in problems[0]


@pytest.mark.parametrize("annotations, priority, has_problem", [
    ({}, 0, False),
    ({QOS: "reclaimed_cores"}, -100, False),
    ({QOS: "dedicated_cores", MEM: '{"oom_priority": "150"}'}, 150, False),
    ({QOS: "dedicated_cores", MEM: '{"oom_priority": "1000"}'}, 199, False),
    ({QOS: "shared_cores", MEM: '{"oom_priority": "300"}'}, 300, False),
    ({QOS: "shared_cores", MEM: '{"oom_priority": "abc"}'}, 0, True),
    ({QOS: "system_cores", MEM: '{"oom_priority": 250}'}, 200, True),
    ({QOS: "system_cores", MEM: '{oops'}, 200, True),
    ({QOS: "weird"}, -100, True),
])
def test_pod_oom_priority(annotations, priority, has_problem):
    got, problem = qos.pod_oom_priority(annotations)
    assert got == priority
    assert (problem is not None) == has_problem


def test_numa_binding_predicates():
    annotations = {MEM: '{"numa_binding": "true", "numa_exclusive": "true"}'}
    assert qos.is_numa_binding(annotations) and qos.is_numa_exclusive(annotations)
    assert not qos.is_numa_exclusive({MEM: '{"numa_exclusive": "true"}'})
    assert not qos.is_numa_binding({})


@pytest.mark.parametrize("text, expected", [("2", (2,)), ("0,1", (0, 1)), (" 3 , 1", (1, 3)), ("007", (7,))])
def test_numa_bind_result_parses_ids(text, expected):
    assert qos.parse_numa_bind_result(text) == expected


@pytest.mark.parametrize("text, why", [("", "not a NUMA id"), ("x", "not a NUMA id"), ("-1", "not a NUMA id"), ("1,", "not a NUMA id"),
                                       ("1.0", "not a NUMA id"), ("\u0661", "not a NUMA id"), ("1,1", "twice"), (1, "must be a string")])
def test_malformed_numa_bind_result_is_an_error_naming_the_key_and_value(text, why):
    # Katalyst's GetActualNUMABindingResult returns an error (strconv.Atoi); the callers report it and read it as absent
    with pytest.raises(qos.QoSError, match=why) as raised:
        qos.parse_numa_bind_result(text)
    assert qos.NUMA_BIND_RESULT_KEY in str(raised.value) and repr(text) in str(raised.value)
