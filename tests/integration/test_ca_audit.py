"""CA operations reach the audit log: appended when it is reachable, kept in the
CA's directory (0600) when not, and appended in order by the next operation
that reaches it. A real JetStream cluster holds the audit stream."""

from __future__ import annotations

import asyncio
import contextlib
import stat
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from meridian.audit.model import AuditEntry
from meridian.security import ca_audit
from meridian.testing.nats_server import NatsCluster


@pytest.fixture(scope="module")
def server() -> Iterator[NatsCluster]:
    with NatsCluster("global") as c:
        yield c


async def _stream(url: str) -> list[AuditEntry]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream(timeout=5)
        with contextlib.suppress(Exception):
            await js.add_stream(name="MG_AUDIT", subjects=[ca_audit.ENTRY_SUBJECT])
        info = await js.stream_info("MG_AUDIT")
        out = []
        for seq in range(1, info.state.last_seq + 1):
            msg = await js.get_msg("MG_AUDIT", seq)
            out.append(AuditEntry.parse(msg.data or b""))
        return out
    finally:
        await nc.close()


def entry(op: str) -> AuditEntry:
    return ca_audit.ca_entry(
        op, {"identity": "spiffe://meridian.local/service/x"}, principal="", region="us-east"
    )


def test_kept_while_unreachable_then_appended_in_order(server: NatsCluster, tmp_path: Path) -> None:
    url = server.urls[0]
    assert asyncio.run(_stream(url)) == []
    first, second, third = entry("issue"), entry("rotate"), entry("renew")

    done, said = ca_audit.record(tmp_path, first, urls=[], tls=None)
    assert not done and "no NATS servers configured" in said
    done, said = ca_audit.record(tmp_path, second, urls=["nats://127.0.0.1:1"], tls=None)
    assert not done and "kept in" in said
    kept = tmp_path / ca_audit.PENDING_FILE
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert ca_audit.pending(tmp_path) == [first, second]

    done, said = ca_audit.record(tmp_path, third, urls=[url], tls=None)
    assert done and "3 entries" in said, said
    assert not kept.exists()
    stored = asyncio.run(_stream(url))
    assert stored == [first, second, third]
    assert stored[0].action == "admin:ca" and stored[0].resource == 'Control::"ca"'
    assert stored[1].detail["operation"] == "rotate"

    # Sent again (a retry after a lost ack): JetStream keeps one copy.
    assert ca_audit.record(tmp_path, third, urls=[url], tls=None)[0]
    assert len(asyncio.run(_stream(url))) == 3


def test_a_tampered_pending_file_is_refused_not_appended(tmp_path: Path) -> None:
    (tmp_path / ca_audit.PENDING_FILE).write_text('{"request_id": "x"}\n')
    with pytest.raises(ValueError):
        ca_audit.pending(tmp_path)
