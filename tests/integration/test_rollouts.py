"""The rollout driver's lease, on a real nats-server with two real agents of
us-east and a real test-service process: exactly one agent
drives a rollout; when its agent stops mid-step, the other takes over at the
same step, and a write by the deposed driver is refused (fencing). Also:
what RolloutService refuses, and that a refused request changes nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from meridian.agent.app import Agent
from meridian.config import MeridianConfig
from meridian.core.errors import ConflictError
from meridian.rollouts.store import rollout_key
from meridian.security.pki import ensure_identity, ensure_sandbox
from meridian.testing.nats_server import NatsCluster
from tests.conftest import eventually
from tests.integration.harness import agent_config, running_agent
from tests.integration.harness import post_as as post


@pytest.fixture(scope="module")
def cluster() -> Iterator[NatsCluster]:
    with NatsCluster("global") as c:
        yield c


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("rollouts") / "ca"


@pytest.fixture(scope="module")
def config(cluster: NatsCluster, ca_dir: Path) -> MeridianConfig:
    cfg = agent_config(cluster, ca_dir=ca_dir)
    ensure_sandbox(cfg)
    return cfg


@pytest.fixture(scope="module")
def second(cluster: NatsCluster, ca_dir: Path, config: MeridianConfig) -> MeridianConfig:
    """A second us-east agent's configuration: its own ports, the same CA."""
    return agent_config(cluster, ca_dir=ca_dir)


