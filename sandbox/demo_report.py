"""What the demo's sample workload (playbooks/examples/sample_workload.yml) shows, node by node.

`python -m sandbox demo` prints it after the playbooks; `python -m sandbox report` prints it again. Per node:

* the tide role, from the node's labels as its TideNodePool reads them (`tide.PoolConfig.role`);
* the overcommit pool and ratios (the controller's annotations) and the allocatable before and after the webhook
  amplified it (`original_allocatable_*` annotations against `status.allocatable`);
* the reclaimed CPU and memory per NUMA node from the node's CustomNodeResource (what the agent reports);
* the pods in kill order, first killed first: QoS level, aligned OOM priority, the NUMA node the agent bound a
  `numa_binding` pod to (`numa_bind_result`), and the `oom_score_adj`: `actual` where the pod's processes run on this
  host (read from /proc), else `planned`: what the agent would write, from the same engine (`oom.compute_adjustments`),
  assuming each pod uses its memory request (the sandbox kubelets run no processes).

Everything but `gather` and `host_processes` is pure: Kubernetes objects as dicts in, rows or lines out.
"""

import os

from ansible_collections.katalyst.colocation.plugins.module_utils import cnr as cnr_engine
from ansible_collections.katalyst.colocation.plugins.module_utils import oom, oomgather, overcommit, placement, qos, tide
from ansible_collections.katalyst.colocation.plugins.module_utils.podview import pod_view
from ansible_collections.katalyst.colocation.plugins.module_utils.fit import is_active, pod_requests
from ansible_collections.katalyst.colocation.plugins.module_utils.quantity import parse_quantity
from ansible_collections.katalyst.colocation.plugins.module_utils.sysfs import SysFS

NAMESPACE = "katalyst-demo"        # the sample workload's namespace (playbooks/examples/sample_workload.yml)
PAGE_BYTES = 4096
GIB = 1 << 30


# -- reading the cluster ----------------------------------------------------------------------------
def gather(kubeconfig):
    """{"nodes", "pods", "cnrs", "pools"}: every Node and Pod, the CNRs and the TideNodePools, as dicts."""
    from kubernetes import client, config  # pylint: disable=import-outside-toplevel
    from kubernetes.client.rest import ApiException  # pylint: disable=import-outside-toplevel
    api = config.new_client_from_config(config_file=kubeconfig)
    try:
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)

        def custom_list(group, plural):
            try:
                return custom.list_cluster_custom_object(group, "v1alpha1", plural)["items"]
            except ApiException as exc:
                if exc.status == 404:       # no CRD (site.yml not run yet)
                    return []
                raise
        return {"nodes": api.sanitize_for_serialization(core.list_node())["items"],
                "pods": api.sanitize_for_serialization(core.list_pod_for_all_namespaces())["items"],
                "cnrs": custom_list(cnr_engine.CNR_API_VERSION.split("/", maxsplit=1)[0], "customnoderesources"),
                "pools": custom_list(tide.GROUP, tide.PLURAL)}
    finally:
        api.close()


def host_processes(pods, cgroup_root="/sys/fs/cgroup", fs=None):
    """{pod uid: oom.Group} for the pods whose cgroup exists on this host and holds processes (a real kubelet here).

    The pod cgroups are found by name anywhere below the memory hierarchy (cgroup v1) or the unified one (v2), with
    either cgroup driver (`pod<uid>` or `kubepods-...-pod<uid_>.slice`), so a kubelet under a cgroup root of its own is
    found too. Processes, their pages and oom_score_adj are read as the agent reads them (`oomgather`).
    """
    fs = fs or SysFS("/")
    memory_root = cgroup_root + "/memory" if fs.isdir(cgroup_root + "/memory") else cgroup_root
    host_root = fs.path(memory_root)
    wanted = {}
    for pod in pods:
        uid = (pod.get("metadata") or {}).get("uid")
        if uid:
            wanted["pod" + uid] = uid
            wanted["pod%s.slice" % uid.replace("-", "_")] = uid
    found = {}
    for directory, subdirs, _files in os.walk(host_root):
        for name in list(subdirs):
            uid = wanted.get(name) or wanted.get(name.rsplit("-", 1)[-1])
            if uid:
                found.setdefault(uid, []).append(memory_root + os.path.join(directory, name)[len(host_root):])
                subdirs.remove(name)
    groups = {}
    for pod in pods:
        uid = pod["metadata"].get("uid")
        if uid in found:
            group = oomgather.read_group(fs, placement.pod_key(pod), qos.pod_oom_priority(_annotations(pod))[0], found[uid])
            if group.processes:
                groups[uid] = group
    return groups


