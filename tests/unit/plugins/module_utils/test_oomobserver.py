import struct

from ansible_collections.katalyst.colocation.plugins.module_utils import bpf
from ansible_collections.katalyst.colocation.plugins.module_utils.oomobserver import PodView, explain_kills


def event(pid, ts, memory_cgroup_id=0, domain=None, priority=None):
    return {"pid": pid, "timestamp_ns": ts, "cgroup_id": 1, "memory_cgroup_id": memory_cgroup_id, "comm": "python3",
            "domain_known": domain is not None, "domain_cgroup_id": domain or 0, "priority": priority, "points": None,
            "oom_score_adj": 100, "source": "tp_btf/mark_victim"}


def pods(alive=("batch", "web", "system")):
    lineage = [(900, True), (1, False)]       # all three under one limited parent cgroup 900
    return [PodView("default/batch", "reclaimed_cores", -100, {10, 11}, {101}, [(10, False)] + lineage, "batch" in alive),
            PodView("default/web", "shared_cores", 50, {20}, {201}, [(20, False)] + lineage, "web" in alive),
            PodView("default/system", "system_cores", 200, {30}, {301}, [(30, False)] + lineage, "system" in alive)]


def test_kills_in_priority_order_are_not_inversions():
    kills = explain_kills([event(201, 2, 20), event(101, 1, 11)], pods(alive=("system",)))
    assert [(k["pod"], k["qos_level"], k["priority"], k["inversion"]) for k in kills] == [
        ("default/batch", "reclaimed_cores", -100, False), ("default/web", "shared_cores", 50, False)]
    assert kills[0]["domain_cgroup_id"] == 900 and kills[0]["domain_source"] == "nearest limited cgroup"
    assert "no lower-priority pod was alive" in kills[0]["message"]


def test_killing_system_while_batch_lives_is_an_inversion():
    kills = explain_kills([event(301, 1, 30)], pods(alive=("batch", "web")))
    assert kills[0]["inversion"] and kills[0]["lower_priority_alive"] == ["default/batch", "default/web"]
    assert "PRIORITY INVERSION" in kills[0]["message"]


def test_a_lower_pod_killed_later_was_alive_at_the_first_kill():
    kills = explain_kills([event(301, 1, 30), event(101, 5, 10)], pods(alive=()))
    assert [k["inversion"] for k in kills] == [True, False]


def test_pods_outside_the_reported_domain_do_not_count():
    views = pods()
    views[0].lineage = [(10, False), (555, True), (1, False)]     # batch lives in another memory cgroup
    kills = explain_kills([event(201, 1, 20, domain=900)], views)
    assert kills[0]["domain_source"] == "reported" and not kills[0]["inversion"]


def test_victims_are_found_by_pid_when_the_kernel_gave_no_cgroup():
    kills = explain_kills([event(301, 1, 0)], pods(alive=()))
    assert kills[0]["pod"] == "default/system"
    unknown = explain_kills([event(999, 1, 0)], pods())[0]
    assert unknown["pod"] is None and unknown["qos_level"] == "none" and not unknown["inversion"]


def test_a_victim_whose_container_is_already_gone_is_found_in_the_previous_pass():
    """Read after the kill, the current view of batch has lost the killed container's cgroup (11) and pid (101)."""
    before = pods()
    now = pods(alive=("web", "system"))
    now[0].cgroup_ids, now[0].pids = {10}, set()
    kills = explain_kills([event(101, 1, 11)], now, history=before)
    assert kills[0]["pod"] == "default/batch" and not kills[0]["inversion"]
    assert explain_kills([event(101, 1, 11)], now)[0]["pod"] is None      # what the agent said before it kept history
    kills = explain_kills([event(101, 1, 11), event(301, 2, 30)], now, history=before)
    assert kills[1]["pod"] == "default/system" and kills[1]["lower_priority_alive"] == ["default/web"]


def test_a_pod_whose_processes_all_died_earlier_in_the_batch_is_not_alive():
    views = pods()          # read before the kills: all three alive
    kills = explain_kills([event(101, 1, 11), event(301, 2, 30)], views)
    assert kills[1]["lower_priority_alive"] == ["default/web"]


def test_priority_map_plan_writes_only_what_differs_and_drops_stale_ids():
    plan = bpf.plan_priority_map({1: -100, 2: 50, 3: 7}, {1: -100, 2: 60, 4: 200})
    assert [(c.target, c.action, c.before, c.after) for c in plan] == [
        ("2", "set", 50, 60), ("4", "create", None, 200), ("3", "delete", 7, None)]
    assert not bpf.plan_priority_map({1: 5}, {1: 5})


def test_events_decode_from_the_bpf_struct_layout():
    raw = struct.pack(bpf.EVENT_FORMAT, 7, 1, 2, 3, bpf.NO_PRIORITY, -1, 42, -998, 2, 0, b"python3\0\0\0\0\0\0\0\0\0")
    decoded = bpf.decode_event(raw)
    assert decoded["pid"] == 42 and decoded["comm"] == "python3" and decoded["priority"] is None and decoded["points"] is None
    assert decoded["oom_score_adj"] == -998 and decoded["source"] == "tp_btf/mark_victim" and decoded["domain_known"] is False


def test_a_pod_left_with_its_sandbox_only_is_not_alive_nor_a_later_victim():
    """batch's container (101) dies, then web (201), then batch's pause process (102): web's kill is no inversion, as batch
    had no workload left (the real-node OOM test saw the kernel take pause last under load). A container pid killed
    later still makes it one."""
    views = pods(alive=("batch", "web", "system"))
    views[0].pids, views[0].own_pids = {101, 102}, {101}
    kills = explain_kills([event(101, 1, 11), event(201, 2, 20), event(102, 3, 10)], views)
    assert [k["inversion"] for k in kills] == [False, False, False]
    views[0].pids, views[0].own_pids = {101, 102, 103}, {101, 103}
    kills = explain_kills([event(101, 1, 11), event(201, 2, 20), event(103, 3, 11)], views)
    assert kills[1]["inversion"] and kills[1]["lower_priority_alive"] == ["default/batch"]
