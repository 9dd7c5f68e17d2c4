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
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import tzinfo
from pathlib import Path
from typing import Any, ClassVar

from textual import work
from textual.app import App
from textual.binding import Binding, BindingType
from textual.screen import Screen

from dispatchd.console.screens.confirm import ConfirmScreen
from dispatchd.console.screens.help import HelpScreen
from dispatchd.console.screens.main import ConnectionLost, MainScreen, StreamBatch
from dispatchd.console.screens.message import MessageScreen, MessagesScreen
from dispatchd.control.client import CommandFailed, Control, ControlClient, DaemonUnavailable
from dispatchd.control.protocol import Json

# Frames received but not yet applied; past this the console drops (and counts) them itself.
INBOX_MAX = 20_000
MESSAGE_ID = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)


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
