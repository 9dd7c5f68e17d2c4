"""The queue panel: counts by status, the oldest queued message's age, retry waits."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from dispatchd.control.format import fmt_age
from dispatchd.control.protocol import Json

QUEUE_ORDER = (
    "queued",
    "sending",
    "sent",
    "delivered",
    "failed",
    "invalid",
    "expired",
    "unknown",
)


class QueuePanel(Static):
    """Counts by status, the oldest queued message's age, messages waiting for retry."""

    def show(self, queue: Json | None) -> None:
        text = Text()
        text.append("Queue", "bold")
        if queue is None:
            text.append("  unavailable", "red")
            self.update(text)
            return
        text.append(f"  oldest {fmt_age(queue.get('oldest_queued_age_s'))}")
        text.append(f"  retry-wait {queue.get('waiting_retry', 0)}")
        counts: Json = queue.get("counts", {})
        for i, name in enumerate(QUEUE_ORDER):
            text.append("\n" if i % 2 == 0 else "")
            text.append(f"{name:>9} ", "dim")
            text.append(f"{counts.get(name, 0):<6}")
        self.update(text)
