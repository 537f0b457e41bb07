"""The HTTP routes as the route table makes them, on a real agent and a real
JetStream cluster: every binding of the contract answers, the older paths
answer exactly as the new ones, and the caller's Meridian-Timeout-Ms reaches
the one invocation entry."""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from meridian.agent.app import Agent
from meridian.config import MeridianConfig
from meridian.testing.nats_server import NatsCluster
from tests.integration.harness import agent_config, http_post, ready_agent

_seq = itertools.count()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@pytest.fixture(scope="module")
def cluster() -> Any:
    with NatsCluster("global") as c:
        yield c


@pytest.fixture
async def agent(cluster: NatsCluster) -> AsyncIterator[tuple[Agent, str]]:
    config: MeridianConfig = agent_config(
        cluster,
        peers=("eu-west",),
        keyspaces=[{"name": "accounts"}],
    )
    async with ready_agent(config, state=True) as agent:
        yield agent, config.region("us-east").http_url


async def test_every_binding_of_the_contract_is_served(agent: tuple[Agent, str]) -> None:
    """An empty request to each path gets the RPC's own answer, never 404 or 405."""
    a, url = agent
    routes = a.transports.http.routes
    bindings = [(r, b) for r in routes for b in r.http]
    assert len(bindings) == 53  # 46 RPCs over HTTP, 7 of them with an older path too
    async with aiohttp.ClientSession() as session:
        for _route, binding in bindings:
            if binding.body:
                resp = await session.post(url + binding.path, json={})
            else:
                resp = await session.get(url + binding.path)
            async with resp:
                body = await resp.json(content_type=None)
            # The RPC's own answer: a response, or its error with a Meridian code (a
            # validation error names the field; this test cluster has no regional
            # cluster, so the event and registry streams answer UNAVAILABLE).
            assert resp.status in (200, 400, 503), (binding.path, resp.status, body)
            if resp.status == 400:
                assert body["error"]["code"] == "INVALID_ARGUMENT", (binding.path, body)
                assert body["error"]["field"], (binding.path, body)
            if resp.status == 503:
                assert body["error"]["code"] == "UNAVAILABLE", (binding.path, body)


async def test_an_older_path_answers_exactly_as_the_new_one(agent: tuple[Agent, str]) -> None:
    _, url = agent
    run = f"alias-{next(_seq)}"
    puts = {
        "puts": [
            {"keyspace": "accounts", "key": f"{run}/{i}", "value": b64(b"v")} for i in range(3)
        ]
    }
    status, old = await http_post(f"{url}/v1/state/putmany", puts)
    assert status == 200 and len(old["results"]) == 3
    status, new = await http_post(f"{url}/v1/state/put-many", puts)
    assert status == 200 and len(new["results"]) == 3
    strong = {"level": "LEVEL_STRONG"}
    keys = {"keyspace": "accounts", "keys": [f"{run}/{i}" for i in range(3)], "consistency": strong}
    _, got_old = await http_post(f"{url}/v1/state/getmany", keys)
    _, got_new = await http_post(f"{url}/v1/state/get-many", keys)
    assert got_old == got_new
    assert [r["response"]["entry"]["revision"] for r in got_new["results"]] == [
        r["written"]["revision"] for r in new["results"]
    ]

    # accounts is not a set keyspace: both spellings give SetAdd's own refusal.
    s = {"keyspace": "accounts", "key": run, "elements": ["a"]}
    for old_path, new_path in (("setadd", "set-add"), ("setremove", "set-remove")):
        old_answer = await http_post(f"{url}/v1/state/{old_path}", s)
        assert old_answer == await http_post(f"{url}/v1/state/{new_path}", s)
        assert old_answer[0] == 400 and old_answer[1]["error"]["field"] == "keyspace"

    _, listed_old = await http_post(f"{url}/v1/registry/list", {})
    _, listed_new = await http_post(f"{url}/v1/registry/list-instances", {})
    assert listed_old == listed_new

    gone = {"group": "nobody", "topicFilter": "x.*"}
    old_status, old_body = await http_post(f"{url}/v1/events/push/unregister", gone)
    new_status, new_body = await http_post(f"{url}/v1/events/unregister-push", gone)
    assert (old_status, old_body) == (new_status, new_body)


async def test_query_parameters_are_checked_per_field(agent: tuple[Agent, str]) -> None:
    _, url = agent
    async with aiohttp.ClientSession() as session:
        # A parameter that names no field is ignored, as before.
        async with session.get(f"{url}/v1/status", params={"verbose": "1"}) as resp:
            assert resp.status == 200
            assert (await resp.json())["status"]["region"] == "us-east"
        async with session.get(
            f"{url}/v1/state/watch", params={"keyspace": "accounts", "fromRevision": "x"}
        ) as resp:
            body = await resp.json()
        assert resp.status == 400 and body["error"]["field"] == "fromRevision", body
        async with session.get(
            f"{url}/v1/state/watch",
            params={"keyspace": "accounts"},
            headers={"Last-Event-ID": "not-a-revision"},
        ) as resp:
            body = await resp.json()
        assert resp.status == 400 and body["error"]["field"] == "Last-Event-ID", body


