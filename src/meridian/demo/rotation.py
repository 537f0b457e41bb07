"""Certificate rotation while the shoppers shop: the demo's sandbox issues
short-lived leaves (``DemoOptions.leaf_lifetime_s``), so its renewer re-issues
every identity's certificate several times during the load (agents, gateway,
NATS servers with a reload, the services, the CLI's). :class:`RenewalWatch`
notes each renewal as it happens; :func:`summary` sets them against the
requests that failed, before the fault, when nothing but rotation disturbs
the run."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from meridian.demo.shop import Exchange

POLL_S = 0.25


def serials(identities: Path) -> dict[str, int]:
    """Each identity folder's current certificate serial; unreadable ones skipped
    (a renewal caught half-way is read on the next poll)."""
    out: dict[str, int] = {}
    for cert in sorted(identities.glob("*/cert.pem")):
        try:
            out[cert.parent.name] = x509.load_pem_x509_certificate(cert.read_bytes()).serial_number
        except (OSError, ValueError):
            continue
    return out


@dataclass
class RenewalWatch:
    """Polls ``identities`` (the CA's folder of leaves); ``renewals`` holds
    (seconds of load, identity) for each certificate that changed."""

    identities: Path
    now: Callable[[], float]
    renewals: list[tuple[float, str]] = field(default_factory=list)

    async def run(self) -> None:
        seen = await asyncio.to_thread(serials, self.identities)
        while True:
            await asyncio.sleep(POLL_S)
            current = await asyncio.to_thread(serials, self.identities)
            at = self.now()
            for slug, serial in current.items():
                if slug in seen and seen[slug] != serial:
                    self.renewals.append((at, slug))
            seen = current


def summary(
    renewals: Sequence[tuple[float, str]],
    exchanges: Sequence[Exchange],
    fault_at: float | None,
    leaf_lifetime_s: float,
) -> dict[str, Any]:
    """Renewals during the load, and the requests that failed and were over
    before the fault (every failed request, if there was none): one still in
    flight when the region was killed may have failed because of it."""
    before = [(t, s) for t, s in renewals if fault_at is None or t < fault_at]
    failed = [e for e in exchanges if not e.served and (fault_at is None or e.ended < fault_at)]
    return {
        "leaf_lifetime_s": leaf_lifetime_s,
        "renewals": len(renewals),
        "identities": len({s for _, s in renewals}),
        "renewals_before_fault": len(before),
        "identities_before_fault": len({s for _, s in before}),
        "by_identity": dict(sorted(Counter(s for _, s in renewals).items())),
        "failed_before_fault": len(failed),
        "failed_errors": dict(Counter(e.error or f"http_{e.status}" for e in failed)),
    }
