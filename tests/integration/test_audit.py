"""The audit log against real agents on a real `global` cluster: policy
pushes and denials become entries, every region's agent signs checkpoints
and the others cosign them, `meridian audit verify` accepts the log, and the
streams refuse deletes and purges."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import pytest

from meridian.audit import AuditEntry
from meridian.audit.cli import read_log
from meridian.audit.keys import load_public
from meridian.audit.store import ENTRIES_STREAM
from meridian.audit.verify import verify_log
from meridian.client import MeridianClient
from meridian.config import MeridianConfig
from meridian.core.errors import PermissionDeniedError
from meridian.security.pki import client_ssl, ensure_identity, ensure_sandbox
from meridian.testing.nats_server import NatsCluster
from tests.conftest import eventually
from tests.integration.harness import agent_config, http_post, running_agent

SANDBOX = resources.files("meridian.policy").joinpath("builtin/sandbox.cedar").read_text()
REGIONS = ("us-east", "eu-west", "ap-south")


@pytest.fixture(scope="module")
def cluster() -> Iterator[NatsCluster]:
    with NatsCluster("global") as c:
        yield c


@pytest.fixture(scope="module")
def config(cluster: NatsCluster, tmp_path_factory: pytest.TempPathFactory) -> MeridianConfig:
    root = tmp_path_factory.mktemp("audit")
    cfg = agent_config(
        cluster,
        peers=REGIONS[1:],
        keyspaces=[{"name": "orders", "locality": "global"}],
        ca_dir=root / "ca",
        policy=SANDBOX,
    )
    cfg = dataclasses.replace(cfg, audit=dataclasses.replace(cfg.audit, checkpoint_interval_s=0.5))
    ensure_sandbox(cfg)
    return cfg


@contextlib.asynccontextmanager
async def three_agents(config: MeridianConfig) -> AsyncIterator[None]:
    async with contextlib.AsyncExitStack() as stack:
        for region in REGIONS:
            agent = await stack.enter_async_context(running_agent(config, region=region))
            await agent.audit.wait_serving()
        yield


async def push_policies(config: MeridianConfig) -> None:
    """Push the sandbox's set through us-east's agent (an audited admin change)."""
    url = f"{config.region('us-east').http_url}/v1/policy/put-policies"
    await eventually(
        lambda: http_post(url, {"text": SANDBOX}, ssl=client_ssl(config)),
        lambda r: r[0] == 200,
        what="a policy push",
    )


async def log_of(config: MeridianConfig) -> tuple[list[bytes], list[bytes]]:
    nc = await nats.connect(config.region("us-east").agent_nats_urls[0], tls=client_ssl(config))
    try:
        return await read_log(nc.jetstream(timeout=10))
    finally:
        await nc.close()


def report_of(config: MeridianConfig, entries: list[bytes], notes: list[bytes]) -> Any:
    keys = load_public(config.ca_path / "audit")
    return verify_log(
        entries, notes, keys, trust_domain=config.security.trust_domain, min_cosigners=2
    )


async def test_admin_changes_and_denials_are_entries_and_checkpoints_are_cosigned(
    config: MeridianConfig,
) -> None:
    async with three_agents(config):
        await push_policies(config)
        folder: Path = ensure_identity(config, "service/inventory")
        async with MeridianClient(config.region("us-east").grpc_address, tls=folder) as inv:
            with pytest.raises(PermissionDeniedError):
                await inv.put("orders", "o-1", b"{}")
        # A replay is an admin change: recorded before it runs, whatever it finds.
        await http_post(
            f"{config.region('us-east').http_url}/v1/events/replay",
            {"group": "g1", "topicFilter": "orders", "start": {"sequence": "1"}},
            ssl=client_ssl(config),
        )

        def judged(log: tuple[list[bytes], list[bytes]]) -> bool:
            entries = [AuditEntry.parse(e) for e in log[0]]
            actions = {(e.action, e.decision) for e in entries}
            wanted = {
                ("admin:policies", "permit"),
                ("state:write", "deny"),
                ("events:replay", "permit"),
            }
            if not wanted <= actions:
                return False
            report = report_of(config, *log)
            last = report.checkpoints[-1] if report.checkpoints else None
            return bool(last and last.size == report.size and report.ok and not report.warnings)

        entries, notes = await eventually(
            lambda: log_of(config), judged, timeout_s=60, what="entries, checkpoint, cosigners"
        )
        report = report_of(config, entries, notes)
        assert report.ok, report.problems
        parsed = [AuditEntry.parse(e) for e in entries]
        push = next(e for e in parsed if e.action == "admin:policies")
        assert push.principal == "spiffe://meridian.local/operator/meridian"
        assert push.resource == 'Control::"policies"' and push.detail["sha256"]
        denial = next(e for e in parsed if e.decision == "deny")
        assert denial.principal == "spiffe://meridian.local/service/inventory"
        assert denial.resource == 'Keyspace::"orders"' and denial.region == "us-east"

        # The CLI reads the same streams and agrees.
        argv = [sys.executable, "-m", "meridian.cli.main", "--config", str(config_file(config))]
        argv += ["audit", "verify", "--min-cosigners", "2"]
        proc = await asyncio.to_thread(
            subprocess.run, argv, capture_output=True, text=True, timeout=120, check=False
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "ok" in proc.stdout.splitlines()[-1]


def config_file(config: MeridianConfig) -> Path:
    """A TOML file for the CLI with what it needs of ``config``: where the
    regions' NATS servers are, and the CA (for the CLI's identity and keys)."""
    path = config.ca_path.parent / "cli.toml"
    lines = [
        "[security]",
        f'ca_dir = "{config.ca_path}"',
        "[sandbox]",
        f'workdir = "{config.ca_path.parent / "sandbox"}"',
    ]
    for r in config.regions:
        lines += ["[[region]]", f'name = "{r.name}"', f'nats_urls = ["{r.agent_nats_urls[0]}"]']
        lines += [f"grpc_port = {r.grpc_port}", f"http_port = {r.http_port}"]
    lines += ["[wan]", f"control_port = {config.wan.control_port}"]
    lines += [f"proxy_base_port = {config.wan.proxy_base_port}"]
    path.write_text("\n".join(lines) + "\n")
    return path


async def test_no_client_can_delete_or_purge_the_log(config: MeridianConfig) -> None:
    async with three_agents(config):
        await eventually(
            lambda: log_of(config), lambda log: len(log[0]) > 0, what="an entry in the log"
        )
        nc = await nats.connect(config.region("us-east").agent_nats_urls[0], tls=client_ssl(config))
        try:
            js = nc.jetstream(timeout=10)
            with pytest.raises(nats.js.errors.Error):
                await js.delete_msg(ENTRIES_STREAM, 1)
            with pytest.raises(nats.js.errors.Error):
                await js.purge_stream(ENTRIES_STREAM)
            info = await js.stream_info(ENTRIES_STREAM)
            assert info.config.deny_delete and info.config.deny_purge
            assert info.config.num_replicas == 3
        finally:
            await nc.close()


async def test_a_history_only_one_region_signed_gets_no_cosignature(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """us-east's key signs a checkpoint whose root no entries give (a fork
    shown to the others): they do not cosign it, and verify fails."""
    from meridian.audit.checkpoint import Checkpoint, SignedCheckpoint
    from meridian.audit.keys import load_private
    from meridian.audit.store import CHECKPOINT_PREFIX
    from meridian.audit.verify import key_name, log_origin

    with NatsCluster("global") as cluster:
        cfg = agent_config(
            cluster, peers=REGIONS[1:], ca_dir=tmp_path_factory.mktemp("fork") / "ca"
        )
        cfg = dataclasses.replace(
            cfg, audit=dataclasses.replace(cfg.audit, checkpoint_interval_s=0.5)
        )
        ensure_sandbox(cfg)
        async with three_agents(cfg):
            await push_policies(cfg)
            key = load_private(cfg.audit_keys_dir, "us-east")
            assert key is not None
            td = cfg.security.trust_domain
            forged = Checkpoint(log_origin(td), 1, bytes(32))
            note = SignedCheckpoint.sign(forged, key_name("us-east", td), key).format()
            nc = await nats.connect(cfg.region("us-east").agent_nats_urls[0], tls=client_ssl(cfg))
            try:
                await nc.jetstream().publish(f"{CHECKPOINT_PREFIX}.us-east", note)
            finally:
                await nc.close()

            def settled(log: tuple[list[bytes], list[bytes]]) -> bool:
                report = report_of(cfg, *log)
                # The true checkpoint, vouched for by more than one region.
                return any(c.root == bytes(32).hex() for c in report.checkpoints) and any(
                    c.size >= 1
                    and c.root != bytes(32).hex()
                    and len(set(c.signers) | set(c.cosigners)) >= 2
                    for c in report.checkpoints
                )

            entries, notes = await eventually(
                lambda: log_of(cfg), settled, what="the forged and the true checkpoint"
            )
            await asyncio.sleep(2)  # time for a (wrong) cosignature to arrive
            entries, notes = await log_of(cfg)
            report = report_of(cfg, entries, notes)
            (bad,) = [c for c in report.checkpoints if c.root == bytes(32).hex()]
            assert bad.signers == ("us-east",) and bad.cosigners == ()
            assert not report.ok
            assert any("size 1" in p and "root" in p for p in report.problems), report.problems
