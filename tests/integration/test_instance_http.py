"""The agent's HTTP/1.1 client to instances (meridian.invocation.upstreams.instance_http), on real
sockets: a real aiohttp server for the ordinary exchanges, and scripted raw TCP
servers for what an instance may send that aiohttp never would (chunked and
close-delimited bodies, interim responses, garbage, floods, early closes)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from meridian.invocation.upstreams.instance_http import (
    ConnectFailed,
    InstanceBroken,
    InstanceConnections,
    ResponseTooLarge,
)
from meridian.testing.ports import free_port

LIMIT = 1 << 20


@pytest.fixture
async def echo() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """An aiohttp instance echoing the method, path, query, headers and body it got;
    yields its endpoint and the requests it saw (with the client's port)."""
    seen: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        transport = request.transport
        assert transport is not None
        seen.append(
            {
                "method": request.method,
                "path": request.raw_path,
                "headers": list(request.headers.items()),
                "body": body,
                "peer": transport.get_extra_info("peername")[1],
            }
        )
        if request.path == "/slow":
            await asyncio.sleep(5)
        if request.path == "/big":
            return web.Response(body=b"b" * 5000)
        return web.Response(body=b"echo:" + body, headers={"X-Seen": request.method})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"127.0.0.1:{port}", seen
    await runner.cleanup()


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[Script], Awaitable[str]]]:
    """Start a raw TCP server running ``script`` per connection; gives its endpoint."""
    servers: list[asyncio.Server] = []

    async def start(script: Script) -> str:
        server = await asyncio.start_server(script, "127.0.0.1", 0)
        servers.append(server)
        return f"127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":", 1)[1]))
    return head


def respond(*chunks: bytes, close: bool = False) -> Script:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await _read_request(reader)
                for chunk in chunks:
                    writer.write(chunk)
                    await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    return script


async def test_a_post_passes_method_path_query_headers_and_body_and_reuses_the_connection(
    echo: tuple[str, list[dict[str, Any]]],
) -> None:
    endpoint, seen = echo
    pool = InstanceConnections()
    try:
        for i in range(3):
            resp = await pool.request(
                endpoint, "POST", f"/orders/{i}?x=1&y=%20", [("X-Test", "v")], b"hello",
                timeout_s=5, max_body=LIMIT,
            )  # fmt: skip
            assert (resp.status, resp.body) == (200, b"echo:hello")
            assert ("X-Seen", "POST") in resp.headers
            names = {k.lower() for k, _ in resp.headers}
            assert "content-length" not in names  # this hop's framing is not passed on
        assert [s["path"] for s in seen] == ["/orders/0?x=1&y=%20", "/orders/1?x=1&y=%20",
                                             "/orders/2?x=1&y=%20"]  # fmt: skip
        assert all(("X-Test", "v") in s["headers"] for s in seen)
        assert ("Host", endpoint) in seen[0]["headers"]
        assert len({s["peer"] for s in seen}) == 1, "one keep-alive connection for all three"
        assert pool.idle(endpoint) == 1
    finally:
        pool.close()


async def test_hop_by_hop_headers_from_the_caller_are_not_sent(
    echo: tuple[str, list[dict[str, Any]]],
) -> None:
    """A caller's framing headers could smuggle a second request: the client writes
    its own Host and Content-Length and drops the caller's."""
    endpoint, seen = echo
    pool = InstanceConnections()
    hostile = [
        ("Content-Length", "0"),
        ("Transfer-Encoding", "chunked"),
        ("Host", "evil.example"),
        ("Connection", "close"),
    ]
    resp = await pool.request(
        endpoint, "POST", "/x", hostile, b"GET /admin HTTP/1.1\r\n\r\n", timeout_s=5, max_body=LIMIT
    )
    pool.close()
    assert resp.body == b"echo:GET /admin HTTP/1.1\r\n\r\n"
    assert len(seen) == 1, "the body stayed a body"
    names = [k.lower() for k, _ in seen[0]["headers"]]
    assert "transfer-encoding" not in names and "connection" not in names
    assert ("Host", endpoint) in seen[0]["headers"]


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        ("/a b", []),
        ("/a\r\nX: y", []),
        ("/ok", [("X-A", "v\r\nInjected: 1")]),
        ("/ok", [("X-A\n", "v")]),
        ("/ok", [("X-A", "v\0")]),
    ],
)
async def test_a_request_that_would_split_is_refused_before_anything_is_sent(
    target: str, headers: list[tuple[str, str]], echo: tuple[str, list[dict[str, Any]]]
) -> None:
    endpoint, seen = echo
    pool = InstanceConnections()
    with pytest.raises(ValueError, match=r"CR, LF|space"):
        await pool.request(endpoint, "GET", target, headers, b"", timeout_s=5, max_body=LIMIT)
    assert seen == []


