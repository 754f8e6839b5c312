# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""Where the kubelet puts a pod's and its containers' cgroups, for both cgroup drivers.

cgroupfs: ``/kubepods[/burstable|/besteffort]/pod<uid>/<container id>``;
systemd:  ``/kubepods.slice[/kubepods-<qos>.slice]/kubepods[-<qos>]-pod<uid with _>.slice/cri-containerd-<id>.scope``.
Katalyst only understands the cgroupfs naming (node spec §7.6); we resolve both.
"""

from __future__ import annotations


def qos_class(pod):
    """The Kubernetes QoS class: Guaranteed, Burstable or BestEffort (status.qosClass when set)."""
    reported = (pod.get("status") or {}).get("qosClass")
    if reported:
        return reported
    containers = (pod.get("spec") or {}).get("containers", []) + (pod.get("spec") or {}).get("initContainers", [])
    any_set, guaranteed = False, bool(containers)
    for container in containers:
        resources = container.get("resources") or {}
        requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
        if requests or limits:
            any_set = True
        for name in ("cpu", "memory"):
            if name not in limits or str(requests.get(name, limits[name])) != str(limits[name]):
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


def container_ids(pod):
    """{container name: runtime id} from status.containerStatuses (``containerd://<id>`` -> ``<id>``)."""
    ids = {}
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        raw = status.get("containerID") or ""
        if raw:
            ids[status["name"]] = raw.split("://", 1)[-1]
    return ids


def pod_cgroup_path(pod, driver="cgroupfs"):
    """Relative cgroup path of the pod."""
    uid = pod["metadata"]["uid"]
    klass = qos_class(pod)
    if driver == "systemd":
        escaped = uid.replace("-", "_")
        if klass == "Guaranteed":
            return "/kubepods.slice/kubepods-pod%s.slice" % escaped
        level = klass.lower()
        return "/kubepods.slice/kubepods-%s.slice/kubepods-%s-pod%s.slice" % (level, level, escaped)
    if klass == "Guaranteed":
        return "/kubepods/pod%s" % uid
    return "/kubepods/%s/pod%s" % (klass.lower(), uid)


def container_cgroup_paths(pod, driver="cgroupfs", runtime_prefix="cri-containerd"):
    """{container name: relative cgroup path} for containers that have a runtime id."""
    base = pod_cgroup_path(pod, driver)
    paths = {}
    for name, cid in container_ids(pod).items():
        paths[name] = "%s/%s-%s.scope" % (base, runtime_prefix, cid) if driver == "systemd" else "%s/%s" % (base, cid)
    return paths
