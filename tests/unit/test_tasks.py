"""The shared task pool and the supervisor of the daemon's background loops."""

from __future__ import annotations

import asyncio
import logging

import pytest

from dispatchd.events import EventBus
from dispatchd.tasks import PoolFull, Supervisor, TaskPool


async def test_the_pool_holds_at_most_its_limit_and_says_when_a_slot_frees() -> None:
    ended: list[int] = []
    pool: TaskPool[str] = TaskPool("job", 2, on_done=lambda: ended.append(len(pool)))
    gate = asyncio.Event()

    async def job() -> None:
        await gate.wait()

    pool.spawn("a", job(), name="job-a")
    pool.spawn("b", job(), name="job-b")
    assert (len(pool), pool.free, sorted(pool.items())) == (2, 0, ["a", "b"])
    with pytest.raises(PoolFull):
        pool.spawn("c", asyncio.sleep(0), name="job-c")
    gate.set()
    await pool.wait()
    assert (len(pool), pool.free, ended) == (0, 2, [1, 0])


async def test_stop_gives_running_tasks_the_grace_then_returns_what_it_cut_short() -> None:
    pool: TaskPool[str] = TaskPool("job", 4, on_done=lambda: None)
    done: list[str] = []

    async def quick() -> None:
        await asyncio.sleep(0)
        done.append("quick")

    async def stuck() -> None:
        await asyncio.Event().wait()

    pool.spawn("quick", quick(), name="job-quick")
    pool.spawn("stuck", stuck(), name="job-stuck")
    assert await pool.stop(grace=0.05) == ["stuck"]
    assert done == ["quick"] and len(pool) == 0
    assert await pool.stop(grace=0.05) == [], "nothing left to cut"


async def test_a_task_that_crashes_is_logged_and_frees_its_slot(
    caplog: pytest.LogCaptureFixture,
) -> None:
    woken = asyncio.Event()
    pool: TaskPool[int] = TaskPool("job", 1, on_done=woken.set)

    async def broken() -> None:
        raise ValueError("a bug")

    pool.spawn(7, broken(), name="job-7")
    await woken.wait()
    assert pool.free == 1
    [record] = [r for r in caplog.records if r.getMessage().startswith("event=job_crashed")]
    assert record.getMessage() == "event=job_crashed task=job-7 error=ValueError('a bug')"
    assert record.levelno == logging.ERROR and record.exc_info is not None


async def test_a_loop_that_dies_is_logged_and_fails_the_supervisor(
    caplog: pytest.LogCaptureFixture,
) -> None:
    supervisor = Supervisor()

    async def broken() -> None:
        raise RuntimeError("boom")

    supervisor.spawn("idempotency-purge", broken())
    await asyncio.wait_for(supervisor.failed.wait(), 5)
    assert "event=idempotency_purge_died error=RuntimeError('boom')" in caplog.messages
    assert supervisor.names == []


async def test_a_loop_that_returns_while_the_daemon_runs_has_died_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    supervisor = Supervisor()

    async def returns() -> None:
        await asyncio.sleep(0)

    supervisor.spawn("worker", returns())
    await asyncio.wait_for(supervisor.failed.wait(), 5)
    assert "event=worker_died error='ended without being stopped'" in caplog.messages


async def test_loops_ending_once_the_daemon_stops_are_no_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    supervisor = Supervisor()
    stop = asyncio.Event()

    async def until_stopped() -> None:
        await stop.wait()

    async def forever() -> None:
        await asyncio.Event().wait()

    supervisor.spawn("worker", until_stopped())
    supervisor.spawn("store-watch", forever())
    assert supervisor.names == ["store-watch", "worker"]
    supervisor.stopping()
    stop.set()
    await supervisor.stop()  # cancels what is still running
    assert supervisor.names == [] and not supervisor.failed.is_set()
    assert not [m for m in caplog.messages if "_died" in m]


def test_local_events_reach_listeners_only() -> None:
    bus = EventBus(clock=lambda: 5.0)
    sub = bus.subscribe()
    heard: list[tuple[str, list[str]]] = []
    bus.add_listener(lambda e: heard.append((e.type, e.message_ids())))
    bus.publish("accepted", {"id": "m-1"})
    bus.publish("claimed", {"ids": ["m-1", "m-2"]}, local=True)
    bus.publish("stats", {"rates": {}}, keep=False)
    assert heard == [("accepted", ["m-1"]), ("claimed", ["m-1", "m-2"]), ("stats", [])]
    assert [sub.queue.get_nowait().type for _ in range(sub.queue.qsize())] == [
        "accepted",
        "stats",
    ]
    assert [e.type for e in bus.recent()] == ["accepted"]
    assert bus.seq == 2, "local events are not numbered: consoles see no gap"
    assert bus.roll_rates()["accepted"] == 1
