#!/usr/bin/python
# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE); modules are also offered under the
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: overcommit_config
short_description: Manage a NodeOvercommitConfig and preview which nodes get which overcommit ratio
version_added: 0.1.0
description:
  - Creates, updates or removes an C(overcommit.katalyst.kubewharf.io/v1alpha1) C(NodeOvercommitConfig), the CPU and memory
    overcommit ratios of the nodes labelled C(katalyst.kubewharf.io/overcommit_node_pool=<selector_value>).
  - Ratios are validated strictly (a finite decimal, at least 1, at most O(max_ratio)) before anything is written.
  - With O(converge=true) it also makes one pass of the overcommit controller with the same engine C(katalyst-controller)
    runs (node annotations, config status, Events), so nodes get their ratios before the controller's next pass.
  - In check mode with C(--diff) it shows each node whose ratio or overcommitted allocatable changes, before and after, and
    every node where the guard refuses a ratio decrease because its pods already request more than the new allocatable.
  - O(state=absent) deletes the config; its nodes return to a ratio of 1 (with O(converge=true) at once).
options:
  name:
    description:
      - Name of the NodeOvercommitConfig (cluster-scoped).
    type: str
    required: true
  state:
    description:
      - V(present) creates or updates the config; V(absent) removes it.
    type: str
    choices: [present, absent]
    default: present
  selector_value:
    description:
      - The pool, nodes labelled C(katalyst.kubewharf.io/overcommit_node_pool) with this value get the ratios
        (C(spec.nodeOvercommitSelectorVal)). Required with O(state=present).
    type: str
  cpu_ratio:
    description:
      - CPU overcommit ratio, a decimal such as V(2) or V(1.5). Omitted means 1.
    type: str
  memory_ratio:
    description:
      - Memory overcommit ratio, a decimal such as V(1.2). Omitted means 1.
    type: str
  max_ratio:
    description:
      - The largest ratio accepted.
    type: float
    default: 10
  force:
    description:
      - Apply a ratio decrease even on nodes whose pods already request more than the new allocatable
        (C(spec.force)). By default such nodes keep their ratio and the config reports C(DecreaseRefused).
    type: bool
    default: false
  converge:
    description:
      - Also make one overcommit controller pass now. V(false) only writes the config object.
    type: bool
    default: true
extends_documentation_fragment:
  - katalyst.colocation.auth
  - katalyst.colocation.attributes
  - katalyst.colocation.attributes.kubernetes
attributes:
  check_mode:
    description: Plans the pass and reports it without writing anything.
  diff_mode:
    description: Shows the config's spec and each changed node's ratios and overcommitted allocatable and capacity, and the refusals.
author:
  - katalyst.colocation developers (@katalyst-colocation)
"""

EXAMPLES = r"""
- name: Overcommit CPU twice and memory by 20% on the nodes labelled katalyst.kubewharf.io/overcommit_node_pool=web
  katalyst.colocation.overcommit_config:
    name: web
    selector_value: web
    cpu_ratio: "2"
    memory_ratio: "1.2"

- name: Preview a decrease (run with --check --diff) - nodes whose pods would not fit are listed as refused
  katalyst.colocation.overcommit_config:
    name: web
    selector_value: web
    cpu_ratio: "1.5"
  check_mode: true
  register: preview

- name: Remove the config; its nodes return to a ratio of 1
  katalyst.colocation.overcommit_config:
    name: web
    state: absent
"""

RETURN = r"""
config:
  description: The NodeOvercommitConfig after the run (in check mode, as it would be).
  returned: state is present
  type: dict
plan:
  description:
    - The overcommit controller pass that was made (or, in check mode, would be).
    - C(nodes) maps each node whose annotations change, or whose decrease is refused, to its config and its ratios and
      overcommitted allocatable and capacity before and after; C(refused) maps nodes to the resources whose decrease the
      guard refuses, with the allocatable it would leave and what the node's pods request.
  returned: always
  type: dict
  sample: {"nodes": {"n1": {"config": "web", "before": {"cpu_overcommit_ratio": "1"}, "after": {"cpu_overcommit_ratio": "2",
           "overcommit_allocatable_cpu": "16"}}}, "refused": {}}
