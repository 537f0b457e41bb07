"""The demo's rotation verdict: renewals set against the requests that failed
before the fault, tested on runs known to be bad."""

from __future__ import annotations

from pathlib import Path

from meridian.demo.rotation import serials, summary
from meridian.demo.shop import Exchange
from meridian.demo.verdict import _rotation_check
from meridian.security.ca import CertificateAuthority
from meridian.security.model import Identity, Kind


def ok(started: float) -> Exchange:
    return Exchange("us-east", "place", started, started + 0.5, 201, "us-east", "")


def failed(started: float, status: int = 0, error: str = "ClientConnectorError") -> Exchange:
    return Exchange("us-east", "place", started, started + 0.5, status, "", error)


RENEWALS = [(2.0, "agent-us-east"), (2.0, "gateway"), (12.0, "agent-us-east"), (40.0, "gateway")]


def test_renewals_and_no_failure_before_the_fault_hold() -> None:
    r = summary(RENEWALS, [ok(1), ok(5), failed(31), failed(33, 503, "unavailable")], 30.0, 20)
    assert (r["renewals"], r["renewals_before_fault"], r["identities_before_fault"]) == (4, 3, 2)
    assert r["failed_before_fault"] == 0  # the failures after the kill are the fault's
    check = _rotation_check(r)
    assert check.ok and "3 renewals of 2 certificates before the fault" in check.detail


def test_a_request_in_flight_when_the_region_is_killed_is_the_faults() -> None:
    r = summary(RENEWALS, [ok(1), failed(29.8, 502, "unavailable")], 30.0, 20)
    assert r["failed_before_fault"] == 0 and _rotation_check(r).ok


def test_a_request_failing_while_certificates_rotate_fails_the_check() -> None:
    r = summary(RENEWALS, [ok(1), failed(2.1, 0, "ClientOSError"), ok(5)], 30.0, 20)
    check = _rotation_check(r)
    assert not check.ok and check.value == 1
    assert "ClientOSError 1" in check.detail


def test_a_run_in_which_nothing_was_renewed_before_the_fault_fails_the_check() -> None:
    r = summary([(40.0, "gateway")], [ok(1)], 30.0, 20)
    check = _rotation_check(r)
    assert not check.ok and "not exercised" in check.detail


def test_without_a_fault_every_failure_counts() -> None:
    r = summary(RENEWALS, [failed(50)], None, 20)
    assert r["failed_before_fault"] == 1 and r["renewals_before_fault"] == 4


def test_serials_follow_reissued_certificates(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "ca")
    ca.init("test.meridian")
    agent = Identity("test.meridian", Kind.AGENT, "us-east")
    ca.issue(agent)
    before = serials(tmp_path / "ca" / "identities")
    ca.issue(agent)
    after = serials(tmp_path / "ca" / "identities")
    assert set(before) == {"agent-us-east"} and before != after
    (tmp_path / "ca" / "identities" / "broken").mkdir()
    (tmp_path / "ca" / "identities" / "broken" / "cert.pem").write_text("not a certificate")
    assert set(serials(tmp_path / "ca" / "identities")) == {"agent-us-east"}
