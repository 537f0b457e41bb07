"""Take the inventory ``meridian residency check`` judges (:mod:`.model`).

Two sources, both read-only:

- each server's monitoring endpoint: ``/varz`` gives its name, its
  ``region:<name>`` tag and its cluster; ``/jsz?accounts=true&streams=true&config=true``
  the stream replicas it stores, with their bytes, messages and metadata;
- JetStream, for event streams only: ``stream_info(name, subjects_filter=…)``
  counts each resident topic's messages on the streams of servers outside its
  residency (:func:`meridian.residency.model.topic_filters`).

A ``stream_info`` answer comes from the stream's leader, not from the replica
on the server being judged. That is enough here: a stream's replicas are all
placed in one cluster, so a message the leader counts is on every replica,
wherever it is, once the followers have caught up; and in the sandbox event
streams have one replica. The count is also the one of the operator's account
(``security.client_tls_dir``, as the agents' data is), and it is at least
what it says when a topic spans more distinct subjects than JetStream lists
in one answer (100,000): the verdict, any message at all, is unaffected.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ssl
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

import aiohttp
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js.client import JetStreamContext

from meridian.backbone.connection import connect_once
from meridian.backbone.topology import build_topology
from meridian.config import MeridianConfig
from meridian.core.errors import FieldViolation, InvalidArgumentError, UnavailableError
from meridian.core.redact import redact
from meridian.residency.model import (
    Inventory,
    Judgement,
    MonitorAnswerError,
    Rules,
    Server,
    StoredStream,
    decode_json,
    judge,
    parse_jsz,
    parse_varz,
    topic_filters,
    topics_to_count,
)

#: Accounts one /jsz answer details (nats-server's default is 1024); more is refused.
JSZ_ACCOUNT_LIMIT = 100_000
JSZ_QUERY = f"accounts=true&streams=true&config=true&limit={JSZ_ACCOUNT_LIMIT}"
#: A /jsz answer with every stream's configuration is some 2 KB per stream;
#: beyond this the answer is refused rather than held in memory.
MAX_ANSWER_BYTES = 64 << 20
DEFAULT_TIMEOUT_S = 10.0


def monitor_url(url: str) -> str:
    """``url`` checked as a monitoring endpoint (``http[s]://host:port``, no
    path), without a trailing ``/``. Raises :class:`InvalidArgumentError`."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or port is None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        raise InvalidArgumentError(
            FieldViolation(
                "--monitor",
                "must be a server's monitoring endpoint, http[s]://HOST:PORT with no path; "
                f"got {redact(url)!r:.120}",
            )
        )
    return url.rstrip("/")


def monitor_urls(config: MeridianConfig) -> list[str]:
    """Where the servers of ``config`` are monitored: both servers of each
    sandbox region (its own and its member of ``global``), and the configured
    ``monitor_url`` of each region that names its own NATS servers."""
    sandbox = {r.name for r in config.regions if not r.nats_urls}
    urls = [s.monitor_url for s in build_topology(config) if s.region in sandbox]
    urls += [r.monitor_url for r in config.regions if r.nats_urls and r.monitor_url]
    return list(dict.fromkeys(urls))


async def _get(session: aiohttp.ClientSession, url: str, tls: ssl.SSLContext | None) -> object:
    """The JSON ``url`` answers, read up to :data:`MAX_ANSWER_BYTES`."""
    # An https endpoint is verified against the operator's CA bundle when there
    # is one, else the system's; plain http ignores the setting.
    async with session.get(url, ssl=tls or True) as resp:
        if resp.status != 200:
            raise UnavailableError(f"{redact(url)} answered HTTP {resp.status}")
        body = bytearray()
        async for chunk in resp.content.iter_chunked(1 << 16):
            body += chunk
            if len(body) > MAX_ANSWER_BYTES:
                raise MonitorAnswerError(
                    redact(url), "(answer)", f"is larger than {MAX_ANSWER_BYTES} bytes"
                )
    return decode_json(bytes(body), redact(url))


async def read_server(
    session: aiohttp.ClientSession, url: str, tls: ssl.SSLContext | None
) -> tuple[Server, list[StoredStream]]:
    """One server, and the stream replicas it stores."""
    server = parse_varz(await _get(session, f"{url}/varz", tls), redact(url))
    streams = parse_jsz(await _get(session, f"{url}/jsz?{JSZ_QUERY}", tls), server)
    return server, streams


