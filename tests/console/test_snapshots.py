"""SVG snapshots of the console on recorded, deterministic data (pytest-textual-snapshot).

Update after an intended visual change with `pytest tests/console --snapshot-update`
and look at the SVGs (or the HTML report pytest writes on failure) before committing.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC
from typing import Any

import pytest
from textual.pilot import Pilot

from dispatchd.console.app import ConsoleApp
from dispatchd.console.screens.message import MessageScreen
from dispatchd.console.widgets.traffic_log import TrafficLog
from tests.console.fakes import MESSAGE, RecordedControl

pytestmark = pytest.mark.slow  # Textual renders every screen, ~1 s a snapshot

SnapCompare = Callable[..., bool]


def recorded_app() -> ConsoleApp:
    return ConsoleApp(RecordedControl(), socket_label="var/dispatchd.sock", tz=UTC)


async def settle(pilot: Pilot[Any], done: Callable[[], bool]) -> None:
    for _ in range(200):
        if done():
            break
        await pilot.pause()
    assert done(), "the console did not settle"
    await pilot.pause()


async def loaded(pilot: Pilot[Any]) -> None:
    app = pilot.app
    assert isinstance(app, ConsoleApp)
    await settle(pilot, lambda: app.main.connected and app.main.query_one(TrafficLog).row_count > 0)


def test_main_screen_at_80x24(snap_compare: SnapCompare) -> None:
    assert snap_compare(recorded_app(), terminal_size=(80, 24), run_before=loaded)


def test_main_screen_when_larger(snap_compare: SnapCompare) -> None:
    assert snap_compare(recorded_app(), terminal_size=(120, 36), run_before=loaded)


def test_message_detail_screen(snap_compare: SnapCompare) -> None:
    async def open_detail(pilot: Pilot[Any]) -> None:
        await loaded(pilot)
        app = pilot.app
        assert isinstance(app, ConsoleApp)
        app.open_message(MESSAGE["id"])

        def shown() -> bool:
            screen = app.screen
            return isinstance(screen, MessageScreen) and screen.message is not None

        await settle(pilot, shown)

    assert snap_compare(recorded_app(), terminal_size=(80, 24), run_before=open_detail)


def test_help_screen(snap_compare: SnapCompare) -> None:
    assert snap_compare(recorded_app(), terminal_size=(80, 24), run_before=loaded, press=["?"])
