"""A sandbox scheduler: binds pending pods the way kube-scheduler does, extenders included.

Filters come from the collection's own fit check (the kube-scheduler filter subset in
plugins/module_utils/fit.py); configured HTTP extenders (a KubeSchedulerConfiguration's `extenders`
list) are called with the same JSON, verbs and failure handling as kube-scheduler's. Pods that fit
nowhere get `PodScheduled=False, reason=Unschedulable`, which the tide controller watches for.
"""

import json
import logging
import ssl
import threading
import time
import urllib.request

from ansible_collections.katalyst.colocation.plugins.module_utils import fit
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.informer import Informer

LOG = logging.getLogger("sandbox.scheduler")


class ExtenderError(Exception):
    pass


class Extender:
    """One kube-scheduler HTTP extender (fields as in KubeSchedulerConfiguration `extenders`)."""

    def __init__(self, config):
        self.url_prefix = config["urlPrefix"].rstrip("/")
        self.filter_verb = config.get("filterVerb")
        self.prioritize_verb = config.get("prioritizeVerb")
        self.weight = int(config.get("weight", 1))
        self.node_cache_capable = bool(config.get("nodeCacheCapable", False))
        self.ignorable = bool(config.get("ignorable", False))
        self.timeout = float(str(config.get("httpTimeout", "30s")).rstrip("s") or 30)
        tls = config.get("tlsConfig") or {}
        self.context = ssl.create_default_context(cafile=tls.get("caFile")) if tls.get("caFile") else None
        if tls.get("insecure"):
            self.context = ssl._create_unverified_context()  # pylint: disable=protected-access

    def _post(self, verb, args):
        request = urllib.request.Request("%s/%s" % (self.url_prefix, verb), data=json.dumps(args).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self.context) as response:
                return json.loads(response.read())
        except Exception as exc:  # pylint: disable=broad-except
            raise ExtenderError("extender %s/%s: %s" % (self.url_prefix, verb, exc))

    def _args(self, pod, nodes):
        # what kube-scheduler sends: ExtenderArgs has no json tags, so its keys are Go's field names
        if self.node_cache_capable:
            return {"Pod": pod, "Nodes": None, "NodeNames": [n["metadata"]["name"] for n in nodes]}
        return {"Pod": pod, "Nodes": {"items": nodes}, "NodeNames": None}

    def filter(self, pod, nodes):
        """(passing nodes, {node: reason})"""
        # kube-scheduler decodes the ExtenderFilterResult as Go does: field names case-insensitively
        result = {str(key).lower(): value for key, value in (self._post(self.filter_verb, self._args(pod, nodes)) or {}).items()}
        if result.get("error"):
            raise ExtenderError(result["error"])
        failed = dict(result.get("failednodes") or {})
        failed.update(result.get("failedandunresolvablenodes") or {})
        if self.node_cache_capable:
            keep = set(result.get("nodenames") or [])
        else:
            keep = {n["metadata"]["name"] for n in (result.get("nodes") or {}).get("items") or []}
        return [n for n in nodes if n["metadata"]["name"] in keep], failed

    def prioritize(self, pod, nodes):
        result = self._post(self.prioritize_verb, self._args(pod, nodes))
        entries = [{str(key).lower(): value for key, value in entry.items()} for entry in result or []]
        return {entry["host"]: int(entry["score"]) * self.weight for entry in entries}


def load_extenders(config):
    return [Extender(item) for item in (config or {}).get("extenders") or []]


