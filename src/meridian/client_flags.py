"""Feature flags through the Python client: ``MeridianClient.flags``.

::

    async with MeridianClient("127.0.0.1:14020", tls=folder) as m:
        e = await m.flags.evaluate("new-checkout", {"targetingKey": "user-1"})
        if e.value:
            ...

Evaluations are local to the agent's region; a failed evaluation is not an
exception but an evaluation with ``error_code`` set (as OpenFeature reports
it). Services that use the OpenFeature SDK instead point its OFREP provider
at the agent's HTTPS port (docs/flags.md).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from google.protobuf import json_format, struct_pb2

from meridian._pb.meridian.v1 import flags_pb2

T = TypeVar("T")


@dataclass(frozen=True)
class FlagEvaluation:
    """One flag evaluated in the agent's region."""

    key: str
    value: Any
    variant: str
    reason: str
    error_code: str = ""
    error_details: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Flag:
    """A flag as stored: its flagd definition (a dict), revision and author."""

    key: str
    definition: Mapping[str, Any]
    revision: int
    author: str
    updated_at: datetime
    killed_variant: str = ""


def _context(context: Mapping[str, Any] | None) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    if context:
        out.update(dict(context))
    return out


def _evaluation(e: flags_pb2.FlagEvaluation) -> FlagEvaluation:
    return FlagEvaluation(
        key=e.key,
        value=json_format.MessageToDict(e.value) if e.HasField("value") else None,
        variant=e.variant,
        reason=e.reason,
        error_code=e.error_code,
        error_details=e.error_details,
        metadata=json_format.MessageToDict(e.metadata),
    )


def _flag(f: flags_pb2.Flag) -> Flag:
    return Flag(
        key=f.key,
        definition=json.loads(f.definition),
        revision=f.revision,
        author=f.author,
        updated_at=f.updated_at.ToDatetime(),
        killed_variant=f.killed_variant,
    )


class Flags:
    """The FlagService of one client's agent."""

    def __init__(
        self,
        stub: Callable[[], Any],
        call: Callable[[Callable[..., Awaitable[T]], Any], Awaitable[T]],
    ) -> None:
        self._stub = stub
        self._call: Any = call

    async def evaluate(self, key: str, context: Mapping[str, Any] | None = None) -> FlagEvaluation:
        r = await self._call(
            self._stub().Evaluate, flags_pb2.EvaluateFlagRequest(key=key, context=_context(context))
        )
        return _evaluation(r.evaluation)

    async def evaluate_all(
        self, context: Mapping[str, Any] | None = None
    ) -> tuple[list[FlagEvaluation], int]:
        """Every flag, and the revision of the flag set evaluated."""
        r = await self._call(
            self._stub().EvaluateAll, flags_pb2.EvaluateAllFlagsRequest(context=_context(context))
        )
        return [_evaluation(e) for e in r.evaluations], r.revision

    async def set(
        self, key: str, definition: Mapping[str, Any] | str, *, if_revision: int | None = None
    ) -> Flag:
        """Store a flag (flagd's format: a dict or its JSON); INVALID_ARGUMENT
        naming the field when it does not validate."""
        text = definition if isinstance(definition, str) else json.dumps(definition)
        request = flags_pb2.SetFlagRequest(key=key, definition=text, if_revision=if_revision)
        return _flag((await self._call(self._stub().SetFlag, request)).flag)

    async def get(self, key: str) -> Flag:
        r = await self._call(self._stub().GetFlag, flags_pb2.GetFlagRequest(key=key))
        return _flag(r.flag)

    async def list(self) -> list[Flag]:
        r = await self._call(self._stub().ListFlags, flags_pb2.ListFlagsRequest())
        return [_flag(f) for f in r.flags]

    async def kill(self, key: str, variant: str = "", *, if_revision: int | None = None) -> Flag:
        """The kill switch: every region serves ``variant`` (default: "off")."""
        request = flags_pb2.KillFlagRequest(key=key, variant=variant, if_revision=if_revision)
        return _flag((await self._call(self._stub().KillFlag, request)).flag)

    async def delete(self, key: str, *, if_revision: int | None = None) -> int:
        request = flags_pb2.DeleteFlagRequest(key=key, if_revision=if_revision)
        return int((await self._call(self._stub().DeleteFlag, request)).revision)
