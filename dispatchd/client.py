"""A small typed async client for the dispatchd HTTP API (aiohttp only).

```python
async with Client("http://127.0.0.1:8080", api_key=KEY) as dispatchd:
    msg = await dispatchd.send("+17034573322", "Hello")
    done = await dispatchd.wait_for_final(msg.id, timeout=60)
    async for event in dispatchd.events(other_id):
        print(event.status, event.at)
```

Results are frozen dataclasses; `raw` keeps the JSON as the server sent it, fields this
version does not know included. An HTTP error raises `ApiError` with the problem+json
details; a network failure raises aiohttp's own `ClientError`.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import aiohttp

from dispatchd.domain.models import Status

__all__ = [
    "ApiError",
    "Attempt",
    "BatchItem",
    "BatchResult",
    "Client",
    "FieldError",
    "HistoryEntry",
    "Message",
    "SendItem",
    "Status",
    "StatusEvent",
]

DEFAULT_TIMEOUT = 30.0
# Longest wait one long poll asks for; the server allows 60, proxies often cut at 60.
POLL_WAIT = 30.0
# Extra seconds the client allows the server beyond the wait it asked for.
POLL_MARGIN = 10.0
# An event stream sends a comment at least every 15 s; silence this long means it is dead.
STREAM_IDLE = 45.0
PAGE_MAX = 500


# -- results ------------------------------------------------------------------------------


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class Attempt:
    """One provider call."""

    provider: str
    started_at: datetime | None
    outcome: str
    http_status: int | None
    latency_ms: float
    error: str | None


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One status change (or a note that kept the status)."""

    status: Status
    at: datetime | None
    detail: str | None


@dataclass(frozen=True, slots=True)
class Message:
    """A message resource; `attempts` and `history` are empty in lists and send answers
    (`raw` has the rest, such as the detailed resource's `status_callbacks`)."""

    id: str
    to_number: str
    message: str
    status: Status
    segments: int
    encoding: str
    provider: str | None
    provider_message_id: str | None
    error_code: str | None
    error_detail: str | None
    created_at: datetime | None
    updated_at: datetime | None
    next_attempt_at: datetime | None
    send_at: datetime | None
    validity_period: float | None
    expires_at: datetime | None
    status_callback_url: str | None
    attempts: tuple[Attempt, ...]
    history: tuple[HistoryEntry, ...]
    raw: Mapping[str, Any]

    @property
    def final(self) -> bool:
        """Whether the status can no longer change."""
        return self.status.final

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Message:
        error = data.get("error") or {}
        return cls(
            id=data["id"],
            to_number=data["to_number"],
            message=data["message"],
            status=Status(data["status"]),
            segments=data["segments"],
            encoding=data["encoding"],
            provider=data.get("provider"),
            provider_message_id=data.get("provider_message_id"),
            error_code=error.get("code"),
            error_detail=error.get("detail"),
            created_at=_time(data.get("created_at")),
            updated_at=_time(data.get("updated_at")),
            next_attempt_at=_time(data.get("next_attempt_at")),
            send_at=_time(data.get("send_at")),
            validity_period=data.get("validity_period"),
            expires_at=_time(data.get("expires_at")),
            status_callback_url=data.get("status_callback_url"),
            attempts=tuple(
                Attempt(
                    a["provider"],
                    _time(a["started_at"]),
                    a["outcome"],
                    a["http_status"],
                    a["latency_ms"],
                    a["error"],
                )
                for a in data.get("attempts", ())
            ),
            history=tuple(
                HistoryEntry(Status(h["status"]), _time(h["at"]), h["detail"])
                for h in data.get("history", ())
            ),
            raw=data,
        )


@dataclass(frozen=True, slots=True)
class StatusEvent:
    """One `status` event of `GET /messages/{id}/events`."""

    event_id: int  # pass as `last_event_id` to resume after this event
    message_id: str
    status: Status
    at: datetime | None
    detail: str | None
    final: bool


@dataclass(frozen=True, slots=True)
class FieldError:
    """What is wrong with one field of a request."""

    field: str
    code: str
    message: str


