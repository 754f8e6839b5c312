#!/usr/bin/python
# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE); modules are also offered under the
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: numa_info
short_description: Per-NUMA capacity, allocations and reclaimed resources of Kubernetes nodes
version_added: 0.1.0
description:
  - Reads the nodes' C(CustomNodeResource) objects (C(node.katalyst.kubewharf.io/v1alpha1)) and the pods bound to
    them, and reports for every NUMA node its socket, capacity and allocatable CPU and memory, the reclaimed
    resources the agent reported (C(resource.katalyst.kubewharf.io/reclaimed_millicpu) and C(reclaimed_memory)),
    the pods placed on it (C(katalyst.kubewharf.io/numa_bind_result) or CNR allocations), what they request and
    what is left, as the scheduler extender counts it.
  - Changes nothing.
options:
  nodes:
    description:
      - Names of the nodes to report. All nodes (matching O(label_selector)) when omitted.
    type: list
    elements: str
  label_selector:
    description:
      - Only nodes with these labels (Kubernetes label selector syntax, for example V(pool=colocation)).
    type: str
  resource_policy:
    description:
      - How allocations are counted, as the scheduler extender's NUMA plugin does; V(dynamic) counts
        C(dedicated_cores) pods, V(native) counts every allocation.
    type: str
    choices: [dynamic, native]
    default: dynamic
extends_documentation_fragment:
  - katalyst.colocation.auth
  - katalyst.colocation.attributes.info_module
  - katalyst.colocation.attributes.kubernetes
attributes:
  check_mode:
    description: Reads only; runs the same in check mode.
  diff_mode:
    description: Reads only.
author:
  - katalyst.colocation developers (@katalyst-colocation)
"""

EXAMPLES = r"""
- name: NUMA view of two nodes
  katalyst.colocation.numa_info:
    kubeconfig: /etc/kubernetes/admin.conf
    nodes: [node-1, node-2]
  register: numa

- name: Which NUMA nodes of the colocation pool still have reclaimed memory
  ansible.builtin.debug:
    msg: "{{ numa.nodes | map(attribute='numa') | flatten | selectattr('reclaimed.allocatable', 'defined') | list }}"

- name: All nodes of a pool, credentials from K8S_AUTH_* variables
  katalyst.colocation.numa_info:
    label_selector: pool=colocation
"""

RETURN = r"""
nodes:
  description: One entry per node, sorted by name.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The node name.
      type: str
    cnr:
      description: Whether the node has a CustomNodeResource.
      type: bool
    topology_policy:
      description: The CNR's C(status.topologyPolicy).
      type: str
    reclaimed:
      description: Node-level reclaimed resources (C(allocatable) and C(capacity) maps of quantity strings).
      type: dict
    numa:
      description:
        - Per NUMA node, sorted by id, with C(id), C(socket), C(capacity), C(allocatable) (CPU and memory),
          C(reclaimed) (C(allocatable)/C(capacity) of the reclaimed resources), C(allocated) (requests of the pods
          placed there), C(available) (what the scheduler extender can still give) and C(pods) (namespace/name).
      type: list
      elements: dict
  sample:
    - name: node-1
      cnr: true
      topology_policy: SingleNUMANodeContainerLevel
      reclaimed: {allocatable: {"resource.katalyst.kubewharf.io/reclaimed_millicpu": "24k"}}
      numa:
        - {id: 0, socket: "0", capacity: {cpu: "8", memory: "16Gi"}, allocatable: {cpu: "8", memory: "16Gi"},
           reclaimed: {allocatable: {"resource.katalyst.kubewharf.io/reclaimed_millicpu": "6k"}},
           allocated: {cpu: "4", memory: "2Gi"}, available: {cpu: "4", memory: "14Gi"}, pods: [default/ps-0]}
missing:
  description: Names given in O(nodes) that are not nodes of the cluster.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.katalyst.colocation.plugins.module_utils import cnr as cnr_engine
from ansible_collections.katalyst.colocation.plugins.module_utils import placement
from ansible_collections.katalyst.colocation.plugins.module_utils.auth_spec import auth_argument_spec, auth_params
from ansible_collections.katalyst.colocation.plugins.module_utils.kube import KubeClient, KubeError, require_kubernetes
from ansible_collections.katalyst.colocation.plugins.module_utils.quantity import BINARY_SI, DECIMAL_SI, new_milli_quantity, new_quantity

ZONE_RESOURCES = ("cpu", "memory")


