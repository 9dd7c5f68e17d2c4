"""The store contract (dispatchd/store/api.py), run against every backend.

One test class, one `store` fixture parametrized over BACKENDS: a backend joins by adding
one line there. Time moves only when a test moves the injected clock.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from dispatchd.domain.errors import StoreError, StoreUnavailable
from dispatchd.domain.ids import IdGenerator
from dispatchd.domain.models import (
    Attempt,
    DeliveryReport,
    ErrorCode,
    HistoryEntry,
    Message,
    Outcome,
    Status,
)
from dispatchd.store.api import Claimed, Purged, SavedResponse, Store
from dispatchd.store.memory import MemoryStore
from dispatchd.store.sqlite import SqliteStore
from tests.helpers import NOW, NUMBER, OTHER_NUMBER, queued_message

LEASE = 30.0
HOOK = "https://hooks.example/status"
UNAVAILABLE = ErrorCode.PROVIDERS_UNAVAILABLE


class Clock:
    """The store's clock: still until a test moves it."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def move_to(self, now: float) -> None:
        self.now = now


Opener = Callable[[Path, Clock, bool], Awaitable[Store]]


async def _sqlite(tmp_path: Path, clock: Clock, ordered: bool) -> Store:
    return await SqliteStore.open(tmp_path / "contract.db", ordered=ordered, clock=clock)


async def _memory(tmp_path: Path, clock: Clock, ordered: bool) -> Store:
    return MemoryStore(clock=clock, ordered=ordered)


BACKENDS: dict[str, Opener] = {
    "sqlite": _sqlite,
    "memory": _memory,
}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=sorted(BACKENDS))
async def open_store(
    request: pytest.FixtureRequest, tmp_path: Path, clock: Clock
) -> AsyncIterator[Callable[..., Awaitable[Store]]]:
    """Opens the backend under test (`ordered=True` for per-recipient ordering)."""
    opened: list[Store] = []

    async def open_(*, ordered: bool = False) -> Store:
        store = await BACKENDS[request.param](tmp_path, clock, ordered)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        await store.close()


@pytest.fixture
async def store(open_store: Callable[..., Awaitable[Store]]) -> Store:
    return await open_store()


@pytest.fixture
def ids() -> IdGenerator:
    # UUIDv7s in creation order, the same on every run.
    return IdGenerator(clock_ms=lambda: int(NOW * 1000), random_bytes=random.Random(7).randbytes)


def _attempt(outcome: Outcome = Outcome.ACCEPTED, at: float = NOW) -> Attempt:
    status = 200 if outcome is Outcome.ACCEPTED else 503
    return Attempt("provider1", at, outcome, status, 12.5)


def _report(status: Status, provider_id: str = "p-1") -> DeliveryReport:
    return DeliveryReport(status, provider_id)


def _statuses(msg: Message | None) -> list[Status]:
    assert msg is not None
    return [h.status for h in msg.history]


def _stale(claim: Claimed) -> Claimed:
    return replace(claim, token="not-the-token")


