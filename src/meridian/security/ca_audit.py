"""CA operations in the audit log (``admin:ca`` on ``Control::"ca"``).

``meridian ca init | issue | renew | rotate`` run on the CA's files, not
through an agent, so the CLI appends their audit entries itself: the same
canonical entries the agents append, published to the audit stream with the
entry's request ID as ``Nats-Msg-Id`` (JetStream stores a retry once). The
agents' log follower puts them in the Merkle tree, and their checkpoints and
cosignatures cover them like any other entry.

A CA must keep working while NATS is down: its renewals are what bring
NATS back. So when the log cannot be reached within a few seconds the entry
is kept in ``<ca_dir>/audit-pending.jsonl`` (0600), and the next CA command
that reaches the log appends those first, in order. The command says which
happened; nothing is dropped.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from meridian.audit.model import AuditEntry
from meridian.core.hlc import HlcTimestamp

PENDING_FILE = "audit-pending.jsonl"
#: The audit stream's subject (meridian.audit.store.ENTRY_SUBJECT).
ENTRY_SUBJECT = "mg.audit.entry"
ACTION = "admin:ca"
RESOURCE = 'Control::"ca"'


def ca_entry(
    operation: str, detail: Mapping[str, str], *, principal: str, region: str
) -> AuditEntry:
    """The entry of one CA operation, stamped now."""
    return AuditEntry(
        request_id=uuid.uuid4().hex,
        principal=principal,
        action=ACTION,
        resource=RESOURCE,
        decision="permit",
        region=region,
        hlc=HlcTimestamp(int(time.time() * 1000)).encode(),
        detail={"operation": operation, **detail},
    )


def pending(ca_dir: Path) -> list[AuditEntry]:
    """The entries kept while the log was out of reach, oldest first."""
    path = ca_dir / PENDING_FILE
    if not path.exists():
        return []
    return [AuditEntry.parse(line.encode()) for line in path.read_text().splitlines() if line]


def _keep(ca_dir: Path, entries: list[AuditEntry]) -> Path:
    path = ca_dir / PENDING_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        for e in entries:
            f.write(e.canonical().decode() + "\n")
    return path


async def _append(urls: list[str], tls: Any, entries: list[AuditEntry]) -> None:
    from meridian.backbone.connection import connect_once

    nc = await connect_once(urls, tls=tls, timeout_s=3)
    try:
        js = nc.jetstream(timeout=5)
        for e in entries:
            await js.publish(ENTRY_SUBJECT, e.canonical(), headers={"Nats-Msg-Id": e.request_id})
    finally:
        await nc.close()


def record(ca_dir: Path, entry: AuditEntry, *, urls: list[str], tls: Any) -> tuple[bool, str]:
    """Append the pending entries and ``entry`` to the log; (appended, what to say)."""
    entries = [*pending(ca_dir), entry]
    if urls:
        try:
            asyncio.run(_append(urls, tls, entries))
        except Exception as exc:
            why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        else:
            (ca_dir / PENDING_FILE).unlink(missing_ok=True)
            return True, f"audited ({len(entries)} entr{'y' if len(entries) == 1 else 'ies'})"
    else:
        why = "no NATS servers configured"
    kept = _keep(ca_dir, entries)
    return False, (
        f"not in the audit log yet ({why}); kept in {kept} for the next CA command that reaches it"
    )


def principal_of(cert_path: Path) -> str:
    """The SPIFFE ID in a certificate's URI SAN ("" if it has none or can't be read)."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return ""
    uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    return next((u for u in uris if u.startswith("spiffe://")), "")