@contextlib.asynccontextmanager
async def service(
    config: MeridianConfig, name: str, region: str, version: str
) -> AsyncIterator[None]:
    """A real test-service process of ``version`` registered in ``region``."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meridian.sandbox.testservice",
        "--service", name, "--region", region,
        "--agent", config.region(region).http_url,
        "--version", version, "--ttl", "3", "--check-interval", "0.3",
        "--tls-dir", str(ensure_identity(config, f"service/{name}")),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = await proc.stdout.readline()
        assert line, await proc.stderr.read()
        yield
    finally:
        proc.terminate()
        await proc.wait()


async def rollouts_loaded(agent: Agent) -> None:
    await eventually(
        lambda: asyncio.sleep(0, agent.rollouts.loaded), bool, what="the rollouts loaded"
    )


async def status(config: MeridianConfig) -> dict[str, Any]:
    code, got = await post(config, "/v1/rollouts/get-rollout", {"service": "lease"})
    assert code == 200, got
    return dict(got["rollout"])


PLAN = {
    "service": "lease",
    "version": "v2",
    "stable": "v1",
    "regions": [{"region": "us-east", "steps": [50, 100], "hold_s": 30}],
}


async def test_another_agent_takes_over_at_the_same_step_and_the_old_driver_is_fenced(
    config: MeridianConfig, second: MeridianConfig
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        agents = {}
        for cfg in (config, second):
            agent = await stack.enter_async_context(running_agent(cfg))
            await rollouts_loaded(agent)
            agents[agent.agent_id] = (agent, cfg)
        await stack.enter_async_context(service(config, "lease", "us-east", "v2"))

        async def plan_accepted() -> int:
            code, _ = await post(config, "/v1/rollouts/start-rollout", {"plan": json.dumps(PLAN)})
            return code

        # Until the v2 instance is seen healthy, the plan is refused.
        await eventually(plan_accepted, lambda c: c == 200, what="the plan accepted")
        code, got = await post(
            config, "/v1/rollouts/pause-rollout", {"service": "lease", "reason": "hold"}
        )
        assert code == 200, got
        first = await eventually(
            lambda: status(config), lambda s: bool(s.get("driver")), what="a driver"
        )
        assert first["phase"] == "Paused"
        assert [(r["region"], r["weight"]) for r in first["regions"]] == [("us-east", 50)]
        driver = first["driver"]
        other_agent, other = next(v for k, v in agents.items() if k != driver)
        stale_revision = int(first["revision"])

        # The driver's agent goes away mid-step; the other takes over there.
        agents[driver][0].request_stop()
        taken = await eventually(
            lambda: status(other),
            lambda s: s["driver"] == other_agent.agent_id,
            timeout_s=60,
            what="the other agent drives",
        )
        assert [(r["region"], r["weight"]) for r in taken["regions"]] == [("us-east", 50)]
        assert taken["phase"] == "Paused"
        assert any(
            e["kind"] == "driver" and other_agent.agent_id in e["detail"] for e in taken["events"]
        ), taken["events"]
        # The deposed driver's next write, on the revision it last read, is refused.
        with pytest.raises(ConflictError):
            await other_agent.rollouts.write(rollout_key("lease"), {"stale": True}, stale_revision)

        # Promoted through the remaining agent: on to the end, weights and all.
        code, got = await post(other, "/v1/rollouts/promote-rollout", {"service": "lease"})
        assert code == 200, got
        done = await eventually(
            lambda: status(other),
            lambda s: s["phase"] == "Healthy",
            timeout_s=60,
            what="the rollout ends",
        )
        assert [(r["region"], r["weight"]) for r in done["regions"]] == [("us-east", 100)]
        code, got = await post(other, "/v1/rollouts/get-weights", {"service": "lease"})
        assert {r["region"]: r["weights"] for r in got["regions"]} == {
            "us-east": {"v2": 100, "v1": 0}
        }


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"plan": "{"}, "plan"),
        ({"plan": "[" * 100_000}, "plan"),
        ({"plan": "x" * 70_000}, "plan"),
        ({"plan": json.dumps({**PLAN, "service": "Bad Name"})}, "service"),
        ({"plan": json.dumps({**PLAN, "version": "v1"})}, "version"),
        ({"plan": json.dumps({**PLAN, "regions": [{"region": "mars"}]})}, "regions[0].region"),
        (
            {"plan": json.dumps({**PLAN, "regions": [{"region": "us-east", "steps": [60, 50]}]})},
            "regions[0].steps",
        ),
        ({"plan": json.dumps({**PLAN, "analysis": {"count": 0}})}, "analysis.count"),
        ({"plan": json.dumps({**PLAN, "analysis": {"nope": 1}})}, "analysis.nope"),
    ],
)
async def test_bad_plans_are_refused_naming_the_field_and_nothing_starts(
    config: MeridianConfig, body: dict[str, Any], field: str
) -> None:
    async with running_agent(config) as agent:
        await rollouts_loaded(agent)
        code, got = await post(config, "/v1/rollouts/start-rollout", body)
        assert code == 400, got
        fields = [v["field"] for v in got["error"].get("violations", [])]
        assert field in fields, got
        code, _ = await post(config, "/v1/rollouts/get-rollout", {"service": "refused"})
        assert code == 404


async def test_bad_weights_are_refused_naming_the_field_and_nothing_is_stored(
    config: MeridianConfig,
) -> None:
    async with running_agent(config) as agent:
        await rollouts_loaded(agent)
        for weights, field in (
            ({"v1": 0}, "weights"),
            ({"bad version!": 1}, "weights.bad version!"),
            ({"v1": 20_000}, "weights.v1"),
        ):
            code, got = await post(
                config,
                "/v1/rollouts/set-weights",
                {"service": "w", "region": "us-east", "weights": weights},
            )
            assert code == 400, got
            assert field in [v["field"] for v in got["error"]["violations"]], got
        code, got = await post(config, "/v1/rollouts/get-weights", {"service": "w"})
        assert code == 200 and got.get("regions", []) == []


async def test_the_history_keeps_the_newest_rollouts(
    config: MeridianConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    from meridian.rollouts import store
    from meridian.rollouts.progress import RegionProgress, Rollout

    monkeypatch.setattr(store, "MAX_HISTORY", 2)
    async with running_agent(config) as agent:
        await rollouts_loaded(agent)
        for i in range(3):
            plan = {**PLAN, "service": "hist"}
            r = Rollout(
                id=f"r{i}",
                plan=plan,
                phase="Healthy",
                regions=[RegionProgress("us-east", "promoted")],
                started_ms=1000 + i,
            )
            await agent.rollouts.keep_history(r)
        assert [r.id for r in agent.rollouts.history("hist")] == ["r2", "r1"]
        code, got = await post(config, "/v1/rollouts/rollout-history", {"service": "hist"})
        assert code == 200 and [r["id"] for r in got["rollouts"]] == ["r2", "r1"], got
