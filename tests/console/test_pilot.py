"""The console driven by Pilot, against a real in-process daemon (simulated providers)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from textual.widgets import Input

from dispatchd.console.screens.confirm import ConfirmScreen
from dispatchd.console.screens.message import MessageScreen
from dispatchd.console.widgets.provider_table import ProviderTable
from dispatchd.console.widgets.traffic_log import LogEntry, TrafficLog
from dispatchd.control.client import ControlClient
from dispatchd.daemon import Daemon
from tests.conftest import DaemonFactory, wait_for
from tests.console.fakes import (
    MESSAGE,
    NOW,
    SNAPSHOT,
    RecordedControl,
    RecordingApp,
    msg_id,
)
from tests.helpers import NUMBER

pytestmark = pytest.mark.slow  # the Textual app driven by a pilot, ~2 s a test


@pytest.fixture
def socket_path(short_tmp: Path) -> Path:
    return short_tmp / "c.sock"


def console(path: Path) -> RecordingApp:
    return RecordingApp(ControlClient(path), socket_label=str(path), reconnect_delay=(0.02, 0.1))


async def send(http: aiohttp.ClientSession, d: Daemon, number: str = NUMBER) -> str:
    url = f"http://127.0.0.1:{d.port}/messages"
    async with http.post(url, json={"to_number": number, "message": "hi"}) as resp:
        assert resp.status == 202
        return str((await resp.json())["id"])


def log_of(app: RecordingApp) -> TrafficLog:
    return app.main.query_one(TrafficLog)


def entries(app: RecordingApp, kind: str, msg: str | None = None) -> list[LogEntry]:
    return [e for e in log_of(app).entries if e.type == kind and msg in (None, e.msg_id)]


async def until(predicate: Callable[[], bool], what: str, within: float = 10.0) -> None:
    await wait_for(predicate, within=within, what=what)


# -- against the real daemon ---------------------------------------------------------------


async def test_health_table_and_live_log(
    start_daemon: DaemonFactory, socket_path: Path, http: aiohttp.ClientSession
) -> None:
    d = await start_daemon(control={"socket": str(socket_path)})
    app = console(socket_path)
    async with app.run_test(size=(100, 30)):
        await until(lambda: app.main.connected, "the console to attach")
        table = app.main.query_one(ProviderTable)
        assert table.row_count == 2
        assert [str(k.value) for k in table.rows] == ["provider1", "provider2"]
        msg = await send(http, d)
        await until(lambda: bool(entries(app, "accepted", msg)), "the accepted event")
        await until(lambda: bool(entries(app, "delivered", msg)), "the delivered event")
        assert entries(app, "accepted", msg)[0].number == NUMBER
        sent_by = entries(app, "sent", msg)[0].provider
        assert entries(app, "delivered", msg)[0].provider == sent_by  # filled in by the console
        assert f"{entries(app, 'delivered', msg)[0].key}" in log_of(app).shown


async def test_pausing_a_provider_sends_the_next_messages_to_the_other(
    start_daemon: DaemonFactory, socket_path: Path, http: aiohttp.ClientSession
) -> None:
    d = await start_daemon(control={"socket": str(socket_path)})
    app = console(socket_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(lambda: app.main.connected, "the console to attach")
        await pilot.press("2", "p")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await until(lambda: app.main.providers["provider2"]["paused"], "provider2 shown paused")
        assert d.health.get("provider2").paused
        await until(lambda: bool(entries(app, "provider_paused")), "the paused event")
        ids = [await send(http, d) for _ in range(6)]
        await until(lambda: all(entries(app, "sent", i) for i in ids), "six sends")
        assert {entries(app, "sent", i)[0].provider for i in ids} == {"provider1"}
        await pilot.press("p")  # resuming asks nothing
        await until(lambda: not d.health.get("provider2").paused, "provider2 to be resumed")
        assert ("provider2 resumed", "", "information") in app.notes


async def test_retrying_a_failed_message_from_its_screen(
    start_daemon: DaemonFactory, socket_path: Path, http: aiohttp.ClientSession
) -> None:
    d = await start_daemon(
        control={"socket": str(socket_path)},
        delivery={"max_attempts": 1},
        simulator={"failure_rate": 1.0},
    )
    app = console(socket_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(lambda: app.main.connected, "the console to attach")
        failed = await send(http, d)
        await until(lambda: bool(entries(app, "failed", failed)), "the failed event")
        d.simulator.settings = d.simulator.settings.model_copy(update={"failure_rate": 0.0})
        await pilot.press("f")
        app.screen.query_one(Input).value = failed
        await pilot.press("enter")
        await until(lambda: isinstance(app.screen, MessageScreen), "the message screen")
        screen = app.screen
        assert isinstance(screen, MessageScreen)
        await until(lambda: screen.message is not None, "the message to load")
        assert screen.message is not None and screen.message["status"] == "failed"
        await pilot.press("r")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")

        def retried() -> list[LogEntry]:
            return [e for e in entries(app, "accepted") if f"retry of {failed}" in e.detail]

        await until(lambda: bool(retried()), "the retry to be accepted")
        new_id = retried()[0].msg_id
        await until(lambda: bool(entries(app, "delivered", new_id)), "the retry delivered")
        # The open screen follows its message: it now shows the operator's note.
        await until(
            lambda: "retried by the operator" in str(screen.message and screen.message["history"]),
            "the message screen to refresh",
        )


async def test_reconnects_by_itself_when_the_daemon_restarts(
    start_daemon: DaemonFactory, socket_path: Path
) -> None:
    app = console(socket_path)
    async with app.run_test(size=(100, 30)):
        # Started before the daemon: it says so and keeps trying.
        await until(lambda: "no daemon" in app.main.lost_reason, "the console to say it is down")
        assert not app.main.connected
        first = await start_daemon(control={"socket": str(socket_path)})
        await until(lambda: app.main.connected, "the console to attach")
        instance = app.main.instance
        await first.stop(grace=0.5)
        await until(lambda: not app.main.connected, "the console to notice the stop")
        assert any(title == "Daemon disconnected" for _, title, _ in app.notes)
        await start_daemon(config=first.config)
        await until(lambda: app.main.connected, "the console to reattach")
        assert app.main.instance != instance
        assert entries(app, "restart"), "the log marks the restart"


async def test_the_daemons_refusals_are_notifications(
    start_daemon: DaemonFactory, socket_path: Path
) -> None:
    await start_daemon(control={"socket": str(socket_path)})
    app = console(socket_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(lambda: app.main.connected, "the console to attach")
        await pilot.press("1", "w")
        app.screen.query_one(Input).value = "-3"
        await pilot.press("enter")
        await until(lambda: any("bad_weight" in t for _, t, _ in app.notes), "the refusal")
        message, _, severity = next(n for n in app.notes if "bad_weight" in n[1])
        assert severity == "error" and "not -3" in message
        await pilot.press("f")
        app.screen.query_one(Input).value = msg_id(0)
        await pilot.press("enter")
        await until(lambda: any("No message" in m for m, _, _ in app.notes), "a not-found notice")


# -- against a recorded daemon: the UI's own mechanics ----------------------------------------


async def test_filter_hold_and_enter_on_a_recorded_stream() -> None:
    control = RecordedControl()
    app = RecordingApp(control, socket_label="s")
    async with app.run_test(size=(100, 30)) as pilot:
        await until(lambda: log_of(app).row_count == 12, "the recorded events")
        await pilot.press("slash")
        await pilot.press(*"provider2", "enter")
        shown = [e for e in log_of(app).entries if e.key in log_of(app).shown]
        assert shown and all("provider2" in (e.provider + e.detail) for e in shown)
        await pilot.press("escape")
        assert log_of(app).row_count == 12
        await pilot.press("space")  # hold
        for seq in (13, 14):
            payload = {"id": msg_id(9), "number": "+17034573329", "provider": "provider1"}
            control.feed.put_nowait({"seq": seq, "at": 0.0, "type": "sent", "payload": payload})
        await until(lambda: log_of(app).held == 2, "two held events")
        assert log_of(app).row_count == 12
        await pilot.press("space")  # follow again: nothing was lost
        assert log_of(app).row_count == 14 and log_of(app).held == 0
        log_of(app).focus()
        log_of(app).move_cursor(row=4)  # the `sent` of message 2
        await pilot.press("enter")
        await until(lambda: isinstance(app.screen, MessageScreen), "the message screen")
        assert app.screen.msg_id == MESSAGE["id"]  # type: ignore[attr-defined]


async def test_dropped_events_are_counted_in_the_status_bar() -> None:
    control = RecordedControl()
    app = RecordingApp(control, socket_label="s")
    async with app.run_test(size=(100, 30)):
        await until(lambda: app.main.connected, "the recorded snapshot")
        control.feed.put_nowait({"type": "dropped", "seq": None, "payload": {"count": 37}})
        await until(lambda: app.main.dropped == 37, "the drop count")
        assert "dropped 37" in str(app.main.query_one("#status").render())


async def test_throttling_shows_in_the_provider_table_while_the_hold_lasts() -> None:
    control = RecordedControl()
    app = RecordingApp(control, socket_label="s")
    async with app.run_test(size=(120, 30)):
        await until(lambda: app.main.connected, "the recorded snapshot")
        table = app.main.query_one(ProviderTable)

        def throttled(name: str) -> str:
            return str(table.get_cell(name, "throttled"))

        # The snapshot's clock is started_at + uptime_s: provider1 is held 4 s more.
        assert throttled("provider1") == "3 held 4s"
        assert throttled("provider2") == "0"
        providers = [dict(p) for p in SNAPSHOT["providers"]]
        providers[0].update(throttled=4, held_until=NOW + 75)
        stats = {"rates": {}, "providers": providers, "uptime_s": 3730.0}
        control.feed.put_nowait({"seq": None, "at": NOW + 1, "type": "stats", "payload": stats})
        await until(lambda: throttled("provider1") == "4 held 1m14s", "a longer hold")
        # Judged by each frame's own time: a later frame after the hold shows the count only.
        later = {**stats, "uptime_s": 3820.0}
        control.feed.put_nowait({"seq": None, "at": NOW + 90, "type": "stats", "payload": later})
        await until(lambda: throttled("provider1") == "4", "the hold to end")


async def test_commands_go_to_the_daemon_with_confirmation(pilot_app: Any) -> None:
    app, control, pilot = pilot_app
    await pilot.press("1", "p", "n")  # declined: nothing sent
    await pilot.press("2", "p")  # provider2 is paused in the recording: resume asks nothing
    await pilot.press("u")
    app.screen.query_one(Input).value = "+17034570000"
    await pilot.press("enter", "y")
    await until(lambda: len(control.commands) == 2, "two commands")
    assert control.commands == [("resume", "provider2"), ("lift", "+17034570000")]


@pytest.fixture
async def pilot_app() -> AsyncIterator[tuple[RecordingApp, RecordedControl, Any]]:
    control = RecordedControl()
    app = RecordingApp(control, socket_label="s")
    async with app.run_test(size=(100, 30)) as pilot:
        await until(lambda: app.main.connected, "the recorded snapshot")
        yield app, control, pilot


async def test_a_burst_is_applied_in_one_go_and_overflow_is_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("dispatchd.console.app.INBOX_MAX", 50)
    monkeypatch.setattr(TrafficLog, "MAX_ROWS", 100)
    monkeypatch.setattr(TrafficLog, "TRIM_SLACK", 50)
    control = RecordedControl()
    app = RecordingApp(control, socket_label="s")
    async with app.run_test(size=(100, 30)) as pilot:
        await until(lambda: app.main.connected, "the recorded snapshot")
        log = log_of(app)
        # Arrives faster than the screen runs: nothing is applied until the burst is over.
        for seq in range(100, 1100):
            payload = {"id": msg_id(seq), "number": "+17034573321", "provider": "provider1"}
            app._receive({"seq": seq, "at": 0.0, "type": "sent", "payload": payload})
        await pilot.pause()
        assert app.main.dropped == 950  # the console's own inbox kept 50 of 1000
        assert len(log.entries) == 12 + 50
        for chunk in range(8):  # past the cap the log trims itself
            for seq in range(2000 + chunk * 40, 2040 + chunk * 40):
                payload = {"id": msg_id(seq), "number": "+17034573321", "provider": "provider1"}
                app._receive({"seq": seq, "at": 0.0, "type": "sent", "payload": payload})
            await pilot.pause()
        assert log.row_count <= TrafficLog.MAX_ROWS + TrafficLog.TRIM_SLACK
        assert log.shown[-1] == entries(app, "sent", msg_id(2319))[0].key
