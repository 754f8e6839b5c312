#!/usr/bin/python
# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE); modules are also offered under the
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: eviction_plan
short_description: Which pods the agent's eviction loop would evict on this node now, and why
version_added: 0.1.0
description:
  - Plans the evictions C(katalyst-agent)'s eviction loop would make now, with the agent's own planners, for the
    plugins in O(plugins) (system_cores pods and pods annotated C(katalyst.kubewharf.io/do-not-evict=true) never go).
  - V(rootfs) (Katalyst's rootfs pressure plugin) reads the node's rootfs filesystem (free bytes and inodes of
    O(rootfs_path)) and each running pod's use of it (bytes and inodes under O(pod_dirs)); reclaimed_cores pods first.
  - V(system_memory) reads C(/proc/meminfo) and C(vm.watermark_scale_factor) (MemFree under MemTotal x the factor / 10000,
    at least O(system_free_memory_threshold_minimum)); V(numa_memory) the Normal zone of C(/proc/zoneinfo) per NUMA node
    (free under the agent's low watermark); both rank the pods by their memory cgroups (O(cgroup_driver),
    O(cgroup_root)). The agent evicts for NUMA pressure only once it lasted several passes; the preview takes the
    current reading as lasting, so it shows who goes first if it does. V(reclaimed_resources) reads this node's
    CustomNodeResource (reclaimed_cores requests over 5x its reclaimed allocatable).
  - Read-only unless O(evict=true); then the planned pods are evicted through the policy/v1 Eviction API (so
    PodDisruptionBudgets hold). With C(--check --diff) it previews which pods would go.
extends_documentation_fragment:
  - katalyst.colocation.auth
  - katalyst.colocation.attributes
options:
  node_name:
    description: The node whose pods are considered (field selector C(spec.nodeName)).
    type: str
    required: true
  plugins:
    description: The eviction plugins to plan with (the agent runs those it has switched on in one pass, merged).
    type: list
    elements: str
    choices: [rootfs, numa_memory, system_memory, reclaimed_resources]
    default: [rootfs]
  sysroot:
    description: Root under which O(rootfs_path), O(pod_dirs), C(/proc) and the memory cgroups are read.
    type: path
    default: /
  rootfs_path:
    description: A path on the filesystem whose pressure is checked (the kubelet's root directory, usually).
    type: str
    default: /var/lib/kubelet
  pod_dirs:
    description: Where a pod uses that filesystem; C({uid}), C({namespace}) and C({name}) are filled in.
    type: list
    elements: str
    default: ["/var/lib/kubelet/pods/{uid}", "/var/log/pods/{namespace}_{name}_{uid}"]
  minimum_free:
    description: Evict when free bytes fall below this (C(10%) of the filesystem, or a quantity such as C(2Gi)); empty for unset.
    type: str
    default: ""
  minimum_inodes_free:
    description: Evict when free inodes fall below this (C(5%) or a count); empty for unset.
    type: str
    default: ""
  pod_minimum_used:
    description: Pods using less than this (share or quantity) are not evicted, unless reclaimed pods over the priority threshold.
    type: str
    default: ""
  pod_minimum_inodes_used:
    description: Pods using fewer inodes than this are not evicted (inode pressure).
    type: str
    default: ""
  reclaimed_pod_used_priority:
    description: reclaimed_cores pods using more than this go first.
    type: str
    default: ""
  reclaimed_pod_inodes_used_priority:
    description: reclaimed_cores pods using more inodes than this go first (inode pressure).
    type: str
    default: ""
  minimum_disk_capacity:
    description: Filesystems smaller than this are never under free-space pressure (a quantity); empty for unset.
    type: str
    default: ""
  system_free_memory_threshold_minimum:
    description: The system memory plugin's floor under the watermark-derived free-memory threshold (a quantity).
    type: str
    default: "0"
  cgroup_driver:
    description: The kubelet's cgroup driver (where the pods' memory cgroups are, for the memory plugins).
    type: str
    choices: [cgroupfs, systemd]
    default: cgroupfs
  cgroup_root:
    description: The kubelet's C(--cgroup-root) (C(kubepods) lives below it); empty for the top.
    type: str
    default: ""
  grace_period_seconds:
    description: Grace period of the rootfs evictions; 0 for the pods' own.
    type: int
    default: 0
  top_n:
    description: At most this many pods per plan.
    type: int
    default: 1
  evict:
    description: Evict the planned pods (not in check mode).
    type: bool
    default: false
attributes:
  check_mode:
    description: Plans and reports; never evicts.
  diff_mode:
    description: The node's running pods before and after the planned evictions.
  platform:
    support: full
    description: Linux nodes (the filesystem is read where the module runs).
    platforms: posix
author:
  - katalyst.colocation developers (@katalyst-colocation)
"""

EXAMPLES = r"""
- name: Which pods would go if the kubelet's disk had less than 10% free
  katalyst.colocation.eviction_plan:
    node_name: "{{ inventory_hostname }}"
    minimum_free: 10%
    reclaimed_pod_used_priority: 1Gi
  check_mode: true
  diff: true
  register: preview
"""

RETURN = r"""
threshold_met:
  description: Whether the free-bytes and the free-inodes threshold are met now (rootfs).
  returned: when O(plugins) has V(rootfs)
  type: dict
  sample: {"free": true, "inodes": false}
readings:
  description: The filesystem's available bytes, capacity, free inodes and inodes (rootfs).
  returned: when O(plugins) has V(rootfs)
  type: dict
plugins:
  description: Per plugin of O(plugins), what it read and whether its threshold is met now.
  returned: success
  type: dict
  sample: {"system_memory": {"met": true, "readings": {"free": 33554432, "total": 68719476736, "threshold": 68719476}}}
evictions:
  description: The planned evictions, each with the pod, the plugin, the threshold, the readings and the reason.
  returned: success
  type: list
  elements: dict
  sample: [{"pod": "default/batch", "plugin": "rootfs-pressure-eviction-plugin", "threshold": "available.rootfs.system<10%",
            "reading": "...", "reason": "..."}]
evicted:
  description: The pods evicted (O(evict=true), not in check mode).
  returned: success
  type: list
  elements: str
"""

import re

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.katalyst.colocation.plugins.module_utils.auth_spec import auth_argument_spec, auth_params
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.agent_eviction import ROOTFS_THRESHOLDS
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.eviction_preview import PLUGINS, preview
from ansible_collections.katalyst.colocation.plugins.module_utils.kube import KubeClient, KubeError, require_kubernetes
from ansible_collections.katalyst.colocation.plugins.module_utils.sysfs import SysFSError

THRESHOLD_OPTIONS = {name: {"type": "str", "default": ""} for name in ROOTFS_THRESHOLDS}


def agent_settings(params):
    """The agent's settings from the module's options (the same planners as the agent's loop)."""
    settings = {"sysroot": params["sysroot"], "node_name": params["node_name"], "cgroup_driver": params["cgroup_driver"],
                "cgroup_root": params["cgroup_root"], "eviction_rootfs_path": params["rootfs_path"],
                "eviction_rootfs_pod_dirs": params["pod_dirs"], "eviction_rootfs_grace_period_seconds": params["grace_period_seconds"],
                "eviction_top_n": params["top_n"],
                "eviction_system_free_memory_threshold_minimum": params["system_free_memory_threshold_minimum"]}
    settings.update({"eviction_rootfs_" + name: params[name] for name in ROOTFS_THRESHOLDS})
    return settings


def option_name(message):
    """An error naming the agent's setting names this module's option instead (the setting without its prefix)."""
    return re.sub(r"\beviction_(rootfs_)?", "", message, count=1)


def main():
    argument_spec = auth_argument_spec()
    argument_spec.update(node_name={"type": "str", "required": True}, sysroot={"type": "path", "default": "/"},
                         plugins={"type": "list", "elements": "str", "choices": list(PLUGINS), "default": ["rootfs"]},
                         rootfs_path={"type": "str", "default": "/var/lib/kubelet"},
                         pod_dirs={"type": "list", "elements": "str", "default": ["/var/lib/kubelet/pods/{uid}", "/var/log/pods/{namespace}_{name}_{uid}"]},
                         system_free_memory_threshold_minimum={"type": "str", "default": "0"},
                         cgroup_driver={"type": "str", "choices": ["cgroupfs", "systemd"], "default": "cgroupfs"},
                         cgroup_root={"type": "str", "default": ""},
                         grace_period_seconds={"type": "int", "default": 0}, top_n={"type": "int", "default": 1},
                         evict={"type": "bool", "default": False}, **THRESHOLD_OPTIONS)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    require_kubernetes(module)
    if module.params["top_n"] < 1:
        module.fail_json(msg="top_n must be at least 1, got %d" % module.params["top_n"])
    try:
        kube = KubeClient(auth_params(module.params))
        pods = [p for p in kube.list("v1", "Pod", field_selector="spec.nodeName=%s" % module.params["node_name"])
                if (p.get("status") or {}).get("phase") == "Running" and not (p.get("metadata") or {}).get("deletionTimestamp")]
    except KubeError as exc:
        module.fail_json(msg=str(exc))
    try:
        plan, readings, met = preview(agent_settings(module.params), kube, pods, module.params["plugins"])
    except ValueError as exc:
        module.fail_json(msg=option_name(str(exc)))
    except OSError as exc:
        module.fail_json(msg="reading %s: %s" % (exc.filename or module.params["rootfs_path"], exc.strerror))
    except (SysFSError, KubeError) as exc:
        module.fail_json(msg="reading what the plugins need: %s" % exc)
    planned = [{"pod": e.pod_key, "plugin": e.plugin, "threshold": e.threshold, "reading": e.reading, "reason": e.reason_message}
               for e in plan.evictions]
    evicted = []
    if module.params["evict"] and not module.check_mode:
        for wanted in plan.evictions:
            try:
                if kube.evict(wanted.name, wanted.namespace, wanted.grace_period_seconds):
                    evicted.append(wanted.pod_key)
            except KubeError as exc:
                module.fail_json(msg="evicting %s: %s" % (wanted.pod_key, exc), evictions=planned, evicted=evicted)
    result = {"changed": bool(evicted) or (module.check_mode and module.params["evict"] and bool(planned)), "evictions": planned,
              "evicted": evicted, "plugins": {plugin: {"met": met[plugin], "readings": readings[plugin]} for plugin in met}}
    if "rootfs" in met:
        result.update(threshold_met=met["rootfs"], readings=readings["rootfs"])
    if module._diff:
        before = sorted("%s/%s" % (p["metadata"].get("namespace"), p["metadata"]["name"]) for p in pods)
        going = {e.pod_key for e in plan.evictions}
        result["diff"] = {"before_header": "running pods on %s" % module.params["node_name"], "before": "\n".join(before) + "\n",
                          "after_header": "after the planned evictions", "after": "\n".join(p for p in before if p not in going) + "\n"}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
