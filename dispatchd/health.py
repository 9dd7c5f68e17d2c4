"""Run-time provider state: operator overrides, circuit breakers and a window of call outcomes.

The worker asks `candidates()` before every attempt and `acquire()` just before
every call, so a pause, a weight change or an open circuit applies to the next
routing decision. Overrides live in memory only: a restart goes back to the
weights in the configuration, which stays the source of truth; a reload
(`reconfigure`) applies new configured weights and breaker settings but keeps
every surviving provider's run-time state.

Call outcomes are kept in one bucket per second for the last `window` seconds,
each with a bounded sample of latencies, so recording a call is O(1) and a
snapshot costs the same at 10 or 10,000 calls a second. Each provider's
breaker (dispatchd/domain/breaker.py) keeps its own running counts, also O(1) a call.
"""

from __future__ import annotations

import enum
import logging
import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dispatchd.config import ProviderConfig
from dispatchd.domain.breaker import Breaker, BreakerSettings, BreakerState, Transition
from dispatchd.domain.errors import DispatchdError
from dispatchd.domain.ratelimit import Limits, ProviderLimiter
from dispatchd.domain.routing import Candidate
from dispatchd.events import EventBus

logger = logging.getLogger(__name__)

MAX_WEIGHT = 1_000_000
LATENCY_SAMPLES_PER_SECOND = 64
# Weight shifts decay, and cooled-down breakers half-open, at least this often.
TICK_EVERY = 1.0

BREAKER_EVENTS = {
    BreakerState.OPEN.value: "breaker_opened",
    BreakerState.HALF_OPEN.value: "breaker_half_open",
    BreakerState.CLOSED.value: "breaker_closed",
}


