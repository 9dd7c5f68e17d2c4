"""The traffic log: live events as lines, newest at the bottom, filterable, holdable.

`describe` turns one stream event into a `LogEntry`; `TrafficLog` shows the entries.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import tzinfo
from typing import Any

from rich.text import Text
from textual.widgets import DataTable

from dispatchd.console.widgets.format import EVENT_STYLE, fmt_clock
from dispatchd.control.format import fmt_ms
from dispatchd.control.protocol import Json

EVENT_LABEL = {
    "retry_scheduled": "retry",
    "number_suppressed": "suppressed",
    "provider_paused": "paused",
    "provider_resumed": "resumed",
    "provider_weight": "weight",
    "suppression_lifted": "unsuppressed",
    "message_retried": "retried",
    "breaker_opened": "circuit open",
    "breaker_half_open": "probing",
    "breaker_closed": "circuit closed",
    "weight_shifted": "weight shift",
}


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One line of the traffic log."""

    key: str
    at: float | None
    type: str
    msg_id: str | None
    number: str
    provider: str
    detail: str

    def matches(self, needle: str) -> bool:
        """Filter: every word must appear in the number, status/event, provider or id."""
        haystack = f"{self.number} {self.type} {self.provider} {self.msg_id or ''}".lower()
        return all(word in haystack for word in needle.lower().split())


def _detail(kind: str, p: Json) -> str:
    if kind == "sent":
        return f"attempt {p.get('attempt')}, {fmt_ms(p.get('latency_ms'))}"
    if kind == "failover":
        return (
            f"-> {p.get('to')}: {p.get('error')}"  # the Provider column names the one that failed
        )
    if kind == "retry_scheduled":
        return f"attempt {p.get('attempt')} found no provider; again in {p.get('in_s')}s"
    if kind == "accepted":
        retry_of = p.get("retry_of")
        segments = f"{p.get('segments')} segment(s)"
        return f"{segments}, retry of {retry_of}" if retry_of else segments
    if kind == "number_suppressed":
        others = p.get("also_invalidated") or 0
        return (
            f"number reported invalid; {others} queued invalidated"
            if others
            else "number reported invalid"
        )
    if kind == "provider_weight":
        return f"weight {p.get('previous')} -> {p.get('weight')}"
    if kind.startswith("breaker_"):
        return f"{p.get('reason')}"
    if kind == "weight_shifted":
        return f"weight {p.get('from')} -> {p.get('to')} ({p.get('reason')})"
    if kind == "message_retried":
        return f"retried as {p.get('new_id')}"
    if kind == "restart":
        return "the daemon restarted"
    parts = [str(p[k]) for k in ("via", "code", "error") if p.get(k)]
    return "; ".join(parts)


def describe(event: Json, instance: str = "") -> LogEntry:
    """Turn a stream event into a log line."""
    kind = str(event.get("type", "?"))
    payload: Json = event.get("payload") or {}
    msg_id = payload.get("id")
    return LogEntry(
        key=f"{instance}:{event.get('seq')}",
        at=event.get("at"),
        type=kind,
        msg_id=str(msg_id) if msg_id else None,
        number=str(payload.get("number") or ""),
        provider=str(payload.get("provider") or ""),
        detail=_detail(kind, payload),
    )


class TrafficLog(DataTable[Any]):
    """Live events, newest at the bottom; filterable; on hold, new events wait, not vanish."""

    MAX_ROWS = 500
    TRIM_SLACK = 250
    MAX_KEPT = 10_000
    COLUMNS = (
        ("time", "Time"),
        ("event", "Event"),
        ("number", "Number"),
        ("provider", "Provider"),
        ("detail", "Detail"),
    )

    def __init__(self, *, tz: tzinfo | None = None, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row")
        self._tz = tz
        self._entries: deque[LogEntry] = deque(maxlen=self.MAX_KEPT)
        self._rows: deque[str] = deque()  # keys of the rows shown, oldest first
        self.filter_text = ""
        self.following = True
        self.held = 0

    def on_mount(self) -> None:
        for key, label in self.COLUMNS:
            self.add_column(label, key=key)

    @property
    def entries(self) -> list[LogEntry]:
        """Every entry kept, shown or not, oldest first."""
        return list(self._entries)

    @property
    def shown(self) -> list[str]:
        """Keys of the rows on screen, oldest first."""
        return list(self._rows)

    @property
    def selected(self) -> LogEntry | None:
        if not self.row_count:
            return None
        key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        return next((e for e in reversed(self._entries) if e.key == key), None)

    def add_entries(self, entries: Iterable[LogEntry]) -> None:
        new: list[LogEntry] = []
        for entry in entries:
            self._entries.append(entry)
            if not self.following:
                self.held += 1
            elif self._visible(entry):
                new.append(entry)
        if not new:
            return
        if len(self._rows) + len(new) > self.MAX_ROWS + self.TRIM_SLACK:
            # DataTable.remove_row costs O(rows); one rebuild now and then is cheaper.
            self.rebuild()
            return
        for entry in new:
            self._add_row(entry)
        self._follow()

    def _follow(self) -> None:
        # After the refresh, when the new rows are part of the layout and can be scrolled to.
        self.call_after_refresh(self.move_cursor, row=self.row_count - 1, animate=False)

    def _visible(self, entry: LogEntry) -> bool:
        return not self.filter_text or entry.matches(self.filter_text)

    def _add_row(self, entry: LogEntry) -> None:
        style = EVENT_STYLE.get(entry.type, "")
        label = EVENT_LABEL.get(entry.type, entry.type)
        self.add_row(
            fmt_clock(entry.at, self._tz),
            Text(label, style),
            entry.number,
            entry.provider,
            entry.detail,
            key=entry.key,
        )
        self._rows.append(entry.key)

    def rebuild(self) -> None:
        """Show the newest matching entries again (after a filter change or a hold)."""
        self.clear()
        self._rows.clear()
        matching = [e for e in self._entries if self._visible(e)][-self.MAX_ROWS :]
        for entry in matching:
            self._add_row(entry)
        self.held = 0
        if self.row_count:
            self._follow()

    def set_filter(self, text: str) -> None:
        self.filter_text = text.strip()
        self.rebuild()

    def set_following(self, following: bool) -> None:
        self.following = following
        if following:
            self.rebuild()
