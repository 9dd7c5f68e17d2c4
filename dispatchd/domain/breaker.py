"""Per-provider circuit breaker and traffic shifting: pure state machines, clock passed in.

Breaker: `closed` until a run of `failure_threshold` transport failures in a row,
or an error rate of at least `error_rate` over `min_calls`+ calls in the last
`window` seconds; then `open` (no traffic) for `cooldown` seconds; then
`half_open`, letting `probes` calls through one at a time: that many successes
close it, any failure opens it again for another cooldown.

Shifting: between healthy and open, a provider that errors or is slow loses a
`shift_step` share of its weight per `shift_interval`, down to `1 - max_shift`
of it, and earns it back at the same pace once it behaves, so traffic moves
away gradually and returns gradually instead of flapping (GOV.UK Notify adjusts
provider priorities the same way). "Errors" means at least a fifth of
`error_rate` of the calls in the window failed; "slow" means the 95th
percentile of successful answers is at least `slow_ms`.

Outcomes are counted in `WINDOW_SLICES` time slices with running totals, so
recording a call and every decision above cost O(1) whatever the call rate.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

# Resolution of the sliding window: a call leaves it between `window` and
# `window * (1 + 1/WINDOW_SLICES)` seconds after it was made.
WINDOW_SLICES = 30
# Share of successful answers at or above `slow_ms` that makes the p95 slow.
SLOW_SHARE = 0.05


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    failure_threshold: int = 5
    error_rate: float = 0.5
    min_calls: int = 20
    window: float = 30.0
    cooldown: float = 30.0
    probes: int = 3
    slow_ms: float = 2000.0
    shift_step: float = 0.1
    shift_interval: float = 5.0
    max_shift: float = 0.9


@dataclass(frozen=True, slots=True)
class Transition:
    """A change worth logging and publishing."""

    kind: str  # "breaker" or "weight"
    before: str
    after: str
    reason: str


class _Slice:
    __slots__ = ("calls", "failed", "ok", "slot", "slow")

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.calls = self.failed = self.ok = self.slow = 0


class Window:
    """Calls, failures and slow answers of the last `seconds`, as running totals."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._width = seconds / WINDOW_SLICES
        self._slices: deque[_Slice] = deque()
        self.calls = self.failed = self.ok = self.slow = 0

    def add(self, now: float, *, ok: bool, slow: bool) -> None:
        self.trim(now)
        slot = int(now // self._width)
        # A clock that stepped back counts into the newest slice rather than reordering.
        if not self._slices or slot > self._slices[-1].slot:
            self._slices.append(_Slice(slot))
        last = self._slices[-1]
        last.calls += 1
        self.calls += 1
        if ok:
            last.ok += 1
            self.ok += 1
            if slow:
                last.slow += 1
                self.slow += 1
        else:
            last.failed += 1
            self.failed += 1

    def trim(self, now: float) -> None:
        """Forget slices that ended more than `seconds` ago."""
        horizon = now - self.seconds
        while self._slices and (self._slices[0].slot + 1) * self._width <= horizon:
            old = self._slices.popleft()
            self.calls -= old.calls
            self.failed -= old.failed
            self.ok -= old.ok
            self.slow -= old.slow

    def clear(self) -> None:
        self._slices.clear()
        self.calls = self.failed = self.ok = self.slow = 0


class Breaker:
    """Circuit breaker plus weight shift for one provider."""

    def __init__(self, settings: BreakerSettings, now: float) -> None:
        self.settings = settings
        self.state = BreakerState.CLOSED
        self.opened_at: float | None = None
        self.reason = ""  # why the breaker is in its state (empty while never tripped)
        self.consecutive_failures = 0
        self.probes_in_flight = 0
        self.probe_successes = 0
        self.shift = 0.0  # share of the weight taken away, 0..max_shift
        self.shift_reason = ""
        self._last_shift_at = now
        self._window = Window(settings.window)

    # -- routing questions -----------------------------------------------------------------

    def admits(self, now: float) -> bool:
        """Would `acquire` say yes now? (Read-only: no state changes.)"""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN and not self._cooled_down(now):
            return False
        return self.probes_in_flight < 1

    def acquire(self, now: float) -> tuple[bool, Transition | None]:
        """Claim the right to make one call now; half-open allows one probe at a time."""
        change = None
        if self.state is BreakerState.OPEN:
            if not self._cooled_down(now):
                return False, None
            change = self._move(BreakerState.HALF_OPEN, "cooldown over; probing")
        if self.state is BreakerState.HALF_OPEN:
            if self.probes_in_flight >= 1:
                return False, change
            self.probes_in_flight += 1
        return True, change

    def release(self, *, probe: bool) -> None:
        """A call admitted by `acquire` ended without an outcome (cancelled): free its slot."""
        if probe and self.state is BreakerState.HALF_OPEN and self.probes_in_flight > 0:
            self.probes_in_flight -= 1

    def weight_factor(self) -> float:
        return 1.0 - self.shift

    def next_change_at(self) -> float | None:
        """When an open breaker will let a probe through."""
        if self.state is BreakerState.OPEN and self.opened_at is not None:
            return self.opened_at + self.settings.cooldown
        return None

    # -- outcomes --------------------------------------------------------------------------

    def record(self, now: float, *, ok: bool, latency_ms: float, probe: bool) -> list[Transition]:
        """Count one transport outcome (a 4xx rejection is not a failure of the provider).

        `probe` says whether `acquire` admitted this call as a half-open probe. In
        half-open only probes move the breaker: a call admitted before it opened and
        answering late says nothing about the provider now.
        """
        s = self.settings
        self._window.add(now, ok=ok, slow=latency_ms >= s.slow_ms)
        changes: list[Transition] = []
        if ok:
            self.consecutive_failures = 0
        else:
            self.consecutive_failures += 1
        if self.state is BreakerState.HALF_OPEN:
            if probe:
                self.probes_in_flight = max(0, self.probes_in_flight - 1)
                changes += self._probed(now, ok=ok)
        elif self.state is BreakerState.CLOSED and not ok:
            reason = self._trip_reason()
            if reason:
                changes.append(self._open(now, reason))
        shifted = self._adjust_shift(now)
        if shifted:
            changes.append(shifted)
        return changes

    def tick(self, now: float) -> list[Transition]:
        """Let time pass: half-opens a cooled-down breaker and decays the weight shift."""
        changes: list[Transition] = []
        if self.state is BreakerState.OPEN and self._cooled_down(now):
            changes.append(self._move(BreakerState.HALF_OPEN, "cooldown over; probing"))
        self._window.trim(now)
        shifted = self._adjust_shift(now)
        if shifted:
            changes.append(shifted)
        return changes

    def reconfigure(self, settings: BreakerSettings) -> None:
        """Apply new settings, keeping the state (a changed window starts empty)."""
        if settings.window != self.settings.window:
            self._window = Window(settings.window)
        self.settings = settings
        self.shift = min(self.shift, settings.max_shift)

    # -- internals -------------------------------------------------------------------------

    def _probed(self, now: float, *, ok: bool) -> list[Transition]:
        if not ok:
            return [self._open(now, "a probe failed")]
        self.probe_successes += 1
        if self.probe_successes >= self.settings.probes:
            return [self._move(BreakerState.CLOSED, f"{self.settings.probes} probes succeeded")]
        return []

    def _cooled_down(self, now: float) -> bool:
        return self.opened_at is not None and now >= self.opened_at + self.settings.cooldown

    def _trip_reason(self) -> str | None:
        s = self.settings
        if self.consecutive_failures >= s.failure_threshold:
            return f"{self.consecutive_failures} failures in a row"
        w = self._window
        if w.calls >= s.min_calls and w.failed / w.calls >= s.error_rate:
            return f"error rate {w.failed / w.calls:.0%} over {w.calls} calls"
        return None

    def _open(self, now: float, reason: str) -> Transition:
        self.opened_at = now
        return self._move(BreakerState.OPEN, reason)

    def _move(self, state: BreakerState, reason: str) -> Transition:
        before = self.state
        self.state = state
        self.reason = reason
        self.probes_in_flight = 0
        self.probe_successes = 0
        if state is BreakerState.CLOSED:
            self.consecutive_failures = 0
            self._window.clear()  # a fresh start: old failures must not re-trip it
        return Transition("breaker", before.value, state.value, reason)

    def _misbehaving(self) -> str | None:
        w = self._window
        s = self.settings
        if w.failed and w.failed >= w.calls * s.error_rate / 5:
            return f"{w.failed} of {w.calls} recent calls failed"
        if w.slow and w.slow >= w.ok * SLOW_SHARE:
            return f"{w.slow} of {w.ok} recent answers took {s.slow_ms:.0f} ms or more"
        return None

    def _adjust_shift(self, now: float) -> Transition | None:
        s = self.settings
        if now - self._last_shift_at < s.shift_interval:
            return None
        self._last_shift_at = now
        before = self.shift
        reason = self._misbehaving()
        if reason:
            self.shift = min(s.max_shift, self.shift + s.shift_step)
        else:
            self.shift = max(0.0, self.shift - s.shift_step)
            reason = "behaving again"
        if self.shift < 1e-9:
            self.shift = 0.0  # no float dust: back to exactly the configured weight
        if abs(self.shift - before) < 1e-9:
            return None
        self.shift_reason = reason
        return Transition("weight", f"{1 - before:.0%}", f"{1 - self.shift:.0%}", reason)
