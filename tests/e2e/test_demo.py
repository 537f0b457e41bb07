"""The global shop demo end to end: ``meridian demo run --quick`` as a subprocess, with
the real Go ``orders`` and Rust ``inventory`` binaries (built here, with the commands
``./scripts/demo`` uses, when missing or older than their sources).

One full run checks every invariant from the JSON report and that nothing of the
demo is left afterwards; a second run is interrupted with SIGINT while the killed
region is being brought back (a sandbox start-up in flight, shoppers mid-request)
and must leave nothing behind either. The demo uses base port 22000, away from
the shared e2e sandbox (24000) and the module sandboxes (23000)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from meridian.demo import audit, binaries

# MERIDIAN_DEMO_TEST_BASE_PORT moves the demo's ports, for two test runs side by side.
BASE_PORT = int(os.environ.get("MERIDIAN_DEMO_TEST_BASE_PORT", "22000"))
PORTS = range(BASE_PORT, BASE_PORT + 1000)


@pytest.fixture(scope="module")
def built() -> None:
    """Both services' binaries, built if missing or stale; a failed build fails the test."""
    binaries.build(only_stale=True)


def _argv(workdir: Path, report: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "meridian.cli.main",
        "demo",
        "run",
        "--quick",
        "--base-port",
        str(BASE_PORT),
        "--workdir",
        str(workdir),
        "--report-json",
        str(report),
    ]


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _still_running(proc: dict[str, Any]) -> bool:
    """The recorded process still exists and is still the same one (pids are reused): the
    same start time for the services, the same command line for the sandbox's children."""
    try:
        raw = Path(f"/proc/{proc['pid']}/cmdline").read_bytes()
        stat = Path(f"/proc/{proc['pid']}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return False
    if stat[0] in ("Z", "X"):
        return False
    if "start_ticks" in proc:
        return int(stat[19]) == proc["start_ticks"]
    argv = [p.decode(errors="replace") for p in raw.rstrip(b"\0").split(b"\0")] if raw else []
    return argv == proc["argv"]


def _naming(workdir: Path) -> list[str]:
    """Processes other than this one whose command line names the demo's directory."""
    marker = str(workdir.resolve())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, UnicodeDecodeError):
            continue
        if marker in cmdline:
            found.append(f"{entry.name}: {cmdline[:200]}")
    return found


def _assert_nothing_left(report: dict[str, Any], workdir: Path) -> None:
    assert report["processes"], "the report lists no process: nothing to check"
    assert report["left_behind"]["pids"] == []
    assert report["left_behind"]["ports"] == []
    # Stopped in order, not by the last-resort sweep of processes naming the run's files.
    assert report["left_behind"]["stragglers_killed"] == []
    alive = [f"{p['name']} ({p['pid']})" for p in report["processes"] if _still_running(p)]
    assert alive == [], f"demo processes still running: {alive}"
    assert _naming(workdir) == []
    busy = [p for p in PORTS if _listening(p)]
    assert busy == [], f"ports of the demo's block still listening: {busy}"
    services = {p["name"].split(":")[0] for p in report["processes"]}
    assert {"orders", "inventory", "agent", "nats", "gateway", "wan"} <= services


