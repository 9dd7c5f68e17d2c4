"""`dispatchd console`: a Textual app attached to a running daemon's control socket.

The App owns the connection: one `@work` reader puts the stream's frames in a
bounded inbox and posts a `StreamBatch` message for the main screen, which applies
whatever has arrived in one go (so a burst costs one redraw, not one per event);
the reader reconnects by itself, with backoff, whenever the daemon goes away.
Commands run in their own workers and report the daemon's refusals as notifications.
"""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import tzinfo
from pathlib import Path
from typing import Any, ClassVar

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Input

from dispatchd.console.client import CommandFailed, Control, ControlClient, DaemonUnavailable
from dispatchd.console.screens import (
    ConfirmScreen,
    HelpScreen,
    MessageScreen,
    MessagesScreen,
    PromptScreen,
)
from dispatchd.console.widgets import (
    LogEntry,
    ProviderTable,
    QueuePanel,
    StatusBar,
    Throughput,
    TrafficLog,
    describe,
)

Json = dict[str, Any]

SENT_BY_KEPT = 20_000
# Frames received but not yet applied; past this the console drops (and counts) them itself.
INBOX_MAX = 20_000
MESSAGE_ID = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)


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
        self._dropped_before = 0  # by the daemon, for earlier connections
        self._dropped_now = 0  # by the daemon, for this connection
        self._dropped_here = 0  # by this console's inbox overflowing
        # Reports do not name the provider; the console remembers who sent each message.
        self._sent_by: OrderedDict[str, str] = OrderedDict()

    @property
    def console(self) -> ConsoleApp:
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
            self.query_one(ProviderTable).update_providers([provider])

    def _set_providers(self, providers: list[Json]) -> None:
        self.providers = {str(p["name"]): p for p in providers}
        self.query_one(ProviderTable).update_providers(providers)

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


class ConsoleApp(App[None]):
    """The operator console for one daemon."""

    # Absolute, so that subclasses (tests) living elsewhere still find it.
    CSS_PATH = Path(__file__).with_name("console.tcss")
    TITLE = "dispatchd console"
    ENABLE_COMMAND_PALETTE = False  # every action has a key; the palette's footer slot is needed
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("question_mark", "help", "Help"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(
        self,
        control: Control,
        *,
        socket_label: str,
        tz: tzinfo | None = None,
        reconnect_delay: tuple[float, float] = (0.1, 2.0),
    ) -> None:
        super().__init__()
        self.control = control
        self.tz = tz
        self._reconnect_delay = reconnect_delay
        self.main = MainScreen(socket_label=socket_label, tz=tz)
        self._inbox: deque[Json] = deque()
        self._inbox_lost = 0
        self._batch_posted = False

    def get_default_screen(self) -> Screen[Any]:
        return self.main

    def on_mount(self) -> None:
        self.read_stream()

    async def on_unmount(self) -> None:
        await self.control.close()

    @work(exclusive=True, group="control-stream")
    async def read_stream(self) -> None:
        """Follow the daemon's events forever, reconnecting after every loss."""
        failures = 0
        while True:
            try:
                async for event in self.control.events():
                    failures = 0
                    self._receive(event)
                reason = "the event stream ended"
            except DaemonUnavailable as exc:
                reason = exc.message
            except CommandFailed as exc:  # a daemon speaking another protocol version
                self.main.post_message(ConnectionLost(exc.message))
                self.notify(exc.message, title="Cannot attach", severity="error", timeout=30)
                return
            failures += 1
            self.main.post_message(ConnectionLost(reason))
            low, high = self._reconnect_delay
            await asyncio.sleep(min(high, low * 2 ** (failures - 1)))

    def _receive(self, event: Json) -> None:
        if len(self._inbox) < INBOX_MAX:
            self._inbox.append(event)
        else:
            self._inbox_lost += 1
        if not self._batch_posted:
            self._batch_posted = True
            self.main.post_message(StreamBatch())

    def take_events(self) -> tuple[list[Json], int]:
        """Everything received since the last call, and how many frames overflowed."""
        events = list(self._inbox)
        self._inbox.clear()
        lost, self._inbox_lost = self._inbox_lost, 0
        self._batch_posted = False
        return events, lost

    # -- commands -------------------------------------------------------------------------

    @work(group="commands")
    async def run_command(
        self,
        done: str,
        call: Callable[[], Awaitable[Json]],
        then: Callable[[Json], None] | None = None,
    ) -> None:
        """Send one command; the daemon's refusal becomes a notification, never a traceback."""
        try:
            result = await call()
        except CommandFailed as exc:
            self.notify(exc.message, title=f"Refused: {exc.code}", severity="error")
            return
        except DaemonUnavailable as exc:
            self.notify(exc.message, title="Daemon unavailable", severity="error")
            return
        if then is not None:
            then(result)
        self.notify(done)

    def ask_retry(self, msg_id: str) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                self.run_command(
                    f"{msg_id} retried as a new message", lambda: self.control.retry(msg_id)
                )

        question = f"Retry message {msg_id}? It is sent again as a new message."
        self.push_screen(ConfirmScreen(question), answered)

    def ask_lift(self, number: str) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                self.run_command(
                    f"{number} may receive messages again",
                    lambda: self.control.lift_suppression(number),
                )

        question = f"Lift the suppression of {number}? A provider reported it invalid."
        self.push_screen(ConfirmScreen(question), answered)

    def open_message(self, msg_id: str) -> None:
        self.push_screen(MessageScreen(msg_id, tz=self.tz))

    @work(group="commands")
    async def find(self, query: str) -> None:
        """Open a message by id, or list the messages to a number."""
        if MESSAGE_ID.match(query):
            self.open_message(query)
            return
        try:
            items = await self.control.messages(query)
        except (CommandFailed, DaemonUnavailable) as exc:
            self.notify(exc.message, title="Cannot search", severity="error")
            return
        if not items:
            self.notify(f"No messages to {query}.", severity="warning")
            return
        self.push_screen(MessagesScreen(query, items, tz=self.tz))

    def message_changed(self, msg_id: str | None) -> None:
        """Refresh an open message screen when its message moves on."""
        screen = self.screen
        if msg_id and isinstance(screen, MessageScreen) and screen.msg_id == msg_id:
            screen.action_refresh()

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())


def run(socket_path: Path) -> int:
    """Run the console until the operator quits."""
    ConsoleApp(ControlClient(socket_path), socket_label=str(socket_path)).run()
    return 0