def _text(name, amount):
    """An engine amount (cpu in milli, others in units) as a quantity string."""
    if name == "cpu":
        return str(new_milli_quantity(amount))
    return str(new_quantity(amount, BINARY_SI if name == "memory" or name.endswith("_memory") else DECIMAL_SI))


def _zones(cnr):
    """{NUMA id: (socket, zone dict)} from the CNR's Socket -> Numa zones."""
    out = {}
    for socket in ((cnr or {}).get("status") or {}).get("topologyZone") or []:
        if not isinstance(socket, dict) or socket.get("type") != cnr_engine.ZONE_SOCKET:
            continue
        for zone in socket.get("children") or []:
            if isinstance(zone, dict) and zone.get("type") == cnr_engine.ZONE_NUMA and str(zone.get("name", "")).isdigit():
                out[int(zone["name"])] = (str(socket.get("name")), zone)
    return out


def numa_report(node_name, cnr, pods, policy):
    """The report of one node (see RETURN) from its CNR (or None) and the pods bound to it."""
    status = (cnr or {}).get("status") or {}
    report = {"name": node_name, "cnr": cnr is not None, "topology_policy": status.get("topologyPolicy") or "",
              "reclaimed": {field: {k: v for k, v in ((status.get("resources") or {}).get(field) or {}).items()
                                    if k in cnr_engine.RECLAIMED_RESOURCES}
                            for field in ("allocatable", "capacity")},
              "numa": []}
    view = placement.node_view(cnr, pods, policy)
    topology = view["topology"]
    for numa, (socket, zone) in sorted(_zones(cnr).items()):
        resources = zone.get("resources") or {}
        entry = {"id": numa, "socket": socket}
        for field in ("capacity", "allocatable"):
            entry[field] = {k: v for k, v in (resources.get(field) or {}).items() if k not in cnr_engine.RECLAIMED_RESOURCES}
        entry["reclaimed"] = {field: {k: v for k, v in (resources.get(field) or {}).items() if k in cnr_engine.RECLAIMED_RESOURCES}
                              for field in ("allocatable", "capacity")}
        allocatable = topology["numas"].get(numa, {}).get("allocatable") or {}
        available = view["available"].get(numa) or {}
        entry["allocated"] = {name: _text(name, allocatable[name] - available.get(name, 0)) for name in ZONE_RESOURCES if name in allocatable}
        entry["available"] = {name: _text(name, available[name]) for name in ZONE_RESOURCES if name in available}
        entry["pods"] = sorted(placement.pod_key(p) for p in view["placed"].get(numa) or [])
        report["numa"].append(entry)
    return report


def main():
    argument_spec = auth_argument_spec()
    argument_spec.update(
        nodes={"type": "list", "elements": "str"},
        label_selector={"type": "str"},
        resource_policy={"type": "str", "choices": ["dynamic", "native"], "default": "dynamic"},
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    require_kubernetes(module)
    params = module.params
    try:
        kube = KubeClient(auth_params(params))
        nodes = kube.list("v1", "Node", label_selector=params["label_selector"])
        names = sorted(n["metadata"]["name"] for n in nodes)
        missing = []
        if params["nodes"] is not None:
            wanted = list(dict.fromkeys(params["nodes"]))
            missing = [name for name in wanted if name not in names]
            names = [name for name in names if name in set(wanted)]
        try:
            cnrs = {c["metadata"]["name"]: c for c in kube.list(cnr_engine.CNR_API_VERSION, cnr_engine.CNR_KIND)}
        except KubeError as exc:
            if exc.status != 404:
                raise
            module.fail_json(msg="the API server does not serve %s %s: install the CRDs (katalyst.colocation.crds) and run the agents"
                             % (cnr_engine.CNR_API_VERSION, cnr_engine.CNR_KIND))
        pods_by_node = {}
        if names:
            for pod in kube.list("v1", "Pod"):
                node_name = (pod.get("spec") or {}).get("nodeName")
                if node_name in cnrs or node_name in names:
                    pods_by_node.setdefault(node_name, []).append(pod)
        reports = [numa_report(name, cnrs.get(name), pods_by_node.get(name, []), params["resource_policy"]) for name in names]
    except KubeError as exc:
        module.fail_json(msg=str(exc))
    for name in missing:
        module.warn("node %s does not exist" % name)
    module.exit_json(changed=False, nodes=reports, missing=missing)


if __name__ == "__main__":
    main()
