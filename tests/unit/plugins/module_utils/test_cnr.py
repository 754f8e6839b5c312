# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""CNR engine: revise rule (Katalyst's TestReviseReclaimedResource cases), status rendering, lifecycle."""

from __future__ import annotations

import pytest

from ansible_collections.katalyst.colocation.plugins.module_utils.cnr import (
    CNRError, RECLAIMED_MEMORY, RECLAIMED_MILLICPU, build_cnr_status, numa_sockets_from_facts, plan_cnr_lifecycle,
    plan_cnr_status, reclaimed_from_cnr, revise_reclaimed,
)
from ansible_collections.katalyst.colocation.plugins.module_utils.quantity import parse_quantity

CPU, MEM = RECLAIMED_MILLICPU, RECLAIMED_MEMORY


def same(got, want):
    """Semantic equality of resource maps (apiequality.Semantic.DeepEqual on Quantities)."""
    assert set(got) == set(want), (got, want)
    for key, value in want.items():
        if isinstance(value, dict):
            same(got[key], value)
        else:
            assert parse_quantity(got[key]) == parse_quantity(value), (key, got[key], value)


# -- cnr/revise/* : headroom_reporter_test.go TestReviseReclaimedResource ------------------------
def test_revise_valid_resource_aggregation_unchanged():
    out = revise_reclaimed({"cpu": "10"}, {"cpu": "20"}, {"0": {"cpu": "5"}}, {"0": {"cpu": "10"}})
    assert out == {"allocatable": {"cpu": "10"}, "capacity": {"cpu": "20"},
                   "numa_allocatable": {"0": {"cpu": "5"}}, "numa_capacity": {"0": {"cpu": "10"}}}


def test_revise_zero_allocatable_with_defaults():
    out = revise_reclaimed({"cpu": "0"}, {"cpu": "20"}, {"0": {"cpu": "0"}}, {"0": {"cpu": "10"}})
    same(out["allocatable"], {"cpu": "0"})
    same(out["capacity"], {"cpu": "20"})
    same(out["numa_allocatable"], {"0": {"cpu": "0"}})
    same(out["numa_capacity"], {"0": {"cpu": "10"}})


def test_revise_mixed_zero_and_non_zero_allocatable():
    out = revise_reclaimed(
        {"cpu": "4", "memory": "30Gi"}, {"cpu": "8", "memory": "30Gi"},
        {"0": {"cpu": "0", "memory": "15Gi"}, "1": {"cpu": "4", "memory": "15Gi"}},
        {"0": {"cpu": "4", "memory": "15Gi"}, "1": {"cpu": "4", "memory": "15Gi"}},
        min_ignored={"cpu": "0", "memory": "0Gi"})
    same(out["allocatable"], {"cpu": "4", "memory": "15Gi"})
    assert out["allocatable"] == {"cpu": "4", "memory": "15Gi"}
    same(out["capacity"], {"cpu": "8", "memory": "30Gi"})
    same(out["numa_allocatable"], {"0": {"cpu": "0", "memory": "0"}, "1": {"cpu": "4", "memory": "15Gi"}})
    same(out["numa_capacity"], {"0": {"cpu": "4", "memory": "15Gi"}, "1": {"cpu": "4", "memory": "15Gi"}})


def test_revise_small_numa_allocatable_zeroes_everything():
    out = revise_reclaimed(
        {"cpu": "0.6", "memory": "30Gi"}, {"cpu": "8", "memory": "30Gi"},
        {"0": {"cpu": "0.3", "memory": "15Gi"}, "1": {"cpu": "0.3", "memory": "15Gi"}},
        {"0": {"cpu": "4", "memory": "15Gi"}, "1": {"cpu": "4", "memory": "15Gi"}},
        min_ignored={"cpu": "0.5", "memory": "0Gi"})
    same(out["allocatable"], {"cpu": "0", "memory": "0"})
    same(out["capacity"], {"cpu": "8", "memory": "30Gi"})
    same(out["numa_allocatable"], {"0": {"cpu": "0", "memory": "0"}, "1": {"cpu": "0", "memory": "0"}})
    same(out["numa_capacity"], {"0": {"cpu": "4", "memory": "15Gi"}, "1": {"cpu": "4", "memory": "15Gi"}})


