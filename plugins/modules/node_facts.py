#!/usr/bin/python
# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE); modules are also offered under the
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: node_facts
short_description: Gather the NUMA, cgroup, BPF and kernel facts colocation needs
version_added: 0.1.0
description:
  - Returns C(ansible_facts.katalyst) with NUMA nodes (CPU lists, memory, socket), sockets and SMT siblings, the cgroup
    mode (v1, v2 or hybrid) and its controllers, the bpffs mount, BTF, whether negative C(oom_score_adj) values are
    allowed (CAP_SYS_RESOURCE), the kernel version and the kubelet's cgroup driver.
  - Everything is read through O(sysroot), so sandbox nodes whose C(/sys) and C(/proc) are directories work the same way.
options:
  sysroot:
    description:
      - Root under which C(/sys), C(/proc) and C(/var/lib/kubelet) are read.
    type: path
    default: /
  probe_bpf:
    description:
      - Ask C(bpftool feature probe) which BPF program types the kernel supports (real nodes only).
    type: bool
    default: true
extends_documentation_fragment:
  - katalyst.colocation.attributes.info_module
  - katalyst.colocation.attributes.node_files
attributes:
  check_mode:
    description: Only reads.
  diff_mode:
    description: Nothing changes.
  facts:
    support: full
    description: Sets C(ansible_facts.katalyst).
author:
  - katalyst.colocation developers (@katalyst-colocation)
"""

EXAMPLES = r"""
- name: Gather colocation facts
  katalyst.colocation.node_facts:

- name: Show the NUMA nodes
  ansible.builtin.debug:
    msg: "{{ ansible_facts.katalyst.numa_nodes | map(attribute='cpus') | list }}"
"""

RETURN = r"""
ansible_facts:
  description: Facts under the C(katalyst) key.
  returned: always
  type: dict
  contains:
    katalyst:
      description: NUMA nodes, cgroup mode and controllers, bpffs, BTF, capabilities, kernel, kubelet cgroup driver.
      type: dict
      sample: {"cgroup": {"mode": "v2"}, "numa_nodes": [{"id": 0, "cpus": "0-3,16-19", "memory_bytes": 17179869184}]}
"""

import json
import shutil
import subprocess

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.katalyst.colocation.plugins.module_utils import nodeinfo
from ansible_collections.katalyst.colocation.plugins.module_utils.sysfs import SysFS


def bpftool_probe():
    """Program types the kernel supports, from `bpftool feature probe kernel` (None when unknown)."""
    bpftool = shutil.which("bpftool")
    if not bpftool:
        return {"tp_btf": None, "fentry": None, "source": "bpftool not installed"}
    try:
        output = subprocess.run([bpftool, "-j", "feature", "probe", "kernel"], capture_output=True, text=True, timeout=30, check=False)
        features = json.loads(output.stdout or "{}")
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return {"tp_btf": None, "fentry": None, "source": "bpftool probe failed"}
    types = features.get("program_types") or {}
    tracing = bool(types.get("have_tracing_prog_type"))
    # tp_btf and fentry are both BPF_PROG_TYPE_TRACING; whether fentry attaches is only known when it is loaded
    # (the oom_hook role records which programs attached).
    return {"tp_btf": tracing, "fentry": tracing, "source": "bpftool feature probe"}


def main():
    module = AnsibleModule(argument_spec={"sysroot": {"type": "path", "default": "/"}, "probe_bpf": {"type": "bool", "default": True}},
                           supports_check_mode=True)
    fs = SysFS(module.params["sysroot"])
    probe = bpftool_probe if module.params["probe_bpf"] and fs.root == "/" else None
    try:
        facts = nodeinfo.gather(fs, bpf_probe=probe)
    except (OSError, ValueError) as exc:
        module.fail_json(msg="cannot read node facts under %s: %s" % (module.params["sysroot"], exc))
    module.exit_json(changed=False, ansible_facts={"katalyst": facts})


if __name__ == "__main__":
    main()
