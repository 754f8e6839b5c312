# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""What an OOM kill meant: which pod died, at what priority, and whether it was a priority inversion.

Pure: the agent passes the kill events the BPF observer recorded (``bpf.drain_events``) and its own
view of the node's pods (``PodView``: priorities, cgroup ids, pids, the cgroup lineage with limits).
A kill is an inversion when a pod of strictly lower priority in the same OOM domain was alive: it
still has processes, or it was itself killed later.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .oom import is_priority_inversion


@dataclass
class PodView:
    name: str
    qos_level: str
    priority: int
    cgroup_ids: set = field(default_factory=set)       # pod cgroup and every cgroup below it
    pids: set = field(default_factory=set)
    lineage: list = field(default_factory=list)        # [(cgroup id, limited?)] from the pod cgroup up to the root
    alive: bool = False
    own_pids: set = field(default_factory=set)         # its containers' processes (pids minus the sandbox's pause)


def find_victim(event, pods):
    for pod in pods:
        if event["memory_cgroup_id"] in pod.cgroup_ids or event["cgroup_id"] in pod.cgroup_ids:
            return pod
    for pod in pods:
        if event["pid"] in pod.pids:
            return pod
    return None


def domain_of(event, victim):
    """The OOM domain's cgroup id (0 = the whole node) and how we know it.

    fentry events name the domain; mark_victim events do not, so the nearest ancestor with a memory
    limit is taken (a limit is what a memory cgroup can run out of).
    """
    if event.get("domain_known"):
        return event["domain_cgroup_id"], "reported"
    for cgroup_id, limited in victim.lineage if victim else []:
        if limited:
            return cgroup_id, "nearest limited cgroup"
    return 0, "node"


def in_domain(pod, domain_id):
    return domain_id == 0 or any(cgroup_id == domain_id for cgroup_id, _limited in pod.lineage)


def sandbox_kill(pod, event):
    """Whether the event killed a process of the pod that is not one of its containers' (the sandbox's pause)."""
    return bool(pod.own_pids) and event["pid"] in pod.pids and event["pid"] not in pod.own_pids


def explain_kills(events, pods, history=()):
    """One explanation per event (oldest first): victim pod, QoS level, priority, inversion and a message.

    `history`: the views of recent passes, newest first. By the time the events are read, the victim's container may be gone
    with its cgroup and pid, so a victim not found in `pods` is looked up there (the pod itself usually still exists,
    which is why history is not just the pods that vanished)."""
    events = sorted(events, key=lambda e: (e["timestamp_ns"], e["pid"]))
    current = {pod.name: pod for pod in pods}

    def victim_of(event):
        found = find_victim(event, pods)
        if found is None:
            found = find_victim(event, history)
            found = current.get(found.name, found) if found is not None else None  # one object per pod for the checks below
        return found
    explanations = []
    killed = set()      # pids killed by the earlier events of this batch: a pod all of whose processes died is not alive
    for index, event in enumerate(events):
        victim = victim_of(event)
        # a pod whose sandbox (pause) process is killed later did not outlive the victim with a workload of its own
        later_victims = {id(p) for e in events[index + 1:] for p in [victim_of(e)] if p is not None and not sandbox_kill(p, e)}
        domain_id, domain_source = domain_of(event, victim)
        lower_alive = []
        if victim is not None:
            for pod in pods:
                if pod is victim or not in_domain(pod, domain_id):
                    continue
                own = pod.own_pids or pod.pids
                alive = pod.alive and not (own and own <= killed)
                if (alive or id(pod) in later_victims) and is_priority_inversion(victim.priority, [pod.priority]):
                    lower_alive.append(pod)
        killed.add(event["pid"])
        priority = victim.priority if victim else event.get("priority")
        explanation = {
            "pid": event["pid"], "comm": event.get("comm", ""), "pod": victim.name if victim else None,
            "qos_level": victim.qos_level if victim else "none", "priority": priority,
            "map_priority": event.get("priority"), "oom_score_adj": event.get("oom_score_adj"), "points": event.get("points"),
            "domain_cgroup_id": domain_id, "domain_source": domain_source, "source": event.get("source"),
            "inversion": bool(lower_alive), "lower_priority_alive": sorted(p.name for p in lower_alive),
        }
        explanation["message"] = describe(explanation)
        explanations.append(explanation)
    return explanations


def describe(kill):
    who = "pod %s (%s, priority %s)" % (kill["pod"], kill["qos_level"], kill["priority"]) if kill["pod"] else "a process outside any pod"
    where = "node" if kill["domain_cgroup_id"] == 0 else "memory cgroup %d (%s)" % (kill["domain_cgroup_id"], kill["domain_source"])
    points = "" if kill["points"] is None else ", badness %d" % kill["points"]
    text = "OOM kill of pid %d (%s), %s, oom_score_adj %s%s, in the %s OOM domain" % (
        kill["pid"], kill["comm"], who, kill["oom_score_adj"], points, where)
    if kill["inversion"]:
        text += ": PRIORITY INVERSION, lower-priority pods were alive: %s" % ", ".join(kill["lower_priority_alive"])
    else:
        text += ": no lower-priority pod was alive in that domain"
    return text
