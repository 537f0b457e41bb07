"""Named scenarios: workloads plus a nemesis schedule.

The smoke scenarios are short and each pairs one workload with the fault that
threatens it most. :func:`matrix` builds every fault x every workload for the
full run (``scripts/chaos``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from meridian.chaos.nemesis import (
    ClockSkew,
    Fault,
    KillProcess,
    KillRegion,
    LatencySpike,
    Partition,
    PartitionByLeader,
    Pause,
    PowerLoss,
    Step,
)
from meridian.chaos.workloads import bounded, register
from meridian.chaos.workloads.bank import BankWorkload
from meridian.chaos.workloads.base import Workload
from meridian.chaos.workloads.bounded import BoundedWorkload
from meridian.chaos.workloads.events import EventsWorkload
from meridian.chaos.workloads.flags import FlagsWorkload
from meridian.chaos.workloads.idempotency import IdempotencyWorkload
from meridian.chaos.workloads.register import RegisterWorkload
from meridian.chaos.workloads.replicated import ReplicatedWorkload
from meridian.chaos.workloads.residency import ResidencyWorkload
from meridian.config import MeridianConfig
from meridian.core.keyspace import Keyspace
from meridian.flags.store import KEYSPACE as FLAGS_KEYSPACE

Schedule = Callable[[MeridianConfig, float], list[Step]]


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    workloads: Callable[[], Sequence[Workload]]
    schedule: Schedule
    duration_s: float = 40.0


def faults_in_middle(*faults: Fault, lead_s: float = 5.0, tail_s: float = 8.0) -> Schedule:
    """Each fault in turn, after ``lead_s`` of calm, splitting the time that leaves
    ``tail_s`` of calm at the end, half held and half calm between faults."""

    def schedule(_config: MeridianConfig, duration: float) -> list[Step]:
        if not faults:
            return []
        slot = max(2.0, (duration - lead_s - tail_s) / len(faults))
        return [Step(lead_s + i * slot, fault, hold_s=slot / 2) for i, fault in enumerate(faults)]

    return schedule


def fault_until_end(fault: Callable[[], Fault], lead_s: float = 5.0) -> Schedule:
    """One fault after ``lead_s`` of calm, held until the run ends: the final heal
    is then the one the workloads' final reads follow (convergence after heal)."""

    def schedule(_config: MeridianConfig, duration: float) -> list[Step]:
        return [Step(lead_s, fault(), hold_s=duration + 3600)]

    return schedule


WORKLOADS: dict[str, Callable[[], Workload]] = {
    "register": RegisterWorkload,
    "bank": BankWorkload,
    "replicated": ReplicatedWorkload,
    "idempotency": IdempotencyWorkload,
    "events": EventsWorkload,
    "bounded": BoundedWorkload,
    "residency": ResidencyWorkload,
    "flags": FlagsWorkload,
}

#: The stream of the bounded workload's global keyspace (whose leader the smoke
#: scenario cuts off).
BOUNDED_STREAM = f"KV_{Keyspace(bounded.GLOBAL).bucket}"
#: The stream of the register workload's keyspace (whose leader's region the
#: register smoke scenario cuts off).
REGISTER_STREAM = f"KV_{Keyspace(register.KEYSPACE).bucket}"

#: The stream of the flags keyspace (whose leader's region the flags smoke
#: scenario cuts off).
FLAGS_STREAM = f"KV_{FLAGS_KEYSPACE.bucket}"

#: Every fault the nemesis knows, by name, against the region furthest from the others.
FAULTS: dict[str, Callable[[], Fault]] = {
    "partition": lambda: Partition("ap-south", "both"),
    "partition-inbound": lambda: Partition("ap-south", "inbound"),
    "partition-outbound": lambda: Partition("ap-south", "outbound"),
    "partition-leader": lambda: PartitionByLeader(),
    "latency": lambda: LatencySpike("us-east", "eu-west", 400.0, jitter_ms=50.0),
    "kill-region": lambda: KillRegion("eu-west"),
    "kill-global-server": lambda: KillProcess("nats:global-us-east", "us-east"),
    "kill-agent": lambda: KillProcess("agent:eu-west", "eu-west"),
    "pause-global-server": lambda: Pause("nats:global-eu-west", "eu-west"),
    "pause-agent": lambda: Pause("agent:ap-south", "ap-south"),
    "clock-skew": lambda: ClockSkew("ap-south", 1000),
    "power-loss": lambda: PowerLoss(
        ("nats:global-us-east", "nats:global-eu-west", "nats:global-ap-south")
    ),
}


