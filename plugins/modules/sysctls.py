#!/usr/bin/python
# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE); modules are also offered under the
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: sysctls
short_description: Converge the colocation sysctls in one call
version_added: 0.1.0
description:
  - Sets C(net.ipv4.tcp_mem) from a memory ratio (three distinct values in the kernel's own proportions, not Katalyst's
    same value three times), C(vm.watermark_scale_factor), C(vm.min_free_kbytes) and any other sysctls given in O(settings),
    all validated against ranges before anything is written.
  - Persists them in C(/etc/sysctl.d/90-katalyst.conf) and applies them live; reports C(changed) only when something differs.
  - A key the kernel does not have fails the task unless it is listed in O(optional). If a live write fails, the values
    already written are put back.
  - When the current content of C(/proc/sys/net/ipv4/tcp_mem) is not three page counts, the task fails naming the file and
    the content, and nothing is written (it is not overwritten).
options:
  state:
    description: V(present) converges; V(absent) removes the drop-in file and restores the values from before the first change.
    type: str
    choices: [present, absent]
    default: present
  sysroot:
    description: Root under which C(/proc/sys), C(/etc) and C(/var/lib/katalyst) live (a directory on sandbox nodes).
    type: path
    default: /
  tcp_mem_ratio:
    description:
      - Percent of memory TCP buffers may use at most (20-80); sets C(net.ipv4.tcp_mem).
      - A value outside 20-80 fails the task (Katalyst clamps it into the range instead).
    type: int
  watermark_scale_factor:
    description: C(vm.watermark_scale_factor) (1-3000).
    type: int
  min_free_kbytes:
    description: C(vm.min_free_kbytes) (1024 up to 10% of memory).
    type: int
  settings:
    description: More sysctls, key to value.
    type: dict
    default: {}
  optional:
    description: Keys that may be missing from the kernel; they are skipped with a warning.
    type: list
    elements: str
    default: []
extends_documentation_fragment:
  - katalyst.colocation.attributes
  - katalyst.colocation.attributes.node_files
attributes:
  check_mode:
    description: Reports what would change without writing.
  diff_mode:
    description: Shows each sysctl and the drop-in file before and after.
author:
  - katalyst.colocation developers (@katalyst-colocation)
"""

EXAMPLES = r"""
- name: Colocation sysctls
  katalyst.colocation.sysctls:
    tcp_mem_ratio: 20
    watermark_scale_factor: 100
    settings:
      vm.swappiness: 10
    optional: [kernel.numa_balancing]
"""

RETURN = r"""
changes:
  description: Every change planned.
  returned: always
  type: list
  elements: dict
values:
  description: The validated values, key to value.
  returned: success
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.katalyst.colocation.plugins.module_utils import nodeinfo, sysctl
from ansible_collections.katalyst.colocation.plugins.module_utils.node_module import converge_node, node_argument_spec


def main():
    module = AnsibleModule(argument_spec=node_argument_spec(
        tcp_mem_ratio={"type": "int"},
        watermark_scale_factor={"type": "int"},
        min_free_kbytes={"type": "int"},
        settings={"type": "dict", "default": {}},
        optional={"type": "list", "elements": "str", "default": []},
    ), supports_check_mode=True)
    params = module.params

    def converge(fs):
        memory_bytes = nodeinfo.parse_meminfo(fs.read_text("/proc/meminfo")).get("MemTotal", 0)
        desired = sysctl.desired_sysctls(memory_bytes, params["tcp_mem_ratio"], params["watermark_scale_factor"],
                                         params["min_free_kbytes"], params["settings"])
        state = sysctl.read_sysctl_state(fs, desired if params["state"] == "present" else
                                         sysctl.read_sysctl_state(fs, []).get("record", {}))
        plan = sysctl.plan_sysctls(desired, state, params["optional"], params["state"])
        plan.apply(sysctl.applier(fs), dry_run=module.check_mode)
        return plan, {"values": desired}

    converge_node(module, converge)


if __name__ == "__main__":
    main()
