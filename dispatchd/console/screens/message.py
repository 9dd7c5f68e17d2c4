"""Looking at messages: one message, or the messages to one number.

`MessageScreen` shows a message's fields, status history and provider attempts, and
retries it or lifts its number's suppression; `MessagesScreen` lists the messages to
one number, newest first, and opens each in a `MessageScreen`.
"""

from __future__ import annotations

from datetime import tzinfo
from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Label, Static

from dispatchd.console.widgets.format import EVENT_STYLE, fmt_iso
from dispatchd.control.client import CommandFailed, DaemonUnavailable
from dispatchd.control.format import fmt_ms
from dispatchd.control.protocol import Json

if TYPE_CHECKING:
    from dispatchd.console.app import ConsoleApp


class MessageScreen(Screen[None]):
    """One message: its fields, status history and provider attempts."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("r", "retry", "Retry"),
        Binding("u", "lift", "Lift suppression"),
        Binding("g", "refresh", "Refresh"),
    ]

    def __init__(self, msg_id: str, *, tz: tzinfo | None) -> None:
        super().__init__()
        self.msg_id = msg_id
        self._tz = tz
        self.message: Json | None = None

    @property
    def console(self) -> ConsoleApp:
        from dispatchd.console.app import ConsoleApp

        assert isinstance(self.app, ConsoleApp)
        return self.app

    def compose(self) -> ComposeResult:
        yield Static(f"Message {self.msg_id}\nloading…", id="message-head")
        yield Label("History", classes="section-title")
        yield DataTable(id="history", cursor_type="row")
        yield Label("Attempts", classes="section-title")
        yield DataTable(id="attempts", cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        history = self.query_one("#history", DataTable)
        history.add_columns("At", "Status", "Detail")
        attempts = self.query_one("#attempts", DataTable)
        attempts.add_columns("Started", "Provider", "Outcome", "HTTP", "Latency", "Error")
        self.action_refresh()

    @work(exclusive=True, group="message-load")
    async def action_refresh(self) -> None:
        try:
            self.show(await self.console.control.message(self.msg_id))
        except (CommandFailed, DaemonUnavailable) as exc:
            self.query_one("#message-head", Static).update(f"Message {self.msg_id}\n{exc.message}")
            self.notify(exc.message, title="Cannot load the message", severity="error")

    def show(self, msg: Json) -> None:
        self.message = msg
        status = str(msg.get("status"))
        error = msg.get("error") or {}
        head = Text()
        head.append(f"Message {msg.get('id')}\n", "bold")
        head.append("to ")
        head.append(str(msg.get("to_number")), "bold")
        head.append("   status ")
        head.append(status, EVENT_STYLE.get(status, "bold"))
        head.append(f"   provider {msg.get('provider') or '-'}")
        head.append(f"   {msg.get('segments')} segment(s) {msg.get('encoding')}\n")
        head.append(f"created {fmt_iso(msg.get('created_at'), self._tz)}")
        head.append(f"   updated {fmt_iso(msg.get('updated_at'), self._tz)}\n")
        if error:
            head.append(f"error {error.get('code')}: {error.get('detail')}\n", "red")
        head.append(f"text: {msg.get('message')}", "dim")
        self.query_one("#message-head", Static).update(head)
        history = self.query_one("#history", DataTable)
        history.clear()
        for h in msg.get("history", []):
            st = str(h.get("status"))
            history.add_row(
                fmt_iso(h.get("at"), self._tz, date=False),
                Text(st, EVENT_STYLE.get(st, "")),
                h.get("detail"),
            )
        attempts = self.query_one("#attempts", DataTable)
        attempts.clear()
        for a in msg.get("attempts", []):
            attempts.add_row(
                fmt_iso(a.get("started_at"), self._tz, date=False),
                a.get("provider"),
                a.get("outcome"),
                str(a.get("http_status") or "-"),
                fmt_ms(a.get("latency_ms")),
                a.get("error") or "",
            )

    def action_retry(self) -> None:
        self.console.ask_retry(self.msg_id)

    def action_lift(self) -> None:
        if self.message is not None:
            self.console.ask_lift(str(self.message.get("to_number")))


class MessagesScreen(Screen[None]):
    """Messages to one number, newest first; enter opens one."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "app.pop_screen", "Back")]

    def __init__(self, number: str, items: list[Json], *, tz: tzinfo | None) -> None:
        super().__init__()
        self._number = number
        self._items = items
        self._tz = tz

    def compose(self) -> ComposeResult:
        yield Label(f"Messages to {self._number} (newest first)", classes="section-title")
        yield DataTable(id="found", cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#found", DataTable)
        table.add_columns("Created", "Status", "Provider", "Id")
        for m in self._items:
            st = str(m.get("status"))
            table.add_row(
                fmt_iso(m.get("created_at"), self._tz),
                Text(st, EVENT_STYLE.get(st, "")),
                m.get("provider") or "-",
                m.get("id"),
                key=str(m.get("id")),
            )
        table.focus()

    @on(DataTable.RowSelected, "#found")
    def _open(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value is not None:
            self.app.push_screen(MessageScreen(str(event.row_key.value), tz=self._tz))
