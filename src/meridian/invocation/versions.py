"""Which version of a service a call may reach: pinned, by weights, sticky.

Pure. A call pinned with ``Meridian-Version`` reaches that version only (the
router filters the pool by it). Otherwise, in a region with routing weights
for the service (:mod:`meridian.rollouts`), this region's instances of
versions without weight are left out of the pool, and the call goes to a
version chosen among those with a usable instance here, in proportion to the
weights; a ``Meridian-Sticky-Key`` (else the idempotency key) keeps one
caller on one version (:func:`meridian.rollouts.model.choose_version`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from meridian.invocation.model import InstanceView
from meridian.rollouts.model import choose_version

#: The header (gRPC metadata key) that pins a call to one version of the service.
VERSION_HEADER = "meridian-version"
#: The header that keeps a caller on one version while weights split traffic;
#: without it, the idempotency key does.
STICKY_HEADERS = ("meridian-sticky-key", "idempotency-key")
#: Versions of one service named in its metrics; later ones are OTHER_VERSION.
MAX_VERSION_LABELS = 16
OTHER_VERSION = "other"


def pinned_version(headers: tuple[tuple[str, str], ...]) -> str | None:
    """The version a call is pinned to (``Meridian-Version``), or None."""
    for name, value in headers:
        if name.lower() == VERSION_HEADER:
            return value.strip()
    return None


def sticky_key(headers: tuple[tuple[str, str], ...]) -> str | None:
    """The key that keeps a call on one version (``Meridian-Sticky-Key``, else
    the idempotency key), or None."""
    found: dict[str, str] = {}
    for name, value in headers:
        lower = name.lower()
        if lower in STICKY_HEADERS and value:
            found[lower] = value
    return found.get(STICKY_HEADERS[0]) or found.get(STICKY_HEADERS[1])


def weighted_views(
    views: list[InstanceView], region: str, weights: Mapping[str, int]
) -> list[InstanceView]:
    """``views`` without ``region``'s instances of versions that have no
    weight there (another region serves rather than a version rolled back here)."""
    return [v for v in views if v.region != region or weights.get(v.version, 0) > 0]


def by_weight(
    service: str,
    headers: tuple[tuple[str, str], ...],
    local: list[InstanceView],
    ejected: frozenset[str],
    weights: Mapping[str, int],
    rand: Callable[[], float],
) -> list[InstanceView]:
    """The ``local`` instances of the version the weights choose for the call
    among those with a usable (healthy, not ejected) instance; all of them
    when none of those is weighted."""
    available = {v.version for v in local if v.healthy and v.instance_id not in ejected}
    chosen = choose_version(service, weights, available, sticky_key(headers), rand)
    if chosen is None:
        return local
    return [v for v in local if v.version == chosen]


def metric_version(seen: set[str], version: str) -> str:
    """``version`` as a metric label, ``seen`` holding the versions of the
    service labelled so far: the first MAX_VERSION_LABELS keep their name,
    any later one is "other" (a service that registers a new version per
    instance must not grow the metrics without bound)."""
    if version in seen:
        return version
    if len(seen) < MAX_VERSION_LABELS:
        seen.add(version)
        return version
    return OTHER_VERSION
