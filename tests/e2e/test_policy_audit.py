"""Policies and the audit log on the real sandbox, through the real CLI: the
agents decide by the sandbox's set, a push is audited, every region signs
checkpoints the others cosign, and `meridian audit verify` accepts the log."""

from __future__ import annotations

import json
import time

from tests.e2e.conftest import SandboxHandle


def test_policy_cli_and_audit_verify(sandbox: SandboxHandle) -> None:
    root = sandbox.config_path.parent
    # What the demo's inventory may not do, and why.
    denied = sandbox.cli(
        "policy", "explain", "service/inventory", "state:write", "Keyspace/orders", check=False
    )
    assert denied.returncode == 1, denied.stdout + denied.stderr
    assert denied.stdout.startswith("deny: no policy permits it")
    allowed = sandbox.cli(
        "policy", "explain", "service/orders", "invoke", "Service/inventory", "--key", "/r"
    )
    assert allowed.stdout.startswith("permit: orders-invoke-inventory")

    # A bad set is refused before it reaches an agent; nothing changes.
    bad = root / "bad.cedar"
    bad.write_text('permit (principal, action == Action::"state:wrote", resource);\n')
    refused = sandbox.cli("policy", "push", str(bad), check=False)
    assert refused.returncode == 2 and "unrecognized action" in refused.stderr

    # The sandbox's set pushed again: stored, and audited.
    pushed = sandbox.cli("policy", "push", str(root / "policy.cedar"))
    assert pushed.stdout.startswith("stored revision ")
    shown = json.loads(sandbox.cli("policy", "show", "--json").stdout)
    assert shown["author"] == "spiffe://meridian.local/operator/meridian"

    deadline = time.monotonic() + 120  # a hang guard, not a speed check
    while True:
        report = sandbox.cli("audit", "verify", "--json", "--min-cosigners", "2", check=False)
        out = json.loads(report.stdout)
        entries = [
            json.loads(line)
            for line in sandbox.cli("audit", "tail", "-n", "50").stdout.splitlines()
        ]
        pushes = [e for e in entries if e["action"] == "admin:policies"]
        last = out["checkpoints"][-1] if out["checkpoints"] else None
        if (
            pushes
            and out["ok"]
            and last is not None
            and last["size"] == out["size"]
            and not out["warnings"]
        ):
            break
        assert time.monotonic() < deadline, report.stdout + report.stderr
        time.sleep(1)
    assert report.returncode == 0
    assert pushes[-1]["principal"] == "spiffe://meridian.local/operator/meridian"
    proof = sandbox.cli("audit", "prove", pushes[-1]["request_id"])
    assert "root_hash=" in proof.stdout and "leaf_hash=" in proof.stdout


def test_ca_operations_are_audited(sandbox: SandboxHandle) -> None:
    """`meridian ca issue` runs on the CA's files, not through an agent; the CLI
    appends its admin:ca entry to the log itself, and the agents' tree takes it."""
    issued = sandbox.cli("ca", "issue", "service/audited-by-e2e", "--lifetime", "1h")
    assert "audit: issue: audited" in issued.stderr, issued.stderr
    entries = [
        json.loads(line) for line in sandbox.cli("audit", "tail", "-n", "50").stdout.splitlines()
    ]
    ca = [e for e in entries if e["action"] == "admin:ca"]
    assert ca, entries[-3:]
    assert ca[-1]["detail"]["identity"].endswith("/service/audited-by-e2e")
    assert ca[-1]["detail"]["operation"] == "issue"
    assert ca[-1]["principal"].endswith("/operator/meridian")
    proof = sandbox.cli("audit", "prove", ca[-1]["request_id"])
    assert "leaf_hash=" in proof.stdout
