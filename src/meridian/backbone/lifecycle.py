"""What every agent component is: an async context manager that serves while entered.

``async with component:`` returns once the component *serves* (its keyspaces
are followed, its streams ensured, its ports bound); leaving it stops the
component within the grace period it was built with. A component whose work
runs in the background subclasses :class:`Background`: its ``run()`` calls
``self.serving()`` once it serves, and keeps running until cancelled.

:func:`enter_together` enters several components at once, so one that waits
for JetStream does not hold back another that doesn't need it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Protocol, Self

log = logging.getLogger(__name__)

#: How long a component's task has to end after a cancellation before it is
#: cancelled again: far beyond any clean-up (which a second cancellation
#: would cut short), so only a task that lost its cancellation gets one.
CANCEL_AGAIN_S = 10.0


class Component(Protocol):
    """A part of the agent: serving while entered."""

    name: str

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None: ...


class Background:
    """A component whose work is one task: ``run()``, which calls ``self.serving()``."""

    name = "background"
    #: See CANCEL_AGAIN_S.
    cancel_again_s = CANCEL_AGAIN_S

    def __init__(self) -> None:
        self._serving = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        """Whether it serves (set once; a later failure is the component's to report)."""
        return self._serving.is_set()

    async def wait_serving(self) -> None:
        """Return once it serves."""
        await self._serving.wait()

    def serving(self) -> None:
        """Called by ``run()`` once the component serves."""
        self._serving.set()

    async def run(self) -> None:
        """The background work; call ``self.serving()`` once serving. Runs until cancelled."""
        raise NotImplementedError

    async def closing(self) -> None:
        """Release what ``run()`` does not own (sessions, leases); after the task ends."""

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self.run(), name=self.name)
        waiter = asyncio.create_task(self._serving.wait())
        try:
            await asyncio.wait({self._task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            waiter.cancel()
            await self._cancel()
            raise
        waiter.cancel()
        if self._task.done() and not self._serving.is_set():
            self._task.result()  # raises what ended it
            raise RuntimeError(f"component {self.name} ended before it served")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._cancel()

    async def _cancel(self) -> None:
        if self._task is not None:
            # Cancel again if it still runs: 3.11's asyncio.wait_for (which
            # nats-py uses for every request) swallows a cancellation that races
            # with the request's answer, and a task that does not check
            # (reraise_if_cancelling) goes on, say into a feed that waits for
            # ever.
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=self.cancel_again_s)
            while not self._task.done():
                log.warning("component %s lost its cancellation; cancelling again", self.name)
                self._task.cancel()
                await asyncio.wait({self._task}, timeout=self.cancel_again_s)
            with contextlib.suppress(asyncio.CancelledError):
                try:
                    await self._task
                except Exception:
                    log.exception("component %s failed", self.name)
        await self.closing()


async def enter_together(stack: AsyncExitStack, components: list[Component]) -> None:
    """Enter ``components`` concurrently; on ``stack`` they leave in reverse order.

    If one fails to enter, those that entered are left again (through the
    stack) and the failure propagates.
    """
    entered: dict[int, Component] = {}

    async def enter(i: int, component: Component) -> None:
        await component.__aenter__()
        entered[i] = component

    try:
        async with asyncio.TaskGroup() as tg:
            for i, component in enumerate(components):
                tg.create_task(enter(i, component), name=f"enter-{component.name}")
    finally:
        for i in sorted(entered):
            stack.push_async_exit(entered[i])