def test_quick_run_holds_every_invariant_and_leaves_nothing(built: None, tmp_path: Path) -> None:
    workdir, report_path = tmp_path / "demo", tmp_path / "report.json"
    started = time.monotonic()
    proc = subprocess.run(
        _argv(workdir, report_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    output = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-3000:]}"
    print(proc.stdout)
    print(f"demo run took {time.monotonic() - started:.1f}s")
    assert report_path.exists(), output
    report = json.loads(report_path.read_text())
    assert proc.returncode == 0, output
    assert report["ok"] is True and report["error"] is None and not report["interrupted"]
    inv = report["invariants"]
    assert inv["accepted"] > 0
    assert inv["oversell"] == 0, report["stock"]
    assert inv["duplicates"] == 0, (inv["duplicate_keys"], inv["duplicate_stored"])
    assert inv["lost_writes"] == 0
    assert inv["strong_read_anomalies"] == 0, report["reads"]
    assert inv["failover_s"] is not None and math.isfinite(inv["failover_s"])
    assert inv["failover_s"] >= 0
    assert report["failover"]["served_by"] in ("us-east", "ap-south", "eu-west")
    assert inv["read_models_converged"] is True and inv["convergence_s"] is not None
    assert all(c["ok"] for c in report["checks"]), report["checks"]
    # Certificates rotated under load (every leaf lives 8 s in --quick) and no
    # request failed before the fault.
    rotation = report["rotation"]
    assert rotation["renewals_before_fault"] > 0 and rotation["failed_before_fault"] == 0, rotation
    assert {"agent-us-east", "gateway", "nats-global-eu-west", "service-orders"} <= set(
        rotation["by_identity"]
    ), rotation
    # The faulty orders v2 was rolled back in its canary region only, and a
    # good one reached every region.
    ro = report["rollout"]
    assert ro["bad_phase"] == "RolledBack" and ro["good_phase"] == "Healthy", ro
    assert set(ro["v2_answers_during_faulty_rollout"]) == {"ap-south"}, ro
    assert ro["consistency"] == "passed", ro
    assert "rollout" in {c["name"] for c in report["checks"]}
    # The deliberate retries came back with the original order, marked as replays.
    replays = report["orders"]["replays"]
    assert replays["same_order"] == replays["sent"]
    # The stock adds up: per SKU, units sold never exceed what was taken out of stock.
    for sku in report["stock"]:
        assert sku["sold"] + sku["available"] <= sku["seeded"], sku
    assert "all invariants held" in proc.stdout
    _assert_nothing_left(report, workdir)
    _assert_checks_catch_anomalies(workdir / "audit.json", report)


def _assert_checks_catch_anomalies(path: Path, report: dict[str, Any]) -> None:
    """The run's own audited state passes the checks; with one anomaly injected, each
    check fails (a check that cannot fail proves nothing)."""
    state, requests = audit.load(path)
    opts = report["options"]
    seeded = {f"sku-{i}": opts["stock_per_sku"] for i in range(1, opts["skus"] + 1)}
    assert sum(s.oversell for s in audit.stock_lines(state, seeded)) == 0
    assert audit.duplicates(requests, state).count == 0
    assert audit.lost_writes(requests, state) == []
    accepted = [r for r in requests if r.outcome == "accepted"]
    assert accepted

    # One unit sold beyond what inventory took out of stock.
    line = audit.stock_lines(state, seeded)[0]
    extra = line.seeded - line.available - line.sold + 1
    oversold = audit.GlobalState(
        {
            **state.orders,
            "o-extra": audit.StoredOrder("o-extra", line.sku, extra, "placed", "x", ""),
        },
        state.available,
        state.reservations,
    )
    assert sum(s.oversell for s in audit.stock_lines(oversold, seeded)) == 1

    # One request stored as two orders; one key answered with two order ids.
    first = state.orders[accepted[0].order_id]
    twice = audit.GlobalState(
        {**state.orders, "o-twin": dataclasses.replace(first, id="o-twin")},
        state.available,
        state.reservations,
    )
    assert audit.duplicates(requests, twice).stored == [first.customer]
    accepted[0].order_ids.add("o-other")
    assert audit.duplicates(requests, state).keys == [accepted[0].key]
    accepted[0].order_ids.discard("o-other")

    # An acknowledged order missing from the store.
    missing = dict(state.orders)
    del missing[accepted[0].order_id]
    lost = audit.GlobalState(missing, state.available, state.reservations)
    assert len(audit.lost_writes(requests, lost)) == 1

    # A read model that missed one event differs from the store.
    orders = list(state.orders.values())
    stale = [
        dataclasses.replace(
            orders[0], status="cancelled" if orders[0].status == "placed" else "placed"
        )
    ]
    assert audit.readmodel_hashes(orders)[1] != audit.readmodel_hashes(stale + orders[1:])[1]


def test_sigint_while_a_region_heals_leaves_nothing(built: None, tmp_path: Path) -> None:
    workdir, report_path = tmp_path / "demo", tmp_path / "report.json"
    proc = subprocess.Popen(
        _argv(workdir, report_path),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if "heal: bringing" in line:
                break
        else:
            raise AssertionError("the demo ended before the heal began:\n" + "".join(seen))
        time.sleep(1.5)  # the sandbox start-up of the healing region is under way
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = "".join(seen) + rest
    print(output)
    assert proc.returncode == 128 + signal.SIGINT, output
    assert "SIGINT: stopping" in output
    report = json.loads(report_path.read_text())
    assert report["interrupted"] is True and report["ok"] is False
    _assert_nothing_left(report, workdir)
