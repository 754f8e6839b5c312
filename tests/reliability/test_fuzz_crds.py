"""Fuzzed TideNodePool and NodeOvercommitConfig specs created on the API emulator: each is refused with a 422 naming
the field (and then nothing is stored), or accepted, and then the engine's plan handles it without crashing, with a
status condition when the spec is invalid."""

import datetime
import itertools
import json

import pytest
from hypothesis import given, strategies as st

from ansible_collections.katalyst.colocation.plugins.module_utils import crd_manifests, overcommit, tide

from .conftest import FUZZ, record
from .strategies import HUGE, JSON_VALUES, NUMBER_TEXTS

kubernetes = pytest.importorskip("kubernetes")

NOW = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)
NAMES = itertools.count()
BAD_SCALARS = st.one_of(JSON_VALUES, NUMBER_TEXTS, HUGE.map(lambda text: text[:3000]),
                        st.sampled_from(["-5%", "150%", "%", "50.5%", "1e400", "NaN", "-1", "0.5", "0", "abc", "", "NoSchedule", "Evict"]))


def schema_paths(schema, path=()):
    """Every property path of an openAPIV3Schema (objects and leaves), with an unknown sibling for each object."""
    found = []
    for name, sub in sorted((schema.get("properties") or {}).items()):
        found.append(path + (name,))
        found.extend(schema_paths(sub, path + (name,)))
    if schema.get("type") == "object":
        found.append(path + ("unknownField",))
    if isinstance(schema.get("additionalProperties"), dict):
        found.append(path + ("someKey",))
    return found


def spec_paths(crd):
    return list(schema_paths(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]))


def set_path(obj, path, value):
    for name in path[:-1]:
        if not isinstance(obj.get(name), dict):
            obj[name] = {}
        obj = obj[name]
    obj[path[-1]] = value


def mutated_specs(base, crd):
    mutation = st.tuples(st.sampled_from(spec_paths(crd)), BAD_SCALARS)
    return st.lists(mutation, min_size=1, max_size=3).map(lambda changes: _apply(base, changes))


def _apply(base, changes):
    spec = json.loads(json.dumps(base))
    for path, value in changes:
        set_path(spec, path, value)
    return spec, [".".join(("spec",) + path) for path, _value in changes]


TIDE_BASE = {"nodeConfigs": {"nodeSelector": {"pool": "a"}, "reserve": {"online": 1, "offline": "50%"}}}
NOC_BASE = {"nodeOvercommitSelectorVal": "a", "resourceOvercommitRatio": {"cpu": "1.5", "memory": "1.2"}}
NODES = [{"metadata": {"name": "n%d" % i, "labels": {"pool": "a", overcommit.POOL_LABEL: "a"}, "annotations": {}},
          "spec": {}, "status": {"allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"},
                                 "capacity": {"cpu": "8", "memory": "16Gi", "pods": "110"}}} for i in range(4)]


def create_or_refuse(emulator, crd, spec, fields):
    """Create the object; ``(stored object or None, outcome)``. A refusal must be a 422 naming a changed field and
    leave nothing behind."""
    names = crd["spec"]["names"]
    group, version, plural = crd["spec"]["group"], crd["spec"]["versions"][0]["name"], names["plural"]
    name = "fuzz-%d" % next(NAMES)
    body = {"apiVersion": "%s/%s" % (group, version), "kind": names["kind"], "metadata": {"name": name}, "spec": spec}
    try:
        created = emulator.custom.create_cluster_custom_object(group, version, plural, body)
    except kubernetes.client.exceptions.ApiException as exc:
        assert exc.status == 422, (exc.status, exc.body)
        status = json.loads(exc.body)
        named = [cause.get("field") or "" for cause in (status.get("details") or {}).get("causes") or []]
        assert named and all(field and field in status["message"] and _within(field, fields) for field in named), (fields, status)
        with pytest.raises(kubernetes.client.exceptions.ApiException) as missing:
            emulator.custom.get_cluster_custom_object(group, version, plural, name)
        assert missing.value.status == 404
        return None, "refused: 422 naming the field"
    emulator.custom.delete_cluster_custom_object(group, version, plural, name)
    return created, None


def _within(field, changed):
    """Whether a refused ``field`` is in the part of the spec the case changed (``spec.a.b`` set where there was no
    ``a`` creates ``a``, whose required fields are then missing: the refusal names those)."""
    top = ".".join(field.split("[")[0].split(".")[:2])
    return any(path == top or path.startswith(top + ".") for path in changed)


def plan_tide(pool):
    """The tide controller's plan for an accepted pool: Ready says whether the spec was usable."""
    pool["metadata"].setdefault("generation", 1)
    result = tide.plan_tide_pool(pool, NODES, [], now=NOW)
    ready = [c for c in result.status.get("conditions") or [] if c.get("type") == "Ready"]
    assert ready and (result.error is None) == (ready[0]["status"] == "True"), result.as_dict()
    return "accepted: Ready=False %s" % ready[0]["reason"] if result.error else "accepted and planned"


def plan_overcommit(config):
    """The overcommit controller's plan for an accepted config: an InvalidRatio condition, and no ratio written, when
    a ratio is unusable."""
    plan = overcommit.plan_node_overcommit([config], NODES, [], [], now="2025-01-01T00:00:00Z")
    conditions = {c["type"]: c for c in plan.config_status[config["metadata"]["name"]]["conditions"]}
    problems = overcommit.config_ratio_problems(config)
    assert (conditions["InvalidRatio"]["status"] == "True") == bool(problems)
    if problems:   # nodes keep their ratios: nothing half-applied
        assert all(not any("overcommit" in k and "ratio" in k for k in patch) for patch in plan.node_patches.values())
    return "accepted: InvalidRatio condition" if problems else "accepted and planned"


KINDS = {"TideNodePool": (crd_manifests.TIDE_NODE_POOL, TIDE_BASE, plan_tide),
         "NodeOvercommitConfig": (crd_manifests.NODE_OVERCOMMIT_CONFIG, NOC_BASE, plan_overcommit)}


@pytest.mark.parametrize("kind", sorted(KINDS))
@FUZZ
@given(data=st.data())
def test_crd_spec_refused_or_handled(emulator, kind, data):
    crd, base, plan = KINDS[kind]
    spec, fields = data.draw(mutated_specs(base, crd), label="spec and changed fields")
    obj, outcome = create_or_refuse(emulator, crd, spec, fields)
    record("%s spec (fuzzed, emulator)" % kind, plan(obj) if obj is not None else outcome)