def test_revise_report_name_differs_from_resource_name():
    out = revise_reclaimed(
        {CPU: "4000", MEM: "30Gi"}, {CPU: "8000", MEM: "30Gi"},
        {0: {CPU: "0", MEM: "15Gi"}, 1: {CPU: "4000", MEM: "15Gi"}},
        {0: {CPU: "4000", MEM: "15Gi"}, 1: {CPU: "4000", MEM: "15Gi"}},
        min_ignored={"cpu": "0", "memory": "0Gi"})
    same(out["allocatable"], {CPU: "4000", MEM: "15Gi"})
    same(out["capacity"], {CPU: "8000", MEM: "30Gi"})
    same(out["numa_allocatable"], {"0": {CPU: "0", MEM: "0"}, "1": {CPU: "4000", MEM: "15Gi"}})
    same(out["numa_capacity"], {"0": {CPU: "4000", MEM: "15Gi"}, "1": {CPU: "4000", MEM: "15Gi"}})


# -- defaults: cpu 0.1 (compared in milli for reclaimed_millicpu), memory 100Mi ----------------
def test_default_threshold_for_millicpu_is_100_milli():
    numa_cap = {"0": {CPU: "24k", MEM: "64Gi"}, "1": {CPU: "24k", MEM: "64Gi"}}
    # 100 milli-cores exactly is at the threshold (<=) -> zeroed; 101 is kept
    out = revise_reclaimed({CPU: "10100", MEM: "20Gi"}, {CPU: "48k", MEM: "128Gi"},
                           {"0": {CPU: "100", MEM: "10Gi"}, "1": {CPU: "10k", MEM: "10Gi"}}, numa_cap)
    same(out["numa_allocatable"]["0"], {CPU: "0", MEM: "0"})
    assert out["allocatable"] == {CPU: "10k", MEM: "10Gi"}
    out = revise_reclaimed({CPU: "10101", MEM: "20Gi"}, {CPU: "48k", MEM: "128Gi"},
                           {"0": {CPU: "101", MEM: "10Gi"}, "1": {CPU: "10k", MEM: "10Gi"}}, numa_cap)
    assert out["numa_allocatable"]["0"] == {CPU: "101", MEM: "10Gi"}
    assert out["allocatable"] == {CPU: "10101", MEM: "20Gi"}


def test_default_memory_threshold_100mi_zeroes_numa_and_node_sums():
    out = revise_reclaimed({CPU: "8k", MEM: "2Gi"}, {CPU: "8k", MEM: "2Gi"},
                           {"0": {CPU: "4k", MEM: "100Mi"}, "1": {CPU: "2k", MEM: "1Gi"}, "2": {CPU: "2k", MEM: "1Gi"}},
                           {"0": {CPU: "4k", MEM: "1Gi"}, "1": {CPU: "2k", MEM: "1Gi"}, "2": {CPU: "2k", MEM: "1Gi"}})
    assert out["numa_allocatable"]["0"] == {CPU: "0", MEM: "0"}
    assert out["allocatable"] == {CPU: "4k", MEM: "2Gi"}
    assert out["capacity"] == {CPU: "8k", MEM: "2Gi"}


def test_node_revised_without_numa():
    out = revise_reclaimed({CPU: "50", MEM: "10Gi"}, {CPU: "50", MEM: "10Gi"}, {}, {})
    assert out["allocatable"] == {CPU: "0", MEM: "0"}
    assert out["capacity"] == {CPU: "50", MEM: "10Gi"}


def test_resource_without_threshold_never_triggers():
    out = revise_reclaimed({"example.com/foo": "0"}, {}, {"0": {"example.com/foo": "0"}}, {"0": {}})
    assert out["allocatable"] == {"example.com/foo": "0"}


