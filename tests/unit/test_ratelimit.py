"""The pure per-provider limiter (dispatchd/domain/ratelimit.py) on an injected clock.

Times in the randomized tests are multiples of 1/1024 s: dyadic fractions are exact in
binary floating point, so `at + window - now` and the window's horizon are computed
without rounding and the checks below need no tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatchd.domain.ratelimit import (
    THROTTLE_INITIAL,
    THROTTLE_MAX,
    Limits,
    ProviderLimiter,
)

TICK = 1 / 1024  # the randomized schedules' time step
T0 = 1_000.0  # any clock: only differences matter


@dataclass(frozen=True)
class Sent:
    at: float
    segments: int


def send_when_allowed(limiter: ProviderLimiter, segments: int, now: float) -> float:
    """Ask until the limiter says go, as the worker does (come back after `wait`); send;
    return when it went."""
    for _ in range(10):
        wait = limiter.wait(segments, now)
        if wait == 0:
            limiter.start(segments, now)
            limiter.finish()
            return now
        assert wait > 0
        now += wait
    raise AssertionError(f"{segments} segments still held at {now} after 10 waits")


def window_violations(sent: list[Sent], rate: float, window: float) -> list[list[Sent]]:
    """Every window [s, s + window) opening at a send that holds more than `rate` segments,
    unless it holds one message alone (one longer than `rate` goes alone in its window)."""
    bad = []
    for first in sent:
        inside = [s for s in sent if first.at <= s.at < first.at + window]
        if sum(s.segments for s in inside) > rate and len(inside) > 1:
            bad.append(inside)
    return bad


# -- the sliding window ------------------------------------------------------------------


def test_rate_segments_go_at_once_then_the_window_must_slide() -> None:
    limiter = ProviderLimiter(Limits(rate=5))
    for i in range(5):
        assert limiter.wait(1, T0 + i * 0.1) == 0
        limiter.start(1, T0 + i * 0.1)
        limiter.finish()
    # The sixth waits until the first send is a whole window old, not a moment less.
    assert limiter.wait(1, T0 + 0.5) == pytest.approx(0.5)
    assert limiter.wait(1, T0 + 0.999) > 0
    assert limiter.wait(1, T0 + 1.0) == 0
    # Two segments need the first two sends out of the window.
    assert limiter.wait(2, T0 + 1.0) == pytest.approx(0.1)
    assert limiter.wait(2, T0 + 1.1) == 0


def test_unlimited_by_default() -> None:
    limiter = ProviderLimiter(Limits())
    for i in range(1000):
        assert limiter.wait(10, T0) == 0
        limiter.start(10, T0 + i * 1e-6)
    assert limiter.in_flight == 1000


def test_a_message_with_more_segments_than_rate_goes_alone() -> None:
    limiter = ProviderLimiter(Limits(rate=5))
    limiter.start(1, T0)
    limiter.finish()
    # 7 segments can never fit beside anything: they wait for an empty window.
    assert limiter.wait(7, T0 + 0.5) > 0
    assert limiter.wait(7, T0 + 0.999) > 0
    assert limiter.wait(7, T0 + 1.0) == 0
    limiter.start(7, T0 + 1.0)
    limiter.finish()
    # ...and nothing goes beside them until they leave the window.
    assert limiter.wait(1, T0 + 1.5) == pytest.approx(0.5)
    assert limiter.wait(1, T0 + 2.0) == 0
    # An empty window takes a long message at once.
    fresh = ProviderLimiter(Limits(rate=5))
    assert fresh.wait(12, T0) == 0


def test_a_wait_ends_when_the_window_has_room_and_not_before() -> None:
    limiter = ProviderLimiter(Limits(rate=3))
    for at, segments in ((0.0, 1), (0.25, 1), (0.5, 1)):
        limiter.start(segments, T0 + at)
        limiter.finish()
    for segments, room_at in ((1, 1.0), (2, 1.25), (3, 1.5)):
        wait = limiter.wait(segments, T0 + 0.75)
        assert wait == pytest.approx(room_at - 0.75)
        assert limiter.wait(segments, T0 + room_at - 0.01) > 0
        assert limiter.wait(segments, T0 + room_at) == 0


schedules = st.lists(
    st.tuples(
        # Ticks since the previous request: bursts, and pauses of up to a second.
        st.one_of(st.integers(min_value=0, max_value=16), st.integers(min_value=0, max_value=1024)),
        st.integers(min_value=1, max_value=8),  # its segments
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(
    rate=st.integers(min_value=1, max_value=10),
    window_ticks=st.sampled_from([256, 512, 1024, 2048]),
    schedule=schedules,
)
def test_no_window_ever_holds_more_than_rate(
    rate: int, window_ticks: int, schedule: list[tuple[int, int]]
) -> None:
    window = window_ticks * TICK
    limiter = ProviderLimiter(Limits(rate=rate, window=window))
    sent: list[Sent] = []
    now = T0
    for gap, segments in schedule:
        now += gap * TICK
        at = send_when_allowed(limiter, segments, now)
        assert at >= now
        sent.append(Sent(at, segments))
        now = at  # requests are asked in order: the next comes after this one went
    assert window_violations(sent, rate, window) == []


@settings(max_examples=100, deadline=None)
@given(
    rate=st.integers(min_value=1, max_value=10),
    schedule=schedules,
)
def test_a_wait_is_never_longer_than_needed(rate: int, schedule: list[tuple[int, int]]) -> None:
    """Exact, not merely safe: a send held for `wait` would have broken the window had it
    gone a tick sooner. (A message longer than `rate`, which needs an empty window, is
    told to come back within the window: safe, if not always as soon as it could go.)"""
    limiter = ProviderLimiter(Limits(rate=rate))
    sent: list[Sent] = []
    now = T0
    for gap, segments in schedule:
        now += gap * TICK
        wait = limiter.wait(segments, now)
        if wait > 0:
            if segments <= rate:
                early = now + wait - TICK
                trial = [*sent, Sent(early, segments)]
                assert sum(s.segments for s in trial if s.at > early - 1.0) > rate
            else:
                assert wait <= 1.0
            now += wait
            assert limiter.wait(segments, now) == 0
        limiter.start(segments, now)
        limiter.finish()
        sent.append(Sent(now, segments))


def test_reconfigure_applies_the_new_rate_to_the_window_already_sent() -> None:
    limiter = ProviderLimiter(Limits(rate=10))
    for _ in range(4):
        limiter.start(1, T0)
        limiter.finish()
    limiter.reconfigure(Limits(rate=4))
    assert limiter.wait(1, T0 + 0.5) == pytest.approx(0.5)
    limiter.reconfigure(Limits(rate=0))
    assert limiter.wait(1, T0 + 0.5) == 0


def test_a_rate_below_one_is_not_rounded_up_to_one() -> None:
    # `[[providers]] rate` takes any float >= 0 ("segments per second at most"); 0.5 means
    # one segment every 2 s, yet the second segment is let through 1 s after the first.
    limiter = ProviderLimiter(Limits(rate=0.5))
    sent = [Sent(send_when_allowed(limiter, 1, T0), 1)]
    sent.append(Sent(send_when_allowed(limiter, 1, sent[-1].at), 1))
    assert sent[1].at - sent[0].at >= 2.0


# -- booking a time to come back ------------------------------------------------------------


def test_book_spreads_waiting_messages_a_slot_apart_and_never_before_wait() -> None:
    limiter = ProviderLimiter(Limits(rate=4))
    for _ in range(4):
        limiter.start(1, T0)
        limiter.finish()
    booked = [limiter.book(1, T0 + 0.1) for _ in range(3)]
    assert booked[0] >= T0 + 0.1 + limiter.wait(1, T0 + 0.1)
    assert booked == pytest.approx([T0 + 1.0, T0 + 1.25, T0 + 1.5])
    # Unlimited: back at once.
    assert ProviderLimiter(Limits()).book(3, T0) == T0


# -- requests in flight ---------------------------------------------------------------------


def test_max_in_flight_holds_until_a_call_finishes() -> None:
    limiter = ProviderLimiter(Limits(max_in_flight=2))
    limiter.start(1, T0)
    assert limiter.wait(1, T0) == 0
    limiter.start(1, T0)
    assert limiter.in_flight == 2
    # Full: a short while, whatever the time; only a finishing call makes room.
    assert 0 < limiter.wait(1, T0) <= limiter.limits.window
    assert limiter.wait(1, T0 + 60) > 0, "time alone frees no slot"
    limiter.finish()
    assert limiter.in_flight == 1
    assert limiter.wait(1, T0) == 0
    limiter.finish()
    limiter.finish()  # one finish too many does not make room for three
    assert limiter.in_flight == 0


def test_max_in_flight_and_rate_together() -> None:
    limiter = ProviderLimiter(Limits(rate=2, max_in_flight=1))
    limiter.start(1, T0)
    assert limiter.wait(1, T0) > 0, "in flight"
    limiter.finish()
    assert limiter.wait(1, T0) == 0
    limiter.start(1, T0)
    limiter.finish()
    assert limiter.wait(1, T0 + 0.5) == pytest.approx(0.5), "at the rate"


# -- throttle answers -----------------------------------------------------------------------


def test_a_throttle_with_retry_after_holds_for_exactly_that() -> None:
    limiter = ProviderLimiter(Limits())
    assert limiter.throttled(T0, retry_after=7.5) == T0 + 7.5
    assert limiter.held_until == T0 + 7.5
    assert limiter.wait(1, T0 + 2.5) == pytest.approx(5.0)
    assert limiter.wait(1, T0 + 7.5) == 0
    assert limiter.throttled_total == 1
    # A hold is not shortened by a later, shorter Retry-After.
    limiter.throttled(T0 + 1, retry_after=1.0)
    assert limiter.held_until == T0 + 7.5
    # Retry-After: 0 retries at once.
    assert ProviderLimiter(Limits()).throttled(T0, retry_after=0.0) == T0


def test_a_long_retry_after_is_honoured_up_to_an_hour() -> None:
    limiter = ProviderLimiter(Limits())
    assert limiter.throttled(T0, retry_after=600.0) == T0 + 600.0
    assert limiter.throttled(T0, retry_after=1e9) == T0 + THROTTLE_MAX * 60


def test_throttles_without_retry_after_double_up_to_the_maximum() -> None:
    limiter = ProviderLimiter(Limits())
    now, holds = T0, []
    for _ in range(9):
        until = limiter.throttled(now, retry_after=None)
        holds.append(until - now)
        now = until  # retried when the hold ends, and throttled again
    assert holds == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert holds[0] == THROTTLE_INITIAL
    assert limiter.throttled_total == 9


def test_the_hold_comes_before_the_rate_and_in_flight() -> None:
    limiter = ProviderLimiter(Limits(rate=100, max_in_flight=100))
    limiter.throttled(T0, retry_after=None)
    assert limiter.wait(1, T0) == pytest.approx(THROTTLE_INITIAL)
    assert limiter.wait(1, T0 + THROTTLE_INITIAL) == 0


def test_an_accepted_answer_starts_the_doubling_over() -> None:
    limiter = ProviderLimiter(Limits())
    limiter.throttled(T0, retry_after=None)  # 1 s
    limiter.throttled(T0 + 1, retry_after=None)  # 2 s
    assert limiter.throttled(T0 + 3, retry_after=None) == T0 + 3 + 4.0
    limiter.accepted()
    assert limiter.throttled(T0 + 7, retry_after=None) == T0 + 7 + THROTTLE_INITIAL
    assert limiter.throttled_total == 4, "the total is not reset"


def test_a_retry_after_counts_in_the_run_of_throttles() -> None:
    limiter = ProviderLimiter(Limits())
    limiter.throttled(T0, retry_after=0.5)
    assert limiter.throttled(T0 + 1, retry_after=None) == T0 + 1 + 2.0
