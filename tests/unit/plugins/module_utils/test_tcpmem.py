from ansible_collections.katalyst.colocation.plugins.module_utils import tcpmem


def test_each_container_gets_its_own_limit_not_the_pod_total():
    containers = [{"path": "/sys/fs/cgroup/memory/kubepods/podA/c1", "memory_limit_bytes": 4 << 30, "tcp_limit_bytes": None},
                  {"path": "/sys/fs/cgroup/memory/kubepods/podA/c2", "memory_limit_bytes": 8 << 30, "tcp_limit_bytes": None}]
    plan, report = tcpmem.plan_tcp_limits("v1", containers)
    assert report["supported"]
    assert [(c.target.rsplit("/", 2)[1], c.after) for c in plan] == [("c1", str(4 << 30)), ("c2", str(8 << 30))]


def test_clamp_alignment_and_idempotence():
    assert tcpmem.container_tcp_limit(1 << 30) == tcpmem.MIN_TCP_LIMIT            # floor 2 GiB
    assert tcpmem.container_tcp_limit(10 * (1 << 30) + 1, 50) % tcpmem.PAGE_SIZE == 0
    assert tcpmem.container_tcp_limit(4 << 30, 500) == 8 << 30                      # ratio clamped to 200%
    done = [{"path": "/x", "memory_limit_bytes": 4 << 30, "tcp_limit_bytes": 4 << 30}]
    assert not tcpmem.plan_tcp_limits("v1", done)[0].changed
    unlimited = [{"path": "/y", "memory_limit_bytes": tcpmem.UNLIMITED_V1, "tcp_limit_bytes": None}]
    assert not tcpmem.plan_tcp_limits("v1", unlimited)[0].changed


def test_v2_is_reported_not_supported():
    plan, report = tcpmem.plan_tcp_limits("v2", [{"path": "/z", "memory_limit_bytes": 4 << 30}])
    assert not plan.changed and not report["supported"] and "memory.max" in report["reason"] and plan.warnings
