# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""The ``NUMA`` plugin of katalyst-scheduler-extender: topology-aware placement (katalyst-cluster-spec.md §3.3,
§4.2, §4.3) over the extender's cache.

Filter: ``placement.filter_pod`` per node (CNR NUMA fit of the ``dynamic`` or ``native`` policy, the QoS-aware
fit of reclaimed resources, NUMA-level inter-pod (anti-)affinity). Prioritize: ``placement.score_pod`` on the
NUMA nodes the filter found, normalized to 0-10 over the candidate nodes.

Speed: pods that no NUMA rule applies to (most pods) are answered without looking at any node. For the rest,
each node's parsed view (``placement.node_view``: topology, pods per NUMA, available resources) is kept in the
extender cache until that node's CNR or one of its pods changes, and so are the filter verdict (with its NUMA
candidates, which prioritize scores) and the score per pod signature: replicas of one template (the usual
case: a Job's workers) cost one evaluation per node, and a binding re-evaluates only the node it changed.
A malformed microtopology annotation makes the pod unschedulable and is reported once as a Warning Event on the pod.
"""

from __future__ import annotations

import collections
import json
import logging
import threading

from .. import placement
from ..kube import KubeClient
from ..overcommit import SUCCESS, UNSCHEDULABLE
from ..qos import RECLAIMED_CORES

LOG = logging.getLogger("katalyst.extender.numa")


def _meta(obj):
    return (obj or {}).get("metadata") or {}


class NumaPlugin:
    name = "NUMA"

    def __init__(self, policy=placement.DYNAMIC):
        if policy not in (placement.DYNAMIC, placement.NATIVE):
            raise ValueError("NUMA resource policy must be dynamic or native, got %r" % (policy,))
        self.policy = policy
        self.lock = threading.Lock()
        self.reported = collections.OrderedDict()         # (pod uid, message) -> True
        self.kube = None
        self.stats = {"views_built": 0}

    def attach(self, api_client):
        """Events need the API; the extender calls this once it has a client."""
        if api_client is not None:
            self.kube = KubeClient(api_client=api_client)

    # -- which pods ------------------------------------------------------------------------------
    def applies(self, pod):
        """Is any NUMA rule relevant for this pod? (reclaimed fit, or NUMA fit and affinity of the policy)"""
        if placement._qos(pod) == RECLAIMED_CORES:      # pylint: disable=protected-access
            return True
        if self.policy == placement.DYNAMIC:
            return placement.is_numa_binding_pod(pod)
        return placement.is_native_supported(pod)

    # -- per-node state ------------------------------------------------------------------------------
    def view(self, name, cache):
        """The node's parsed NUMA state, kept by the cache until the node's CNR or pods change."""
        def build():
            self.stats["views_built"] += 1
            return placement.node_view(cache.cnr(name), cache.pods_on(name), self.policy)
        return cache.memo(name, (self.name, "view", self.policy), build)

    def decide(self, pod, signature, node, cache):
        """``placement.filter_pod`` for one node; pods with the same signature share it until the node changes."""
        name = node["metadata"]["name"]

        def build():
            return placement.filter_pod(pod, node, cache.cnr(name), cache.pods_on(name), self.policy, self.view(name, cache))
        return cache.memo(name, (self.name, "filter", signature), build)

    def report(self, pod, problems):
        uid = _meta(pod).get("uid") or placement.pod_key(pod)
        for problem in problems:
            with self.lock:
                if (uid, problem) in self.reported:
                    continue
                self.reported[(uid, problem)] = True
                while len(self.reported) > 4096:
                    self.reported.popitem(last=False)
            LOG.warning("pod %s: %s", placement.pod_key(pod), problem)
            if self.kube is not None and _meta(pod).get("name"):
                self.kube.emit_event(dict(pod, apiVersion="v1", kind="Pod"), "InvalidMicrotopology", problem, "Warning",
                                     "katalyst-scheduler-extender")

    # -- verbs -------------------------------------------------------------------------------------
    def filter(self, pod, nodes, cache):
        if not self.applies(pod):
            return {}
        signature = pod_signature(pod)
        verdicts, problems = {}, set()
        for node in nodes:
            result = self.decide(pod, signature, node, cache)
            problems.update(result["problems"])
            verdicts[node["metadata"]["name"]] = (SUCCESS, "") if result["fit"] else (UNSCHEDULABLE, result["reason"])
        if problems:
            self.report(pod, sorted(problems))
        return verdicts

    def prioritize(self, pod, nodes, cache):
        if not self.applies(pod) or placement._qos(pod) == RECLAIMED_CORES:    # pylint: disable=protected-access
            return {}
        signature = pod_signature(pod)
        raw = {}
        for node in nodes:
            name = node["metadata"]["name"]

            def build(node=node, name=name):
                numas = self.decide(pod, signature, node, cache)["numas"]
                return placement.score_pod(pod, node, cache.cnr(name), cache.pods_on(name), self.policy, numas, self.view(name, cache))
            raw[name] = cache.memo(name, (self.name, "score", signature), build)
        return placement.normalize_scores(raw)


def pod_signature(pod):
    """What NUMA decisions read from a pending pod: replicas of one template share it (an equivalence class)."""
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k.startswith("katalyst.kubewharf.io/")
                   or k == placement.MAIN_CONTAINER_KEY}
    containers = [(c.get("name"), c.get("resources")) for c in spec.get("containers") or []]
    init = [(c.get("name"), c.get("resources")) for c in spec.get("initContainers") or []]
    return json.dumps([meta.get("namespace"), meta.get("labels"), annotations, containers, init, spec.get("overhead"),
                       (pod.get("status") or {}).get("qosClass")], sort_keys=True, default=str)
