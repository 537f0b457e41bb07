"""Smoke: resident data through a cut-off home region and a killed one.

A CAS register on a `regional` keyspace (one partition homed in us-east, one
in eu-west, both allowed only there) and events on a topic allowed in eu-west
only, while us-east is cut off and then eu-west is killed and restarted. The
register must stay linearizable per key, every call from ap-south (and every
publish outside eu-west) must be refused, and after the heal no server may
hold a resident byte outside its regions. The same checker is then fed the
real history with one breach injected of each kind, and must fail.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from meridian.chaos.checkers.residency import ResidencyChecker
from meridian.chaos.history import History
from tests.chaos.conftest import run_smoke, verdict

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def residency_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("residency-partition-kill")
    return run_smoke("residency-partition-kill", out), out


def test_resident_data_stays_in_its_regions_through_faults(
    residency_run: tuple[dict[str, Any], Path],
) -> None:
    report, out = residency_run
    residency = verdict(report, "residency")
    assert residency["valid"] is True, residency
    assert residency["details"]["refused"] > 10, residency
    assert residency["details"]["streams"] > 0, residency
    lin = verdict(report, "linearizable")
    assert lin["valid"] is True, lin
    assert lin["details"]["porcupine"]["operations"] > 50, lin
    history = History.load(out / "history.json")
    # Both faults ran, and the home regions' own clients kept writing their
    # partitions: a regional write needs no other region.
    assert [f["error"] for f in report["faults"]] == [None, None], report["faults"]
    assert any(op.f == "publish" and op.type == "ok" for op in history.ops())


def test_the_residency_checker_catches_each_breach_in_the_real_history(
    residency_run: tuple[dict[str, Any], Path],
) -> None:
    _, out = residency_run
    history = History.load(out / "history.json")
    assert ResidencyChecker().check(history).valid is True
    events = list(history.events)

    # 1. A resident stream found on a server outside its regions.
    i, check = next(
        (i, e) for i, e in enumerate(events) if e.f == "residency-check" and e.type == "ok"
    )
    breach = {
        "server": "ap-south",
        "region": "ap-south",
        "stream": "MGRM_chaos_resident_Pxeu_Rap-south",
        "bytes": 120,
        "messages": 1,
        "resource": "keyspace chaos_resident partition xeu",
        "allowed": ["us-east", "eu-west"],
        "rule": "configuration",
    }
    stored = list(events)
    stored[i] = dataclasses.replace(check, value={**check.value, "violations": [breach]})
    assert ResidencyChecker().check(History(stored, t0_ns=0)).valid is False

    # 2. A call from outside the residency that was served.
    j, refused = next((j, e) for j, e in enumerate(events) if e.f == "outside" and e.type == "fail")
    served = list(events)
    served[j] = dataclasses.replace(refused, type="ok", error=None)
    assert ResidencyChecker().check(History(served, t0_ns=0)).valid is False

    # 3. No check at all is not a pass.
    unchecked = [e for e in events if e.f != "residency-check"]
    assert ResidencyChecker().check(History(unchecked, t0_ns=0)).valid is None
