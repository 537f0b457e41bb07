"""The WAN emulator process of the sandbox: proxies for every inter-region link,
plus the control API, until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal

from meridian.backbone.topology import ProxyTarget, wan_proxies
from meridian.config import MeridianConfig
from meridian.sandbox.wan import LatencyMatrix, ProxySpec, WanEmulator
from meridian.sandbox.wan_control import WanControlServer
from meridian.sandbox.wan_tls import ProxyTls
from meridian.security.model import Identity, Kind
from meridian.security.tls import TlsFiles

log = logging.getLogger(__name__)


def _link_tls(config: MeridianConfig, target: ProxyTarget) -> ProxyTls | None:
    """Mutual TLS on a link when the sandbox runs it (sandbox/wan_tls.py)."""
    if not config.security.tls:
        return None
    td = config.security.trust_domain

    def files(server: str) -> TlsFiles:
        return TlsFiles.in_folder(config.identity_dir(f"nats-{server}"))

    return ProxyTls(
        upstream=Identity(td, Kind.NATS, target.upstream_server),
        upstream_files=files(target.upstream_server),
        sources={Identity(td, Kind.NATS, s).uri: files(s) for s in target.source_servers},
    )


def build_emulator(config: MeridianConfig) -> WanEmulator:
    """The emulator for ``config``'s topology, with its configured latency matrix."""
    matrix = LatencyMatrix(
        config.region_names,
        {(link.src, link.dst): link.latency_ms for link in config.wan.links},
        {(link.src, link.dst): link.jitter_ms for link in config.wan.links},
    )
    proxies = [
        ProxySpec(
            name=p.name,
            src=p.src,
            dst=p.dst,
            listen_port=p.listen_port,
            upstream_host="127.0.0.1",
            upstream_port=p.upstream_port,
            strip_gossip=True,
            tls=_link_tls(config, p),
        )
        for p in wan_proxies(config)
    ]
    return WanEmulator(matrix, proxies)


async def serve_wan(config: MeridianConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with (
        build_emulator(config) as emulator,
        WanControlServer(emulator, port=config.wan.control_port),
    ):
        log.info("WAN emulator serving", extra={"control": config.wan.control_url})
        await stop.wait()
    log.info("WAN emulator stopped")
