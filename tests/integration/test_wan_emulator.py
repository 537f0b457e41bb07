"""The WAN emulator and its control API, over real sockets on 127.0.0.1.

The upstream is an in-process asyncio echo server that records when each read
arrives (on the same ``perf_counter`` clock as the test) and can push bytes to
its clients, so both directions of a proxy can be observed.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import statistics
import struct
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest

from meridian.sandbox.wan import LatencyMatrix, ProxySpec, WanArgumentError, WanEmulator
from meridian.sandbox.wan_control import MAX_BODY_BYTES, WanClient, WanControlServer
from meridian.testing.ports import free_port

pytestmark = pytest.mark.timeout(60)

REGIONS = ("us-east", "eu-west", "ap-south")
UE_EW = "route:us-east->eu-west"
UE_AS = "route:us-east->ap-south"
EW_AS = "gateway:eu-west->ap-south"
PING = 64


class EchoUpstream:
    """Echo server. Records (time, size) of every read; ``push`` writes to every client."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, int]] = []
        self.received = bytearray()
        self.eofs = 0
        self.accepted = 0
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._echo, "127.0.0.1", 0)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in self._writers:
                writer.transport.abort()
            await self._server.wait_closed()
            self._server = None

    async def push(self, data: bytes) -> None:
        for writer in self._writers:
            if not writer.is_closing():
                writer.write(data)
                await writer.drain()

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.append(writer)
        try:
            while data := await reader.read(65536):
                self.arrivals.append((time.perf_counter(), len(data)))
                self.received += data
                writer.write(data)
                await writer.drain()
            self.eofs += 1
        except OSError:
            pass
        finally:
            writer.close()


@pytest.fixture
async def upstream() -> AsyncIterator[EchoUpstream]:
    server = EchoUpstream()
    await server.start()
    try:
        yield server
    finally:
        await server.aclose()


@pytest.fixture
async def emulator(upstream: EchoUpstream) -> AsyncIterator[WanEmulator]:
    matrix = LatencyMatrix(REGIONS, {})
    specs = [
        ProxySpec(name, src, dst, 0, "127.0.0.1", upstream.port)
        for name, src, dst in [
            (UE_EW, "us-east", "eu-west"),
            (UE_AS, "us-east", "ap-south"),
            (EW_AS, "eu-west", "ap-south"),
        ]
    ]
    async with WanEmulator(matrix, specs, rng=random.Random(1234)) as emu:
        yield emu


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def connect(emu: WanEmulator, name: str) -> Conn:
    return await asyncio.open_connection("127.0.0.1", emu.bound_port(name))


async def ping(conn: Conn) -> float:
    """Round trip of one 64-byte message, in ms."""
    reader, writer = conn
    payload = bytes(range(PING))
    start = time.perf_counter()
    writer.write(payload)
    await writer.drain()
    echoed = await asyncio.wait_for(reader.readexactly(PING), 10)
    elapsed = (time.perf_counter() - start) * 1000
    assert echoed == payload
    return elapsed


async def wait_until(predicate: Callable[[], bool], what: str) -> None:
    """Poll ``predicate``; 10 s is a generous failure bound, not a speed assertion."""
    deadline = time.monotonic() + 10
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def stats(emu: WanEmulator, name: str) -> dict[str, object]:
    proxies: list[dict[str, object]] = emu.snapshot()["proxies"]  # type: ignore[assignment]
    return next(p for p in proxies if p["name"] == name)


def dropped(emu: WanEmulator, name: str, key: str) -> int:
    value = stats(emu, name)[key]
    assert isinstance(value, int)
    return value


async def assert_closed_by_proxy(reader: asyncio.StreamReader) -> None:
    try:
        data = await asyncio.wait_for(reader.read(1024), 10)
    except ConnectionResetError:
        return
    assert data == b"", f"expected EOF or reset, got {data!r}"


async def assert_silent(reader: asyncio.StreamReader, seconds: float = 0.3) -> None:
    """Nothing arrives for ``seconds`` (a slow machine can only make this pass)."""
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(1), seconds)


