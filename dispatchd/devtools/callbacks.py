"""What every simulated dialect needs on its app to send reports and to hang requests.

A `Reporter` puts on the app a client session, the set of report tasks in flight and a
closing event, and sends a dialect's reports with the same retries, stats and log line as
every other dialect. The dialect keeps what is its own: the request each report is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Container, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol, TypeAlias, TypeVar

import aiohttp
from aiohttp import web

from dispatchd.config import SimulatorConfig

# How often a hung request checks whether its client has gone.
HANG_POLL = 0.2
# A report not taken is tried again after FIRST_PAUSE, each pause twice the one before.
FIRST_PAUSE = 0.05
CALLBACK_BACKOFF_MAX = 1.0
# The session's, so it bounds every try of every report however the dialect sends it.
REPORT_TIMEOUT = aiohttp.ClientTimeout(total=10)

_Item = TypeVar("_Item")

# One try at a report: its request, opened on the reporter's session.
Opened: TypeAlias = AbstractAsyncContextManager[aiohttp.ClientResponse]
Opener: TypeAlias = Callable[[aiohttp.ClientSession], Opened]


class ReportCounts(Protocol):
    """The report counters of the simulator's stats."""

    reports_sent: int
    reports_failed: int
    report_retries: int


class Reporter:
    """One dialect's report machinery, under app keys of its own."""

    def __init__(self, logger: logging.Logger, provider: str | None = None) -> None:
        prefix = f"simulator_{provider}" if provider else "simulator"
        self.session = web.AppKey(f"{prefix}_session", aiohttp.ClientSession)
        self.callbacks = web.AppKey[set[asyncio.Task[None]]](f"{prefix}_callbacks")
        self.closing = web.AppKey(f"{prefix}_closing", asyncio.Event)
        self._logger = logger
        self._provider = f"provider={provider} " if provider else ""

    def install(self, app: web.Application) -> None:
        """Give `app` the session, task set and closing event, for the app's lifetime."""
        app.cleanup_ctx.append(self._resources)
        app.on_shutdown.append(self._closing)

    async def _resources(self, app: web.Application) -> AsyncIterator[None]:
        app[self.session] = aiohttp.ClientSession(timeout=REPORT_TIMEOUT)
        app[self.callbacks] = set()
        app[self.closing] = asyncio.Event()
        yield
        pending = app[self.callbacks]
        for task in list(pending):
            task.cancel()
        # Awaited so no callback outlives the session it would post with.
        await asyncio.gather(*pending, return_exceptions=True)
        await app[self.session].close()

    async def _closing(self, app: web.Application) -> None:
        # Runs before the server waits for open requests, so hung ones let go at once.
        app[self.closing].set()

    async def hang(self, request: web.Request) -> None:
        """Wait until the client gives up or the simulator shuts down."""
        closing = request.app[self.closing]
        while not closing.is_set():
            transport = request.transport
            if transport is None or transport.is_closing():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(closing.wait(), HANG_POLL)

    def schedule(
        self,
        app: web.Application,
        name: str,
        settings: SimulatorConfig,
        plan: Sequence[_Item],
        post: Callable[[_Item], Awaitable[None]],
    ) -> None:
        """`post` each of `plan` in turn, `callback_delay` seconds from now, in task `name`."""
        if not plan:
            return
        task = asyncio.create_task(self._call_back(settings, plan, post), name=name)
        callbacks = app[self.callbacks]
        callbacks.add(task)
        task.add_done_callback(callbacks.discard)

    async def _call_back(
        self,
        settings: SimulatorConfig,
        plan: Sequence[_Item],
        post: Callable[[_Item], Awaitable[None]],
    ) -> None:
        if settings.callback_delay:
            await asyncio.sleep(settings.callback_delay)
        for item in plan:
            await post(item)

    async def post(
        self,
        app: web.Application,
        stats: ReportCounts,
        settings: SimulatorConfig,
        request: Opener,
        ids: str,
        *,
        retried: Container[int] = (),
    ) -> None:
        """Send one report, retrying for `callback_retry_for` seconds while it is not taken.

        Not taken: no answer, a 5xx, or a status in `retried`. `ids` (`key=value` words)
        name the report in the log.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.callback_retry_for
        pause = FIRST_PAUSE
        while True:
            error = await self._try(app, request, retried)
            if error is None:
                stats.reports_sent += 1
                return
            if loop.time() + pause > deadline:
                stats.reports_failed += 1
                # Never the URL: it carries dispatchd's callback token.
                self._logger.warning(
                    "event=simulator_callback_failed %s%s error=%s", self._provider, ids, error
                )
                return
            stats.report_retries += 1
            await asyncio.sleep(pause)
            pause = min(pause * 2, CALLBACK_BACKOFF_MAX)

    async def _try(
        self, app: web.Application, request: Opener, retried: Container[int]
    ) -> str | None:
        """One try: None if the report was taken, else why not."""
        try:
            async with request(app[self.session]) as resp:
                await resp.read()
                taken = resp.status < 500 and resp.status not in retried
                return None if taken else f"HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return repr(exc)
