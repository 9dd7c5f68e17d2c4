"""The main screen: provider health, queue, throughput and the live traffic log.

The App's stream reader posts `StreamBatch` (frames are waiting) and `ConnectionLost`
here; the screen applies a whole batch at once and keeps the status bar current.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import replace
from datetime import tzinfo
from typing import TYPE_CHECKING, ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Input

from dispatchd.console.screens.confirm import ConfirmScreen
from dispatchd.console.screens.prompt import PromptScreen
from dispatchd.console.widgets.provider_table import ProviderTable
from dispatchd.console.widgets.queue_panel import QueuePanel
from dispatchd.console.widgets.status_bar import StatusBar
from dispatchd.console.widgets.throughput import Throughput
from dispatchd.console.widgets.traffic_log import LogEntry, TrafficLog, describe
from dispatchd.control.protocol import Json

if TYPE_CHECKING:
    from dispatchd.console.app import ConsoleApp

SENT_BY_KEPT = 20_000


class StreamBatch(Message):
    """Frames are waiting in the App's inbox; take them all with `ConsoleApp.take_events`.

    One message per batch, not per frame: under load the frames that arrive while the
    screen is busy are applied together, with one redraw.
    """


class ConnectionLost(Message):
    """The stream ended; the reader is about to reconnect."""

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason


class MainScreen(Screen[None]):
    """Provider health, queue, throughput and the live traffic log."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("p", "toggle_provider", "Pause"),
        Binding("w", "weight", "Weight"),
        Binding("slash", "filter", "Filter"),
        Binding("space", "hold", "Hold"),
        Binding("f", "find", "Find"),
        Binding("u", "lift", "Unsuppress"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
        *(Binding(str(n), f"pick_provider({n - 1})", show=False) for n in range(1, 10)),
    ]

    def __init__(self, *, socket_label: str, tz: tzinfo | None) -> None:
        super().__init__()
        self._socket_label = socket_label
        self._tz = tz
        self.connected = False
        self.lost_reason = "connecting…"
        self.instance: str | None = None
        self.last_seq = 0
        self.providers: dict[str, Json] = {}
        self.snapshot: Json = {}
        self.uptime_s: float | None = None
        # The daemon's clock as of the latest frame: throttle holds are judged against it,
        # so the table agrees with the daemon (and recorded frames render the same).
        self.daemon_now: float | None = None
        self._dropped_before = 0  # by the daemon, for earlier connections
        self._dropped_now = 0  # by the daemon, for this connection
        self._dropped_here = 0  # by this console's inbox overflowing
        # Reports do not name the provider; the console remembers who sent each message.
        self._sent_by: OrderedDict[str, str] = OrderedDict()

    @property
    def console(self) -> ConsoleApp:
        from dispatchd.console.app import ConsoleApp

        assert isinstance(self.app, ConsoleApp)
        return self.app

    @property
    def dropped(self) -> int:
        """Events this console never saw: dropped by the daemon, or by its own inbox."""
        return self._dropped_before + self._dropped_now + self._dropped_here

    def compose(self) -> ComposeResult:
        yield StatusBar(id="status")
        yield ProviderTable(id="providers")
        with Horizontal(id="middle"):
            yield QueuePanel(id="queue")
            yield Throughput(id="throughput")
        yield TrafficLog(tz=self._tz, id="log")
        yield Input(placeholder="filter: number, event/status or provider", id="filter")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#filter", Input).display = False
        self.query_one("#queue", QueuePanel).show({})
        self.query_one(TrafficLog).focus()
        self.show_status()

    def show_status(self) -> None:
        log = self.query_one(TrafficLog)
        self.query_one(StatusBar).show(
            connected=self.connected,
            socket=self._socket_label,
            detail=self.lost_reason,
            pid=self.snapshot.get("pid"),
            uptime_s=self.uptime_s,
            dropped=self.dropped,
            held=log.held,
            filter_text=log.filter_text,
        )

    # -- the stream -----------------------------------------------------------------------

    @on(StreamBatch)
    def _stream_batch(self, _: StreamBatch) -> None:
        events, lost = self.console.take_events()
        self._dropped_here += lost
        entries: list[LogEntry] = []
        for event in events:
            self._apply(event, entries)
        self.query_one(TrafficLog).add_entries(entries)
        for msg_id in {e.msg_id for e in entries}:
            self.console.message_changed(msg_id)
        self.show_status()

    def _apply(self, event: Json, entries: list[LogEntry]) -> None:
        """Apply one frame; message events are collected in `entries` for the log."""
        kind = event.get("type")
        payload: Json = event.get("payload") or {}
        at = event.get("at")
        if isinstance(at, int | float):
            self.daemon_now = float(at)
        if kind == "snapshot":
            entries += self._apply_snapshot(payload)
        elif kind == "stats":
            self._set_providers(payload.get("providers", []))
            self.query_one(Throughput).add_sample(payload.get("rates", {}))
            self.uptime_s = payload.get("uptime_s", self.uptime_s)
        elif kind == "queue":
            self.query_one(QueuePanel).show(payload)
        elif kind == "dropped":
            self._dropped_now = int(payload.get("count", 0))
        else:
            if isinstance(event.get("seq"), int):
                self.last_seq = event["seq"]
            entries.append(self._with_provider(describe(event, self.instance or "")))

    def _apply_snapshot(self, snap: Json) -> list[LogEntry]:
        instance = str(snap.get("instance", ""))
        same = instance == self.instance
        entries: list[LogEntry] = []
        if self.instance is not None and not same:
            marker = {"type": "restart", "seq": "restart", "at": snap.get("started_at")}
            entries.append(describe(marker, instance))
        for event in snap.get("recent", []):
            if not same or int(event.get("seq", 0)) > self.last_seq:
                entries.append(self._with_provider(describe(event, instance)))
        self.instance = instance
        self.last_seq = int(snap.get("seq", 0))
        self.snapshot = snap
        self.uptime_s = snap.get("uptime_s")
        started_at = snap.get("started_at")
        if isinstance(started_at, int | float) and isinstance(self.uptime_s, int | float):
            self.daemon_now = started_at + self.uptime_s
        self.connected = True
        self._dropped_now = 0
        self._set_providers(snap.get("providers", []))
        self.query_one(QueuePanel).show(snap.get("queue"))
        self.query_one(Throughput).set_rates(snap.get("rates", []))
        return entries

    def _with_provider(self, entry: LogEntry) -> LogEntry:
        if entry.msg_id is None:
            return entry
        if entry.type == "sent" and entry.provider:
            self._sent_by[entry.msg_id] = entry.provider
            if len(self._sent_by) > SENT_BY_KEPT:
                self._sent_by.popitem(last=False)
        elif not entry.provider and entry.msg_id in self._sent_by:
            return replace(entry, provider=self._sent_by[entry.msg_id])
        return entry

    def provider_changed(self, provider: Json) -> None:
        """A command's answer: show the provider's new state now, not at the next tick."""
        if provider.get("name") in self.providers:
            self.providers[str(provider["name"])] = provider
            self.query_one(ProviderTable).update_providers([provider], self._now())

    def _set_providers(self, providers: list[Json]) -> None:
        self.providers = {str(p["name"]): p for p in providers}
        self.query_one(ProviderTable).update_providers(providers, self._now())

    def _now(self) -> float:
        return time.time() if self.daemon_now is None else self.daemon_now

    @on(ConnectionLost)
    def _lost(self, message: ConnectionLost) -> None:
        if self.connected:
            self.console.notify(message.reason, title="Daemon disconnected", severity="warning")
        self.connected = False
        self.lost_reason = message.reason + "; reconnecting"
        self._dropped_before += self._dropped_now
        self._dropped_now = 0
        self.show_status()

    # -- actions --------------------------------------------------------------------------

    def action_pick_provider(self, index: int) -> None:
        table = self.query_one(ProviderTable)
        if index < table.row_count:
            table.move_cursor(row=index)

    def _selected_provider(self) -> str | None:
        name = self.query_one(ProviderTable).selected
        if name is None:
            self.console.notify("No provider to act on yet.", severity="warning")
        return name

    def action_toggle_provider(self) -> None:
        name = self._selected_provider()
        if name is None:
            return
        control = self.console.control
        if self.providers.get(name, {}).get("paused"):
            self.console.run_command(
                f"{name} resumed", lambda: control.resume(name), self.provider_changed
            )
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.console.run_command(
                    f"{name} paused", lambda: control.pause(name), self.provider_changed
                )

        question = f"Pause {name}? Its traffic moves to the other providers until resumed."
        self.app.push_screen(ConfirmScreen(question), answered)

    def action_weight(self) -> None:
        name = self._selected_provider()
        if name is None:
            return
        p = self.providers.get(name, {})

        def answered(value: str | None) -> None:
            if not value:
                return
            try:
                weight = int(value)
            except ValueError:
                self.console.notify(f"{value!r} is not a whole number.", severity="error")
                return
            self.console.run_command(
                f"{name} weight set to {weight}",
                lambda: self.console.control.set_weight(name, weight),
                self.provider_changed,
            )

        question = (
            f"Run-time weight for {name} (configured {p.get('configured_weight')}; "
            "0 = failover only; reset on restart)"
        )
        self.app.push_screen(PromptScreen(question, value=str(p.get("weight", ""))), answered)

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        box.value = self.query_one(TrafficLog).filter_text
        box.focus()

    @on(Input.Submitted, "#filter")
    def _filter_submitted(self, event: Input.Submitted) -> None:
        self._set_filter(event.value)

    def action_clear_filter(self) -> None:
        self._set_filter("")

    def _set_filter(self, text: str) -> None:
        box = self.query_one("#filter", Input)
        box.display = False
        log = self.query_one(TrafficLog)
        log.set_filter(text)
        log.focus()
        self.show_status()

    def action_hold(self) -> None:
        log = self.query_one(TrafficLog)
        log.set_following(not log.following)
        self.show_status()

    def action_find(self) -> None:
        def answered(value: str | None) -> None:
            if value:
                self.console.find(value)

        self.app.push_screen(
            PromptScreen("Find a message", placeholder="message id or phone number"), answered
        )

    def action_lift(self) -> None:
        selected = self.query_one(TrafficLog).selected
        number = selected.number if selected is not None else ""

        def answered(value: str | None) -> None:
            if value:
                self.console.ask_lift(value)

        self.app.push_screen(PromptScreen("Lift the suppression of number", value=number), answered)

    @on(TrafficLog.RowSelected, "#log")
    def _open_message(self, event: TrafficLog.RowSelected) -> None:
        entry = self.query_one(TrafficLog).selected
        if entry is not None and entry.msg_id:
            self.console.open_message(entry.msg_id)
