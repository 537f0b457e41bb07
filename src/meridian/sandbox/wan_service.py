"""The WAN emulator process of the sandbox: proxies for every inter-region link,
plus the control API, until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal

from meridian.backbone.topology import wan_proxies
from meridian.config import MeridianConfig
from meridian.sandbox.wan import LatencyMatrix, ProxySpec, WanEmulator
from meridian.sandbox.wan_control import WanControlServer

log = logging.getLogger(__name__)


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
