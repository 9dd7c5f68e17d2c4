"""Run-time provider state: operator overrides plus a sliding window of call outcomes.

The worker asks `candidates()` before every attempt, so a pause or a weight change
applies to the next routing decision. Overrides live in memory only: a restart
goes back to the weights in the configuration, which stays the source of truth.

Call outcomes are kept in one bucket per second for the last `window` seconds,
each with a bounded sample of latencies, so recording a call is O(1) and a
snapshot costs the same at 10 or 10,000 calls a second.
"""

from __future__ import annotations

import enum
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dispatchd.config import ProviderConfig
from dispatchd.errors import DispatchdError
from dispatchd.routing import Candidate

MAX_WEIGHT = 1_000_000
LATENCY_SAMPLES_PER_SECOND = 64


class ProviderState(enum.StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    # Reserved for a circuit breaker: see ProviderHealth.state.
    CIRCUIT_OPEN = "circuit_open"
    PAUSED = "paused"


class UnknownProvider(DispatchdError):
    """There is no provider by that name."""

    def __init__(self, name: str, known: Sequence[str]) -> None:
        super().__init__(f"There is no provider named {name!r}; known: {', '.join(known)}.")
        self.name = name


class BadWeight(DispatchdError):
    """The weight must be a whole number from 0 to 1000000."""


@dataclass(slots=True)
class _Second:
    second: int
    ok: int = 0
    failed: int = 0
    latencies: list[float] = field(default_factory=list)

    def add_latency(self, latency_ms: float) -> None:
        n = self.ok + self.failed
        if len(self.latencies) < LATENCY_SAMPLES_PER_SECOND:
            self.latencies.append(latency_ms)
        else:
            # Overwrite in rotation: a cheap, deterministic spread over the whole second.
            self.latencies[n % LATENCY_SAMPLES_PER_SECOND] = latency_ms


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of `values` (0 < q <= 100); None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


class ProviderHealth:
    """One provider's overrides and recent calls."""

    def __init__(self, config: ProviderConfig, window: float) -> None:
        self.name = config.name
        self.configured_weight = config.weight
        self.weight_override: int | None = None
        self.paused = False
        self.in_flight = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.consecutive_failures = 0
        self._window = window
        self._seconds: deque[_Second] = deque()

    @property
    def weight(self) -> int:
        """The weight routing uses now, before pausing is taken into account."""
        return self.configured_weight if self.weight_override is None else self.weight_override

    @property
    def effective_weight(self) -> int:
        return 0 if self.paused else self.weight

    def record(self, now: float, *, ok: bool, latency_ms: float, error: str | None) -> None:
        second = int(now)
        if not self._seconds or self._seconds[-1].second != second:
            self._seconds.append(_Second(second))
            self._trim(now)
        bucket = self._seconds[-1]
        bucket.add_latency(latency_ms)
        if ok:
            bucket.ok += 1
            self.consecutive_failures = 0
        else:
            bucket.failed += 1
            self.consecutive_failures += 1
            self.last_error, self.last_error_at = error, now

    def _trim(self, now: float) -> None:
        oldest = now - self._window
        while self._seconds and self._seconds[0].second + 1 <= oldest:
            self._seconds.popleft()

    def calls(self, now: float) -> tuple[int, int, list[float]]:
        """Successful calls, failed calls and sampled latencies inside the window."""
        self._trim(now)
        ok = failed = 0
        latencies: list[float] = []
        for bucket in self._seconds:
            ok += bucket.ok
            failed += bucket.failed
            latencies.extend(bucket.latencies)
        return ok, failed, latencies

    def state(self, success_rate: float | None, degraded_below: float) -> ProviderState:
        if self.paused:
            return ProviderState.PAUSED
        # A circuit breaker goes here: when it is open, return CIRCUIT_OPEN and have
        # HealthRegistry.candidates() leave the provider out, as it does for paused ones.
        if self.consecutive_failures >= 3:
            return ProviderState.DEGRADED
        if success_rate is not None and success_rate < degraded_below:
            return ProviderState.DEGRADED
        return ProviderState.HEALTHY


class HealthRegistry:
    """Every provider's run-time state; the worker routes from it and reports to it."""

    def __init__(
        self,
        providers: Sequence[ProviderConfig],
        *,
        clock: Callable[[], float] = time.time,
        window: float = 60.0,
        degraded_below: float = 0.8,
        min_calls: int = 20,
    ) -> None:
        self._providers = {p.name: ProviderHealth(p, window) for p in providers}
        self._clock = clock
        self._degraded_below = degraded_below
        self._min_calls = min_calls

    @property
    def names(self) -> list[str]:
        return list(self._providers)

    def get(self, name: str) -> ProviderHealth:
        try:
            return self._providers[name]
        except KeyError:
            raise UnknownProvider(name, self.names) from None

    # -- routing --------------------------------------------------------------------------

    def candidates(self) -> list[Candidate]:
        """Providers routing may use now, in configuration order, with run-time weights."""
        return [Candidate(p.name, p.weight) for p in self._providers.values() if not p.paused]

    def routable(self) -> bool:
        """Whether any provider may be tried; when none may, messages wait in the queue."""
        return any(not p.paused for p in self._providers.values())

    def call_started(self, name: str) -> None:
        self._providers[name].in_flight += 1

    def call_ended(self, name: str) -> None:
        self._providers[name].in_flight -= 1

    def record(self, name: str, *, ok: bool, latency_ms: float, error: str | None) -> None:
        """Count one provider call's outcome in the window."""
        self._providers[name].record(self._clock(), ok=ok, latency_ms=latency_ms, error=error)

    # -- operator overrides ---------------------------------------------------------------

    def pause(self, name: str) -> bool:
        """Leave the provider out of routing; False if it already was."""
        provider = self.get(name)
        changed = not provider.paused
        provider.paused = True
        return changed

    def resume(self, name: str) -> bool:
        """Route to the provider again; False if it was not paused."""
        provider = self.get(name)
        changed = provider.paused
        provider.paused = False
        return changed

    def set_weight(self, name: str, weight: object) -> int:
        """Override the provider's weight until restart; return the previous one."""
        provider = self.get(name)
        # bool is an int to Python, but `true` is no weight.
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= MAX_WEIGHT:
            raise BadWeight(
                f"The weight must be a whole number from 0 to {MAX_WEIGHT}, not {weight!r}."
            )
        previous = provider.weight
        provider.weight_override = None if weight == provider.configured_weight else weight
        return previous

    # -- reporting ------------------------------------------------------------------------

    def snapshot(self) -> list[dict[str, Any]]:
        """Every provider's state, for the control socket; shares are of calls in the window."""
        now = self._clock()
        windows = {name: p.calls(now) for name, p in self._providers.items()}
        total = sum(ok + failed for ok, failed, _ in windows.values())
        out = []
        for name, provider in self._providers.items():
            ok, failed, latencies = windows[name]
            calls = ok + failed
            rate = ok / calls if calls >= self._min_calls else None
            p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
            out.append(
                {
                    "name": name,
                    "state": provider.state(rate, self._degraded_below).value,
                    "paused": provider.paused,
                    "configured_weight": provider.configured_weight,
                    "weight": provider.weight,
                    "effective_weight": provider.effective_weight,
                    "calls": calls,
                    "share": round(calls / total, 4) if total else 0.0,
                    "success_rate": round(ok / calls, 4) if calls else None,
                    "p50_ms": None if p50 is None else round(p50, 1),
                    "p95_ms": None if p95 is None else round(p95, 1),
                    "in_flight": provider.in_flight,
                    "last_error": provider.last_error,
                    "last_error_at": provider.last_error_at,
                }
            )
        return out
