"""Data residency: which regions may store and serve a keyspace's or a topic's data.

A residency is a set of region names. Empty means "every region". It is
declared per keyspace (``[[keyspace]] residency``) and per topic
(``[[topic]] residency``, matched on the topic's first token) and enforced in
four places (docs/residency.md):

- topology: the agent creates streams, mirrors and sources of resident data
  only in allowed regions;
- serving: an agent outside the set refuses with RESIDENCY_VIOLATION (or, for a
  ``regional`` keyspace that says ``forward``, reads and writes the home
  region's stream without keeping a copy);
- caches and idempotency records: an agent outside the set never holds them,
  since it never serves the data;
- events: a resident topic's events travel on their own subjects, sourced only
  into allowed regions.

``meridian residency check`` verifies the outcome on every server.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from meridian.core.errors import ResidencyViolationError


@dataclass(frozen=True)
class TopicResidency:
    """A declared topic (its first token) and the regions allowed to hold its events."""

    name: str
    residency: tuple[str, ...]

    def allowed(self, region: str) -> bool:
        return region in self.residency


def topic_residency(
    topics: Mapping[str, TopicResidency] | Iterable[TopicResidency], topic: str
) -> TopicResidency | None:
    """The declaration that covers ``topic`` (matched on its first token), if any."""
    first = topic.split(".", 1)[0]
    if isinstance(topics, Mapping):
        return topics.get(first)
    return next((t for t in topics if t.name == first), None)


def refuse(what: str, region: str, allowed: Iterable[str] | None) -> ResidencyViolationError:
    """The error an agent in ``region`` returns for data it may not hold."""
    where = ", ".join(sorted(allowed or ()))
    return ResidencyViolationError(
        f"{what} may only be stored and served in {where}; this agent is in {region}: "
        f"call an agent in {where}"
    )
