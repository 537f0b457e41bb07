"""The policy set in a ``global`` keyspace, watched into the agent's engine.

The set is one key, ``set``, of the keyspace ``_policy`` (the KV bucket
``mg__policy``, R3 across the regions like every global keyspace). Its
value is canonical JSON: the Cedar text, who pushed it and when. Every
agent follows the key and installs each new set that validates; one that
does not (a set pushed by a newer version, with a schema this agent does not
know) is logged and skipped, and the agent keeps the last valid set.

The component serves at once with its *initial* set (``policy.initial``),
so authorization never waits for the global quorum; it stores that set if
none is stored yet (the first agent wins), then follows the store. While
the store can't be read (a partition, an election), the agent keeps the set
it has.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import rfc8785

from meridian.backbone.connection import (
    BackboneConnection,
    ensure_until_done,
    reraise_if_cancelling,
    retry_forever,
)
from meridian.backbone.lifecycle import Background
from meridian.config import GLOBAL_CLUSTER, MeridianConfig
from meridian.config.model import BUILTIN_POLICIES
from meridian.core.errors import (
    ConfigError,
    ConflictError,
    FieldViolation,
    InvalidArgumentError,
    MeridianError,
)
from meridian.core.hlc import HybridLogicalClock
from meridian.core.keyspace import Keyspace
from meridian.policy.engine import CompiledPolicies, PolicyEngine, compile_policies
from meridian.policy.model import MAX_POLICY_BYTES
from meridian.state import GlobalKeyspaceStore

log = logging.getLogger(__name__)

#: The key that holds the policy set.
SET_KEY = "set"
#: Between attempts to read or follow the store after a failure.
RETRY_S = 2.0

KEYSPACE = Keyspace("_policy", value_max_bytes=MAX_POLICY_BYTES + 4096, history=64)


@dataclass(frozen=True)
class StoredPolicies:
    """A policy set as stored: its text, who pushed it, when (ms since the epoch)."""

    text: str
    author: str
    updated_ms: int

    def encode(self) -> bytes:
        return rfc8785.dumps(
            {"text": self.text, "author": self.author, "updated_ms": self.updated_ms}
        )

    @classmethod
    def decode(cls, data: bytes) -> StoredPolicies:
        """ValueError when ``data`` is not a stored policy set."""
        doc = json.loads(data)
        if not isinstance(doc, dict) or not isinstance(doc.get("text"), str):
            raise ValueError("not a stored policy set")
        return cls(doc["text"], str(doc.get("author", "")), int(doc.get("updated_ms", 0)))

    @property
    def updated_at(self) -> datetime:
        return datetime.fromtimestamp(self.updated_ms / 1000, UTC)


def initial_text(config: MeridianConfig) -> str:
    """The Cedar text of ``policy.initial``: a built-in set or a file.
    ConfigError naming the field when the file can't be read."""
    name = config.initial_policy
    if name in BUILTIN_POLICIES:
        return resources.files("meridian.policy").joinpath(f"builtin/{name}.cedar").read_text()
    try:
        return Path(name).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            FieldViolation("policy.initial", f"cannot read {name}: {exc}"), config.source
        ) from exc


def initial_policies(config: MeridianConfig) -> CompiledPolicies:
    """``policy.initial`` compiled; ConfigError naming the field with Cedar's
    errors when it does not validate."""
    try:
        return compile_policies(initial_text(config), 0, field="policy.initial")
    except InvalidArgumentError as exc:
        raise ConfigError(list(exc.violations), config.source) from exc


class PolicyComponent(Background):
    """Keeps ``engine`` on the stored policy set; see the module docstring."""

    name = "policy"

    def __init__(
        self,
        conn: BackboneConnection,
        engine: PolicyEngine,
        *,
        region: str,
        replicas: int,
        timeout_s: float,
        hlc: HybridLogicalClock,
    ) -> None:
        super().__init__()
        self.engine = engine
        self.hlc = hlc
        self.initial = engine.policies
        self.store = GlobalKeyspaceStore(
            conn,
            KEYSPACE,
            region=region,
            replicas=replicas,
            timeout_s=timeout_s,
            clock_now=hlc.now,
            cluster=GLOBAL_CLUSTER,
        )
        #: Who pushed the installed set and when ("initial", 0 for the initial set).
        self.installed = StoredPolicies(self.initial.text, "initial", 0)

    async def run(self) -> None:
        self.serving()  # the initial set is in force from the start
        await ensure_until_done(self.store.conn, self.store.ensure, "policy keyspace")
        # While the store can't be read, the installed set stays in force.
        await retry_forever("following the policy set", self._follow, retry_s=RETRY_S)

    async def _follow(self) -> None:
        entry = await self.store.get_strong(SET_KEY)
        reraise_if_cancelling()  # nats-py can swallow a cancellation (3.11)
        if entry is None:
            seed = StoredPolicies(self.initial.text, "initial", self.hlc.now().wall_ms)
            try:
                await self.store.create(SET_KEY, seed.encode())
                log.info("stored the initial policy set")
            except ConflictError:
                pass  # another agent stored one first
            entry = await self.store.get_strong(SET_KEY)
            reraise_if_cancelling()
        if entry is not None:
            self._install(entry.revision, entry.value)
        start = entry.revision + 1 if entry is not None else 1
        async for revision, _, stored in self.store.watch(SET_KEY, start):
            if stored is not None:
                self._install(revision, stored.value)

    def _install(self, revision: int, data: bytes) -> None:
        """Install the set stored at ``revision`` if it is newer and validates here."""
        if revision <= self.engine.policies.revision:
            return
        try:
            stored = StoredPolicies.decode(data)
            compiled = compile_policies(stored.text, revision)
        except (ValueError, MeridianError) as exc:
            log.error(
                "the stored policy set (revision %d) does not validate here; keeping "
                "revision %d: %s",
                revision,
                self.engine.policies.revision,
                exc,
            )
            return
        self._use(stored, compiled)

    def _use(self, stored: StoredPolicies, compiled: CompiledPolicies) -> None:
        if compiled.revision > self.engine.policies.revision:
            self.installed = stored
            self.engine.install(compiled)

    async def put(
        self, compiled: CompiledPolicies, author: str, if_revision: int | None
    ) -> CompiledPolicies:
        """Store the validated set ``compiled``; installed here at once, elsewhere
        as the agents follow the key. ConflictError when ``if_revision`` is not
        the stored revision."""
        stored = StoredPolicies(compiled.text, author, self.hlc.now().wall_ms)
        if if_revision == 0:
            revision, _ = await self.store.create(SET_KEY, stored.encode())
        else:
            revision, _ = await self.store.put(SET_KEY, stored.encode(), if_revision)
        stored_set = dataclasses.replace(compiled, revision=revision)
        self._use(stored, stored_set)
        return stored_set
