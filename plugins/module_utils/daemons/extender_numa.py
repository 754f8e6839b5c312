# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""The ``NUMA`` plugin of katalyst-scheduler-extender: topology-aware placement (katalyst-cluster-spec.md §3.3,
§4.2, §4.3) over the extender's cache.

Filter: ``placement.filter_pod`` per node (CNR NUMA fit of the ``dynamic`` or ``native`` policy, the QoS-aware
fit of reclaimed resources, NUMA-level inter-pod (anti-)affinity). Prioritize: ``placement.score_pod`` on the
NUMA nodes the filter found, normalized to 0-10 over the candidate nodes.

Speed: pods that no NUMA rule applies to (most pods) are answered without looking at any node. For the rest,
each node's parsed view (``placement.node_view``: topology, pods per NUMA, available resources) is kept in the
extender cache until that node's CNR or one of its pods changes. The filter verdict (with its NUMA candidates,
which prioritize scores) and the score are kept per pod signature and per view ``state_key`` (everything the
decision reads from a node): a pod is evaluated once per distinct node state, not per node (a cluster of a few
node shapes costs a few evaluations even for a pod unlike any before), replicas of one template (the usual case:
a Job's workers) share them, and a binding re-evaluates only the state of the node it changed. Reclaimed pods and
pods already on a node are kept per node instead. A request reads each node's ``state_key`` (kept apart from its view)
and one view per distinct state; it looks for the pod among the nodes' placed pods only when the cache holds a pod of
that key on a node (``ClusterCache.placed_keys``). The extender reads ``failures`` (no per-node verdict when every
distinct decision fits) and ``scores`` (scaled once per distinct raw score) with the node names it already has.
A malformed microtopology annotation makes the pod unschedulable and is reported once as a Warning Event on the pod;
a ``numa_bind_result`` that cannot be read on a pod already on a node is reported once per value (a log line and a
Warning Event on that pod) when the node's view is built, and the pod counts as not pinned yet.

The aligned resources (``numa_aligned_resources``, Katalyst's ``alignedResources``) are fixed for the plugin's life and
are part of its filter memo key; node views do not depend on them.
"""

from __future__ import annotations

import collections
import functools
import itertools
import json
import logging
import operator
import threading

from .. import placement, podview
from ..kube import KubeClient
from ..overcommit import SUCCESS, UNSCHEDULABLE
from ..qos import RECLAIMED_CORES

LOG = logging.getLogger("katalyst.extender.numa")

STATE_SIGNATURES = 64     # pod signatures whose per-state decisions are kept (as many as per-node memos: ClusterCache.memo)


class NumaPlugin:
    name = "NUMA"

    def __init__(self, policy=placement.DYNAMIC, aligned_resources=placement.DEFAULT_ALIGNED_RESOURCES):
        if policy not in (placement.DYNAMIC, placement.NATIVE):
            raise ValueError("NUMA resource policy must be dynamic or native, got %r" % (policy,))
        self.policy = policy
        self.aligned_resources = placement.aligned_resource_names(aligned_resources)
        # the per-pod memo key of this plugin's settings (one string: its hash is computed once)
        self.filter_key = "filter:%s:%s" % (policy, ",".join(sorted(self.aligned_resources)))
        self.view_key = (self.name, "view", policy)
        self.state_key = (self.name, "state", policy)     # each node's view["state_key"], kept apart: read for every node
        self.states = collections.OrderedDict()           # pod signature -> {node view state_key: decide tuple}
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
        return cache.memo(name, self.view_key, functools.partial(self._build_view, cache, name), keep=True)

    def views(self, names, cache):
        """``view`` of each node, in order (one call per request)."""
        return cache.memo_each(names, self.view_key, functools.partial(self._build_view, cache))

    def _build_state(self, cache, name):
        return self.view(name, cache)["state_key"]

    def _build_view(self, cache, name):
        self.stats["views_built"] += 1
        view = placement.node_view(cache.cnr(name), cache.pods_on(name), self.policy)
        for pod, problem in view["bind_result_problems"]:
            self.report(pod, [problem], "InvalidNUMABindResult")
        return view

    def warm(self, cache):
        """Build every node's view ahead of the first request (the extender calls this once its caches synced)."""
        self.views(cache.node_names(), cache)

    def decide(self, pod, signature, node, cache, query=None):
        """``placement.filter_pod`` for one node, and ``placement.score_pod`` when the pod fits there, as
        ``((code, reason), NUMA candidates or None, problems, raw score)``; pods with the same signature share it
        until the node changes (prioritize, which kube-scheduler calls right after filter, only reads it).

        Kept as tuples of strings and numbers: the garbage collector stops tracking those, so thousands of kept
        verdicts do not lengthen its full collections (which would show as latency spikes)."""
        name = node["metadata"]["name"]

        def build():
            return self.evaluate(pod, node, self.view(name, cache), query or placement.PodQuery(pod, self.policy))
        return cache.memo(name, (self.name, self.filter_key, signature), build)

    def decisions(self, pod, signature, nodes, cache, query, names=None):
        """(node names, ``decide`` of each node in order, the distinct tuples). A pod that is not reclaimed (its fit
        reads node-level amounts) gets the same tuple on every node whose view has the same ``state_key`` (same NUMA
        availability, placed pods' labels and terms) unless it is placed there itself: it is evaluated once per
        distinct state and signature and kept by that pair, so a novel pod costs one evaluation per state rather than
        per node, and a node that changes gets a new key. The per-node steps are maps (read in C, no Python frame per
        node). ``names``: the nodes' names when the caller has them."""
        if names is None:
            names = [node["metadata"]["name"] for node in nodes]
        if query.qos == RECLAIMED_CORES:
            found = [self.decide(pod, signature, node, cache, query) for node in nodes]
            return names, found, found
        table = self._by_state(signature, len(names))
        placed_keys = getattr(cache, "placed_keys", (query.key,))
        if query.key not in placed_keys:
            # the pod is on no node (the usual case): only the nodes' state keys are read, and a view per distinct state
            states = cache.memo_each(names, self.state_key, functools.partial(self._build_state, cache))
            decided = self._decide_states(pod, nodes, names, cache, query, table, dict(zip(states, range(len(states)))))
            if decided is not None and query.key not in placed_keys:      # (and still on none: not bound meanwhile)
                return names, list(map(decided.get, states)), decided.values()
        views = self.views(names, cache)
        states = list(map(_STATE_KEY, views))
        # where the pod counts itself (a retried pod already placed): the nodes whose view holds its key
        placed_at = list(itertools.compress(itertools.count(), map(operator.contains, map(_KEYS, views), itertools.repeat(query.key))))
        representatives = dict(zip(states, range(len(states))))       # one node of each state
        if placed_at:
            skip = set(placed_at)
            representatives = {states[index]: index for index in range(len(states)) if index not in skip}
        decided = self._decide_states(pod, nodes, names, cache, query, table, representatives, views)
        found = list(map(decided.get, states))
        for index in placed_at:
            found[index] = decided[(index,)] = self.decide(pod, signature, nodes[index], cache, query)
        return names, found, decided.values()

    def _decide_states(self, pod, nodes, names, cache, query, table, representatives, views=None):
        """``{state_key: decide tuple}`` of each state from its representative node (``{state: node index}``), from the
        table or evaluated there and kept. Without ``views``, the representatives' views are read from the cache: None
        when one no longer has the state it was asked for (its node changed during the request: the caller reads again)."""
        decided = {}
        for state, index in representatives.items():
            value = table.get(state)
            if value is None:
                view = views[index] if views is not None else self.view(names[index], cache)
                if view["state_key"] != state:
                    return None
                value = table[state] = self.evaluate(pod, nodes[index], view, query)
            decided[state] = value
        return decided

    def _by_state(self, signature, node_count):
        """The ``state_key -> decide tuple`` table of one pod signature; the most recent ``STATE_SIGNATURES`` signatures
        are kept. A table is emptied when it outgrows twice the nodes asked about (states of nodes that have changed since)."""
        with self.lock:
            table = self.states.get(signature)
            if table is None:
                table = self.states[signature] = {}
                while len(self.states) > STATE_SIGNATURES:
                    self.states.popitem(last=False)
            else:
                self.states.move_to_end(signature)
            if len(table) > 2 * node_count + 64:
                table.clear()
            return table

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
        view = podview.pod_view(pod)
        uid = view.uid or view.key
        for problem in problems:
            with self.lock:
                if (uid, problem) in self.reported:
                    continue
                self.reported[(uid, problem)] = True
                while len(self.reported) > 4096:
                    self.reported.popitem(last=False)
            LOG.warning("pod %s: %s", view.key, problem)
            if self.kube is not None and view.name:
                self.kube.emit_event(dict(pod, apiVersion="v1", kind="Pod"), reason, problem, "Warning", "katalyst-scheduler-extender")

    # -- verbs -------------------------------------------------------------------------------------
    def filter(self, pod, nodes, cache):
        """``{node name: (code, reason)}`` for every node (when the pod is one a NUMA rule applies to)."""
        query = placement.PodQuery(pod, self.policy)
        if not self.applies(pod, query):
            return {}
        names, found, _distinct = self._filter(pod, nodes, cache, query, None)
        return dict(zip(names, map(_VERDICT, found)))

    def failures(self, pod, nodes, cache, names=None):
        """``filter`` without its Success verdicts (what the extender reads): nothing per node when every distinct
        decision fits."""
        query = placement.PodQuery(pod, self.policy)
        if not self.applies(pod, query):
            return {}
        names, found, distinct = self._filter(pod, nodes, cache, query, names)
        if all(value[0][0] == SUCCESS for value in distinct):
            return {}
        return {name: value[0] for name, value in zip(names, found) if value[0][0] != SUCCESS}

    def _filter(self, pod, nodes, cache, query, names):
        names, found, distinct = self.decisions(pod, pod_signature(pod, query.view), nodes, cache, query, names)
        problems = set()
        for _verdict, _numas, node_problems, _score in distinct:
            problems.update(node_problems)
        if problems:
            self.report(pod, sorted(problems))
        return names, found, distinct

    def prioritize(self, pod, nodes, cache):
        return self.scores(pod, nodes, cache)

    def scores(self, pod, nodes, cache, names=None):
        """``{node name: 0..10}`` (``prioritize``; ``names``: the nodes' names when the caller has them)."""
        query = placement.PodQuery(pod, self.policy)
        if not self.applies(pod, query) or query.qos == RECLAIMED_CORES:
            return {}
        names, found, distinct = self.decisions(pod, pod_signature(pod, query.view), nodes, cache, query, names)
        if not names:
            return {}
        # placement.normalize_scores, its scale read from the distinct decisions (every node's score is one of theirs)
        scaled = placement.score_scale({value[3] for value in distinct})
        return dict(zip(names, map(scaled.__getitem__, map(_SCORE, found))))


_STATE_KEY, _KEYS = operator.itemgetter("state_key"), operator.itemgetter("keys")
_VERDICT, _SCORE = operator.itemgetter(0), operator.itemgetter(3)


def pod_signature(pod, view=None):
    """What NUMA decisions read from a pending pod: replicas of one template share it (an equivalence class).

    ``view``: the pod's PodView when the caller has it (the query's), else it is built here."""
    view = podview.pod_view(pod) if view is None else view
    spec = pod.get("spec") or {}
    annotations = {k: v for k, v in view.annotations.items() if k.startswith("katalyst.kubewharf.io/") or k == podview.MAIN_CONTAINER_KEY}
    containers = [(c.get("name"), c.get("resources")) for c in spec.get("containers") or []]
    init = [(c.get("name"), c.get("resources")) for c in spec.get("initContainers") or []]
    return json.dumps([view.namespace, dict(view.labels), annotations, containers, init, spec.get("overhead"),
                       (pod.get("status") or {}).get("qosClass")], sort_keys=True, default=str)