def within(measured: float, expected: float) -> bool:
    return abs(measured - expected) <= 0.2 * expected + 2


def close(*conns: Conn) -> None:
    for _, writer in conns:
        writer.transport.abort()


# -- latency ---------------------------------------------------------------------


async def test_rtt_is_the_sum_of_both_one_way_latencies(emulator: WanEmulator) -> None:
    emulator.set_latency("us-east", "eu-west", 35)
    conn = await connect(emulator, UE_EW)
    await ping(conn)  # the first chunk waits for the upstream dial
    rtts = [await ping(conn) for _ in range(15)]
    median = statistics.median(rtts)
    print(f"symmetric 35/35 ms: median RTT {median:.2f} ms over {len(rtts)} pings")
    assert within(median, 70), rtts
    close(conn)


async def test_asymmetric_link_delays_each_direction_by_its_own_latency(
    emulator: WanEmulator, upstream: EchoUpstream
) -> None:
    emulator.set_latency("us-east", "eu-west", 10, one_way=True)
    emulator.set_latency("eu-west", "us-east", 40, one_way=True)
    conn = await connect(emulator, UE_EW)
    await ping(conn)
    ups, downs, rtts = [], [], []
    for _ in range(15):
        upstream.arrivals.clear()
        sent = time.perf_counter()
        rtt = await ping(conn)
        arrived = upstream.arrivals[0][0]
        ups.append((arrived - sent) * 1000)
        downs.append(rtt - ups[-1])
        rtts.append(rtt)
    up, down, rtt = (statistics.median(v) for v in (ups, downs, rtts))
    print(f"asymmetric 10/40 ms: up {up:.2f} ms, down {down:.2f} ms, RTT {rtt:.2f} ms")
    assert within(up, 10), ups
    assert within(down, 40), downs
    assert within(rtt, 50), rtts
    close(conn)


async def test_latency_change_applies_to_later_chunks(emulator: WanEmulator) -> None:
    conn = await connect(emulator, UE_EW)
    await ping(conn)
    emulator.set_latency("eu-west", "us-east", 30)
    rtt = statistics.median([await ping(conn) for _ in range(5)])
    assert within(rtt, 60), rtt
    close(conn)


async def test_jitter_never_reorders_bytes(emulator: WanEmulator) -> None:
    emulator.set_latency("us-east", "eu-west", 20, jitter_ms=15)
    reader, writer = conn = await connect(emulator, UE_EW)
    count = 300

    async def send() -> None:
        for i in range(count):
            writer.write(struct.pack(">I", i))
            await writer.drain()
            await asyncio.sleep(0.001)  # separate chunks, so each gets its own jitter

    sender = asyncio.create_task(send())
    echoed = await asyncio.wait_for(reader.readexactly(4 * count), 30)
    await sender
    assert list(struct.unpack(f">{count}I", echoed)) == list(range(count))
    close(conn)


async def test_bulk_transfer_survives_backpressure_intact(emulator: WanEmulator) -> None:
    emulator.set_latency("us-east", "eu-west", 5, jitter_ms=2)
    reader, writer = conn = await connect(emulator, UE_EW)
    data = random.Random(5).randbytes(8 * 1024 * 1024)

    async def send() -> None:
        for i in range(0, len(data), 100_000):
            writer.write(data[i : i + 100_000])
            await writer.drain()

    sender = asyncio.create_task(send())
    echoed = await asyncio.wait_for(reader.readexactly(len(data)), 50)
    await sender
    assert echoed == data
    assert stats(emulator, UE_EW)["bytes_up"] == len(data)
    await wait_until(lambda: stats(emulator, UE_EW)["bytes_down"] == len(data), "counters")
    close(conn)


# -- partitions ------------------------------------------------------------------


