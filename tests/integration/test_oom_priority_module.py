"""The oom_priority module through ansible-playbook on a sysroot: by default it plans for the smallest OOM domain the
pods share (a QoS tier's memory limit), as katalyst-agent does, so the order holds in a tier OOM too."""

import json

from ansible_collections.katalyst.colocation.plugins.module_utils import oom
from tests.integration.ansible_runner import run_playbook

PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: order
      katalyst.colocation.oom_priority:
        sysroot: "{{ sysroot }}"
        pods: "{{ pods }}"
"""
TIER = "/sys/fs/cgroup/memory/kubepods/burstable"
TIER_BYTES = 512 << 20
PIDS = {"batch": 101, "web": 102, "big-web": 103}


def sysroot(tmp_path):
    """A v1 memory hierarchy with a 512 MiB burstable tier holding three pods (one process each) on a 64 GiB node."""
    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True)
    (root / "proc/meminfo").write_text("MemTotal: %d kB\nSwapTotal: 0 kB\n" % (64 << 20))
    (root / "proc/self").mkdir()
    (root / "proc/self/status").write_text("CapEff:\t0000000000000000\n")      # no CAP_SYS_RESOURCE: non-negative band
    (root / TIER.lstrip("/")).mkdir(parents=True)
    (root / TIER.lstrip("/") / "memory.limit_in_bytes").write_text("%d\n" % TIER_BYTES)
    for index, (name, pid) in enumerate(PIDS.items()):
        pod = root / TIER.lstrip("/") / ("pod-" + name)
        pod.mkdir()
        (pod / "memory.limit_in_bytes").write_text("%d\n" % ((1 << 63) - 4096))
        (pod / "cgroup.procs").write_text("%d\n" % pid)
        (root / "proc" / str(pid)).mkdir()
        (root / "proc" / str(pid) / "statm").write_text("1000 %d 0 0 0 0 0\n" % (1000 * (index + 1)))
        (root / "proc" / str(pid) / "oom_score_adj").write_text("0\n")
    return root


def test_the_module_plans_for_the_tier_the_pods_share_and_writes_every_process(tmp_path):
    root = sysroot(tmp_path)
    priorities = {"batch": "-50", "web": "10", "big-web": "90"}
    pods = [{"name": name, "cgroups": ["%s/pod-%s" % (TIER, name)],
             "annotations": {"katalyst.kubewharf.io/memory_enhancement": json.dumps({"oom_priority": priorities[name]}),
                             "katalyst.kubewharf.io/qos_level": "reclaimed_cores" if name == "batch" else "shared_cores"}}
            for name in PIDS]
    rc, tasks, output = run_playbook(PLAY, tmp_path, extra_vars={"sysroot": str(root), "pods": pods})
    assert rc == 0, output[-3000:]
    result = tasks["order"]
    assert result["totalpages"] == TIER_BYTES // 4096, result
    written = {name: int((root / "proc" / str(pid) / "oom_score_adj").read_text()) for name, pid in PIDS.items()}
    assert written == result["adjustments"] and written["batch"] > written["web"] > written["big-web"], written
    # the kernel's badness in the tier: strictly by priority though big-web is the largest
    points = {name: oom.badness(1000 * (index + 1), written[name], TIER_BYTES // 4096) for index, name in enumerate(PIDS)}
    assert points["batch"] > points["web"] > points["big-web"], points

    rc, tasks, output = run_playbook(PLAY, tmp_path, extra_vars={"sysroot": str(root), "pods": pods})
    assert rc == 0 and tasks["order"]["changed"] is False, output[-3000:]
