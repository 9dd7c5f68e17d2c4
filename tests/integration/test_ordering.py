"""`[delivery] ordering = "per_recipient"`: messages to one number reach providers in
acceptance order, one at a time, retries included; the default mode is left as it was."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dispatchd.daemon import Daemon
from dispatchd.domain.ids import IdGenerator
from dispatchd.domain.models import ErrorCode, Status
from dispatchd.store.api import Claimed
from dispatchd.store.sqlite import SqliteStore
from dispatchd.store.sqlite import ordering as ordering_sql
from tests.conftest import DaemonFactory, wait_for
from tests.helpers import NOW, queued_message

LEASE = 60.0
A = "+17034573322"
B = "+17034573323"


class Outbox:
    """An ordered or unordered store with messages put in by acceptance order."""

    def __init__(self) -> None:
        self.now = NOW  # the store's clock
        self._ids = IdGenerator()
        self.claims: dict[str, Claimed] = {}  # the latest claim of each message

    async def open(self, path: Path, *, ordered: bool) -> Outbox:
        self.store = await SqliteStore.open(path, ordered=ordered, clock=lambda: self.now)
        return self

    async def add(self, number: str, due: float = NOW) -> str:
        msg = queued_message(self._ids.new(), number, NOW, next_attempt_at=due)
        await self.store.insert([msg], "accepted")
        return msg.id

    async def claim(self, at: float = NOW) -> set[str]:
        self.now = at
        claimed = await self.store.claim(100, LEASE)
        self.claims.update((c.id, c) for c in claimed)
        return {c.id for c in claimed}


@pytest.fixture
async def ordered(tmp_path: Path) -> AsyncIterator[Outbox]:
    outbox = await Outbox().open(tmp_path / "ordered.db", ordered=True)
    yield outbox
    await outbox.store.close()


@pytest.fixture
async def unordered(tmp_path: Path) -> AsyncIterator[Outbox]:
    outbox = await Outbox().open(tmp_path / "unordered.db", ordered=False)
    yield outbox
    await outbox.store.close()


# -- the claim ----------------------------------------------------------------------------


async def test_one_claim_takes_only_the_oldest_due_message_of_each_number(
    ordered: Outbox,
) -> None:
    a1, a2, a3 = [await ordered.add(A) for _ in range(3)]
    b1 = await ordered.add(B)
    # One statement claims the batch: its subquery sees the queue as it was, so a2 and a3
    # are held back by a1 even though a1 only becomes `sending` in that same statement.
    assert await ordered.claim() == {a1, b1}
    assert await ordered.claim() == set()  # a1 is sending: a2 waits
    # a1 found no provider: queued again, it is still ahead of a2, and goes first again.
    claims = ordered.claims
    await ordered.store.requeue(claims[a1], NOW, ErrorCode.PROVIDERS_UNAVAILABLE, "retry", (), NOW)
    assert await ordered.claim() == {a1}
    await ordered.store.mark_sent(claims[a1], "provider1", "p-1", (), NOW)
    assert await ordered.claim() == {a2}
    # A final status frees the next one as well as `sent` does.
    await ordered.store.finish(
        claims[a2], Status.FAILED, ErrorCode.PROVIDERS_UNAVAILABLE, "gave up", (), NOW
    )
    assert await ordered.claim() == {a3}


async def test_the_default_mode_claims_every_due_message_at_once(unordered: Outbox) -> None:
    ids = {await unordered.add(A) for _ in range(3)} | {await unordered.add(B)}
    assert await unordered.claim() == ids


async def test_a_lapsed_lease_is_taken_back_without_letting_the_next_one_pass(
    ordered: Outbox,
) -> None:
    a1, _a2 = await ordered.add(A), await ordered.add(A)
    assert await ordered.claim() == {a1}
    ordered.now = NOW + LEASE + 1
    claimed = await ordered.store.claim(100, LEASE)
    assert [(c.id, c.attempt) for c in claimed] == [(a1, 2)]


async def test_a_scheduled_message_holds_back_later_ones_to_its_number(ordered: Outbox) -> None:
    # Acceptance order is the contract, so a message scheduled for later is not overtaken.
    a1 = await ordered.add(A, due=NOW + 100)
    a2 = await ordered.add(A)
    b1 = await ordered.add(B)
    assert await ordered.claim() == {b1}
    await ordered.store.mark_sent(ordered.claims[b1], "provider1", "p-0", (), NOW)
    assert await ordered.claim(NOW + 100) == {a1}
    await ordered.store.mark_sent(ordered.claims[a1], "provider1", "p-1", (), NOW + 100)
    assert await ordered.claim(NOW + 100) == {a2}


async def test_the_worker_does_not_wake_for_a_message_that_must_wait(
    ordered: Outbox, unordered: Outbox
) -> None:
    for outbox in (ordered, unordered):
        await outbox.add(A)
        await outbox.claim()
        await outbox.add(A)  # due now, but behind the one being sent in ordered mode
    # Waking for it would find nothing to claim, again and again: a busy loop.
    assert await ordered.store.next_wakeup() == NOW + LEASE
    assert await unordered.store.next_wakeup() == NOW


# -- query plans ----------------------------------------------------------------------------

ORDERED_QUERIES = {
    "claim due": (ordering_sql.CLAIM_DUE_ORDERED, "messages_due"),
    "claim expired lease": (ordering_sql.CLAIM_LEASE_EXPIRED_ORDERED, "messages_leased"),
    "next due": (ordering_sql.NEXT_DUE_ORDERED, "messages_due"),
}


@pytest.mark.parametrize("name", sorted(ORDERED_QUERIES))
async def test_ordered_queries_use_indexes_for_the_queue_and_the_earlier_messages(
    ordered: Outbox, name: str
) -> None:
    sql, index = ORDERED_QUERIES[name]
    params: Any = {"now": NOW, "limit": 10, "lease_until": NOW} if "UPDATE" in sql else ()
    plan = await ordered.store.explain(sql, params)
    print(f"{name}: {plan}")
    # Every step reads through an index; none walks the whole table.
    assert not [s for s in plan if s.startswith("SCAN") and "USING" not in s], plan
    assert any(index in step for step in plan), plan
    assert any(
        step.startswith("SEARCH earlier USING") and "messages_unfinished_by_number" in step
        for step in plan
    ), plan


async def test_the_unfinished_index_exists_only_while_ordering_is_on(tmp_path: Path) -> None:
    path = tmp_path / "switch.db"

    def indexes() -> set[str]:
        with contextlib.closing(sqlite3.connect(path)) as conn:
            return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}

    for ordered, present in ((True, True), (False, False), (True, True)):
        store = await SqliteStore.open(path, ordered=ordered)
        await store.close()
        assert ("messages_unfinished_by_number" in indexes()) is present


# -- end to end -------------------------------------------------------------------------------

COUNT = 100
# Half the provider calls fail; nothing is given up; the breaker neither opens nor shifts
# traffic, so the failures and retries are what the test is about.
FLAKY = {
    "simulator": {"failure_rate": 0.5, "callback_delay": 3600},
    "breaker": {"failure_threshold": 10_000, "min_calls": 1_000_000, "max_shift": 0.0},
}


async def _send_and_collect(d: Daemon) -> list[str]:
    """Accept COUNT messages to one number in one batch; the order providers took them in."""
    d.simulator.keep_received = True
    texts = [f"m{i:03d}" for i in range(COUNT)]
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"http://127.0.0.1:{d.port}/messages/batch",
            json={"messages": [{"to_number": A, "message": t} for t in texts]},
        ) as resp,
    ):
        body = await resp.json()
    assert resp.status == 200 and body["accepted"] == COUNT, body
    ids = [r["message"]["id"] for r in body["results"]]
    assert ids == sorted(ids)  # acceptance order is item order

    async def all_sent() -> bool:
        assert d.store is not None
        return (await d.store.counts()).get("sent", 0) == COUNT

    await wait_for(all_sent, within=30, what=f"{COUNT} messages sent")
    stats = d.simulator.stats.as_json()
    failures = sum(p["errors"] for p in stats["providers"].values())
    assert failures >= COUNT // 4, stats  # the failures really happened
    return [r["message"] for r in d.simulator.received if r["to_number"] == A]


@pytest.mark.slow
async def test_messages_to_one_number_reach_providers_in_acceptance_order_through_failures(
    start_daemon: DaemonFactory,
) -> None:
    d = await start_daemon(delivery={"ordering": "per_recipient", "max_attempts": 100}, **FLAKY)
    arrived = await _send_and_collect(d)
    assert arrived == sorted(arrived) and len(arrived) == COUNT


@pytest.mark.slow
async def test_the_default_mode_sends_them_concurrently_in_any_order(
    start_daemon: DaemonFactory,
) -> None:
    d = await start_daemon(delivery={"max_attempts": 100}, **FLAKY)
    arrived = await _send_and_collect(d)
    assert sorted(arrived) == [f"m{i:03d}" for i in range(COUNT)]
    # Retries of failed messages overtake nothing in ordered mode; here they fall behind.
    assert arrived != sorted(arrived)
