"""Status-callback signatures and outcome decisions: pure functions, no I/O."""

from __future__ import annotations

import hashlib
import hmac
import random
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dispatchd.config import WebhooksConfig
from dispatchd.domain.retry import RetryAt, RetryPolicy
from dispatchd.webhooks import (
    Delivered,
    GiveUp,
    judge,
    restart_only_changes,
    sign,
    verify,
)

SECRET = "whsec-test"
BODY = b'{"id":"x","status":"sent"}'
T = 1_800_000_000
POLICY = RetryPolicy(max_attempts=3, backoff_initial=1.0, backoff_max=10.0)


def test_signature_is_the_documented_hmac_of_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET.encode(), f"{T}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, BODY, T) == f"t={T},v1={expected}"


def test_a_fresh_signature_verifies() -> None:
    assert verify(SECRET, BODY, sign(SECRET, BODY, T), now=T + 5)


@pytest.mark.parametrize(
    ("why", "secret", "body", "now"),
    [
        ("other secret", "not-the-secret", BODY, T),
        ("body changed", SECRET, BODY.replace(b"sent", b"failed"), T),
        ("too old", SECRET, BODY, T + 301),
        ("from the future", SECRET, BODY, T - 301),
    ],
)
def test_a_wrong_or_stale_signature_is_refused(
    why: str, secret: str, body: bytes, now: float
) -> None:
    assert not verify(secret, body, sign(SECRET, BODY, T), now=now), why


@pytest.mark.parametrize(
    "header",
    ["", "garbage", f"t={T}", "v1=abc", f"t=soon,v1={'0' * 64}", f"t={T},v1={'0' * 64}"],
)
def test_malformed_headers_are_refused(header: str) -> None:
    assert not verify(SECRET, BODY, header, now=T)


# str.isdigit() is true for all of these. int() refuses superscripts (a ValueError, once) and
# reads other scripts' digits; only ASCII digits are a timestamp.
UNICODE_DIGITS = [
    "\u00b2",  # superscript two
    "18000000\u00b9\u00b2",
    "\u0661\u0668" + "\u0660" * 8,  # 1800000000 in Arabic-Indic digits
]


@pytest.mark.parametrize("t", UNICODE_DIGITS)
def test_a_timestamp_in_unicode_digits_is_refused_not_a_crash(t: str) -> None:
    mac = sign(SECRET, BODY, T).split("v1=")[1]
    assert t.isdigit() and not t.isascii()
    assert not verify(SECRET, BODY, f"t={t},v1={mac}", now=T)


def _readme_verifier() -> Callable[[bytes, str], bool]:
    """The `verified()` function of the README's example receiver, with our secret."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    match = re.search(r"^def verified\(.*?(?=^\S)", readme, re.MULTILINE | re.DOTALL)
    assert match, "the README has no verified() example"
    namespace: dict[str, Any] = {"SECRET": SECRET.encode()}
    exec("import hashlib, hmac, time\n" + match.group(0), namespace)
    verified: Callable[[bytes, str], bool] = namespace["verified"]
    return verified


@pytest.mark.parametrize("t", UNICODE_DIGITS)
def test_the_readme_receiver_refuses_unicode_digits_too(t: str) -> None:
    verified = _readme_verifier()
    fresh = sign(SECRET, BODY, int(time.time()))
    assert verified(BODY, fresh)
    mac = fresh.split("v1=")[1]
    assert not verified(BODY, f"t={t},v1={mac}")


def test_a_timestamp_is_bound_to_its_signature() -> None:
    # Replaying an old body with a fresh t must not pass: t is inside the MAC.
    old_mac = sign(SECRET, BODY, T).split("v1=")[1]
    assert not verify(SECRET, BODY, f"t={T + 1000},v1={old_mac}", now=T + 1000)


def test_any_one_of_several_v1_values_may_match() -> None:
    # Lets a receiver accept a header carrying signatures under an old and a new secret.
    good = sign(SECRET, BODY, T).split("v1=")[1]
    assert verify(SECRET, BODY, f"t={T},v1={'0' * 64},v1={good}", now=T)


@pytest.mark.parametrize("status", [200, 201, 204, 299])
def test_2xx_is_delivered(status: int) -> None:
    assert judge(status, 1, POLICY, T, random.Random(1)) == Delivered()


@pytest.mark.parametrize("status", [None, 500, 502, 503, 408, 429])
def test_no_answer_5xx_408_429_are_retried_with_growing_backoff(status: int | None) -> None:
    first = judge(status, 1, POLICY, T, random.Random(1))
    second = judge(status, 2, POLICY, T, random.Random(1))
    assert isinstance(first, RetryAt)
    assert isinstance(second, RetryAt)
    assert T + 0.5 <= first.at <= T + 1.0  # backoff_initial, jittered 50-100%
    assert T + 1.0 <= second.at <= T + 2.0
    assert second.at > first.at


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 301, 302])
def test_other_answers_give_up_at_once(status: int) -> None:
    verdict = judge(status, 1, POLICY, T, random.Random(1))
    assert isinstance(verdict, GiveUp)
    assert str(status) in verdict.reason


def test_retries_stop_at_max_attempts() -> None:
    verdict = judge(503, POLICY.max_attempts, POLICY, T, random.Random(1))
    assert isinstance(verdict, GiveUp)
    assert f"{POLICY.max_attempts} tries" in verdict.reason


def test_only_timings_are_live_on_reload() -> None:
    old = WebhooksConfig(secret="a")
    timings = WebhooksConfig(secret="a", timeout=1, max_attempts=3, backoff_initial=0.1)
    assert restart_only_changes(old, timings) == []
    others = WebhooksConfig(secret="b", concurrency=2, default_url="http://h.example/x")
    assert restart_only_changes(old, others) == [
        "webhooks.secret",
        "webhooks.default_url",
        "webhooks.concurrency",
    ]
