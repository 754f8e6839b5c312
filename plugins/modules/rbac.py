#!/usr/bin/python
# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE); modules are also offered under the
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: rbac
short_description: Give each katalyst daemon its own ServiceAccount and least-privilege RBAC
version_added: 0.1.0
description:
  - Creates, for each daemon (C(katalyst-agent), C(katalyst-controller), C(katalyst-webhook), C(katalyst-scheduler-extender)),
    a ServiceAccount in O(namespace), a ClusterRole and ClusterRoleBinding with exactly the API calls the daemon makes, and
    a Role and RoleBinding where a rule is namespaced (the controller's leader election Lease in O(lease_namespace), its
    Events in C(default)).
  - The rules are one table in the collection (C(plugins/module_utils/rbac.py)), read off the daemons' code and tested both
    ways, every call allowed and every rule used; C(docs/rbac.md) lists them with the reason for each.
  - Every object carries the labels C(app.kubernetes.io/managed-by=katalyst.colocation) and C(app.kubernetes.io/component=<daemon>).
    Changes an object only when its labels, rules, C(roleRef) or subjects differ; other labels and annotations are kept.
    A binding whose C(roleRef) differs is deleted and created again (C(roleRef) is immutable).
  - The webhook makes no API call (the API server calls it), so it gets a ServiceAccount and no role.
  - With O(node_isolation), a C(ValidatingAdmissionPolicy) and its binding (both named
    C(katalyst-colocation-agent-node-isolation)) tie the agent to its node, which RBAC cannot express. A request of the
    C(katalyst-agent) ServiceAccount must come with a node-bound token (M(katalyst.colocation.service_account_kubeconfig)
    O(katalyst.colocation.service_account_kubeconfig#module:bound_node)), and may write only that node's
    CustomNodeResource (and its status), patch only pods bound to that node, create only Events whose C(source.host)
    and C(reportingInstance) name that node, and request (renew) only tokens bound to that node. See C(docs/rbac.md),
    section Node isolation.
  - Each daemon with an API client may create a token of its own ServiceAccount only (C(serviceaccounts/token) with
    C(resourceNames), in a Role in O(namespace)), to renew its own token before it expires (C(docs/credentials.md),
    section Renewal).
  - This module only manages identities and permissions; it creates no credential for them.
options:
  state:
    description:
      - V(present) creates or updates the objects; V(absent) removes them.
      - V(absent) removes only objects labelled C(app.kubernetes.io/managed-by=katalyst.colocation) (it warns about the others)
        and never the namespace, which may hold more than this module put there.
    type: str
    choices: [present, absent]
    default: present
  components:
    description:
      - The daemons to manage. Objects of daemons not listed are left as they are.
    type: list
    elements: str
    choices: [katalyst-agent, katalyst-controller, katalyst-webhook, katalyst-scheduler-extender]
    default: [katalyst-agent, katalyst-controller, katalyst-webhook, katalyst-scheduler-extender]
  namespace:
    description:
      - The namespace of the ServiceAccounts.
    type: str
    default: katalyst-system
  create_namespace:
    description:
      - Create O(namespace) when it does not exist (labelled C(app.kubernetes.io/managed-by=katalyst.colocation)).
        An existing namespace is never changed.
    type: bool
    default: true
  lease_namespace:
    description:
      - The namespace of the controller's leader election Lease (its C(lease_namespace) setting, the C(tide) role's
        C(tide_lease_namespace)); the controller may read, create and update Leases only there.
      - Defaults to O(namespace). It must exist.
    type: str
  lease_name:
    description:
      - The name of the controller's Lease (its C(lease_name) setting); it may read and update only this Lease.
    type: str
    default: katalyst-controller
  node_isolation:
    description:
      - Manage the agent's node isolation policy (a C(ValidatingAdmissionPolicy) and its C(ValidatingAdmissionPolicyBinding))
        with the agent's objects (only when C(katalyst-agent) is in O(components)); V(absent) removes them too.
      - When the cluster does not serve C(admissionregistration.k8s.io/v1) C(validatingadmissionpolicies) (before
        Kubernetes 1.30), the module warns and skips them; RBAC alone then lets any agent write any node's objects.
      - Once the policy is in place, the agent's requests are refused unless its token is bound to its Node.
      - V(false) leaves existing policy objects as they are.
    type: bool
    default: true
extends_documentation_fragment:
  - katalyst.colocation.auth
  - katalyst.colocation.attributes
  - katalyst.colocation.attributes.kubernetes
attributes:
  check_mode:
    description: Reports what it would create, update or delete, and writes nothing.
  diff_mode:
    description: Shows each object's name, labels and RBAC fields (rules, roleRef, subjects; the spec of the admission policy
      and its binding) before and after.
notes:
  - Granting a permission needs that permission (or the C(escalate) and C(bind) verbs); run it with the cluster admin's credentials.
author:
  - katalyst.colocation developers (@katalyst-colocation)
"""

EXAMPLES = r"""
- name: The four daemons' identities and least-privilege RBAC in katalyst-system
  katalyst.colocation.rbac:
    kubeconfig: /etc/kubernetes/admin.conf

