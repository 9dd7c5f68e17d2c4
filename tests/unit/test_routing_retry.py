"""Unit tests for domain.routing (weighted pick + failover) and domain.retry (backoff)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from dispatchd.domain import retry, routing
from dispatchd.domain.models import ErrorCode
from dispatchd.domain.routing import Candidate

P1_P2 = [Candidate("provider1", 30), Candidate("provider2", 70)]


class FixedRandom(random.Random):
    """A Random whose random() always returns `value`, to pin the jitter."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


# -- routing ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_first_pick_follows_weights(seed: int) -> None:
    rng = random.Random(seed)
    firsts = Counter(routing.plan(P1_P2, rng)[0] for _ in range(10_000))
    share = firsts["provider1"] / 10_000
    assert 0.28 <= share <= 0.32, f"provider1 drawn first {share:.1%} of the time, want 30% ± 2%"
    assert firsts["provider1"] + firsts["provider2"] == 10_000


def test_second_is_always_the_other_provider() -> None:
    rng = random.Random(7)
    seen_first = set()
    for _ in range(2_000):
        order = routing.plan(P1_P2, rng)
        assert sorted(order) == ["provider1", "provider2"], "each provider appears exactly once"
        assert order[1] != order[0]
        seen_first.add(order[0])
    assert seen_first == {"provider1", "provider2"}


def test_zero_weight_is_never_first_but_still_fails_over() -> None:
    rng = random.Random(11)
    candidates = [Candidate("backup", 0), Candidate("main", 100)]
    for _ in range(2_000):
        assert routing.plan(candidates, rng) == ["main", "backup"]


def test_three_providers_fail_over_in_descending_weight() -> None:
    rng = random.Random(5)
    candidates = [Candidate("small", 10), Candidate("big", 50), Candidate("mid", 40)]
    expected = {
        "small": ["small", "big", "mid"],
        "big": ["big", "mid", "small"],
        "mid": ["mid", "big", "small"],
    }
    firsts: Counter[str] = Counter()
    for _ in range(5_000):
        order = routing.plan(candidates, rng)
        assert order == expected[order[0]]
        firsts[order[0]] += 1
    assert set(firsts) == {"small", "big", "mid"}
    assert 0.08 <= firsts["small"] / 5_000 <= 0.12
    assert 0.47 <= firsts["big"] / 5_000 <= 0.53


def test_same_seed_gives_same_plans() -> None:
    rng1, rng2 = random.Random(42), random.Random(42)
    plans = [routing.plan(P1_P2, rng1) for _ in range(100)]
    assert plans == [routing.plan(P1_P2, rng2) for _ in range(100)]
    assert {p[0] for p in plans} == {"provider1", "provider2"}


# -- retry --------------------------------------------------------------------------------

POLICY = retry.RetryPolicy(max_attempts=5, backoff_initial=1.0, backoff_max=10.0)


def test_backoff_doubles_from_initial_and_is_capped() -> None:
    # random() == 1.0 would be the top of the jitter range: the undiscounted base.
    top = FixedRandom(1.0)
    bases = [retry.backoff(n, POLICY, top) for n in range(1, 8)]
    assert bases == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


def test_backoff_jitter_is_half_to_full_base() -> None:
    rng = random.Random(3)
    for attempt in range(1, 8):
        base = min(POLICY.backoff_max, POLICY.backoff_initial * 2 ** (attempt - 1))
        delays = [retry.backoff(attempt, POLICY, rng) for _ in range(500)]
        assert all(0.5 * base <= d <= base for d in delays), (attempt, min(delays), max(delays))
        # The jitter actually spreads the delays over the range.
        assert min(delays) < 0.6 * base
        assert max(delays) > 0.9 * base
    assert retry.backoff(1, POLICY, FixedRandom(0.0)) == 0.5


def test_backoff_zero_config_means_no_delay() -> None:
    policy = retry.RetryPolicy(max_attempts=3, backoff_initial=0.0, backoff_max=0.0)
    assert retry.backoff(1, policy, random.Random(1)) == 0.0
    assert retry.backoff(9, policy, random.Random(1)) == 0.0


def _decide(
    *,
    attempt: int = 1,
    all_rejected: bool = False,
    now: float = 1_000.0,
    expires_at: float = 5_000.0,
    rng: random.Random | None = None,
) -> retry.RetryAt | retry.GiveUp:
    return retry.decide(
        attempt=attempt,
        all_rejected=all_rejected,
        now=now,
        expires_at=expires_at,
        policy=POLICY,
        rng=rng or random.Random(1),
    )


def test_unavailable_with_attempts_left_retries_after_backoff() -> None:
    decision = _decide(attempt=2, rng=FixedRandom(1.0))
    assert decision == retry.RetryAt(1_002.0)


def test_all_rejected_gives_up_without_retry() -> None:
    decision = _decide(attempt=1, all_rejected=True)
    assert isinstance(decision, retry.GiveUp)
    assert decision.code is ErrorCode.PROVIDER_REJECTED


@pytest.mark.parametrize("attempt", [5, 6])
def test_last_attempt_gives_up_as_unavailable(attempt: int) -> None:
    decision = _decide(attempt=attempt)
    assert isinstance(decision, retry.GiveUp)
    assert decision.code is ErrorCode.PROVIDERS_UNAVAILABLE
    assert str(attempt) in decision.detail


def test_attempt_before_last_still_retries() -> None:
    assert isinstance(_decide(attempt=4), retry.RetryAt)


def test_retry_never_scheduled_after_expiry() -> None:
    for seed in range(50):
        decision = _decide(attempt=4, now=1_000.0, expires_at=1_000.5, rng=random.Random(seed))
        assert isinstance(decision, retry.RetryAt)
        assert 1_000.0 <= decision.at <= 1_000.5
    # Exactly at expiry, not later, when the backoff would overshoot it.
    assert _decide(attempt=4, now=1_000.0, expires_at=1_000.5) == retry.RetryAt(1_000.5)


@pytest.mark.parametrize("now", [5_000.0, 6_000.0])
def test_past_expiry_gives_up_as_expired(now: float) -> None:
    decision = _decide(attempt=1, now=now, expires_at=5_000.0)
    assert isinstance(decision, retry.GiveUp)
    assert decision.code is ErrorCode.EXPIRED
