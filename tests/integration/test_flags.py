"""Feature flags against a real agent with mutual TLS on a real `global`
cluster: flags set through FlagService travel through the `_flags` keyspace
into the agent's cache, the stock OpenFeature SDK evaluates them over OFREP,
and bad or unauthorized changes are refused with nothing stored."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import nats
import pytest
from openfeature import api as openfeature_api
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode as OFErrorCode
from openfeature.flag_evaluation import Reason

from meridian.agent.app import Agent
from meridian.audit import AuditEntry
from meridian.audit.cli import read_log
from meridian.config import MeridianConfig
from meridian.flags.store import KEYSPACE
from meridian.security.pki import client_ssl, ensure_identity, ensure_sandbox
from meridian.security.tls import TlsFiles, client_context
from meridian.testing.nats_server import NatsCluster
from tests.conftest import eventually
from tests.integration.harness import agent_config, ready_agent
from tests.integration.harness import post_as as post

SANDBOX = resources.files("meridian.policy").joinpath("builtin/sandbox.cedar").read_text()

REGION_FLAG = {
    "state": "ENABLED",
    "variants": {"on": True, "off": False},
    "defaultVariant": "off",
    "targeting": {"if": [{"==": [{"var": "region"}, "us-east"]}, "on", "off"]},
    "metadata": {"owner": "orders"},
}
COLOR_FLAG = {
    "variants": {"red": "#f00", "blue": "#00f"},
    "defaultVariant": "red",
    "targeting": {"fractional": [["red", 50], ["blue", 50]]},
}
LIMIT_FLAG = {"variants": {"low": 3, "high": 30}, "defaultVariant": "low"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[NatsCluster]:
    with NatsCluster("global") as c:
        yield c


@pytest.fixture(scope="module")
def config(cluster: NatsCluster, tmp_path_factory: pytest.TempPathFactory) -> MeridianConfig:
    cfg = agent_config(cluster, ca_dir=tmp_path_factory.mktemp("flags") / "ca", policy=SANDBOX)
    ensure_sandbox(cfg)
    return cfg


async def set_flag(config: MeridianConfig, key: str, definition: Any, **extra: Any) -> Any:
    status, got = await post(
        config,
        "/v1/flags/set-flag",
        {"key": key, "definition": json.dumps(definition), **extra},
    )
    assert status == 200, got
    return got["flag"]


@contextlib.asynccontextmanager
async def flags_agent(config: MeridianConfig) -> AsyncIterator[Agent]:
    """The agent once the global quorum answers and its flags are loaded."""
    async with ready_agent(config, state=True) as agent:
        await eventually(
            lambda: asyncio.sleep(0, agent.flags.loaded), bool, what="the flags loaded"
        )
        yield agent


def ofrep_client(config: MeridianConfig, identity: str = "service/orders") -> Any:
    """The stock OpenFeature SDK with its OFREP provider, presenting ``identity``'s
    certificate (requests' session takes the client certificate and the bundle)."""
    folder: Path = ensure_identity(config, identity)
    provider = OFREPProvider(base_url=config.region("us-east").http_url, timeout=10)
    provider.session.cert = (str(folder / "cert.pem"), str(folder / "key.pem"))
    provider.session.verify = str(folder / "bundle.pem")
    # requests lets REQUESTS_CA_BUNDLE override a session's bundle; keep ours.
    provider.session.trust_env = False
    openfeature_api.set_provider(provider, domain=identity)
    return openfeature_api.get_client(domain=identity)


async def test_the_stock_openfeature_sdk_evaluates_flags_over_ofrep(
    config: MeridianConfig,
) -> None:
    async with flags_agent(config):
        await set_flag(config, "region-flag", REGION_FLAG)
        await set_flag(config, "colors", COLOR_FLAG)
        await set_flag(config, "limit", LIMIT_FLAG)
        of = ofrep_client(config)

        def details(kind: str, key: str, default: Any, ctx: EvaluationContext | None) -> Any:
            return getattr(of, f"get_{kind}_details")(key, default, ctx)

        # The serving region is in the context: this agent is us-east.
        got = await asyncio.to_thread(details, "boolean", "region-flag", False, None)
        assert (got.value, got.variant, got.reason) == (True, "on", Reason.TARGETING_MATCH), (
            got.error_code,
            got.error_message,
        )
        assert got.flag_metadata == {"owner": "orders"}
        # A region the caller claims does not override the serving one.
        ctx = EvaluationContext(attributes={"region": "ap-south"})
        got = await asyncio.to_thread(details, "boolean", "region-flag", False, ctx)
        assert got.value is True
        # An integer variant stays an integer (the SDK checks the type).
        got = await asyncio.to_thread(details, "integer", "limit", 0, None)
        assert (got.value, got.reason) == (3, Reason.STATIC)
        # fractional: sticky per targeting key, both variants in use.
        seen = {}
        for i in range(40):
            ctx = EvaluationContext(targeting_key=f"user-{i}")
            got = await asyncio.to_thread(details, "string", "colors", "none", ctx)
            assert got.reason == Reason.TARGETING_MATCH
            seen[i] = got.value
        assert set(seen.values()) == {"#f00", "#00f"}
        again = await asyncio.to_thread(
            details, "string", "colors", "none", EvaluationContext(targeting_key="user-7")
        )
        assert again.value == seen[7]
        # No targeting key: no bucket, so the default variant.
        got = await asyncio.to_thread(details, "string", "colors", "none", None)
        assert (got.value, got.reason) == ("#f00", Reason.DEFAULT)
        # An unknown flag: the code's default, FLAG_NOT_FOUND.
        got = await asyncio.to_thread(details, "boolean", "no-such-flag", True, None)
        assert (got.value, got.error_code) == (True, OFErrorCode.FLAG_NOT_FOUND)
        # A type the flag does not have: the code's default, TYPE_MISMATCH.
        got = await asyncio.to_thread(details, "string", "region-flag", "x", None)
        assert (got.value, got.error_code) == ("x", OFErrorCode.TYPE_MISMATCH)


async def test_kill_switch_serves_the_off_variant_and_set_revives(config: MeridianConfig) -> None:
    async with flags_agent(config):
        flag = await set_flag(config, "checkout", REGION_FLAG)
        status, got = await post(config, "/v1/flags/kill-flag", {"key": "checkout"})
        assert status == 200, got
        assert got["flag"]["killedVariant"] == "off"
        assert int(got["flag"]["revision"]) > int(flag["revision"])
        status, got = await post(config, "/v1/flags/evaluate", {"key": "checkout"})
        assert got["evaluation"]["variant"] == "off"
        assert got["evaluation"]["reason"] == "DISABLED"
        # The definition is kept; setting it again revives the flag.
        status, got = await post(config, "/v1/flags/get-flag", {"key": "checkout"})
        assert json.loads(got["flag"]["definition"])["targeting"] == REGION_FLAG["targeting"]
        await set_flag(config, "checkout", REGION_FLAG)
        status, got = await post(config, "/v1/flags/evaluate", {"key": "checkout"})
        assert (got["evaluation"]["variant"], got["evaluation"]["reason"]) == (
            "on",
            "TARGETING_MATCH",
        )
        # A kill needs an off variant: a flag without one is refused, naming the field.
        await set_flag(config, "tiers", {"variants": {"a": "1", "b": "2"}, "defaultVariant": "a"})
        status, got = await post(config, "/v1/flags/kill-flag", {"key": "tiers"})
        assert status == 400
        assert got["error"]["violations"][0]["field"] == "variant"
        status, got = await post(config, "/v1/flags/kill-flag", {"key": "tiers", "variant": "b"})
        assert status == 200 and got["flag"]["killedVariant"] == "b"
        # Delete: evaluations then say FLAG_NOT_FOUND.
        status, got = await post(config, "/v1/flags/delete-flag", {"key": "tiers"})
        assert status == 200, got
        status, got = await post(config, "/v1/flags/evaluate", {"key": "tiers"})
        assert got["evaluation"]["errorCode"] == "FLAG_NOT_FOUND"


@pytest.mark.parametrize(
    ("definition", "field", "rule"),
    [
        ({"variants": {"on": True}, "defaultVariant": "of"}, "definition.defaultVariant", "'of'"),
        ({"variants": {}, "defaultVariant": "on"}, "definition.variants", "non-empty"),
        (
            {"variants": {"on": True, "n": 3}, "defaultVariant": "on"},
            "definition.variants",
            "one type",
        ),
        (
            {"variants": {"on": True}, "defaultVariant": "on", "targeting": {"map": [[], 1]}},
            "definition.targeting.map",
            "not an operator",
        ),
        (
            {
                "variants": {"on": True},
                "defaultVariant": "on",
                "targeting": {"fractional": [["on", 50], ["gone", 50]]},
            },
            "definition.targeting.fractional[1][0]",
            "'gone'",
        ),
        ({"variants": {"on": True}, "defaultVariant": "on", "state": "ON"}, "definition.state", ""),
        ({"variants": {"on": True}, "defaultVariant": "on", "owner": "x"}, "definition.owner", ""),
    ],
)
async def test_a_bad_definition_is_refused_naming_the_field_and_nothing_is_stored(
    config: MeridianConfig, definition: dict[str, Any], field: str, rule: str
) -> None:
    async with flags_agent(config) as agent:
        before = agent.flags.revision
        status, got = await post(
            config, "/v1/flags/set-flag", {"key": "bad-flag", "definition": json.dumps(definition)}
        )
        assert status == 400, got
        violations = got["error"]["violations"]
        assert any(v["field"] == field and rule in v["rule"] for v in violations), violations
        status, got = await post(config, "/v1/flags/get-flag", {"key": "bad-flag"})
        assert status == 404
        assert agent.flags.revision == before


async def test_malformed_and_hostile_ofrep_requests(config: MeridianConfig) -> None:
    async with flags_agent(config):
        await set_flag(config, "limit", LIMIT_FLAG)
        path = "/ofrep/v1/evaluate/flags/limit"
        status, got = await post(config, path, b"{not json", as_="service/orders")
        assert (status, got["errorCode"]) == (400, "PARSE_ERROR")
        status, got = await post(config, path, {"context": [1, 2]}, as_="service/orders")
        assert (status, got["errorCode"]) == (400, "INVALID_CONTEXT")
        status, got = await post(
            config, path, {"context": {"targetingKey": 7}}, as_="service/orders"
        )
        assert (status, got["errorCode"]) == (400, "INVALID_CONTEXT")
        deep: Any = "x"
        for _ in range(40):
            deep = {"a": deep}
        status, got = await post(config, path, {"context": deep}, as_="service/orders")
        assert (status, got["errorCode"]) == (400, "INVALID_CONTEXT")
        big = {"context": {"blob": "x" * (70 * 1024)}}
        status, got = await post(config, path, big, as_="service/orders")
        assert (status, got["errorCode"]) == (400, "INVALID_CONTEXT")
        status, got = await post(
            config, "/ofrep/v1/evaluate/flags/" + "k" * 200, {}, as_="service/orders"
        )
        assert status == 400 and got["key"] == "k" * 200
        # A proper request still works after all of that.
        status, got = await post(config, path, {"context": {}}, as_="service/orders")
        assert (status, got["value"], got["variant"]) == (200, 3, "low")


async def test_bulk_evaluation_with_etag(config: MeridianConfig) -> None:
    async with flags_agent(config) as agent:
        await set_flag(config, "limit", LIMIT_FLAG)
        await set_flag(config, "region-flag", REGION_FLAG)
        ctx = client_context(TlsFiles.in_folder(ensure_identity(config, "service/orders")))
        url = f"{config.region('us-east').http_url}/ofrep/v1/evaluate/flags"
        import aiohttp

        async with aiohttp.ClientSession() as session:
            async with session.post(url, json={"context": {}}, ssl=ctx) as resp:
                assert resp.status == 200
                etag = resp.headers["ETag"]
                body = await resp.json()
            flags = {f["key"]: f for f in body["flags"]}
            assert flags["limit"]["value"] == 3
            assert flags["region-flag"]["variant"] == "on"
            headers = {"If-None-Match": etag}
            async with session.post(url, json={"context": {}}, headers=headers, ssl=ctx) as resp:
                assert resp.status == 304
            # Another context, or a change to any flag, is another ETag.
            async with session.post(
                url, json={"context": {"targetingKey": "u"}}, headers=headers, ssl=ctx
            ) as resp:
                assert resp.status == 200
            await set_flag(config, "limit", {**LIMIT_FLAG, "defaultVariant": "high"})
            async with session.post(url, json={"context": {}}, headers=headers, ssl=ctx) as resp:
                assert resp.status == 200
                body = await resp.json()
                assert {f["key"]: f for f in body["flags"]}["limit"]["value"] == 30
        assert agent.flags.loaded


async def test_only_operators_change_flags_and_changes_are_audited(
    config: MeridianConfig,
) -> None:
    async with flags_agent(config):
        status, got = await post(
            config,
            "/v1/flags/set-flag",
            {"key": "sneaky", "definition": json.dumps(LIMIT_FLAG)},
            as_="service/orders",
        )
        assert status == 403, got
        assert 'may not admin:flags on Flag::"sneaky"' in got["error"]["message"]
        status, got = await post(config, "/v1/flags/get-flag", {"key": "sneaky"})
        assert status == 404
        # The gateway may not even evaluate (only services may).
        status, got = await post(config, "/v1/flags/evaluate", {"key": "limit"}, as_="gateway")
        assert status == 403
        await set_flag(config, "audited", LIMIT_FLAG)
        status, got = await post(config, "/v1/flags/kill-flag", {"key": "audited"})
        assert status == 400, got  # LIMIT_FLAG has no off variant
        status, got = await post(
            config, "/v1/flags/kill-flag", {"key": "audited", "variant": "low"}
        )
        assert status == 200, got

        async def changes() -> list[str]:
            nc = await nats.connect(
                config.region("us-east").agent_nats_urls[0], tls=client_ssl(config)
            )
            try:
                entries, _ = await read_log(nc.jetstream(timeout=10))
            finally:
                await nc.close()
            parsed = [AuditEntry.parse(e) for e in entries]
            return [
                e.detail.get("change", "")
                for e in parsed
                if e.action == "admin:flags" and e.resource == 'Flag::"audited"'
            ]

        await eventually(changes, lambda c: c == ["set", "kill"], what="set and kill audited")
        # The keyspace holds the flags, in the global cluster.
        assert KEYSPACE.name == "_flags"


async def test_the_python_client_over_grpc(config: MeridianConfig) -> None:
    from meridian.client import MeridianClient
    from meridian.core.errors import ConflictError, InvalidArgumentError

    async with flags_agent(config):
        operator = MeridianClient(config.region("us-east").grpc_address, tls=config.client_tls_dir)
        service = MeridianClient(
            config.region("us-east").grpc_address, tls=ensure_identity(config, "service/orders")
        )
        async with operator, service:
            flag = await operator.flags.set("grpc-flag", REGION_FLAG, if_revision=0)
            assert flag.definition["defaultVariant"] == "off"
            assert flag.author == "spiffe://meridian.local/operator/meridian"
            with pytest.raises(ConflictError):
                await operator.flags.set("grpc-flag", REGION_FLAG, if_revision=0)
            with pytest.raises(InvalidArgumentError) as err:
                await operator.flags.set("grpc-flag", {**REGION_FLAG, "variants": {}})
            assert err.value.violations[0].field == "definition.variants"
            e = await service.flags.evaluate("grpc-flag", {"targetingKey": "u-1"})
            assert (e.value, e.variant, e.reason) == (True, "on", "TARGETING_MATCH")
            assert e.metadata == {"owner": "orders"}
            evaluations, revision = await service.flags.evaluate_all()
            assert revision >= flag.revision
            assert "grpc-flag" in {x.key for x in evaluations}
            assert "grpc-flag" in {f.key for f in await operator.flags.list()}
            killed = await operator.flags.kill("grpc-flag", if_revision=flag.revision)
            assert killed.killed_variant == "off"
            e = await service.flags.evaluate("grpc-flag")
            assert (e.value, e.reason) == (False, "DISABLED")
            await operator.flags.delete("grpc-flag")
            e = await service.flags.evaluate("grpc-flag")
            assert (e.value, e.error_code) == (None, "FLAG_NOT_FOUND")
            with pytest.raises(InvalidArgumentError):
                await service.flags.evaluate("bad key")


async def test_every_evaluation_is_a_span_event(config: MeridianConfig) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from tests.integration.harness import running_agent

    exporter = InMemorySpanExporter()
    async with running_agent(config, exporter) as agent:
        await asyncio.wait_for(agent.state.wait_serving(), 120)
        await eventually(
            lambda: asyncio.sleep(0, agent.flags.loaded), bool, what="the flags loaded"
        )
        await set_flag(config, "traced", REGION_FLAG)
        status, got = await post(
            config, "/ofrep/v1/evaluate/flags/traced", {"context": {}}, as_="service/orders"
        )
        assert status == 200, got

        def events() -> list[dict[str, Any]]:
            return [
                dict(e.attributes or {})
                for s in exporter.get_finished_spans()
                for e in s.events
                if e.name == "feature_flag.evaluation"
            ]

        found = await eventually(
            lambda: asyncio.sleep(0, events()), bool, what="a feature_flag.evaluation event"
        )
        assert found[-1] == {
            "feature_flag.key": "traced",
            "feature_flag.result.variant": "on",
            "feature_flag.result.reason": "targeting_match",
        }
