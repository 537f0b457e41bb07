"""What one demo run does: its options, its sandbox configuration, its ports.

A run has its own working directory (``.meridian/demo-<base port>`` by default)
holding the generated ``meridian.toml``, the sandbox (NATS data, logs), the
services' logs, and the state file of the services it started.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from meridian.config.model import DEFAULT_LINKS, DEFAULT_REGIONS, REGION_PORT_STRIDE

DEFAULT_BASE_PORT = 14000
#: Offsets of the example services' HTTP ports inside a region's block of ports
#: (the agent and NATS use offsets 0..21, see meridian.config.model.PORT_OFFSETS).
ORDERS_PORT_OFFSET = 50
INVENTORY_PORT_OFFSET = 51
#: The rollout's second version of orders, beside the first.
ORDERS_V2_PORT_OFFSET = 52
#: The version the orders example registers by default, and the rollout's.
STABLE_VERSION = "1.0.0"
NEW_VERSION = "2.0.0"

#: The keyspaces the example services need (both READMEs): orders and stock
#: change only through a quorum of regions, so no region's loss loses them.
KEYSPACES = ("orders", "inventory")


@dataclass(frozen=True)
class DemoOptions:
    """One run's settings. ``quick()`` is the shortened scenario the tests run."""

    base_port: int = DEFAULT_BASE_PORT
    #: Seconds of load. The load goes on past this while the killed region heals,
    #: so the report also shows its clients back home.
    duration_s: float = 60.0
    clients_per_region: int = 4
    skus: int = 5
    #: Units seeded per SKU. Picked so the best seller runs out in the second half of
    #: the run and later orders for it are refused for stock: 12 shoppers placed
    #: 230-350 orders in 60 s on a busy 2-core machine, 44 % of them for sku-1 at
    #: 2 units on average, so sku-1 sees 200-310 units of demand.
    stock_per_sku: int = 120
    kill_region: str = "eu-west"
    #: When the region is killed, as a fraction of ``duration_s``.
    kill_at: float = 0.5
    #: How long the region stays dead before it is brought back.
    outage_s: float = 8.0
    #: Load after the healed region is back, to show its clients served there again.
    after_heal_s: float = 5.0
    #: How long to wait for the three read models to agree with the store.
    converge_timeout_s: float = 120.0
    #: How long clients keep re-sending requests whose outcome is unknown after the load.
    settle_timeout_s: float = 45.0
    #: Lifetime of every certificate the run's sandbox issues: renewed at half
    #: of it, so each identity's certificate rotates several times under load.
    leaf_lifetime_s: float = 20.0
    keep: bool = False
    seed: int = 1
    workdir: Path = field(default_factory=lambda: Path(f".meridian/demo-{DEFAULT_BASE_PORT}"))
    report_json: Path | None = None
    orders_bin: Path | None = None
    inventory_bin: Path | None = None
    #: Seconds between running counter lines.
    progress_every_s: float = 5.0
    #: After the heal: roll out a faulty orders v2 canary-first in this region
    #: (rolled back there by its analysis), then a good one to every region.
    rollout_region: str = "ap-south"
    rollout: bool = True
    #: The share of new orders the faulty v2 fails.
    bad_fail_percent: int = 30
    #: Seconds between two measurements of the rollout's analysis.
    analysis_interval_s: float = 5.0

    @classmethod
    def quick(cls, **overrides: object) -> DemoOptions:
        """About 15 s of load with fewer clients and less stock, for tests."""
        base = cls(
            duration_s=15.0,
            clients_per_region=2,
            stock_per_sku=30,
            outage_s=3.0,
            after_heal_s=3.0,
            converge_timeout_s=90.0,
            settle_timeout_s=40.0,
            progress_every_s=3.0,
            leaf_lifetime_s=8.0,
            analysis_interval_s=4.0,
        )
        return replace(base, **overrides)  # type: ignore[arg-type]

    @property
    def regions(self) -> tuple[str, ...]:
        return DEFAULT_REGIONS

    @property
    def config_path(self) -> Path:
        return self.workdir / "meridian.toml"

    @property
    def sku_names(self) -> tuple[str, ...]:
        return tuple(f"sku-{i}" for i in range(1, self.skus + 1))

    def service_port(self, service: str, region: str) -> int:
        """The HTTP port of ``service`` ("orders", "orders-v2" or "inventory") in ``region``."""
        offset = {"orders": ORDERS_PORT_OFFSET, "orders-v2": ORDERS_V2_PORT_OFFSET}.get(
            service, INVENTORY_PORT_OFFSET
        )
        return self.base_port + self.regions.index(region) * REGION_PORT_STRIDE + offset

    def config_text(self) -> str:
        """The run's sandbox configuration: the default three regions and WAN, the
        keyspaces of the example services, and the faster detection the e2e tests use
        (so failover shows up in seconds, not tens of seconds)."""
        sandbox_dir = (self.workdir / "sandbox").resolve()
        lines = [
            "# Generated by `meridian demo run`; see meridian.demo.options.",
            "[sandbox]",
            f'workdir = "{sandbox_dir}"',
            f"base_port = {self.base_port}",
            "ready_timeout_s = 240",
            "",
            "[agent]",
            "status_interval_s = 0.5",
            "peer_timeout_s = 1.0",
            "quorum_timeout_s = 2.0",
            "",
            "# Short-lived certificates: every identity's is renewed (at half its",
            "# lifetime) several times while the shoppers shop; the report counts them.",
            "[security]",
            f"leaf_lifetime_s = {self.leaf_lifetime_s:g}",
            "",
            "[idempotency]",
            "# A command whose holder died (a killed region) may be taken over after 10 s.",
            "default_lease_s = 10",
            "",
            "[invocation]",
            "announce_interval_s = 0.5",
            "stale_after_s = 3.0",
            "",
            "# While the global cluster elects new leaders after the kill, orders answers",
            "# 503 for a few seconds in every region; a short cooldown lets the breakers",
            "# find out soon after that it works again.",
            "[resilience.service.orders]",
            "breaker.open_cooldown_s = 1.0",
            "",
            "[wan]",
            "jitter_ms = 1.0",
        ]
        for a, b, ms in DEFAULT_LINKS:
            lines += ["", "[[wan.link]]", f'a = "{a}"', f'b = "{b}"', f"latency_ms = {ms:g}"]
        for name in self.regions:
            lines += ["", "[[region]]", f'name = "{name}"']
        for name in KEYSPACES:
            lines += ["", "[[keyspace]]", f'name = "{name}"', 'locality = "global"']
        return "\n".join(lines) + "\n"