def host_totalpages(fs=None):
    return oomgather.node_totalpages(fs or SysFS("/"))


# -- the report ------------------------------------------------------------------------------------------
def _meta(obj):
    return obj.get("metadata") or {}


def _annotations(obj):
    return _meta(obj).get("annotations") or {}


def _labels(obj):
    return _meta(obj).get("labels") or {}


def _quantity(text):
    try:
        return parse_quantity(str(text))
    except ValueError:
        return None


def cores(quantity):
    """'31.5' from a cpu quantity (milli-precision, no trailing zeros)."""
    return ("%.3f" % (quantity.milli_value() / 1000.0)).rstrip("0").rstrip(".") if quantity is not None else "?"


def gib(quantity):
    return "%.1fGi" % (quantity.value() / float(GIB)) if quantity is not None else "?"


def tide_role(node, pools):
    """'online (tide node)', 'offline (reserve)', ... or 'not in a pool', read with the node's pool's labels."""
    labels = _labels(node)
    name = labels.get(tide.LABEL_NODE_POOL)
    if not name:
        return "not in a pool"
    pool = next((p for p in pools if _meta(p).get("name") == name), {"metadata": {"name": name}})
    role = tide.PoolConfig(pool).role(labels)
    words = {tide.ROLE_ONLINE_RESERVE: "online (reserve)", tide.ROLE_OFFLINE_RESERVE: "offline (reserve)",
             tide.ROLE_TIDE_ONLINE: "online (tide node)", tide.ROLE_TIDE_OFFLINE: "offline (tide node)",
             tide.ROLE_TIDE: "tide node, not flipped yet", tide.ROLE_UNKNOWN: "joining", tide.ROLE_IGNORED: "ignored"}
    return "%s, pool %s" % (words.get(role, role), name)


def overcommit_view(node):
    """The node's overcommit: pool, ratios and allocatable before/after the webhook (cpu in milli, memory in bytes)."""
    annotations = _annotations(node)
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    view = {"pool": _labels(node).get(overcommit.POOL_LABEL), "resources": {}}
    for resource in overcommit.RESOURCES:
        current = _quantity(allocatable.get(resource, "0"))
        original = _quantity(annotations.get(overcommit.ORIGINAL_ALLOCATABLE_KEY[resource], allocatable.get(resource, "0")))
        wanted = annotations.get(overcommit.OVERCOMMIT_ALLOCATABLE_KEY[resource])
        view["resources"][resource] = {
            "ratio": overcommit.effective_ratio(annotations, resource), "original": original, "allocatable": current,
            "amplified": wanted is not None and _quantity(wanted) == current and current != original,
            "pending": wanted is not None and _quantity(wanted) != current}
    return view


def reclaimed_per_numa(cnr):
    """[(numa id, reclaimed milli-cpu Quantity, reclaimed memory Quantity)] from a CNR; [] when none is reported."""
    numa_allocatable = cnr_engine.reclaimed_from_cnr(cnr)["numa_allocatable"] if cnr else {}
    return [(numa, values.get(cnr_engine.RECLAIMED_MILLICPU), values.get(cnr_engine.RECLAIMED_MEMORY))
            for numa, values in sorted(numa_allocatable.items(), key=lambda item: int(item[0]))]


def assumed_pages(pod):
    """The pages a pod's processes are assumed to use for a planned oom_score_adj: its memory request, else limit."""
    memory = pod_requests(pod).get("memory", 0)
    if not memory:
        for container in (pod.get("spec") or {}).get("containers") or []:
            limit = _quantity(((container.get("resources") or {}).get("limits") or {}).get("memory", "0"))
            memory += limit.value() if limit is not None else 0
    return memory // PAGE_BYTES


