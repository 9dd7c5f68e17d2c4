"""Values of the control protocol as text: shared by the console and `dispatchd status`.

Pure, and free of Textual, so `dispatchd status` runs on servers that have no console.
"""

from __future__ import annotations


def fmt_ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.1f}s" if value >= 10_000 else f"{value:.0f}ms"


def fmt_pct(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 100:.0f}%" if value >= 0.995 else f"{value:.1%}"


def fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    # Rounded first so that 59.6 s reads "1m00s", not "60s".
    seconds = float(max(0, round(seconds)))
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    return f"{seconds // 3600:.0f}h{seconds % 3600 // 60:02.0f}m"
