"""A recorded daemon for console tests: fixed snapshot, fixed events, no clocks, no sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from dispatchd.console.app import ConsoleApp
from dispatchd.control.client import CommandFailed

Json = dict[str, Any]

AT = 1_764_300_000.0  # 2025-11-28 03:20:00 UTC; every time below is relative to it
NOW = AT + 9  # the daemon's clock when the snapshot was taken: started_at + uptime_s


def msg_id(n: int) -> str:
    return f"01a222ab-0000-7000-8000-{n:012d}"


def _event(seq: int, dt: float, kind: str, **payload: Any) -> Json:
    return {"seq": seq, "at": AT + dt, "type": kind, "payload": payload}


RECENT = [
    _event(1, 0.0, "accepted", id=msg_id(1), number="+17034573321", segments=1, retry_of=None),
    _event(2, 0.1, "sent", id=msg_id(1), number="+17034573321", provider="provider1", attempt=1,
           latency_ms=21.4),
    _event(3, 0.4, "accepted", id=msg_id(2), number="+17034573322", segments=2, retry_of=None),
    _event(4, 0.5, "failover", id=msg_id(2), number="+17034573322", provider="provider2",
           to="provider1", error="HTTP 500: Something went wrong"),
    _event(5, 0.6, "sent", id=msg_id(2), number="+17034573322", provider="provider1", attempt=1,
           latency_ms=48.0),
    _event(6, 1.1, "delivered", id=msg_id(1), number="+17034573321", provider=None,
           via="report"),
    _event(7, 2.0, "accepted", id=msg_id(3), number="+17034570000", segments=1, retry_of=None),
    _event(8, 2.1, "sent", id=msg_id(3), number="+17034570000", provider="provider2", attempt=1,
           latency_ms=25.2),
    _event(9, 3.2, "invalid", id=msg_id(3), number="+17034570000", provider=None, via="report"),
    _event(10, 3.2, "number_suppressed", id=msg_id(3), number="+17034570000",
           also_invalidated=0),
    _event(11, 4.0, "retry_scheduled", id=msg_id(4), number="+17034573324", attempt=1, in_s=1.5),
    _event(12, 9.0, "provider_paused", provider="provider2"),
]  # fmt: skip

SNAPSHOT: Json = {
    "protocol": 1,
    "instance": "a1b2c3d4e5f6",
    "pid": 4242,
    "started_at": NOW - 3729,
    "uptime_s": 3729.0,
    "seq": 12,
    "providers": [
        {
            "name": "provider1",
            "state": "healthy",
            "paused": False,
            "configured_weight": 30,
            "weight": 30,
            "effective_weight": 30,
            "calls": 412,
            "share": 0.4102,
            "success_rate": 0.9903,
            "p50_ms": 21.4,
            "p95_ms": 48.0,
            "in_flight": 2,
            "rate": 10.0,
            "max_in_flight": 0,
            "throttled": 3,
            "held_until": NOW + 4,  # a throttle answer holds it: "3 held 4s"
            "last_error": None,
            "last_error_at": None,
        },
        {
            "name": "provider2",
            "state": "paused",
            "paused": True,
            "configured_weight": 70,
            "weight": 70,
            "effective_weight": 0,
            "calls": 593,
            "share": 0.5898,
            "success_rate": 0.8921,
            "p50_ms": 25.2,
            "p95_ms": 61.7,
            "in_flight": 0,
            "rate": 0.0,
            "max_in_flight": 0,
            "throttled": 0,
            "held_until": None,
            "last_error": "HTTP 500: Something went wrong",
            "last_error_at": AT - 12,
        },
    ],
    "queue": {
        "counts": {
            "queued": 3,
            "sending": 2,
            "sent": 41,
            "delivered": 1204,
            "failed": 7,
            "invalid": 2,
            "expired": 1,
        },
        "oldest_queued_age_s": 4.2,
        "waiting_retry": 1,
    },
    "rates": [
        {
            "at": AT - 120 + i,
            "accepted": (i * 7) % 13,
            "sent": (i * 5) % 11,
            "delivered": (i * 3) % 9,
            "failed": 2 if i % 17 == 0 else 0,
        }
        for i in range(120)
    ],
    "recent": RECENT,
}

MESSAGE: Json = {
    "id": msg_id(2),
    "to_number": "+17034573322",
    "message": "Your appointment is confirmed for Friday at 10:30.",
    "status": "delivered",
    "segments": 2,
    "encoding": "GSM-7",
    "provider": "provider1",
    "provider_message_id": "b7871749-bbd3-4cc5-95b9-182a88857a20",
    "error": None,
    "created_at": "2025-11-28T03:20:00.400Z",
    "updated_at": "2025-11-28T03:20:01.700Z",
    "next_attempt_at": None,
    "attempts": [
        {
            "provider": "provider2",
            "started_at": "2025-11-28T03:20:00.410Z",
            "outcome": "unavailable",
            "http_status": 500,
            "latency_ms": 12.5,
            "error": "HTTP 500: Something went wrong",
        },
        {
            "provider": "provider1",
            "started_at": "2025-11-28T03:20:00.550Z",
            "outcome": "accepted",
            "http_status": 200,
            "latency_ms": 48.0,
            "error": None,
        },
    ],
    "history": [
        {"status": "queued", "at": "2025-11-28T03:20:00.400Z", "detail": "accepted"},
        {"status": "sending", "at": "2025-11-28T03:20:00.405Z", "detail": "attempt 1"},
        {"status": "sent", "at": "2025-11-28T03:20:00.600Z", "detail": "via provider1"},
        {"status": "delivered", "at": "2025-11-28T03:20:01.700Z", "detail": "delivery report"},
    ],
}


class RecordedControl:
    """Plays a snapshot, then whatever the test feeds in; records the commands sent."""

    def __init__(self, snapshot: Json | None = None) -> None:
        self.snapshot = snapshot or SNAPSHOT
        self.feed: asyncio.Queue[Json] = asyncio.Queue()
        self.commands: list[tuple[str, Any]] = []

    async def events(self) -> AsyncIterator[Json]:
        yield {"type": "snapshot", "seq": self.snapshot["seq"], "payload": self.snapshot}
        while True:
            yield await self.feed.get()

    async def message(self, msg_id: str) -> Json:
        if msg_id != MESSAGE["id"]:
            raise CommandFailed("No message has that id.", status=404, code="message_not_found")
        return MESSAGE

    async def messages(self, number: str) -> list[Json]:
        return [MESSAGE] if number == MESSAGE["to_number"] else []

    def _provider(self, name: str, **changes: Any) -> Json:
        current = next(p for p in self.snapshot["providers"] if p["name"] == name)
        return {**current, **changes}

    async def pause(self, provider: str) -> Json:
        self.commands.append(("pause", provider))
        return self._provider(provider, paused=True, state="paused", effective_weight=0)

    async def resume(self, provider: str) -> Json:
        self.commands.append(("resume", provider))
        return self._provider(provider, paused=False, state="healthy")

    async def set_weight(self, provider: str, weight: int) -> Json:
        self.commands.append(("weight", (provider, weight)))
        if weight < 0:
            raise CommandFailed("The weight must be 0 or more.", status=422, code="bad_weight")
        return self._provider(provider, weight=weight)

    async def retry(self, msg_id: str) -> Json:
        self.commands.append(("retry", msg_id))
        return {}

    async def lift_suppression(self, number: str) -> Json:
        self.commands.append(("lift", number))
        return {}

    async def close(self) -> None:
        pass


class RecordingApp(ConsoleApp):
    """The console, keeping every notification it shows."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.notes: list[tuple[str, str, str]] = []

    def notify(self, message: str, *, title: str = "", severity: Any = "information",
               timeout: float | None = None, markup: bool = True) -> None:  # fmt: skip
        self.notes.append((message, title, str(severity)))
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=markup)
