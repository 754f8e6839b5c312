"""Real OOM kills follow OOM priority strictly when our plan is applied, and do not without it.

Three "pods" (memory cgroups under one 128 MiB domain, a child of this test's own memory cgroup):
batch (reclaimed, priority -100) holds 8 MiB, web (shared, 50) 16 MiB, and system (system_cores, 250)
40 MiB and keeps growing, so memory runs out from inside the most important pod. The kubelet's
formula (all three Burstable with small requests on a large node) kills the biggest first: system.
With our oom_score_adj plan the kernel kills batch, then web, then system, every time. As in the
agent, the plan is recomputed as processes come and go (here every 5 ms, from the same engine).
"""

import os
import threading

import pytest

from ansible_collections.katalyst.colocation.plugins.module_utils import oom, oomobserver
from tests.integration import oomlib

pytestmark = pytest.mark.skipif(oomlib.usable() is not None, reason=str(oomlib.usable()))

PODS = [("batch", -100, 8, 0), ("web", 50, 16, 0), ("system", 250, 40, 300)]
LIMIT = 128 << 20


def run_once(index, use_plan, observer):
    """One OOM episode; returns (kill order from the kernel log, the observer's explanations)."""
    domain = oomlib.Domain("katalyst-oom-%d-%d" % (os.getpid(), index), LIMIT)
    log = oomlib.KernelLog()
    try:
        started = {pod: domain.start(pod, size, grow) for pod, _priority, size, grow in PODS}
        priorities = {pod: priority for pod, priority, _size, _grow in PODS}
        views = []
        with observer.priority_map() as priority_map:        # what the agent keeps in the map
            for pod, process in started.items():
                cgroup_id = os.stat(os.path.join(domain.path, pod)).st_ino
                priority_map.update(cgroup_id, priorities[pod])
                views.append(oomobserver.PodView(pod, "", priorities[pod], {cgroup_id}, {process.pid},
                                                 [(cgroup_id, False), (os.stat(domain.path).st_ino, True)], True))
        stop = threading.Event()
        replanner = None
        if use_plan:
            replan(started, priorities)
            replanner = threading.Thread(target=keep_replanning, args=(started, priorities, stop), daemon=True)
            replanner.start()
        else:
            node_capacity = 64 << 30
            for pod, process in started.items():
                request = dict((p, s) for p, _pr, s, _g in PODS)[pod] << 20
                with open("/proc/%d/oom_score_adj" % process.pid, "w") as handle:
                    handle.write(str(oom.kubelet_oom_score_adj("Burstable", request, node_capacity)))
        started["system"].stdin.write("grow\n")
        started["system"].stdin.flush()
        started["system"].wait(60)            # the grower is the last one standing (or the first to go)
        for view in views:                     # the agent's view when the pressure is over, before the cleanup below
            view.alive = started[view.name].poll() is None
        for process in started.values():
            try:
                process.wait(2)
            except Exception:  # pylint: disable=broad-except
                process.kill()                   # not OOM-killed: it outlived the memory pressure
        stop.set()
        if replanner:
            replanner.join(5)
        by_pid = {p.pid: pod for pod, p in started.items()}
        order = [by_pid[pid] for pid in log.killed_pids() if pid in by_pid]
        kills = [k for k in oomobserver.explain_kills(observer.drain(), views) if k["pod"] is not None]
        return order, kills
    finally:
        log.close()
        domain.close()


def replan(started, priorities):
    """One agent-style reconcile: current usage of the live processes in, oom_score_adj writes out."""
    groups = []
    for pod, process in started.items():
        try:
            with open("/proc/%d/oom_score_adj" % process.pid) as handle:
                current = int(handle.read())
            pages = oomlib.Domain.rss_pages(process.pid)
        except (OSError, ValueError):
            continue   # already gone
        groups.append(oom.Group(pod, priorities[pod], {process.pid: {"pages": pages, "oom_score_adj": current}}))
    plan, _adjustments = oom.plan_oom_score_adj(groups, LIMIT // 4096, negative_allowed=False)
    for change in plan:
        try:
            with open(change.target, "w") as handle:
                handle.write(str(change.after))
        except OSError:
            pass
    return plan


def keep_replanning(started, priorities, stop):
    while not stop.wait(0.005):
        replan(started, priorities)


@pytest.fixture(scope="module")
def observer(tmp_path_factory):
    loaded = oomlib.Observer(str(tmp_path_factory.mktemp("observer")), str(tmp_path_factory.mktemp("bpf-build")))
    yield loaded
    loaded.close()


def test_kill_order_follows_priority_10_of_10(observer):
    runs = [run_once(i, True, observer) for i in range(10)]
    assert [order for order, _kills in runs] == [["batch", "web", "system"]] * 10
    for order, kills in runs:
        # the observer saw every kill, read the right priority from the map, and found no inversion
        assert [(k["pod"], k["map_priority"], k["inversion"]) for k in kills] == [
            ("batch", -100, False), ("web", 50, False), ("system", 250, False)]


def test_without_the_plan_the_kubelet_formula_kills_the_wrong_pod_first(observer):
    order, kills = run_once(99, False, observer)
    assert order and order[0] == "system"
    assert kills[0]["pod"] == "system" and kills[0]["inversion"]
