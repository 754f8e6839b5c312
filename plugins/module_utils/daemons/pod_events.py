# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""Warning Events about pods from a node daemon, reported once while a problem lasts.

A loop that cannot apply something to one pod (a bad annotation, an unwritable ``oom_score_adj``, a TCP limit on a
read-only cgroup) says so on the pod, where its owner looks (``kubectl describe pod``), not only in the agent's log. A
pass runs every second: the Event is sent once per (pod, reason) and message, again when the message changes, and again
if the problem comes back after a pass without it (``settle``).
"""

from __future__ import annotations

import logging

LOG = logging.getLogger("katalyst.agent")


def pod_uid(pod):
    meta = pod.get("metadata") or {}
    return meta.get("uid") or "%s/%s" % (meta.get("namespace"), meta.get("name"))


class PodWarnings:
    """The problems reported so far: (pod uid, reason) -> message."""

    def __init__(self, node_name, component="katalyst-agent"):
        self.node_name = node_name
        self.component = component
        self.reported = {}

    def report(self, kube, pod, reason, message, loop):
        """A log line and a Warning Event on ``pod``, unless this (pod, reason) already reported this message."""
        key = (pod_uid(pod), reason)
        if self.reported.get(key) == message:
            return
        self.reported[key] = message
        meta = pod.get("metadata") or {}
        LOG.warning("pod %s/%s: %s", meta.get("namespace"), meta.get("name"), message, extra={"loop": loop, "reason": reason})
        if kube is not None:
            kube.emit_event(dict(pod, apiVersion="v1", kind="Pod"), reason, message, "Warning", self.component, host=self.node_name)

    def settle(self, reason, still_failing):
        """Forget the ``reason`` problems of pods not in ``still_failing`` (uids): their next failure is news again."""
        for key in [key for key in self.reported if key[1] == reason and key[0] not in still_failing]:
            del self.reported[key]