"""

import datetime

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.katalyst.colocation.plugins.module_utils import overcommit
from ansible_collections.katalyst.colocation.plugins.module_utils.auth_spec import auth_argument_spec, auth_params
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.overcommit_controller import CNR_API_VERSION, CNR_KIND, OvercommitReconciler
from ansible_collections.katalyst.colocation.plugins.module_utils.kube import KubeClient, KubeError, require_kubernetes

# The node annotations the diff shows, by short name.
SHOWN = {}
for _resource in overcommit.RESOURCES:
    SHOWN["%s_overcommit_ratio" % _resource] = overcommit.RATIO_KEY[_resource]
    SHOWN["realtime_%s_overcommit_ratio" % _resource] = overcommit.REALTIME_RATIO_KEY[_resource]
    SHOWN["overcommit_allocatable_%s" % _resource] = overcommit.OVERCOMMIT_ALLOCATABLE_KEY[_resource]
    SHOWN["overcommit_capacity_%s" % _resource] = overcommit.OVERCOMMIT_CAPACITY_KEY[_resource]


def rfc3339(moment):
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def desired_spec(module):
    params = module.params
    ratios = {}
    for resource in overcommit.RESOURCES:
        text = params["%s_ratio" % resource]
        if text is None:
            continue
        text = str(text).strip()
        try:
            overcommit.check_ratio_value(text, params["max_ratio"])
        except ValueError as exc:
            module.fail_json(msg="%s_ratio: %s" % (resource, exc))
        ratios[resource] = text
    spec = {"nodeOvercommitSelectorVal": params["selector_value"], "resourceOvercommitRatio": ratios}
    if params["force"]:
        spec["force"] = True
    return spec


def shown(annotations):
    return {short: annotations[key] for short, key in SHOWN.items() if key in annotations}


def describe_plan(plan, nodes):
    """Per node: its config, the shown annotations before and after, and any refusal."""
    by_name = {node["metadata"]["name"]: node for node in nodes}
    described = {}
    for name in sorted(set(plan.node_patches) | set(plan.refused)):
        current = (by_name[name]["metadata"].get("annotations") or {}) if name in by_name else {}
        after = dict(current)
        for key, value in (plan.node_patches.get(name) or {}).items():
            if value is None:
                after.pop(key, None)
            else:
                after[key] = value
        entry = {"config": plan.node_config.get(name), "before": shown(current), "after": shown(after)}
        if name in plan.refused:
            entry["refused"] = {resource: "%s allocatable would be %s, below the %s requested" % (resource, allocatable, requested)
                                for resource, (allocatable, requested) in sorted(plan.refused[name].items())}
        described[name] = entry
    return described


def snapshot(kube):
    configs = kube.list(overcommit.NOC_API_VERSION, overcommit.NOC_KIND)
    nodes = kube.list("v1", "Node")
    try:
        cnrs = kube.list(CNR_API_VERSION, CNR_KIND)
    except KubeError as exc:
        if exc.status != 404:             # no CNR CRD: no realtime ratios, no guaranteed cpus
            raise
        cnrs = []
    return configs, nodes, cnrs, kube.list("v1", "Pod")


def main():
    argument_spec = auth_argument_spec()
    argument_spec.update(
        name={"type": "str", "required": True},
        state={"type": "str", "choices": ["present", "absent"], "default": "present"},
        selector_value={"type": "str"},
        cpu_ratio={"type": "str"},
        memory_ratio={"type": "str"},
        max_ratio={"type": "float", "default": 10},
        force={"type": "bool", "default": False},
        converge={"type": "bool", "default": True},
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True, required_if=[("state", "present", ["selector_value"])])
    require_kubernetes(module)
    params = module.params
    name = params["name"]
    now = datetime.datetime.now(datetime.timezone.utc)
    spec = desired_spec(module) if params["state"] == "present" else None
    try:
        kube = KubeClient(auth_params(params))
        configs, nodes, cnrs, pods = snapshot(kube)
        current = next((c for c in configs if c["metadata"]["name"] == name), None)
        others = [c for c in configs if c["metadata"]["name"] != name]
        if spec is None:
            wanted = None
            config_changed = current is not None
            planned_configs = others
        else:
            if current is None:
                wanted = {"apiVersion": overcommit.NOC_API_VERSION, "kind": overcommit.NOC_KIND,
                          "metadata": {"name": name, "creationTimestamp": rfc3339(now), "generation": 1}, "spec": spec}
            else:
                wanted = dict(current, spec=spec)
            config_changed = current is None or current.get("spec") != spec
            if config_changed and current is not None:
                generation = (current["metadata"].get("generation") or 0) + 1
                wanted = dict(wanted, metadata=dict(current["metadata"], generation=generation))
            planned_configs = others + [wanted]
        plan = overcommit.plan_node_overcommit(planned_configs, nodes, cnrs, pods, now=rfc3339(now))
        converge_changed = params["converge"] and (bool(plan.node_patches) or any(plan.status_changed.values()))
        summary = None
        if not module.check_mode:
            if config_changed:
                if wanted is None:
                    kube.delete(overcommit.NOC_API_VERSION, overcommit.NOC_KIND, name)
                elif current is None:
                    created = dict(wanted, metadata={"name": name})
                    wanted = kube.create(created)
                else:
                    wanted = kube.replace(dict(wanted, metadata=current["metadata"]))
            if params["converge"]:
                summary = OvercommitReconciler.standalone(kube).reconcile_all()
                if wanted is not None:
                    wanted = kube.get(overcommit.NOC_API_VERSION, overcommit.NOC_KIND, name) or wanted
    except KubeError as exc:
        module.fail_json(msg=str(exc))
    described = describe_plan(plan, nodes)
    refused = {node: entry["refused"] for node, entry in described.items() if "refused" in entry}
    output = {"changed": bool(config_changed or converge_changed), "plan": {"nodes": described, "refused": refused}}
    if summary is not None:
        output["plan"]["summary"] = summary
    if wanted is not None:
        output["config"] = wanted
        for condition in (plan.config_status.get(name) or {}).get("conditions") or []:
            if condition["status"] == "True":         # Conflict, InvalidRatio, DecreaseRefused
                module.warn("NodeOvercommitConfig %s: %s" % (name, condition["message"]))
    if module._diff:
        before = {"Node/%s" % node: entry["before"] for node, entry in described.items() if params["converge"]}
        after = {}
        for node, entry in described.items():
            if params["converge"]:
                after["Node/%s" % node] = dict(entry["after"], **({"refused": entry["refused"]} if "refused" in entry else {}))
        if config_changed:
            if current is not None:
                before["NodeOvercommitConfig/%s" % name] = {"spec": current.get("spec")}
            if wanted is not None:
                after["NodeOvercommitConfig/%s" % name] = {"spec": spec}
        output["diff"] = {"before": before, "after": after}
    module.exit_json(**output)


if __name__ == "__main__":
    main()
