"""The oom_hook role on this host's kernel: mounts a bpffs, builds the CO-RE observer with clang,
loads and pins it through libbpf; idempotent; check mode reports without touching; absent unloads."""

import os
import subprocess

import pytest

from ansible_collections.katalyst.colocation.plugins.module_utils import bpf
from tests.integration.ansible_runner import REPO, run_playbook

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF needs root")

LOAD = "katalyst.colocation.oom_hook : Build, load and pin the observer"
PLAY = """
- hosts: localhost
  gather_facts: false
  roles:
    - role: katalyst.colocation.oom_hook
"""


def role(tmp_path, bpffs, state="present", check=False, build_on="node"):
    extra = {"oom_hook_state": state, "oom_hook_build_on": build_on, "oom_hook_install_packages": False, "oom_hook_bpffs": str(bpffs),
             "oom_hook_pin_dir": str(bpffs / "katalyst"), "oom_hook_source_dir": str(tmp_path / "src"),
             "oom_hook_build_dir": str(tmp_path / "build")}
    code, tasks, output = run_playbook(PLAY, tmp_path, ["--check", "--diff"] if check else [], extra)
    assert code == 0, output[-3000:]
    return tasks


def mounted(path):
    return bpf.is_bpffs(str(path)) and any(line.split()[1] == str(path) for line in open("/proc/self/mounts"))


@pytest.mark.parametrize("build_on", ["node", "controller"])
def test_role_loads_the_observer_idempotently_and_unloads_it(tmp_path, build_on):
    bpffs = tmp_path / "bpffs"
    bpffs.mkdir()
    try:
        first = role(tmp_path, bpffs, build_on=build_on)
        assert mounted(bpffs)
        assert first[LOAD]["changed"] is True
        assert "on_mark_victim" in first[LOAD]["programs"]
        pins = sorted(os.listdir(bpffs / "katalyst"))
        assert {"oom_priority", "oom_events", "link_on_mark_victim"} <= set(pins)
        with bpf.PinnedMap(str(bpffs / "katalyst" / "oom_priority")) as priority_map:
            priority_map.update(4242, -50)

        again = role(tmp_path, bpffs, build_on=build_on)
        assert not any(task.get("changed") for task in again.values()), again
        assert role(tmp_path, bpffs, check=True, build_on=build_on)[LOAD]["changed"] is False
        check = role(tmp_path, bpffs, state="absent", check=True)
        assert check[LOAD]["changed"] is True
        assert sorted(os.listdir(bpffs / "katalyst")) == pins        # check mode touched nothing
        with bpf.PinnedMap(str(bpffs / "katalyst" / "oom_priority")) as priority_map:
            assert priority_map.items() == {4242: -50}                # the map kept its entry all along

        gone = role(tmp_path, bpffs, state="absent")
        assert gone[LOAD]["changed"] is True
        assert os.listdir(bpffs / "katalyst") == []
        assert role(tmp_path, bpffs, state="absent")[LOAD]["changed"] is False
    finally:
        subprocess.run(["umount", "-l", str(bpffs)], check=False)


def test_a_broken_source_is_a_clear_failure(tmp_path):
    bad = tmp_path / "bad.bpf.c"
    bad.write_text("this is not C\n")
    play = """
- hosts: localhost
  gather_facts: false
  tasks:
    - katalyst.colocation.oom_hook:
        source: %s
        build_dir: %s
        pin_dir: /sys/fs/bpf/katalyst-test-never
""" % (bad, tmp_path / "build")
    code, _tasks, output = run_playbook(play, tmp_path)
    assert code != 0
    assert "clang failed" in output or "not on a mounted bpffs" in output
    assert REPO
