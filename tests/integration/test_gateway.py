"""The gateway against stand-in agents: choosing a region, health checks, failover.

The gateway runs in-process; the stand-ins are in :mod:`tests.integration.gateway_harness`.
"""

import aiohttp

from tests.conftest import eventually
from tests.integration.gateway_harness import (
    GW,
    HINT,
    REGIONS,
    StandInAgent,
    gateway,
    metrics,
    region_status,
    served_by,
)

# The stand-in agents and the client session are fixtures of the harness.
pytest_plugins = ["tests.integration.gateway_harness"]

# -- routing -------------------------------------------------------------------------


async def test_hinted_region_serves_and_the_answer_names_it(
    agents: dict[str, StandInAgent], client: aiohttp.ClientSession
) -> None:
    async with gateway():
        for region in REGIONS:
            assert await served_by(client, region) == (200, region)
        # A well-formed hint naming no region is not an error: the nearest region serves.
        status, region = await served_by(client, "mars-1")
        assert status == 200 and region in REGIONS
        status, region = await served_by(client, None)
        assert status == 200 and region in REGIONS
        regions = await region_status(client)
        assert all(r["up"] and r["rtt_ms"] is not None for r in regions.values())


async def test_without_a_hint_the_fastest_region_by_measured_round_trip(
    agents: dict[str, StandInAgent], client: aiohttp.ClientSession
) -> None:
    agents["us-east"].health_delay_s = 0.2
    agents["ap-south"].health_delay_s = 0.35
    async with gateway(health_timeout_s=1.0):

        async def order() -> list[str]:
            regions = await region_status(client)
            return sorted(regions, key=lambda r: regions[r]["rtt_ms"] or 1e9)

        await eventually(order, lambda o: o == ["eu-west", "us-east", "ap-south"], what="RTTs")
        assert await served_by(client, None) == (200, "eu-west")


async def test_a_refused_connection_fails_over_at_once_to_the_nearest_region(
    agents: dict[str, StandInAgent], client: aiohttp.ClientSession
) -> None:
    # Health checks far apart: only the proxied request can notice the dead region.
    async with gateway(health_interval_s=60):
        assert await served_by(client, "eu-west") == (200, "eu-west")
        await agents["eu-west"].stop()
        # The request that finds eu-west gone is served by us-east, without an error.
        assert await served_by(client, "eu-west") == (200, "us-east")
        regions = await region_status(client)
        assert not regions["eu-west"]["up"]
        assert "cannot connect" in regions["eu-west"]["last_error"]
        text = await metrics(client)
        assert 'meridian_gateway_region_up{region="eu-west"} 0.0' in text
        assert 'meridian_gateway_failovers_total{from_region="eu-west",to_region="us-east"}' in text
        # From ap-south's point of view eu-west (65 ms) is nearer than us-east (100 ms).
        assert await served_by(client, "ap-south") == (200, "ap-south")


async def test_failed_health_checks_take_a_region_out_and_one_success_brings_it_back(
    agents: dict[str, StandInAgent], client: aiohttp.ClientSession
) -> None:
    async with gateway():
        agents["eu-west"].health_status = 503  # NOT_SERVING, though it still answers
        await eventually(
            lambda: region_status(client),
            lambda s: not s["eu-west"]["up"],
            what="eu-west out of rotation",
        )
        regions = await region_status(client)
        assert regions["eu-west"]["consecutive_failures"] >= 2
        assert regions["eu-west"]["last_error"] == "health check answered HTTP 503"
        assert await served_by(client, "eu-west") == (200, "us-east")
        assert 'result="unhealthy"' in await metrics(client)
        agents["eu-west"].health_status = 200
        await eventually(
            lambda: served_by(client, "eu-west"), lambda s: s == (200, "eu-west"), what="back"
        )


async def test_a_health_check_that_times_out_is_a_failure(
    agents: dict[str, StandInAgent], client: aiohttp.ClientSession
) -> None:
    async with gateway(health_timeout_s=0.2):
        agents["ap-south"].health_delay_s = 5
        await eventually(
            lambda: region_status(client),
            lambda s: not s["ap-south"]["up"],
            what="ap-south out of rotation",
        )
        assert "timed out" in (await region_status(client))["ap-south"]["last_error"]
        assert 'meridian_gateway_health_checks_total{region="ap-south",result="timeout"}' in (
            await metrics(client)
        )


async def test_no_region_up_is_503_unavailable(
    agents: dict[str, StandInAgent], client: aiohttp.ClientSession
) -> None:
    async with gateway():
        for a in agents.values():
            await a.stop()
        async with client.get(f"{GW}/v1/status", headers={HINT: "eu-west"}) as resp:
            assert resp.status == 503
            body = await resp.json()
        assert body["error"]["code"] == "UNAVAILABLE"
        assert "eu-west" in body["error"]["message"]
        async with client.get(f"{GW}/gateway/health") as resp:
            assert resp.status == 503
        for a in agents.values():
            await a.start()
        await eventually(
            lambda: served_by(client, "ap-south"), lambda s: s == (200, "ap-south"), what="back"
        )


async def test_an_agent_that_hangs_up_without_answering_is_a_502(
    agents: dict[str, StandInAgent], client: aiohttp.ClientSession
) -> None:
    async with gateway():
        async with client.post(f"{GW}/hangup", headers={HINT: "us-east"}, data=b"x") as resp:
            assert resp.status == 502
            body = await resp.json()
        assert body["error"]["code"] == "UNAVAILABLE"
        assert "us-east" in body["error"]["message"]
        # Not a connection failure: the request may have run, so nothing else ran it.
        assert all(not a.seen for a in agents.values())
        assert (await region_status(client))["us-east"]["up"]
        assert 'meridian_gateway_requests_total{code="502",region="us-east"}' in (
            await metrics(client)
        )


async def test_an_agent_that_never_answers_is_a_502_after_the_answer_timeout(
    agents: dict[str, StandInAgent], client: aiohttp.ClientSession
) -> None:
    async with gateway(answer_timeout_s=0.3):
        async with client.get(f"{GW}/frozen", headers={HINT: "eu-west"}) as resp:
            assert resp.status == 502
            body = await resp.json()
        assert body["error"]["code"] == "UNAVAILABLE"
        assert "eu-west failed to answer: no answer within 0.3s" in body["error"]["message"]
        assert await served_by(client, "eu-west") == (200, "eu-west")
