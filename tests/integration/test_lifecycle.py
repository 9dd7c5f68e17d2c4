"""The daemon as systemd runs it: signals, reload, sd_notify, JSON logs, storage faults."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dispatchd import daemon as daemon_mod
from dispatchd import logs
from dispatchd.daemon import Daemon
from dispatchd.devtools.bench import Process, free_port, wait_http
from dispatchd.domain.models import Status
from dispatchd.store.api import Store
from dispatchd.store.sqlite import SqliteStore
from tests.conftest import DaemonFactory, make_config, wait_for

pytestmark = pytest.mark.slow  # daemon processes: signals, sd_notify, reloads

SEND = {"to_number": "+17034573322", "message": "lifecycle"}


def write_config(
    workdir: Path, port: int, sim_port: int, *, weights: tuple[int, int] = (30, 70), **extra: str
) -> Path:
    sim = f"http://127.0.0.1:{sim_port}"
    sections = {
        "server": f'port = {port}\npublic_url = "http://127.0.0.1:{port}"\n'
        + extra.get("server", ""),
        "storage": f'path = "{workdir / "d.db"}"',
        "control": f'socket = "{workdir / "c.sock"}"',
        "delivery": "backoff_initial = 0.1\nbackoff_max = 0.2\n" + extra.get("delivery", ""),
        "log": extra.get("log", ""),
    }
    text = "".join(f"[{name}]\n{body}\n" for name, body in sections.items())
    for name, weight in zip(("provider1", "provider2"), weights, strict=True):
        text += f'[[providers]]\nname = "{name}"\nurl = "{sim}/{name}"\nweight = {weight}\n'
        text += "timeout = 5.0\n"
    path = workdir / "dispatchd.toml"
    path.write_text(text)
    return path


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Short path: the control socket must fit in a sockaddr_un.
    path = Path(tempfile.mkdtemp(prefix="dl-", dir="/tmp"))
    yield path
    if not os.environ.get("KEEP_WORKDIR"):
        shutil.rmtree(path, ignore_errors=True)


async def start_simulator(workdir: Path, latency: float) -> tuple[int, Process]:
    port = free_port()
    cfg = workdir / "sim.toml"
    cfg.write_text(
        f"[simulator]\nfailure_rate = 0.0\nlatency = {latency}\ncallback_delay = 0.0\n"
        'invalid_suffix = ""\ndelivered = 1.0\nfailed = 0.0\n'
    )
    proc = Process(
        "simulator", ["simulator", "--port", str(port), "--config", str(cfg)], workdir, {}
    )
    await wait_http(f"http://127.0.0.1:{port}/readyz", proc)
    return port, proc


async def serve(workdir: Path, config: Path, port: int, name: str = "daemon") -> Process:
    """`dispatchd serve` as a subprocess, once /readyz answers (stopped if it never does)."""
    proc = Process(name, ["serve", "--config", str(config)], workdir, {})
    try:
        await wait_http(f"http://127.0.0.1:{port}/readyz", proc)
    except BaseException:
        proc.stop()
        raise
    return proc


async def post(session: aiohttp.ClientSession, port: int) -> dict[str, Any]:
    async with session.post(f"http://127.0.0.1:{port}/messages", json=SEND) as resp:
        assert resp.status == 202
        return dict(await resp.json())


async def get(session: aiohttp.ClientSession, port: int, msg_id: str) -> dict[str, Any]:
    async with session.get(f"http://127.0.0.1:{port}/messages/{msg_id}") as resp:
        return dict(await resp.json())


def db_statuses(db: Path) -> dict[str, str]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT id, status FROM messages").fetchall())


async def wait_exit(proc: Process, within: float) -> int:
    await wait_for(
        lambda: proc.proc.poll() is not None,
        within=within,
        interval=0.02,
        what=f"{proc.name} to exit",
    )
    return proc.proc.returncode


async def test_sigterm_lets_in_flight_calls_finish_then_exits_0(workdir: Path) -> None:
    sim_port, sim = await start_simulator(workdir, latency=1.0)
    port = free_port()
    config = write_config(workdir, port, sim_port)
    daemon = await serve(workdir, config, port)
    try:
        async with aiohttp.ClientSession() as session:
            ids = [(await post(session, port))["id"] for _ in range(5)]

            async def sending() -> bool:
                statuses = [(await get(session, port, i))["status"] for i in ids]
                return statuses == ["sending"] * len(ids)

            await wait_for(sending, what="provider calls in flight")
        daemon.proc.send_signal(signal.SIGTERM)
        assert await wait_exit(daemon, within=15) == 0
        # Each call had time to finish: the provider's 200 was recorded, nothing requeued.
        assert set(db_statuses(workdir / "d.db").values()) <= {"sent", "delivered"}
        assert not (workdir / "c.sock").exists(), "control socket removed on clean exit"
    finally:
        daemon.stop()
        sim.stop()


async def test_grace_runs_out_then_unfinished_work_is_released_and_second_signal_is_immediate(
    workdir: Path,
) -> None:
    sim_port, sim = await start_simulator(workdir, latency=30.0)
    port = free_port()
    config = write_config(workdir, port, sim_port, server="shutdown_grace = 0.3\n")
    daemon = await serve(workdir, config, port)
    try:
        async with aiohttp.ClientSession() as session:
            msg_id = (await post(session, port))["id"]

            async def sending() -> bool:
                return (await get(session, port, msg_id))["status"] == "sending"

            await wait_for(sending, what="a provider call in flight")
        started = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        assert await wait_exit(daemon, within=20) == 0
        # The provider would answer after 30 s; the 0.3 s grace is what ends the wait.
        assert time.monotonic() - started < 15, "the grace period bounds the shutdown"
        assert db_statuses(workdir / "d.db") == {msg_id: "queued"}, "released, not left leased"
        daemon.stop()

        # Second run: with a long grace, a second SIGTERM exits at once.
        config = write_config(workdir, port, sim_port, server="shutdown_grace = 60\n")
        daemon = await serve(workdir, config, port, name="daemon2")
        async with aiohttp.ClientSession() as session:
            await wait_for(sending, what="the released message is tried again")
        daemon.proc.send_signal(signal.SIGTERM)
        await wait_for(lambda: "event=stopping" in daemon.log_path.read_text(), what="stopping")
        started = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        assert await wait_exit(daemon, within=12) == 1
        # Without the second signal it would wait for the 30 s provider call.
        assert time.monotonic() - started < 12
        # The store is intact: it opens and still holds the message.
        assert db_statuses(workdir / "d.db") == {msg_id: "sending"}
    finally:
        daemon.stop()
        sim.stop()


async def test_sighup_reloads_weights_and_rejects_a_bad_config(workdir: Path) -> None:
    sim_port, sim = await start_simulator(workdir, latency=0.0)
    port = free_port()
    config = write_config(workdir, port, sim_port, weights=(100, 0))
    daemon = await serve(workdir, config, port)
    try:
        async with aiohttp.ClientSession() as session:

            async def provider_of(msg_id: str) -> str | None:
                body = await get(session, port, msg_id)
                return body["provider"] if body["status"] in ("sent", "delivered") else None

            async def is_sent(msg_id: str) -> bool:
                return await provider_of(msg_id) is not None

            first = (await post(session, port))["id"]
            await wait_for(lambda: is_sent(first), what="first message sent")
            assert await provider_of(first) == "provider1"

            write_config(workdir, port, sim_port, weights=(0, 100))
            daemon.proc.send_signal(signal.SIGHUP)
            await wait_for(lambda: "event=config_reloaded" in daemon.log_path.read_text())
            ids = [(await post(session, port))["id"] for _ in range(5)]
            for msg_id in ids:
                await wait_for(lambda m=msg_id: is_sent(m), what="sent after reload")
                assert await provider_of(msg_id) == "provider2"

            config.write_text(config.read_text().replace("weight = 0", "weight = -5"))
            daemon.proc.send_signal(signal.SIGHUP)
            await wait_for(lambda: "event=config_reload_rejected" in daemon.log_path.read_text())
            assert "providers[0].weight" in daemon.log_path.read_text()
            last = (await post(session, port))["id"]
            await wait_for(lambda: is_sent(last), what="still delivering")
            assert await provider_of(last) == "provider2", "the old config stays"
    finally:
        assert daemon.stop() == 0
        sim.stop()


async def test_sd_notify_ready_status_watchdog_and_stopping(workdir: Path) -> None:
    sim_port, sim = await start_simulator(workdir, latency=0.0)
    port = free_port()
    config = write_config(workdir, port, sim_port)
    notify_path = workdir / "notify"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    listener.setblocking(False)
    env = {"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "200000"}
    daemon = Process("daemon", ["serve", "--config", str(config)], workdir, env)
    received: list[str] = []

    def drain() -> str:
        while True:
            try:
                received.append(listener.recv(4096).decode())
            except BlockingIOError:
                return "\n".join(received)

    try:
        await wait_for(lambda: "READY=1" in drain(), within=20, what="READY=1")
        ready = next(m for m in received if "READY=1" in m)
        assert "STATUS=ready" in ready
        # READY comes only once the listener is bound: the API answers right away.
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/readyz") as resp,
        ):
            assert resp.status == 200
        await wait_for(lambda: drain().count("WATCHDOG=1") >= 2, what="watchdog pings")
        daemon.proc.send_signal(signal.SIGTERM)
        assert await wait_exit(daemon, within=15) == 0
        assert "STOPPING=1" in drain()
    finally:
        daemon.stop()
        sim.stop()
        listener.close()


async def test_json_logs_carry_event_fields_and_no_tokens(workdir: Path) -> None:
    sim_port, sim = await start_simulator(workdir, latency=0.0)
    port = free_port()
    config = write_config(workdir, port, sim_port, log='format = "json"\n')
    daemon = await serve(workdir, config, port)
    try:
        async with aiohttp.ClientSession() as session:
            msg_id = (await post(session, port))["id"]

            async def delivered() -> bool:
                return (await get(session, port, msg_id))["status"] == "delivered"

            await wait_for(delivered)
    finally:
        daemon.stop()
        sim.stop()
    records = [json.loads(line) for line in daemon.log_path.read_text().splitlines() if line]
    sent = [r for r in records if r.get("event") == "sent" and r.get("id") == msg_id]
    assert len(sent) == 1
    assert sent[0]["provider"] in ("provider1", "provider2")
    assert float(sent[0]["latency_ms"]) >= 0
    assert "token" not in daemon.log_path.read_text()


def test_log_fields_parse_key_value_messages() -> None:
    assert logs.fields("event=sent id=abc provider=p1 error='no answer within 5s'") == {
        "event": "sent",
        "id": "abc",
        "provider": "p1",
        "error": "no answer within 5s",
    }
    assert logs.fields("free text") == {"msg": "free text"}


def test_systemd_unit_is_complete_and_verifies(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "dispatchd", "systemd-unit"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout
    for line in (
        "Type=notify",
        "StateDirectory=dispatchd",
        "RuntimeDirectory=dispatchd",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "DynamicUser=yes",
        "TimeoutStopSec=20",
        "WatchdogSec=",
    ):
        assert line in out
    assert "ExecStart=" in out and " serve --config " in out
    # The check runs before the daemon, with the same program and config file.
    lines = out.splitlines()
    start = next(line for line in lines if line.startswith("ExecStart="))
    pre = start.replace("ExecStart=", "ExecStartPre=").replace(" serve ", " config check ")
    assert pre in lines and lines.index(pre) < lines.index(start)
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / "dispatchd.service"
    unit.write_text(out)
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _sqlite(daemon: Daemon) -> SqliteStore:
    assert isinstance(daemon.store, SqliteStore)
    return daemon.store


async def _limit_pages(daemon: Daemon, extra: int | None) -> None:
    """Simulate a full disk: cap the database at its current size (None lifts the cap)."""
    store = _sqlite(daemon)

    def cap() -> None:
        conn = store._writer  # test-only reach into the writer connection
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages if extra is None else pages + extra}")

    await asyncio.get_running_loop().run_in_executor(store._executor, cap)


async def test_full_disk_answers_503_accepts_nothing_and_recovers_by_itself(
    start_daemon: DaemonFactory,
) -> None:
    d = await start_daemon(simulator={"callback_delay": 3600})
    base = f"http://127.0.0.1:{d.port}"
    async with aiohttp.ClientSession() as session:
        first = (await post(session, d.port))["id"]

        async def sent() -> bool:
            return await d.store.message_status(first) is Status.SENT

        # The worker's own write (the first message becoming `sent`) would prove the
        # database writable again if it came after the cap.
        await wait_for(sent, what="the first message to be sent")
        await _limit_pages(d, None)
        # Enough text to need a new page even if the last one has room.
        big = {"to_number": "+17034573322", "message": "x" * 1500}
        accepted = 1
        for _ in range(5):
            async with session.post(f"{base}/messages", json=big) as resp:
                status, headers, body = resp.status, resp.headers, await resp.read()
            if status == 503:
                break
            accepted += 1
        assert status == 503
        assert headers["Content-Type"].startswith("application/problem+json")
        assert headers["Retry-After"].isdigit()
        assert json.loads(body)["code"] == "storage_unavailable"
        async with session.get(f"{base}/readyz") as ready:
            assert ready.status == 503
        # Nothing half-written: exactly the messages that got a 202 are stored.
        async with session.get(f"{base}/messages") as listing:
            assert len((await listing.json())["items"]) == accepted

        await _limit_pages(d, 1_000_000)

        async def ready_again() -> bool:
            async with session.get(f"{base}/readyz") as r:
                return r.status == 200

        await wait_for(ready_again, what="the store to recover without traffic")
        async with session.post(f"{base}/messages", json=big) as resp:
            assert resp.status == 202


async def _set_read_only(daemon: Daemon, on: bool) -> None:
    """Simulate a read-only database (e.g. a remount) on the writer connection."""
    store = _sqlite(daemon)

    def apply() -> None:
        store._writer.execute(f"PRAGMA query_only = {int(on)}")  # test-only reach

    await asyncio.get_running_loop().run_in_executor(store._executor, apply)


async def test_read_only_database_answers_503_and_recovers(start_daemon: DaemonFactory) -> None:
    d = await start_daemon(simulator={"callback_delay": 3600})
    base = f"http://127.0.0.1:{d.port}"
    async with aiohttp.ClientSession() as session:
        await _set_read_only(d, True)
        async with session.post(f"{base}/messages", json=SEND) as resp:
            assert resp.status == 503
            assert resp.headers["Retry-After"].isdigit()
            assert (await resp.json())["code"] == "storage_unavailable"
        async with session.get(f"{base}/messages") as listing:
            assert (await listing.json())["items"] == []
        await _set_read_only(d, False)

        async def ready_again() -> bool:
            async with session.get(f"{base}/readyz") as r:
                return r.status == 200

        await wait_for(ready_again, what="the store to recover")
        await post(session, d.port)


# -- the supervisor -----------------------------------------------------------------------


async def test_a_background_task_that_dies_stops_serve_with_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dispatchd")

    async def broken_probe_loop(store: Store, interval: float = 1.0) -> None:
        raise RuntimeError("the probe loop broke")

    monkeypatch.setattr(daemon_mod, "watch_store", broken_probe_loop)
    cfg = make_config(tmp_path, free_port())
    async with asyncio.timeout(30):
        assert await daemon_mod.serve(cfg) == 1, "systemd restarts a daemon that exits non-zero"
    died = [m for m in caplog.messages if m.startswith("event=store_watch_died")]
    assert died == ["event=store_watch_died error=RuntimeError('the probe loop broke')"]
    assert caplog.messages[-1] == "event=stopped", "it stopped cleanly after the failure"


async def test_a_dead_worker_fails_the_daemon_and_readiness(
    start_daemon: DaemonFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    d = await start_daemon()

    async def broken_claim(limit: int, lease: float) -> list[Any]:
        raise RuntimeError("a bug in the claim")

    monkeypatch.setattr(d.store, "claim", broken_claim)
    async with aiohttp.ClientSession() as session:
        await post(session, d.port)  # wakes the worker, whose next claim raises
        await wait_for(lambda: d.failed, what="the supervisor to see the worker die")
        async with session.get(f"http://127.0.0.1:{d.port}/readyz") as resp:
            assert resp.status == 503
            assert "worker is not running" in (await resp.json())["detail"]
    assert "event=worker_died error=RuntimeError('a bug in the claim')" in caplog.messages
    assert not d.healthy(), "the systemd watchdog is no longer fed"
