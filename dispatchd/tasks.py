"""Background tasks: a bounded pool of named tasks, and the supervisor of the daemon's loops.

`TaskPool` holds the deliveries of the worker and the callbacks of the webhook sender: at
most `limit` at once, each named and tied to the item it works on, so `stop` can say which
items were cut short. `Supervisor` runs the daemon's long-lived loops; one that ends while
the daemon is not stopping is logged (`event=<task>_died`) and sets `failed`, which stops
the daemon with a non-zero exit so systemd restarts it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


class PoolFull(RuntimeError):
    """Every slot of the pool is taken."""


class TaskPool(Generic[T]):
    """At most `limit` tasks at once, each working on one item; `on_done` after each ends.

    A task that raises is logged as `event=<kind>_crashed`: the code it runs is expected
    to handle its own failures, so anything escaping is a bug worth a traceback.
    """

    def __init__(self, kind: str, limit: int, *, on_done: Callable[[], None]) -> None:
        self._kind = kind
        self.limit = limit
        self._on_done = on_done
        self._tasks: dict[asyncio.Task[None], T] = {}

    def __len__(self) -> int:
        return len(self._tasks)

    @property
    def free(self) -> int:
        """Slots open now."""
        return max(0, self.limit - len(self._tasks))

    def items(self) -> list[T]:
        """The items being worked on."""
        return list(self._tasks.values())

    def spawn(self, item: T, work: Coroutine[Any, Any, None], name: str) -> None:
        """Run `work` on `item` as the task `name`; PoolFull if no slot is free."""
        if not self.free:
            work.close()
            raise PoolFull(f"{self._kind}: all {self.limit} slots are taken")
        task = asyncio.create_task(work, name=name)
        self._tasks[task] = item
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error(
                "event=%s_crashed task=%s error=%r",
                self._kind,
                task.get_name(),
                exc,
                exc_info=exc,
            )
        self._on_done()

    async def wait(self) -> None:
        """Wait for the tasks running now to end (not for any started meanwhile)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def stop(self, grace: float) -> list[T]:
        """Give running tasks up to `grace` seconds, cancel the rest; return their items."""
        if not self._tasks:
            return []
        running = dict(self._tasks)
        _, pending = await asyncio.wait(running, timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        return [running[task] for task in pending]


class Supervisor:
    """Runs the daemon's background loops; one that ends unexpectedly fails the daemon."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self.failed = asyncio.Event()

    @property
    def names(self) -> list[str]:
        """The tasks still running."""
        return sorted(t.get_name() for t in self._tasks)

    def spawn(self, name: str, loop: Coroutine[Any, Any, None]) -> None:
        """Run `loop`, which is meant to last until the daemon stops, as the task `name`."""
        task = asyncio.create_task(loop, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._stopping or task.cancelled():
            return
        exc = task.exception()
        event = task.get_name().replace("-", "_")
        error = exc if exc is not None else "ended without being stopped"
        logger.error("event=%s_died error=%r", event, error, exc_info=exc)
        self.failed.set()

    def stopping(self) -> None:
        """The daemon is stopping: loops ending from now on end as they should."""
        self._stopping = True

    async def stop(self) -> None:
        """Cancel the loops still running and wait for them."""
        self._stopping = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
