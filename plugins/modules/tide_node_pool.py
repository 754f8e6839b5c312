#!/usr/bin/python
# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE); modules are also offered under the
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: tide_node_pool
short_description: Manage a TideNodePool and preview (or apply) what the tide controller does with its nodes
version_added: 0.1.0
description:
  - Creates, updates or removes a C(tide.katalyst.kubewharf.io/v1alpha1) C(TideNodePool), Katalyst's tidal colocation pool.
  - With O(converge=true) it also makes one pass of the tide controller with the same engine C(katalyst-controller)
    runs (the finalizer, reserve and tide node labels, status and the C(Ready) condition), so the pool works before the
    controller runs; flips of tide nodes between online and offline are left to the controller unless O(flip=true).
  - In check mode with C(--diff) it shows which node would get which role and which node would flip and why (the
    pending online pods that would bring an offline node online, or the least-loaded online node that would be released).
  - O(state=absent) deletes the pool and removes every label, taint and the finalizer the pool put on its nodes.
options:
  name:
    description:
      - Name of the TideNodePool (cluster-scoped).
    type: str
    required: true
  state:
    description:
      - V(present) creates or updates the pool; V(absent) removes it and cleans its nodes.
    type: str
    choices: [present, absent]
    default: present
  node_selector:
    description:
      - Labels a node must have to belong to the pool. Empty selects every node of the cluster.
    type: dict
    default: {}
  reserve:
    description:
      - How many nodes are kept as online and offline reserve; the rest are tide nodes.
      - Required with O(state=present).
    type: dict
    suboptions:
      online:
        description:
          - Node count (an integer) or percentage of the pool (a string such as V(10%)), rounded up.
        type: raw
        required: true
      offline:
        description:
          - Node count (an integer) or percentage of the pool (a string such as V(25%)), rounded down.
        type: raw
        required: true
  online_label:
    description:
      - Label of online nodes. Katalyst's default is C(tide.katalyst.kubewharf.io/node-type=online).
    type: dict
    suboptions: &label
      key:
        description: Label key.
        type: str
        required: true
      value:
        description: Label value.
        type: str
        required: true
  offline_label:
    description:
      - Label of offline nodes. Katalyst's default is C(tide.katalyst.kubewharf.io/node-type=offline).
    type: dict
    suboptions: *label
  tide_label:
    description:
      - Label of tide nodes. Katalyst's default is C(tide.katalyst.kubewharf.io/tide=true).
    type: dict
    suboptions: *label
  evict_online_pod_taint:
    description:
      - Taint put on offline tide nodes so online pods leave them.
        Katalyst's default is C(tide.katalyst.kubewharf.io/online-not-used=true:NoExecute).
    type: dict
    suboptions: &taint
      key:
        description: Taint key.
        type: str
        required: true
      value:
        description: Taint value.
        type: str
        required: true
      effect:
        description: Taint effect.
        type: str
        choices: [NoSchedule, PreferNoSchedule, NoExecute]
        default: NoExecute
  evict_offline_pod_taint:
    description:
      - Taint put on online tide nodes so offline pods leave them.
        Katalyst's default is C(tide.katalyst.kubewharf.io/offline-not-used=true:NoExecute).
    type: dict
    suboptions: *taint
  cooldown_seconds:
    description:
      - Minimum time between two flips of the same node (katalyst.colocation's C(spec.cooldownSeconds)). 0 means none.
    type: int
  converge:
    description:
      - Also make one tide controller pass now (finalizer, node roles, status). V(false) only writes the pool object.
    type: bool
    default: true
  flip:
    description:
      - With O(converge=true), also apply the flip decision of that pass (at most one node). By default flips are
        only reported (the C(flip) key of RV(plan)) and left to C(katalyst-controller), so repeated runs stay idempotent.
    type: bool
    default: false
extends_documentation_fragment:
  - katalyst.colocation.auth
  - katalyst.colocation.attributes
  - katalyst.colocation.attributes.kubernetes
attributes:
  check_mode:
    description: Plans the pass and reports it without writing anything.
  diff_mode:
    description: Shows the pool's spec and every node's role, tide labels and taints before and after, with the reason.
author:
  - katalyst.colocation developers (@katalyst-colocation)
"""

EXAMPLES = r"""
- name: A tidal pool over the nodes labelled pool=web, 10% kept online and 25% kept offline
  katalyst.colocation.tide_node_pool:
    name: web
    node_selector:
      pool: web
    reserve:
      online: 10%
      offline: 25%
    cooldown_seconds: 600

- name: Preview which nodes get which role and what would flip next (run with --check --diff)
  katalyst.colocation.tide_node_pool:
    name: web
    node_selector: {pool: web}
    reserve: {online: 2, offline: 1}
  check_mode: true
  register: preview

- name: Remove the pool and its labels and taints from every node
  katalyst.colocation.tide_node_pool:
    name: web
    state: absent
"""

RETURN = r"""
pool:
  description: The TideNodePool after the run (in check mode, as it would be).
  returned: state is present
  type: dict
plan:
  description:
    - The pass of the tide controller that was made (or, in check mode, would be).
    - C(roles) and C(roles_before) map node names to C(online-reserve), C(offline-reserve), C(tide-online),
      C(tide-offline), C(tide), C(unknown) or C(ignored); C(reserve) has the expected counts; C(flip) is the node that
      flips next, its direction, the pods that cause it and the reason (C(null) when none; C(flip_note) says why);
      C(changes) lists every node write with its reason; C(status) is the pool status; C(error) an invalid reserve or spec.
  returned: always
  type: dict
  sample: {"reserve": {"online": 1, "offline": 2, "nodes": 10}, "roles": {"n00": "online-reserve"},
           "flip": {"node": "n03", "direction": "offline", "pods": [], "reason": "n03 has the lowest requested load"}}
"""

import datetime

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.katalyst.colocation.plugins.module_utils import tide
from ansible_collections.katalyst.colocation.plugins.module_utils.auth_spec import auth_argument_spec, auth_params
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons import tide_controller
from ansible_collections.katalyst.colocation.plugins.module_utils.kube import KubeClient, KubeError, require_kubernetes

LABEL_OPTION = {"key": {"type": "str", "required": True, "no_log": False}, "value": {"type": "str", "required": True}}
TAINT_OPTION = {"key": {"type": "str", "required": True, "no_log": False}, "value": {"type": "str", "required": True},
                "effect": {"type": "str", "choices": ["NoSchedule", "PreferNoSchedule", "NoExecute"], "default": "NoExecute"}}


def reserve_value(value):
    """Ansible may hand a count over as a string: "2" means 2; "10%" stays a percentage."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return value


def desired_spec(params):
    node_configs = {"nodeSelector": {str(k): str(v) for k, v in (params["node_selector"] or {}).items()}}
    if params["reserve"] is not None:
        node_configs["reserve"] = {"online": reserve_value(params["reserve"]["online"]), "offline": reserve_value(params["reserve"]["offline"])}
    for option, field in (("online_label", "onlineLabel"), ("offline_label", "offlineLabel"), ("tide_label", "tideLabel")):
        if params[option]:
            node_configs[field] = dict(params[option])
    spec = {"nodeConfigs": node_configs}
    watermark = {}
    for option, field in (("evict_online_pod_taint", "evictOnlinePodTaint"), ("evict_offline_pod_taint", "evictOfflinePodTaint")):
        if params[option]:
            watermark[field] = dict(params[option])
    if watermark:
        spec["evictStrategy"] = {"type": "watermark", "watermark": watermark}
    if params["cooldown_seconds"] is not None:
        spec["cooldownSeconds"] = params["cooldown_seconds"]
    return spec


def node_diff(result):
    """Per node: role, tide labels and taints before and after, and why."""
    before, after = {}, {}
    for change in result.plan:
        key = "Node/%s" % change.data["node"]
        before[key] = dict(change.before, role=change.data["role_before"])
        after[key] = dict(change.after, role=change.data["role_after"], why=change.reason)
    return before, after


def main():
    argument_spec = auth_argument_spec()
    argument_spec.update(
        name={"type": "str", "required": True},
        state={"type": "str", "choices": ["present", "absent"], "default": "present"},
        node_selector={"type": "dict", "default": {}},
        reserve={"type": "dict", "options": {"online": {"type": "raw", "required": True}, "offline": {"type": "raw", "required": True}}},
        online_label={"type": "dict", "options": LABEL_OPTION},
        offline_label={"type": "dict", "options": LABEL_OPTION},
        tide_label={"type": "dict", "options": LABEL_OPTION},
        evict_online_pod_taint={"type": "dict", "options": TAINT_OPTION},
        evict_offline_pod_taint={"type": "dict", "options": TAINT_OPTION},
        cooldown_seconds={"type": "int"},
        converge={"type": "bool", "default": True},
        flip={"type": "bool", "default": False},
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True, required_if=[("state", "present", ["reserve"])])
    require_kubernetes(module)
    params = module.params
    name = params["name"]
    now = datetime.datetime.now(datetime.timezone.utc)
    try:
        kube = KubeClient(auth_params(params))
        current = kube.get(tide.API_VERSION, tide.KIND, name)
        if params["state"] == "absent":
            remove(module, kube, name, current)
        else:
            present(module, kube, name, current, now)
    except KubeError as exc:
        module.fail_json(msg=str(exc))


def present(module, kube, name, current, now):
    params = module.params
    spec = desired_spec(params)
    try:
        tide.reserve_counts(spec["nodeConfigs"]["reserve"], 0)
    except ValueError as exc:
        module.fail_json(msg="reserve: %s" % exc)
    problems = tide.PoolConfig({"metadata": {"name": name}, "spec": spec}).problems
    if problems:
        module.fail_json(msg="; ".join(problems))
    if current is None:
        wanted = {"apiVersion": tide.API_VERSION, "kind": tide.KIND, "metadata": {"name": name}, "spec": spec}
    else:
        wanted = dict(current, spec=spec)
    if params["converge"] and tide.FINALIZER not in (wanted["metadata"].get("finalizers") or []):
        wanted["metadata"] = dict(wanted["metadata"], finalizers=list(wanted["metadata"].get("finalizers") or []) + [tide.FINALIZER])
    pool_changed = current is None or current.get("spec") != spec or wanted["metadata"] != current["metadata"]
    nodes = kube.list("v1", "Node")
    pods = kube.list("v1", "Pod")
    result = tide.plan_tide_pool(wanted, nodes, pods, now=now, flips=params["flip"])
    converge_changed = params["converge"] and (bool(result.plan) or result.status_changed)
    if not module.check_mode:
        if pool_changed:
            wanted = kube.create(wanted) if current is None else kube.replace(wanted)
            # plan again with the stored object: same nodes and spec, but its generation goes into the status
            result = tide.plan_tide_pool(wanted, nodes, pods, now=now, flips=params["flip"])
        if params["converge"]:
            tide_controller.write_node_changes(kube, result, nodes={n["metadata"]["name"]: n for n in nodes})
            if result.flip is not None and params["flip"]:
                tide_controller.flip_event(kube, wanted, result.flip)
            if result.status_changed:
                wanted = tide_controller.write_status(kube, name, result.status, wanted) or wanted
    output = {"changed": bool(pool_changed or converge_changed), "pool": wanted, "plan": result.as_dict()}
    if result.error:
        module.warn("pool %s: %s" % (name, result.error))
    if module._diff:
        before_nodes, after_nodes = node_diff(result) if params["converge"] else ({}, {})
        before = dict(before_nodes)
        after = dict(after_nodes)
        if pool_changed:
            if current is not None:
                before["TideNodePool/%s" % name] = {"spec": current.get("spec")}
            after["TideNodePool/%s" % name] = {"spec": spec}
        if result.flip is not None and not params["flip"]:
            after["next flip (left to katalyst-controller)"] = result.flip
        output["diff"] = {"before": before, "after": after}
    module.exit_json(**output)


def remove(module, kube, name, current):
    if current is None:
        module.exit_json(changed=False, plan=tide.TidePlan(name).as_dict())
    nodes = kube.list("v1", "Node")
    doomed = dict(current, metadata=dict(current["metadata"], deletionTimestamp=current["metadata"].get("deletionTimestamp") or "now"))
    result = tide.plan_tide_pool_cleanup(doomed, nodes)
    if not module.check_mode:
        kube.delete(tide.API_VERSION, tide.KIND, name)      # first, so a running controller stops labelling the nodes
        tide_controller.write_node_changes(kube, result)
        if result.remove_finalizer:
            tide_controller.remove_finalizer(kube, name)
    output = {"changed": True, "plan": result.as_dict()}
    if module._diff:
        before, after = node_diff(result)
        before["TideNodePool/%s" % name] = {"spec": current.get("spec")}
        output["diff"] = {"before": before, "after": after}
    module.exit_json(**output)


if __name__ == "__main__":
    main()
