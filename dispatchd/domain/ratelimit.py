"""Per-provider rate limits: segments per second, requests in flight, and throttle answers.

Providers publish their limits in segments (message parts) per second, per number, sender
and account, so the limiter counts segments. It is exact over a sliding window: in no
`window` seconds does the provider get more than `rate` segments, however the sends
cluster (a token bucket lets a full bucket plus a second's refill through in one second).
A message with more segments than `rate` goes alone in its window, since it could never
go otherwise.

A throttle answer (HTTP 429, Twilio 20429, SMPP ESME_RTHROTTLED...) holds the provider
for `Retry-After` seconds, or for a delay that doubles with each throttle in a row.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

# Seconds a provider is held after a throttle answer without Retry-After: 1, 2, 4 ... 60.
THROTTLE_INITIAL = 1.0
THROTTLE_MAX = 60.0
# Seconds before a message turned away for `max_in_flight` is offered again.
IN_FLIGHT_RECHECK = 0.05


@dataclass(frozen=True, slots=True)
class Limits:
    rate: float = 0.0  # segments per window; 0: unlimited
    max_in_flight: int = 0  # requests in flight at most; 0: unlimited
    window: float = 1.0  # seconds


def _whole(limits: Limits) -> Limits:
    """Below one segment a window (Telnyx long codes: 0.1/s) the window grows instead: one
    segment per `window / rate`, since no message has a fraction of a segment."""
    if 0 < limits.rate < 1:
        return Limits(1.0, limits.max_in_flight, limits.window / limits.rate)
    return limits


class ProviderLimiter:
    """The sending budget of one provider, judged at `now` (the caller's clock)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = _whole(limits)
        self._sent: deque[tuple[float, int]] = deque()  # (at, segments) within the window
        self._in_window = 0
        self.in_flight = 0
        self.held_until = 0.0
        self._booked_until = 0.0  # the last slot handed to a message told to come back
        self._throttles_in_a_row = 0
        self.throttled_total = 0

    def reconfigure(self, limits: Limits) -> None:
        self.limits = _whole(limits)

    def _expire(self, now: float) -> None:
        horizon = now - self.limits.window
        while self._sent and self._sent[0][0] <= horizon:
            self._in_window -= self._sent.popleft()[1]

    def wait(self, segments: int, now: float) -> float:
        """Seconds until `segments` may be sent (0: now). With requests in flight at the
        maximum, a short while: any call finishing frees a slot."""
        if now < self.held_until:
            return self.held_until - now
        limits = self.limits
        if limits.max_in_flight and self.in_flight >= limits.max_in_flight:
            return IN_FLIGHT_RECHECK
        if not limits.rate:
            return 0.0
        self._expire(now)
        if not self._sent or self._in_window + segments <= limits.rate:
            return 0.0
        # The earliest time enough of the window has slid past.
        freed = 0
        need = self._in_window + segments - limits.rate
        for at, count in self._sent:
            freed += count
            if freed >= need:
                return max(at + limits.window - now, 0.0) or 1e-3
        return limits.window

    def book(self, segments: int, now: float) -> float:
        """When a message that may not go now should come back.

        Messages turned away together are spread a slot apart at `rate` (not all sent back
        at the moment the window frees, to be turned away again but one); the slot is a
        hint, `wait` still decides when the message is sent.
        """
        at = now + self.wait(segments, now)
        if self.limits.rate:
            at = max(at, self._booked_until)
            self._booked_until = at + segments * self.limits.window / self.limits.rate
        return at

    def start(self, segments: int, now: float) -> None:
        """A request of `segments` goes out now (the caller checked `wait` first)."""
        self.in_flight += 1
        if self.limits.rate:
            self._sent.append((now, segments))
            self._in_window += segments

    def finish(self) -> None:
        """The request answered (or failed); its in-flight slot is free."""
        self.in_flight = max(0, self.in_flight - 1)

    def throttled(self, now: float, retry_after: float | None) -> float:
        """The provider said slow down: hold it; return until when."""
        self.throttled_total += 1
        self._throttles_in_a_row += 1
        if retry_after is None:
            retry_after = min(
                THROTTLE_MAX, THROTTLE_INITIAL * 2.0 ** (self._throttles_in_a_row - 1)
            )
        self.held_until = max(self.held_until, now + min(retry_after, THROTTLE_MAX * 60))
        return self.held_until

    def accepted(self) -> None:
        """An answer that was not a throttle: the escalation starts over."""
        self._throttles_in_a_row = 0
