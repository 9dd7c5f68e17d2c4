"""Retention: final messages older than `[storage] retention` are deleted, with their
attempts, history and status callbacks, and the file's freed pages go back to the system.

A purge never holds the writer for long: it deletes `PURGE_BATCH` messages per transaction
and gives the free pages back `RECLAIM_PAGES` at a time, each step its own write, so the
accepts that arrive meanwhile commit between two steps (the store's group commit takes
them in order). After each step it rests as long as the step took (`REST`), so a large
backlog (retention switched on for an old database) takes at most half of the writer's
time and of a core, however long it runs. Suppressions are kept; idempotency keys expire
on their own TTL.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import fields
from typing import TypeVar

from dispatchd.domain.errors import StoreError
from dispatchd.metrics import Metrics
from dispatchd.store.api import Purged, Store

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Messages per delete transaction: about 8 ms of writer time with their rows and indexes
# (30 ms at the 99th percentile on the 2-core machine the bench runs on).
PURGE_BATCH = 100
# Pages given back per write (4 KiB each): about 5 ms of writer time (50 µs a page).
RECLAIM_PAGES = 100
# Seconds of rest after a step, per second the step took.
REST = 1.0
# A purge cycle runs this often, or more often for a short retention (tests use seconds).
MAX_INTERVAL = 60.0


def interval_for(retention: float) -> float:
    """Seconds between purge cycles: a tenth of the retention, from 1 s to a minute."""
    return min(MAX_INTERVAL, max(1.0, retention / 10))


class Retention:
    """Deletes what is past its retention, in small steps, and counts what went."""

    def __init__(
        self,
        store: Store,
        keep: float,
        *,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        batch: int = PURGE_BATCH,
    ) -> None:
        self._store = store
        self._keep = keep
        self._metrics = metrics
        self._clock = clock
        self._batch = batch

    async def run(self) -> None:
        """Purge every `interval_for(keep)` seconds until cancelled."""
        interval = interval_for(self._keep)
        while True:
            await asyncio.sleep(interval)
            await self.purge()

    async def purge(self) -> Purged:
        """One cycle: delete every message that ended more than `keep` seconds ago."""
        started = time.monotonic()
        before = self._clock() - self._keep
        total = Purged()
        free = 0
        try:
            while True:
                purged = await self._step(self._store.purge_finished(before, self._batch))
                self._count(purged)
                total += purged
                if purged.messages < self._batch:
                    break
            if total.messages:
                free = await self._reclaim()
        except StoreError as exc:
            logger.warning(
                "event=retention_failed error=%r deleted=%d", exc.message, total.messages
            )
            return total
        if total.messages:
            logger.info(
                "event=retention_purge messages=%d attempts=%d history=%d callbacks=%d "
                "free_pages=%d seconds=%.2f",
                total.messages,
                total.attempts,
                total.history,
                total.callbacks,
                free,
                time.monotonic() - started,
            )
        return total

    async def _reclaim(self) -> int:
        """Give free pages back until none is left, or a step frees none (new writes took
        them meanwhile); how many remain."""
        free = await self._step(self._store.reclaim_space(RECLAIM_PAGES))
        while free:
            remaining = await self._step(self._store.reclaim_space(RECLAIM_PAGES))
            if remaining >= free:
                return remaining
            free = remaining
        return free

    async def _step(self, write: Awaitable[T]) -> T:
        """One write, then a rest as long as it took."""
        started = time.monotonic()
        result = await write
        await asyncio.sleep((time.monotonic() - started) * REST)
        return result

    def _count(self, purged: Purged) -> None:
        for f in fields(purged):
            rows = getattr(purged, f.name)
            if rows:
                self._metrics.retention_deleted.labels(f.name).inc(rows)
