"""The demo summary's node tables (sandbox/demo_report.py): Kubernetes objects as dicts in, rows and lines out."""

import json
import os

from ansible_collections.katalyst.colocation.plugins.module_utils import oom
from sandbox import demo_report

PREFIX = "katalyst.kubewharf.io/"


def node(name, labels=None, annotations=None, allocatable=None):
    return {"metadata": {"name": name, "labels": labels or {}, "annotations": annotations or {}},
            "status": {"capacity": {"cpu": "32", "memory": "64Gi"}, "allocatable": allocatable or {"cpu": "31500m", "memory": "63Gi"}}}


def pod(name, qos_level, oom_priority=None, node_name="n1", memory=None, numa_binding=False, bind_result=None, phase="Running"):
    enhancement = {}
    if oom_priority is not None:
        enhancement["oom_priority"] = oom_priority
    if numa_binding:
        enhancement["numa_binding"] = "true"
    annotations = {PREFIX + "qos_level": qos_level, PREFIX + "memory_enhancement": json.dumps(enhancement)}
    if bind_result is not None:
        annotations[PREFIX + "numa_bind_result"] = bind_result
    resources = {"requests": {"cpu": "1", "memory": memory}} if memory else {}
    return {"metadata": {"name": name, "namespace": demo_report.NAMESPACE, "uid": "uid-" + name, "annotations": annotations},
            "spec": {"nodeName": node_name, "containers": [{"name": "c", "resources": resources}]}, "status": {"phase": phase}}


