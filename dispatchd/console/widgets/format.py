"""Pure formatting shared by the widgets and screens: values as the console shows them."""

from __future__ import annotations

import math
from datetime import datetime, tzinfo

from dispatchd.control.format import fmt_age

# A message status or event type -> its Rich style, wherever one is shown.
EVENT_STYLE = {
    "accepted": "cyan",
    "sent": "blue",
    "delivered": "green",
    "failover": "yellow",
    "retry_scheduled": "yellow",
    "failed": "bold red",
    "expired": "red",
    "invalid": "red",
    "unknown": "magenta",
    "number_suppressed": "bold red",
    "breaker_opened": "bold red",
    "breaker_half_open": "yellow",
    "breaker_closed": "green",
    "weight_shifted": "yellow",
}


def fmt_throttled(count: object, held_until: object, now: float | None) -> str:
    """Throttle answers so far, and `held Ns` while a throttle hold lasts (as of `now`)."""
    text = str(count) if isinstance(count, int) else "-"
    if isinstance(held_until, int | float) and now is not None and held_until > now:
        text += f" held {fmt_age(math.ceil(held_until - now))}"
    return text


def fmt_clock(at: float | None, tz: tzinfo | None) -> str:
    if at is None:
        return "-"
    return datetime.fromtimestamp(at, tz).strftime("%H:%M:%S")


def fmt_iso(value: str | None, tz: tzinfo | None, *, date: bool = True) -> str:
    """An RFC 3339 time from the daemon, shown in the console's zone, to the millisecond."""
    if not value:
        return "-"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    shape = "%Y-%m-%d %H:%M:%S.%f" if date else "%H:%M:%S.%f"
    return moment.astimezone(tz).strftime(shape)[:-3]
