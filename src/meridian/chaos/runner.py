"""One chaos run: a sandbox, workloads, a nemesis schedule, checkers, a report.

:func:`run` brings up a dedicated sandbox (its own configuration and ports,
``base_port`` 27000 unless told otherwise), waits until every workload's
setup succeeds, runs the workloads and the nemesis for ``duration_s``, heals
everything, lets the workloads take their final reads, checks the history and
writes ``history.json``, ``report.json`` and ``report.html`` into ``out_dir``.
The sandbox is torn down afterwards unless ``keep_sandbox``.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from meridian.chaos import analysis, report
from meridian.chaos.checkers import Verdict
from meridian.chaos.history import History
from meridian.chaos.lazyfs import LazyMounts
from meridian.chaos.nemesis import Nemesis, PowerLoss, SandboxControl
from meridian.chaos.scenarios import Scenario
from meridian.chaos.workloads.base import KeyspaceSpec, RunContext, TopicSpec
from meridian.client import MeridianClient
from meridian.config import load_config
from meridian.sandbox.supervisor import Sandbox

log = logging.getLogger(__name__)

DEFAULT_BASE_PORT = 27000


@dataclass(frozen=True)
class RunOptions:
    out_dir: Path
    duration_s: float | None = None
    base_port: int = DEFAULT_BASE_PORT
    #: "always" (the sandbox's setting) or "default" (NATS's own fsync interval).
    sync_interval: str = "always"
    keep_sandbox: bool = False
    seed: int | None = None
    setup_timeout_s: float = 180.0


def sandbox_config_text(
    base_port: int, keyspaces: list[KeyspaceSpec], topics: Sequence[TopicSpec] = ()
) -> str:
    """A three-region sandbox configuration with the WAN of the e2e tests."""
    lines = [
        "[sandbox]",
        'workdir = "sandbox"',
        f"base_port = {base_port}",
        "ready_timeout_s = 240",
        "",
        "[agent]",
        "status_interval_s = 0.5",
        "peer_timeout_s = 1.0",
        "quorum_timeout_s = 2.0",
        "",
        "[wan]",
        "jitter_ms = 1.0",
    ]
    for a, b, ms in (
        ("us-east", "eu-west", 35),
        ("us-east", "ap-south", 100),
        ("eu-west", "ap-south", 65),
    ):
        lines += ["", "[[wan.link]]", f'a = "{a}"', f'b = "{b}"', f"latency_ms = {ms}"]
    for region in ("us-east", "eu-west", "ap-south"):
        lines += ["", "[[region]]", f'name = "{region}"']
    seen: set[str] = set()
    for ks in keyspaces:
        if ks.name in seen:
            continue
        seen.add(ks.name)
        lines += ["", "[[keyspace]]", f'name = "{ks.name}"', f'locality = "{ks.locality}"']
        if ks.locality == "replicated":
            lines.append(f'conflict = "{ks.conflict}"')
        if ks.residency:
            lines.append(f"residency = {json.dumps(list(ks.residency))}")
    for topic in {t.name: t for t in topics}.values():
        lines += ["", "[[topic]]", f'name = "{topic.name}"']
        lines.append(f"residency = {json.dumps(list(topic.residency))}")
    return "\n".join(lines) + "\n"


async def _retry(what: str, attempt: Callable[[], Awaitable[None]], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await attempt()
            return
        except Exception as exc:  # not ready yet, whatever the reason
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not ready after {timeout_s:g}s: {exc}") from exc
            await asyncio.sleep(0.5)


def _down(sandbox: Sandbox, mounts: LazyMounts) -> None:
    """Stop the sandbox, unmount any lazyfs under it, then remove its data."""
    sandbox.down()
    mounts.close()
    sandbox.down(purge=True)


async def run(
    scenario: Scenario, opts: RunOptions, *, say: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run ``scenario`` and write its report; returns the report (see :mod:`report`)."""
    out_dir = opts.out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    duration = opts.duration_s or scenario.duration_s
    workloads = scenario.workloads()
    config_path = out_dir / "meridian.toml"
    keyspaces = [ks for w in workloads for ks in w.keyspaces]
    topics = [t for w in workloads for t in getattr(w, "topics", ())]
    config_path.write_text(sandbox_config_text(opts.base_port, keyspaces, topics))
    config = load_config(config_path, env={})
    sandbox = Sandbox(config, str(config_path))
    steps = scenario.schedule(config, duration)
    mounts = LazyMounts(sandbox.workdir / "logs")
    # A server that loses power needs its store on a file system that can lose
    # what was not fsynced.
    powered = {p for s in steps if isinstance(s.fault, PowerLoss) for p in s.fault.processes}
    for spec in sandbox.servers:
        if f"nats:{spec.name}" in powered:
            await asyncio.to_thread(mounts.mount, f"nats:{spec.name}", spec.store_dir)
    ctl = SandboxControl(sandbox, sync_interval=opts.sync_interval, lazy_mounts=mounts.mounts)
    say(f"bringing up the sandbox (base port {opts.base_port}) in {config.sandbox.workdir}")
    try:
        await ctl.up()
    except BaseException:
        if not opts.keep_sandbox:
            await asyncio.to_thread(_down, sandbox, mounts)
        raise
    clients = {
        r.name: MeridianClient(r.grpc_address, timeout_s=5.0, tls=config.client_tls_dir)
        for r in config.regions
    }
    try:
        history = History()
        ctx = RunContext(
            config=config,
            history=history,
            clients=clients,
            out_dir=out_dir,
            run_id=uuid.uuid4().hex[:8],
            rng=random.Random(opts.seed),
        )
        for w in workloads:
            await _retry(f"workload {w.name}", partial(w.setup, ctx), opts.setup_timeout_s)
        ctx.history = history = History()  # setup is not part of the history
        nemesis = Nemesis(ctl, history)
        say(
            f"running {scenario.name} for {duration:g}s: {', '.join(s.fault.name for s in steps) or 'no faults'}"
        )
        stop = asyncio.Event()
        started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        async with asyncio.TaskGroup() as tg:
            clients_tasks = [tg.create_task(w.run(ctx, stop)) for w in workloads]
            nemesis_task = tg.create_task(nemesis.run(steps))
            await asyncio.sleep(duration)
            nemesis.finish()
            await nemesis_task
            say("healing every fault")
            heal_error = None
            try:
                await nemesis.heal_all()
            except Exception as exc:  # reported; the final reads show what it cost
                heal_error = f"{type(exc).__name__}: {exc}"
                say(f"heal failed: {heal_error}")
            stop.set()
            await asyncio.gather(*clients_tasks)
        elapsed_s = history.now() / 1e9
        say("final reads")
        for w in workloads:
            await w.finish(ctx)
        history.save(out_dir / "history.json")
        say("checking")
        verdicts: list[Verdict] = []
        for w in workloads:
            for checker in w.checkers(ctx):
                verdicts.append(await asyncio.to_thread(checker.check, history))
        vj = [v.to_json() for v in verdicts]
        result = {
            "scenario": scenario.name,
            "description": scenario.description,
            "valid": report.overall(vj),
            "started_at": started_at,
            "elapsed_s": round(elapsed_s, 3),
            "options": {
                "duration_s": duration,
                "base_port": opts.base_port,
                "sync_interval": opts.sync_interval,
                "seed": opts.seed,
                "run_id": ctx.run_id,
            },
            "regions": list(config.region_names),
            "verdicts": vj,
            "faults": [f.to_json() for f in nemesis.records],
            "heal_error": heal_error,
            "availability": analysis.availability(history, config.region_names),
            "failover": analysis.failover(history, nemesis.records),
            "op_counts": analysis.op_counts(history),
            "files": {"history": "history.json", "html": "report.html"},
        }
        json_path, html_path = report.write(result, out_dir)
        say(f"verdict: {report.overall(vj)}; {json_path} and {html_path}")
        return result
    finally:
        for c in clients.values():
            await c.aclose()
        if not opts.keep_sandbox:
            await asyncio.to_thread(_down, sandbox, mounts)