async def test_partition_both_ways_black_holes_then_heal_resets_and_reconnects(
    emulator: WanEmulator, upstream: EchoUpstream
) -> None:
    emulator.set_latency("us-east", "eu-west", 20)
    reader, writer = conn = await connect(emulator, UE_EW)
    await ping(conn)
    received_before = len(upstream.received)

    emulator.partition("eu-west")
    writer.write(b"x" * 100)
    await writer.drain()
    await wait_until(lambda: dropped(emulator, UE_EW, "dropped_up") >= 100, "upstream drop")
    await upstream.push(b"push")
    await wait_until(lambda: dropped(emulator, UE_EW, "dropped_down") >= 4, "downstream drop")
    await assert_silent(reader)
    assert len(upstream.received) == received_before
    assert not reader.at_eof()
    assert stats(emulator, UE_EW)["active_connections"] == 1
    links = emulator.snapshot()["links"]
    assert {(x["src"], x["dst"]) for x in links if x["blocked"]} == {  # type: ignore[attr-defined]
        ("eu-west", "us-east"),
        ("eu-west", "ap-south"),
        ("us-east", "eu-west"),
        ("ap-south", "eu-west"),
    }

    assert emulator.heal() == 1
    await assert_closed_by_proxy(reader)
    await wait_until(lambda: stats(emulator, UE_EW)["active_connections"] == 0, "close")

    fresh = await connect(emulator, UE_EW)
    await ping(fresh)
    rtt = statistics.median([await ping(fresh) for _ in range(5)])
    assert within(rtt, 40), rtt
    assert emulator.heal() == 0  # a clean connection survives a heal
    await ping(fresh)
    close(conn, fresh)


async def test_connection_opened_during_partition_is_held_then_reset_on_heal(
    emulator: WanEmulator, upstream: EchoUpstream
) -> None:
    emulator.partition("us-east", peers=["eu-west"])
    reader, writer = conn = await connect(emulator, UE_EW)
    writer.write(b"CONNECT {}\r\n")
    await writer.drain()
    await wait_until(lambda: dropped(emulator, UE_EW, "dropped_up") >= 12, "held drop")
    await assert_silent(reader)
    assert upstream.accepted == 0
    assert emulator.heal("ap-south") == 0  # unrelated region: still partitioned
    assert emulator.heal("us-east") == 1
    await assert_closed_by_proxy(reader)
    close(conn)


@pytest.mark.parametrize("direction", ["outbound", "inbound"])
async def test_one_way_partition_passes_the_other_direction(
    emulator: WanEmulator, upstream: EchoUpstream, direction: str
) -> None:
    reader, writer = conn = await connect(emulator, UE_EW)
    await ping(conn)
    received_before = len(upstream.received)
    emulator.partition("us-east", peers=["eu-west"], direction=direction)  # type: ignore[arg-type]
    writer.write(b"client-says")
    await writer.drain()
    await upstream.push(b"server-says")
    if direction == "outbound":  # us-east -> eu-west (client -> server) is cut
        await wait_until(lambda: dropped(emulator, UE_EW, "dropped_up") >= 11, "drop")
        assert await asyncio.wait_for(reader.readexactly(11), 10) == b"server-says"
        assert len(upstream.received) == received_before
    else:  # eu-west -> us-east (server -> client) is cut, including the echo
        await wait_until(lambda: len(upstream.received) == received_before + 11, "delivery")
        await wait_until(lambda: dropped(emulator, UE_EW, "dropped_down") >= 22, "drop")
        await assert_silent(reader)
    close(conn)


# -- resets and lifecycle --------------------------------------------------------


async def test_reset_aborts_live_connections_on_matching_links(emulator: WanEmulator) -> None:
    c1, c2 = await connect(emulator, UE_EW), await connect(emulator, UE_AS)
    c3 = await connect(emulator, EW_AS)
    for c in (c1, c2, c3):
        await ping(c)
    assert await emulator.reset("us-east", peer="eu-west") == 1
    await assert_closed_by_proxy(c1[0])
    await ping(c2)
    assert await emulator.reset("ap-south") == 2
    await assert_closed_by_proxy(c2[0])
    await assert_closed_by_proxy(c3[0])
    assert await emulator.reset() == 0
    assert all(p["active_connections"] == 0 for p in emulator.snapshot()["proxies"])  # type: ignore[attr-defined]
    with pytest.raises(WanArgumentError, match="peer: requires region"):
        await emulator.reset(peer="eu-west")
    with pytest.raises(WanArgumentError, match="region: unknown region 'mars'"):
        await emulator.reset("mars")
    close(c1, c2, c3)