async def test_invoke_over_json_takes_its_timeout_from_the_request_headers(
    agent: tuple[Agent, str],
) -> None:
    """Invoke's deadline is worked out by the one invocation entry: a malformed
    Meridian-Timeout-Ms among the call's headers, or on the HTTP request
    itself, is refused naming the header before anything is sent."""
    _, url = agent
    call = {"service": "orders", "method": "x", "httpVerb": "GET"}
    bad = {**call, "headers": [{"name": "Meridian-Timeout-Ms", "value": "soon"}]}
    status, body = await http_post(f"{url}/v1/invocation/invoke", bad)
    assert status == 400 and body["error"]["field"] == "Meridian-Timeout-Ms", body
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{url}/v1/invocation/invoke", json=call, headers={"Meridian-Timeout-Ms": "-5"}
        ) as resp,
    ):
        body = await resp.json()
    assert resp.status == 400 and body["error"]["field"] == "Meridian-Timeout-Ms", body
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}/v1/invoke/orders/x", headers={"Meridian-Timeout-Ms": "1.5"}) as resp,
    ):
        body = await resp.json()
    assert resp.status == 400 and body["error"]["field"] == "Meridian-Timeout-Ms", body
    # A well-formed timeout on a service nobody registered: the router's answer.
    status, body = await http_post(
        f"{url}/v1/invocation/invoke",
        {**call, "headers": [{"name": "Meridian-Timeout-Ms", "value": "200"}]},
    )
    assert status == 503 and body["error"]["code"] == "UNAVAILABLE", body


async def test_an_endpoint_at_the_cloud_metadata_address_is_refused(
    agent: tuple[Agent, str],
) -> None:
    """Registering an instance (or a push endpoint) at 169.254.169.254 would
    route every caller of the service (or every event) to the metadata service."""
    _, url = agent
    for endpoint in ("169.254.169.254:80", "[::ffff:169.254.169.254]:80", "2852039166:80"):
        status, body = await http_post(
            f"{url}/v1/registry/register",
            {"instance": {"service": "orders", "endpoint": endpoint, "protocol": "PROTOCOL_HTTP"}},
        )
        assert status == 400, (endpoint, body)
        assert body["error"]["field"] == "instance.endpoint", body
    status, body = await http_post(
        f"{url}/v1/events/register-push",
        {"group": "g", "topicFilter": "x.*", "endpoint": "http://169.254.169.254/latest/"},
    )
    assert status == 400 and body["error"]["field"] == "endpoint", body


async def test_what_only_a_browser_sends_is_refused_and_nothing_is_written(
    agent: tuple[Agent, str],
) -> None:
    """A web page can POST a form or text/plain cross-site without a CORS
    preflight, and browsers send Origin with every POST: both are refused."""
    _, url = agent
    key = f"csrf-{next(_seq)}"
    body = json.dumps({"keyspace": "accounts", "key": key, "value": "MTAw"})
    async with aiohttp.ClientSession() as session:
        for headers, field in (
            ({"Content-Type": "text/plain"}, "Content-Type"),
            ({"Content-Type": "application/x-www-form-urlencoded"}, "Content-Type"),
            ({"Content-Type": "multipart/form-data; boundary=x"}, "Content-Type"),
            ({}, "Content-Type"),
            (
                {"Content-Type": "application/json", "Origin": "https://evil.example"},
                "Origin",
            ),
            ({"Content-Type": "application/json", "Origin": "null"}, "Origin"),
        ):
            async with session.post(
                f"{url}/v1/state/put", data=body.encode(), headers=headers
            ) as resp:
                answer = await resp.json()
            assert resp.status == 400, (headers, answer)
            assert answer["error"]["field"] == field, (headers, answer)
        strong = {"keyspace": "accounts", "key": key, "consistency": {"level": "LEVEL_STRONG"}}
        status, answer = await http_post(f"{url}/v1/state/get", strong)
        assert status == 404, answer  # nothing was written
        # What SDKs and curl send is served: JSON with a charset, and no body at all.
        async with session.post(
            f"{url}/v1/state/put",
            data=body.encode(),
            headers={"Content-Type": "application/json; charset=utf-8"},
        ) as resp:
            assert resp.status == 200, await resp.text()
        async with session.post(f"{url}/v1/registry/list-instances") as resp:
            assert resp.status != 400, await resp.text()
