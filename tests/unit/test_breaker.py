"""The circuit breaker and traffic shift as pure state machines, driven by a fake clock."""

from __future__ import annotations

from dispatchd.breaker import Breaker, BreakerSettings, BreakerState

SETTINGS = BreakerSettings(
    failure_threshold=3,
    error_rate=0.5,
    min_calls=10,
    window=30.0,
    cooldown=10.0,
    probes=2,
    slow_ms=1000.0,
    shift_step=0.1,
    shift_interval=5.0,
    max_shift=0.9,
)


def test_a_run_of_failures_opens_the_breaker_and_blocks_traffic() -> None:
    b = Breaker(SETTINGS, now=0)
    assert b.record(1, ok=False, latency_ms=5) == []
    b.record(1, ok=False, latency_ms=5)
    changes = b.record(1, ok=False, latency_ms=5)
    assert b.state is BreakerState.OPEN
    assert [(c.kind, c.before, c.after) for c in changes] == [("breaker", "closed", "open")]
    assert "3 failures in a row" in changes[0].reason
    assert not b.routable(5)
    assert b.acquire(5) == (False, None)
    assert b.next_change_at() == 11


def test_a_success_resets_the_run() -> None:
    b = Breaker(SETTINGS, now=0)
    for ok in (False, False, True, False, False):
        b.record(1, ok=ok, latency_ms=5)
    assert b.state is BreakerState.CLOSED


def test_error_rate_over_the_window_opens_the_breaker() -> None:
    b = Breaker(SETTINGS, now=0)
    # Alternating outcomes never make a run of 3, but half of 10 calls failed.
    for i in range(10):
        b.record(1, ok=i % 2 == 0, latency_ms=5)
    assert b.state is BreakerState.OPEN


def test_old_failures_leave_the_window() -> None:
    b = Breaker(SETTINGS, now=0)
    for i in range(9):
        b.record(1, ok=i % 2 == 0, latency_ms=5)
    # 40 s later the earlier calls are out of the 30 s window: one failure is no rate.
    b.record(41, ok=False, latency_ms=5)
    assert b.state is BreakerState.CLOSED


def test_half_open_probes_one_at_a_time_and_closes_after_enough_successes() -> None:
    b = Breaker(SETTINGS, now=0)
    for _ in range(3):
        b.record(0, ok=False, latency_ms=5)
    allowed, change = b.acquire(10)
    assert allowed and change is not None and change.after == "half_open"
    assert b.acquire(10) == (False, None), "only one probe in flight"
    b.record(10.1, ok=True, latency_ms=5)
    assert b.state is BreakerState.HALF_OPEN
    assert b.acquire(10.2)[0]
    changes = b.record(10.3, ok=True, latency_ms=5)
    assert b.state is BreakerState.CLOSED
    assert any(c.after == "closed" for c in changes)


def test_a_failed_probe_opens_it_again_for_a_new_cooldown() -> None:
    b = Breaker(SETTINGS, now=0)
    for _ in range(3):
        b.record(0, ok=False, latency_ms=5)
    assert b.acquire(10)[0]
    changes = b.record(10.5, ok=False, latency_ms=5)
    assert b.state is BreakerState.OPEN
    assert changes[0].reason == "a probe failed"
    assert not b.routable(15)
    assert b.routable(20.5)


def test_errors_shift_weight_away_gradually_bounded_and_it_decays_back() -> None:
    b = Breaker(SETTINGS, now=0)
    factors = []
    # One failure in four keeps the breaker closed but marks the provider as erroring.
    t = 0.0
    for _ in range(20):
        t += 5
        for i in range(4):
            b.record(t, ok=i != 0, latency_ms=5)
        factors.append(b.weight_factor())
    assert b.state is BreakerState.CLOSED
    assert factors[0] == 0.9, "one step per interval, not all at once"
    assert min(factors) >= 0.1 - 1e-9, "bounded by max_shift"
    assert factors == sorted(factors, reverse=True)
    # Then it behaves: the shift decays one step per interval back to the full weight.
    back = []
    for _ in range(12):
        t += 31  # past the window, so earlier failures are forgotten
        b.tick(t)
        back.append(b.weight_factor())
    assert back == sorted(back)
    assert back[-1] == 1.0


def test_slow_answers_also_shift_weight() -> None:
    b = Breaker(SETTINGS, now=0)
    changes = b.record(6, ok=True, latency_ms=2500)
    assert [c.kind for c in changes] == ["weight"]
    assert b.weight_factor() < 1.0
