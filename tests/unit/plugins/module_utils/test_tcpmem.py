# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""Per-container TCP memory limits (node spec §5.1): the engine, and the agent's tcp_memory pass on a sandbox sysroot."""

from __future__ import annotations

import json
import logging
import os

import pytest

from ansible_collections.katalyst.colocation.plugins.module_utils import tcpmem
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons import agent as agent_daemon
from sandbox.sysroot import build_sysroot

GI = 1 << 30


def test_each_container_gets_its_own_limit_not_the_pod_total():
    containers = [{"path": "/sys/fs/cgroup/memory/kubepods/podA/c1", "memory_limit_bytes": 4 << 30, "tcp_limit_content": None},
                  {"path": "/sys/fs/cgroup/memory/kubepods/podA/c2", "memory_limit_bytes": 8 << 30, "tcp_limit_content": None}]
    plan, report = tcpmem.plan_tcp_limits("v1", containers)
    assert report["supported"]
    assert [(c.target.rsplit("/", 2)[1], c.after) for c in plan] == [("c1", str(4 << 30)), ("c2", str(8 << 30))]


def test_clamp_alignment_and_idempotence():
    assert tcpmem.container_tcp_limit(1 << 30) == tcpmem.MIN_TCP_LIMIT            # floor 2 GiB
    assert tcpmem.container_tcp_limit(10 * (1 << 30) + 1, 50) % tcpmem.PAGE_SIZE == 0
    assert tcpmem.container_tcp_limit(4 << 30, 500) == 8 << 30                      # ratio clamped to 200%
    assert tcpmem.container_tcp_limit(20 << 30, 5) == 4 << 30                       # and up to 20%
    done = [{"path": "/x", "memory_limit_bytes": 4 << 30, "tcp_limit_content": "%d\n" % (4 << 30)}]
    assert not tcpmem.plan_tcp_limits("v1", done)[0].changed
    unlimited = [{"path": "/y", "memory_limit_bytes": tcpmem.UNLIMITED_V1, "tcp_limit_content": None}]
    assert not tcpmem.plan_tcp_limits("v1", unlimited)[0].changed


def test_v2_is_reported_not_supported():
    plan, report = tcpmem.plan_tcp_limits("v2", [{"path": "/z", "memory_limit_bytes": 4 << 30}])
    assert not plan.changed and not report["supported"] and "memory.max" in report["reason"] and plan.warnings


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_cgroup_ratio_0_writes_no_container_limits(version):
    """Katalyst: a raw --qrm-memory-cgroup-tcpmem-ratio of 0 stops before any container (not clamped to 20)."""
    containers = [{"path": "/sys/fs/cgroup/memory/kubepods/podA/c1", "memory_limit_bytes": 4 << 30, "tcp_limit_content": None},
                  {"path": "/sys/fs/cgroup/memory/kubepods/podA/c2", "memory_limit_bytes": 8 << 30, "tcp_limit_content": "bogus"}]
    plan, report = tcpmem.plan_tcp_limits(version, containers, 0)
    assert not plan.changed and not plan.warnings
    assert not report["enabled"] and report["unparsable"] == [] and "0" in report["reason"]
    assert not tcpmem.cgroup_limits_enabled(0) and not tcpmem.cgroup_limits_enabled("0")
    assert tcpmem.cgroup_limits_enabled(-5) and tcpmem.cgroup_limits_enabled(20)
    # any other value is still clamped into [20, 200], as Katalyst does
    assert [c.after for c in tcpmem.plan_tcp_limits("v1", containers[:1], -5)[0]] == [str(tcpmem.MIN_TCP_LIMIT)]