class ProviderState(enum.StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    CIRCUIT_OPEN = "circuit_open"
    PAUSED = "paused"


class UnknownProvider(DispatchdError):
    """There is no provider by that name."""

    def __init__(self, name: str, known: Sequence[str]) -> None:
        super().__init__(f"There is no provider named {name!r}; known: {', '.join(known)}.")
        self.name = name


class BadWeight(DispatchdError):
    """The weight must be a whole number from 0 to 1000000."""


@dataclass(frozen=True, slots=True)
class HealthChange:
    """A breaker transition or weight shift of one provider, to log and publish."""

    provider: str
    transition: Transition
    effective_weight: int
    weight_factor: float

    @property
    def event(self) -> str:
        """`breaker_opened`, `breaker_half_open`, `breaker_closed` or `weight_shifted`."""
        if self.transition.kind == "weight":
            return "weight_shifted"
        return BREAKER_EVENTS[self.transition.after]

    def payload(self) -> dict[str, Any]:
        t = self.transition
        return {
            "provider": self.provider,
            "from": t.before,
            "to": t.after,
            "reason": t.reason,
            "effective_weight": self.effective_weight,
            "weight_factor": round(self.weight_factor, 3),
        }


def announce(changes: Iterable[HealthChange], bus: EventBus) -> None:
    """Log each change as one key=value line and publish it for consoles."""
    for change in changes:
        t = change.transition
        logger.info(
            "event=%s provider=%s from=%s to=%s effective_weight=%d reason=%r",
            change.event,
            change.provider,
            t.before,
            t.after,
            change.effective_weight,
            t.reason,
        )
        bus.publish(change.event, change.payload())


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
    """One provider's overrides, breaker and recent calls."""

    def __init__(
        self, config: ProviderConfig, window: float, breaker: BreakerSettings, now: float
    ) -> None:
        self.name = config.name
        self.config = config
        self.configured_weight = config.weight
        self.weight_override: int | None = None
        self.paused = False
        self.in_flight = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.consecutive_failures = 0
        self.breaker = Breaker(breaker, now)
        # `rate` and `max_in_flight`, and the hold a throttle answer puts on the provider.
        self.limiter = ProviderLimiter(_limits(config))
        self._window = window
        self._seconds: deque[_Second] = deque()

    @property
    def weight(self) -> int:
        """The weight routing uses now, before pausing and breaker shifts are applied."""
        return self.configured_weight if self.weight_override is None else self.weight_override

    @property
    def shifted_weight(self) -> int:
        """The weight after the breaker's shift; never rounded down to failover-only."""
        weight = self.weight
        factor = self.breaker.weight_factor()
        if weight == 0 or factor >= 1.0:
            return weight
        return max(1, round(weight * factor))

    @property
    def effective_weight(self) -> int:
        """Share of first picks: the shifted weight, 0 while paused or the circuit is open."""
        if self.paused or self.breaker.state is BreakerState.OPEN:
            return 0
        return self.shifted_weight

    def configure(self, config: ProviderConfig, breaker: BreakerSettings) -> None:
        """Take a reloaded configuration; run-time state stays."""
        self.config = config
        self.configured_weight = config.weight
        if self.weight_override == config.weight:
            self.weight_override = None
        self.breaker.reconfigure(breaker)
        self.limiter.reconfigure(_limits(config))

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
        if self.breaker.state is not BreakerState.CLOSED:
            return ProviderState.CIRCUIT_OPEN
        if self.breaker.shift > 0 or self.consecutive_failures >= 3:
            return ProviderState.DEGRADED
        if success_rate is not None and success_rate < degraded_below:
            return ProviderState.DEGRADED
        return ProviderState.HEALTHY

    def change(self, transition: Transition) -> HealthChange:
        return HealthChange(
            self.name, transition, self.effective_weight, self.breaker.weight_factor()
        )


def _limits(config: ProviderConfig) -> Limits:
    return Limits(rate=config.rate, max_in_flight=config.max_in_flight)


@dataclass(frozen=True, slots=True)
class Permit:
    """The right to make one provider call, from `HealthRegistry.acquire`."""

    provider: ProviderHealth
    probe: bool  # admitted as a half-open breaker's probe


class HealthRegistry:
    """Every provider's run-time state; the worker routes from it and reports to it."""

    def __init__(
        self,
        providers: Sequence[ProviderConfig],
        *,
        clock: Callable[[], float],
        breaker: BreakerSettings | None = None,
        window: float = 60.0,
        degraded_below: float = 0.8,
        min_calls: int = 20,
    ) -> None:
        self._clock = clock
        self._window = window
        self._breaker = breaker or BreakerSettings()
        now = clock()
        self._providers = {p.name: ProviderHealth(p, window, self._breaker, now) for p in providers}
        self._degraded_below = degraded_below
        self._min_calls = min_calls
        self._next_tick = 0.0
        self._observers: list[Callable[[str, str, float], None]] = []

    @property
    def names(self) -> list[str]:
        return list(self._providers)

    def add_observer(self, observer: Callable[[str, str, float], None]) -> None:
        """Call `observer(provider, outcome, latency_ms)` after every counted call (metrics)."""
        self._observers.append(observer)

    def _observe(self, name: str, *, ok: bool, transport_ok: bool, latency_ms: float) -> None:
        outcome = "accepted" if ok else "rejected" if transport_ok else "unavailable"
        for observer in self._observers:
            observer(name, outcome, latency_ms)

    def breaker_states(self) -> dict[str, BreakerState]:
        """Each provider's breaker state."""
        return {name: p.breaker.state for name, p in self._providers.items()}

    @property
    def breaker_settings(self) -> BreakerSettings:
        return self._breaker

    def get(self, name: str) -> ProviderHealth:
        try:
            return self._providers[name]
        except KeyError:
            raise UnknownProvider(name, self.names) from None

    def reconfigure(
        self, providers: Sequence[ProviderConfig], breaker_settings: BreakerSettings
    ) -> None:
        """Apply a reloaded configuration: configured weights and breaker settings.

        Each provider's new config (URL and timeout too) is kept as `.config`; the
        worker calls with its own copy (`Worker.update_providers`).
        Providers that still exist keep their run-time state: pause, operator weight
        (dropped if it now equals the configured one), in-flight count, call window,
        breaker state and weight shift. New providers start fresh; removed ones are
        forgotten, and calls still in flight to them end harmlessly.
        """
        now = self._clock()
        updated: dict[str, ProviderHealth] = {}
        for config in providers:
            provider = self._providers.get(config.name)
            if provider is None:
                provider = ProviderHealth(config, self._window, breaker_settings, now)
            else:
                provider.configure(config, breaker_settings)
            updated[config.name] = provider
        added = [n for n in updated if n not in self._providers]
        removed = [n for n in self._providers if n not in updated]
        self._providers = updated
        self._breaker = breaker_settings
        self._next_tick = 0.0  # a new cooldown may end sooner: re-plan at the next tick
        logger.info(
            "event=health_reconfigured providers=%s added=%s removed=%s",
            ",".join(f"{p.name}:{p.weight}" for p in updated.values()),
            ",".join(added) or "-",
            ",".join(removed) or "-",
        )

    # -- routing --------------------------------------------------------------------------

    def candidates(self) -> list[Candidate]:
        """Providers routing may use now, in configuration order, with shifted weights.

        Paused providers, open circuits and half-open ones with their probe out are left out.
        """
        now = self._clock()
        return [
            Candidate(p.name, p.shifted_weight)
            for p in self._providers.values()
            if not p.paused and p.breaker.admits(now)
        ]

    def capacity(self) -> int | None:
        """How many calls could start now: None when unlimited (a circuit is closed).

        Otherwise the free probe slots of half-open (or cooled-down) circuits, so the
        worker claims only as many messages as can actually be tried; 0 means none.
        """
        now = self._clock()
        slots = 0
        for p in self._providers.values():
            if p.paused:
                continue
            if p.breaker.state is BreakerState.CLOSED:
                return None
            if p.breaker.admits(now):
                slots += 1
        return slots

    def routable(self) -> bool:
        """Whether any provider may be tried; when none may, messages wait in the queue."""
        return self.capacity() != 0

    def open_circuits(self) -> list[str]:
        """Providers (not paused) whose circuit is open or half-open."""
        return [
            p.name
            for p in self._providers.values()
            if not p.paused and p.breaker.state is not BreakerState.CLOSED
        ]

    def next_change_at(self) -> float | None:
        """The earliest moment an open circuit lets a probe through."""
        times = [
            at for p in self._providers.values() if (at := p.breaker.next_change_at()) is not None
        ]
        return min(times) if times else None

    def hold(self, name: str, segments: int) -> float:
        """Seconds until the provider may take `segments` more (0: now): its `rate`, its
        `max_in_flight`, or a throttle answer's hold. Unknown providers are never held."""
        provider = self._providers.get(name)
        return 0.0 if provider is None else provider.limiter.wait(segments, self._clock())

    def book(self, name: str, segments: int) -> float:
        """When a message the provider may not take now should be offered again (spread out
        at its rate when many wait)."""
        return self.get(name).limiter.book(segments, self._clock())

    def acquire(self, name: str, segments: int = 1) -> tuple[Permit | None, list[HealthChange]]:
        """Ask the provider's breaker for one call of `segments` now; None when it says no.

        The caller checks `hold` first: a permit spends the provider's rate budget.
        """
        provider = self._providers.get(name)
        if provider is None or provider.paused:
            return None, []
        now = self._clock()
        allowed, transition = provider.breaker.acquire(now)
        changes = [provider.change(transition)] if transition else []
        if not allowed:
            return None, changes
        provider.limiter.start(segments, now)
        provider.in_flight += 1
        probe = provider.breaker.state is BreakerState.HALF_OPEN
        return Permit(provider, probe), changes

    def release(self, permit: Permit) -> None:
        """The permitted call ended without an outcome (cancelled): nothing is counted."""
        permit.provider.in_flight -= 1
        permit.provider.limiter.finish()
        permit.provider.breaker.release(probe=permit.probe)

    def throttled(self, permit: Permit, *, retry_after: float | None, latency_ms: float) -> float:
        """The provider answered "slow down": hold it, and return until when.

        Not a failure: the breaker counts nothing (a probe slot is given back), so a
        throttling provider is slowed, never taken out of routing.
        """
        provider = permit.provider
        provider.in_flight -= 1
        provider.limiter.finish()
        provider.breaker.release(probe=permit.probe)
        for observer in self._observers:
            observer(provider.name, "throttled", latency_ms)
        until = provider.limiter.throttled(self._clock(), retry_after)
        logger.info(
            "event=provider_throttled provider=%s held_s=%.2f",
            provider.name,
            until - self._clock(),
        )
        return until

    def finish(
        self,
        permit: Permit,
        *,
        ok: bool,
        transport_ok: bool,
        latency_ms: float,
        error: str | None,
    ) -> list[HealthChange]:
        """Count the permitted call's outcome.

        `ok` is acceptance (the window's success rate); `transport_ok` is whether the
        provider answered at all sensibly: a 4xx rejection is `transport_ok` and does
        not count against the breaker, a 5xx/408/429, timeout or connection error does.
        """
        provider = permit.provider
        provider.in_flight -= 1
        provider.limiter.finish()
        provider.limiter.accepted()
        now = self._clock()
        provider.record(now, ok=ok, latency_ms=latency_ms, error=error)
        self._observe(provider.name, ok=ok, transport_ok=transport_ok, latency_ms=latency_ms)
        transitions = provider.breaker.record(
            now, ok=transport_ok, latency_ms=latency_ms, probe=permit.probe
        )
        return self._changed(provider, transitions) if transitions else []

    def _changed(
        self, provider: ProviderHealth, transitions: list[Transition]
    ) -> list[HealthChange]:
        reopen = provider.breaker.next_change_at()
        if reopen is not None:
            # Just opened: the next tick must not sleep through the end of its cooldown.
            self._next_tick = min(self._next_tick, reopen)
        return [provider.change(t) for t in transitions]

    def tick(self) -> list[HealthChange]:
        """Let time pass (at most once a `TICK_EVERY`, or when a cooldown ends)."""
        now = self._clock()
        if now < self._next_tick:
            return []
        changes = [p.change(t) for p in self._providers.values() for t in p.breaker.tick(now)]
        reopen = self.next_change_at()
        self._next_tick = min(now + TICK_EVERY, reopen if reopen is not None else math.inf)
        return changes

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
            breaker = provider.breaker
            out.append(
                {
                    "name": name,
                    "state": provider.state(rate, self._degraded_below).value,
                    "paused": provider.paused,
                    "configured_weight": provider.configured_weight,
                    "weight": provider.weight,
                    "effective_weight": provider.effective_weight,
                    "weight_factor": round(breaker.weight_factor(), 3),
                    "shift_reason": breaker.shift_reason if breaker.shift > 0 else None,
                    "breaker": breaker.state.value,
                    "breaker_reason": breaker.reason or None,
                    "breaker_until": breaker.next_change_at(),
                    "calls": calls,
                    "share": round(calls / total, 4) if total else 0.0,
                    "success_rate": round(ok / calls, 4) if calls else None,
                    "p50_ms": None if p50 is None else round(p50, 1),
                    "p95_ms": None if p95 is None else round(p95, 1),
                    "in_flight": provider.in_flight,
                    "rate": provider.config.rate,
                    "max_in_flight": provider.config.max_in_flight,
                    "throttled": provider.limiter.throttled_total,
                    "held_until": held if (held := provider.limiter.held_until) > now else None,
                    "last_error": provider.last_error,
                    "last_error_at": provider.last_error_at,
                }
            )
        return out