def test_min_ignored_by_report_name_and_inputs_untouched():
    numa = {"0": {CPU: "500", MEM: "1Gi"}}
    out = revise_reclaimed({CPU: "500", MEM: "1Gi"}, {}, numa, {"0": {}}, min_ignored={CPU: "500"})
    assert out["numa_allocatable"]["0"] == {CPU: "0", MEM: "0"}
    assert numa == {"0": {CPU: "500", MEM: "1Gi"}}


@pytest.mark.parametrize("args", [
    ({"cpu": "ten"}, {}, {}, {}),
    ({"cpu": "1"}, {}, {"x": {}}, {}),
    ({"cpu": "1"}, {}, {"0": ["1"]}, {}),
    ({"cpu": "1"}, {}, {}, {}, "100m"),
])
def test_revise_refuses_bad_input(args):
    with pytest.raises(CNRError):
        revise_reclaimed(*args)


# -- status -------------------------------------------------------------------------------------
FACTS = {"numa_nodes": [{"id": 0, "cpu_count": 4, "socket": 0}, {"id": 1, "cpu_count": 4, "socket": 0},
                        {"id": 2, "cpu_count": 4, "socket": 1}, {"id": 10, "cpu_count": 4, "socket": 1}]}


def test_build_cnr_status_socket_numa_zones_sorted_as_strings():
    sockets = numa_sockets_from_facts(FACTS)
    assert sockets == {"0": "0", "1": "0", "2": "1", "10": "1"}
    numa = {n: {CPU: "2k", MEM: "1Gi"} for n in sockets}
    reclaimed = revise_reclaimed({CPU: "8k", MEM: "4Gi"}, {CPU: "8k", MEM: "4Gi"}, numa, numa)
    status = build_cnr_status(reclaimed, sockets)
    assert status["resources"] == {"allocatable": {CPU: "8k", MEM: "4Gi"}, "capacity": {CPU: "8k", MEM: "4Gi"}}
    zones = status["topologyZone"]
    assert [(z["type"], z["name"]) for z in zones] == [("Socket", "0"), ("Socket", "1")]
    assert [c["name"] for c in zones[1]["children"]] == ["10", "2"]     # Go sorts names as strings
    assert zones[0]["children"][0] == {"type": "Numa", "name": "0", "resources": {
        "allocatable": {CPU: "2k", MEM: "1Gi"}, "capacity": {CPU: "2k", MEM: "1Gi"}}}


def test_build_cnr_status_errors():
    with pytest.raises(CNRError, match="miss capacity"):
        build_cnr_status({"allocatable": {}, "capacity": {}, "numa_allocatable": {"0": {CPU: "1"}}, "numa_capacity": {}}, {"0": "0"})
    with pytest.raises(CNRError, match="socket map"):
        build_cnr_status({"allocatable": {}, "capacity": {}, "numa_allocatable": {"3": {CPU: "1"}},
                          "numa_capacity": {"3": {CPU: "1"}}}, {"0": "0"})


def test_plan_cnr_status_creates_patches_and_is_idempotent():
    sockets = {"0": "0", "1": "0"}
    numa = {"0": {CPU: "2k", MEM: "1Gi"}, "1": {CPU: "2k", MEM: "1Gi"}}
    status = build_cnr_status(revise_reclaimed({CPU: "4k", MEM: "2Gi"}, {CPU: "4k", MEM: "2Gi"}, numa, numa), sockets)
    plan = plan_cnr_status("n1", None, status)
    assert [c.action for c in plan] == ["create", "patch"]
    assert plan.changes[1].data["subresource"] == "status"
    # same values spelled differently and another reporter's zone attributes: no change
    current = {"metadata": {"name": "n1"}, "status": {
        "resources": {"allocatable": {CPU: "4000", MEM: "2048Mi", "cpu": "1"}, "capacity": {CPU: "4k", MEM: "2Gi"}},
        "topologyZone": [{"type": "Socket", "name": "0", "children": [
            {"type": "Numa", "name": "1", "attributes": [{"name": "numa_distance", "value": "10,20"}],
             "resources": {"allocatable": {CPU: "2000", MEM: "1Gi", "cpu": "4"}, "capacity": {CPU: "2k", MEM: "1Gi"}}},
            {"type": "Numa", "name": "0", "resources": {"allocatable": {CPU: "2k", MEM: "1Gi"}, "capacity": {CPU: "2k", MEM: "1Gi"}}}]}]}}
    assert not plan_cnr_status("n1", current, status)
    numa["1"] = {CPU: "1k", MEM: "1Gi"}
    changed = build_cnr_status(revise_reclaimed({CPU: "3k", MEM: "2Gi"}, {CPU: "4k", MEM: "2Gi"}, numa, numa), sockets)
    plan = plan_cnr_status("n1", current, changed)
    assert [c.action for c in plan] == ["patch"]
    patch = plan.changes[0].data["patch"]["status"]
    assert patch["resources"]["allocatable"] == {CPU: "3k", MEM: "2Gi", "cpu": "1"}
    numa1 = patch["topologyZone"][0]["children"][1]
    assert numa1["attributes"] == [{"name": "numa_distance", "value": "10,20"}]
    assert numa1["resources"]["allocatable"] == {CPU: "1k", MEM: "1Gi", "cpu": "4"}