def _single(workload: str, fault: str | None, duration_s: float, description: str) -> Scenario:
    def schedule(config: MeridianConfig, duration: float) -> list[Step]:
        faults = () if fault is None else (FAULTS[fault](),)  # fresh fault state per run
        return faults_in_middle(*faults)(config, duration)

    return Scenario(
        f"{workload}-{fault or 'calm'}",
        description,
        lambda: [WORKLOADS[workload]()],
        schedule,
        duration_s,
    )


SMOKE: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "register-replicated-partition",
            "A CAS register on global and replicated writes in every region while the "
            "region holding the register's leader is cut off until the end, then heal: "
            "linearizable, with every CONFLICT caused by a committed write? converged, HLCs "
            "sound, the cut-off region still writable?",
            lambda: [RegisterWorkload(), ReplicatedWorkload()],
            fault_until_end(lambda: PartitionByLeader(REGISTER_STREAM)),
            30.0,
        ),
        _single(
            "bank",
            "kill-region",
            30.0,
            "Bank transfers on global while eu-west is killed and restarted: money conserved?",
        ),
        Scenario(
            "commands-events-partition-kill",
            "Idempotent commands (shared keys, every region) and events (producers and a "
            "consumer group in every region) while ap-south is partitioned, then eu-west is "
            "killed and restarted: one effect and one response per key; no acknowledged "
            "event lost, none unexpected, producer order kept, duplicates absorbed?",
            lambda: [IdempotencyWorkload(), EventsWorkload()],
            lambda config, duration: faults_in_middle(
                FAULTS["partition"](), FAULTS["kill-region"]()
            )(config, duration),
            40.0,
        ),
        Scenario(
            "residency-partition-kill",
            "A CAS register on a regional keyspace allowed in us-east and eu-west (one "
            "partition homed in each) and events on a topic allowed in eu-west, while the "
            "home of one partition (us-east) is cut off, then the home of the other (eu-west) "
            "is killed and restarted: linearizable per key, every call from outside refused, "
            "and after the heal no resident byte on any server outside its regions?",
            lambda: [ResidencyWorkload()],
            lambda config, duration: faults_in_middle(
                Partition("us-east", "both"), KillRegion("eu-west")
            )(config, duration),
            40.0,
        ),
        Scenario(
            "flags-leader-partition-kill",
            "A flag changed by compare-and-set through a rotating region, evaluated by "
            "readers in every region, while the region holding the flags' leader is cut "
            "off, then eu-west is killed and restarted: every evaluation served (the cut-off "
            "region from what it has), no reader going back, nothing unwritten served, and "
            "every region on the newest generation after the heal?",
            lambda: [FlagsWorkload()],
            lambda config, duration: faults_in_middle(
                PartitionByLeader(FLAGS_STREAM), KillRegion("eu-west")
            )(config, duration),
            40.0,
        ),
        Scenario(
            "bounded-partitions",
            "One sequential writer and BOUNDED readers in every region, on a global and a "
            "replicated keyspace, while a region that holds no leader of the global one is "
            "cut off for 12 s, then the region that holds its leader: is any answer older "
            "than the bound it reports?",
            lambda: [BoundedWorkload()],
            lambda _config, _duration: [
                Step(5.0, PartitionByLeader(BOUNDED_STREAM, leader=False), hold_s=12.0),
                Step(24.0, PartitionByLeader(BOUNDED_STREAM, leader=True), hold_s=12.0),
            ],
            45.0,
        ),
    )
}


def matrix(duration_s: float = 60.0) -> dict[str, Scenario]:
    """Every fault x every workload, plus each workload without faults."""
    out: dict[str, Scenario] = {}
    for workload in WORKLOADS:
        for fault in [None, *FAULTS]:
            s = _single(workload, fault, duration_s, f"{workload} under {fault or 'no fault'}")
            out[s.name] = s
    return out


def find(name: str) -> Scenario:
    """A smoke scenario, or any ``WORKLOAD-FAULT`` of the matrix (``WORKLOAD-calm`` too)."""
    if name in SMOKE:
        return SMOKE[name]
    every = matrix()
    if name in every:
        return every[name]
    known = ", ".join(
        [*SMOKE, "WORKLOAD-FAULT with WORKLOAD in", *WORKLOADS, "and FAULT in calm", *FAULTS]
    )
    raise KeyError(f"unknown scenario {name!r}; known: {known}")
