#!/usr/bin/python
# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE); modules are also offered under the
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: node_cleanup
short_description: Take katalyst.colocation's labels, annotations, taints and node conditions off the Nodes
version_added: 0.2.0
description:
  - Removes from each Node what the collection's daemons put there, and nothing else, for an uninstall
    (C(playbooks/uninstall.yml)).
  - Labels C(tide.katalyst.kubewharf.io/node-pool), C(node-type), C(tide) and C(reserve); the taints
    C(tide.katalyst.kubewharf.io/online-not-used) and C(offline-not-used) and the agent's eviction taints
    (C(node.katalyst.kubewharf.io/*)); the overcommit annotations
    (C(katalyst.kubewharf.io/*_overcommit_ratio), C(original_*), C(overcommit_*)) and C(katalyst.colocation/tide-last-flip).
  - The node conditions the agent's eviction loop writes (C(SystemRootfs) with the reasons C(RootfsPressure) or C(NoRootfsPressure)),
    deleted by a strategic merge patch of the C(nodes/status) subresource; the kubelet's conditions stay.
  - The user's labels stay, C(katalyst.kubewharf.io/overcommit_node_pool) and a TideNodePool's nodeSelector labels included.
  - Stop katalyst-controller and unregister katalyst-webhook first, or they put the keys back.
options:
  nodes:
    description: Names of the Nodes to clean; all Nodes when empty.
    type: list
    elements: str
    default: []
extends_documentation_fragment:
  - katalyst.colocation.auth
  - katalyst.colocation.attributes
attributes:
  check_mode:
    description: Reports what would be removed without writing.
  diff_mode:
    description: Shows each Node's keys before and after.
  platform:
    support: full
    description: Talks to the Kubernetes API.
    platforms: posix
author:
  - katalyst.colocation developers (@katalyst-colocation)
"""

EXAMPLES = r"""
- name: Take the colocation keys off every Node
  katalyst.colocation.node_cleanup:
    kubeconfig: /etc/kubernetes/admin.conf
"""

RETURN = r"""
removed:
  description: Node name to the labels, annotations, taints and status conditions removed (or that would be, in check mode).
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.katalyst.colocation.plugins.module_utils import nodecleanup
from ansible_collections.katalyst.colocation.plugins.module_utils.auth_spec import auth_argument_spec, auth_params
from ansible_collections.katalyst.colocation.plugins.module_utils.kube import KubeClient, KubeError, require_kubernetes


def main():
    argument_spec = auth_argument_spec()
    argument_spec.update(nodes={"type": "list", "elements": "str", "default": []})
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    require_kubernetes(module)
    removed = {}
    try:
        kube = KubeClient(auth_params(module.params))
        names = module.params["nodes"] or sorted(node["metadata"]["name"] for node in kube.list("v1", "Node"))
        for name in names:
            before, after = kube.mutate("v1", "Node", name, nodecleanup.strip_node, dry_run=module.check_mode)
            if before is None:
                continue
            owned = dict(nodecleanup.owned_metadata(before) if after is not before else {"labels": {}, "annotations": {}, "taints": []},
                         conditions=[])
            node = after if after is not None else before
            patch = nodecleanup.conditions_patch(node)
            if patch is not None:
                kube.patch("v1", "Node", name, patch, patch_type="strategic", subresource="status", dry_run=module.check_mode)
                owned["conditions"] = nodecleanup.owned_conditions(node)
            if any(owned.values()):
                removed[name] = owned
    except KubeError as exc:
        module.fail_json(msg=str(exc), removed=removed)
    result = {"changed": bool(removed), "removed": removed}
    if module._diff:
        result["diff"] = {"before": {"Node/%s" % name: owned for name, owned in removed.items()},
                          "after": {"Node/%s" % name: {"labels": {}, "annotations": {}, "taints": [], "conditions": []} for name in removed}}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