- name: Preview with --check --diff, the controller's Lease kept in kube-system (the tide role's default)
  katalyst.colocation.rbac:
    components: [katalyst-controller]
    lease_namespace: kube-system

- name: Remove them
  katalyst.colocation.rbac:
    state: absent
"""

RETURN = r"""
objects:
  description: Every object of the components and what happened to it (V(create), V(replace), V(recreate), V(delete) or V(none)).
  returned: always
  type: list
  elements: dict
  sample: [{"kind": "ClusterRole", "name": "katalyst-colocation:katalyst-agent", "component": "katalyst-agent", "action": "create"}]
service_accounts:
  description: The ServiceAccount of each component (what a credential is issued for).
  returned: always
  type: list
  elements: dict
  sample: [{"component": "katalyst-agent", "namespace": "katalyst-system", "name": "katalyst-agent"}]
changes:
  description: The planned changes (kind, target, action, before, after).
  returned: always
  type: list
  elements: dict
"""

import copy

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.katalyst.colocation.plugins.module_utils import rbac
from ansible_collections.katalyst.colocation.plugins.module_utils.auth_spec import auth_argument_spec, auth_params
from ansible_collections.katalyst.colocation.plugins.module_utils.kube import KubeClient, KubeError, require_kubernetes
from ansible_collections.katalyst.colocation.plugins.module_utils.reconcile import PlanError

# What a create keeps of an object read from the cluster (restoring a deleted one when a later change fails).
CREATE_METADATA = ("name", "namespace", "labels", "annotations")


def creatable(obj):
    body = copy.deepcopy(obj)
    body["metadata"] = {key: value for key, value in obj["metadata"].items() if key in CREATE_METADATA}
    return body


def apply_change(kube, change):
    """Perform one change of ``rbac.plan_rbac``'s Plan."""
    obj = change.data["object"]
    meta = obj["metadata"]
    if change.action in ("delete", "recreate"):
        kube.delete(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"))
    if change.action in ("create", "recreate"):
        kube.create(creatable(obj))
    elif change.action == "replace":
        kube.replace(obj)


def describe(obj, action):
    meta = obj["metadata"]
    described = {"kind": obj["kind"], "name": meta["name"], "action": action}
    if meta.get("namespace"):
        described["namespace"] = meta["namespace"]
    if rbac.LABEL_COMPONENT in meta["labels"]:
        described["component"] = meta["labels"][rbac.LABEL_COMPONENT]
    return described


def desired_objects(params, kube=None):
    """The objects to manage, in creation order, and warnings. With ``kube``, the node isolation policy is included only
    when the cluster serves ValidatingAdmissionPolicy."""
    objects = rbac.manifests(params["components"], params["namespace"], params["lease_namespace"], params["lease_name"])
    if params["create_namespace"]:
        objects.insert(0, rbac.namespace_object(params["namespace"]))
    warnings = []
    if params["node_isolation"] and rbac.AGENT in rbac.check_components(params["components"]):
        try:
            if kube is not None:
                kube.resource(rbac.ADMISSION_API_VERSION, "ValidatingAdmissionPolicy")
            objects += rbac.node_isolation_objects(params["namespace"])
        except KubeError as exc:
            if exc.status != 404:
                raise
            if params["state"] == "present":
                warnings.append("the cluster does not serve %s ValidatingAdmissionPolicy: node isolation skipped, any agent may "
                                "write any node's CustomNodeResource, pods and Events (docs/rbac.md)" % rbac.ADMISSION_API_VERSION)
    return objects, warnings


def main():
    argument_spec = auth_argument_spec()
    argument_spec.update(
        state={"type": "str", "choices": ["present", "absent"], "default": "present"},
        components={"type": "list", "elements": "str", "choices": list(rbac.COMPONENTS), "default": list(rbac.COMPONENTS)},
        namespace={"type": "str", "default": rbac.DEFAULT_NAMESPACE},
        create_namespace={"type": "bool", "default": True},
        lease_namespace={"type": "str"},
        lease_name={"type": "str", "default": rbac.DEFAULT_LEASE_NAME},
        node_isolation={"type": "bool", "default": True},
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    require_kubernetes(module)
    params = module.params
    try:
        kube = KubeClient(auth_params(params))
        desired, warnings = desired_objects(params, kube)
        existing = {}
        for obj in desired:
            meta = obj["metadata"]
            existing[rbac.object_key(obj)] = kube.get(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"))
        plan = rbac.plan_rbac(desired, existing, params["state"])
        plan.apply(lambda change: apply_change(kube, change), dry_run=module.check_mode)
    except (KubeError, PlanError, ValueError) as exc:
        module.fail_json(msg=str(exc))
    for warning in warnings + plan.warnings:
        module.warn(warning)
    actions = {change.target: change.action for change in plan}
    module.exit_json(**plan.module_result(
        module._diff, objects=[describe(obj, actions.get(rbac.object_key(obj), "none")) for obj in desired],
        service_accounts=[{"component": component, "namespace": params["namespace"], "name": component}
                          for component in rbac.check_components(params["components"])]))


if __name__ == "__main__":
    main()
