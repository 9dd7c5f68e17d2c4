"""Retry decisions: after an attempt no provider accepted, and for any HTTP answer."""

from __future__ import annotations

import random
from dataclasses import dataclass

from dispatchd.domain.models import ErrorCode

# 408 and 429 are the server asking us to come back later, not a verdict on the request.
RETRYABLE_4XX = frozenset({408, 429})


def retryable_status(http_status: int | None) -> bool:
    """No answer, 5xx, 408 and 429 may go better later; any other answer will not."""
    return http_status is None or http_status >= 500 or http_status in RETRYABLE_4XX


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int
    backoff_initial: float
    backoff_max: float


@dataclass(frozen=True, slots=True)
class RetryAt:
    """Try again at `at` (epoch seconds)."""

    at: float


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Stop trying: the message ends `failed` (or `expired`) with this code."""

    code: ErrorCode
    detail: str


def backoff(attempt: int, policy: RetryPolicy, rng: random.Random) -> float:
    """Delay after `attempt` (1-based): doubling from backoff_initial, capped, jittered 50-100%."""
    base = min(policy.backoff_max, policy.backoff_initial * 2.0 ** (attempt - 1))
    # "Equal jitter": keeps the delay growing while spreading a thundering herd.
    return base * (0.5 + rng.random() / 2)


def decide(
    *,
    attempt: int,
    all_rejected: bool,
    now: float,
    expires_at: float,
    policy: RetryPolicy,
    rng: random.Random,
) -> RetryAt | GiveUp:
    """What happens to a message after attempt number `attempt` found no taker."""
    if all_rejected:
        return GiveUp(ErrorCode.PROVIDER_REJECTED, "Every provider rejected the message.")
    if attempt >= policy.max_attempts:
        return GiveUp(
            ErrorCode.PROVIDERS_UNAVAILABLE,
            f"No provider accepted the message in {attempt} attempts.",
        )
    if now >= expires_at:
        return GiveUp(ErrorCode.EXPIRED, "No provider accepted the message before it expired.")
    # A retry after expiry would only find it expired; wake exactly then instead.
    return RetryAt(min(now + backoff(attempt, policy, rng), expires_at))
