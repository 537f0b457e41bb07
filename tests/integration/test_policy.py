"""Authorization against a real agent with mutual TLS on a real `global`
cluster: the sandbox's policy set decides every call, over gRPC and HTTP, and
a pushed set travels through the `global` keyspace into the agent."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from meridian.client import MeridianClient
from meridian.config import MeridianConfig
from meridian.core.errors import NotFoundError, PermissionDeniedError
from meridian.security.pki import client_ssl, ensure_identity, ensure_sandbox
from meridian.security.tls import TlsFiles, client_context
from meridian.testing.nats_server import NatsCluster
from tests.conftest import eventually
from tests.integration.harness import agent_config, http_post, ready_agent

SANDBOX = resources.files("meridian.policy").joinpath("builtin/sandbox.cedar").read_text()


@pytest.fixture(scope="module")
def cluster() -> Iterator[NatsCluster]:
    with NatsCluster("global") as c:
        yield c


@pytest.fixture(scope="module")
def config(cluster: NatsCluster, tmp_path_factory: pytest.TempPathFactory) -> MeridianConfig:
    cfg = agent_config(
        cluster,
        keyspaces=[{"name": "orders", "locality": "global"}],
        ca_dir=tmp_path_factory.mktemp("policy") / "ca",
        policy=SANDBOX,
    )
    ensure_sandbox(cfg)
    return cfg


def client(config: MeridianConfig, spec: str) -> MeridianClient:
    folder: Path = ensure_identity(config, spec)
    return MeridianClient(config.region("us-east").grpc_address, tls=folder)


def ssl_of(config: MeridianConfig, spec: str) -> ssl.SSLContext:
    return client_context(TlsFiles.in_folder(ensure_identity(config, spec)))


async def post(
    config: MeridianConfig, path: str, body: dict[str, Any], as_: str = "operator/meridian"
) -> tuple[int, Any]:
    """POST ``body`` as ``as_``: (status, the response, or its ``error`` object)."""
    ctx = client_ssl(config) if as_ == "operator/meridian" else ssl_of(config, as_)
    status, got = await http_post(f"{config.region('us-east').http_url}{path}", body, ssl=ctx)
    return status, got.get("error", got) if isinstance(got, dict) else got


async def test_the_sandbox_set_decides_every_call_over_grpc_and_http(
    config: MeridianConfig,
) -> None:
    async with ready_agent(config, state=True):
        async with (
            client(config, "service/orders") as orders,
            client(config, "service/inventory") as inventory,
        ):
            await orders.put("orders", "o-1", b'{"qty": 1}')
            with pytest.raises(PermissionDeniedError) as err:
                await inventory.put("orders", "o-1", b'{"qty": 0}')
            message = err.value.message
            assert 'Service::"inventory" may not state:write on Keyspace::"orders"' in message
            # The action and the resource, never the policy that decided.
            assert "permit" not in message and "orders-state" not in message
            with pytest.raises(PermissionDeniedError):
                await inventory.get("orders", "o-1")
            # Invocation is decided before any routing: no instance is needed to be refused.
            with pytest.raises(PermissionDeniedError, match='invoke on Service::"orders"'):
                await inventory.invoke("orders", "/orders")
            got = await orders.get("orders", "o-1")
            assert got.entry.value == b'{"qty": 1}'  # the denied write wrote nothing

        status, body = await post(
            config,
            "/v1/state/put",
            {"keyspace": "orders", "key": "o-2", "value": "e30="},
            as_="service/inventory",
        )
        assert status == 403 and body["code"] == "PERMISSION_DENIED"
        assert 'state:write on Keyspace::"orders"' in body["message"]
        async with client(config, "service/orders") as orders:
            with pytest.raises(NotFoundError):
                await orders.get("orders", "o-2")


async def test_explain_says_which_policy_decided(config: MeridianConfig) -> None:
    async with ready_agent(config, state=True):
        status, body = await post(
            config,
            "/v1/policy/explain",
            {
                "principal": "service/orders",
                "action": "events:replay",
                "resource_type": "Topic",
                "resource_id": "orders",
                "key": "orders-readmodel-us-east",
            },
        )
        assert status == 200, body
        assert body["decision"] == "permit" and body["determining"] == ["orders-read-model"]
        status, body = await post(
            config,
            "/v1/policy/explain",
            {"principal": "nats/x", "action": "state:wrote", "resource_type": "Table"},
        )
        assert status == 400
        fields = {v["field"] for v in body["violations"]}
        assert fields == {"principal", "action", "resource_type"}
        # Only operators administer policies.
        status, body = await post(config, "/v1/policy/get-policies", {}, as_="service/orders")
        assert status == 403 and 'admin:policies on Control::"policies"' in body["message"]


async def test_a_pushed_set_reaches_the_agent_and_a_bad_one_changes_nothing(
    config: MeridianConfig,
) -> None:
    async with ready_agent(config, state=True):
        status, current = await post(config, "/v1/policy/get-policies", {})
        assert status == 200
        revision = int(current["policySet"].get("revision", 0))

        status, body = await post(
            config,
            "/v1/policy/put-policies",
            {"text": 'permit (principal, action == Action::"x", resource);'},
        )
        assert status == 400 and body["code"] == "INVALID_ARGUMENT"
        assert 'unrecognized action `Action::"x"`' in body["message"]
        status, body = await post(
            config, "/v1/policy/put-policies", {"text": SANDBOX, "if_revision": revision + 100}
        )
        assert status == 409 and body["code"] == "CONFLICT"
        status, after = await post(config, "/v1/policy/get-policies", {})
        assert after["policySet"]["text"] == current["policySet"]["text"]

        grant = SANDBOX + (
            '\n@id("inventory-reads-orders")\n'
            'permit (principal == Service::"inventory", action == Action::"state:read", '
            'resource == Keyspace::"orders");\n'
        )
        async with client(config, "service/inventory") as inventory:
            with pytest.raises(PermissionDeniedError):
                await inventory.get("orders", "o-1")
            status, body = await post(config, "/v1/policy/put-policies", {"text": grant})
            assert status == 200, body
            assert int(body["revision"]) > revision and body["policies"] > 10
            await eventually(
                lambda: _denied(inventory.get("orders", "o-1")),
                lambda denied: not denied,
                what="the pushed grant in force",
            )
            status, now = await post(config, "/v1/policy/get-policies", {})
            assert now["policySet"]["author"] == "spiffe://meridian.local/operator/meridian"
            # Put the sandbox's set back, for whatever runs next on this cluster.
            status, _ = await post(config, "/v1/policy/put-policies", {"text": SANDBOX})
            assert status == 200
            await eventually(
                lambda: _denied(inventory.get("orders", "o-1")),
                bool,
                what="grant withdrawn",
            )


async def _denied(call: Any) -> bool:
    """Whether ``call`` is refused by policy (any other answer is not a denial)."""
    try:
        await call
    except PermissionDeniedError:
        return True
    except NotFoundError:
        pass
    return False