async def read_servers(
    urls: Sequence[str], *, tls: ssl.SSLContext | None, timeout_s: float = DEFAULT_TIMEOUT_S
) -> list[tuple[Server, list[StoredStream]]]:
    """Every server at ``urls``, asked at once. Raises :class:`UnavailableError`
    naming each one that could not be reached or read."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        answers = await asyncio.gather(
            *(read_server(session, url, tls) for url in urls), return_exceptions=True
        )
    failures: list[str] = []
    out: list[tuple[Server, list[StoredStream]]] = []
    for url, answer in zip(urls, answers, strict=True):
        if isinstance(answer, UnavailableError):  # MonitorAnswerError too
            failures.append(answer.message)
        elif isinstance(answer, (aiohttp.ClientError, OSError, TimeoutError)):
            reason = f"{answer}" or "no answer"
            failures.append(f"{redact(url)}: {type(answer).__name__}: {reason}")
        elif isinstance(answer, BaseException):
            raise answer
        else:
            out.append(answer)
    if failures:
        raise UnavailableError(
            f"cannot read {len(failures)} of {len(urls)} server(s):\n  " + "\n  ".join(failures)
        )
    return out


class _Connections:
    """One NATS connection per region, opened when first needed; a region with
    no configured servers is asked through the first region's."""

    def __init__(
        self, servers: Mapping[str, Sequence[str]], tls: ssl.SSLContext | None, timeout_s: float
    ) -> None:
        if not servers:
            raise InvalidArgumentError(
                FieldViolation("region", "counting events needs at least one region's NATS servers")
            )
        self._servers = servers
        self._tls = tls
        self._timeout_s = timeout_s
        self._open: dict[str, Client] = {}

    async def js(self, region: str) -> tuple[str, JetStreamContext]:
        if region not in self._servers:
            region = next(iter(self._servers))
        if region not in self._open:
            urls = list(self._servers[region])
            try:
                self._open[region] = await connect_once(
                    urls, tls=self._tls, timeout_s=self._timeout_s
                )
            except (nats.errors.Error, OSError, TimeoutError) as exc:
                raise UnavailableError(
                    f"cannot connect to {region}'s NATS servers "
                    f"({redact(', '.join(urls))}): {type(exc).__name__}: {exc}"
                ) from exc
        return region, self._open[region].jetstream(timeout=self._timeout_s)

    async def aclose(self) -> None:
        while self._open:
            _, nc = self._open.popitem()
            with contextlib.suppress(nats.errors.Error, OSError):
                await nc.close()


async def _count(js: JetStreamContext, stream: str, topic: str) -> int:
    total = 0
    for subjects in topic_filters(topic):
        try:
            info = await js.stream_info(stream, subjects_filter=subjects)
        except nats.js.errors.NotFoundError:
            # Deleted since the server listed it: it stores nothing now.
            return 0
        total += sum((info.state.subjects or {}).values())
    return total


async def count_topics(
    streams: Sequence[StoredStream],
    rules: Rules,
    *,
    nats_servers: Mapping[str, Sequence[str]],
    tls: ssl.SSLContext | None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> list[StoredStream]:
    """``streams`` with :attr:`StoredStream.topic_messages` filled in where the
    judgement needs it. A stream held by several servers is counted once.
    Raises :class:`UnavailableError` when JetStream cannot be asked."""
    if not any(topics_to_count(s, rules) for s in streams):
        return list(streams)
    conns = _Connections(nats_servers, tls, timeout_s)
    counted: dict[tuple[str, str], int] = {}
    out: list[StoredStream] = []
    try:
        for s in streams:
            topics = topics_to_count(s, rules)
            if not topics:
                out.append(s)
                continue
            via, js = await conns.js(s.region)
            for topic in topics:
                if (s.stream, topic) not in counted:
                    try:
                        counted[(s.stream, topic)] = await _count(js, s.stream, topic)
                    except (nats.errors.Error, OSError, TimeoutError) as exc:
                        raise UnavailableError(
                            f"cannot count topic {topic} on stream {s.stream} through {via}'s "
                            f"NATS servers: {type(exc).__name__}: {exc}"
                        ) from exc
            out.append(
                dataclasses.replace(s, topic_messages={t: counted[(s.stream, t)] for t in topics})
            )
    finally:
        await conns.aclose()
    return out


async def take_inventory(
    urls: Sequence[str],
    rules: Rules,
    *,
    nats_servers: Mapping[str, Sequence[str]],
    tls: ssl.SSLContext | None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Inventory:
    """Every server at ``urls`` and every stream replica it stores, with the
    topic counts ``rules`` need. ``nats_servers`` maps a region to the NATS
    URLs to count through (a region missing from it uses the first entry).
    Raises :class:`UnavailableError` (a server or JetStream unreachable, an
    answer unreadable)."""
    answers = await read_servers(urls, tls=tls, timeout_s=timeout_s)
    servers = tuple(server for server, _ in answers)
    streams = [s for _, listed in answers for s in listed]
    streams = await count_topics(
        streams, rules, nats_servers=nats_servers, tls=tls, timeout_s=timeout_s
    )
    return Inventory(servers, tuple(streams))


async def check_config(
    config: MeridianConfig,
    *,
    urls: Sequence[str] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> tuple[Inventory, Judgement]:
    """The inventory of the servers at ``urls`` (the configuration's by default)
    judged by the configuration's residencies: what `meridian residency check`
    and the chaos harness's residency checker run."""
    from meridian.security.pki import client_ssl

    chosen = list(dict.fromkeys(urls or monitor_urls(config)))
    if not chosen:
        raise InvalidArgumentError(
            FieldViolation(
                "monitor",
                "no server to ask: the configuration's regions name no monitor_url; "
                "give --monitor URL for every server",
            )
        )
    rules = Rules.of(config.keyspaces, config.topics)
    inventory = await take_inventory(
        chosen,
        rules,
        nats_servers={r.name: r.agent_nats_urls for r in config.regions},
        tls=client_ssl(config),
        timeout_s=timeout_s,
    )
    return inventory, judge(inventory, rules)
