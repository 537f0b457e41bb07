"""Feature flags on the real sandbox, through the real CLI: a flag set in one
region reaches every region through the `global` keyspace, each evaluates it
with its own region in the context, the kill switch turns it off everywhere
in one write, and the gateway does not expose flags."""

from __future__ import annotations

import json
import time
from typing import Any

from tests.e2e.conftest import REGIONS, SandboxHandle

ONLY_AP_SOUTH = {
    "state": "ENABLED",
    "variants": {"on": True, "off": False},
    "defaultVariant": "off",
    "targeting": {"if": [{"in": [{"var": "region"}, ["ap-south"]]}, "on", "off"]},
}


def evaluate(sandbox: SandboxHandle, key: str, region: str) -> dict[str, Any]:
    out = sandbox.cli("flags", "evaluate", key, "--via", region)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def until(sandbox: SandboxHandle, key: str, region: str, want: tuple[str, str]) -> None:
    deadline = time.monotonic() + 60  # a hang guard, not a speed check
    while True:
        got = evaluate(sandbox, key, region)
        if (got.get("variant"), got.get("reason")) == want:
            return
        assert time.monotonic() < deadline, (region, got)
        time.sleep(0.5)


def test_a_flag_reaches_every_region_and_the_kill_switch_turns_it_off(
    sandbox: SandboxHandle,
) -> None:
    root = sandbox.config_path.parent
    path = root / "only-ap-south.json"
    path.write_text(json.dumps(ONLY_AP_SOUTH))
    # A change waits for its audit entry and the global quorum, which may still
    # be settling after the previous test's heal (QUORUM_UNAVAILABLE: retry).
    deadline = time.monotonic() + 60  # a hang guard, not a speed check
    while True:
        out = sandbox.cli(
            "flags", "set", "e2e-new-search", str(path), "--via", "us-east", check=False
        )
        if out.returncode == 0 or "QUORUM_UNAVAILABLE" not in out.stderr:
            break
        assert time.monotonic() < deadline, out.stderr
        time.sleep(0.5)
    assert out.stdout.startswith("set e2e-new-search at revision "), out.stderr

    # Each region evaluates with its own region: the flag is on in ap-south only.
    for region in REGIONS:
        want = "on" if region == "ap-south" else "off"
        until(sandbox, "e2e-new-search", region, (want, "TARGETING_MATCH"))

    # The kill switch, from another region: off everywhere, reason DISABLED.
    out = sandbox.cli("flags", "kill", "e2e-new-search", "--via", "eu-west")
    assert "every region serves 'off'" in out.stdout
    for region in REGIONS:
        until(sandbox, "e2e-new-search", region, ("off", "DISABLED"))
    listed = sandbox.cli("flags", "list", "--via", "ap-south").stdout
    assert "KILLED(off)" in listed

    # A bad definition is refused by the CLI, naming the field; nothing changes.
    bad = root / "bad-flag.json"
    bad.write_text(json.dumps({**ONLY_AP_SOUTH, "defaultVariant": "of"}))
    refused = sandbox.cli("flags", "set", "e2e-new-search", str(bad), check=False)
    assert refused.returncode == 2
    assert "definition.defaultVariant" in refused.stderr
    shown = json.loads(sandbox.cli("flags", "get", "e2e-new-search", "--json").stdout)
    assert shown["killedVariant"] == "off"

    # Setting it again revives it, everywhere.
    sandbox.cli("flags", "set", "e2e-new-search", str(path))
    until(sandbox, "e2e-new-search", "ap-south", ("on", "TARGETING_MATCH"))

    # The changes are in the audit log.
    entries = [
        json.loads(line) for line in sandbox.cli("audit", "tail", "-n", "50").stdout.splitlines()
    ]
    changes = [
        e["detail"]["change"]
        for e in entries
        if e["action"] == "admin:flags" and e["resource"] == 'Flag::"e2e-new-search"'
    ]
    assert changes[-3:] == ["set", "kill", "set"], changes
    sandbox.cli("flags", "delete", "e2e-new-search")
    got = evaluate(sandbox, "e2e-new-search", "us-east")
    assert got["errorCode"] == "FLAG_NOT_FOUND"
