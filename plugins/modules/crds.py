#!/usr/bin/python
# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE); modules are also offered under the
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: crds
short_description: Install or remove the Katalyst-compatible CustomResourceDefinitions
version_added: 0.1.0
description:
  - Installs C(TideNodePool), C(NodeOvercommitConfig) and C(CustomNodeResource) CRDs that are compatible with
    Katalyst's (same groups, kinds, fields and subresources) and add standard C(status.conditions).
  - Changes a CRD only when its definition differs; check mode uses the API server's dry-run.
  - Waits until every CRD is C(Established) so later tasks can create objects of it right away.
options:
  state:
    description:
      - V(present) installs or updates the CRDs; V(absent) removes them.
    type: str
    choices: [present, absent]
    default: present
  names:
    description:
      - Which CRDs to manage, by full name, plural or kind (for example V(tidenodepools) or V(NodeOvercommitConfig)).
      - All three when omitted.
    type: list
    elements: str
  wait:
    description:
      - Wait for the C(Established) condition after installing.
    type: bool
    default: true
  wait_timeout:
    description:
      - Seconds to wait for C(Established).
    type: int
    default: 60
  force:
    description:
      - With O(state=absent), remove a CRD even though objects of its kind exist (they are deleted with it).
    type: bool
    default: false
extends_documentation_fragment:
  - katalyst.colocation.auth
  - katalyst.colocation.attributes
  - katalyst.colocation.attributes.kubernetes
attributes:
  check_mode:
    description: Uses server-side dry-run; reports what would change without changing it.
  diff_mode:
    description: Shows each CRD's definition before and after.
author:
  - katalyst.colocation developers (@katalyst-colocation)
"""

EXAMPLES = r"""
- name: Install the CRDs and wait until they are established
  katalyst.colocation.crds:
    kubeconfig: /etc/kubernetes/admin.conf

- name: Only the tide CRD, with the credentials from K8S_AUTH_* variables
  katalyst.colocation.crds:
    names: [tidenodepools]

- name: Remove all CRDs even if objects of them exist
  katalyst.colocation.crds:
    state: absent
    force: true
"""

RETURN = r"""
crds:
  description: What happened to each CRD.
  returned: always
  type: list
  elements: dict
  sample: [{"name": "tidenodepools.tide.katalyst.kubewharf.io", "action": "create"}]
changes:
  description: The planned changes (kind, target, action).
  returned: always
  type: list
  elements: dict
"""

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.katalyst.colocation.plugins.module_utils import crd_manifests
from ansible_collections.katalyst.colocation.plugins.module_utils.auth_spec import auth_argument_spec, auth_params
from ansible_collections.katalyst.colocation.plugins.module_utils.kube import KubeClient, KubeError, require_kubernetes
from ansible_collections.katalyst.colocation.plugins.module_utils.reconcile import Plan, PlanError

CRD_API = "apiextensions.k8s.io/v1"


def is_subset(wanted, actual):
    """True when every field of ``wanted`` has the same value in ``actual`` (server defaults may add more)."""
    if isinstance(wanted, dict):
        return isinstance(actual, dict) and all(key in actual and is_subset(value, actual[key]) for key, value in wanted.items())
    if isinstance(wanted, list):
        return isinstance(actual, list) and len(wanted) == len(actual) and all(is_subset(w, a) for w, a in zip(wanted, actual))
    return wanted == actual


def plan_crds(desired, existing, state):
    """The Plan for ``desired`` CRDs given the ``existing`` ones (name -> object or None)."""
    plan = Plan()
    for crd in desired:
        name = crd["metadata"]["name"]
        current = existing.get(name)
        if state == "absent":
            if current is not None:
                plan.add("api", name, "delete", {"spec": current["spec"]}, None, "remove the CRD", {"object": current})
            continue
        if current is None:
            plan.add("api", name, "create", None, {"spec": crd["spec"]}, "install the CRD", {"object": crd})
            continue
        labels = (current["metadata"].get("labels") or {})
        if not is_subset(crd["spec"], current["spec"]) or not is_subset(crd["metadata"].get("labels") or {}, labels):
            updated = dict(current, spec=crd["spec"])
            updated["metadata"] = dict(current["metadata"], labels=dict(labels, **crd["metadata"].get("labels", {})))
            plan.add("api", name, "replace", {"spec": current["spec"]}, {"spec": crd["spec"]}, "update the CRD definition",
                     {"object": updated})
    return plan


def established(crd):
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in (crd.get("status") or {}).get("conditions") or [])


def main():
    argument_spec = auth_argument_spec()
    argument_spec.update(
        state={"type": "str", "choices": ["present", "absent"], "default": "present"},
        names={"type": "list", "elements": "str"},
        wait={"type": "bool", "default": True},
        wait_timeout={"type": "int", "default": 60},
        force={"type": "bool", "default": False},
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    require_kubernetes(module)
    params = module.params
    try:
        desired = crd_manifests.crds(params["names"])
    except ValueError as exc:
        module.fail_json(msg=str(exc))
    try:
        kube = KubeClient(auth_params(params))
        existing = {crd["metadata"]["name"]: kube.get(CRD_API, "CustomResourceDefinition", crd["metadata"]["name"]) for crd in desired}
        plan = plan_crds(desired, existing, params["state"])
        if params["state"] == "absent" and not params["force"]:
            for change in plan:
                crd = change.data["object"]
                spec = crd["spec"]
                version = spec["versions"][0]["name"]
                instances = kube.list("%s/%s" % (spec["group"], version), spec["names"]["kind"])
                if instances:
                    module.fail_json(msg="refusing to remove %s: %d %s object(s) still exist (%s); set force=true to delete them too"
                                     % (change.target, len(instances), spec["names"]["kind"],
                                        ", ".join(sorted(i["metadata"]["name"] for i in instances)[:5])))

        def apply_change(change):
            if change.action == "create":
                kube.create(change.data["object"], dry_run=module.check_mode)
            elif change.action == "replace":
                kube.replace(change.data["object"], dry_run=module.check_mode)
            elif change.action == "delete":
                kube.delete(CRD_API, "CustomResourceDefinition", change.target, dry_run=module.check_mode)

        plan.apply(apply_change)
        if params["state"] == "present" and params["wait"] and not module.check_mode:
            deadline = time.time() + params["wait_timeout"]
            pending = [crd["metadata"]["name"] for crd in desired]
            while pending:
                pending = [name for name in pending if not established(kube.get(CRD_API, "CustomResourceDefinition", name) or {})]
                if not pending:
                    break
                if time.time() > deadline:
                    module.fail_json(msg="CRDs not Established after %ss: %s" % (params["wait_timeout"], ", ".join(pending)),
                                     changed=plan.changed)
                time.sleep(0.5)
    except (KubeError, PlanError) as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**plan.module_result(module._diff, crds=[
        {"name": crd["metadata"]["name"], "action": next((c.action for c in plan if c.target == crd["metadata"]["name"]), "none")}
        for crd in desired]))


if __name__ == "__main__":
    main()