async def test_nothing_listening_is_connect_failed(echo: Any) -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(ConnectFailed):
        await InstanceConnections().request(
            f"127.0.0.1:{port}", "GET", "/", [], b"", timeout_s=5, max_body=LIMIT
        )


async def test_a_slow_instance_times_out_and_its_connection_is_not_reused(
    echo: tuple[str, list[dict[str, Any]]],
) -> None:
    endpoint, seen = echo
    pool = InstanceConnections()
    with pytest.raises(TimeoutError):
        await pool.request(endpoint, "GET", "/slow", [], b"", timeout_s=0.2, max_body=LIMIT)
    assert pool.idle(endpoint) == 0
    resp = await pool.request(endpoint, "GET", "/fast", [], b"", timeout_s=5, max_body=LIMIT)
    pool.close()
    assert resp.status == 200
    assert seen[0]["peer"] != seen[1]["peer"]


async def test_a_body_over_the_limit_fails_and_drops_the_connection(
    echo: tuple[str, list[dict[str, Any]]],
) -> None:
    endpoint, _ = echo
    pool = InstanceConnections()
    with pytest.raises(ResponseTooLarge, match="more than 4096 bytes"):
        await pool.request(endpoint, "GET", "/big", [], b"", timeout_s=5, max_body=4096)
    assert pool.idle(endpoint) == 0
    assert (await pool.request(endpoint, "GET", "/big", [], b"", timeout_s=5, max_body=8192)).body
    pool.close()


async def test_cancelling_a_call_closes_its_connection(
    echo: tuple[str, list[dict[str, Any]]],
) -> None:
    endpoint, _ = echo
    pool = InstanceConnections()
    task = asyncio.create_task(
        pool.request(endpoint, "GET", "/slow", [], b"", timeout_s=10, max_body=LIMIT)
    )
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.idle(endpoint) == 0


async def test_a_chunked_response_with_an_interim_100_is_read_whole(scripted: Any) -> None:
    endpoint = await scripted(
        respond(
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n",
            b"5\r\nhello\r\n",
            b"6\r\n world\r\n0\r\n\r\n",
        )
    )
    pool = InstanceConnections()
    for _ in range(2):
        resp = await pool.request(endpoint, "POST", "/", [], b"x", timeout_s=5, max_body=LIMIT)
        assert (resp.status, resp.body) == (201, b"hello world")
        assert resp.headers == [("X-A", "1")]
    assert pool.idle(endpoint) == 1
    pool.close()


async def test_a_body_delimited_by_the_close_is_read_to_the_end(scripted: Any) -> None:
    endpoint = await scripted(
        respond(b"HTTP/1.1 200 OK\r\n\r\npart one, ", b"part two", close=True)
    )
    pool = InstanceConnections()
    resp = await pool.request(endpoint, "GET", "/", [], b"", timeout_s=5, max_body=LIMIT)
    assert resp.body == b"part one, part two"
    assert pool.idle(endpoint) == 0


async def test_head_204_and_304_have_no_body(scripted: Any) -> None:
    pool = InstanceConnections()
    head = await scripted(respond(b"HTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n"))
    resp = await pool.request(head, "HEAD", "/", [], b"", timeout_s=5, max_body=LIMIT)
    assert (resp.status, resp.body) == (200, b"")
    for status in (b"204 No Content", b"304 Not Modified"):
        endpoint = await scripted(respond(b"HTTP/1.1 " + status + b"\r\n\r\n"))
        for _ in range(2):
            resp = await pool.request(endpoint, "GET", "/", [], b"", timeout_s=5, max_body=LIMIT)
            assert resp.body == b""
        assert pool.idle(endpoint) == 1
    pool.close()


