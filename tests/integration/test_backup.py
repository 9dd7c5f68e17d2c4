"""Online backups: `dispatchd backup` and `POST /v1/backup`, on real files and a real socket.

The database is seeded with 20,000 messages so a copy takes a few hundred milliseconds:
long enough for accepts to run beside it, and for tests to catch it while it runs.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import shutil
import sqlite3
import stat
import sys
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dispatchd.config import Config
from dispatchd.control.client import CommandFailed, ControlClient
from dispatchd.control.server import BACKUPS, DEPS, BackupCopy
from dispatchd.daemon import Daemon, build
from dispatchd.domain.errors import StoreError
from dispatchd.store.memory import MemoryStore
from dispatchd.store.sqlite import SqliteStore, seed_backlog
from dispatchd.store.sqlite.backup import BACKGROUND_NICENESS, BackupJob, copy_database
from dispatchd.store.sqlite.schema import _lock
from tests.conftest import DaemonFactory, free_port, make_config, wait_for
from tests.helpers import NUMBER

pytestmark = pytest.mark.slow  # seeds a database, copies it, runs the CLI in subprocesses

SEEDED = 20_000
TIMESTAMPED = re.compile(r"^dispatchd-\d{8}T\d{6}Z\.db$")


@pytest.fixture(scope="module")
def seeded_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("seed") / "seed.db"
    seed_backlog(path, SEEDED)
    return path


@pytest.fixture
def config(tmp_path: Path, short_tmp: Path, seeded_db: Path) -> Config:
    """A test config on a copy of the seeded database, with a control socket."""
    cfg = make_config(tmp_path, free_port(), control={"socket": str(short_tmp / "c.sock")})
    shutil.copyfile(seeded_db, cfg.storage.path)
    return cfg


@pytest.fixture
async def daemon(start_daemon: DaemonFactory, config: Config) -> Daemon:
    return await start_daemon(config)


@pytest.fixture
async def control(config: Config) -> AsyncIterator[ControlClient]:
    client = ControlClient(config.control_socket)
    yield client
    await client.close()


def cli_config(tmp_path: Path, cfg: Config, socket: Path | None = None) -> Path:
    """A config file for the CLI naming the database and the control socket."""
    path = tmp_path / "cli.toml"
    path.write_text(
        f'[storage]\npath = "{cfg.storage.path}"\n'
        f'[control]\nsocket = "{socket or cfg.control_socket}"\n'
        '[log]\nlevel = "warning"\n'
    )
    return path


async def run_cli(*args: str, cwd: Path | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dispatchd",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def send(http: aiohttp.ClientSession, d: Daemon, text: str = "hi") -> str:
    url = f"http://127.0.0.1:{d.port}/messages"
    async with http.post(url, json={"to_number": NUMBER, "message": text}) as resp:
        body = await resp.json()
        assert resp.status == 202, body
        return str(body["id"])


def ids_in(copy: Path) -> set[str]:
    with sqlite3.connect(f"file:{copy}?mode=ro", uri=True) as conn:
        return {r[0] for r in conn.execute("SELECT id FROM messages")}


def integrity(copy: Path) -> list[str]:
    with sqlite3.connect(f"file:{copy}?mode=ro", uri=True) as conn:
        return [r[0] for r in conn.execute("PRAGMA integrity_check")]


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def backup_running(d: Daemon) -> bool:
    return d.control.app[BACKUPS].running is not None


# -- a running daemon ---------------------------------------------------------------------


async def test_a_running_daemon_writes_a_consistent_copy_while_it_keeps_accepting(
    daemon: Daemon, control: ControlClient, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    dest = tmp_path / "copy.db"
    answered: dict[str, float] = {}  # id -> when its 202 arrived
    for _ in range(5):
        answered[await send(http, daemon)] = time.time()
    backup = asyncio.create_task(control.backup(str(dest)))
    # Accept back to back until the copy is done. An accept that began and ended while it
    # ran proves the copy did not hold the writer up.
    during = 0
    while not backup.done():
        began_during = backup_running(daemon)
        msg_id = await send(http, daemon)
        answered[msg_id] = time.time()
        during += began_during and backup_running(daemon)
    done = await backup
    assert during > 0, "no accept completed while the copy ran"
    assert integrity(dest) == ["ok"]
    copied = ids_in(dest)
    before = {i for i, at in answered.items() if at < done["started_at"]}
    assert len(before) >= 5 and before <= copied, "every 202 before the start is in the copy"
    assert len(copied) == done["messages"] >= SEEDED + len(before)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600, "message texts are for our eyes only"
    assert leftovers(tmp_path) == []


async def test_the_cli_asks_a_running_daemon_for_the_copy(
    daemon: Daemon, config: Config, tmp_path: Path
) -> None:
    dest = tmp_path / "backups" / "copy.db"
    dest.parent.mkdir()
    conf = cli_config(tmp_path, config)
    # A relative DEST is taken from the CLI's working directory, not the daemon's.
    code, out, err = await run_cli("backup", "backups/copy.db", "--config", str(conf), cwd=tmp_path)
    assert code == 0, err
    assert out.startswith(f"{dest}: ") and out.count("\n") == 1
    assert f"{SEEDED:,} messages" in out and "by the running daemon" in out
    assert "integrity_check ok" in out
    assert integrity(dest) == ["ok"] and len(ids_in(dest)) == SEEDED


async def test_the_answer_describes_the_copy_and_a_second_backup_meanwhile_is_refused(
    daemon: Daemon, control: ControlClient, tmp_path: Path
) -> None:
    first = asyncio.create_task(control.backup(str(tmp_path / "one.db")))
    await wait_for(lambda: backup_running(daemon), what="the first backup to start")
    with pytest.raises(CommandFailed) as refused:
        await control.backup(str(tmp_path / "two.db"))
    assert (refused.value.status, refused.value.code) == (409, "backup_running")
    assert str(tmp_path / "one.db") in refused.value.message
    done = await first
    assert done["path"] == str(tmp_path / "one.db")
    assert done["integrity"] == "ok"
    assert done["messages"] == SEEDED
    assert done["bytes"] == (tmp_path / "one.db").stat().st_size
    assert done["seconds"] > 0 and done["started_at"] <= time.time()
    assert not (tmp_path / "two.db").exists()
    # Once it is done, the next one is taken.
    assert (await control.backup(str(tmp_path / "two.db")))["messages"] == SEEDED


async def test_a_directory_gets_a_timestamped_copy(
    daemon: Daemon, control: ControlClient, tmp_path: Path
) -> None:
    backups = tmp_path / "backups"
    backups.mkdir()
    done = await control.backup(str(backups) + "/")
    written = Path(done["path"])
    assert written.parent == backups and TIMESTAMPED.match(written.name), written
    assert integrity(written) == ["ok"]
    with pytest.raises(CommandFailed, match="does not exist") as missing:
        await control.backup(str(tmp_path / "no-such-dir") + "/")
    assert (missing.value.status, missing.value.code) == (503, "backup_failed")
    with pytest.raises(CommandFailed, match="does not exist"):
        await control.backup(str(tmp_path / "no-such-dir" / "copy.db"))


async def test_the_live_database_is_never_a_destination(
    daemon: Daemon, control: ControlClient, config: Config
) -> None:
    db = config.storage.path
    for target in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        with pytest.raises(CommandFailed, match="live database") as refused:
            await control.backup(str(target))
        assert refused.value.status == 503
    assert integrity(db) == ["ok"]
    assert leftovers(db.parent) == []


async def test_a_cancelled_backup_leaves_the_previous_one_whole(
    daemon: Daemon, tmp_path: Path
) -> None:
    store = daemon.store
    assert isinstance(store, SqliteStore)
    dest = tmp_path / "backups" / "copy.db"
    dest.parent.mkdir()
    dest.write_bytes(b"the previous backup")
    copying = asyncio.create_task(store.backup(dest))
    await wait_for(lambda: leftovers(dest.parent), what="the copy to be under way")
    copying.cancel()
    with pytest.raises(asyncio.CancelledError):
        await copying
    assert dest.read_bytes() == b"the previous backup"
    assert leftovers(dest.parent) == []
    # A complete copy does replace it.
    done = await store.backup(dest)
    assert done.path == dest and done.messages == SEEDED
    assert integrity(dest) == ["ok"]
    assert leftovers(dest.parent) == []


async def test_stopping_the_daemon_abandons_a_running_backup_with_an_answer(
    config: Config, tmp_path: Path
) -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def endless(path: str) -> BackupCopy:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()
        raise AssertionError("never finishes")

    d = await build(config, time.time, random.Random(1))
    app = d.control.app
    app[DEPS] = replace(app[DEPS], backup=endless)
    try:
        await d.start()
        client = ControlClient(config.control_socket)
        try:
            backup = asyncio.create_task(client.backup(str(tmp_path / "copy.db")))
            await asyncio.wait_for(started.wait(), 10)
            await d.stop(grace=0.5)
            with pytest.raises(CommandFailed, match="stopping") as abandoned:
                await backup
        finally:
            await client.close()
    finally:
        await d.stop(grace=0.5)
    assert (abandoned.value.status, abandoned.value.code) == (503, "backup_failed")
    assert cancelled.is_set()


# -- the control endpoint's answers ---------------------------------------------------------


async def test_bad_bodies_and_relative_paths_are_problems(daemon: Daemon, config: Config) -> None:
    connector = aiohttp.UnixConnector(path=str(config.control_socket))
    cases: list[tuple[Any, int, str]] = [
        ({"path": "backups/copy.db"}, 422, "bad_path"),
        ({"path": ""}, 422, "bad_path"),
        ({"path": 7}, 422, "bad_path"),
        ({"path": "/tmp/a\u0000b"}, 422, "bad_path"),
        ({}, 422, "bad_path"),
        ("[1, 2]", 400, "malformed_request"),
        ("not json", 400, "malformed_request"),
    ]
    async with aiohttp.ClientSession(connector=connector) as session:
        for body, status, code in cases:
            kwargs: dict[str, Any] = (
                {"data": body, "headers": {"Content-Type": "application/json"}}
                if isinstance(body, str)
                else {"json": body}
            )
            async with session.post("http://d/v1/backup", **kwargs) as resp:
                problem = await resp.json(content_type=None)
                assert resp.status == status, (body, problem)
                assert resp.content_type == "application/problem+json"
                assert problem["code"] == code and problem["detail"], problem
    assert leftovers(config.storage.path.parent) == []


async def test_an_in_memory_store_has_nothing_to_back_up(tmp_path: Path, short_tmp: Path) -> None:
    cfg = make_config(tmp_path, free_port(), control={"socket": str(short_tmp / "m.sock")})
    d = await build(cfg, time.time, random.Random(1), store=MemoryStore())
    client = ControlClient(cfg.control_socket)
    try:
        await d.start()
        with pytest.raises(CommandFailed, match="in memory") as refused:
            await client.backup(str(tmp_path / "copy.db"))
    finally:
        await client.close()
        await d.stop(grace=0.5)
    assert (refused.value.status, refused.value.code) == (409, "backup_unsupported")
    assert not (tmp_path / "copy.db").exists()


# -- a stopped daemon ---------------------------------------------------------------------


async def test_a_stopped_daemons_database_is_copied_offline_under_its_lock(
    start_daemon: DaemonFactory,
    config: Config,
    tmp_path: Path,
    http: aiohttp.ClientSession,
) -> None:
    d = await start_daemon(config)
    ids = {await send(http, d) for _ in range(3)}
    await d.stop(grace=0.5)
    dest = tmp_path / "copy.db"
    code, out, err = await run_cli(
        "backup", str(dest), "--config", str(cli_config(tmp_path, config))
    )
    assert code == 0, err
    assert "offline" in out and "integrity_check ok" in out
    assert integrity(dest) == ["ok"]
    assert ids <= ids_in(dest) and len(ids_in(dest)) == SEEDED + 3
    # The lock was let go: a daemon starts on the database again.
    again = await start_daemon(on_new_port(config))
    assert again.store.healthy


def on_new_port(cfg: Config) -> Config:
    port = free_port()
    server = cfg.server.model_copy(update={"port": port, "public_url": f"http://127.0.0.1:{port}"})
    return cfg.model_copy(update={"server": server})


async def test_a_locked_database_without_an_answering_socket_is_not_copied(
    daemon: Daemon, config: Config, tmp_path: Path, short_tmp: Path
) -> None:
    # The daemon runs, but the CLI looks for its socket elsewhere.
    elsewhere = short_tmp / "elsewhere.sock"
    conf = cli_config(tmp_path, config, socket=elsewhere)
    dest = tmp_path / "copy.db"
    code, out, err = await run_cli("backup", str(dest), "--config", str(conf))
    assert code == 69
    assert str(config.storage.path) in err and str(elsewhere) in err
    assert "Traceback" not in err and out == ""
    assert not dest.exists() and leftovers(tmp_path) == []


async def test_the_offline_copy_refuses_a_database_a_process_holds(
    config: Config, tmp_path: Path
) -> None:
    lock = _lock(config.storage.path)
    try:
        conf = cli_config(tmp_path, config)
        code, _, err = await run_cli("backup", str(tmp_path / "copy.db"), "--config", str(conf))
    finally:
        lock.close()
    assert code == 69 and "nothing answers on its control socket" in err
    assert not (tmp_path / "copy.db").exists()


async def test_no_daemon_and_no_database_is_exit_66(tmp_path: Path, short_tmp: Path) -> None:
    cfg = make_config(tmp_path / "nothing", 1, control={"socket": str(short_tmp / "none.sock")})
    conf = cli_config(tmp_path, cfg)
    code, out, err = await run_cli("backup", str(tmp_path / "copy.db"), "--config", str(conf))
    assert code == 66, err
    assert "no database" in err and "Traceback" not in err and out == ""
    assert not (tmp_path / "nothing").exists(), "nothing is created for a database not there"


def test_a_background_copy_is_niced_in_its_own_thread_only(seeded_db: Path, tmp_path: Path) -> None:
    # Niced, the copy takes only the CPU the daemon leaves idle; the niceness is the
    # thread's own (Linux), so the event loop and the writer keep theirs.
    niceness: list[int] = []

    def copy() -> None:
        tid = threading.get_native_id()
        before = os.getpriority(os.PRIO_PROCESS, tid)
        BackupJob(seeded_db, tmp_path / "copy.db", background=True).run()
        niceness.append(os.getpriority(os.PRIO_PROCESS, tid) - before)

    ours = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    thread = threading.Thread(target=copy)
    thread.start()
    thread.join()
    assert niceness == [min(BACKGROUND_NICENESS, 19 - ours)]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == ours
    assert integrity(tmp_path / "copy.db") == ["ok"]


def test_a_file_that_is_not_a_dispatchd_database_is_not_copied(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(StoreError, match="not a dispatchd database"):
        copy_database(foreign, tmp_path / "copy.db")
    assert not (tmp_path / "copy.db").exists() and leftovers(tmp_path) == []


# -- restore ------------------------------------------------------------------------------


async def test_a_restored_copy_serves_what_was_accepted_before_the_backup(
    start_daemon: DaemonFactory,
    daemon: Daemon,
    control: ControlClient,
    config: Config,
    tmp_path: Path,
    http: aiohttp.ClientSession,
) -> None:
    kept = await send(http, daemon, "before the backup")
    copy = Path((await control.backup(str(tmp_path / "copy.db")))["path"])
    lost = await send(http, daemon, "after the backup")
    await daemon.stop(grace=0.5)
    # The README's restore: stop, replace the file, remove the stale WAL files, start.
    db = config.storage.path
    for stale in (Path(f"{db}-wal"), Path(f"{db}-shm")):
        stale.unlink(missing_ok=True)
    os.replace(copy, db)
    restored = await start_daemon(on_new_port(config))
    base = f"http://127.0.0.1:{restored.port}"
    async with http.get(f"{base}/messages/{kept}") as resp:
        assert resp.status == 200
        assert (await resp.json())["message"] == "before the backup"
    async with http.get(f"{base}/messages/{lost}") as resp:
        assert resp.status == 404, "a restore loses what was accepted after the copy"