def test_reclaimed_from_cnr_reads_zones():
    numa = {"0": {CPU: "2k", MEM: "1Gi"}, "1": {CPU: "bogus", MEM: "1Gi"}}
    reclaimed = {"allocatable": {CPU: "4k"}, "capacity": {}, "numa_allocatable": {"0": numa["0"]}, "numa_capacity": {"0": numa["0"]}}
    status = build_cnr_status(reclaimed, {"0": "0", "1": "1"})
    status["topologyZone"][1]["children"][0]["resources"] = {"allocatable": numa["1"]}
    got = reclaimed_from_cnr({"status": status})
    assert got["allocatable"][CPU].value() == 4000
    assert got["numa_allocatable"]["0"][MEM].value() == 2 ** 30
    assert got["numa_allocatable"]["1"][CPU].value() == 0      # unparsable counts as zero
    assert got["numa_allocatable"]["1"][MEM].value() == 2 ** 30
    assert got["numa_sockets"] == {"0": "0", "1": "1"}


# -- cnr-lifecycle/* : lifecycle/cnr_test.go ------------------------------------------------------
OWNER = {"apiVersion": "v1", "kind": "Node", "name": "node1", "uid": "", "controller": True, "blockOwnerDeletion": True}


def test_lifecycle_create():
    plan = plan_cnr_lifecycle([{"metadata": {"name": "node1", "labels": {"test": "test"}}}], [])
    assert len(plan) == 1 and plan.changes[0].action == "create"
    body = plan.changes[0].data["object"]
    assert body["apiVersion"] == "node.katalyst.kubewharf.io/v1alpha1" and body["kind"] == "CustomNodeResource"
    assert body["metadata"] == {"name": "node1", "labels": {"test": "test"}, "ownerReferences": [OWNER]}


def test_lifecycle_update_merges_labels_node_wins():
    node = {"metadata": {"name": "node1", "labels": {"test": "test-1"}}}
    cnr = {"metadata": {"name": "node1", "labels": {"test": "test", "cnr-only": "kept"}}}
    plan = plan_cnr_lifecycle([node], [cnr])
    assert [c.action for c in plan] == ["patch"]
    assert plan.changes[0].data["patch"]["metadata"] == {"labels": {"test": "test-1", "cnr-only": "kept"}, "ownerReferences": [OWNER]}
    converged = {"metadata": {"name": "node1", "labels": {"test": "test-1", "cnr-only": "kept"}, "ownerReferences": [OWNER]}}
    assert not plan_cnr_lifecycle([node], [converged])


def test_lifecycle_gc_orphans():
    node = {"metadata": {"name": "a", "uid": "u1"}}
    cnrs = [{"metadata": {"name": "a", "ownerReferences": [dict(OWNER, name="a", uid="u1")]}}, {"metadata": {"name": "gone"}}]
    plan = plan_cnr_lifecycle([node], cnrs)
    assert [(c.action, c.target) for c in plan] == [("delete", "CustomNodeResource/gone")]
    assert plan.changes[0].data["confirm_node_absent"] is True
