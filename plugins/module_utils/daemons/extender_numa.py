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
A malformed microtopology annotation makes the pod unschedulable and is reported once as a Warning Event on the pod;
a ``numa_bind_result`` that cannot be read on a pod already on a node is reported once per value (a log line and a
Warning Event on that pod) when the node's view is built, and the pod counts as not pinned yet.

The aligned resources (``numa_aligned_resources``, Katalyst's ``alignedResources``) are fixed for the plugin's life and
are part of its filter memo key; node views do not depend on them.
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

    def __init__(self, policy=placement.DYNAMIC, aligned_resources=placement.DEFAULT_ALIGNED_RESOURCES):
        if policy not in (placement.DYNAMIC, placement.NATIVE):
            raise ValueError("NUMA resource policy must be dynamic or native, got %r" % (policy,))
        self.policy = policy
        self.aligned_resources = placement.aligned_resource_names(aligned_resources)
        # the per-pod memo key of this plugin's settings (one string: its hash is computed once)
        self.filter_key = "filter:%s:%s" % (policy, ",".join(sorted(self.aligned_resources)))
        self.lock = threading.Lock()
        self.reported = collections.OrderedDict()         # (pod uid, message) -> True
        self.kube = None
        self.stats = {"views_built": 0}

    def attach(self, api_client, on_retry=None):
        """Events need the API; the extender calls this once it has a client (``on_retry``: counts the client's retries)."""
        if api_client is not None:
            self.kube = KubeClient(api_client=api_client, on_retry=on_retry)

    # -- which pods ------------------------------------------------------------------------------
    def applies(self, pod, query=None):
        """Is any NUMA rule relevant for this pod? (reclaimed fit, or NUMA fit and affinity of the policy)"""
        query = query or placement.PodQuery(pod, self.policy)
        return query.qos == RECLAIMED_CORES or query.supported

    # -- per-node state ------------------------------------------------------------------------------
    def view(self, name, cache):
        """The node's parsed NUMA state, kept by the cache until the node's CNR or pods change."""
        def build():
            self.stats["views_built"] += 1
            view = placement.node_view(cache.cnr(name), cache.pods_on(name), self.policy)
            for pod, problem in view["bind_result_problems"]:
                self.report(pod, [problem], "InvalidNUMABindResult")
            return view
        return cache.memo(name, (self.name, "view", self.policy), build, keep=True)

    def warm(self, cache):
        """Build every node's view ahead of the first request (the extender calls this once its caches synced)."""
        for name in cache.node_names():
            self.view(name, cache)

    def decide(self, pod, signature, node, cache, query=None, shared=None):
        """``placement.filter_pod`` for one node, and ``placement.score_pod`` when the pod fits there, as
        ``((code, reason), NUMA candidates or None, problems, raw score)``; pods with the same signature share it
        until the node changes (prioritize, which kube-scheduler calls right after filter, only reads it).

        Kept as tuples of strings and numbers: the garbage collector stops tracking those, so thousands of kept
        verdicts do not lengthen its full collections (which would show as latency spikes). ``shared``: a dict for
        one request; nodes whose views have the same ``state_key`` (same NUMA availability, placed pods' labels and
        terms) share one evaluation, unless the pod is reclaimed (its fit reads node-level amounts) or already on the node.
        """
        name = node["metadata"]["name"]

        def build():
            query_ = query or placement.PodQuery(pod, self.policy)
            view = self.view(name, cache)
            state = None
            if shared is not None and query_.qos != RECLAIMED_CORES and query_.key not in view["keys"]:
                state = view["state_key"]
                found = shared.get(state)
                if found is not None:
                    return found
            value = self.evaluate(pod, node, view, query_)
            if state is not None:
                shared[state] = value
            return value
        return cache.memo(name, (self.name, self.filter_key, signature), build)

    def evaluate(self, pod, node, view, query):
        """``decide``'s tuple for one node view."""
        result = placement.filter_pod(pod, node, view["cnr"], view["pods"], self.policy, view, query, self.aligned_resources)
        verdict = (SUCCESS, "") if result["fit"] else (UNSCHEDULABLE, result["reason"])
        numas = None if result["numas"] is None else tuple(result["numas"])
        score = 0.0
        if result["fit"] and query.qos != RECLAIMED_CORES:
            score = placement.score_pod(pod, node, view["cnr"], view["pods"], self.policy, numas, view, query, self.aligned_resources)
        return verdict, numas, tuple(result["problems"]), score

    def report(self, pod, problems, reason="InvalidMicrotopology"):
        """A log line and a Warning Event on ``pod`` for each problem, once per (pod, problem)."""
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
                self.kube.emit_event(dict(pod, apiVersion="v1", kind="Pod"), reason, problem, "Warning", "katalyst-scheduler-extender")

    # -- verbs -------------------------------------------------------------------------------------
    def filter(self, pod, nodes, cache):
        query = placement.PodQuery(pod, self.policy)
        if not self.applies(pod, query):
            return {}
        signature = pod_signature(pod)
        verdicts, problems, shared = {}, set(), {}
        for node in nodes:
            verdict, _numas, node_problems, _score = self.decide(pod, signature, node, cache, query, shared)
            if node_problems:
                problems.update(node_problems)
            verdicts[node["metadata"]["name"]] = verdict
        if problems:
            self.report(pod, sorted(problems))
        return verdicts

    def prioritize(self, pod, nodes, cache):
        query = placement.PodQuery(pod, self.policy)
        if not self.applies(pod, query) or query.qos == RECLAIMED_CORES:
            return {}
        signature = pod_signature(pod)
        shared = {}
        raw = {node["metadata"]["name"]: self.decide(pod, signature, node, cache, query, shared)[3] for node in nodes}
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