@pytest.mark.parametrize("content", ["", "max", "-1", "12abc", "1 2", "+4096", "1_000", "\u00b2"])
def test_unparsable_tcp_limit_skips_that_container_and_reports_it(content):
    """Katalyst has no reading for such a container and skips it; we skip it too and say which file holds what."""
    containers = [{"path": "/cg/bad", "memory_limit_bytes": 4 << 30, "tcp_limit_content": content},
                  {"path": "/cg/good", "memory_limit_bytes": 4 << 30, "tcp_limit_content": "9223372036854771712\n"},
                  {"path": "/cg/new", "memory_limit_bytes": 3 << 30, "tcp_limit_content": None}]
    plan, report = tcpmem.plan_tcp_limits("v1", containers)
    assert [(c.target, c.before, c.after) for c in plan] == [
        ("/cg/good/memory.kmem.tcp.limit_in_bytes", "9223372036854771712", str(4 << 30)),
        ("/cg/new/memory.kmem.tcp.limit_in_bytes", None, str(3 << 30))]
    assert report["unparsable"] == [{"file": "/cg/bad/memory.kmem.tcp.limit_in_bytes", "content": content}]
    assert tcpmem.parse_tcp_limit(" 4096\n") == 4096 and tcpmem.parse_tcp_limit(content) is None


class PodsAgent(agent_daemon.Agent):
    """The agent with a fixed list of running pods instead of the informer."""

    def __init__(self, config_path, pods):
        super().__init__(config_path)
        self.fixed_pods = pods

    def active_pods(self):
        return self.fixed_pods


@pytest.fixture
def node(tmp_path):
    """A cgroup v1 sandbox node with one running pod of two containers (3Gi and 5Gi memory limits) and their cgroups."""
    root = build_sysroot(str(tmp_path / "s"), cgroup="v1")
    pod = {"metadata": {"name": "web", "namespace": "default", "uid": "uid-web"},
           "spec": {"containers": [{"name": "a", "resources": {"limits": {"memory": "3Gi"}}},
                                   {"name": "b", "resources": {"limits": {"memory": "5Gi"}}}]},
           "status": {"phase": "Running", "qosClass": "Burstable",
                      "containerStatuses": [{"name": "a", "containerID": "containerd://aaa"},
                                            {"name": "b", "containerID": "containerd://bbb"}]}}
    base = root + "/sys/fs/cgroup/memory/kubepods/burstable/poduid-web/"
    for container_id in ("aaa", "bbb"):
        os.makedirs(base + container_id)

    def make_agent(**config):
        path = tmp_path / "agent.yaml"
        path.write_text(json.dumps(dict({"node_name": "n1", "sysroot": root, "tcp_memory_enabled": True}, **config)))
        return PodsAgent(str(path), [pod])
    return base, make_agent


def read(path):
    with open(path) as handle:
        return handle.read()


def test_agent_with_cgroup_ratio_0_writes_no_container_limits(node):
    base, make_agent = node
    make_agent(tcp_memory_cgroup_ratio=0).converge_tcp_memory()
    assert not os.path.exists(base + "aaa/memory.kmem.tcp.limit_in_bytes")
    assert not os.path.exists(base + "bbb/memory.kmem.tcp.limit_in_bytes")
    make_agent(tcp_memory_cgroup_ratio=100).converge_tcp_memory()      # the same node with the default ratio
    assert read(base + "aaa/memory.kmem.tcp.limit_in_bytes") == str(3 * GI)


def test_agent_skips_and_logs_once_an_unparsable_tcp_limit_others_go_on(node, caplog):
    base, make_agent = node
    bad = base + "aaa/memory.kmem.tcp.limit_in_bytes"
    with open(bad, "w") as handle:
        handle.write("garbage\n")
    agent = make_agent()
    caplog.set_level(logging.INFO, logger="katalyst.agent")
    for _pass in range(3):
        agent.converge_tcp_memory()
    assert read(bad) == "garbage\n"                                           # left as it is
    assert read(base + "bbb/memory.kmem.tcp.limit_in_bytes") == str(5 * GI)   # the other container goes on
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings                                       # once, not every pass
    assert "/sys/fs/cgroup/memory/kubepods/burstable/poduid-web/aaa/memory.kmem.tcp.limit_in_bytes" in warnings[0]
    assert "'garbage'" in warnings[0]
    with open(bad, "w") as handle:                                            # a new value is reported again
        handle.write("")
    agent.converge_tcp_memory()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "holds ''" in warnings[1]
    with open(bad, "w") as handle:                                            # once it parses, it is converged
        handle.write("9223372036854771712\n")
    agent.converge_tcp_memory()
    assert read(bad) == str(3 * GI)
