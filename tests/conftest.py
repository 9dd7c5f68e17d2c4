"""Shared fixtures: real SQLite files in tmp_path, real local HTTP servers, polling helpers."""

from __future__ import annotations

import asyncio
import random
import re
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dispatchd.config import Config
from dispatchd.daemon import Daemon, build

# A module marked slow as a whole, on a line of its own at the top of the file.
SLOW_MODULE = re.compile(r"^pytestmark = pytest\.mark\.slow\b", re.MULTILINE)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Under `-m "not slow"` (`make unit`), do not even import a module marked slow.

    Every test in it would be deselected anyway; importing some (schemathesis builds its
    schema at import) costs seconds. Any other marker expression collects as usual.
    """
    if config.option.markexpr.strip() != "not slow":
        return None
    if collection_path.suffix != ".py" or not collection_path.name.startswith("test_"):
        return None
    if SLOW_MODULE.search(collection_path.read_text(encoding="utf-8")):
        return True
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_config(tmp_path: Path, port: int, **sections: Any) -> Config:
    """A test config: simulator on the daemon's own port, instant answers, no backoff."""
    base = f"http://127.0.0.1:{port}"
    data: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": port, "public_url": base},
        "storage": {"path": str(tmp_path / "dispatchd.db")},
        "delivery": {"backoff_initial": 0.0, "backoff_max": 0.0, "concurrency": 16},
        "providers": [
            {"name": "provider1", "url": f"{base}/simulator/provider1", "weight": 30},
            {"name": "provider2", "url": f"{base}/simulator/provider2", "weight": 70},
        ],
        "simulator": {
            "enabled": True,
            "failure_rate": 0.0,
            "latency": 0.0,
            "callback_delay": 0.0,
            "delivered": 1.0,
            "failed": 0.0,
            "invalid": 0.0,
        },
        # Production thresholds, test-sized time: an open circuit probes again in 0.2 s.
        "breaker": {"cooldown": 0.2},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return Config(**data)


async def wait_for(
    predicate: Callable[[], Awaitable[object]] | Callable[[], object],
    within: float = 10.0,
    interval: float = 0.01,
    what: str = "condition",
) -> None:
    """Poll `predicate` until true; fail the test after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(interval)


DaemonFactory = Callable[..., Awaitable[Daemon]]


@pytest.fixture
async def start_daemon(tmp_path: Path) -> AsyncIterator[DaemonFactory]:
    """Start in-process daemons (`await start_daemon(delivery={...})`); stopped at teardown."""
    started: list[Daemon] = []

    async def start(config: Config | None = None, **sections: Any) -> Daemon:
        cfg = config or make_config(tmp_path, free_port(), **sections)
        daemon = await build(cfg, time.time, random.Random(1))
        started.append(daemon)
        await daemon.start()
        return daemon

    yield start
    for daemon in reversed(started):
        await daemon.stop(grace=1.0)  # a no-op for one the test stopped itself


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain client session; files needing another kind (a base URL, no keep-alive)
    override it."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def daemon(start_daemon: DaemonFactory) -> Daemon:
    """A daemon with the default test config; files needing another config override it."""
    return await start_daemon()


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A directory with a short path, for unix sockets (their paths are capped at ~107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="dd-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
