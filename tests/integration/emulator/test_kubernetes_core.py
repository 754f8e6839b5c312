"""kubernetes.core (k8s, k8s_info) against the emulator through ansible-playbook: what AWX users run.

Applying the same definitions twice must report ``changed=false`` the second time, which needs the
emulator's no-op updates, strategic/merge patches, CRD establishment and waits to behave as a real server.
"""

import os

import pytest
from kubernetes import client

from tests.integration.ansible_runner import REPO, run_playbook

pytestmark = pytest.mark.skipif(not os.path.isdir(os.path.join(REPO, ".build", "deps", "ansible_collections", "kubernetes", "core")),
                                reason="kubernetes.core is installed by `make deps`")

PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  module_defaults:
    group/kubernetes.core.k8s:
      kubeconfig: "{{ kubeconfig }}"
  tasks:
    - name: crd
      kubernetes.core.k8s:
        wait: true
        wait_condition: {type: Established, status: "True"}
        wait_timeout: 10
        definition:
          apiVersion: apiextensions.k8s.io/v1
          kind: CustomResourceDefinition
          metadata: {name: tidenodepools.tide.katalyst.kubewharf.io}
          spec:
            group: tide.katalyst.kubewharf.io
            scope: Cluster
            names: {plural: tidenodepools, singular: tidenodepool, kind: TideNodePool}
            versions:
              - name: v1alpha1
                served: true
                storage: true
                subresources: {status: {}}
                schema:
                  openAPIV3Schema:
                    type: object
                    x-kubernetes-preserve-unknown-fields: true
    - name: configmap
      kubernetes.core.k8s:
        definition:
          apiVersion: v1
          kind: ConfigMap
          metadata: {name: katalyst, namespace: default, labels: {app: katalyst}}
          data: {ratio: "1.5"}
    - name: applied
      kubernetes.core.k8s:
        apply: true
        definition:
          apiVersion: v1
          kind: ConfigMap
          metadata: {name: applied, namespace: default, labels: {app: katalyst}}
          data: {a: "1"}
    - name: pool
      kubernetes.core.k8s:
        definition:
          apiVersion: tide.katalyst.kubewharf.io/v1alpha1
          kind: TideNodePool
          metadata: {name: pool-a}
          spec: {nodeConfigs: {reserve: {online: 2}}}
    - name: node
      kubernetes.core.k8s:
        definition:
          apiVersion: v1
          kind: Node
          metadata: {name: n1, labels: {katalyst.kubewharf.io/tide: "true"}}
          spec:
            taints: [{key: tide, value: "true", effect: NoSchedule}]
    - name: info
      kubernetes.core.k8s_info:
        kind: ConfigMap
        namespace: default
        label_selectors: ["app=katalyst"]
"""


def test_kubernetes_core_converges_and_is_idempotent(kubeapi, kube_client, tmp_path):
    extra = {"kubeconfig": kubeapi.kubeconfig}
    code, first, output = run_playbook(PLAYBOOK, tmp_path, extra_vars=extra)
    assert code == 0, output
    assert all(first[name]["changed"] for name in ("crd", "configmap", "applied", "pool", "node")), first
    assert sorted(r["metadata"]["name"] for r in first["info"]["resources"]) == ["applied", "katalyst"]
    code, second, output = run_playbook(PLAYBOOK, tmp_path, extra_vars=extra)
    assert code == 0, output
    assert set(second) == set(first) and [name for name, result in second.items() if result.get("changed")] == []
    nodes = client.CoreV1Api(kube_client).list_node().items
    assert [(t.key, t.value, t.effect) for t in nodes[0].spec.taints] == [("tide", "true", "NoSchedule")]