async def test_reset_sends_rst(emulator: WanEmulator) -> None:
    conn = await connect(emulator, UE_EW)
    await ping(conn)
    assert await emulator.reset() == 1
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(conn[0].read(1024), 10)
    close(conn)


async def test_client_close_is_passed_on_after_queued_bytes(
    emulator: WanEmulator, upstream: EchoUpstream
) -> None:
    emulator.set_latency("us-east", "eu-west", 30)
    _, writer = await connect(emulator, UE_EW)
    writer.write(b"last words")
    writer.write_eof()
    await wait_until(lambda: upstream.eofs == 1, "upstream EOF")
    assert bytes(upstream.received) == b"last words"
    writer.close()


async def test_aclose_is_idempotent_and_closes_live_connections(upstream: EchoUpstream) -> None:
    spec = ProxySpec(UE_EW, "us-east", "eu-west", 0, "127.0.0.1", upstream.port)
    emu = WanEmulator(LatencyMatrix(REGIONS, {}), [spec])
    await emu.start()
    conn = await connect(emu, UE_EW)
    await ping(conn)
    await emu.aclose()
    await emu.aclose()
    await assert_closed_by_proxy(conn[0])
    with pytest.raises(OSError):
        await connect(emu, UE_EW)
    close(conn)


async def test_bind_failure_names_the_proxy_and_releases_earlier_listeners() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        specs = [
            ProxySpec("first", "us-east", "eu-west", 0, "127.0.0.1", 4222),
            ProxySpec("second", "eu-west", "us-east", port, "127.0.0.1", 4222),
        ]
        emu = WanEmulator(LatencyMatrix(REGIONS, {}), specs)
        with pytest.raises(OSError, match=rf"'second' cannot listen on 127\.0\.0\.1:{port}"):
            await emu.start()
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", emu.bound_port("first"))
        with pytest.raises(RuntimeError):
            await emu.start()


# -- control API -----------------------------------------------------------------


@pytest.fixture
async def control(emulator: WanEmulator) -> AsyncIterator[WanControlServer]:
    async with WanControlServer(emulator, port=0) as server:
        yield server


@pytest.fixture
async def client(control: WanControlServer) -> AsyncIterator[WanClient]:
    async with WanClient(control.url) as c:
        yield c


def link(snapshot: dict[str, object], src: str, dst: str) -> dict[str, object]:
    links: list[dict[str, object]] = snapshot["links"]  # type: ignore[assignment]
    return next(x for x in links if (x["src"], x["dst"]) == (src, dst))


async def test_control_happy_paths(emulator: WanEmulator, client: WanClient) -> None:
    assert await client.snapshot() == emulator.snapshot()

    snap = await client.set_latency("us-east", "eu-west", 50, jitter_ms=2)
    assert link(snap, "eu-west", "us-east")["latency_ms"] == 50
    assert link(snap, "eu-west", "us-east")["jitter_ms"] == 2
    snap = await client.set_latency("ap-south", "us-east", 120, one_way=True)
    assert link(snap, "ap-south", "us-east")["latency_ms"] == 120
    assert link(snap, "us-east", "ap-south")["latency_ms"] == 0
    assert emulator.matrix.latency("ap-south", "us-east") == 120

    snap = await client.partition("ap-south", peers=["eu-west"], direction="outbound")
    assert snap["partitions"] == [{"src": "ap-south", "dst": "eu-west"}]
    assert emulator.partitions.blocked("ap-south", "eu-west")
    assert await client.heal("ap-south") == 0
    assert (await client.snapshot())["partitions"] == []
    await client.partition("us-east")
    assert await client.heal() == 0
    assert not emulator.partitions.blocked("us-east", "eu-west")

    conn = await connect(emulator, UE_EW)
    await ping(conn)
    assert await client.reset("eu-west", peer="us-east") == 1
    await assert_closed_by_proxy(conn[0])
    assert await client.reset() == 0
    close(conn)


