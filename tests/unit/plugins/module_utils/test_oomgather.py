from ansible_collections.katalyst.colocation.plugins.module_utils import oom, oomgather
from ansible_collections.katalyst.colocation.plugins.module_utils.sysfs import SysFS

ROOT = "/sys/fs/cgroup/memory"
UNLIMITED = str((1 << 63) - 4096)
MIB = 256  # pages


def tree(tmp_path, limits):
    """A v1 memory hierarchy under a sysroot: {relative cgroup dir: memory.limit_in_bytes}."""
    for relative, limit in limits.items():
        directory = tmp_path / (ROOT + relative).lstrip("/")
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "memory.limit_in_bytes").write_text(limit + "\n")
    return SysFS(str(tmp_path))


def test_the_shared_domain_is_the_smallest_limited_ancestor_of_the_pods(tmp_path):
    fs = tree(tmp_path, {"/kubepods": str(8 << 30), "/kubepods/burstable": str(200 << 20),
                         "/kubepods/burstable/poda": str(64 << 20), "/kubepods/burstable/podb": UNLIMITED,
                         "/kubepods/besteffort": UNLIMITED, "/kubepods/besteffort/podc": UNLIMITED})
    pods = [ROOT + "/kubepods/burstable/poda", ROOT + "/kubepods/burstable/podb", ROOT + "/kubepods/besteffort/podc"]
    # the tier's 200 MiB, not poda's own 64 MiB (only poda's processes die of that one), not the node
    assert oomgather.shared_domain_pages(fs, pods, ROOT, 16 << 18) == 200 * MIB
    assert oomgather.shared_domain_pages(fs, pods[2:], ROOT, 16 << 18) == 8 << 18       # only kubepods limits it
    assert oomgather.shared_domain_pages(fs, [], ROOT, 16 << 18) == 16 << 18


def test_a_plan_for_the_tier_keeps_the_order_in_a_tier_oom_where_a_plan_for_the_node_does_not():
    """The real-node case: batch 8 MiB, web 16 MiB, system grown to 170 MiB in a 200 MiB tier, no negative values."""
    groups = [oom.Group("batch", -100, {1: {"pages": 8 * MIB, "oom_score_adj": 999}}),
              oom.Group("web", 50, {2: {"pages": 16 * MIB, "oom_score_adj": 999}}),
              oom.Group("system", 250, {3: {"pages": 170 * MIB, "oom_score_adj": 999}})]
    tier, node = 200 * MIB, 24 << 18
    _plan, for_node = oom.plan_oom_score_adj(groups, node, negative_allowed=False)
    assert not oom.order_holds(groups, for_node, tier)
    _plan, for_tier = oom.plan_oom_score_adj(groups, tier, negative_allowed=False)
    assert oom.order_holds(groups, for_tier, tier) and oom.order_holds(groups, for_tier, node)


def test_the_lineage_on_cgroup_v1_names_every_ancestor_and_its_limit(tmp_path):
    """It used to read memory.max first and, absent on v1, lost every ancestor (the observer then saw only the node)."""
    fs = tree(tmp_path, {"/kubepods": UNLIMITED, "/kubepods/burstable": str(200 << 20), "/kubepods/burstable/poda": UNLIMITED})
    lineage = oomgather.cgroup_lineage(fs, ROOT + "/kubepods/burstable/poda", ROOT)
    assert [limited for _inode, limited in lineage] == [False, True, False]


def test_a_pod_whose_containers_all_died_runs_nothing_of_its_own_though_its_pause_process_lives(tmp_path):
    pod = tmp_path / "sys/fs/cgroup/memory/kubepods/besteffort/pod1"
    for name, procs in (("sandbox-id", "7\n"), ("container-id", "")):     # the pause process in the sandbox's cgroup
        (pod / name).mkdir(parents=True)
        (pod / name / "cgroup.procs").write_text(procs)
    (pod / "cgroup.procs").write_text("")
    fs = SysFS(str(tmp_path))
    base = "/sys/fs/cgroup/memory/kubepods/besteffort/pod1"
    assert oomgather.cgroup_pids(fs, base) == [7]
    assert not oomgather.own_processes(fs, [base + "/container-id"], [7])
    assert not oomgather.own_processes(fs, [base + "/gone-container"], [7])      # its cgroup already removed
    (pod / "container-id" / "cgroup.procs").write_text("8\n")
    assert oomgather.own_processes(fs, [base + "/container-id"], [7, 8])
    assert oomgather.own_processes(fs, [], [7])            # no container ids reported: the pod's processes count
    assert not oomgather.own_processes(fs, [], [])
