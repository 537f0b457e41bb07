"""Calls pinned to a version, on the sandbox with real test-service processes:
``Meridian-Version`` sends a call only to instances of that version (in this
region if it has one, else where one is), and every answer says which version
served it (the ``Meridian-Version`` response header, the gRPC metadata, and
InvokeResponse.version)."""

from __future__ import annotations

import collections

from tests.e2e.conftest import SandboxHandle
from tests.e2e.services import ServiceFleet
from tests.e2e.test_invoke import call, invoke_url


async def test_a_pinned_call_reaches_only_that_version(
    sandbox: SandboxHandle, fleet: ServiceFleet
) -> None:
    v1 = fleet.start("ver", "us-east", version="v1")
    v2 = fleet.start("ver", "us-east", version="v2")
    v3 = fleet.start("ver", "eu-west", version="v3")
    await fleet.wait_visible([v1, v2, v3], everywhere=("us-east", "eu-west"))
    url = invoke_url(sandbox, "us-east", "ver")
    async with sandbox.session() as session:
        # Unpinned: both local versions serve, and each answer names its version.
        seen: collections.Counter[str] = collections.Counter()
        for _ in range(30):
            status, headers, _ = await call(session, url)
            assert status == 200
            seen[headers["Meridian-Version"]] += 1
        assert set(seen) == {"v1", "v2"}, seen
        # Pinned: only that version, here.
        for version, inst in (("v1", v1), ("v2", v2)):
            for _ in range(10):
                status, headers, body = await call(
                    session, url, headers={"Meridian-Version": version}
                )
                assert status == 200, body
                assert headers["Meridian-Version"] == version
                assert headers["Meridian-Instance"] == inst.instance_id
                assert headers["Meridian-Region"] == "us-east"
        # A version only eu-west runs: the call goes there.
        status, headers, body = await call(session, url, headers={"Meridian-Version": "v3"})
        assert status == 200, body
        assert (headers["Meridian-Region"], headers["Meridian-Version"]) == ("eu-west", "v3")
        # A version nobody runs: no route, naming it; nothing was called.
        before = sum([(await fleet.stats(i))["requests"] for i in (v1, v2, v3)])
        status, _, body = await call(session, url, headers={"Meridian-Version": "v9"})
        assert status == 503, body
        assert "version 'v9'" in body["error"]["message"], body
        after = sum([(await fleet.stats(i))["requests"] for i in (v1, v2, v3)])
        assert after == before