class ApiError(Exception):
    """dispatchd answered with an error (an RFC 9457 problem)."""

    def __init__(
        self,
        status: int,
        code: str,
        title: str,
        detail: str,
        errors: tuple[FieldError, ...] = (),
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.errors = errors
        self.retry_after = retry_after

    @classmethod
    def from_problem(
        cls, status: int, body: Mapping[str, Any], retry_after: float | None = None
    ) -> ApiError:
        errors = tuple(
            FieldError(str(e.get("field")), str(e.get("code")), str(e.get("message")))
            for e in body.get("errors") or ()
            if isinstance(e, Mapping)
        )
        return cls(
            int(body.get("status", status)),
            str(body.get("code", f"http_{status}")),
            str(body.get("title", "")),
            str(body.get("detail", "")),
            errors,
            retry_after,
        )


@dataclass(frozen=True, slots=True)
class SendItem:
    """One message of a batch (the same fields as `Client.send`)."""

    to_number: str
    message: str
    send_at: datetime | str | None = None
    validity_period: float | None = None
    status_callback_url: str | None = None
    smart_encoding: bool | None = None

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"to_number": self.to_number, "message": self.message}
        if self.send_at is not None:
            when = self.send_at
            body["send_at"] = when.isoformat() if isinstance(when, datetime) else when
        optional = {
            "validity_period": self.validity_period,
            "status_callback_url": self.status_callback_url,
            "smart_encoding": self.smart_encoding,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        return body


@dataclass(frozen=True, slots=True)
class BatchItem:
    """The outcome of one message of a batch: `message` if accepted, else `error`."""

    index: int
    status: int
    message: Message | None
    error: ApiError | None


@dataclass(frozen=True, slots=True)
class BatchResult:
    accepted: int
    rejected: int
    results: tuple[BatchItem, ...]


# -- the client ---------------------------------------------------------------------------


def _retry_after(resp: aiohttp.ClientResponse) -> float | None:
    value = resp.headers.get("Retry-After", "").strip()
    # ASCII digits only: str.isdigit() is also true for "²" and other scripts' digits,
    # which float() then refuses.
    return float(value) if value.isascii() and value.isdigit() else None


def _message_path(msg_id: str) -> str:
    """The path of a message, its id quoted whole: an id with "/" or "?" stays one segment."""
    return f"/messages/{quote(msg_id, safe='')}"


async def _raise_for_problem(resp: aiohttp.ClientResponse) -> None:
    if resp.status < 400:
        return
    text = await resp.text(errors="replace")
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict) and "code" in body:
        raise ApiError.from_problem(resp.status, body, _retry_after(resp))
    reason = resp.reason or "error"
    raise ApiError(resp.status, f"http_{resp.status}", reason, text[:200] or reason)


