"""The status bar: connection state, daemon identity, what the console drops or holds."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from dispatchd.control.format import fmt_age


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
