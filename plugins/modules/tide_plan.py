#!/usr/bin/python
# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE); modules are also offered under the
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: tide_plan
short_description: What the tide controller would do with a TideNodePool now
version_added: 0.1.0
description:
  - Reads a C(TideNodePool), the cluster's nodes and pods, and returns the next pass of the tide controller, computed
    by the same engine C(katalyst-controller) runs - which node has which role, the expected reserve counts, which
    tide node would flip next, which pods cause it, every node change and the status - without changing anything.
  - For AWX surveys and dashboards; O(spec) previews a pool that does not exist yet or a changed spec.
options:
  name:
    description:
      - Name of the TideNodePool.
    type: str
    required: true
  spec:
    description:
      - A TideNodePool C(spec) (Katalyst's field names, for example C(nodeConfigs.reserve.online)) to plan with instead
        of the stored one. Required when the pool does not exist.
    type: dict
extends_documentation_fragment:
  - katalyst.colocation.auth
  - katalyst.colocation.attributes.info_module
  - katalyst.colocation.attributes.kubernetes
attributes:
  check_mode:
    description: Never changes anything.
  diff_mode:
    description: Reads only; the plan itself is the result.
author:
  - katalyst.colocation developers (@katalyst-colocation)
"""

EXAMPLES = r"""
- name: The next tide pass of pool web
  katalyst.colocation.tide_plan:
    name: web
  register: tide

- name: Show the node that flips next, and why
  ansible.builtin.debug:
    msg: "{{ tide.plan.flip | default('nothing flips: ' ~ tide.plan.flip_note, true) }}"

- name: Preview a pool before creating it
  katalyst.colocation.tide_plan:
    name: batch
    spec:
      nodeConfigs:
        nodeSelector: {pool: batch}
        reserve: {online: 20%, offline: 1}
"""

RETURN = r"""
exists:
  description: Whether the pool exists.
  returned: always
  type: bool
plan:
  description:
    - The pass, as the C(plan) of M(katalyst.colocation.tide_node_pool) -
      C(roles), C(roles_before), C(reserve), C(flip), C(flip_note), C(changes), C(status), C(error).
  returned: always
  type: dict
  sample: {"reserve": {"online": 1, "offline": 2, "nodes": 10}, "flip": null, "flip_note": "1 online tide node(s): at least one is kept online"}
counts:
  description: How many nodes have each role after the pass.
  returned: always
  type: dict
  sample: {"online-reserve": 1, "offline-reserve": 2, "tide-online": 1, "tide-offline": 6}
"""

import datetime

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.katalyst.colocation.plugins.module_utils import tide
from ansible_collections.katalyst.colocation.plugins.module_utils.auth_spec import auth_argument_spec, auth_params
from ansible_collections.katalyst.colocation.plugins.module_utils.kube import KubeClient, KubeError, require_kubernetes


def main():
    argument_spec = auth_argument_spec()
    argument_spec.update(name={"type": "str", "required": True}, spec={"type": "dict"})
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    require_kubernetes(module)
    name = module.params["name"]
    try:
        kube = KubeClient(auth_params(module.params))
        pool = kube.get(tide.API_VERSION, tide.KIND, name)
        if pool is None and module.params["spec"] is None:
            module.fail_json(msg="TideNodePool %s does not exist; give spec to preview it" % name, exists=False)
        exists = pool is not None
        if pool is None:
            pool = {"apiVersion": tide.API_VERSION, "kind": tide.KIND, "metadata": {"name": name}}
        if module.params["spec"] is not None:
            pool = dict(pool, spec=module.params["spec"])
        nodes = kube.list("v1", "Node")
        pods = kube.list("v1", "Pod")
    except KubeError as exc:
        module.fail_json(msg=str(exc))
    result = tide.plan_tide_pool(pool, nodes, pods, now=datetime.datetime.now(datetime.timezone.utc))
    counts = {}
    for role in result.roles.values():
        counts[role] = counts.get(role, 0) + 1
    module.exit_json(changed=False, exists=exists, plan=result.as_dict(), counts=counts)


if __name__ == "__main__":
    main()
