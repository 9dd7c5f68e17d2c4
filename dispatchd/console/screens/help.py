"""The key list, one screen for the whole console."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

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
    ("r", "retry a failed, expired or unknown message as a new one (asks)"),
    ("u", "lift the suppression of its number (asks first)"),
    ("g / esc", "refresh / back"),
)


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
