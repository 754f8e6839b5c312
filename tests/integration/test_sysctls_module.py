"""The sysctls module on a sandbox sysroot through ansible-playbook: TCP memory input it refuses (node spec §5.1)
instead of overwriting or clamping, with the file, the content or the value in the message and nothing written."""

import os

from sandbox.sysroot import build_sysroot
from tests.integration.ansible_runner import run_playbook

PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: unparsable
      katalyst.colocation.sysctls:
        sysroot: "{{ root }}"
        tcp_mem_ratio: 20
        settings: {vm.swappiness: 10}
      ignore_errors: true
    - name: out of range
      katalyst.colocation.sysctls:
        sysroot: "{{ root }}"
        tcp_mem_ratio: 90
      ignore_errors: true
"""


def test_tcp_mem_content_and_ratio_refused_with_nothing_written(tmp_path):
    root = build_sysroot(str(tmp_path / "node"))
    with open(root + "/proc/sys/net/ipv4/tcp_mem", "w") as handle:
        handle.write("garbage 1\n")
    rc, tasks, out = run_playbook(PLAY, tmp_path, extra_vars={"root": root})
    assert rc == 0, out
    assert tasks["unparsable"]["failed"], out
    assert tasks["unparsable"]["msg"].startswith("/proc/sys/net/ipv4/tcp_mem: cannot parse its current content 'garbage 1'"), out
    assert tasks["out of range"]["failed"], out
    assert tasks["out of range"]["msg"] == "tcp_mem_ratio=90 is out of range: 20-80 (percent of memory that TCP buffers may use)", out
    assert open(root + "/proc/sys/net/ipv4/tcp_mem").read() == "garbage 1\n"
    assert open(root + "/proc/sys/vm/swappiness").read().strip() == "60"
    assert not os.path.exists(root + "/etc/sysctl.d/90-katalyst.conf")
    assert not os.path.exists(root + "/var/lib/katalyst/sysctl-originals.json")
