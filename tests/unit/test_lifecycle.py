"""Components stop when the agent stops them, even one whose task lost a
cancellation (3.11's asyncio.wait_for, inside nats-py, can swallow one)."""

from __future__ import annotations

import asyncio

from meridian.backbone.lifecycle import Background


class SwallowsOneCancel(Background):
    name = "swallows-one-cancel"
    cancel_again_s = 0.1

    def __init__(self) -> None:
        super().__init__()
        self.swallowed = 0

    async def run(self) -> None:
        self.serving()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            # What a wait_for that raced with its answer does: the cancellation
            # is lost and the task goes on, here into a wait that never ends.
            self.swallowed += 1
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
        await asyncio.Event().wait()


async def test_a_component_that_swallowed_a_cancellation_still_stops() -> None:
    component = SwallowsOneCancel()
    async with asyncio.timeout(30):  # a hang guard, not a speed check
        async with component:
            assert component.ready
    assert component.swallowed == 1
    assert component._task is not None and component._task.cancelled()
