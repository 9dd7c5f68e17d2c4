"""The console's secondary screens: message detail and lookup, help, confirm and prompt."""

from __future__ import annotations

from datetime import tzinfo
from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Footer, Input, Label, Static

from dispatchd.console.client import CommandFailed, DaemonUnavailable
from dispatchd.console.widgets import EVENT_STYLE, fmt_iso, fmt_ms

if TYPE_CHECKING:
    from dispatchd.console.app import ConsoleApp

Json = dict[str, Any]

KEYS = (
    ("Main screen", ""),
    ("1-9", "pick provider 1-9 (or tab to the table, up/down)"),
    ("p", "pause (asks first) / resume the picked provider"),
    ("w", "set its run-time weight (0 = failover only)"),
    ("enter", "open the message on the log line"),
    ("/", "filter the log: number, event or provider; esc clears"),
    ("space", "hold the log (nothing is lost) / follow again"),
    ("f", "find a message by id or phone number"),
    ("u", "lift a number's suppression (asks first)"),
    ("? / q", "this help / quit (the daemon keeps running)"),
    ("Message screen", ""),
    ("r", "retry a failed or expired message as a new one (asks)"),
    ("u", "lift the suppression of its number (asks first)"),
    ("g / esc", "refresh / back"),
)


class ConfirmScreen(ModalScreen[bool]):
    """Ask yes or no before doing something that changes the daemon."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self._question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self._question, classes="question")
            yield Label("[b]y[/b] yes    [b]n[/b] / esc  no", classes="hint")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class PromptScreen(ModalScreen[str | None]):
    """Ask for one value; esc cancels."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, question: str, *, value: str = "", placeholder: str = "") -> None:
        super().__init__()
        self._question = question
        self._value = value
        self._placeholder = placeholder

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self._question, classes="question")
            yield Input(value=self._value, placeholder=self._placeholder, id="prompt-input")
            yield Label("enter  ok    esc  cancel", classes="hint")

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip())

    def action_cancel(self) -> None:
        self.dismiss(None)


class HelpScreen(ModalScreen[None]):
    """The key list."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,question_mark", "app.pop_screen", "Close")
    ]

    def compose(self) -> ComposeResult:
        text = Text()
        for key, what in KEYS:
            if not what:
                text.append(f"{key}\n", "bold underline")
            else:
                text.append(f"  {key:<10}", "bold cyan")
                text.append(f"{what}\n")
        with VerticalScroll(classes="dialog help"):
            yield Label("dispatchd console — keys   (esc closes)", classes="question")
            yield Static(text)


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
