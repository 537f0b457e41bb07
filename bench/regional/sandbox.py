"""The regional bench's sandbox and the run around its measurements.

:class:`RegionalSandbox` is the benchmark sandbox of :mod:`bench.state.sandbox`
(three regions, the default WAN matrix, the real CLI, a temporary workdir) with
its own configuration: mutual TLS, the security mode a deployment runs, a
``regional`` keyspace allowed in us-east and eu-west, and a ``global`` one for
context. :func:`bench.common.drive` brings it up (``sandbox=RegionalSandbox``).
"""

from __future__ import annotations

from pathlib import Path

from bench.state.sandbox import LINKS, REGIONS, BenchSandbox
from meridian.config import load_config
from meridian.core.keyspace import Keyspace

GLOBAL_KEYSPACE = "bench"
REGIONAL_KEYSPACE = "profiles"
RESIDENCY = ("us-east", "eu-west")


def config_text(base_port: int) -> str:
    links = "".join(
        f'\n[[wan.link]]\na = "{a}"\nb = "{b}"\nlatency_ms = {ms}\n' for a, b, ms in LINKS
    )
    regions = "".join(f'\n[[region]]\nname = "{r}"\n' for r in REGIONS)
    residency = ", ".join(f'"{r}"' for r in RESIDENCY)
    return (
        f'[sandbox]\nworkdir = "sandbox"\nbase_port = {base_port}\n'
        f"\n[wan]\njitter_ms = 1.0\n{links}{regions}"
        f'\n[[keyspace]]\nname = "{GLOBAL_KEYSPACE}"\nlocality = "global"\n'
        f'\n[[keyspace]]\nname = "{REGIONAL_KEYSPACE}"\nlocality = "regional"\n'
        f"residency = [{residency}]\n"
        # The default, written out: agents, NATS client ports, routes and gateways.
        '\n[security]\nmode = "mtls"\n'
    )


class RegionalSandbox(BenchSandbox):
    """The bench sandbox with mutual TLS and a ``regional`` keyspace."""

    def __init__(self, base_port: int) -> None:
        super().__init__(base_port)
        self.config_path.write_text(config_text(base_port))
        self.config = load_config(self.config_path, env={})
        self.keyspace = self._declared(GLOBAL_KEYSPACE)
        self.regional: Keyspace = self._declared(REGIONAL_KEYSPACE)
        assert self.config.security.tls and self.config.client_tls_dir is not None
        #: The CLI's identity (operator/meridian), issued by ``sandbox up``.
        self.operator: Path = self.config.client_tls_dir
