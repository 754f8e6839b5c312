import datetime

from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.leader import lease_expired, parse_micro_time

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
