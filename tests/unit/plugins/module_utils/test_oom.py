from hypothesis import given, settings, strategies as st

from ansible_collections.katalyst.colocation.plugins.module_utils import oom

MIB = 256   # pages per MiB


def group(name, priority, *sizes_mib, start_pid=1):
    return oom.Group(name, priority, {start_pid + i: {"pages": s * MIB, "oom_score_adj": 0} for i, s in enumerate(sizes_mib)})


def victim_order(groups, adjustments, totalpages):
    """Simulate successive OOM kills: highest badness first, later task wins ties (as the kernel scans)."""
    alive = [(g, pid, p["pages"]) for g in groups for pid, p in sorted(g.processes.items())]
    order = []
    while alive:
        best = None
        for entry in alive:
            points = oom.badness(entry[2], adjustments[entry[0].name], totalpages)
            if points is None:
                continue
            if best is None or points >= best[0]:
                best = (points, entry)
        if best is None:
            break
        order.append(best[1][0].priority)
        alive.remove(best[1])
    return order


def test_tiers_are_spread_over_the_whole_range():
    groups = [group("batch", -100, 8), group("web", 50, 20, start_pid=5), group("system", 250, 60, start_pid=9)]
    assert oom.compute_adjustments(groups, 1 << 20, negative_allowed=False)[0] == {"system": 0, "web": 500, "batch": 1000}
    two = oom.compute_adjustments(groups[:2], 1 << 20, negative_allowed=True)[0]
    assert two == {"web": -999, "batch": 1000}


def test_big_high_priority_pod_survives_small_batch_pod():
    totalpages = 128 * MIB
    groups = [group("batch", -100, 8, start_pid=10), group("web", 50, 20, start_pid=20), group("system", 250, 60, start_pid=30)]
    plan, adjustments = oom.plan_oom_score_adj(groups, totalpages, negative_allowed=False)
    assert adjustments["system"] < adjustments["web"] < adjustments["batch"]
    assert victim_order(groups, adjustments, totalpages) == [-100, 50, 250]
    assert not plan.warnings
    assert {c.target for c in plan} == {"/proc/10/oom_score_adj", "/proc/20/oom_score_adj", "/proc/30/oom_score_adj"} - (
        {"/proc/30/oom_score_adj"} if adjustments["system"] == 0 else set())


def test_kubelet_formula_kills_the_wrong_one_first():
    capacity = 128 << 20
    kubelet = {"batch": oom.kubelet_oom_score_adj("Burstable", 8 << 20, capacity),
               "web": oom.kubelet_oom_score_adj("Burstable", 20 << 20, capacity),
               "system": oom.kubelet_oom_score_adj("Burstable", 24 << 20, capacity)}
    groups = [group("batch", -100, 8), group("web", 50, 20, start_pid=5), group("system", 250, 60, start_pid=9)]
    assert victim_order(groups, kubelet, 128 * MIB)[0] == 250


def test_never_kill_is_exempt_when_negative_values_are_allowed():
    groups = [group("critical", 300, 50), group("batch", -100, 1, start_pid=5)]
    _plan, adjustments = oom.plan_oom_score_adj(groups, 1 << 20, negative_allowed=True)
    assert adjustments["critical"] == -1000
    _plan, adjustments = oom.plan_oom_score_adj(groups, 1 << 20, negative_allowed=False)
    assert adjustments["critical"] == 0


def test_impossible_order_is_reported_and_best_kept():
    # a tiny domain: adj cannot outweigh a 2 GiB difference
    groups = [group("batch", -100, 1), group("web", 50, 2048, start_pid=5), group("db", 60, 2048, start_pid=9)]
    plan, adjustments = oom.plan_oom_score_adj(groups, 10000, negative_allowed=False)
    assert any("strict order impossible" in w for w in plan.warnings)
    assert adjustments["batch"] >= adjustments["web"] >= adjustments["db"]


def test_order_holds_detects_usage_shift():
    totalpages = 1 << 16
    groups = [group("batch", -100, 8), group("web", 50, 20, start_pid=5)]
    _plan, adjustments = oom.plan_oom_score_adj(groups, totalpages, negative_allowed=False, margin_pages=0, margin_ratio=0)
    assert oom.order_holds(groups, adjustments, totalpages)
    groups[1].processes[5]["pages"] += 512 * MIB     # web grows a lot
    assert not oom.order_holds(groups, adjustments, totalpages)


def test_plan_writes_only_what_differs():
    groups = [group("a", 10, 5)]
    plan, adjustments = oom.plan_oom_score_adj(groups, 1 << 20, negative_allowed=False)
    groups[0].processes[1]["oom_score_adj"] = adjustments["a"]
    assert not oom.plan_oom_score_adj(groups, 1 << 20, negative_allowed=False)[0].changed


def test_inversion_metric():
    assert oom.is_priority_inversion(50, [60, -100])
    assert not oom.is_priority_inversion(-100, [-100, 50])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(-100, 299), st.lists(st.integers(1, 4096), min_size=1, max_size=3)), min_size=1, max_size=8),
       st.integers(min_value=1 << 20, max_value=1 << 24), st.booleans())
def test_badness_order_equals_priority_order_when_the_range_allows(spec, totalpages, negative):
    groups = [oom.Group("g%d" % i, prio, {i * 10 + j: {"pages": s * MIB // 16, "oom_score_adj": 0} for j, s in enumerate(sizes)})
              for i, (prio, sizes) in enumerate(spec)]
    plan, adjustments = oom.plan_oom_score_adj(groups, totalpages, negative)
    if not any("impossible" in w for w in plan.warnings):
        order = victim_order(groups, adjustments, totalpages)
        assert order == sorted(order)
        assert oom.order_holds(groups, adjustments, totalpages)
