#!/usr/bin/python
# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE); modules are also offered under the
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: qos_cgroups
short_description: Converge the cgroups for reclaimed (offline) workloads on cgroup v1 and v2
version_added: 0.1.0
description:
  - Converges the reclaimed root cgroup (C(/kubepods/besteffort) by default) with the reclaimed tier's CPU weight and an
    optional memory limit (C(memory.max) plus C(memory.high) at 0.95x on v2, C(memory.limit_in_bytes) on v1), and creates
    one sibling per NUMA node, C(<root>-<N>), pinned to that NUMA node's CPUs (C(cpuset.cpus)) and memory (C(cpuset.mems)).
  - Katalyst writes the per-NUMA cgroups only if something else created them; this module creates them.
  - Writes only what differs. O(state=absent) removes only the cgroups this module created and restores values it changed.
  - If a write fails (read-only cgroupfs, a value the kernel refuses), the writes already made are undone and the task fails
    naming the file and the value.
options:
  state:
    description: V(present) converges; V(absent) undoes what this module did.
    type: str
    choices: [present, absent]
    default: present
  sysroot:
    description: Root under which C(/sys/fs/cgroup) and C(/var/lib/katalyst) live (a directory on sandbox nodes).
    type: path
    default: /
  driver:
    description: The kubelet's cgroup driver (decides C(kubepods) versus C(kubepods.slice) naming).
    type: str
    choices: [cgroupfs, systemd]
    default: cgroupfs
  reclaim_root:
    description: Relative path of the reclaimed root cgroup (Katalyst's C(--reclaim-relative-root-cgroup-path)).
    type: str
    default: /kubepods/besteffort
  cpu_shares:
    description: CPU shares of the reclaimed tier (v2 C(cpu.weight) uses runc's conversion). 2-262144.
    type: int
    default: 2
  memory_limit_bytes:
    description: Memory limit of the reclaimed root. Omit to leave it to the agent's memory guard.
    type: int
  reserved_cpus:
    description: CPUs (kernel list syntax) kept out of the per-NUMA reclaimed cpusets, for example the system-reserved ones.
    type: str
    default: ""
extends_documentation_fragment:
  - katalyst.colocation.attributes
  - katalyst.colocation.attributes.node_files
attributes:
  check_mode:
    description: Reports what would change without writing.
  diff_mode:
    description: Shows every cgroup file before and after.
author:
  - katalyst.colocation developers (@katalyst-colocation)
"""

EXAMPLES = r"""
- name: Reclaimed cgroups with a 64 GiB memory cap, keeping CPUs 0-1 for the system
  katalyst.colocation.qos_cgroups:
    memory_limit_bytes: "{{ 64 * 1024 ** 3 }}"
    reserved_cpus: "0-1"

- name: Undo
  katalyst.colocation.qos_cgroups:
    state: absent
"""

RETURN = r"""
changes:
  description: Every change planned (kind, target, action, before, after).
  returned: always
  type: list
  elements: dict
cgroup_version:
  description: The hierarchy written (v1 or v2).
  returned: success
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.katalyst.colocation.plugins.module_utils import cgroups, nodeinfo
from ansible_collections.katalyst.colocation.plugins.module_utils.node_module import converge_node, node_argument_spec


def main():
    module = AnsibleModule(argument_spec=node_argument_spec(
        driver={"type": "str", "choices": ["cgroupfs", "systemd"], "default": "cgroupfs"},
        reclaim_root={"type": "str", "default": "/kubepods/besteffort"},
        cpu_shares={"type": "int", "default": 2},
        memory_limit_bytes={"type": "int"},
        reserved_cpus={"type": "str", "default": ""},
    ), supports_check_mode=True)
    params = module.params

    def converge(fs):
        facts = nodeinfo.gather(fs)
        desired = cgroups.desired_qos_cgroups(facts, params["driver"], params["reclaim_root"], params["cpu_shares"],
                                              params["memory_limit_bytes"], params["reserved_cpus"])
        plan = cgroups.converge(fs, desired, params["state"], dry_run=module.check_mode)[0]
        return plan, {"cgroup_version": desired["version"]}

    # a failed write also lists the changes made before it (undone)
    converge_node(module, converge, changes_on_failure=True)


if __name__ == "__main__":
    main()
