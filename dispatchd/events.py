"""In-process event bus: the daemon publishes what happens, control-socket subscribers read it.

It is also the daemon's one wake-up mechanism: listeners (the worker, the webhook sender,
live-status watchers) are called synchronously with every event and wake on the ones that
concern them. Status moves too frequent or too internal for a console (a claim, a silent
requeue) are published `local`: listeners get them, subscribers and `recent()` do not.

`publish` never awaits and costs O(1): it appends to a ring buffer of recent
events, bumps a per-type counter, and offers the event to each subscriber's
bounded queue. A subscriber that falls behind loses events (counted per
subscriber) instead of making the publisher wait, so a slow console can never
slow delivery. Counters are rolled once a second into a rate sample, so
high-rate numbers reach consoles as one coalesced `stats` event rather than as
a stream of counter changes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# The four series of the console's throughput sparklines; every final "not delivered"
# outcome counts as failed there.
RATE_SERIES = ("accepted", "sent", "delivered", "failed")
_RATE_OF = {
    "accepted": "accepted",
    "sent": "sent",
    "delivered": "delivered",
    "failed": "failed",
    "expired": "failed",
    "invalid": "failed",
    "unknown": "failed",
}

DEFAULT_QUEUE_SIZE = 1000
DEFAULT_RECENT = 200
DEFAULT_RATE_HISTORY = 300  # seconds of per-second rates kept for snapshots


@dataclass(slots=True)
class Event:
    """One thing that happened, numbered in publication order."""

    seq: int
    at: float
    type: str
    payload: Mapping[str, Any]
    _text: str | None = field(default=None, repr=False, compare=False)

    def message_ids(self) -> list[str]:
        """The messages the event is about: its `id`, or its `ids` for a batch (claims)."""
        one = self.payload.get("id")
        if isinstance(one, str):
            return [one]
        many = self.payload.get("ids")
        if isinstance(many, list | tuple):
            return [i for i in many if isinstance(i, str)]
        return []

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "at": self.at, "type": self.type, "payload": dict(self.payload)}

    def json(self) -> str:
        """The wire form, serialised once however many subscribers send it."""
        if self._text is None:
            self._text = json.dumps(self.as_dict(), separators=(",", ":"))
        return self._text


class Subscription:
    """A subscriber's bounded queue and the count of events it lost to overflow."""

    def __init__(self, maxsize: int) -> None:
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self.dropped = 0

    def offer(self, event: Event) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1

    async def get(self) -> Event:
        return await self.queue.get()


class EventBus:
    """Fan-out of daemon events to any number of subscribers; never blocks the publisher."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        recent: int = DEFAULT_RECENT,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        rate_history: int = DEFAULT_RATE_HISTORY,
    ) -> None:
        self._clock = clock
        self._seq = 0
        self._recent: deque[Event] = deque(maxlen=recent)
        self._subscribers: set[Subscription] = set()
        self._queue_size = queue_size
        self._counts: Counter[str] = Counter()
        self._rates: deque[dict[str, float]] = deque(maxlen=rate_history)
        self._listeners: list[Callable[[Event], None]] = []

    @property
    def seq(self) -> int:
        """Number of the last event published."""
        return self._seq

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def publish(
        self, type: str, payload: Mapping[str, Any], *, keep: bool = True, local: bool = False
    ) -> None:
        """Hand an event to every subscriber and listener; `keep=False` leaves it out of
        `recent()`, and `local=True` gives it to listeners only (unnumbered, uncounted)."""
        if local:
            event = Event(self._seq, self._clock(), type, payload)
            for listener in self._listeners:
                listener(event)
            return
        self._seq += 1
        event = Event(self._seq, self._clock(), type, payload)
        if keep:
            self._recent.append(event)
        series = _RATE_OF.get(type)
        if series is not None:
            self._counts[series] += 1
        for sub in self._subscribers:
            sub.offer(event)
        for listener in self._listeners:
            listener(event)

    def add_listener(self, listener: Callable[[Event], None]) -> None:
        """Call `listener` synchronously with every event; it must be cheap and never raise."""
        self._listeners.append(listener)

    def subscribe(self, maxsize: int | None = None) -> Subscription:
        sub = Subscription(maxsize or self._queue_size)
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)

    def recent(self) -> list[Event]:
        """The last events kept, oldest first."""
        return list(self._recent)

    def roll_rates(self) -> dict[str, float]:
        """Close the current one-second sample: counts per series since the last roll."""
        sample: dict[str, float] = {"at": round(self._clock(), 3)}
        for name in RATE_SERIES:
            sample[name] = self._counts[name]
        self._counts.clear()
        self._rates.append(sample)
        return sample

    def rates(self) -> list[dict[str, float]]:
        """Per-second samples, oldest first."""
        return list(self._rates)