def node_totalpages(node):
    """The node OOM domain in pages from its capacity (the original one when the webhook amplified it)."""
    annotations = _annotations(node)
    capacity = annotations.get(overcommit.ORIGINAL_CAPACITY_KEY["memory"]) or \
        ((node.get("status") or {}).get("capacity") or {}).get("memory", "0")
    quantity = _quantity(capacity)
    return quantity.value() // PAGE_BYTES if quantity is not None else 0


def pod_rows(node, pods, processes=None, host_pages=0, negative_allowed=True):
    """The node's active pods in kill order (first killed first), one dict each.

    ``processes``: {uid: oom.Group} of pods whose processes run on this host (``host_processes``); their
    oom_score_adj is read (``source`` "actual"), the others' is planned with the agent's engine over all the node's
    pods, each assumed to use its memory request (``source`` "planned").
    """
    processes = processes or {}
    active = [pod for pod in pods if is_active(pod)]
    groups = []
    for pod in active:
        priority = qos.pod_oom_priority(_annotations(pod))[0]
        groups.append(oom.Group(placement.pod_key(pod), priority, {0: {"pages": assumed_pages(pod), "oom_score_adj": 0}}))
    totalpages = node_totalpages(node)
    planned, _warnings = oom.compute_adjustments(groups, totalpages, negative_allowed)
    rows = []
    for pod in active:
        key, annotations = placement.pod_key(pod), _annotations(pod)
        try:
            level = qos.resolve_qos_level(annotations)
        except qos.QoSError:
            level = "invalid"
        row = {"pod": key, "name": _meta(pod).get("name"), "namespace": _meta(pod).get("namespace"), "qos_level": level,
               "oom_priority": qos.pod_oom_priority(annotations)[0], "numa": numa_text(pod)}
        real = processes.get(_meta(pod).get("uid"))
        if real is not None:
            scores = [(oom.badness(p["pages"], p["oom_score_adj"], host_pages), p["oom_score_adj"]) for p in real.processes.values()]
            worst = max(scores, key=lambda item: -1 if item[0] is None else item[0])
            row.update(source="actual", oom_score_adj=worst[1], points=worst[0] if worst[0] is not None else -1)
        else:
            adj = planned.get(key, 0)
            points = oom.badness(assumed_pages(pod), adj, totalpages)
            row.update(source="planned", oom_score_adj=adj, points=points if points is not None else -1)
        rows.append(row)
    rows.sort(key=lambda row: (-row["points"], row["oom_priority"], row["pod"]))
    return rows


def numa_text(pod):
    """The NUMA node(s) the agent bound a numa_binding pod to, 'pending' before it did, '-' for other pods."""
    view = pod_view(pod)
    if not view.numa_binding:
        return "-"
    if view.bind_result_problem is not None:
        return "invalid"
    bound = view.bind_result
    return ",".join(str(numa) for numa in bound) if bound else "pending"


def node_report(node, pods, cnr, pools, processes=None, host_pages=0, negative_allowed=True):
    """Everything the summary prints about one node."""
    return {"name": _meta(node).get("name"), "tide": tide_role(node, pools), "overcommit": overcommit_view(node),
            "reclaimed": reclaimed_per_numa(cnr), "cnr": cnr is not None,
            "pods": pod_rows(node, pods, processes, host_pages, negative_allowed)}


def build_reports(snapshot, processes=None, host_pages=0, negative_allowed=None):
    """``node_report`` for every node of a ``gather`` snapshot, by name. ``negative_allowed``: {node: bool} (default True)."""
    pods_by_node = {}
    for pod in snapshot["pods"]:
        node_name = (pod.get("spec") or {}).get("nodeName")
        if node_name:
            pods_by_node.setdefault(node_name, []).append(pod)
    cnrs = {_meta(c).get("name"): c for c in snapshot["cnrs"]}
    reports = []
    for node in sorted(snapshot["nodes"], key=lambda n: _meta(n).get("name")):
        name = _meta(node).get("name")
        reports.append(node_report(node, pods_by_node.get(name, []), cnrs.get(name), snapshot["pools"], processes, host_pages,
                                   (negative_allowed or {}).get(name, True)))
    return reports


