"""FlagService: evaluate flags locally, change them with one global write.

Proto in, proto out. Authorization (``flags:evaluate``, ``admin:flags``) is
the guard's, like every other RPC's; changes (set, kill, delete) are checked
first, then recorded in the audit log, then stored, so a refused change is
neither stored nor recorded as made.

Every evaluation is an OpenTelemetry span event ``feature_flag.evaluation``
on the call's span, with ``feature_flag.key``, ``feature_flag.result.variant``
and ``feature_flag.result.reason`` (and ``error.type`` when it failed).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format, struct_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import trace

from meridian._pb.meridian.v1 import flags_pb2 as pb
from meridian.core.calls import CALLER
from meridian.core.errors import (
    ConflictError,
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from meridian.flags.model import (
    ERROR,
    GENERAL,
    INVALID_CONTEXT,
    Evaluation,
    StoredFlag,
    context_violations,
    evaluate_in,
    evaluation_data,
    key_violations,
    parse_definition_json,
)
from meridian.flags.store import FlagsComponent, Unreadable
from meridian.policy.model import Access, AuditTrail

#: OpenFeature's error code while the flags have not been loaded yet.
PROVIDER_NOT_READY = "PROVIDER_NOT_READY"
#: How many times a kill re-reads and retries when another change won the CAS.
KILL_ATTEMPTS = 5


def _plain(value: Any) -> Any:
    """A Struct's value as JSON would give it: whole numbers as ints (Struct
    keeps every number as a double; flagd's ``cat`` prints 42, not 42.0)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def context_of(message: struct_pb2.Struct) -> dict[str, Any]:
    return _plain(json_format.MessageToDict(message)) if message.fields else {}


def _value(value: Any) -> struct_pb2.Value:
    # The scalar kinds directly: ParseDict costs some 3 µs a value, and a bulk
    # evaluation builds one per flag.
    if isinstance(value, bool):
        return struct_pb2.Value(bool_value=value)
    if isinstance(value, str):
        return struct_pb2.Value(string_value=value)
    if isinstance(value, int | float):
        return struct_pb2.Value(number_value=value)
    out = struct_pb2.Value()
    json_format.ParseDict(value, out)
    return out


#: Each flag's metadata as a Struct, built once: keyed by the mapping's id and
#: holding the mapping, so an id is not reused while its entry lives.
_STRUCTS: dict[int, tuple[Mapping[str, Any], struct_pb2.Struct]] = {}


def _struct(doc: Mapping[str, Any]) -> struct_pb2.Struct | None:
    if not doc:
        return None
    cached = _STRUCTS.get(id(doc))
    if cached is not None and cached[0] is doc:
        return cached[1]
    out = struct_pb2.Struct()
    out.update(dict(doc))
    if len(_STRUCTS) > 20_000:
        _STRUCTS.clear()
    _STRUCTS[id(doc)] = (doc, out)
    return out


def evaluation_pb(e: Evaluation) -> pb.FlagEvaluation:
    return pb.FlagEvaluation(
        key=e.key,
        value=_value(e.value) if not e.failed else None,
        variant=e.variant,
        reason=e.reason,
        error_code=e.error_code,
        error_details=e.error_details,
        metadata=_struct(e.metadata),
    )


def flag_pb(key: str, revision: int, flag: StoredFlag) -> pb.Flag:
    updated = Timestamp()
    updated.FromMilliseconds(flag.updated_ms)
    return pb.Flag(
        key=key,
        definition=flag.definition.canonical(),
        revision=revision,
        author=flag.author,
        updated_at=updated,
        killed_variant=flag.killed_variant,
    )


def _record(span: trace.Span, e: Evaluation) -> None:
    if not span.is_recording():
        return
    attributes = {
        "feature_flag.key": e.key,
        "feature_flag.result.reason": e.reason.lower(),
    }
    if e.variant:
        attributes["feature_flag.result.variant"] = e.variant
    if e.error_code:
        attributes["error.type"] = e.error_code.lower()
    span.add_event("feature_flag.evaluation", attributes)


