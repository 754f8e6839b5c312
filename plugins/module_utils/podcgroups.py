# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""Where the kubelet puts a pod's and its containers' cgroups, for both cgroup drivers.

cgroupfs: ``/kubepods[/burstable|/besteffort]/pod<uid>/<container id>``;
systemd:  ``/kubepods.slice[/kubepods-<qos>.slice]/kubepods[-<qos>]-pod<uid with _>.slice/cri-containerd-<id>.scope``.
Katalyst only understands the cgroupfs naming (node spec §7.6); we resolve both.
"""

from __future__ import annotations

from .podview import as_view


def qos_class(pod):
    """The Kubernetes QoS class of a pod or its PodView: Guaranteed, Burstable or BestEffort (status.qosClass when set)."""
    return as_view(pod).qos_class


def container_ids(pod):
    """{container name: runtime id} from status.containerStatuses (``containerd://<id>`` -> ``<id>``)."""
    return dict(as_view(pod).container_ids)


def pod_cgroup_path(pod, driver="cgroupfs"):
    """Relative cgroup path of the pod (or its PodView)."""
    view = as_view(pod)
    if view.uid is None:
        raise KeyError("uid")       # no cgroup can be named without it
    uid, klass = view.uid, view.qos_class
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
    """{container name: relative cgroup path} for containers (of a pod or its PodView) that have a runtime id."""
    view = as_view(pod)
    base = pod_cgroup_path(view, driver)
    paths = {}
    for name, cid in view.container_ids.items():
        paths[name] = "%s/%s-%s.scope" % (base, runtime_prefix, cid) if driver == "systemd" else "%s/%s" % (base, cid)
    return paths
