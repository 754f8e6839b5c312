"""Hypothesis strategies of bad input: arbitrary text, wrong JSON types, out-of-range numbers, unknown keys, huge strings."""

import json

from hypothesis import strategies as st

INT64_MAX = (1 << 63) - 1
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 70), 1 << 70), st.floats(allow_nan=False, allow_infinity=False),
                    st.text(max_size=12))
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                           max_leaves=8)
HUGE = st.sampled_from([1000, 5000, 100000]).flatmap(lambda n: st.sampled_from(["x" * n, "9" * n, "[" * n, "{\"a\":" * n]))
NUMBER_TEXTS = st.one_of(st.integers(-(1 << 80), 1 << 80).map(str),
                         st.sampled_from(["", " 5", "5 ", "5\n", "+5", "-0", "1e3", "0x10", "1_0", "\u0663", "\uff15", "5.0", "NaN",
                                          "Infinity", "-Inf", "9" * 5000, str(INT64_MAX), str(INT64_MAX + 1)]),
                         st.text(alphabet="0123456789+- .e\n", max_size=8))


def json_object(keys, values):
    """A JSON object text of ``keys`` (known and unknown names) to ``values``."""
    return st.dictionaries(st.one_of(keys, st.text(max_size=10)), values, max_size=4).map(json.dumps)


def annotation_texts(structured):
    """Structurally valid-but-wrong texts (``structured``), arbitrary text, JSON of the wrong type, huge strings."""
    return st.one_of(structured, st.text(max_size=60), JSON_VALUES.map(json.dumps), HUGE)


ENHANCEMENT_KEYS = st.sampled_from(["oom_priority", "numa_binding", "numa_exclusive", "cpuset_pool", "OOM_PRIORITY"])
ENHANCEMENT_VALUES = st.one_of(NUMBER_TEXTS, st.sampled_from(["true", "false", "True"]), JSON_VALUES)
ENHANCEMENTS = annotation_texts(json_object(ENHANCEMENT_KEYS, ENHANCEMENT_VALUES))

CPU_LISTS = st.one_of(
    st.sampled_from(["3-1", "a", "1,,2", ",", "-", "1-", "-1", "1-2-3", " 1", "1 ,2", "0,0", "\u0663", "1e3", "0x1", "1\n", "",
                     "0-99999999999", "65536", "65535"]),
    st.lists(st.one_of(st.integers(-5, 300).map(str), st.tuples(st.integers(0, 300), st.integers(0, 300)).map("%d-%d".__mod__),
                       st.text(alphabet="0123456789-, a", max_size=4)), max_size=5).map(",".join),
    st.text(max_size=20))
BIND_RESULTS = st.one_of(CPU_LISTS, NUMBER_TEXTS, HUGE)


def _term(preferred):
    labels = st.one_of(st.dictionaries(st.text(max_size=8), st.one_of(st.text(max_size=8), SCALARS), max_size=3), JSON_VALUES)
    operators = st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist", "Gt", "in"])
    expression = st.one_of(st.fixed_dictionaries({}, optional={
        "key": st.one_of(st.text(max_size=8), SCALARS), "operator": st.one_of(operators, SCALARS),
        "values": st.one_of(st.lists(st.one_of(st.text(max_size=6), SCALARS), max_size=3), SCALARS)}), JSON_VALUES)
    fields = {"matchLabels": labels, "matchExpressions": st.one_of(st.lists(expression, max_size=3), JSON_VALUES),
              "zone": st.one_of(st.sampled_from(["numa", "socket", "Socket", "l3", ""]), SCALARS), "MatchLabels": labels,
              "unknown": JSON_VALUES}
    if preferred:
        fields["weight"] = st.one_of(st.integers(-5, 200), SCALARS, st.sampled_from([1.0, 1e400, True]))
    return st.one_of(st.fixed_dictionaries({}, optional=fields), JSON_VALUES)


MICROTOPOLOGY = annotation_texts(st.fixed_dictionaries({}, optional={
    "required": st.one_of(st.lists(_term(False), max_size=3), JSON_VALUES),
    "preferred": st.one_of(st.lists(_term(True), max_size=3), JSON_VALUES),
    "Required": st.lists(_term(False), max_size=2), "extra": JSON_VALUES}).map(json.dumps))
