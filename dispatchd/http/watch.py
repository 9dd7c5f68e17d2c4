"""Live status: who waits for which message, and the pure pieces of its event stream.

`GET /messages/{id}/events` (Server-Sent Events) and `GET /messages/{id}?wait=N` (long
polling) park a `Watch` here. The daemon wakes the watches of a message whenever
something may have changed it: every event on the bus that names a message, including
the local-only ones (the worker's claims, silent requeues). A wake costs a dict lookup plus one
`Event.set()` per watcher of that message, so thousands of idle watchers cost nothing
per delivery; a woken watcher re-reads the message once (wakes may be spurious).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from dispatchd.domain.models import HistoryEntry, isoformat
from dispatchd.events import Event

# Seconds between SSE comment lines, so proxies and load balancers keep an idle stream.
HEARTBEAT = 15.0
# Longest long poll, in seconds: shorter than common proxy read timeouts (60 s).
MAX_WAIT = 60.0
# Highest `Last-Event-ID` taken; a message's history is never near this long.
MAX_EVENT_ID = 999_999_999


class Watch:
    """One waiter on one message."""

    __slots__ = ("_changed", "_registry", "msg_id")

    def __init__(self, registry: Watchers, msg_id: str) -> None:
        self._registry = registry
        self._changed = asyncio.Event()
        self.msg_id = msg_id

    def wake(self) -> None:
        self._changed.set()

    async def wait(self, within: float) -> bool:
        """Wait until woken (True) or `within` seconds pass (False); consumes the wake."""
        if self._registry.closed:
            return False
        try:
            async with asyncio.timeout(within):
                await self._changed.wait()
        except TimeoutError:
            return False
        self._changed.clear()
        return not self._registry.closed


class Watchers:
    """The watches of every message, keyed by message id."""

    def __init__(self) -> None:
        self._by_id: dict[str, set[Watch]] = {}
        self.closed = False

    @property
    def count(self) -> int:
        """Watches open now."""
        return sum(len(w) for w in self._by_id.values())

    @contextmanager
    def watch(self, msg_id: str) -> Iterator[Watch]:
        """Register a watch for the block. Register before reading the message, so a change
        committed after the read always wakes it."""
        watch = Watch(self, msg_id)
        self._by_id.setdefault(msg_id, set()).add(watch)
        try:
            yield watch
        finally:
            group = self._by_id.get(msg_id)
            if group is not None:
                group.discard(watch)
                if not group:
                    del self._by_id[msg_id]

    def wake(self, msg_id: str) -> None:
        """The message may have changed: wake its watches."""
        for watch in self._by_id.get(msg_id, ()):
            watch.wake()

    def on_event(self, event: Event) -> None:
        """EventBus listener: wake the watches of the messages an event names."""
        if self._by_id:
            for msg_id in event.message_ids():
                self.wake(msg_id)

    def close(self) -> None:
        """The server is stopping: end every watch now and any later one at once."""
        self.closed = True
        for group in self._by_id.values():
            for watch in group:
                watch.wake()


# -- the event stream ---------------------------------------------------------------------


def status_changes(history: Sequence[HistoryEntry], after: int) -> list[tuple[int, HistoryEntry]]:
    """The history entries after index `after` that change the status, with their index.

    Notes that keep the status (a report ignored on a final message, an operator note)
    are not status changes; the first entry always is.
    """
    return [
        (i, entry)
        for i, entry in enumerate(history)
        if i > after and (i == 0 or entry.status is not history[i - 1].status)
    ]


def status_event(msg_id: str, index: int, entry: HistoryEntry) -> bytes:
    """One `status` event in the Server-Sent Events wire format."""
    data: dict[str, Any] = {
        "id": msg_id,
        "status": entry.status.value,
        "at": isoformat(entry.at),
        "detail": entry.detail,
        "final": entry.status.final,
    }
    text = json.dumps(data, separators=(",", ":"))
    return f"event: status\nid: {index}\ndata: {text}\n\n".encode()


HEARTBEAT_LINE = b": keep-alive\n\n"
