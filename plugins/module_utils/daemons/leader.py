# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""Leader election on a coordination.k8s.io/v1 Lease, with client-go's semantics and defaults.

Several katalyst-controller replicas may run; one leads. The leader renews the Lease every
``retry_period``; if it cannot renew within ``renew_deadline`` it steps down. A candidate takes the
Lease over when the holder has not renewed for ``lease_duration``. On shutdown the leader releases
the Lease (empty holder) so a standby takes over at once.
"""

from __future__ import annotations

import datetime
import json
import logging
import threading
import time

LOG = logging.getLogger("katalyst.leader")

LEASE_DURATION = 15.0
RENEW_DEADLINE = 10.0
RETRY_PERIOD = 2.0


def micro_time(dt):
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_micro_time(text):
    """RFC 3339 as API servers and clients write MicroTime: ``Z`` or a numeric offset, with or without fractions."""
    if not text:
        return None
    parsed = datetime.datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return parsed.astimezone(datetime.timezone.utc)


def lease_expired(spec, now, default_duration=LEASE_DURATION):
    """True when the Lease has no holder or its holder stopped renewing (pure; ``now`` is passed in)."""
    if not spec.get("holderIdentity"):
        return True
    renew = parse_micro_time(spec.get("renewTime") or spec.get("acquireTime"))
    if renew is None:
        return True
    duration = float(spec.get("leaseDurationSeconds") or default_duration)
    return (now - renew).total_seconds() > duration


class LeaderElector:
    """Run ``on_started_leading(stop_event)`` while this identity holds the Lease."""

    def __init__(self, coordination_api, name, namespace, identity, lease_duration=LEASE_DURATION,
                 renew_deadline=RENEW_DEADLINE, retry_period=RETRY_PERIOD,
                 now=lambda: datetime.datetime.now(datetime.timezone.utc), on_retry=None):
        self.api = coordination_api
        # on_retry(reason): a failed acquire/renew call, tried again one retry period later (as client-go does: a
        # retry within the attempt could outlast the renew deadline); the daemon counts it in katalyst_api_retries_total
        self.on_retry = on_retry
        self.name = name
        self.namespace = namespace
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.now = now
        self.is_leader = threading.Event()
        self.transitions = 0
        self.renewed_at = None      # time.monotonic() when the last successful acquire/renew began

    def holds_lease(self):
        """True while we lead and renewed the Lease less than ``renew_deadline`` ago (so less than its duration ago:
        no other replica can have taken it). A process frozen (SIGSTOP, a VM pause) past the Lease's duration resumes
        believing it leads, and its loops may run before this election loop finds the Lease taken: they ask this first."""
        renewed = self.renewed_at
        return self.is_leader.is_set() and renewed is not None and time.monotonic() - renewed < self.renew_deadline

    def _body(self, lease, transitions):
        stamp = micro_time(self.now())
        spec = {"holderIdentity": self.identity, "leaseDurationSeconds": int(self.lease_duration),
                "renewTime": stamp, "leaseTransitions": transitions}
        held = (lease or {}).get("spec") or {}
        spec["acquireTime"] = held.get("acquireTime") if held.get("holderIdentity") == self.identity and held.get("acquireTime") else stamp
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace}, "spec": spec}
        if lease:
            body["metadata"]["resourceVersion"] = lease["metadata"]["resourceVersion"]
        return body

    def try_acquire_or_renew(self):
        """One attempt; True when we hold the Lease afterwards. Conflicts mean someone else won."""
        from kubernetes.client.rest import ApiException  # pylint: disable=import-outside-toplevel
        try:
            response = self.api.read_namespaced_lease(self.name, self.namespace, _preload_content=False)
            lease = json.loads(response.data)
        except ApiException as exc:
            if exc.status != 404:
                raise
            lease = None
        if lease is None:
            try:
                self.api.create_namespaced_lease(self.namespace, self._body(None, 0))
                return True
            except ApiException as exc:
                if exc.status == 409:
                    return False
                raise
        spec = lease.get("spec") or {}
        transitions = int(spec.get("leaseTransitions") or 0)
        if spec.get("holderIdentity") != self.identity:
            if not lease_expired(spec, self.now(), self.lease_duration):
                return False
            transitions += 1
        try:
            self.api.replace_namespaced_lease(self.name, self.namespace, self._body(lease, transitions))
            return True
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise

    def release(self):
        from kubernetes.client.rest import ApiException  # pylint: disable=import-outside-toplevel
        try:
            lease = json.loads(self.api.read_namespaced_lease(self.name, self.namespace, _preload_content=False).data)
            if (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            body = self._body(lease, int(lease["spec"].get("leaseTransitions") or 0))
            body["spec"]["holderIdentity"] = ""
            body["spec"]["leaseDurationSeconds"] = 1
            self.api.replace_namespaced_lease(self.name, self.namespace, body)
            LOG.info("released lease %s/%s", self.namespace, self.name)
        except ApiException as exc:
            LOG.warning("could not release lease %s/%s: %s", self.namespace, self.name, exc.status)

    def _retrying(self, exc):
        if self.on_retry is not None:
            status = getattr(exc, "status", None)
            self.on_retry(str(status) if status else "transport")

    def run(self, stop, on_started_leading, on_stopped_leading=None):
        """Block until ``stop`` is set: wait for leadership, lead, step down when renewal fails."""
        while not stop.is_set():
            attempt = time.monotonic()
            try:
                acquired = self.try_acquire_or_renew()
            except Exception as exc:  # pylint: disable=broad-except
                LOG.warning("lease %s/%s: %s", self.namespace, self.name, exc)
                self._retrying(exc)
                acquired = False
            if not acquired:
                stop.wait(self.retry_period)
                continue
            LOG.info("%s became leader of %s/%s", self.identity, self.namespace, self.name)
            self.renewed_at = attempt
            self.transitions += 1
            self.is_leader.set()
            leading = threading.Event()
            worker = threading.Thread(target=on_started_leading, args=(leading,), name="leader-work", daemon=True)
            worker.start()
            last_renew = time.monotonic()
            while not stop.is_set():
                stop.wait(self.retry_period)
                if stop.is_set():
                    break
                attempt = time.monotonic()
                try:
                    if self.try_acquire_or_renew():
                        last_renew = self.renewed_at = attempt
                        continue
                except Exception as exc:  # pylint: disable=broad-except
                    LOG.warning("renewing lease %s/%s failed: %s", self.namespace, self.name, exc)
                    self._retrying(exc)
                if time.monotonic() - last_renew > self.renew_deadline:
                    LOG.error("%s lost leadership of %s/%s", self.identity, self.namespace, self.name)
                    break
            leading.set()
            worker.join(timeout=30)
            self.is_leader.clear()
            if on_stopped_leading:
                on_stopped_leading()
            if stop.is_set():
                self.release()
                return
