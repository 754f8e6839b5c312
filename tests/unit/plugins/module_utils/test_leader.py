import datetime
import threading

import pytest

from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.leader import LeaderElector, lease_expired, parse_micro_time

UTC = datetime.timezone.utc


def test_micro_time_reads_z_and_numeric_offsets():
    # API servers write Z; the Python client (and servers that store bodies as written) may give +00:00
    assert parse_micro_time("2026-11-30T20:00:00.123456Z") == datetime.datetime(2026, 11, 30, 20, 0, 0, 123456, UTC)
    assert parse_micro_time("2026-11-30T20:00:00+00:00") == datetime.datetime(2026, 11, 30, 20, 0, 0, tzinfo=UTC)
    assert parse_micro_time("2026-11-30T21:00:00.5+01:00") == datetime.datetime(2026, 11, 30, 20, 0, 0, 500000, UTC)
    assert parse_micro_time("") is None


def test_an_offset_renew_time_expires_like_a_z_one():
    now = datetime.datetime(2026, 11, 30, 20, 0, 20, tzinfo=UTC)
    for renew in ("2026-11-30T20:00:00+00:00", "2026-11-30T20:00:00.000000Z"):
        assert lease_expired({"holderIdentity": "a", "renewTime": renew, "leaseDurationSeconds": 15}, now)
        assert not lease_expired({"holderIdentity": "a", "renewTime": renew, "leaseDurationSeconds": 30}, now)


class FailingLeases:
    """A CoordinationV1Api whose Lease reads fail ``failures`` times (status 503, then a reset connection), then 404s."""

    def __init__(self, failures):
        self.failures = failures
        self.created = []

    def read_namespaced_lease(self, name, namespace, **_kwargs):
        from kubernetes.client.rest import ApiException  # pylint: disable=import-outside-toplevel
        if self.failures:
            self.failures -= 1
            if self.failures % 2:
                raise ApiException(status=503, reason="Service Unavailable")
            raise ConnectionResetError("reset by peer")
        raise ApiException(status=404, reason="Not Found")

    def create_namespaced_lease(self, namespace, body):
        self.created.append((namespace, body))


def test_failed_lease_calls_are_counted_and_tried_again_next_period():
    pytest.importorskip("kubernetes")
    api, reasons = FailingLeases(4), []
    elector = LeaderElector(api, "lease", "ns", "me", retry_period=0.01, on_retry=reasons.append)
    stop = threading.Event()

    def lead(leading):
        stop.set()
        leading.wait(1)
    elector.run(stop, lead)
    assert reasons == ["503", "transport", "503", "transport"]
    assert api.created and api.created[0][1]["spec"]["holderIdentity"] == "me"