class TestStoreContract:
    # -- helpers ------------------------------------------------------------------------

    @staticmethod
    async def add(store: Store, ids: IdGenerator, number: str = NUMBER, **fields: Any) -> Message:
        msg = queued_message(ids.new(), number, **fields)
        await store.insert([msg], "accepted")
        return msg

    @staticmethod
    async def settle(
        store: Store,
        webhook_id: int,
        state: str,
        *,
        next_attempt_at: float | None = None,
        http_status: int | None = 200,
        error: str | None = None,
        finished_at: float | None = None,
    ) -> bool:
        return await store.settle_webhook(
            webhook_id,
            state=state,
            next_attempt_at=next_attempt_at,
            http_status=http_status,
            error=error,
            finished_at=finished_at,
        )

    @staticmethod
    async def claim_one(store: Store) -> Claimed:
        [claim] = await store.claim(1, LEASE)
        return claim

    # -- accepting and reading ------------------------------------------------------------

    async def test_an_inserted_message_reads_back_with_its_first_history_entry(
        self, store: Store, ids: IdGenerator
    ) -> None:
        msg = queued_message(ids.new(), send_at=NOW + 5, validity_period=600.0)
        await store.insert([msg], "accepted")
        got = await store.get(msg.id)
        assert got == replace(msg, history=(HistoryEntry(Status.QUEUED, NOW, "accepted"),))
        assert await store.get("no-such-id") is None
        assert await store.message_status(msg.id) is Status.QUEUED
        assert await store.message_status("no-such-id") is None
        assert await store.message_history(msg.id) == got.history
        assert await store.message_history("no-such-id") == ()

    async def test_a_batch_is_inserted_all_or_none(self, store: Store, ids: IdGenerator) -> None:
        first = await self.add(store, ids)
        saved = SavedResponse("", "k", "h", 202, "{}", None, NOW, NOW + 60)
        batch = [queued_message(ids.new()), first]  # the second is already stored
        with pytest.raises(StoreError):
            await store.insert(batch, "accepted", saved)
        assert await store.get(batch[0].id) is None
        assert await store.find_saved_response("", "k", NOW) is None
        assert await store.counts() == {"queued": 1}

    async def test_ensure_secret_keeps_the_first_one(self, store: Store) -> None:
        assert await store.ensure_secret("first") == "first"
        assert await store.ensure_secret("second") == "first"

    async def test_a_healthy_store_probes_true_and_refuses_writes_once_closed(
        self, open_store: Callable[..., Awaitable[Store]], ids: IdGenerator
    ) -> None:
        store = await open_store()
        assert store.healthy and store.last_error is None and not store.closed
        assert await store.probe() is True
        await store.close()
        assert store.closed
        with pytest.raises(StoreUnavailable):
            await store.insert([queued_message(ids.new())], "accepted")

    # -- claims and leases ----------------------------------------------------------------

    async def test_claims_take_due_messages_oldest_first_up_to_the_limit(
        self, store: Store, ids: IdGenerator, clock: Clock
    ) -> None:
        new = await self.add(store, ids, next_attempt_at=NOW)
        later = await self.add(store, ids, next_attempt_at=NOW + 20)
        old = await self.add(store, ids, next_attempt_at=NOW - 10)
        middle = await self.add(store, ids, next_attempt_at=NOW - 5)
        assert [c.id for c in await store.claim(1, LEASE)] == [old.id]
        assert {c.id for c in await store.claim(10, LEASE)} == {middle.id, new.id}
        assert await store.claim(10, LEASE) == [], "a message due later stays queued"
        assert await store.claim(0, LEASE) == []
        clock.move_to(NOW + 20)  # before the leases above run out
        assert [c.id for c in await store.claim(10, LEASE)] == [later.id]

    async def test_a_claim_leases_the_message_for_one_attempt(
        self, store: Store, ids: IdGenerator
    ) -> None:
        msg = await self.add(store, ids)
        claim = await self.claim_one(store)
        assert (claim.id, claim.to_number, claim.body, claim.attempt) == (
            msg.id,
            NUMBER,
            "hello",
            1,
        )
        assert claim.expires_at == msg.expires_at
        assert claim.token
        got = await store.get(msg.id)
        assert got is not None
        assert (got.status, got.attempt_count, got.updated_at) == (Status.SENDING, 1, NOW)
        assert got.history[-1] == HistoryEntry(Status.SENDING, NOW, "attempt 1")

    async def test_every_claimed_message_gets_its_own_token(
        self, store: Store, ids: IdGenerator
    ) -> None:
        for _ in range(5):
            await self.add(store, ids)
        claims = await store.claim(10, LEASE)
        assert len({c.token for c in claims}) == 5

    async def test_leases_run_on_the_store_clock(
        self, store: Store, ids: IdGenerator, clock: Clock
    ) -> None:
        await self.add(store, ids)
        clock.move_to(NOW + 7)
        claim = await self.claim_one(store)
        assert await store.next_wakeup() == NOW + 7 + LEASE
        clock.move_to(NOW + 7 + LEASE - 0.5)
        assert await store.claim(10, LEASE) == []
        clock.move_to(NOW + 7 + LEASE)
        [again] = await store.claim(10, LEASE)
        assert again.id == claim.id

    async def test_an_expired_lease_is_reclaimed_first_with_a_new_token(
        self, store: Store, ids: IdGenerator, clock: Clock
    ) -> None:
        msg = await self.add(store, ids)
        old = await self.claim_one(store)
        waiting = await self.add(store, ids)
        clock.move_to(NOW + LEASE + 1)
        new = await self.claim_one(store)
        assert (new.id, new.attempt) == (msg.id, 2)
        assert new.token != old.token
        got = await store.get(msg.id)
        assert got is not None and got.status is Status.SENDING and got.attempt_count == 2
        assert got.history[-1] == HistoryEntry(Status.SENDING, NOW + LEASE + 1, "attempt 2")
        # A reclaim changes no status: no callback, and the waiting message is next.
        assert [c.id for c in await store.claim(10, LEASE)] == [waiting.id]

    async def test_the_old_token_moves_nothing_once_the_lease_was_taken_over(
        self, store: Store, ids: IdGenerator, clock: Clock
    ) -> None:
        msg = await self.add(store, ids)
        old = await self.claim_one(store)
        clock.move_to(NOW + LEASE + 1)
        new = await self.claim_one(store)
        now = clock.now
        assert await store.mark_sent(old, "provider1", "p-old", [_attempt()], now) is False
        assert await store.requeue(old, now, UNAVAILABLE, "retry", (), now) is False
        assert await store.finish(old, Status.FAILED, UNAVAILABLE, "gave up", (), now) is False
        assert await store.release([old], now, "released") == 0
        got = await store.get(msg.id)
        assert got is not None
        assert (got.status, got.provider, got.provider_message_id) == (Status.SENDING, None, None)
        assert _statuses(got) == [Status.QUEUED, Status.SENDING, Status.SENDING]
        # The old holder's provider call did happen: its attempt is on record.
        assert [a.provider for a in got.attempts] == ["provider1"]
        assert await store.mark_sent(new, "provider2", "p-new", (), now) is True

    async def test_a_made_up_token_is_refused(self, store: Store, ids: IdGenerator) -> None:
        await self.add(store, ids)
        claim = await self.claim_one(store)
        assert await store.mark_sent(_stale(claim), "provider1", "p-1", (), NOW) is False
        assert await store.requeue(_stale(claim), NOW, UNAVAILABLE, "x", (), NOW) is False
        assert await store.finish(_stale(claim), Status.FAILED, UNAVAILABLE, "x", (), NOW) is False
        assert await store.release([_stale(claim)], NOW, "x") == 0
        assert await store.message_status(claim.id) is Status.SENDING

    async def test_next_wakeup_is_the_earliest_due_time_or_lease_end(
        self, store: Store, ids: IdGenerator
    ) -> None:
        assert await store.next_wakeup() is None
        await self.add(store, ids, next_attempt_at=NOW + 100)
        assert await store.next_wakeup() == NOW + 100
        await self.add(store, ids, next_attempt_at=NOW)
        await self.claim_one(store)
        assert await store.next_wakeup() == NOW + LEASE

    # -- transitions ----------------------------------------------------------------------

    async def test_mark_sent_records_the_provider_and_its_id(
        self, store: Store, ids: IdGenerator
    ) -> None:
        msg = await self.add(store, ids)
        claim = await self.claim_one(store)
        tried = [_attempt(Outcome.UNAVAILABLE), _attempt(at=NOW + 1)]
        assert await store.mark_sent(claim, "provider1", "p-1", tried, NOW + 2) is True
        got = await store.get(msg.id)
        assert got is not None
        assert (got.status, got.provider, got.provider_message_id, got.updated_at) == (
            Status.SENT,
            "provider1",
            "p-1",
            NOW + 2,
        )
        assert got.attempts == tuple(tried)
        assert got.history[-1] == HistoryEntry(Status.SENT, NOW + 2, "via provider1")
        assert await store.id_for_provider_message("p-1") == msg.id
        assert await store.id_for_provider_message("p-unknown") is None
        # The lease ended with it: the same claim cannot move the message again.
        assert await store.requeue(claim, NOW, UNAVAILABLE, "x", (), NOW) is False
        assert await store.message_status(msg.id) is Status.SENT

    async def test_requeue_puts_it_back_with_the_error_until_it_is_due(
        self, store: Store, ids: IdGenerator, clock: Clock
    ) -> None:
        msg = await self.add(store, ids)
        claim = await self.claim_one(store)
        detail = "No provider took it."
        tried = [_attempt(Outcome.UNAVAILABLE)]
        assert await store.requeue(claim, NOW + 20, UNAVAILABLE, detail, tried, NOW + 1) is True
        got = await store.get(msg.id)
        assert got is not None
        assert (got.status, got.next_attempt_at, got.error_code, got.error_detail) == (
            Status.QUEUED,
            NOW + 20,
            "providers_unavailable",
            detail,
        )
        assert got.attempts == tuple(tried)
        assert got.history[-1] == HistoryEntry(Status.QUEUED, NOW + 1, detail)
        assert await store.claim(10, LEASE) == []
        assert await store.next_wakeup() == NOW + 20
        clock.move_to(NOW + 20)
        again = await self.claim_one(store)
        assert (again.id, again.attempt) == (msg.id, 2)
        assert await store.mark_sent(again, "provider2", "p-2", (), NOW + 21) is True
        got = await store.get(msg.id)
        assert got is not None and (got.error_code, got.error_detail) == (None, None)

    async def test_release_gives_claims_back_without_an_attempt(
        self, store: Store, ids: IdGenerator
    ) -> None:
        a, b = await self.add(store, ids), await self.add(store, ids)
        claims = await store.claim(10, LEASE)
        assert await store.release([*claims, _stale(claims[0])], NOW + 5, "released") == 2
        for msg in (a, b):
            got = await store.get(msg.id)
            assert got is not None
            assert (got.status, got.next_attempt_at, got.updated_at) == (
                Status.QUEUED,
                NOW + 5,
                NOW + 5,
            )
            assert got.attempts == ()
            assert got.history[-1] == HistoryEntry(Status.QUEUED, NOW + 5, "released")
        assert await store.release(claims, NOW, "again") == 0
        assert await store.release([], NOW, "nothing") == 0

    async def test_a_report_from_another_provider_is_recorded_not_applied(
        self, store: Store, ids: IdGenerator
    ) -> None:
        msg = await self.add(store, ids)
        claim = await self.claim_one(store)
        assert await store.mark_sent(claim, "twilio", "SM1", [_attempt()], NOW) is True
        late = DeliveryReport(Status.FAILED, "p-9", "undelivered")
        result = await store.apply_report(msg.id, late, "smsc", NOW + 1)
        assert (result.found, result.applied) == (True, False)
        got = await store.get(msg.id)
        assert got is not None and got.status is Status.SENT
        assert "sent through twilio" in (got.history[-1].detail or "")
        # The provider that took it, or a report that names none, still applies.
        ok = DeliveryReport(Status.DELIVERED, "SM1", "delivered")
        assert (await store.apply_report(msg.id, ok, "twilio", NOW + 2)).applied is True
        assert await store.message_status(msg.id) is Status.DELIVERED

    async def test_expire_due_ends_queued_messages_past_their_validity_soonest_first(
        self, store: Store, ids: IdGenerator, clock: Clock
    ) -> None:
        # A claimed message past its validity is its worker's to end, not the sweep's.
        sending = await self.add(store, ids, expires_at=NOW + 1)
        claim = await self.claim_one(store)
        assert claim.id == sending.id
        soon = await self.add(store, ids, expires_at=NOW + 10, status_callback_url=HOOK)
        sooner = await self.add(store, ids, OTHER_NUMBER, expires_at=NOW + 5)
        later = await self.add(store, ids)  # expires an hour after NOW
        assert await store.expire_due(NOW + 4, 10) == []
        clock.move_to(NOW + 11)
        assert await store.expire_due(NOW + 11, 1) == [(sooner.id, OTHER_NUMBER)]
        assert await store.expire_due(NOW + 11, 10) == [(soon.id, NUMBER)]
        for m in (sooner, soon):
            got = await store.get(m.id)
            assert got is not None
            assert (got.status, got.error_code) == (Status.EXPIRED, "expired")
            assert got.history[-1].status is Status.EXPIRED
        got = await store.get(soon.id)
        assert got is not None and [c.status for c in got.callbacks][-1] is Status.EXPIRED
        assert await store.message_status(later.id) is Status.QUEUED
        assert await store.message_status(sending.id) is Status.SENDING
        assert await store.expire_due(NOW + 11, 10) == []

    async def sent(self, store: Store, ids: IdGenerator, at: float, **fields: Any) -> Message:
        """A message a provider took at `at`."""
        msg = await self.add(store, ids, **fields)
        claim = await self.claim_one(store)
        assert claim.id == msg.id
        assert await store.mark_sent(claim, "provider1", f"p-{msg.id}", [_attempt()], at)
        return msg

    async def test_time_out_reports_ends_sent_messages_unknown_longest_waiting_first(
        self, store: Store, ids: IdGenerator
    ) -> None:
        older = await self.sent(store, ids, NOW + 1, status_callback_url=HOOK)
        newer = await self.sent(store, ids, NOW + 2)
        reported = await self.sent(store, ids, NOW + 1)
        await store.apply_report(reported.id, _report(Status.DELIVERED), None, NOW + 3)
        queued = await self.add(store, ids)
        assert await store.time_out_reports(NOW + 0.5, NOW + 10, 10) == []
        assert await store.time_out_reports(NOW + 2, NOW + 10, 1) == [(older.id, NUMBER)]
        assert await store.time_out_reports(NOW + 2, NOW + 10, 10) == [(newer.id, NUMBER)]
        assert await store.time_out_reports(NOW + 2, NOW + 10, 10) == []
        got = await store.get(older.id)
        assert got is not None
        assert (got.status, got.error_code, got.updated_at) == (
            Status.UNKNOWN,
            "report_timeout",
            NOW + 10,
        )
        assert got.error_detail is not None and "unknown" in got.error_detail
        assert got.history[-1].status is Status.UNKNOWN
        assert [c.status for c in got.callbacks][-1] is Status.UNKNOWN
        assert await store.message_status(reported.id) is Status.DELIVERED
        assert await store.message_status(queued.id) is Status.QUEUED

    async def test_a_report_after_the_timeout_is_recorded_and_changes_nothing(
        self, store: Store, ids: IdGenerator
    ) -> None:
        msg = await self.sent(store, ids, NOW + 1, status_callback_url=HOOK)
        await store.time_out_reports(NOW + 1, NOW + 5, 10)
        result = await store.apply_report(msg.id, _report(Status.DELIVERED), "provider1", NOW + 9)
        assert (result.found, result.applied, result.previous) == (True, False, Status.UNKNOWN)
        got = await store.get(msg.id)
        assert got is not None and got.status is Status.UNKNOWN
        assert got.history[-1].status is Status.UNKNOWN
        assert got.history[-1].detail is not None and "'delivered'" in got.history[-1].detail
        assert [c.status for c in got.callbacks][-1] is Status.UNKNOWN, "no callback for it"

    async def test_defer_gives_the_claim_back_as_if_it_had_not_been_claimed(
        self, store: Store, ids: IdGenerator, clock: Clock
    ) -> None:
        msg = await self.add(store, ids, status_callback_url=HOOK)
        claim = await self.claim_one(store)
        assert claim.attempt == 1
        detail = "waiting for twilio, which is at its rate limit"
        assert await store.defer(claim, NOW + 7, detail) is True
        got = await store.get(msg.id)
        assert got is not None
        assert (got.status, got.attempt_count, got.next_attempt_at) == (Status.QUEUED, 0, NOW + 7)
        assert (got.error_code, got.error_detail) == (None, None)
        assert got.attempts == ()
        # Stamped like `release`: with the time it is due again.
        assert got.updated_at == NOW + 7
        assert got.history[-1] == HistoryEntry(Status.QUEUED, NOW + 7, detail)
        assert _statuses(got) == [Status.QUEUED, Status.SENDING, Status.QUEUED]
        assert [c.status for c in got.callbacks] == _statuses(got)
        # Not due before `at`; then claimed as the same first attempt.
        assert await store.claim(10, LEASE) == []
        assert await store.next_wakeup() == NOW + 7
        clock.move_to(NOW + 7)
        again = await self.claim_one(store)
        assert (again.id, again.attempt) == (msg.id, 1)
        assert again.token != claim.token
        assert await store.mark_sent(again, "twilio", "SM1", [_attempt()], NOW + 7) is True
        sent = await store.get(msg.id)
        assert sent is not None and (sent.status, sent.attempt_count) == (Status.SENT, 1)

    async def test_defer_is_fenced_by_the_lease_token(
        self, store: Store, ids: IdGenerator, clock: Clock
    ) -> None:
        msg = await self.add(store, ids)
        claim = await self.claim_one(store)
        assert await store.defer(_stale(claim), NOW + 5, "made up") is False
        assert await store.message_status(msg.id) is Status.SENDING
        assert await store.defer(claim, NOW, "deferred") is True
        assert await store.defer(claim, NOW + 5, "twice") is False, "the lease ended with it"
        # An expired lease taken over: the old holder defers nothing, the new one gives back
        # only its own attempt (the lost one was made).
        again = await self.claim_one(store)
        clock.move_to(NOW + LEASE + 1)
        newer = await self.claim_one(store)
        assert newer.attempt == 2
        assert await store.defer(again, clock.now, "late") is False
        got = await store.get(msg.id)
        assert got is not None and (got.status, got.attempt_count) == (Status.SENDING, 2)
        assert await store.defer(newer, clock.now, "rate limit") is True
        got = await store.get(msg.id)
        assert got is not None and (got.status, got.attempt_count) == (Status.QUEUED, 1)
        assert [h.detail for h in got.history if h.status is Status.QUEUED][-1] == "rate limit"
        # A final message cannot be deferred.
        final = await self.claim_one(store)
        assert await store.finish(final, Status.FAILED, UNAVAILABLE, "gave up", (), clock.now)
        assert await store.defer(final, clock.now, "x") is False
        assert await store.message_status(msg.id) is Status.FAILED

    async def test_a_claim_carries_the_messages_segments(
        self, store: Store, ids: IdGenerator, clock: Clock
    ) -> None:
        long = await self.add(store, ids, body="x" * 300, segments=2)
        short = await self.add(store, ids)
        claims = {c.id: c for c in await store.claim(10, LEASE)}
        assert (claims[long.id].segments, claims[short.id].segments) == (2, 1)
        # The other claim path too: a lapsed lease taken back.
        clock.move_to(NOW + LEASE + 1)
        again = {c.id: c for c in await store.claim(10, LEASE)}
        assert (again[long.id].segments, again[short.id].segments) == (2, 1)
        assert again[long.id].body == "x" * 300

    @pytest.mark.parametrize(
        ("status", "code"),
        [
            (Status.FAILED, ErrorCode.PROVIDER_REJECTED),
            (Status.INVALID, ErrorCode.NUMBER_SUPPRESSED),
            (Status.EXPIRED, ErrorCode.EXPIRED),
        ],
    )
    async def test_finish_ends_a_claimed_message(
        self, store: Store, ids: IdGenerator, status: Status, code: ErrorCode
    ) -> None:
        msg = await self.add(store, ids)
        claim = await self.claim_one(store)
        tried = [_attempt(Outcome.REJECTED)] if status is Status.FAILED else []
        assert await store.finish(claim, status, code, "ended", tried, NOW + 3) is True
        got = await store.get(msg.id)
        assert got is not None
        assert (got.status, got.error_code, got.error_detail, got.next_attempt_at) == (
            status,
            code.value,
            "ended",
            None,
        )
        assert got.attempts == tuple(tried)
        assert got.history[-1] == HistoryEntry(status, NOW + 3, "ended")
        assert await store.next_wakeup() is None

    async def test_an_expired_message_is_claimed_with_its_expiry_and_ended(
        self, store: Store, ids: IdGenerator, clock: Clock
    ) -> None:
        msg = await self.add(store, ids, expires_at=NOW + 60)
        clock.move_to(NOW + 61)
        claim = await self.claim_one(store)
        assert claim.expires_at == NOW + 60 < clock.now
        detail = "No provider accepted the message before it expired."
        assert await store.finish(claim, Status.EXPIRED, ErrorCode.EXPIRED, detail, (), clock.now)
        assert await store.message_status(msg.id) is Status.EXPIRED

    async def test_final_statuses_stay_final(self, store: Store, ids: IdGenerator) -> None:
        msg = await self.add(store, ids)
        claim = await self.claim_one(store)
        assert await store.finish(claim, Status.FAILED, UNAVAILABLE, "gave up", (), NOW)
        assert await store.requeue(claim, NOW, UNAVAILABLE, "again", (), NOW) is False
        assert await store.finish(claim, Status.EXPIRED, ErrorCode.EXPIRED, "x", (), NOW) is False
        assert await store.release([claim], NOW, "x") == 0
        result = await store.apply_report(msg.id, _report(Status.DELIVERED), "provider1", NOW + 1)
        assert (result.found, result.applied, result.previous) == (True, False, Status.FAILED)
        assert await store.claim(10, LEASE) == []
        got = await store.get(msg.id)
        assert got is not None and got.status is Status.FAILED
        assert got.history[-1] == HistoryEntry(
            Status.FAILED,
            NOW + 1,
            "report 'delivered' from provider1 ignored: the message is already final",
        )

    # -- delivery reports -----------------------------------------------------------------

    async def test_a_report_after_the_providers_answer_finalises_the_message(
        self, store: Store, ids: IdGenerator
    ) -> None:
        msg = await self.add(store, ids)
        claim = await self.claim_one(store)
        await store.mark_sent(claim, "provider1", "p-1", (), NOW + 1)
        result = await store.apply_report(msg.id, _report(Status.DELIVERED), "provider1", NOW + 2)
        assert (result.found, result.applied, result.previous, result.number) == (
            True,
            True,
            Status.SENT,
            NUMBER,
        )
        assert result.requeued_invalid == ()
        got = await store.get(msg.id)
        assert got is not None
        assert (got.status, got.updated_at, got.provider_message_id) == (
            Status.DELIVERED,
            NOW + 2,
            "p-1",
        )
        assert got.history[-1] == HistoryEntry(
            Status.DELIVERED, NOW + 2, "delivery report from provider1"
        )

    async def test_a_report_before_the_providers_answer_wins_and_keeps_the_provider(
        self, store: Store, ids: IdGenerator
    ) -> None:
        msg = await self.add(store, ids, status_callback_url=HOOK)
        claim = await self.claim_one(store)
        result = await store.apply_report(msg.id, _report(Status.DELIVERED), None, NOW + 1)
        assert (result.applied, result.previous) == (True, Status.SENDING)
        assert await store.mark_sent(claim, "provider1", "p-late", [_attempt()], NOW + 2) is False
        got = await store.get(msg.id)
        assert got is not None
        assert (got.status, got.provider, got.provider_message_id) == (
            Status.DELIVERED,
            "provider1",
            "p-1",  # the report's id came first and is kept
        )
        assert len(got.attempts) == 1
        assert _statuses(got) == [Status.QUEUED, Status.SENDING, Status.DELIVERED]
        assert [c.status for c in got.callbacks] == _statuses(got)
        assert got.history[-1] == HistoryEntry(Status.DELIVERED, NOW + 1, "delivery report")
        assert await store.next_wakeup() is None

    async def test_the_late_provider_answer_leaves_a_re_leased_message_alone(
        self, store: Store, ids: IdGenerator, clock: Clock
    ) -> None:
        msg = await self.add(store, ids)
        old = await self.claim_one(store)
        clock.move_to(NOW + LEASE + 1)
        await self.claim_one(store)
        assert await store.mark_sent(old, "provider1", "p-old", (), clock.now) is False
        got = await store.get(msg.id)
        assert got is not None
        assert (got.status, got.provider, got.provider_message_id) == (Status.SENDING, None, None)
        assert await store.id_for_provider_message("p-old") is None

    async def test_duplicate_and_conflicting_reports_change_nothing(
        self, store: Store, ids: IdGenerator
    ) -> None:
        msg = await self.add(store, ids)
        claim = await self.claim_one(store)
        await store.mark_sent(claim, "provider1", "p-1", (), NOW)
        first = await store.apply_report(msg.id, _report(Status.DELIVERED), "provider1", NOW + 1)
        again = await store.apply_report(msg.id, _report(Status.DELIVERED), "provider1", NOW + 2)
        other = await store.apply_report(msg.id, _report(Status.FAILED), None, NOW + 3)
        assert first.applied and not again.applied and not other.applied
        assert (again.previous, other.previous, other.number) == (
            Status.DELIVERED,
            Status.DELIVERED,
            NUMBER,
        )
        got = await store.get(msg.id)
        assert got is not None
        assert (got.status, got.error_code, got.updated_at) == (Status.DELIVERED, None, NOW + 1)
        assert [h.detail for h in got.history[-2:]] == [
            "report 'delivered' from provider1 ignored: the message is already final",
            "report 'failed' ignored: the message is already final",
        ]
        assert _statuses(got)[-3:] == [Status.DELIVERED] * 3

    async def test_a_failed_report_records_why(self, store: Store, ids: IdGenerator) -> None:
        msg = await self.add(store, ids)
        claim = await self.claim_one(store)
        await store.mark_sent(claim, "provider1", "p-1", (), NOW)
        result = await store.apply_report(msg.id, _report(Status.FAILED), "provider1", NOW + 1)
        assert result.applied and result.requeued_invalid == ()
        got = await store.get(msg.id)
        assert got is not None
        assert (got.status, got.error_code, got.error_detail) == (
            Status.FAILED,
            "reported_failed",
            "The provider reported the message as not delivered.",
        )
        assert await store.suppressed_numbers() == set()

    async def test_a_report_for_an_unknown_message_is_not_found(self, store: Store) -> None:
        result = await store.apply_report("no-such-id", _report(Status.DELIVERED), None, NOW)
        assert (result.found, result.applied, result.previous) == (False, False, None)

    async def test_a_reports_detail_goes_into_the_history_line(
        self, store: Store, ids: IdGenerator
    ) -> None:
        msg = await self.add(store, ids)
        claim = await self.claim_one(store)
        await store.mark_sent(claim, "twilio", "SM1", (), NOW)
        failed = DeliveryReport(Status.FAILED, "SM1", "undelivered, error 30003")
        result = await store.apply_report(msg.id, failed, "twilio", NOW + 1)
        assert result.applied
        got = await store.get(msg.id)
        assert got is not None
        assert got.history[-1] == HistoryEntry(
            Status.FAILED, NOW + 1, "delivery report from twilio: undelivered, error 30003"
        )
        # The message's own error stays dispatchd's: the raw words are the history's.
        assert (got.error_code, got.error_detail) == (
            "reported_failed",
            "The provider reported the message as not delivered.",
        )
        # On a final message the detail is kept in the line that records it was ignored.
        late = DeliveryReport(Status.DELIVERED, "SM1", "delivered")
        assert not (await store.apply_report(msg.id, late, "twilio", NOW + 2)).applied
        history = await store.message_history(msg.id)
        assert history[-1].status is Status.FAILED
        assert history[-1].at == NOW + 2
        assert "from twilio: delivered" in (history[-1].detail or "")
        assert "ignored" in (history[-1].detail or "")
        # Without a provider, the detail alone.
        other = await self.add(store, ids)
        delivered = DeliveryReport(Status.DELIVERED, "p-9", "DELIVRD")
        await store.apply_report(other.id, delivered, None, NOW + 3)
        [*_, last] = await store.message_history(other.id)
        assert last == HistoryEntry(Status.DELIVERED, NOW + 3, "delivery report: DELIVRD")

    async def test_id_for_provider_message_is_scoped_to_the_providers_messages(
        self, store: Store, ids: IdGenerator
    ) -> None:
        # Two providers that number their messages alike (two SMSCs, say) both say "0001".
        a, b = await self.add(store, ids), await self.add(store, ids)
        claims = {c.id: c for c in await store.claim(10, LEASE)}
        await store.mark_sent(claims[a.id], "smsc-a", "0001", (), NOW)
        await store.mark_sent(claims[b.id], "smsc-b", "0001", (), NOW)
        assert await store.id_for_provider_message("0001", "smsc-a") == a.id
        assert await store.id_for_provider_message("0001", "smsc-b") == b.id
        assert await store.id_for_provider_message("0001", "twilio") is None
        assert await store.id_for_provider_message("0002", "smsc-a") is None
        assert await store.id_for_provider_message("0001") in {a.id, b.id}
        # A report that came before the provider's answer left its id; the late answer
        # names the provider, so the scoped lookup finds it.
        early = await self.add(store, ids)
        claim = await self.claim_one(store)
        await store.apply_report(early.id, _report(Status.DELIVERED, "SM7"), "twilio", NOW + 1)
        assert await store.mark_sent(claim, "twilio", "SM7", [_attempt()], NOW + 2) is False
        assert await store.id_for_provider_message("SM7", "twilio") == early.id
        assert await store.id_for_provider_message("SM7", "smsc-a") is None

    async def test_an_id_the_provider_uses_again_finds_its_newest_message(
        self, store: Store, ids: IdGenerator
    ) -> None:
        # An SMSC numbers its messages from the start again after a restart.
        old = await self.add(store, ids)
        await store.mark_sent(await self.claim_one(store), "smsc", "a0000001", (), NOW)
        await store.apply_report(old.id, _report(Status.DELIVERED, "a0000001"), "smsc", NOW)
        new = await self.add(store, ids)
        await store.mark_sent(await self.claim_one(store), "smsc", "a0000001", (), NOW + 1)
        assert await store.id_for_provider_message("a0000001", "smsc") == new.id

    # -- suppression ----------------------------------------------------------------------

    async def test_an_invalid_report_suppresses_the_number_and_ends_its_queued_messages(
        self, store: Store, ids: IdGenerator
    ) -> None:
        reported = await self.add(store, ids)
        in_flight = await self.add(store, ids)
        claims = await store.claim(10, LEASE)
        queued = [await self.add(store, ids), await self.add(store, ids, next_attempt_at=NOW + 9)]
        elsewhere = await self.add(store, ids, OTHER_NUMBER)
        mine = next(c for c in claims if c.id == reported.id)
        await store.mark_sent(mine, "provider1", "p-1", (), NOW)
        result = await store.apply_report(reported.id, _report(Status.INVALID), "provider1", NOW)
        assert (result.applied, result.number) == (True, NUMBER)
        assert result.requeued_invalid == tuple(sorted(m.id for m in queued))
        assert await store.suppressed_numbers() == {NUMBER}
        got = await store.get(reported.id)
        assert got is not None
        assert (got.status, got.error_code) == (Status.INVALID, "reported_invalid")
        detail = "The number was reported invalid; the message was not sent."
        for msg in queued:
            ended = await store.get(msg.id)
            assert ended is not None
            assert (ended.status, ended.error_code, ended.error_detail) == (
                Status.INVALID,
                "number_suppressed",
                detail,
            )
            assert ended.history[-1] == HistoryEntry(Status.INVALID, NOW, detail)
        # The message being sent finishes as its sender decides; other numbers are untouched.
        assert await store.message_status(in_flight.id) is Status.SENDING
        assert await store.message_status(elsewhere.id) is Status.QUEUED

    async def test_a_suppression_can_be_lifted_once(self, store: Store, ids: IdGenerator) -> None:
        msg = await self.add(store, ids)
        await store.apply_report(msg.id, _report(Status.INVALID), None, NOW)
        assert await store.suppressed_numbers() == {NUMBER}
        assert await store.lift_suppression(NUMBER) is True
        assert await store.lift_suppression(NUMBER) is False
        assert await store.suppressed_numbers() == set()

    async def test_suppress_ends_the_numbers_queued_messages_and_returns_them(
        self, store: Store, ids: IdGenerator
    ) -> None:
        refused = await self.add(store, ids)  # the one the provider refused: being sent
        sent = await self.add(store, ids)
        claims = {c.id: c for c in await store.claim(10, LEASE)}
        await store.mark_sent(claims[sent.id], "provider1", "p-1", (), NOW)
        queued = [
            await self.add(store, ids, status_callback_url=HOOK),
            await self.add(store, ids, next_attempt_at=NOW + 60),
        ]
        elsewhere = await self.add(store, ids, OTHER_NUMBER)
        also = await store.suppress(NUMBER, NOW + 1, f"refused by twilio for {refused.id}")
        assert also == tuple(sorted(m.id for m in queued))
        assert await store.suppressed_numbers() == {NUMBER}
        detail = "The number was reported invalid; the message was not sent."
        for msg in queued:
            ended = await store.get(msg.id)
            assert ended is not None
            assert (ended.status, ended.error_code, ended.error_detail) == (
                Status.INVALID,
                "number_suppressed",
                detail,
            )
            assert (ended.next_attempt_at, ended.updated_at) == (None, NOW + 1)
            assert ended.history[-1] == HistoryEntry(Status.INVALID, NOW + 1, detail)
        with_hook = await store.get(queued[0].id)
        assert with_hook is not None
        assert [c.status for c in with_hook.callbacks] == [Status.QUEUED, Status.INVALID]
        # What is being sent, or was sent, finishes as its sender or report decides.
        assert await store.message_status(refused.id) is Status.SENDING
        assert await store.message_status(sent.id) is Status.SENT
        assert await store.message_status(elsewhere.id) is Status.QUEUED
        # Again: already suppressed, nothing left queued.
        assert await store.suppress(NUMBER, NOW + 2, "again") == ()
        assert await store.suppressed_numbers() == {NUMBER}
        assert await store.suppress(OTHER_NUMBER, NOW + 3, "x") == (elsewhere.id,)
        assert await store.suppressed_numbers() == {NUMBER, OTHER_NUMBER}
        assert await store.next_wakeup() == NOW + LEASE, "only the lease is left to wake for"
        assert await store.lift_suppression(NUMBER) is True
        assert await store.suppressed_numbers() == {OTHER_NUMBER}

    async def test_suppressing_a_number_with_no_messages(self, store: Store) -> None:
        assert await store.suppress(NUMBER, NOW, "refused by twilio") == ()
        assert await store.suppressed_numbers() == {NUMBER}

    # -- idempotency keys -----------------------------------------------------------------

    async def test_a_saved_response_commits_with_its_messages_and_expires(
        self, store: Store, ids: IdGenerator
    ) -> None:
        saved = SavedResponse(
            "key-1", "k", "hash", 202, '{"id": "x"}', "/messages/x", NOW, NOW + 60
        )
        msgs = [queued_message(ids.new()), queued_message(ids.new())]
        await store.insert(msgs, "accepted", saved)
        assert await store.counts() == {"queued": 2}
        assert await store.find_saved_response("key-1", "k", NOW + 59) == saved
        assert await store.find_saved_response("key-2", "k", NOW) is None, "keys are per scope"
        assert await store.find_saved_response("key-1", "k", NOW + 60) is None, "expired"

    async def test_purge_deletes_expired_keys_in_batches(self, store: Store) -> None:
        for i in range(5):
            expires = NOW + i if i < 4 else NOW + 3600
            saved = SavedResponse("", f"k{i}", "h", 202, "{}", None, NOW - 10, expires)
            await store.insert([], "", saved)
        assert await store.purge_saved_responses(NOW + 3, 3) == 3
        assert await store.purge_saved_responses(NOW + 3, 3) == 1
        assert await store.purge_saved_responses(NOW + 3, 3) == 0
        assert await store.find_saved_response("", "k4", NOW + 3) is not None
        assert await store.find_saved_response("", "k0", NOW - 5) is None, "purged"

    # -- retention ------------------------------------------------------------------------

    async def test_purge_deletes_messages_that_ended_before_the_cutoff_with_their_rows(
        self, store: Store, ids: IdGenerator
    ) -> None:
        first = await self.sent(store, ids, NOW + 1, status_callback_url=HOOK)
        await store.apply_report(first.id, _report(Status.DELIVERED), None, NOW + 2)
        second = await self.sent(store, ids, NOW + 1)
        await store.apply_report(second.id, _report(Status.INVALID), None, NOW + 3)
        recent = await self.sent(store, ids, NOW + 1)
        await store.apply_report(recent.id, _report(Status.FAILED), None, NOW + 50)
        waiting = await self.sent(store, ids, NOW + 1)  # sent, not final: never purged
        queued = await self.add(store, ids)
        for webhook in await store.due_webhooks(NOW + 100, 100, []):
            await self.settle(store, webhook.id, "delivered", finished_at=NOW + 4)
        while due := await store.due_webhooks(NOW + 100, 100, []):
            for webhook in due:
                await self.settle(store, webhook.id, "delivered", finished_at=NOW + 4)

        purged = await store.purge_finished(NOW + 10, 1)
        # queued, sending, sent, delivered: a history row and a callback each; one attempt.
        assert purged == Purged(messages=1, attempts=1, history=4, callbacks=4)
        assert await store.get(first.id) is None
        assert await store.purge_finished(NOW + 10, 10) == Purged(1, 1, 4, 0)
        assert await store.purge_finished(NOW + 10, 10) == Purged()
        assert await store.get(second.id) is None
        assert await store.message_history(second.id) == ()
        for kept in (recent, waiting, queued):
            assert await store.get(kept.id) is not None
        assert [
            m.id for m in await store.search(to_number=None, status=None, limit=10, cursor=None)
        ] == [queued.id, waiting.id, recent.id]
        assert await store.id_for_provider_message(f"p-{first.id}") is None
        # Suppressions are kept: the invalid report's number stays refused.
        assert NUMBER in await store.suppressed_numbers()
        assert (await store.counts()).get("delivered", 0) == 0
        assert await store.reclaim_space(1000) >= 0

    async def test_purge_keeps_a_message_while_its_callbacks_are_pending(
        self, store: Store, ids: IdGenerator
    ) -> None:
        msg = await self.sent(store, ids, NOW + 1, status_callback_url=HOOK)
        await store.apply_report(msg.id, _report(Status.DELIVERED), None, NOW + 2)
        assert await store.purge_finished(NOW + 10, 10) == Purged()
        while due := await store.due_webhooks(NOW + 100, 100, []):
            for webhook in due:
                await self.settle(store, webhook.id, "failed", finished_at=NOW + 4)
        assert (await store.purge_finished(NOW + 10, 10)).messages == 1
        assert await store.due_webhooks(NOW + 100, 100, []) == []

    # -- the status callback outbox --------------------------------------------------------

    async def test_every_status_change_queues_one_callback_in_order(
        self, store: Store, ids: IdGenerator
    ) -> None:
        msg = await self.add(store, ids, status_callback_url=HOOK)
        plain = await self.add(store, ids)
        claims = {c.id: c for c in await store.claim(10, LEASE)}
        await store.requeue(claims[msg.id], NOW, UNAVAILABLE, "retry", (), NOW + 1)
        again = await self.claim_one(store)
        await store.mark_sent(again, "provider1", "p-1", (), NOW + 2)
        await store.apply_report(msg.id, _report(Status.DELIVERED), None, NOW + 3)
        got = await store.get(msg.id)
        assert got is not None
        statuses = [Status.QUEUED, Status.SENDING, Status.QUEUED, Status.SENDING, Status.SENT]
        assert [c.status for c in got.callbacks] == [*statuses, Status.DELIVERED]
        assert [c.created_at for c in got.callbacks] == [NOW, NOW, NOW + 1, NOW, NOW + 2, NOW + 3]
        assert all(
            (c.url, c.state, c.attempts, c.last_http_status, c.last_error, c.finished_at)
            == (HOOK, "pending", 0, None, None, None)
            for c in got.callbacks
        )
        no_url = await store.get(plain.id)
        assert no_url is not None and no_url.callbacks == ()

    async def test_a_callback_body_is_rendered_once_exactly(
        self, store: Store, ids: IdGenerator
    ) -> None:
        msg = await self.add(store, ids, status_callback_url=HOOK)
        claim = await self.claim_one(store)
        detail = 'No "provider" took it:\nretry — later\x01'
        await store.requeue(claim, NOW + 9, UNAVAILABLE, detail, (), NOW + 0.2506)
        queued = "2027-01-15T08:00:00.000Z"
        assert [(w.id, w.status, w.payload) for w in await store.due_webhooks(NOW, 10, [])] == [
            (
                1,
                "queued",
                f'{{"id":"{msg.id}","status":"queued","to_number":"{NUMBER}",'
                f'"provider":null,"error":null,"at":"{queued}"}}',
            )
        ]
        for webhook_id in (1, 2):  # the first `queued` and the `sending` one
            await self.settle(store, webhook_id, "delivered", finished_at=NOW)
        [requeued] = await store.due_webhooks(NOW + 1, 10, [])
        assert requeued.payload == (
            f'{{"id":"{msg.id}","status":"queued","to_number":"{NUMBER}","provider":null,'
            '"error":{"code":"providers_unavailable",'
            '"detail":"No \\"provider\\" took it:\\nretry — later\\u0001"},'
            '"at":"2027-01-15T08:00:00.251Z"}'
        )

    async def test_only_the_head_callback_of_a_message_is_due(
        self, store: Store, ids: IdGenerator, clock: Clock
    ) -> None:
        a = await self.add(store, ids, status_callback_url=HOOK)
        b = await self.add(store, ids, status_callback_url=HOOK)
        await store.claim(10, LEASE)  # a `sending` callback each, behind its `queued` one
        due = await store.due_webhooks(NOW, 10, [])
        assert [(w.message_id, w.status, w.attempts) for w in due] == [
            (a.id, "queued", 0),
            (b.id, "queued", 0),
        ]
        assert [w.url for w in due] == [HOOK, HOOK]
        assert [w.message_id for w in await store.due_webhooks(NOW, 1, [])] == [a.id]
        assert [w.message_id for w in await store.due_webhooks(NOW, 10, [due[0].id])] == [b.id]
        assert await store.due_webhooks(NOW - 1, 10, []) == []

        # A retry: still pending, due again after its backoff; the ones behind it wait.
        assert await self.settle(
            store, due[0].id, "pending", next_attempt_at=NOW + 50, http_status=500, error="500"
        )
        assert [w.message_id for w in await store.due_webhooks(NOW + 49, 10, [])] == [b.id]
        assert await store.next_webhook_retry(NOW) == NOW + 50
        assert await store.next_webhook_retry(NOW + 50) is None
        [retry] = [w for w in await store.due_webhooks(NOW + 50, 10, []) if w.message_id == a.id]
        assert (retry.id, retry.status, retry.attempts) == (due[0].id, "queued", 1)

        # Settled for good: the message's next callback is due at once.
        assert await self.settle(
            store, retry.id, "failed", http_status=500, error="given up", finished_at=NOW + 51
        )
        next_a = [w for w in await store.due_webhooks(NOW + 51, 10, []) if w.message_id == a.id]
        assert [(w.status, w.attempts) for w in next_a] == [("sending", 0)]
        assert await store.due_webhooks(NOW + 50.5, 10, [due[1].id]) == [], "due at NOW + 51"
        got = await store.get(a.id)
        assert got is not None
        first = got.callbacks[0]
        assert (first.state, first.attempts, first.last_http_status, first.last_error) == (
            "failed",
            2,
            500,
            "given up",
        )
        assert first.finished_at == NOW + 51
        # Nothing reopens a settled callback.
        assert not await self.settle(store, retry.id, "delivered", finished_at=NOW + 52)

    async def test_settling_without_a_finish_time_promotes_on_the_store_clock(
        self, store: Store, ids: IdGenerator, clock: Clock
    ) -> None:
        msg = await self.add(store, ids, status_callback_url=HOOK)
        await store.claim(1, LEASE)
        [head] = await store.due_webhooks(NOW, 10, [])
        clock.move_to(NOW + 40)
        assert await self.settle(store, head.id, "delivered", http_status=204)
        assert await store.due_webhooks(NOW + 39, 10, []) == []
        [following] = await store.due_webhooks(NOW + 40, 10, [])
        assert (following.message_id, following.status) == (msg.id, "sending")
        assert not await self.settle(store, 99_999, "delivered", finished_at=NOW)

    # -- per-recipient ordering --------------------------------------------------------------

    async def test_ordered_claims_take_only_the_oldest_unfinished_message_of_a_number(
        self, open_store: Callable[..., Awaitable[Store]], ids: IdGenerator
    ) -> None:
        store = await open_store(ordered=True)
        a1, a2, a3 = [await self.add(store, ids) for _ in range(3)]
        b1 = await self.add(store, ids, OTHER_NUMBER)
        claims = {c.id: c for c in await store.claim(100, LEASE)}
        assert set(claims) == {a1.id, b1.id}
        assert await store.claim(100, LEASE) == [], "a2 waits while a1 is sending"
        await store.requeue(claims[a1.id], NOW, UNAVAILABLE, "retry", (), NOW)
        [again] = await store.claim(100, LEASE)
        assert again.id == a1.id, "a requeued message is still ahead of the later ones"
        await store.mark_sent(again, "provider1", "p-1", (), NOW)
        [second] = await store.claim(100, LEASE)
        assert second.id == a2.id
        await store.finish(second, Status.FAILED, UNAVAILABLE, "gave up", (), NOW)
        assert [c.id for c in await store.claim(100, LEASE)] == [a3.id]

    async def test_ordered_a_scheduled_message_holds_back_later_ones(
        self, open_store: Callable[..., Awaitable[Store]], ids: IdGenerator, clock: Clock
    ) -> None:
        store = await open_store(ordered=True)
        a1 = await self.add(store, ids, next_attempt_at=NOW + 100)
        a2 = await self.add(store, ids)
        b1 = await self.add(store, ids, OTHER_NUMBER)
        [first] = await store.claim(100, LEASE)
        assert first.id == b1.id
        await store.mark_sent(first, "provider1", "p-0", (), NOW)
        assert await store.next_wakeup() == NOW + 100, "not for a2, which must wait"
        clock.move_to(NOW + 100)
        [scheduled] = await store.claim(100, LEASE)
        assert scheduled.id == a1.id
        await store.mark_sent(scheduled, "provider1", "p-1", (), NOW + 100)
        assert [c.id for c in await store.claim(100, LEASE)] == [a2.id]

    async def test_ordered_a_lapsed_lease_comes_back_without_letting_the_next_pass(
        self, open_store: Callable[..., Awaitable[Store]], ids: IdGenerator, clock: Clock
    ) -> None:
        store = await open_store(ordered=True)
        a1 = await self.add(store, ids)
        await self.add(store, ids)
        await store.claim(100, LEASE)
        assert await store.next_wakeup() == NOW + LEASE
        clock.move_to(NOW + LEASE + 1)
        claims = await store.claim(100, LEASE)
        assert [(c.id, c.attempt) for c in claims] == [(a1.id, 2)]

    async def test_unordered_claims_take_every_due_message(
        self, store: Store, ids: IdGenerator
    ) -> None:
        msgs = {(await self.add(store, ids)).id for _ in range(3)}
        msgs.add((await self.add(store, ids, OTHER_NUMBER)).id)
        assert {c.id for c in await store.claim(100, LEASE)} == msgs
        await self.add(store, ids)
        assert await store.next_wakeup() == NOW

    # -- search, counts and the console -------------------------------------------------

    async def test_search_pages_newest_first_with_filters(
        self, store: Store, ids: IdGenerator
    ) -> None:
        mine = [await self.add(store, ids) for _ in range(5)]
        other = [await self.add(store, ids, OTHER_NUMBER) for _ in range(2)]
        claims = {c.id: c for c in await store.claim(100, LEASE)}
        await store.mark_sent(claims[mine[1].id], "provider1", "p-1", (), NOW)
        await store.mark_sent(claims[other[0].id], "provider1", "p-2", (), NOW)

        async def page(cursor: str | None, **filters: Any) -> list[str]:
            args: dict[str, Any] = {"to_number": None, "status": None, **filters}
            found = await store.search(limit=3, cursor=cursor, **args)
            return [m.id for m in found]

        everything = [m.id for m in reversed(mine + other)]
        assert await page(None) == everything[:3]
        assert await page(everything[2]) == everything[3:6]
        assert await page(everything[5]) == everything[6:]
        assert await page(everything[-1]) == []
        assert await page(None, to_number=OTHER_NUMBER) == [m.id for m in reversed(other)]
        newest_first = [m.id for m in reversed(mine)]
        assert await page(newest_first[0], to_number=NUMBER) == newest_first[1:4]
        assert await page(None, status=Status.SENT) == [other[0].id, mine[1].id]
        assert await page(None, to_number=NUMBER, status=Status.SENT) == [mine[1].id]
        assert await page(None, to_number="+15550000000") == []
        [found] = await store.search(to_number=None, status=Status.SENT, limit=1, cursor=None)
        assert (found.status, found.provider, found.provider_message_id) == (
            Status.SENT,
            "provider1",
            "p-2",
        )

    async def test_counts_and_queue_stats(
        self, store: Store, ids: IdGenerator, clock: Clock
    ) -> None:
        empty = await store.queue_stats()
        assert (empty.counts, empty.oldest_queued_at, empty.waiting_retry) == ({}, None, 0)
        first = await self.add(store, ids, at=NOW - 30)
        await self.add(store, ids, at=NOW - 20)
        third = await self.add(store, ids, at=NOW - 10)
        claims = {c.id: c for c in await store.claim(100, LEASE)}
        await store.requeue(claims[first.id], NOW + 5, UNAVAILABLE, "retry", (), NOW)
        await store.mark_sent(claims[third.id], "provider1", "p-3", (), NOW)
        assert await store.counts() == {"queued": 1, "sending": 1, "sent": 1}
        stats = await store.queue_stats()
        assert stats.counts == {"queued": 1, "sending": 1, "sent": 1}
        assert (stats.oldest_queued_at, stats.waiting_retry) == (NOW - 30, 1)

    async def test_a_note_joins_the_history_and_keeps_the_status(
        self, store: Store, ids: IdGenerator
    ) -> None:
        msg = await self.add(store, ids)
        assert await store.add_note(msg.id, "retried by an operator", NOW + 4) is True
        assert await store.add_note("no-such-id", "x", NOW) is False
        history = await store.message_history(msg.id)
        assert history == (
            HistoryEntry(Status.QUEUED, NOW, "accepted"),
            HistoryEntry(Status.QUEUED, NOW + 4, "retried by an operator"),
        )
        assert await store.message_status(msg.id) is Status.QUEUED
