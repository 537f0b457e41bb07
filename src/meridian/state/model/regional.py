"""A ``regional`` keyspace: partitions, their home regions, and the names of their streams.

A key's *partition* is its first segment (``eu.user-7.profile`` is in
partition ``eu``). Each partition is one JetStream KV bucket placed in its
*home* region's cluster, so writes to it are linearizable per key there and
need no WAN round trip from the home region. Every other region the keyspace's
residency allows holds a read-only *mirror* of that bucket, from which its
agents serve BOUNDED and EVENTUAL reads. A region outside the residency holds
nothing.

Re-homing a partition moves its bucket to another region's cluster with
JetStream's own stream move (a placement change: the stream's Raft group gains
the new peers, catches them up and hands over leadership), so writes during
the move are ordered by JetStream, never by Meridian.

Names (keyspace names are lowercase, so ``_P`` and ``_R`` cannot occur in one;
region names are lowercase too):

- bucket ``mgr_<keyspace>_P<partition>``, stream ``KV_mgr_<keyspace>_P<partition>``;
- mirror ``MGRM_<keyspace>_P<partition>_R<region>``.

Everything here is pure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from meridian.core.errors import FieldViolation

#: A partition token: it is part of stream names, which allow only these.
PARTITION = re.compile(r"[A-Za-z0-9_-]{1,64}")
BUCKET_PREFIX = "mgr_"
MIRROR_PREFIX = "MGRM_"
#: Stream metadata every regional stream carries (read by ``meridian residency check``).
META_KEYSPACE = "meridian.keyspace"
META_PARTITION = "meridian.partition"
META_RESIDENCY = "meridian.residency"


def partition_of(key: str) -> str:
    return key.split(".", 1)[0]


def partition_violations(key: str, field: str = "key") -> list[FieldViolation]:
    """The rule a regional key's first segment must follow (empty when it does)."""
    part = partition_of(key)
    if PARTITION.fullmatch(part):
        return []
    return [
        FieldViolation(
            field,
            "a regional key's first segment names its partition: 1-64 letters, digits, "
            f"'-' or '_'; got {part[:70]!r}",
        )
    ]


def bucket(keyspace: str, partition: str) -> str:
    return f"{BUCKET_PREFIX}{keyspace}_P{partition}"


def stream(keyspace: str, partition: str) -> str:
    return f"KV_{bucket(keyspace, partition)}"


def mirror(keyspace: str, partition: str, region: str) -> str:
    return f"{MIRROR_PREFIX}{keyspace}_P{partition}_R{region}"


@dataclass(frozen=True)
class StreamName:
    """What a regional stream's name says: keyspace, partition, mirror region (or None)."""

    keyspace: str
    partition: str
    mirror_region: str | None


def parse(name: str) -> StreamName | None:
    """The parts of a regional bucket's or mirror's stream name; None for any other."""
    if name.startswith("KV_" + BUCKET_PREFIX):
        rest, region = name[len("KV_" + BUCKET_PREFIX) :], None
    elif name.startswith(MIRROR_PREFIX):
        body, sep, region_part = name[len(MIRROR_PREFIX) :].rpartition("_R")
        if not sep or not region_part:
            return None
        rest, region = body, region_part
    else:
        return None
    keyspace, sep, partition = rest.partition("_P")
    if not sep or not keyspace or not PARTITION.fullmatch(partition):
        return None
    return StreamName(keyspace, partition, region)


def home_for_new(region: str, residency: tuple[str, ...] | None, default_home: str | None) -> str:
    """Where a partition first written from ``region`` is homed: there, if the
    residency allows it; else the keyspace's ``home`` (or its first region)."""
    if not residency or region in residency:
        return region
    return default_home or residency[0]


def mirror_regions(
    home: str, regions: tuple[str, ...], residency: tuple[str, ...] | None
) -> list[str]:
    """The regions that hold a read-only mirror of a partition homed at ``home``."""
    return [r for r in regions if r != home and (not residency or r in residency)]