def allocatable_line(view):
    parts = []
    for resource, show in (("cpu", cores), ("memory", gib)):
        entry = view["resources"][resource]
        if entry["amplified"]:
            parts.append("%s %s -> %s" % (resource, show(entry["original"]), show(entry["allocatable"])))
        elif entry["pending"]:
            parts.append("%s %s (x%g at the next heartbeat)" % (resource, show(entry["allocatable"]), entry["ratio"]))
        else:
            parts.append("%s %s" % (resource, show(entry["allocatable"])))
    amplified = any(entry["amplified"] for entry in view["resources"].values())
    return ", ".join(parts) + ("  (original -> amplified by katalyst-webhook)" if amplified else "")


def format_report(reports, namespace=NAMESPACE):
    """The summary's lines: a header and a table of pods per node."""
    lines = []
    for report in reports:
        view = report["overcommit"]
        if view["pool"]:
            pool = "overcommit pool %s: cpu x%g, memory x%g" % (view["pool"], view["resources"]["cpu"]["ratio"],
                                                                view["resources"]["memory"]["ratio"])
        else:
            pool = "no overcommit pool"
        lines.append("%s   tide: %s   %s" % (report["name"], report["tide"], pool))
        lines.append("  allocatable  " + allocatable_line(view))
        if report["reclaimed"]:
            zones = ["NUMA%s cpu %s mem %s" % (numa, cores(_milli_to_cores(cpu)), gib(memory)) for numa, cpu, memory in report["reclaimed"]]
            lines.append("  reclaimed    " + " | ".join(zones) + "  (CNR)")
        else:
            lines.append("  reclaimed    %s" % ("no NUMA zones reported yet" if report["cnr"] else "no CustomNodeResource yet"))
        if not report["pods"]:
            lines.append("  no pods")
            continue
        lines.append("  %-4s %-16s %-16s %8s %6s  %s" % ("kill", "pod", "qos_level", "oom_prio", "numa", "oom_score_adj"))
        for index, row in enumerate(report["pods"], 1):
            name = row["name"] if row["namespace"] == namespace else row["pod"]
            lines.append("  %-4d %-16s %-16s %8d %6s  %5d %s"
                         % (index, name, row["qos_level"], row["oom_priority"], row["numa"], row["oom_score_adj"], row["source"]))
    return lines


def _milli_to_cores(quantity):
    """A reclaimed_millicpu quantity (its value counts milli-CPUs) as a cpu quantity."""
    return parse_quantity("%dm" % quantity.value()) if quantity is not None else None


# -- waiting for the sample workload ---------------------------------------------------------------
def unsettled(snapshot, namespace=NAMESPACE, reports=()):
    """What of the sample workload has not happened yet (empty when everything has): pods not running, numa_binding
    pods not bound to a NUMA node, overcommitted nodes whose heartbeat has not come back amplified, and (``reports``
    of ``build_reports``) real processes whose oom_score_adj do not kill in priority order yet."""
    waiting = []
    for report in reports:
        actual = [row["oom_priority"] for row in report["pods"] if row["source"] == "actual"]
        if actual != sorted(actual):
            waiting.append("node %s: its pods' processes are not in priority order yet" % report["name"])
    demo_pods = [pod for pod in snapshot["pods"] if _meta(pod).get("namespace") == namespace]
    if not demo_pods:
        waiting.append("no pods in namespace %s" % namespace)
    for pod in demo_pods:
        phase = (pod.get("status") or {}).get("phase")
        if phase != "Running":
            waiting.append("pod %s is %s" % (_meta(pod).get("name"), phase or "not scheduled"))
        elif numa_text(pod) == "pending":
            waiting.append("pod %s is not bound to a NUMA node yet" % _meta(pod).get("name"))
    for node in snapshot["nodes"]:
        view = overcommit_view(node)
        if view["pool"] and any(entry["pending"] for entry in view["resources"].values()):
            waiting.append("node %s: allocatable not amplified yet" % _meta(node).get("name"))
    return waiting
