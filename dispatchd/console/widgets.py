"""The console's widgets, one per concern, plus the pure formatting they share."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Label, Sparkline, Static

Json = dict[str, Any]

STATE_STYLE = {
    "healthy": "green",
    "degraded": "yellow",
    "circuit_open": "bold red",
    "paused": "bold magenta",
}
STATE_LABEL = {"circuit_open": "circuit open"}
EVENT_STYLE = {
    "accepted": "cyan",
    "sent": "blue",
    "delivered": "green",
    "failover": "yellow",
    "retry_scheduled": "yellow",
    "failed": "bold red",
    "expired": "red",
    "invalid": "red",
    "number_suppressed": "bold red",
    "breaker_opened": "bold red",
    "breaker_half_open": "yellow",
    "breaker_closed": "green",
    "weight_shifted": "yellow",
}
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
QUEUE_ORDER = ("queued", "sending", "sent", "delivered", "failed", "invalid", "expired")
SPARK_SERIES = ("accepted", "sent", "delivered", "failed")
SPARK_HISTORY = 120  # seconds shown, however wide the sparkline (bars show the max)


# -- formatting ---------------------------------------------------------------------------


def fmt_ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.1f}s" if value >= 10_000 else f"{value:.0f}ms"


def fmt_pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%" if value >= 0.995 else f"{value:.1%}"


def fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    return f"{seconds // 3600:.0f}h{seconds % 3600 // 60:02.0f}m"


def fmt_clock(at: float | None, tz: tzinfo | None) -> str:
    if at is None:
        return "-"
    return datetime.fromtimestamp(at, tz).strftime("%H:%M:%S")


def fmt_iso(value: str | None, tz: tzinfo | None, *, date: bool = True) -> str:
    """An RFC 3339 time from the daemon, shown in the console's zone, to the millisecond."""
    if not value:
        return "-"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    shape = "%Y-%m-%d %H:%M:%S.%f" if date else "%H:%M:%S.%f"
    return moment.astimezone(tz).strftime(shape)[:-3]


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


# -- widgets ------------------------------------------------------------------------------


class StatusBar(Static):
    """Connection state, daemon identity and what the console is losing or holding."""

    def show(
        self,
        *,
        connected: bool,
        socket: str,
        detail: str = "",
        pid: int | None = None,
        uptime_s: float | None = None,
        dropped: int = 0,
        held: int = 0,
        filter_text: str = "",
    ) -> None:
        text = Text()
        if connected:
            text.append("● connected", "bold green")
            text.append(f"  pid {pid}  up {fmt_age(uptime_s)}")
        else:
            text.append("○ disconnected", "bold red")
            text.append(f"  {detail}" if detail else "")
        text.append(f"  {socket}", "dim")
        if dropped:
            text.append(f"  dropped {dropped}", "bold yellow")
        if held:
            text.append(f"  HOLD +{held}", "bold magenta")
        if filter_text:
            text.append(f"  filter: {filter_text}", "italic")
        self.update(text)


class ProviderTable(DataTable[Any]):
    """One row per provider: state, weights, share, success, latency, in flight, last error."""

    COLUMNS = (
        ("provider", "Provider"),
        ("state", "State"),
        ("weight", "Weight"),
        ("share", "Share"),
        ("ok", "OK"),
        ("p50", "p50"),
        ("p95", "p95"),
        ("inflight", "Fly"),
        ("error", "Last error"),
    )

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.zebra_stripes = False
        for key, label in self.COLUMNS:
            self.add_column(label, key=key)

    @property
    def selected(self) -> str | None:
        """The provider under the cursor."""
        if not self.row_count:
            return None
        key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        return None if key.value is None else str(key.value)

    def update_providers(self, providers: Iterable[Json]) -> None:
        for p in providers:
            name = str(p["name"])
            state = str(p.get("state", "?"))
            configured, effective = p.get("configured_weight"), p.get("effective_weight")
            weight = f"{configured}" if configured == effective else f"{configured}→{effective}"
            cells = {
                "provider": Text(name, "bold"),
                "state": Text(STATE_LABEL.get(state, state), STATE_STYLE.get(state, "")),
                "weight": weight,
                "share": fmt_pct(p.get("share")) if p.get("calls") else "-",
                "ok": fmt_pct(p.get("success_rate")),
                "p50": fmt_ms(p.get("p50_ms")),
                "p95": fmt_ms(p.get("p95_ms")),
                "inflight": str(p.get("in_flight", 0)),
                "error": Text(str(p.get("last_error") or ""), "dim red"),
            }
            if name in self.rows:
                for column, value in cells.items():
                    self.update_cell(name, column, value, update_width=True)
            else:
                self.add_row(*cells.values(), key=name)


class QueuePanel(Static):
    """Counts by status, the oldest queued message's age, messages waiting for retry."""

    def show(self, queue: Json | None) -> None:
        text = Text()
        text.append("Queue", "bold")
        if queue is None:
            text.append("  unavailable", "red")
            self.update(text)
            return
        text.append(f"  oldest {fmt_age(queue.get('oldest_queued_age_s'))}")
        text.append(f"  retry-wait {queue.get('waiting_retry', 0)}")
        counts: Json = queue.get("counts", {})
        for i, name in enumerate(QUEUE_ORDER):
            text.append("\n" if i % 2 == 0 else "")
            text.append(f"{name:>9} ", "dim")
            text.append(f"{counts.get(name, 0):<6}")
        self.update(text)


class Throughput(Vertical):
    """Per-second sparklines of accepted, sent, delivered and failed messages."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._series: dict[str, deque[float]] = {
            name: deque([0.0] * SPARK_HISTORY, maxlen=SPARK_HISTORY) for name in SPARK_SERIES
        }

    def compose(self) -> ComposeResult:
        yield Label("Throughput per second, last 2 min", classes="section-title")
        for name in SPARK_SERIES:
            with Horizontal(classes="spark-row"):
                yield Label(name, classes="spark-label")
                yield Sparkline([], id=f"spark-{name}", classes=f"spark {name}")
                yield Label("0", id=f"rate-{name}", classes="spark-value")

    def set_rates(self, samples: Sequence[Json]) -> None:
        for name, series in self._series.items():
            series.extend([0.0] * SPARK_HISTORY)
            series.extend(float(s.get(name, 0)) for s in samples)
        self._refresh_all()

    def add_sample(self, sample: Json) -> None:
        for name, series in self._series.items():
            series.append(float(sample.get(name, 0)))
        self._refresh_all()

    def _refresh_all(self) -> None:
        for name, series in self._series.items():
            self.query_one(f"#spark-{name}", Sparkline).data = list(series)
            self.query_one(f"#rate-{name}", Label).update(f"{series[-1]:.0f}")


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