class Client:
    """The dispatchd HTTP API. Use as `async with Client(url) as c:` (or pass a session)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._session = session
        self._owns_session = session is None
        self._timeout = timeout

    async def __aenter__(self) -> Self:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session if this client opened it."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use the client as `async with Client(...)` or pass a session")
        return self._session

    async def _json(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        seconds: float | None = None,
    ) -> Any:
        """One request; its JSON answer, or ApiError."""
        async with self.session.request(
            method,
            self.base_url + path,
            params=params,
            json=body,
            headers={**self._headers, **(headers or {})},
            timeout=aiohttp.ClientTimeout(total=seconds or self._timeout),
        ) as resp:
            await _raise_for_problem(resp)
            return await resp.json(content_type=None)

    # -- sending --------------------------------------------------------------------------

    async def send(
        self,
        to_number: str,
        message: str,
        *,
        send_at: datetime | str | None = None,
        validity_period: float | None = None,
        status_callback_url: str | None = None,
        smart_encoding: bool | None = None,
        idempotency_key: str | None = None,
    ) -> Message:
        """`POST /messages`: the accepted message (status `queued`)."""
        item = SendItem(
            to_number, message, send_at, validity_period, status_callback_url, smart_encoding
        )
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        data = await self._json("POST", "/messages", body=item.as_json(), headers=headers)
        return Message.from_json(data)

    async def send_batch(
        self, items: Sequence[SendItem], *, idempotency_key: str | None = None
    ) -> BatchResult:
        """`POST /messages/batch`: each message accepted or rejected on its own."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        body = {"messages": [item.as_json() for item in items]}
        data = await self._json("POST", "/messages/batch", body=body, headers=headers)
        results = tuple(
            BatchItem(
                index=r["index"],
                status=r["status"],
                message=Message.from_json(r["message"]) if r.get("message") else None,
                error=ApiError.from_problem(r["status"], r["problem"])
                if r.get("problem")
                else None,
            )
            for r in data["results"]
        )
        return BatchResult(data["accepted"], data["rejected"], results)

    # -- reading --------------------------------------------------------------------------

    async def get(self, msg_id: str) -> Message:
        """`GET /messages/{id}`: the message with its attempts and history."""
        return Message.from_json(await self._json("GET", _message_path(msg_id)))

    # The deadline sizes each long poll, which a caller's asyncio.timeout could not do.
    async def wait_for_final(self, msg_id: str, timeout: float = 60.0) -> Message:  # noqa: ASYNC109
        """The message once its status is final, by long polling; TimeoutError after
        `timeout` seconds."""
        deadline = time.monotonic() + timeout
        seen: Status | None = None
        while True:
            left = deadline - time.monotonic()
            wait = max(0.0, min(POLL_WAIT, left))
            params = {"wait": f"{wait:.3f}"}
            if seen is not None:
                # The status we last saw: a change in between answers at once.
                params["status"] = seen.value
            data = await self._json(
                "GET", _message_path(msg_id), params=params, seconds=wait + POLL_MARGIN
            )
            msg = Message.from_json(data)
            if msg.final:
                return msg
            if left <= 0:
                raise TimeoutError(f"message {msg_id} is still {msg.status} after {timeout:g}s")
            seen = msg.status

    async def events(
        self, msg_id: str, *, last_event_id: int | None = None
    ) -> AsyncIterator[StatusEvent]:
        """`GET /messages/{id}/events`: every status change, from the first (or after
        `last_event_id`); ends after the final one, or early if the server closes the
        stream (shutting down): resume with the last event's `event_id`."""
        headers = {**self._headers, "Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        async with self.session.get(
            f"{self.base_url}{_message_path(msg_id)}/events",
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=None, sock_read=STREAM_IDLE),
        ) as resp:
            await _raise_for_problem(resp)
            async for event in _parse_sse(resp.content):
                yield event
                if event.final:
                    return

    async def _pages(
        self, to_number: str | None, status: Status | str | None, limit: int | None, size: int
    ) -> AsyncIterator[Message]:
        params: dict[str, str] = {"limit": str(min(limit or size, size))}
        if to_number is not None:
            params["to_number"] = to_number
        if status is not None:
            params["status"] = Status(status).value
        left = limit
        while True:
            page = await self._json("GET", "/messages", params=params)
            for item in page["items"]:
                if left is not None:
                    if left <= 0:
                        return
                    left -= 1
                yield Message.from_json(item)
            cursor = page.get("next_cursor")
            if not cursor or left == 0:
                return
            params["cursor"] = cursor

    def list(
        self,
        to_number: str | None = None,
        status: Status | str | None = None,
        limit: int | None = None,
        *,
        page_size: int = PAGE_MAX,
    ) -> AsyncIterator[Message]:
        """`GET /messages`, newest first, following `next_cursor`; at most `limit` messages
        (all when None), fetched `page_size` (1 to 500) at a time."""
        return self._pages(to_number, status, limit, page_size)


async def _parse_sse(stream: aiohttp.StreamReader) -> AsyncIterator[StatusEvent]:
    """`status` events from a Server-Sent Events stream; comments and others skipped."""
    kind, event_id, data = "message", None, list[str]()
    async for raw in stream:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if kind == "status" and data and event_id is not None:
                yield _status_event(event_id, "\n".join(data))
            kind, event_id, data = "message", None, list[str]()
            continue
        if line.startswith(":"):
            continue  # a heartbeat
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            kind = value
        elif name == "id":
            event_id = value
        elif name == "data":
            data.append(value)


def _status_event(event_id: str, text: str) -> StatusEvent:
    data = json.loads(text)
    return StatusEvent(
        event_id=int(event_id),
        message_id=data["id"],
        status=Status(data["status"]),
        at=_time(data.get("at")),
        detail=data.get("detail"),
        final=bool(data.get("final")),
    )
