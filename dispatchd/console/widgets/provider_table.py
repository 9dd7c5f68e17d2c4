"""The provider table: one row per provider, updated in place."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.text import Text
from textual.widgets import DataTable

from dispatchd.console.widgets.format import fmt_throttled
from dispatchd.control.format import fmt_ms, fmt_pct
from dispatchd.control.protocol import Json

STATE_STYLE = {
    "healthy": "green",
    "degraded": "yellow",
    "circuit_open": "bold red",
    "paused": "bold magenta",
}
STATE_LABEL = {"circuit_open": "circuit open"}


class ProviderTable(DataTable[Any]):
    """One row per provider: state, weights, share, success, latency, in flight, throttle
    answers (and `held Ns` while a throttle answer holds the provider), last error."""

    COLUMNS = (
        ("provider", "Provider"),
        ("state", "State"),
        ("weight", "Weight"),
        ("share", "Share"),
        ("ok", "OK"),
        ("p50", "p50"),
        ("p95", "p95"),
        ("inflight", "Fly"),
        ("throttled", "Throttled"),
        ("error", "Last error"),
    )

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.zebra_stripes = False
        for key, label in self.COLUMNS:
            self.add_column(label, key=key)

    @property
    def selected(self) -> str | None:
        """The provider under the cursor."""
        if not self.row_count:
            return None
        key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        return None if key.value is None else str(key.value)

    def update_providers(self, providers: Iterable[Json], now: float | None = None) -> None:
        """Show these providers; `now` is the daemon's time the holds are judged at."""
        for p in providers:
            name = str(p["name"])
            state = str(p.get("state", "?"))
            configured, effective = p.get("configured_weight"), p.get("effective_weight")
            weight = f"{configured}" if configured == effective else f"{configured}→{effective}"
            cells = {
                "provider": Text(name, "bold"),
                "state": Text(STATE_LABEL.get(state, state), STATE_STYLE.get(state, "")),
                "weight": weight,
                "share": fmt_pct(p.get("share")) if p.get("calls") else "-",
                "ok": fmt_pct(p.get("success_rate")),
                "p50": fmt_ms(p.get("p50_ms")),
                "p95": fmt_ms(p.get("p95_ms")),
                "inflight": str(p.get("in_flight", 0)),
                "throttled": _throttled(p, now),
                "error": Text(str(p.get("last_error") or ""), "dim red"),
            }
            if name in self.rows:
                for column, value in cells.items():
                    self.update_cell(name, column, value, update_width=True)
            else:
                self.add_row(*cells.values(), key=name)


def _throttled(p: Json, now: float | None) -> Text:
    text = fmt_throttled(p.get("throttled", 0), p.get("held_until"), now)
    return Text(text, "yellow" if " held " in text else "")