class SandboxScheduler:
    def __init__(self, core_api, extenders=None, scheduler_name="default-scheduler"):
        self.core = core_api
        self.extenders = list(extenders or [])
        self.scheduler_name = scheduler_name
        self.wakeup = threading.Event()
        self.nodes = Informer(core_api.list_node, handler=self._poke, resync_seconds=60, name="scheduler-nodes")
        self.pods = Informer(core_api.list_pod_for_all_namespaces, handler=self._poke, resync_seconds=10, name="scheduler-pods")
        self.reported_unschedulable = {}
        # kube-scheduler's assume cache: pods bound by us that the informer has not shown bound yet
        self.assumed = {}

    def _poke(self, _event_type, _obj):
        self.wakeup.set()

    def cluster_pods(self):
        """The informer's pods with our recent bindings applied (until the watch catches up)."""
        pods, seen = [], set()
        for pod in self.pods.items():
            uid = pod["metadata"].get("uid")
            seen.add(uid)
            if uid in self.assumed and not (pod.get("spec") or {}).get("nodeName"):
                pod = self.assumed[uid][0]
            else:
                self.assumed.pop(uid, None)
            pods.append(pod)
        deadline = time.monotonic() - 30
        for uid in [u for u, (_pod, at) in self.assumed.items() if u not in seen or at < deadline]:
            del self.assumed[uid]      # deleted meanwhile, or the watch never confirmed: trust the API again
        return pods

    def pending_pods(self, pods=None):
        pending = []
        for pod in self.pods.items() if pods is None else pods:
            spec, meta = pod.get("spec") or {}, pod["metadata"]
            if spec.get("nodeName") or meta.get("deletionTimestamp"):
                continue
            if spec.get("schedulerName", "default-scheduler") != self.scheduler_name:
                continue
            if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue
            pending.append(pod)
        return sorted(pending, key=lambda p: (p["metadata"].get("creationTimestamp", ""), p["metadata"]["name"]))

    def schedule_once(self):
        """Try to place every pending pod; returns the number bound."""
        bound = 0
        pods = self.cluster_pods()
        snapshot = fit.Snapshot(self.nodes.items(), pods)
        for pod in self.pending_pods(pods):
            node_name, reason = self.choose_node(snapshot, pod)
            if node_name is None:
                self.mark_unschedulable(pod, reason)
                continue
            meta = pod["metadata"]
            body = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
                    "target": {"apiVersion": "v1", "kind": "Node", "name": node_name}}
            try:
                self.core.create_namespaced_pod_binding(meta["name"], meta["namespace"], body, _preload_content=False)
            except Exception as exc:  # pylint: disable=broad-except
                LOG.warning("binding %s/%s to %s failed: %s", meta["namespace"], meta["name"], node_name, exc)
                continue
            pod = dict(pod, spec=dict(pod["spec"], nodeName=node_name))
            snapshot.add_pod(pod)
            self.assumed[meta.get("uid")] = (pod, time.monotonic())
            bound += 1
            LOG.info("bound %s/%s to %s", meta["namespace"], meta["name"], node_name)
        return bound

    def choose_node(self, snapshot, pod):
        candidates, reasons = [], {}
        for node in snapshot.nodes():
            ok, reason = snapshot.fits(pod, node["metadata"]["name"])
            if ok:
                candidates.append(node)
            else:
                reasons[node["metadata"]["name"]] = reason
        scores = {n["metadata"]["name"]: 0 for n in candidates}
        for extender in self.extenders:
            if not candidates:
                break
            try:
                if extender.filter_verb:
                    candidates, failed = extender.filter(pod, candidates)
                    reasons.update(failed)
                if extender.prioritize_verb and candidates:
                    for name, score in extender.prioritize(pod, candidates).items():
                        if name in scores:
                            scores[name] += score
            except ExtenderError as exc:
                if extender.ignorable:
                    LOG.warning("ignorable extender failed: %s", exc)
                    continue
                return None, str(exc)
        if not candidates:
            summary = "; ".join("%s: %s" % item for item in sorted(reasons.items()))
            return None, "0/%d nodes are available: %s" % (len(snapshot.nodes()), summary or "no nodes")
        best = sorted(candidates, key=lambda n: (-scores.get(n["metadata"]["name"], 0), n["metadata"]["name"]))[0]
        return best["metadata"]["name"], ""

    def mark_unschedulable(self, pod, reason):
        meta = pod["metadata"]
        key = "%s/%s" % (meta["namespace"], meta["name"])
        conditions = (pod.get("status") or {}).get("conditions") or []
        current = [c for c in conditions if c.get("type") == "PodScheduled"]
        if current and current[0].get("status") == "False" and current[0].get("message") == reason:
            return
        if self.reported_unschedulable.get(key) == reason:
            return
        self.reported_unschedulable[key] = reason
        condition = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": reason}
        try:
            self.core.patch_namespaced_pod_status(meta["name"], meta["namespace"],
                                                  {"status": {"phase": "Pending", "conditions": [condition]}})
        except Exception as exc:  # pylint: disable=broad-except
            LOG.warning("marking %s unschedulable failed: %s", key, exc)

    def run(self, stop):
        self.nodes.start(stop)
        self.pods.start(stop)
        self.nodes.synced.wait(30)
        self.pods.synced.wait(30)
        while not stop.is_set():
            self.wakeup.wait(2.0)
            self.wakeup.clear()
            try:
                self.schedule_once()
            except Exception:  # pylint: disable=broad-except
                LOG.exception("scheduling cycle failed")

    def start(self, stop):
        thread = threading.Thread(target=self.run, args=(stop,), name="sandbox-scheduler", daemon=True)
        thread.start()
        return thread
