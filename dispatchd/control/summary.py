"""`dispatchd status`: a control snapshot (see `protocol`) as one screen of plain text.

Pure: a snapshot dict in, text out, so it is tested without a daemon. Statuses and rate
series are read from the snapshot rather than listed here, so a daemon that knows more of
them than this module is still summarised in full.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from dispatchd.control.format import fmt_age, fmt_ms, fmt_pct
from dispatchd.control.protocol import PROTOCOL_VERSION, Json

# Rate windows in seconds; the snapshot keeps up to five minutes of one-second samples.
RATE_WINDOWS = ((10, "last 10s"), (60, "last 1m"))
STATE_LABEL = {"circuit_open": "circuit open"}
PROVIDER_COLUMNS = ("provider", "state", "weight", "calls", "ok", "p95", "inflight", "limit")


def render(snapshot: Json, *, width: int = 80) -> str:
    """The summary: header, providers, queue and rates, each block separated by a blank line."""
    now = _daemon_now(snapshot)
    blocks = [
        [_header(snapshot)],
        _providers(snapshot.get("providers") or [], now, width),
        _queue(snapshot.get("queue")),
        _rates(snapshot.get("rates") or []),
    ]
    return "\n\n".join("\n".join(block) for block in blocks if block) + "\n"


def _header(snapshot: Json) -> str:
    parts = [
        f"dispatchd pid {snapshot.get('pid', '?')}",
        f"up {fmt_age(_number(snapshot.get('uptime_s')))}",
        f"instance {snapshot.get('instance', '?')}",
    ]
    protocol = snapshot.get("protocol")
    if protocol != PROTOCOL_VERSION:
        # Rendering goes on: the fields may still mostly match, and the operator is warned.
        parts.append(f"control protocol {protocol}, expected {PROTOCOL_VERSION}")
    return ", ".join(parts)


def _daemon_now(snapshot: Json) -> float | None:
    """The daemon's clock when it took the snapshot: holds are judged by it, not ours."""
    started, uptime = _number(snapshot.get("started_at")), _number(snapshot.get("uptime_s"))
    return None if started is None or uptime is None else started + uptime


def _providers(providers: Sequence[Json], now: float | None, width: int) -> list[str]:
    if not providers:
        return ["no providers"]
    rows = [[*PROVIDER_COLUMNS, "throttled"]]
    notes = []
    for p in providers:
        state = str(p.get("state", "?"))
        weight, effective = p.get("weight"), p.get("effective_weight")
        in_flight, cap = p.get("in_flight", 0), p.get("max_in_flight") or 0
        rate = _number(p.get("rate")) or 0.0
        rows.append(
            [
                str(p.get("name", "?")),
                STATE_LABEL.get(state, state),
                f"{weight}" if weight == effective else f"{weight}->{effective}",
                str(p.get("calls", 0)),
                fmt_pct(_number(p.get("success_rate"))),
                fmt_ms(_number(p.get("p95_ms"))),
                f"{in_flight}/{cap}" if cap else str(in_flight),
                f"{rate:g}/s" if rate else "-",
                _throttled(p, now),
            ]
        )
        # Why a provider gets less traffic; "paused" says it all, whatever the breaker thinks.
        reason = p.get("breaker_reason") or p.get("shift_reason")
        if state in ("degraded", "circuit_open") and reason:
            notes.append(
                _fit(f"  {p.get('name')}: {STATE_LABEL.get(state, state)}: {reason}", width)
            )
        if p.get("last_error"):
            ago = _number(p.get("last_error_at"))
            when = "" if ago is None or now is None else f" ({fmt_age(now - ago)} ago)"
            line = f"  {p.get('name')}: last error{when}: {p['last_error']}"
            notes.append(_fit(line, width))
    caption = "(calls, ok and p95 over the last 60 s; limit in segments per second)"
    return [*table(rows), *notes, caption]


def _fit(line: str, width: int) -> str:
    return line if len(line) <= width else line[: width - 3] + "..."


def _throttled(p: Json, now: float | None) -> str:
    text = str(p.get("throttled", 0))
    held = _number(p.get("held_until"))
    if held is not None and now is not None and held > now:
        text += f" held {fmt_age(held - now)}"
    return text


def _queue(queue: Json | None) -> list[str]:
    if queue is None:
        return ["queue: unknown (the daemon could not read its database)"]
    counts: Mapping[str, Any] = queue.get("counts") or {}
    lines = table([["queue", *counts], ["", *(str(n) for n in counts.values())]])
    oldest = _number(queue.get("oldest_queued_age_s"))
    lines.append(f"oldest queued {fmt_age(oldest)}, waiting retry {queue.get('waiting_retry', 0)}")
    return lines


def _rates(samples: Sequence[Mapping[str, Any]]) -> list[str]:
    if not samples:
        return ["rates: no samples yet"]
    series = [name for name in samples[-1] if name != "at"]
    rows = [["per second", *series]]
    for seconds, label in RATE_WINDOWS:
        window = samples[-seconds:]
        # Averaged over the samples there are: a daemon up for 3 s has 3, not 10.
        rows.append(
            [
                label,
                *(
                    f"{sum(_number(s.get(n)) or 0 for s in window) / len(window):.1f}"
                    for n in series
                ),
            ]
        )
    return table(rows)


def table(rows: Iterable[Sequence[str]]) -> list[str]:
    """Rows as left-aligned columns two spaces apart, trailing blanks trimmed."""
    rows = list(rows)
    widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(max(map(len, rows)))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)).rstrip()
        for row in rows
    ]


def _number(value: object) -> float | None:
    # bool is an int; a flag where a number belongs is not a number.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None
