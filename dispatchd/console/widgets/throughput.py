"""Throughput: per-second sparklines of accepted, sent, delivered and failed messages."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Label, Sparkline

from dispatchd.control.protocol import Json

SPARK_SERIES = ("accepted", "sent", "delivered", "failed")
SPARK_HISTORY = 120  # seconds shown, however wide the sparkline (bars show the max)


class Throughput(Vertical):
    """Per-second sparklines of accepted, sent, delivered and failed messages."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._series: dict[str, deque[float]] = {
            name: deque([0.0] * SPARK_HISTORY, maxlen=SPARK_HISTORY) for name in SPARK_SERIES
        }

    def compose(self) -> ComposeResult:
        yield Label("Throughput per second, last 2 min", classes="section-title")
        for name in SPARK_SERIES:
            with Horizontal(classes="spark-row"):
                yield Label(name, classes="spark-label")
                yield Sparkline([], id=f"spark-{name}", classes=f"spark {name}")
                yield Label("0", id=f"rate-{name}", classes="spark-value")

    def set_rates(self, samples: Sequence[Json]) -> None:
        for name, series in self._series.items():
            series.extend([0.0] * SPARK_HISTORY)
            series.extend(float(s.get(name, 0)) for s in samples)
        self._refresh_all()

    def add_sample(self, sample: Json) -> None:
        for name, series in self._series.items():
            series.append(float(sample.get(name, 0)))
        self._refresh_all()

    def _refresh_all(self) -> None:
        for name, series in self._series.items():
            self.query_one(f"#spark-{name}", Sparkline).data = list(series)
            self.query_one(f"#rate-{name}", Label).update(f"{series[-1]:.0f}")
