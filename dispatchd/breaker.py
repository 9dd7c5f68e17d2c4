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
provider priorities the same way).
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass


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


class Breaker:
    """Circuit breaker plus weight shift for one provider."""

    def __init__(self, settings: BreakerSettings, now: float) -> None:
        self.settings = settings
        self.state = BreakerState.CLOSED
        self.opened_at: float | None = None
        self.consecutive_failures = 0
        self.probes_in_flight = 0
        self.probe_successes = 0
        self.shift = 0.0  # share of the weight taken away, 0..max_shift
        self._last_shift_at = now
        self._calls: deque[tuple[float, bool, float]] = deque()  # (at, ok, latency_ms)

    # -- routing questions -----------------------------------------------------------------

    def routable(self, now: float) -> bool:
        """May new traffic be routed here (ignoring probe slots)?"""
        if self.state is BreakerState.OPEN:
            return self._cooled_down(now)
        return True

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

    def weight_factor(self) -> float:
        return 1.0 - self.shift

    def next_change_at(self) -> float | None:
        """When an open breaker will let a probe through."""
        if self.state is BreakerState.OPEN and self.opened_at is not None:
            return self.opened_at + self.settings.cooldown
        return None

    # -- outcomes --------------------------------------------------------------------------

    def record(self, now: float, *, ok: bool, latency_ms: float) -> list[Transition]:
        """Count one transport outcome (a 4xx rejection is not a failure of the provider)."""
        s = self.settings
        self._calls.append((now, ok, latency_ms))
        self._trim(now)
        changes: list[Transition] = []
        was_probe = self.state is BreakerState.HALF_OPEN and self.probes_in_flight > 0
        if was_probe:
            self.probes_in_flight -= 1
        if ok:
            self.consecutive_failures = 0
            if was_probe:
                self.probe_successes += 1
                if self.probe_successes >= s.probes:
                    changes.append(self._move(BreakerState.CLOSED, f"{s.probes} probes succeeded"))
        else:
            self.consecutive_failures += 1
            if self.state is BreakerState.HALF_OPEN:
                changes.append(self._open(now, "a probe failed"))
            elif self.state is BreakerState.CLOSED:
                reason = self._trip_reason()
                if reason:
                    changes.append(self._open(now, reason))
        shifted = self._adjust_shift(now)
        if shifted:
            changes.append(shifted)
        return changes

    def tick(self, now: float) -> list[Transition]:
        """Let time pass: decays the weight shift while the provider gets no failing traffic."""
        self._trim(now)
        shifted = self._adjust_shift(now)
        return [shifted] if shifted else []

    # -- internals -------------------------------------------------------------------------

    def _cooled_down(self, now: float) -> bool:
        return self.opened_at is not None and now >= self.opened_at + self.settings.cooldown

    def _trim(self, now: float) -> None:
        horizon = now - self.settings.window
        while self._calls and self._calls[0][0] < horizon:
            self._calls.popleft()

    def _trip_reason(self) -> str | None:
        s = self.settings
        if self.consecutive_failures >= s.failure_threshold:
            return f"{self.consecutive_failures} failures in a row"
        calls = len(self._calls)
        if calls >= s.min_calls:
            failed = sum(1 for _, ok, _ in self._calls if not ok)
            if failed / calls >= s.error_rate:
                return f"error rate {failed / calls:.0%} over {calls} calls"
        return None

    def _open(self, now: float, reason: str) -> Transition:
        self.opened_at = now
        return self._move(BreakerState.OPEN, reason)

    def _move(self, state: BreakerState, reason: str) -> Transition:
        before = self.state
        self.state = state
        self.probes_in_flight = 0
        self.probe_successes = 0
        if state is BreakerState.CLOSED:
            self.consecutive_failures = 0
            self._calls.clear()  # a fresh start: old failures must not re-trip it
        return Transition("breaker", before.value, state.value, reason)

    def _misbehaving(self) -> str | None:
        if not self._calls:
            return None
        s = self.settings
        failed = sum(1 for _, ok, _ in self._calls if not ok)
        if failed and failed / len(self._calls) >= s.error_rate / 5:
            return f"{failed} of {len(self._calls)} recent calls failed"
        latencies = sorted(lat for _, ok, lat in self._calls if ok)
        if latencies:
            p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
            if p95 >= s.slow_ms:
                return f"p95 latency {p95:.0f} ms"
        return None

    def _adjust_shift(self, now: float) -> Transition | None:
        s = self.settings
        if now - self._last_shift_at < s.shift_interval:
            return None
        before = self.shift
        reason = self._misbehaving()
        if reason:
            self.shift = min(s.max_shift, self.shift + s.shift_step)
        else:
            self.shift = max(0.0, self.shift - s.shift_step)
            reason = "behaving again" if before > 0 else ""
        self._last_shift_at = now
        if abs(self.shift - before) < 1e-9:
            return None
        return Transition(
            "weight", f"{1 - before:.0%}", f"{1 - self.shift:.0%}", reason or "recovering"
        )