@pytest.mark.parametrize(
    ("chunks", "error"),
    [
        ((b"NOT HTTP AT ALL\r\n\r\n",), "malformed response"),
        ((b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",), "closed the connection"),
        ((b"HTTP/1.1 200 OK\r\n" + b"X-Flood: 1\r\n" * 101 + b"\r\n",), "more than 100 headers"),
        ((b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n",), "bytes of them"),
        ((b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",),
         "switched protocols|closed the connection"),
        ((b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",),
         "malformed response"),
    ],
)  # fmt: skip
async def test_a_hostile_or_broken_instance_fails_the_call_cleanly(
    chunks: tuple[bytes, ...], error: str, scripted: Any
) -> None:
    endpoint = await scripted(respond(*chunks, close=True))
    pool = InstanceConnections()
    with pytest.raises(InstanceBroken, match=error):
        await pool.request(endpoint, "GET", "/", [], b"", timeout_s=5, max_body=LIMIT)
    assert pool.idle(endpoint) == 0


async def test_an_instance_answering_twice_to_one_request_loses_the_connection(
    scripted: Any,
) -> None:
    endpoint = await scripted(
        respond(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb"
        )
    )
    pool = InstanceConnections()
    resp = await pool.request(endpoint, "GET", "/", [], b"", timeout_s=5, max_body=LIMIT)
    assert resp.body == b"a"
    await asyncio.sleep(0.1)
    assert pool.idle(endpoint) == 0, "the connection that got a second answer is not reused"
    resp = await pool.request(endpoint, "GET", "/", [], b"", timeout_s=5, max_body=LIMIT)
    assert resp.body == b"a"
    pool.close()


async def test_an_idle_connection_the_instance_closed_is_not_reused(scripted: Any) -> None:
    """An instance that closes keep-alive connections once idle: the pool drops the
    connection when the close arrives, and the next call opens a new one."""
    peers: list[int] = []

    async def one_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer.get_extra_info("peername")[1])
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.close()

    endpoint = await scripted(one_then_close)
    pool = InstanceConnections()
    await pool.request(endpoint, "GET", "/", [], b"", timeout_s=5, max_body=LIMIT)
    assert pool.idle(endpoint) == 1
    await asyncio.sleep(0.5)
    assert pool.idle(endpoint) == 0
    resp = await pool.request(endpoint, "GET", "/", [], b"", timeout_s=5, max_body=LIMIT)
    assert resp.body == b"ok"
    assert len(set(peers)) == 2
    pool.close()


async def test_idle_connections_older_than_the_keepalive_are_closed_not_reused(
    echo: tuple[str, list[dict[str, Any]]],
) -> None:
    endpoint, seen = echo
    pool = InstanceConnections(keepalive_s=0.2)
    await pool.request(endpoint, "GET", "/", [], b"", timeout_s=5, max_body=LIMIT)
    await asyncio.sleep(0.3)
    await pool.request(endpoint, "GET", "/", [], b"", timeout_s=5, max_body=LIMIT)
    assert seen[0]["peer"] != seen[1]["peer"]
    pool.forget(endpoint)
    assert pool.idle(endpoint) == 0


async def test_concurrent_calls_each_get_their_own_response(
    echo: tuple[str, list[dict[str, Any]]],
) -> None:
    endpoint, _ = echo
    pool = InstanceConnections()

    async def one(i: int) -> bytes:
        resp = await pool.request(
            endpoint, "POST", "/c", [], str(i).encode(), timeout_s=5, max_body=LIMIT
        )
        return resp.body

    for _ in range(3):
        bodies = await asyncio.gather(*(one(i) for i in range(50)))
        assert bodies == [f"echo:{i}".encode() for i in range(50)]
    assert 1 <= pool.idle(endpoint) <= 50
    pool.close()
