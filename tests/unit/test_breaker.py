"""The circuit breaker and traffic shift as pure state machines, driven by a fake clock;
and the `[breaker]` config section that feeds them."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from dispatchd.config import BreakerConfig, load
from dispatchd.domain.breaker import Breaker, BreakerSettings, BreakerState
from dispatchd.domain.errors import ConfigError

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
    assert b.record(1, ok=False, latency_ms=5, probe=False) == []
    b.record(1, ok=False, latency_ms=5, probe=False)
    changes = b.record(1, ok=False, latency_ms=5, probe=False)
    assert b.state is BreakerState.OPEN
    assert [(c.kind, c.before, c.after) for c in changes] == [("breaker", "closed", "open")]
    assert "3 failures in a row" in changes[0].reason
    assert not b.admits(5)
    assert b.acquire(5) == (False, None)
    assert b.next_change_at() == 11


def test_a_success_resets_the_run() -> None:
    b = Breaker(SETTINGS, now=0)
    for ok in (False, False, True, False, False):
        b.record(1, ok=ok, latency_ms=5, probe=False)
    assert b.state is BreakerState.CLOSED


def test_error_rate_over_the_window_opens_the_breaker() -> None:
    b = Breaker(SETTINGS, now=0)
    # Alternating outcomes never make a run of 3, but half of 10 calls failed.
    for i in range(10):
        b.record(1, ok=i % 2 == 0, latency_ms=5, probe=False)
    assert b.state is BreakerState.OPEN


def test_old_failures_leave_the_window() -> None:
    b = Breaker(SETTINGS, now=0)
    for i in range(9):
        b.record(1, ok=i % 2 == 0, latency_ms=5, probe=False)
    # 40 s later the earlier calls are out of the 30 s window: one failure is no rate.
    b.record(41, ok=False, latency_ms=5, probe=False)
    assert b.state is BreakerState.CLOSED


def test_half_open_probes_one_at_a_time_and_closes_after_enough_successes() -> None:
    b = Breaker(SETTINGS, now=0)
    for _ in range(3):
        b.record(0, ok=False, latency_ms=5, probe=False)
    allowed, change = b.acquire(10)
    assert allowed and change is not None and change.after == "half_open"
    assert b.acquire(10) == (False, None), "only one probe in flight"
    b.record(10.1, ok=True, latency_ms=5, probe=True)
    assert b.state is BreakerState.HALF_OPEN
    assert b.acquire(10.2)[0]
    changes = b.record(10.3, ok=True, latency_ms=5, probe=True)
    assert b.state is BreakerState.CLOSED
    assert any(c.after == "closed" for c in changes)


def test_a_failed_probe_opens_it_again_for_a_new_cooldown() -> None:
    b = Breaker(SETTINGS, now=0)
    for _ in range(3):
        b.record(0, ok=False, latency_ms=5, probe=False)
    assert b.acquire(10)[0]
    changes = b.record(10.5, ok=False, latency_ms=5, probe=True)
    assert b.state is BreakerState.OPEN
    assert changes[0].reason == "a probe failed"
    assert not b.admits(15)
    assert b.admits(20.5)


def test_errors_shift_weight_away_gradually_bounded_and_it_decays_back() -> None:
    b = Breaker(SETTINGS, now=0)
    factors = []
    # One failure in four keeps the breaker closed but marks the provider as erroring.
    t = 0.0
    for _ in range(20):
        t += 5
        for i in range(4):
            b.record(t, ok=i != 0, latency_ms=5, probe=False)
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
    changes = b.record(6, ok=True, latency_ms=2500, probe=False)
    assert [c.kind for c in changes] == ["weight"]
    assert b.weight_factor() < 1.0


def test_time_alone_half_opens_a_cooled_down_breaker() -> None:
    b = Breaker(SETTINGS, now=0)
    for _ in range(3):
        b.record(0, ok=False, latency_ms=5, probe=False)
    assert [c.after for c in b.tick(9.9) if c.kind == "breaker"] == []
    changes = b.tick(10)
    assert [(c.kind, c.after) for c in changes if c.kind == "breaker"] == [("breaker", "half_open")]
    assert b.next_change_at() is None
    assert b.acquire(10) == (True, None)


def test_a_cancelled_probe_gives_its_slot_back() -> None:
    b = Breaker(SETTINGS, now=0)
    for _ in range(3):
        b.record(0, ok=False, latency_ms=5, probe=False)
    assert b.acquire(10)[0]
    assert not b.admits(10)
    b.release(probe=True)
    assert b.admits(10) and b.state is BreakerState.HALF_OPEN
    b.release(probe=True)  # a second release cannot create a slot
    assert b.probes_in_flight == 0


def test_in_half_open_only_probes_move_the_breaker() -> None:
    b = Breaker(SETTINGS, now=0)
    for _ in range(3):
        b.record(0, ok=False, latency_ms=5, probe=False)
    assert b.acquire(10)[0]
    # Answers to calls admitted before the opening arrive late: they prove nothing now.
    changes = b.record(10.1, ok=False, latency_ms=5, probe=False)
    changes += b.record(10.1, ok=True, latency_ms=5, probe=False)
    assert [c for c in changes if c.kind == "breaker"] == []
    assert b.state is BreakerState.HALF_OPEN and b.probes_in_flight == 1
    b.record(10.2, ok=True, latency_ms=5, probe=True)
    assert b.probe_successes == 1


def test_the_error_rate_counts_only_the_window() -> None:
    b = Breaker(SETTINGS, now=0)
    for i in range(9):  # 5 of 9 failed, never 3 in a row; below min_calls
        b.record(0, ok=i % 2 == 1, latency_ms=5, probe=False)
    # 31 s later those have left the 30 s window: 1 failure in 2 calls is no rate yet.
    b.record(31, ok=True, latency_ms=5, probe=False)
    b.record(31, ok=False, latency_ms=5, probe=False)
    assert b.state is BreakerState.CLOSED
    for i in range(8):  # then 5 of 10 calls failed: the rate opens it
        b.record(31, ok=i % 2 == 0, latency_ms=5, probe=False)
    assert b.state is BreakerState.OPEN
    assert b.reason == "error rate 50% over 10 calls"


def test_reconfigure_keeps_the_state_and_applies_the_new_cooldown() -> None:
    b = Breaker(SETTINGS, now=0)
    for _ in range(3):
        b.record(0, ok=False, latency_ms=5, probe=False)
    b.shift = 0.8
    narrower = BreakerSettings(cooldown=60.0, max_shift=0.5)
    b.reconfigure(narrower)
    assert b.state is BreakerState.OPEN and b.next_change_at() == 60.0
    assert b.shift == 0.5, "clamped to the new bound"


def test_the_config_section_mirrors_the_settings() -> None:
    assert BreakerConfig().settings() == BreakerSettings()
    assert set(BreakerConfig.model_fields) == set(BreakerSettings.__dataclass_fields__)
    for name in BreakerConfig.model_fields:
        assert BreakerConfig.model_fields[name].description or _documented(name), name


def _documented(field: str) -> bool:
    source = inspect.getsource(BreakerConfig)
    after = source.split(f"    {field}:", 1)[1].splitlines()
    return after[1].strip().startswith('"""')


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("error_rate = 1.5", "breaker.error_rate"),
        ("cooldown = 0", "breaker.cooldown"),
        ("max_shift = 1.0", "breaker.max_shift"),
        ("probes = 0", "breaker.probes"),
        ("colldown = 3", "breaker.colldown"),
    ],
)
def test_bad_breaker_keys_are_named(tmp_path: Path, toml: str, key: str) -> None:
    path = tmp_path / "dispatchd.toml"
    path.write_text(f"[breaker]\n{toml}\n")
    with pytest.raises(ConfigError, match=re.escape(key)):
        load(path)


def test_breaker_keys_load_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "dispatchd.toml"
    path.write_text("[breaker]\ncooldown = 2.5\nfailure_threshold = 7\n")
    settings = load(path).breaker_settings()
    assert (settings.cooldown, settings.failure_threshold, settings.probes) == (2.5, 7, 3)
