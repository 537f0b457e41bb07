"""The one enforcement point: every call an agent serves is authorized here.

The route table wraps each RPC's handler with :meth:`Guard.wrap` (both
transports are built from it, so gRPC and HTTP share it, the gateway's calls
included: the gateway is a caller like any other), and ``InvocationApi.call``
checks ``invoke`` for the proxies and the Invoke RPC. The caller is the
identity in its client certificate (:data:`~meridian.core.calls.CALLER`).
The RPCs that are admin changes (:data:`~meridian.policy.rpcs.AUDITED`) are
recorded in the audit log, and waited for, once authorized and before they
run: if the record fails, so does the call, and nothing changes.

In insecure mode there are no identities, so there is nothing to authorize:
the guard lets every call through (the agent logs that at start, and refuses
insecure mode beyond loopback).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

from google.protobuf import json_format

from meridian.core.calls import CALLER
from meridian.core.errors import MeridianError, PermissionDeniedError
from meridian.policy.engine import PolicyEngine
from meridian.policy.model import Access, AuditTrail, Principal
from meridian.policy.rpcs import AUDITED, RULES, RpcContext, Rule
from meridian.security.model import Identity

Handler = Callable[[Any], Awaitable[Any]]


class Guard:
    """Authorizes accesses for the caller of the call being served.

    ``engine`` None: insecure mode, every access passes. ``instance_service``
    says which service an instance id was registered for ("" if unknown)."""

    def __init__(
        self,
        engine: PolicyEngine | None,
        *,
        region: str,
        instance_service: Callable[[str], str] = lambda _: "",
        trail: AuditTrail | None = None,
    ) -> None:
        self.engine = engine
        #: Where admin changes are recorded before they run (the audit log).
        self.trail = trail
        self.context = RpcContext(region, instance_service)
        self._principals: dict[str, Principal] = {}

    @property
    def enabled(self) -> bool:
        return self.engine is not None

    def principal(self) -> Principal:
        """The caller of the call being served, as a Cedar principal.
        PermissionDeniedError when it has no identity a policy can name."""
        uri = CALLER.get().identity
        found = self._principals.get(uri)
        if found is None:
            try:
                found = Principal.of(Identity.parse(uri))
            except (ValueError, MeridianError) as exc:
                raise PermissionDeniedError(
                    "the caller has no identity a policy can name; present a client "
                    "certificate of an agent, service, gateway or operator"
                ) from exc
            if len(self._principals) < 10_000:
                self._principals[uri] = found
        return found

    def check(self, accesses: Iterable[Access], principal: Principal | None = None) -> None:
        """Raise PermissionDeniedError (naming the action and resource) unless
        the caller (or ``principal``) may do every one of ``accesses``."""
        engine = self.engine
        if engine is None:
            return
        who = principal or self.principal()
        for access in accesses:
            engine.check(who, access)

    def wrap(self, rpc: str, handler: Handler, *, client_streaming: bool) -> Handler:
        """``handler`` of ``rpc`` (``"StateService/Get"``), authorized first.
        A client stream is authorized message by message, as each arrives.
        KeyError when ``rpc`` has no rule: an RPC can't be served unauthorized."""
        rule = RULES[rpc]
        if self.engine is None:
            return handler
        ctx = self.context

        if client_streaming:

            async def streaming(requests: AsyncIterator[Any]) -> Any:
                principal = self.principal()
                return await handler(self._checked(rule, principal, requests))

            return streaming

        audited = AUDITED.get(rpc)
        trail = self.trail
        if audited is not None and trail is not None:

            async def recorded(request: Any) -> Any:
                principal = self.principal()
                accesses = list(rule(request, ctx))
                self.check(accesses, principal)
                if audited(principal):
                    detail = {"rpc": rpc, "request": _summary(request)}
                    for access in accesses:
                        await trail.admin(uuid.uuid4().hex, access, detail)
                return await handler(request)

            return recorded

        async def unary(request: Any) -> Any:
            self.check(rule(request, ctx))
            return await handler(request)

        return unary

    async def _checked(
        self, rule: Rule, principal: Principal, requests: AsyncIterator[Any]
    ) -> AsyncIterator[Any]:
        async for request in requests:
            self.check(rule(request, self.context), principal)
            yield request


#: Longest request summary kept in an audit entry (the model allows 4096).
SUMMARY_CHARS = 2048


def _summary(request: Any) -> str:
    """What an audited admin call asked, exactly: its request as compact JSON
    (proto field names), cut to SUMMARY_CHARS."""
    fields = json_format.MessageToDict(request, preserving_proto_field_name=True)
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))[:SUMMARY_CHARS]
