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
  - Reads the node's rootfs filesystem (free bytes and inodes of O(rootfs_path)) and each running pod's use of it (bytes
    and inodes under O(pod_dirs)), and plans the evictions C(katalyst-agent)'s eviction loop would make under the same
    thresholds (Katalyst's rootfs pressure plugin; reclaimed_cores pods first; system_cores pods and pods annotated
    C(katalyst.kubewharf.io/do-not-evict=true) never).
  - Read-only unless O(evict=true); then the planned pods are evicted through the policy/v1 Eviction API (so
    PodDisruptionBudgets hold). With C(--check --diff) it previews which pods would go.
extends_documentation_fragment:
  - katalyst.colocation.auth
options:
  node_name:
    description: The node whose pods are considered (field selector C(spec.nodeName)).
    type: str
    required: true
  sysroot:
    description: Root under which O(rootfs_path) and O(pod_dirs) are read.
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
  grace_period_seconds:
    description: Grace period of the evictions; 0 for the pods' own.
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
    support: full
    description: Plans and reports; never evicts.
  diff_mode:
    support: full
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
  description: Whether the free-bytes and the free-inodes threshold are met now.
  returned: success
  type: dict
  sample: {"free": true, "inodes": false}
readings:
  description: The filesystem's available bytes, capacity, free inodes and inodes.
  returned: success
  type: dict
evictions:
  description: The planned evictions, each with the pod, the threshold, the readings and the reason.
  returned: success
  type: list
  elements: dict
  sample: [{"pod": "default/batch", "threshold": "available.rootfs.system<10%", "reading": "...", "reason": "..."}]
evicted:
  description: The pods evicted (O(evict=true), not in check mode).
  returned: success
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.katalyst.colocation.plugins.module_utils.auth_spec import auth_argument_spec, auth_params
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.agent_eviction import ROOTFS_THRESHOLDS, rootfs_plan
from ansible_collections.katalyst.colocation.plugins.module_utils.kube import KubeClient, KubeError, require_kubernetes

THRESHOLD_OPTIONS = {name: {"type": "str", "default": ""} for name in ROOTFS_THRESHOLDS}


def eviction_config(params):
    """The agent's configuration keys from the module's options (the same engine path as the agent's loop)."""
    config = {"sysroot": params["sysroot"], "eviction_rootfs_path": params["rootfs_path"], "eviction_rootfs_pod_dirs": params["pod_dirs"],
              "eviction_rootfs_grace_period_seconds": params["grace_period_seconds"], "eviction_top_n": params["top_n"]}
    config.update({"eviction_rootfs_" + name: params[name] for name in ROOTFS_THRESHOLDS})
    return config


def main():
    argument_spec = auth_argument_spec()
    argument_spec.update(node_name={"type": "str", "required": True}, sysroot={"type": "path", "default": "/"},
                         rootfs_path={"type": "str", "default": "/var/lib/kubelet"},
                         pod_dirs={"type": "list", "elements": "str", "default": ["/var/lib/kubelet/pods/{uid}", "/var/log/pods/{namespace}_{name}_{uid}"]},
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
        plan, readings, met = rootfs_plan(eviction_config(module.params), pods)
    except ValueError as exc:        # named after the agent's setting: this module's option has the name without the prefix
        module.fail_json(msg=str(exc).replace("eviction_rootfs_", "", 1))
    except OSError as exc:
        module.fail_json(msg="reading %s: %s" % (exc.filename or module.params["rootfs_path"], exc.strerror))
    planned = [{"pod": e.pod_key, "threshold": e.threshold, "reading": e.reading, "reason": e.reason_message} for e in plan.evictions]
    evicted = []
    if module.params["evict"] and not module.check_mode:
        for wanted in plan.evictions:
            try:
                if kube.evict(wanted.name, wanted.namespace, wanted.grace_period_seconds):
                    evicted.append(wanted.pod_key)
            except KubeError as exc:
                module.fail_json(msg="evicting %s: %s" % (wanted.pod_key, exc), evictions=planned, evicted=evicted)
    result = {"changed": bool(evicted) or (module.check_mode and module.params["evict"] and bool(planned)),
              "threshold_met": {"free": met.free_met, "inodes": met.inodes_met}, "readings": readings, "evictions": planned,
              "evicted": evicted}
    if module._diff:
        before = sorted("%s/%s" % (p["metadata"].get("namespace"), p["metadata"]["name"]) for p in pods)
        going = {e.pod_key for e in plan.evictions}
        result["diff"] = {"before_header": "running pods on %s" % module.params["node_name"], "before": "\n".join(before) + "\n",
                          "after_header": "after the planned evictions", "after": "\n".join(p for p in before if p not in going) + "\n"}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
