"""The API's JSON renderings: the message resource and the problems several handlers share."""

from __future__ import annotations

from typing import Any

from dispatchd.domain.models import Message, Status, isoformat
from dispatchd.http.problems import Problem


def _seconds(value: float | None) -> float | int | None:
    """Seconds as the client wrote them: 900, not 900.0 (SQLite hands back REALs)."""
    if value is not None and value.is_integer():
        return int(value)
    return value


def message_resource(msg: Message, *, detailed: bool = False) -> dict[str, Any]:
    """The public JSON shape of a message."""
    error = (
        {"code": msg.error_code, "detail": msg.error_detail} if msg.error_code is not None else None
    )
    out: dict[str, Any] = {
        "id": msg.id,
        "to_number": msg.to_number,
        "message": msg.body,
        "status": msg.status.value,
        "segments": msg.segments,
        "encoding": msg.encoding,
        "provider": msg.provider,
        "provider_message_id": msg.provider_message_id,
        "error": error,
        "created_at": isoformat(msg.created_at),
        "updated_at": isoformat(msg.updated_at),
        "next_attempt_at": isoformat(msg.next_attempt_at) if msg.status is Status.QUEUED else None,
        "send_at": isoformat(msg.send_at),
        "validity_period": _seconds(msg.validity_period),
        "expires_at": isoformat(msg.expires_at),
        "status_callback_url": msg.status_callback_url,
    }
    if detailed:
        out["attempts"] = [
            {
                "provider": a.provider,
                "started_at": isoformat(a.started_at),
                "outcome": a.outcome.value,
                "http_status": a.http_status,
                "latency_ms": a.latency_ms,
                "error": a.error,
            }
            for a in msg.attempts
        ]
        out["history"] = [
            {"status": h.status.value, "at": isoformat(h.at), "detail": h.detail}
            for h in msg.history
        ]
        out["status_callbacks"] = [
            {
                "status": c.status.value,
                "url": c.url,
                "state": c.state,
                "attempts": c.attempts,
                "last_http_status": c.last_http_status,
                "last_error": c.last_error,
                "created_at": isoformat(c.created_at),
                "finished_at": isoformat(c.finished_at),
            }
            for c in msg.callbacks
        ]
    return out


def no_such_message(msg_id: str) -> Problem:
    """The 404 for a message id nobody sent."""
    return Problem(404, "message_not_found", "Message not found", f"No message has id {msg_id!r}.")
