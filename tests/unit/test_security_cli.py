"""``meridian ca`` end to end on real files: init, issue, status, a whole root
rotation, and bad input named with exit status 2 and nothing written."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from meridian.cli.main import cli


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["ca", *args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_init_issue_status(tmp_path: Path) -> None:
    d = str(tmp_path / "ca")
    code, out, _ = run("init", "--dir", d, "--trust-domain", "shop.example")
    assert code == 0 and "spiffe://shop.example" in out
    code, out, _ = run("issue", "service/orders", "--dir", d, "--dns", "orders.local")
    assert code == 0 and "spiffe://shop.example/service/orders" in out
    assert (tmp_path / "ca/identities/service-orders/cert.pem").is_file()
    code, out, _ = run("issue", "spiffe://shop.example/region/us-east/agent", "--dir", d)
    assert code == 0
    code, out, err = run("status", "--dir", d)
    assert code == 0 and err == ""
    assert "spiffe://shop.example/region/us-east/agent" in out and "(current)" in out
    code, out, _ = run("status", "--dir", d, "--json")
    body = json.loads(out)
    assert {r["state"] for r in body["rows"]} == {"ok"} and body["warnings"] == []


def test_a_short_lived_leaf_makes_status_fail(tmp_path: Path) -> None:
    d = str(tmp_path / "ca")
    run("init", "--dir", d)
    run("issue", "gateway", "--dir", d, "--lifetime", "2s")
    import time

    time.sleep(2.5)
    code, _, err = run("status", "--dir", d)
    assert code == 1 and "spiffe://meridian.local/gateway is expired" in err


def test_a_root_rotation_from_the_command_line(tmp_path: Path) -> None:
    d = str(tmp_path / "ca")
    run("init", "--dir", d)
    run("issue", "agent/us-east", "--dir", d)
    code, out, _ = run("rotate", "--dir", d)
    assert code == 0 and "meridian ca renew" in out
    code, _, err = run("status", "--dir", d)
    assert code == 1 and "still on an old root" in err
    code, _, err = run("rotate", "--finish", "--dir", d)
    assert code == 2 and "rotation:" in err and "agent-us-east" in err
    code, out, _ = run("renew", "--dir", d)
    assert code == 0 and "renewed spiffe://meridian.local/region/us-east/agent" in out
    code, out, _ = run("rotate", "--finish", "--dir", d)
    assert code == 0 and out.startswith("dropped ")
    assert run("status", "--dir", d)[0] == 0


def test_bad_input_is_named_and_writes_nothing(tmp_path: Path) -> None:
    d = tmp_path / "ca"
    code, _, err = run("issue", "service/orders", "--dir", str(d))
    assert code == 2 and "meridian ca init" in err
    code, _, err = run("init", "--dir", str(d), "--trust-domain", "Bad Domain")
    assert code == 2 and "trust_domain:" in err
    assert not (d / "ca.json").exists()
    run("init", "--dir", str(d))
    for args, says in (
        (["issue", "robot/x"], "identity:"),
        (["issue", "service/Orders"], "identity:"),
        (["issue", "service/orders", "--lifetime", "1s"], "lifetime:"),
        (["issue", "service/orders", "--lifetime", "soon"], "lifetime:"),
        (["issue", "service/orders", "--ip", "not-an-ip"], "ip:"),
        (["issue", "service/orders", "--dns", "bad name"], "dns:"),
        (["issue", "spiffe://other.example/gateway"], "identity:"),
        (["init"], "dir:"),
    ):
        code, _, err = run(*args, "--dir", str(d))
        assert code == 2 and says in err, (args, err)
    assert not (d / "identities").exists()