class FlagApi:
    """The FlagService RPCs over the agent's flags component."""

    def __init__(self, flags: FlagsComponent, *, region: str, trail: AuditTrail) -> None:
        self.flags = flags
        self.region = region
        self.trail = trail

    # -- evaluation -------------------------------------------------------

    def evaluate_one(self, key: str, context: Mapping[str, Any], now_s: int) -> Evaluation:
        """``key`` evaluated for ``context`` (already checked) from the cache."""
        e = self._evaluate(key, evaluation_data(context, self.region), now_s)
        _record(trace.get_current_span(), e)
        return e

    def _evaluate(self, key: str, data: dict[str, Any], now_s: int) -> Evaluation:
        if not self.flags.loaded:
            return Evaluation(
                key,
                error_code=PROVIDER_NOT_READY,
                error_details="this agent has not loaded the flags yet (the global "
                "quorum has not been reached since it started)",
            )
        held = self.flags.get(key)
        if held is None:
            return evaluate_in(key, None, data, now_s)
        if isinstance(held[1], Unreadable):
            return Evaluation(key, error_code=GENERAL, error_details=held[1].reason)
        return evaluate_in(key, held[1], data, now_s)

    def _context(self, key: str, message: struct_pb2.Struct) -> dict[str, Any] | Evaluation:
        context = context_of(message)
        bad = context_violations(context)
        target = context.get("targetingKey")
        if target is not None and not isinstance(target, str):
            bad.append(FieldViolation("context.targetingKey", "must be a string"))
        if bad:
            return Evaluation(
                key, reason=ERROR, error_code=INVALID_CONTEXT, error_details=str(bad[0])
            )
        return context

    async def evaluate(self, request: pb.EvaluateFlagRequest) -> pb.EvaluateFlagResponse:
        v = key_violations(request.key)
        if v:
            raise InvalidArgumentError(v)
        context = self._context(request.key, request.context)
        if isinstance(context, Evaluation):
            _record(trace.get_current_span(), context)
            return pb.EvaluateFlagResponse(evaluation=evaluation_pb(context))
        e = self.evaluate_one(request.key, context, int(time.time()))
        return pb.EvaluateFlagResponse(evaluation=evaluation_pb(e))

    def evaluate_all_now(self, context: Mapping[str, Any]) -> tuple[list[Evaluation], int]:
        now_s = int(time.time())
        span = trace.get_current_span()
        data = evaluation_data(context, self.region)
        out = [self._evaluate(k, data, now_s) for k in self.flags.flag_keys()]
        for e in out:
            _record(span, e)
        return out, self.flags.revision

    async def evaluate_all(
        self, request: pb.EvaluateAllFlagsRequest
    ) -> pb.EvaluateAllFlagsResponse:
        context = self._context("", request.context)
        if isinstance(context, Evaluation):
            raise InvalidArgumentError(FieldViolation("context", context.error_details))
        if not self.flags.loaded:
            # An empty list would read as "no flags": say it can't answer yet.
            raise UnavailableError(
                "this agent has not loaded the flags yet (the global quorum has not "
                "been reached since it started); retry"
            )
        evaluations, revision = self.evaluate_all_now(context)
        return pb.EvaluateAllFlagsResponse(
            evaluations=[evaluation_pb(e) for e in evaluations], revision=revision
        )

    def served(self, e: pb.FlagEvaluation) -> tuple[Any, Mapping[str, Any]]:
        """An evaluation's value and metadata exactly as the flag defines them
        (protobuf keeps numbers as doubles: 3 would be served as 3.0)."""
        held = self.flags.get(e.key)
        if held is not None and isinstance(held[1], StoredFlag):
            d = held[1].definition
            if e.variant in d.variants:
                return d.variants[e.variant], d.metadata
        # Changed since it was evaluated: what the evaluation said.
        return _plain(json_format.MessageToDict(e.value)), _plain(
            json_format.MessageToDict(e.metadata)
        )

    # -- reads ------------------------------------------------------------

    def _held(self, key: str) -> tuple[int, StoredFlag]:
        v = key_violations(key)
        if v:
            raise InvalidArgumentError(v)
        held = self.flags.get(key)
        if held is None:
            raise NotFoundError(f"flag {key!r} is not defined")
        revision, flag = held
        if isinstance(flag, Unreadable):
            raise InvalidArgumentError(FieldViolation("key", flag.reason))
        return revision, flag

    async def get_flag(self, request: pb.GetFlagRequest) -> pb.GetFlagResponse:
        revision, flag = self._held(request.key)
        return pb.GetFlagResponse(flag=flag_pb(request.key, revision, flag))

    async def list_flags(self, request: pb.ListFlagsRequest) -> pb.ListFlagsResponse:
        out = []
        for key in self.flags.flag_keys():
            held = self.flags.get(key)
            if held is not None and isinstance(held[1], StoredFlag):
                out.append(flag_pb(key, held[0], held[1]))
        return pb.ListFlagsResponse(flags=out)

    # -- changes ----------------------------------------------------------

    async def _audit(self, what: str, key: str, detail: Mapping[str, str]) -> None:
        await self.trail.admin(
            uuid.uuid4().hex, Access("admin:flags", "Flag", key), {"change": what, **detail}
        )

    async def set_flag(self, request: pb.SetFlagRequest) -> pb.SetFlagResponse:
        """Check, record in the audit log, store; INVALID_ARGUMENT naming the
        field, or CONFLICT on a stale ``if_revision``, store nothing."""
        v = key_violations(request.key)
        definition = None
        try:
            definition = parse_definition_json(request.definition)
        except InvalidArgumentError as exc:
            v.extend(exc.violations)
        if v or definition is None:
            raise InvalidArgumentError(v)
        if_revision = request.if_revision if request.HasField("if_revision") else None
        canonical = definition.canonical()
        await self._audit(
            "set",
            request.key,
            {
                "sha256": hashlib.sha256(canonical.encode()).hexdigest(),
                "definition": canonical[:4096],
                "if_revision": "" if if_revision is None else str(if_revision),
            },
        )
        flag = StoredFlag(definition, CALLER.get().identity, int(time.time() * 1000))
        revision = await self.flags.write(request.key, flag, if_revision)
        return pb.SetFlagResponse(flag=flag_pb(request.key, revision, flag))

    async def kill_flag(self, request: pb.KillFlagRequest) -> pb.KillFlagResponse:
        """The kill switch: the stored flag, killed to its off variant, by CAS
        on its stored revision (re-read and retried when another change won,
        unless the caller gave ``if_revision``)."""
        v = key_violations(request.key)
        if v:
            raise InvalidArgumentError(v)
        given = request.if_revision if request.HasField("if_revision") else None
        for attempt in range(KILL_ATTEMPTS):
            entry = await self.flags.store.get_strong(request.key)
            if entry is None:
                raise NotFoundError(f"flag {request.key!r} is not defined")
            stored = StoredFlag.decode(entry.value)
            variant = stored.definition.off_variant(request.variant)
            if given is not None and given != entry.revision:
                raise ConflictError(
                    f"flag {request.key!r} is at revision {entry.revision}, not {given}",
                    current_revision=entry.revision,
                )
            if attempt == 0:
                await self._audit(
                    "kill", request.key, {"variant": variant, "revision": str(entry.revision)}
                )
            killed = StoredFlag(
                stored.definition, CALLER.get().identity, int(time.time() * 1000), variant
            )
            try:
                revision = await self.flags.write(request.key, killed, entry.revision)
            except ConflictError:
                if given is not None or attempt == KILL_ATTEMPTS - 1:
                    raise
                continue
            return pb.KillFlagResponse(flag=flag_pb(request.key, revision, killed))
        raise AssertionError("unreachable")

    async def delete_flag(self, request: pb.DeleteFlagRequest) -> pb.DeleteFlagResponse:
        v = key_violations(request.key)
        if v:
            raise InvalidArgumentError(v)
        if_revision = request.if_revision if request.HasField("if_revision") else None
        await self._audit(
            "delete",
            request.key,
            {"if_revision": "" if if_revision is None else str(if_revision)},
        )
        return pb.DeleteFlagResponse(revision=await self.flags.delete(request.key, if_revision))
