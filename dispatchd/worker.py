"""The delivery worker: claims due messages from the outbox and hands them to providers.

It is woken by events on the bus (a message accepted or retried, a provider resumed or
reweighted, a circuit half-opening or closing) and by its own deliveries ending; a timer
only covers work due later (a retry's backoff, a `send_at`, a cooldown's end).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from dispatchd.domain import retry, routing
from dispatchd.domain.errors import StoreError
from dispatchd.domain.models import Attempt, ErrorCode, Outcome, Status
from dispatchd.events import Event, EventBus
from dispatchd.health import HealthChange, HealthRegistry, Permit, announce
from dispatchd.providers.base import (
    Accepted,
    Call,
    Connector,
    InvalidNumber,
    Submission,
    Throttled,
    Unavailable,
)
from dispatchd.store.api import Claimed, Store
from dispatchd.tasks import TaskPool

logger = logging.getLogger(__name__)

# Claims are batched to amortise the transaction; bigger batches only add latency.
MAX_CLAIM = 256
# Messages out of time (past their validity, or their report overdue) are ended this often
# (seconds), in batches of this many: on time even while no provider can be tried.
SWEEP_INTERVAL = 1.0
SWEEP_BATCH = 500
# Events that may make work claimable now: new messages, or more provider capacity.
WAKE_EVENTS = frozenset(
    {
        "accepted",
        "message_retried",
        "provider_resumed",
        "provider_weight",
        "breaker_half_open",
        "breaker_closed",
    }
)


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    concurrency: int
    lease: float
    policy: retry.RetryPolicy
    report_timeout: float = 0.0  # seconds a sent message waits for its report; 0: forever


class Worker:
    """Drains the outbox: at most `concurrency` messages in flight, woken by bus events."""

    def __init__(
        self,
        store: Store,
        connectors: Mapping[str, Connector],
        settings: WorkerSettings,
        *,
        report_url: Callable[[str, str], str],
        is_suppressed: Callable[[str], bool],
        clock: Callable[[], float],
        rng: random.Random,
        health: HealthRegistry,
        events: EventBus,
    ) -> None:
        self._store = store
        self._connectors = dict(connectors)
        # Routing reads candidates from here on every attempt, so operator changes apply at once.
        self._health = health
        self._events = events
        self._settings = settings
        self._report_url = report_url
        self._is_suppressed = is_suppressed
        self._clock = clock
        self._rng = rng
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._run_ended = asyncio.Event()
        # A delivery ending frees a slot: look for more work.
        self._pool: TaskPool[Claimed] = TaskPool(
            "delivery", settings.concurrency, on_done=self.wake
        )
        # Claimed by a read that returned after stop(): handed back with the cut-short ones.
        self._unstarted: list[Claimed] = []
        self.running = False
        events.add_listener(self._on_event)

    @property
    def in_flight(self) -> int:
        return len(self._pool)

    def wake(self) -> None:
        """Work may be due now: claim without waiting for the timer."""
        self._wake.set()

    def _on_event(self, event: Event) -> None:
        if event.type in WAKE_EVENTS:
            self._wake.set()

    async def run(self) -> None:
        """Claim and deliver until stopped."""
        self.running = True
        self._run_ended.clear()
        try:
            while not self._stopping.is_set():
                # Cleared before claiming so a wake during the claim is not lost.
                self._wake.clear()
                self._announce(self._health.tick())
                free = self._pool.free
                claimed = await self._claim(free) if free > 0 else []
                if self._stopping.is_set():
                    self._unstarted += claimed  # stop() is collecting: start no more
                    break
                for item in claimed:
                    self._start(item)
                if claimed:
                    # The new deliveries take their probe slots (if any) before capacity is
                    # asked again, so a half-open circuit is not offered twice.
                    await asyncio.sleep(0)
                if free > 0 and len(claimed) == min(free, MAX_CLAIM):
                    continue  # there may be more due right now
                # With every provider paused or every circuit open nothing is claimed: wait
                # for a wake (resume, a probe finishing) or the end of the next cooldown.
                await self._sleep_until_due(busy=free <= 0 or not self._health.routable())
        finally:
            self.running = False
            self._run_ended.set()

    async def sweep_loop(self, interval: float = SWEEP_INTERVAL) -> None:
        """Every `interval` seconds until cancelled, end what ran out of time whatever the
        providers' state: queued messages past their validity (with every circuit open
        nothing is claimed, and an OTP must not wait for a cooldown to be reported expired)
        and sent messages whose report did not come within `report_timeout`."""
        while True:
            await asyncio.sleep(interval)
            await self.expire_due()
            await self.time_out_reports()

    async def expire_due(self) -> int:
        """End every queued message past its validity now; how many were ended."""
        return await self._sweep("expired", ErrorCode.EXPIRED, self._store.expire_due)

    async def time_out_reports(self) -> int:
        """End `unknown` every sent message whose report is overdue; how many were ended."""
        timeout = self._settings.report_timeout
        if timeout <= 0:
            return 0

        def sweep(now: float, limit: int) -> Awaitable[list[tuple[str, str]]]:
            return self._store.time_out_reports(now - timeout, now, limit)

        return await self._sweep("unknown", ErrorCode.REPORT_TIMEOUT, sweep)

    async def _sweep(
        self,
        status: str,
        code: ErrorCode,
        end: Callable[[float, int], Awaitable[list[tuple[str, str]]]],
    ) -> int:
        total = 0
        while True:
            try:
                ended = await end(self._clock(), SWEEP_BATCH)
            except StoreError as exc:
                logger.warning("event=sweep_failed status=%s error=%r", status, exc.message)
                return total
            for msg_id, number in ended:
                logger.info("event=%s id=%s", status, msg_id)
                self._events.publish(status, {"id": msg_id, "number": number, "code": code.value})
            total += len(ended)
            if len(ended) < SWEEP_BATCH:
                return total
            await asyncio.sleep(0)  # let accepts in between batches

    async def _claim(self, free: int) -> list[Claimed]:
        capacity = self._health.capacity()
        if capacity == 0:
            return []  # messages wait, unharmed, until a provider is resumed or probed
        # With only half-open circuits, claim as many (oldest first) as there are probe slots.
        limit = min(free, MAX_CLAIM) if capacity is None else min(free, MAX_CLAIM, capacity)
        try:
            claimed = await self._store.claim(limit, self._settings.lease)
        except StoreError as exc:
            logger.warning("event=claim_failed error=%r", exc.message)
            return []
        if claimed:
            # queued -> sending: too frequent for consoles, but watchers and callbacks care.
            self._events.publish("claimed", {"ids": [c.id for c in claimed]}, local=True)
        return claimed

    async def _sleep_until_due(self, *, busy: bool) -> None:
        timeout = 1.0  # re-check at least this often, e.g. after store errors
        if not busy:
            try:
                due = await self._store.next_wakeup()
            except StoreError:
                due = None
            if due is not None:
                timeout = max(0.0, min(timeout, due - self._clock()))
        cooled = self._health.next_change_at()  # an open circuit will take a probe then
        if cooled is not None:
            timeout = max(0.0, min(timeout, cooled - self._clock()))
        if timeout == 0:
            return
        waiters = [
            asyncio.create_task(self._wake.wait(), name="worker-wake"),
            asyncio.create_task(self._stopping.wait(), name="worker-stop"),
        ]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    def _start(self, item: Claimed) -> None:
        self._pool.spawn(item, self._deliver_safely(item), name=f"deliver-{item.id}")

    async def drain(self) -> None:
        """Deliver everything due now and wait for it (tests drive the worker this way)."""
        while True:
            free = self._pool.free
            claimed = await self._claim(free) if free > 0 else []
            for item in claimed:
                self._start(item)
            if self._pool:
                await self._pool.wait()
            elif not claimed:
                return

    async def stop(self, grace: float) -> list[Claimed]:
        """Stop claiming; let in-flight deliveries finish for up to `grace` seconds.

        Returns the claims cut short, so their leases can be released.
        """
        self._stopping.set()
        if self.running:
            await self._run_ended.wait()  # a claim in progress ends first
        cut = await self._pool.stop(grace)
        if cut:
            logger.warning("event=deliveries_abandoned count=%d", len(cut))
        unstarted, self._unstarted = self._unstarted, []
        return [*unstarted, *cut]

    def update_connectors(self, connectors: Mapping[str, Connector]) -> None:
        """Call through these from the next call on (a reload's new URLs and timeouts)."""
        self._connectors = dict(connectors)

    async def _deliver_safely(self, item: Claimed) -> None:
        try:
            await self.deliver(item)
        except Exception as exc:
            # A bug or a store failure must not strand the message until its lease ends.
            logger.exception("event=delivery_crashed id=%s", item.id)
            now = self._clock()
            policy = self._settings.policy
            with contextlib.suppress(StoreError):
                if item.attempt >= policy.max_attempts:
                    await self._store.finish(
                        item,
                        Status.FAILED,
                        ErrorCode.PROVIDERS_UNAVAILABLE,
                        f"Delivery failed inside dispatchd: {type(exc).__name__}.",
                        (),
                        now,
                    )
                else:
                    at = now + retry.backoff(item.attempt, policy, self._rng)
                    await self._store.release([item], at, "requeued after an internal error")
            self._moved(item)

    async def deliver(self, item: Claimed) -> None:
        """One attempt: try providers in routing order until one accepts."""
        now = self._clock()
        if now >= item.expires_at:
            await self._store.finish(
                item,
                Status.EXPIRED,
                ErrorCode.EXPIRED,
                "No provider accepted the message before it expired.",
                (),
                now,
            )
            logger.info("event=expired id=%s", item.id)
            self._publish("expired", item, code=ErrorCode.EXPIRED.value)
            return
        if self._is_suppressed(item.to_number):
            await self._store.finish(
                item,
                Status.INVALID,
                ErrorCode.NUMBER_SUPPRESSED,
                "The number was reported invalid; the message was not sent.",
                (),
                now,
            )
            self._publish("invalid", item, code=ErrorCode.NUMBER_SUPPRESSED.value)
            return
        await self._attempt(item, now)

    async def _attempt(self, item: Claimed, now: float) -> None:
        """Try providers in routing order until one accepts; skip those whose circuit says no.

        A provider routing picks first that is at its rate limit, or held by a throttle
        answer, keeps the message: it waits for that provider rather than moving the load
        onto another's limits, and the wait uses up no attempt.
        """
        attempts: list[Attempt] = []
        errors: list[str] = []
        unavailable = skipped = False
        failed: tuple[str, str] | None = None  # the provider that just failed, and why
        for name in routing.plan(self._health.candidates(), self._rng):
            connector = self._connectors.get(name)
            if connector is None:
                skipped = True
                continue
            if self._health.hold(name, item.segments) > 0:
                if not attempts:
                    at = self._health.book(name, item.segments)
                    await self._wait_for(item, name, attempts, at, "is at its rate limit")
                    return
                skipped = True  # failing over: a provider at its limit is not asked now
                continue
            permit = self._acquire(name, item.segments)
            if permit is None:
                skipped = True  # not tried in this attempt; nothing to record
                continue
            if failed is not None:
                self._publish("failover", item, provider=failed[0], to=name, error=failed[1])
            call = await self._call(connector, permit, item, now)
            outcome = call.outcome
            if isinstance(outcome, Accepted):
                attempts.append(
                    Attempt(
                        name,
                        call.started_at,
                        Outcome.ACCEPTED,
                        outcome.http_status,
                        call.latency_ms,
                    )
                )
                await self._sent(item, name, outcome, call, attempts)
                return
            if isinstance(outcome, Throttled):
                until = self._health.throttled(
                    permit, retry_after=outcome.retry_after, latency_ms=call.latency_ms
                )
                await self._wait_for(item, name, attempts, until, f"throttled: {outcome.reason}")
                return
            kind = Outcome.UNAVAILABLE if isinstance(outcome, Unavailable) else Outcome.REJECTED
            attempts.append(
                Attempt(
                    name,
                    call.started_at,
                    kind,
                    outcome.http_status,
                    call.latency_ms,
                    outcome.reason,
                )
            )
            if isinstance(outcome, InvalidNumber):
                await self._invalid_number(item, name, outcome, attempts)
                return
            unavailable = unavailable or kind is Outcome.UNAVAILABLE
            errors.append(f"{name}: {outcome.reason}")
            logger.info(
                "event=provider_error id=%s provider=%s outcome=%s error=%r",
                item.id,
                name,
                kind,
                outcome.reason,
            )
            failed = (name, outcome.reason)
        if not attempts:
            # Every provider was paused, or its circuit opened, between the claim and now:
            # nothing was tried, so the message goes back untouched to wait for one.
            detail = "no provider may be tried now (paused, or circuit open)"
            await self._store.defer(item, now, detail)
            self._moved(item)
            return
        # A provider left out for its open circuit was not asked: that is an outage, not a
        # verdict on the message, so rejections by the others alone do not fail it.
        all_rejected = not (unavailable or skipped or self._health.open_circuits())
        await self._give_up_or_retry(item, attempts, errors, all_rejected=all_rejected)

    async def _wait_for(
        self, item: Claimed, name: str, attempts: list[Attempt], at: float, why: str
    ) -> None:
        """Hand the message back until `at`, when `name` may take it again."""
        detail = f"waiting for {name}, which {why}" if why.startswith("is ") else f"{name} {why}"
        at = min(at, item.expires_at)
        if attempts:
            # Others were really tried in this attempt: it counts, and their calls are kept.
            await self._store.requeue(
                item, at, ErrorCode.PROVIDERS_UNAVAILABLE, detail, attempts, self._clock()
            )
        else:
            await self._store.defer(item, at, detail)
        self._moved(item)

    async def _invalid_number(
        self, item: Claimed, name: str, outcome: InvalidNumber, attempts: list[Attempt]
    ) -> None:
        """The provider says the number itself is bad: end the message, suppress the number."""
        now = self._clock()
        detail = f"{name} refused the number: {outcome.reason}"
        await self._store.finish(
            item, Status.INVALID, ErrorCode.REPORTED_INVALID, detail, attempts, now
        )
        also = await self._store.suppress(item.to_number, now, f"refused by {name} for {item.id}")
        logger.info("event=number_invalid id=%s provider=%s code=%s", item.id, name, outcome.code)
        self._publish("invalid", item, provider=name, code=ErrorCode.REPORTED_INVALID.value)
        for other in also:
            self._events.publish(
                "invalid", {"id": other, "number": item.to_number, "code": "number_suppressed"}
            )
        self._publish("number_suppressed", item, also_invalidated=len(also))

    def _acquire(self, name: str, segments: int) -> Permit | None:
        """The provider's breaker's leave for one call now, or None."""
        permit, changes = self._health.acquire(name, segments)
        if changes:
            self._announce(changes)
        return permit

    async def _call(self, connector: Connector, permit: Permit, item: Claimed, now: float) -> Call:
        """Call the provider and report the outcome to its health and breaker."""
        submission = Submission(
            message_id=item.id,
            to_number=item.to_number,
            body=item.body,
            segments=item.segments,
            report_url=self._report_url(permit.provider.name, item.id),
            validity=max(0.0, item.expires_at - now),
        )
        try:
            call = await connector.send(submission)
        except BaseException:
            self._health.release(permit)  # cancelled: a probe slot must not stay taken
            raise
        outcome = call.outcome
        if isinstance(outcome, Throttled):
            return call  # the caller holds the provider; not a failure
        changes = self._health.finish(
            permit,
            ok=isinstance(outcome, Accepted),
            # An answer is an answer: only transport failures count against the breaker.
            transport_ok=not isinstance(outcome, Unavailable),
            latency_ms=call.latency_ms,
            error=None if isinstance(outcome, Accepted) else outcome.reason,
        )
        if changes:
            self._announce(changes)
        return call

    async def _sent(
        self, item: Claimed, name: str, result: Accepted, call: Call, attempts: list[Attempt]
    ) -> None:
        await self._store.mark_sent(item, name, result.provider_message_id, attempts, self._clock())
        logger.info(
            "event=sent id=%s provider=%s latency_ms=%.1f attempt=%d",
            item.id,
            name,
            call.latency_ms,
            item.attempt,
        )
        self._publish("sent", item, provider=name, attempt=item.attempt, latency_ms=call.latency_ms)

    def _announce(self, changes: list[HealthChange]) -> None:
        """Log and publish breaker transitions and weight shifts."""
        if changes:
            announce(changes, self._events)

    async def _give_up_or_retry(
        self, item: Claimed, attempts: list[Attempt], errors: list[str], *, all_rejected: bool
    ) -> None:
        now = self._clock()
        decision = retry.decide(
            attempt=item.attempt,
            all_rejected=all_rejected,
            now=now,
            expires_at=item.expires_at,
            policy=self._settings.policy,
            rng=self._rng,
        )
        summary = "; ".join(errors)
        if isinstance(decision, retry.RetryAt):
            detail = f"attempt {item.attempt} found no provider ({summary}); retrying"
            await self._store.requeue(
                item, decision.at, ErrorCode.PROVIDERS_UNAVAILABLE, detail, attempts, now
            )
            logger.info(
                "event=retry_scheduled id=%s attempt=%d in_s=%.2f",
                item.id,
                item.attempt,
                decision.at - now,
            )
            self._publish(
                "retry_scheduled", item, attempt=item.attempt, in_s=round(decision.at - now, 3)
            )
            return
        status = Status.EXPIRED if decision.code is ErrorCode.EXPIRED else Status.FAILED
        await self._store.finish(
            item, status, decision.code, f"{decision.detail} ({summary})", attempts, now
        )
        logger.info("event=%s id=%s code=%s", status, item.id, decision.code)
        self._publish(status.value, item, code=decision.code.value, error=summary)

    def _publish(self, kind: str, item: Claimed, **fields: object) -> None:
        self._events.publish(kind, {"id": item.id, "number": item.to_number, **fields})

    def _moved(self, item: Claimed) -> None:
        """The message changed status without a console event (a silent requeue, or an
        internal error's release or failure): tell the bus's listeners only."""
        self._events.publish("moved", {"id": item.id, "number": item.to_number}, local=True)