LINK = b'"a": "us-east", "b": "eu-west"'


@pytest.mark.parametrize(
    ("path", "body", "field", "rule"),
    [
        ("/v1/wan/latency", b'{"a": "us-east", "b":', "body", "must be valid JSON"),
        ("/v1/wan/latency", b"[1, 2]", "body", "must be a JSON object"),
        ("/v1/wan/partition", b'{"region": "us-east", "colour": "red"}', "colour", "unknown"),
        ("/v1/wan/latency", b'{"a": "us-east", "b": "mars", "latency_ms": 5}', "b", "mars"),
        ("/v1/wan/latency", b'{%s, "latency_ms": -5}' % LINK, "latency_ms", ">= 0"),
        ("/v1/wan/latency", b'{%s, "latency_ms": "5"}' % LINK, "latency_ms", "number"),
        ("/v1/wan/latency", b'{%s}' % LINK, "latency_ms", "is required"),
        ("/v1/wan/latency", b'{%s, "latency_ms": NaN}' % LINK, "latency_ms", ">= 0"),
        ("/v1/wan/latency", b'{%s, "latency_ms": 5, "one_way": 1}' % LINK, "one_way", "boolean"),
        ("/v1/wan/partition", b'{"region": "ap-south", "peers": "eu-west"}', "peers", "list"),
        ("/v1/wan/partition", b'{"region": "ap-south", "direction": "up"}', "direction", "one of"),
        ("/v1/wan/heal", b'{"region": 3}', "region", "string"),
        ("/v1/wan/reset", b'{"peer": "eu-west"}', "peer", "requires region"),
        ("/v1/wan/partition", b"x" * (MAX_BODY_BYTES + 1), "body", f"at most {MAX_BODY_BYTES}"),
    ],
)  # fmt: skip
async def test_control_rejects_bad_input_with_400_naming_the_field(
    emulator: WanEmulator,
    control: WanControlServer,
    path: str,
    body: bytes,
    field: str,
    rule: str,
) -> None:
    emulator.partition("eu-west", peers=["ap-south"])
    before = emulator.snapshot()
    method = "PUT" if path.endswith("latency") else "POST"
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, control.url + path, data=body) as response,
    ):
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["code"] == "INVALID_ARGUMENT"
    assert error["field"] == field
    assert error["message"].startswith(f"{field}: ")
    assert rule in error["message"]
    assert emulator.snapshot() == before


async def test_control_rejects_oversized_chunked_body(
    emulator: WanEmulator, control: WanControlServer
) -> None:
    before = emulator.snapshot()

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"region": "us-east", "peers": ['
        for _ in range(MAX_BODY_BYTES // 1000 + 1):
            yield json.dumps(["eu-west"] * 100).encode()[1:-1] + b","
        yield b'"eu-west"]}'

    async with (
        aiohttp.ClientSession() as session,
        session.post(control.url + "/v1/wan/partition", data=chunks()) as response,
    ):
        assert response.status == 400
        assert (await response.json())["error"]["field"] == "body"
    assert emulator.snapshot() == before


async def test_client_raises_value_error_with_the_server_message(
    emulator: WanEmulator, client: WanClient
) -> None:
    before = emulator.snapshot()
    with pytest.raises(ValueError, match="a: unknown region 'mars'") as info:
        await client.set_latency("mars", "eu-west", 5)
    assert isinstance(info.value, WanArgumentError)
    assert info.value.field == "a"
    with pytest.raises(ValueError, match=r"latency_ms: must be >= 0"):
        await client.set_latency("us-east", "eu-west", -1)
    with pytest.raises(ValueError, match=r"peers\[0\]: unknown region"):
        await client.partition("us-east", peers=["pluto"])
    assert emulator.snapshot() == before


async def test_client_says_the_emulator_is_not_running() -> None:
    port = free_port()  # nothing listens there
    url = f"http://127.0.0.1:{port}"
    async with WanClient(url) as c:
        with pytest.raises(ConnectionError, match="WAN emulator is not running") as info:
            await c.snapshot()
    assert url in str(info.value)