def test_pods_come_in_kill_order_with_the_agents_planned_oom_score_adj():
    pods = [pod("db-0", "dedicated_cores", "150", memory="8Gi", numa_binding=True, bind_result="0"),
            pod("web-1", "shared_cores", "50", memory="2Gi"), pod("batch-1", "reclaimed_cores", "-10"),
            pod("done", "shared_cores", phase="Succeeded")]
    rows = demo_report.pod_rows(node("n1"), pods)
    assert [(row["name"], row["qos_level"], row["oom_priority"], row["numa"], row["source"]) for row in rows] == [
        ("batch-1", "reclaimed_cores", -10, "-", "planned"), ("web-1", "shared_cores", 50, "-", "planned"),
        ("db-0", "dedicated_cores", 150, "0", "planned")]
    # the same engine the agent runs, over the same pods, each assumed to use its memory request
    groups = [oom.Group(key, priority, {0: {"pages": pages, "oom_score_adj": 0}}) for key, priority, pages in (
        ("katalyst-demo/db-0", 150, (8 << 30) // 4096), ("katalyst-demo/web-1", 50, (2 << 30) // 4096), ("katalyst-demo/batch-1", -10, 0))]
    planned, _warnings = oom.compute_adjustments(groups, (64 << 30) // 4096, True)
    assert [row["oom_score_adj"] for row in rows] == [planned["katalyst-demo/batch-1"], planned["katalyst-demo/web-1"],
                                                      planned["katalyst-demo/db-0"]]
    assert rows[0]["oom_score_adj"] > rows[1]["oom_score_adj"] > rows[2]["oom_score_adj"]


def test_processes_on_this_host_give_the_actual_oom_score_adj():
    web, batch = pod("web-1", "shared_cores", "50", memory="2Gi"), pod("batch-1", "reclaimed_cores", "-10")
    processes = {"uid-web-1": oom.Group("katalyst-demo/web-1", 50, {10: {"pages": 100, "oom_score_adj": 900}})}
    rows = demo_report.pod_rows(node("n1"), [web, batch], processes, host_pages=1 << 20)
    by_name = {row["name"]: row for row in rows}
    assert (by_name["web-1"]["source"], by_name["web-1"]["oom_score_adj"]) == ("actual", 900)
    assert by_name["web-1"]["points"] == 100 + 900 * ((1 << 20) // 1000)      # the kernel's badness of its process
    assert by_name["batch-1"]["source"] == "planned"


def test_numa_binding_pods_show_the_agents_choice_or_pending():
    assert demo_report.numa_text(pod("a", "dedicated_cores", numa_binding=True, bind_result="2")) == "2"
    assert demo_report.numa_text(pod("a", "dedicated_cores", numa_binding=True)) == "pending"
    assert demo_report.numa_text(pod("a", "dedicated_cores", numa_binding=True, bind_result="x")) == "invalid"
    assert demo_report.numa_text(pod("a", "shared_cores")) == "-"


def test_overcommit_view_reads_the_webhooks_originals():
    annotations = {PREFIX + "cpu_overcommit_ratio": "1.5", PREFIX + "memory_overcommit_ratio": "1.2",
                   PREFIX + "original_allocatable_cpu": "31500m", PREFIX + "original_allocatable_memory": "63Gi",
                   PREFIX + "overcommit_allocatable_cpu": "47250m", PREFIX + "overcommit_allocatable_memory": "81174881894"}
    amplified = node("n1", {PREFIX + "overcommit_node_pool": "demo"}, annotations, {"cpu": "47250m", "memory": "81174881894"})
    view = demo_report.overcommit_view(amplified)
    assert view["pool"] == "demo" and view["resources"]["cpu"]["ratio"] == 1.5 and view["resources"]["cpu"]["amplified"]
    assert demo_report.allocatable_line(view).startswith("cpu 31.5 -> 47.25, memory 63.0Gi -> 75.6Gi")
    before_heartbeat = node("n1", {PREFIX + "overcommit_node_pool": "demo"}, annotations)
    assert demo_report.overcommit_view(before_heartbeat)["resources"]["cpu"]["pending"]
    assert demo_report.unsettled({"nodes": [before_heartbeat], "pods": [pod("web-1", "shared_cores")]}) == [
        "node n1: allocatable not amplified yet"]
    assert demo_report.allocatable_line(demo_report.overcommit_view(node("n2"))) == "cpu 31.5, memory 63.0Gi"


def test_tide_role_follows_the_pools_labels():
    pool = {"metadata": {"name": "p"}, "spec": {"nodeConfigs": {"reserve": {"online": 0, "offline": 1}}}}
    tide_labels = {"tide.katalyst.kubewharf.io/node-pool": "p", "tide.katalyst.kubewharf.io/node-type": "online",
                   "tide.katalyst.kubewharf.io/tide": "true", "tide.katalyst.kubewharf.io/reserve": "false"}
    assert demo_report.tide_role(node("n3", tide_labels), [pool]) == "online (tide node), pool p"
    reserve = {"tide.katalyst.kubewharf.io/node-pool": "p", "tide.katalyst.kubewharf.io/node-type": "offline",
               "tide.katalyst.kubewharf.io/reserve": "true"}
    assert demo_report.tide_role(node("n2", reserve), [pool]) == "offline (reserve), pool p"
    assert demo_report.tide_role(node("n1"), [pool]) == "not in a pool"


def test_unsettled_names_what_the_demo_still_waits_for():
    snapshot = {"nodes": [node("n1")], "pods": [pod("db-0", "dedicated_cores", numa_binding=True), pod("web-1", "shared_cores", phase="Pending")]}
    assert demo_report.unsettled(snapshot) == ["pod db-0 is not bound to a NUMA node yet", "pod web-1 is Pending"]
    assert demo_report.unsettled({"nodes": [], "pods": []}) == ["no pods in namespace katalyst-demo"]


def test_unsettled_waits_until_real_processes_are_in_priority_order():
    web, batch = pod("web-1", "shared_cores", "50", memory="2Gi"), pod("batch-1", "reclaimed_cores", "-10")
    snapshot = {"nodes": [node("n1")], "pods": [web, batch], "cnrs": [], "pools": []}

    def reports(web_adj, batch_adj):
        processes = {"uid-web-1": oom.Group("katalyst-demo/web-1", 50, {10: {"pages": 100, "oom_score_adj": web_adj}}),
                     "uid-batch-1": oom.Group("katalyst-demo/batch-1", -10, {11: {"pages": 50, "oom_score_adj": batch_adj}})}
        return demo_report.build_reports(snapshot, processes, host_pages=1 << 20)
    # before the agent has written them: web (oom_priority 50) would be killed before batch (-10)
    assert demo_report.unsettled(snapshot, reports=reports(900, 0)) == ["node n1: its pods' processes are not in priority order yet"]
    assert demo_report.unsettled(snapshot, reports=reports(0, 1000)) == []


def test_the_report_has_a_table_per_node():
    reclaimed = {"resource.katalyst.kubewharf.io/reclaimed_millicpu": "4k", "resource.katalyst.kubewharf.io/reclaimed_memory": "8Gi"}
    cnr = {"metadata": {"name": "n1"}, "status": {"topologyZone": [{"type": "Socket", "name": "0", "children": [
        {"type": "Numa", "name": "0", "resources": {"allocatable": reclaimed}}]}]}}
    snapshot = {"nodes": [node("n2"), node("n1")], "cnrs": [cnr], "pools": [],
                "pods": [pod("web-1", "shared_cores", "50", memory="2Gi"), pod("other", "shared_cores", node_name="n2")]}
    snapshot["pods"][1]["metadata"]["namespace"] = "default"
    lines = demo_report.format_report(demo_report.build_reports(snapshot))
    assert lines[0] == "n1   tide: not in a pool   no overcommit pool"
    assert lines[2] == "  reclaimed    NUMA0 cpu 4 mem 8.0Gi  (CNR)"
    assert lines[4].split() == ["1", "web-1", "shared_cores", "50", "-", "-999", "planned"]
    assert "no CustomNodeResource yet" in lines[7] and lines[9].split()[1] == "default/other"


def test_host_processes_finds_pod_cgroups_by_name_with_either_driver(tmp_path):
    guaranteed = pod("db-0", "dedicated_cores", memory="1Gi")
    burstable = pod("web-1", "shared_cores")
    burstable["metadata"]["uid"] = "1234-abcd"
    root = tmp_path / "sys/fs/cgroup"
    (root / "memory/kubelet/kubepods/poduid-db-0/c1").mkdir(parents=True)
    (root / "memory/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234_abcd.slice").mkdir(parents=True)
    (root / "memory/kubelet/kubepods/poduid-db-0/c1/cgroup.procs").write_text("%d\n" % os.getpid())
    (root / "memory/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234_abcd.slice/cgroup.procs").write_text("")
    proc = tmp_path / ("proc/%d" % os.getpid())
    proc.mkdir(parents=True)
    (proc / "statm").write_text("1000 200 0 0 0 0 0\n")
    (proc / "oom_score_adj").write_text("-997\n")
    from ansible_collections.katalyst.colocation.plugins.module_utils.sysfs import SysFS
    found = demo_report.host_processes([guaranteed, burstable], "/sys/fs/cgroup", SysFS(str(tmp_path)))
    assert list(found) == ["uid-db-0"]          # the burstable pod's cgroup has no process
    assert found["uid-db-0"].processes == {os.getpid(): {"pages": 200, "oom_score_adj": -997}}
