"""Region-wave rollouts on the real sandbox, through the real CLI, with real
test-service processes of two versions in every region and live traffic:

- a v2 that fails a share of its calls is rolled out canary-first in
  ap-south: the analysis fails, ap-south goes back to v1 on its own, and
  us-east and eu-west never send v2 a call; the consistency check after the
  rollback passes;
- a good v2 then goes through every region and serves everything;
- weights set by hand split traffic, and a sticky key keeps its version;
- a bad plan is refused naming the field, and nothing starts.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tests.e2e.conftest import REGIONS, SandboxHandle
from tests.e2e.services import ServiceFleet, ServiceInstance
from tests.e2e.test_invoke import call, invoke_url

SERVICE = "shop"


def status(sandbox: SandboxHandle) -> dict[str, Any]:
    got: dict[str, Any] = json.loads(sandbox.cli("rollout", "status", SERVICE, "--json").stdout)
    return got


def weights(sandbox: SandboxHandle, via: str = "us-east") -> dict[str, dict[str, int]]:
    out = sandbox.cli("rollout", "weights", SERVICE, "--json", "--via", via).stdout
    return {r["region"]: r.get("weights", {}) for r in json.loads(out)}


async def until(
    sandbox: SandboxHandle, done: Any, what: str, timeout_s: float = 120
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s  # a hang guard, not a speed check
    while True:
        got = await asyncio.to_thread(status, sandbox)
        if done(got):
            return got
        assert time.monotonic() < deadline, f"{what}: {json.dumps(got, indent=1)}"
        await asyncio.sleep(0.5)


@contextlib.asynccontextmanager
async def traffic(sandbox: SandboxHandle) -> AsyncIterator[collections.Counter[tuple[str, str]]]:
    """Calls to the service from every region, all the time; counts
    (region, version that answered)."""
    seen: collections.Counter[tuple[str, str]] = collections.Counter()

    async def caller(region: str) -> None:
        url = invoke_url(sandbox, region, SERVICE)
        async with sandbox.session() as session:
            while True:
                with contextlib.suppress(OSError, TimeoutError):
                    _, headers, _ = await call(session, url)
                    seen[region, headers.get("Meridian-Version", "")] += 1
                await asyncio.sleep(0.02)

    tasks = [asyncio.create_task(caller(r)) for r in REGIONS for _ in range(2)]
    try:
        yield seen
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def until_loaded(sandbox: SandboxHandle, via: str) -> None:
    deadline = time.monotonic() + 60  # a hang guard
    while True:
        got = await asyncio.to_thread(
            sandbox.cli, "rollout", "weights", SERVICE, "--via", via, check=False
        )
        if got.returncode == 0:
            return
        assert "not loaded the rollouts yet" in got.stderr, got.stderr
        assert time.monotonic() < deadline, got.stderr
        await asyncio.sleep(0.3)


async def until_weights(sandbox: SandboxHandle, via: str, want: dict[str, Any]) -> None:
    deadline = time.monotonic() + 60  # a hang guard
    while (got := await asyncio.to_thread(weights, sandbox, via)) != want:
        assert time.monotonic() < deadline, (via, got)
        await asyncio.sleep(0.3)


def plan(root: Path, name: str, **over: Any) -> str:
    doc: dict[str, Any] = {
        "service": SERVICE,
        "version": "v2",
        "stable": "v1",
        "regions": [
            {"region": "ap-south", "steps": [25, 50, 100], "hold_s": 6},
            {"region": "us-east", "steps": [50, 100], "hold_s": 6},
            {"region": "eu-west", "steps": [100]},
        ],
        # Latency is not what this test is about, and a loaded CI machine's
        # p99s are noisy: only errors decide here.
        # A measurement or two right at the start may see no traffic while the
        # new weights reach the region's agents: three measurements a step (one
        # every 2 s), two of which may be inconclusive.
        "analysis": {
            "min_requests": 10,
            "count": 3,
            "max_p99_ratio": 50,
            "inconclusive_limit": 2,
        },
    }
    doc.update(over)
    path = root / name
    path.write_text(json.dumps(doc))
    return str(path)


async def requests(fleet: ServiceFleet, instances: list[ServiceInstance]) -> int:
    return sum([(await fleet.stats(i))["requests"] for i in instances])


async def test_a_bad_canary_rolls_back_its_region_and_a_good_version_goes_everywhere(
    sandbox: SandboxHandle, fleet: ServiceFleet, tmp_path: Path
) -> None:
    v1 = {r: fleet.start(SERVICE, r, version="v1") for r in REGIONS}
    v2 = {r: fleet.start(SERVICE, r, version="v2") for r in REGIONS}
    # v2 is deployed behind weight 0, as an operator would before a rollout
    # (once the agents have loaded the rollouts: until then they say UNAVAILABLE,
    # "try again").
    for region in REGIONS:
        await until_loaded(sandbox, region)
        sandbox.cli("rollout", "set-weights", SERVICE, region, "v1=100", "v2=0")
    for region in REGIONS:
        await until_weights(sandbox, region, {r: {"v1": 100, "v2": 0} for r in REGIONS})
    await fleet.wait_visible([*v1.values(), *v2.values()], everywhere=REGIONS)
    await fleet.configure(v2["ap-south"], fail_rate=0.5)

    # A bad plan is refused naming the field; nothing starts.
    bad = plan(tmp_path, "bad.json", regions=[{"region": "ap-south", "steps": [10, 50]}])
    refused = sandbox.cli("rollout", "start", bad, check=False)
    assert refused.returncode == 2
    assert "regions[0].steps" in refused.stderr and "must reach 100" in refused.stderr
    nothing = sandbox.cli("rollout", "status", SERVICE, check=False)
    assert nothing.returncode == 2 and "has no rollout" in nothing.stderr

    async with traffic(sandbox) as seen:
        sandbox.cli("rollout", "start", plan(tmp_path, "v2-bad.json"), "--via", "eu-west")
        # Every region is held on v1 at once; only the canary takes v2.
        assert weights(sandbox)["us-east"] == {"v1": 100, "v2": 0}
        got = await until(
            sandbox, lambda s: s["phase"] != "Progressing", "the bad canary's analysis ends"
        )
        assert got["phase"] == "RolledBack", (
            seen,
            await fleet.stats(v2["ap-south"]),
            got["events"],
        )
        assert "analysis failed in ap-south" in got["message"]
        # The error rate, or the router ejecting the failing instance first.
        assert "error rate" in got["message"] or "outlier ejection" in got["message"], got
        assert {r["region"]: r["state"] for r in got["regions"]} == {
            "ap-south": "rolled-back",
            "us-east": "pending",
            "eu-west": "pending",
        }
        for region in REGIONS:
            assert weights(sandbox, via=region)["ap-south"] == {"v1": 100, "v2": 0}
        # After the rollback, ap-south's calls reach v1 only.
        await asyncio.sleep(1.0)
        before = dict(seen)
        await asyncio.sleep(2.0)
        late = seen["ap-south", "v2"] - before.get(("ap-south", "v2"), 0)
        assert late == 0, seen
        assert seen["ap-south", "v1"] > before.get(("ap-south", "v1"), 0)
        # us-east and eu-west never sent v2 a call.
        assert await requests(fleet, [v2["us-east"], v2["eu-west"]]) == 0
        assert seen["us-east", "v2"] == seen["eu-west", "v2"] == 0
        checked = await until(
            sandbox, lambda s: s.get("consistency") != "running", "the consistency check"
        )
        assert checked["consistency"] == "passed", checked["consistencyDetail"]
        assert "reached v2 in ap-south; all were answered" in checked["consistencyDetail"]

        # A good v2 now: through every region, and it then serves everything.
        # (A fixed build is a new instance: the bad one was ejected as an
        # outlier, and an ejected instance would leave the analysis no calls.)
        v2["ap-south"].proc.terminate()  # deregisters
        v2["ap-south"].proc.wait(10)
        v2["ap-south"] = fleet.start(SERVICE, "ap-south", version="v2")
        await fleet.wait_visible([v2["ap-south"]], everywhere=REGIONS)
        sandbox.cli("rollout", "start", plan(tmp_path, "v2-good.json"))
        done = await until(sandbox, lambda s: s["phase"] != "Progressing", "the good rollout")
        assert done["phase"] == "Healthy", (done["message"], done["measurements"])
        assert all(r["weight"] == 100 for r in done["regions"])
        before = dict(seen)
        await asyncio.sleep(2.0)
        for region in REGIONS:
            assert seen[region, "v1"] == before.get((region, "v1"), 0), (region, seen)
            assert seen[region, "v2"] > before.get((region, "v2"), 0), (region, seen)

    history = sandbox.cli("rollout", "history", SERVICE).stdout.splitlines()
    assert "Healthy" in history[0] and "RolledBack" in history[1], history
    # Every transition is in the audit log, by the driving agents.
    entries = [
        json.loads(line) for line in sandbox.cli("audit", "tail", "-n", "200").stdout.splitlines()
    ]
    kinds = [
        e["detail"].get("kind") or e["detail"].get("change")
        for e in entries
        if e["action"] == "admin:rollouts" and e["resource"] == f'Service::"{SERVICE}"'
    ]
    for kind in ("start", "step", "analysis", "rolled-back", "promoted", "healthy"):
        assert kind in kinds, kinds
    drivers = {
        e["principal"]
        for e in entries
        if e["action"] == "admin:rollouts" and e["detail"].get("kind") == "analysis"
    }
    assert drivers and all(p.endswith("/agent") for p in drivers), drivers


async def test_weights_by_hand_split_traffic_and_a_sticky_key_keeps_its_version(
    sandbox: SandboxHandle, fleet: ServiceFleet
) -> None:
    service = "sticky"
    a = fleet.start(service, "us-east", version="a")
    b = fleet.start(service, "us-east", version="b")
    await fleet.wait_visible([a, b], everywhere=("us-east",))
    sandbox.cli("rollout", "set-weights", service, "us-east", "a=50", "b=50")
    refused = sandbox.cli("rollout", "set-weights", service, "us-east", "a=x", check=False)
    assert refused.returncode == 2 and "VERSION=WEIGHT" in refused.stderr
    bad = sandbox.cli("rollout", "set-weights", service, "mars", "a=1", check=False)
    assert bad.returncode == 2 and "region" in bad.stderr
    url = invoke_url(sandbox, "us-east", service)
    async with sandbox.session() as session:
        # Until the view shows the weights, versions are not chosen by them.
        deadline = time.monotonic() + 30
        while True:
            _, headers, _ = await call(session, url, headers={"Meridian-Sticky-Key": "user-1"})
            first = headers["Meridian-Version"]
            same = True
            for _ in range(20):
                _, headers, _ = await call(session, url, headers={"Meridian-Sticky-Key": "user-1"})
                same = same and headers["Meridian-Version"] == first
            if same:
                break
            assert time.monotonic() < deadline, "a sticky key never kept its version"
        by_key = {}
        for i in range(40):
            _, headers, _ = await call(session, url, headers={"Meridian-Sticky-Key": f"user-{i}"})
            by_key[i] = headers["Meridian-Version"]
        assert set(by_key.values()) == {"a", "b"}, by_key
        for i in range(40):  # the same keys, the same versions
            _, headers, _ = await call(session, url, headers={"Meridian-Sticky-Key": f"user-{i}"})
            assert headers["Meridian-Version"] == by_key[i]
        # A version at 0 gets nothing here, even with another healthy instance.
        sandbox.cli("rollout", "set-weights", service, "us-east", "a=100", "b=0")
        await asyncio.sleep(1.0)
        served: collections.Counter[str] = collections.Counter()
        for _ in range(30):
            _, headers, _ = await call(session, url)
            served[headers["Meridian-Version"]] += 1
        assert served == {"a": 30}, served
        # Removing the weights: any version again.
        sandbox.cli("rollout", "set-weights", service, "us-east")
        assert weights_of(sandbox, service) == {}


def weights_of(sandbox: SandboxHandle, service: str) -> dict[str, Any]:
    out = sandbox.cli("rollout", "weights", service, "--json").stdout
    return {r["region"]: r["weights"] for r in json.loads(out)}
