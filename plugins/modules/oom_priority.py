#!/usr/bin/python
# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE); modules are also offered under the
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: oom_priority
short_description: Enforce OOM priority strictly with oom_score_adj, once
version_added: 0.1.0
description:
  - Computes an C(oom_score_adj) for every process of the given pods so that the kernel's OOM badness order equals
    their OOM priority order (from C(katalyst.kubewharf.io/qos_level) and the C(oom_priority) key of
    C(katalyst.kubewharf.io/memory_enhancement)), whatever their memory sizes, and writes the values that differ.
  - Negative values are used only when the kernel allows them (CAP_SYS_RESOURCE); otherwise the non-negative band is used
    and priority 300 (never kill) gets the strongest protection left, with a warning.
  - C(katalyst-agent) keeps this converged continuously; this module applies it once (for example from AWX).
options:
  pods:
    description: The pods to order.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: Pod name (used in messages and the diff).
        type: str
        required: true
      annotations:
        description: The pod's annotations (QoS level and memory enhancement).
        type: dict
        default: {}
      cgroups:
        description: Kernel paths of the pod's cgroup directories; their processes (and descendants') are ordered.
        type: list
        elements: str
        default: []
      pids:
        description: Process IDs, in addition to those found in O(pods[].cgroups).
        type: list
        elements: int
        default: []
  totalpages:
    description:
      - Size of the OOM domain in pages, the kernel's scale for C(oom_score_adj).
      - Default the smallest domain the pods share, as C(katalyst-agent) plans it, the lowest memory limit of an ancestor
        of their O(pods[].cgroups) (a QoS tier), else RAM plus swap of the node; values planned for the smallest
        domain keep the order in every larger one.
    type: int
  sysroot:
    description: Root under which C(/proc) and C(/sys) are read and written.
    type: path
    default: /
extends_documentation_fragment:
  - katalyst.colocation.attributes
attributes:
  check_mode:
    description: Computes and reports without writing.
  diff_mode:
    description: Shows each process's old and new oom_score_adj.
  platform:
    support: full
    description: Linux nodes.
    platforms: posix
author:
  - katalyst.colocation developers (@katalyst-colocation)
"""

EXAMPLES = r"""
- name: Batch dies before the web service, whatever their sizes
  katalyst.colocation.oom_priority:
    pods:
      - name: batch
        annotations: {katalyst.kubewharf.io/qos_level: reclaimed_cores}
        cgroups: [/sys/fs/cgroup/kubepods/besteffort/pod1234]
      - name: web
        annotations:
          katalyst.kubewharf.io/memory_enhancement: '{"oom_priority": "80"}'
        cgroups: [/sys/fs/cgroup/kubepods/burstable/pod5678]
"""

RETURN = r"""
adjustments:
  description: oom_score_adj chosen per pod.
  returned: success
  type: dict
  sample: {"batch": 1000, "web": 0}
totalpages:
  description: The OOM domain's size in pages the values were planned for.
  returned: success
  type: int
priorities:
  description: The effective (aligned) OOM priority of each pod.
  returned: success
  type: dict
changes:
  description: Every write planned (target /proc/<pid>/oom_score_adj, before, after).
  returned: always
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.katalyst.colocation.plugins.module_utils import nodeinfo, oom, oomgather, qos
from ansible_collections.katalyst.colocation.plugins.module_utils.reconcile import PlanError
from ansible_collections.katalyst.colocation.plugins.module_utils.sysfs import SysFS


def main():
    module = AnsibleModule(argument_spec={
        "pods": {"type": "list", "elements": "dict", "required": True, "options": {
            "name": {"type": "str", "required": True},
            "annotations": {"type": "dict", "default": {}},
            "cgroups": {"type": "list", "elements": "str", "default": []},
            "pids": {"type": "list", "elements": "int", "default": []},
        }},
        "totalpages": {"type": "int"},
        "sysroot": {"type": "path", "default": "/"},
    }, supports_check_mode=True)
    fs = SysFS(module.params["sysroot"])
    groups, priorities = [], {}
    for pod in module.params["pods"]:
        priority, problem = qos.pod_oom_priority(pod["annotations"])
        if problem:
            module.warn("pod %s: %s" % (pod["name"], problem))
        priorities[pod["name"]] = priority
        groups.append(oomgather.read_group(fs, pod["name"], priority, pod["cgroups"], pod["pids"]))
    memory_root = "/sys/fs/cgroup/memory" if fs.isdir("/sys/fs/cgroup/memory") else "/sys/fs/cgroup"
    cgroup_dirs = [directory for pod in module.params["pods"] for directory in pod["cgroups"]]
    totalpages = module.params["totalpages"] or oomgather.shared_domain_pages(fs, cgroup_dirs, memory_root, oomgather.node_totalpages(fs))
    negative = nodeinfo.cap_eff_allows(fs.read_text("/proc/self/status", default=""), nodeinfo.CAP_SYS_RESOURCE)
    plan, adjustments = oom.plan_oom_score_adj(groups, totalpages, negative)
    try:
        plan.apply(oomgather.applier(fs), dry_run=module.check_mode)
    except PlanError as exc:
        module.fail_json(msg="%s; %d write(s) undone" % (exc, len(exc.rolled_back)), changes=plan.as_list())
    for warning in plan.warnings:
        module.warn(warning)
    module.exit_json(**plan.module_result(module._diff, adjustments=adjustments, priorities=priorities, totalpages=totalpages))


if __name__ == "__main__":
    main()
