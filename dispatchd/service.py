"""Use cases: accept a message, apply a delivery report, answer questions about messages."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from dispatchd.config import DeliveryConfig, WebhooksConfig
from dispatchd.domain.addresses import private_literal
from dispatchd.domain.encoding import segment, smart_encode
from dispatchd.domain.errors import DispatchdError
from dispatchd.domain.ids import IdGenerator
from dispatchd.domain.models import REPORT_STATUSES, DeliveryReport, Message, Status
from dispatchd.domain.numbers import NumberError, to_e164
from dispatchd.events import EventBus
from dispatchd.store import sqlite as store_mod
from dispatchd.store.sqlite import ReportResult, SavedResponse, Store

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FieldError:
    field: str
    code: str
    message: str


class ValidationFailed(DispatchdError):
    """The request has invalid fields."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__(" ".join(e.message for e in errors))
        self.errors = errors


class NumberSuppressed(DispatchdError):
    """The number was reported invalid earlier, so messages to it are refused."""


class UnknownMessage(DispatchdError):
    """There is no such message."""


class BadToken(DispatchdError):
    """The callback token is missing or wrong."""


class NotRetryable(DispatchdError):
    """Only failed or expired messages can be retried."""


class NotSuppressed(DispatchdError):
    """The number is not suppressed."""


RETRYABLE_STATUSES = frozenset({Status.FAILED, Status.EXPIRED})


@dataclass(frozen=True, slots=True)
class SendRequest:
    """A validated send: E.164 number, final text, its segmentation and the options."""

    to_number: str
    message: str
    segments: int
    encoding: str
    send_at: float | None = None
    validity_period: float | None = None
    status_callback_url: str | None = None


MAX_SCHEDULE_AHEAD = 35 * 86_400  # seconds; send_at further ahead is refused
MAX_VALIDITY = 30 * 86_400  # seconds; the longest validity_period
MAX_URL_LENGTH = 2048
# RFC 3339 date-time (section 5.6); ASCII digits only.
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})",
    re.ASCII,
)
# The same without a zone: a local time, which would be read in the server's timezone.
_LOCAL_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?")
_TIME_EXAMPLE = "an RFC 3339 time with a timezone, such as 2025-01-31T09:00:00Z"


def _parse_send_at(value: Any, now: float) -> float | FieldError | None:
    """The epoch time of `send_at`, None when absent, or what is wrong with it."""
    if value is None:
        return None
    if not isinstance(value, str):
        return FieldError("send_at", "not_a_string", f"send_at must be {_TIME_EXAMPLE}.")
    if not _RFC3339.fullmatch(value):
        if _LOCAL_TIME.fullmatch(value):
            return FieldError(
                "send_at",
                "no_timezone",
                "send_at has no timezone; add Z (UTC) or an offset such as +02:00.",
            )
        return FieldError("send_at", "unparseable", f"send_at must be {_TIME_EXAMPLE}.")
    try:
        at = datetime.fromisoformat(value.upper()).timestamp()
    except (ValueError, OverflowError):
        return FieldError(
            "send_at", "unparseable", "send_at is not a real date and time (check each field)."
        )
    if at > now + MAX_SCHEDULE_AHEAD:
        return FieldError(
            "send_at",
            "out_of_range",
            f"send_at is more than {MAX_SCHEDULE_AHEAD // 86_400} days ahead; "
            "messages can be scheduled at most that far ahead.",
        )
    return at


def _parse_validity(value: Any) -> float | FieldError | None:
    """`validity_period` in seconds, None when absent, or what is wrong with it."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return FieldError(
            "validity_period", "not_a_number", "validity_period must be a number of seconds."
        )
    # Written as a negated range so NaN fails it too.
    if not 0 < value <= MAX_VALIDITY:
        return FieldError(
            "validity_period",
            "out_of_range",
            f"validity_period must be more than 0 and at most {MAX_VALIDITY} seconds (30 days).",
        )
    return float(value)


def _parse_flag(name: str, value: Any, default: bool) -> bool | FieldError:
    if value is None:
        return default
    if not isinstance(value, bool):
        return FieldError(name, "not_a_boolean", f"{name} must be true or false.")
    return value


def _parse_callback_url(
    value: Any, *, can_sign: bool, allow_private: bool
) -> str | FieldError | None:
    """A client's status callback URL, None when absent, or what is wrong with it."""
    name = "status_callback_url"
    if value is None:
        return None
    if not isinstance(value, str):
        return FieldError(name, "not_a_string", f"{name} must be a string.")
    if len(value) > MAX_URL_LENGTH:
        return FieldError(name, "too_long", f"{name} is longer than {MAX_URL_LENGTH} characters.")
    try:
        parts = urlsplit(value)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        ok = ok and value.isascii() and value.isprintable() and " " not in value
        ok = ok and (parts.port is None or parts.port > 0)
    except ValueError:  # a bad port or IPv6 literal
        ok = False
    if not ok:
        return FieldError(
            name,
            "invalid_url",
            f"{name} must be an http or https URL with a host, in ASCII without spaces "
            "(percent-encode anything else).",
        )
    if not can_sign:
        return FieldError(
            name,
            "callbacks_disabled",
            "This server has no [webhooks] secret, so it cannot sign status callbacks and "
            f"does not send them; leave out {name} or ask the operator to set one.",
        )
    if not allow_private and private_literal(parts.hostname) is not None:
        # Host names are checked when connecting: they may resolve elsewhere by then.
        return FieldError(
            name,
            "private_address",
            f"{name} points at a private or local address ({parts.hostname}); this server "
            "sends status callbacks only to public addresses.",
        )
    return value


class Service:
    """Accepts messages and delivery reports; decides, then asks the store to persist."""

    def __init__(
        self,
        store: Store,
        delivery: DeliveryConfig,
        *,
        public_url: str,
        secret: str,
        suppressed: set[str],
        on_new_work: Callable[[], None],
        ids: IdGenerator | None = None,
        clock: Callable[[], float] = time.time,
        events: EventBus | None = None,
        webhooks: WebhooksConfig | None = None,
    ) -> None:
        self.store = store
        self._delivery = delivery
        self._webhooks = webhooks or WebhooksConfig()
        self._public_url = public_url.rstrip("/")
        self._secret = secret.encode()
        # A cache of the suppressions table: checked on every accept, so kept in memory.
        self._suppressed = suppressed
        self._on_new_work = on_new_work
        self._ids = ids or IdGenerator()
        self._clock = clock
        self._events = events or EventBus(clock=clock)

    # -- accepting ------------------------------------------------------------------------

    def validate(self, data: Mapping[str, Any]) -> SendRequest:
        """Check the fields of a send request; raise ValidationFailed listing every problem."""
        errors: list[FieldError] = []
        e164 = self._check_number(data.get("to_number"), errors)
        send_at = _parse_send_at(data.get("send_at"), self._clock())
        validity = _parse_validity(data.get("validity_period"))
        smart = _parse_flag(
            "smart_encoding", data.get("smart_encoding"), self._delivery.smart_encoding
        )
        url = _parse_callback_url(
            data.get("status_callback_url"),
            can_sign=bool(self._webhooks.secret),
            allow_private=self._webhooks.allow_private_addresses,
        )
        errors += [v for v in (send_at, validity, smart, url) if isinstance(v, FieldError)]
        text = self._check_text(data.get("message"), smart is True, errors)
        if errors or text is None:
            raise ValidationFailed(errors)
        seg = segment(text)
        return SendRequest(
            e164,
            text,
            seg.segments,
            seg.encoding.value,
            send_at=send_at if isinstance(send_at, float) else None,
            validity_period=validity if isinstance(validity, float) else None,
            status_callback_url=url if isinstance(url, str) else self._webhooks.default_url,
        )

    def _check_number(self, number: Any, errors: list[FieldError]) -> str:
        """`to_number` in E.164, or "" with its problem added to `errors`."""
        if number is None:
            errors.append(FieldError("to_number", "missing", "to_number is required."))
        elif not isinstance(number, str):
            errors.append(FieldError("to_number", "not_a_string", "to_number must be a string."))
        else:
            try:
                return to_e164(number, self._delivery.default_region)
            except NumberError as exc:
                errors.append(FieldError("to_number", exc.code, exc.message))
        return ""

    def _check_text(self, text: object, smart: bool, errors: list[FieldError]) -> str | None:
        """The final text (smart-encoded if asked), or None with its problem in `errors`."""
        if text is None:
            errors.append(FieldError("message", "missing", "message is required."))
            return None
        if not isinstance(text, str):
            errors.append(FieldError("message", "not_a_string", "message must be a string."))
            return None
        if smart:
            text = smart_encode(text)
        if not text.strip():
            errors.append(FieldError("message", "empty", "message must contain some text."))
            return None
        seg = segment(text)
        if seg.segments > self._delivery.max_segments:
            errors.append(
                FieldError(
                    "message",
                    "too_long",
                    f"message needs {seg.segments} SMS segments ({seg.encoding}); "
                    f"at most {self._delivery.max_segments} are allowed.",
                )
            )
            return None
        return text

    async def accept(
        self,
        request: SendRequest,
        *,
        retry_of: str | None = None,
        save_response: Callable[[Message], SavedResponse] | None = None,
    ) -> Message:
        """Store a new message durably and wake the worker; refuse suppressed numbers.

        `save_response` renders the response to keep for an idempotency key; it is stored
        in the message's own transaction, so a crash cannot keep one without the other.
        """
        self.check_not_suppressed(request.to_number)
        msg = self._new_message(request, self._clock())
        detail = "accepted" if retry_of is None else f"accepted: operator retry of {retry_of}"
        saved = save_response(msg) if save_response is not None else None
        await self.store.insert(msg, detail, saved)
        self._accepted(msg, retry_of)
        self._on_new_work()
        return msg

    async def accept_many(
        self,
        requests: Sequence[SendRequest],
        *,
        save_response: Callable[[list[Message]], SavedResponse] | None = None,
    ) -> list[Message]:
        """Store new messages in one transaction (all or none) and wake the worker once.

        Messages are created in the order given, so their ids keep that order. Refuses the
        lot if any number is suppressed: `check_not_suppressed` each first to sort those out.
        """
        for request in requests:
            self.check_not_suppressed(request.to_number)
        now = self._clock()
        msgs = [self._new_message(r, now) for r in requests]
        saved = save_response(msgs) if save_response is not None else None
        if msgs or saved is not None:
            await self.store.insert_many(msgs, "accepted", saved)
        for msg in msgs:
            self._accepted(msg, None)
        if msgs:
            self._on_new_work()
        return msgs

    def _new_message(self, request: SendRequest, now: float) -> Message:
        """A queued message due at `send_at` (or now), valid from then on."""
        start = now if request.send_at is None else max(now, request.send_at)
        return Message(
            id=self._ids.new(),
            to_number=request.to_number,
            body=request.message,
            status=Status.QUEUED,
            segments=request.segments,
            encoding=request.encoding,
            created_at=now,
            updated_at=now,
            expires_at=start + (request.validity_period or self._delivery.max_age),
            next_attempt_at=start,
            send_at=request.send_at,
            validity_period=request.validity_period,
            status_callback_url=request.status_callback_url,
        )

    def _accepted(self, msg: Message, retry_of: str | None) -> None:
        logger.info("event=accepted id=%s segments=%d", msg.id, msg.segments)
        self._events.publish(
            "accepted",
            {"id": msg.id, "number": msg.to_number, "segments": msg.segments, "retry_of": retry_of},
        )

    def is_suppressed(self, number: str) -> bool:
        return number in self._suppressed

    def check_not_suppressed(self, number: str) -> None:
        """Raise NumberSuppressed if messages to `number` are refused."""
        if number in self._suppressed:
            raise NumberSuppressed(
                f"{number} was reported invalid by a provider; messages to it are not accepted."
            )

    # -- delivery reports -----------------------------------------------------------------

    def token(self, msg_id: str) -> str:
        """The callback token for a message: an HMAC of its id under the daemon's secret."""
        return hmac.new(self._secret, msg_id.encode(), hashlib.sha256).hexdigest()[:32]

    def callback_url(self, msg_id: str) -> str:
        return f"{self._public_url}/messages/{msg_id}/delivery_status?token={self.token(msg_id)}"

    def check_token(self, msg_id: str, token: str | None) -> None:
        # compare_digest keeps the comparison constant-time, so timing leaks nothing.
        if not token or not hmac.compare_digest(self.token(msg_id), token):
            raise BadToken()

    async def report(
        self, msg_id: str, report: DeliveryReport, token: str | None, provider: str | None = None
    ) -> ReportResult:
        """Apply a provider's delivery report to the message `msg_id`."""
        if report.status not in REPORT_STATUSES:
            raise ValueError(f"{report.status} is not a delivery report status")
        self.check_token(msg_id, token)
        result = await self.store.apply_report(msg_id, report, provider, self._clock())
        if not result.found:
            raise UnknownMessage()
        if result.applied:
            logger.info("event=report id=%s status=%s", msg_id, report.status)
            self._events.publish(
                report.status.value,
                {"id": msg_id, "number": result.number, "provider": provider, "via": "report"},
            )
        else:
            logger.info("event=report_ignored id=%s status=%s", msg_id, report.status)
        if result.applied and report.status is Status.INVALID:
            if result.number is not None:
                self._suppressed.add(result.number)
            logger.info(
                "event=number_suppressed id=%s also_invalidated=%d",
                msg_id,
                len(result.requeued_invalid),
            )
            for other in result.requeued_invalid:
                self._events.publish(
                    "invalid", {"id": other, "number": result.number, "code": "number_suppressed"}
                )
            self._events.publish(
                "number_suppressed",
                {
                    "id": msg_id,
                    "number": result.number,
                    "also_invalidated": len(result.requeued_invalid),
                },
            )
        return result

    async def report_by_provider_id(
        self, report: DeliveryReport, token: str | None
    ) -> ReportResult:
        """Seed-compatible reports, matched on the provider's own message id."""
        msg_id = await self.store.id_for_provider_message(report.provider_message_id)
        if msg_id is None:
            raise UnknownMessage()
        return await self.report(msg_id, report, token)

    # -- operator actions (control socket) -------------------------------------------------

    async def retry(self, msg_id: str) -> Message:
        """Send a failed or expired message again, as a new message.

        The original keeps its final status (final statuses never change) and gains a
        history note naming the new message, which is accepted like any other.
        """
        original = await self.store.get(msg_id)
        if original is None:
            raise UnknownMessage(f"No message has id {msg_id!r}.")
        if original.status not in RETRYABLE_STATUSES:
            raise NotRetryable(
                f"Message {msg_id} is {original.status}; only failed or expired messages "
                "can be retried."
            )
        # A new message, sent at once, but keeping the original's validity and callback URL.
        request = SendRequest(
            original.to_number,
            original.body,
            original.segments,
            original.encoding,
            validity_period=original.validity_period,
            status_callback_url=original.status_callback_url,
        )
        msg = await self.accept(request, retry_of=msg_id)
        await store_mod.add_note(
            self.store, msg_id, f"retried by the operator as {msg.id}", self._clock()
        )
        logger.info("event=operator_retry id=%s new_id=%s", msg_id, msg.id)
        return msg

    async def lift_suppression(self, number: str) -> str:
        """Accept messages to a number reported invalid again; return it in E.164."""
        try:
            e164 = to_e164(number, self._delivery.default_region)
        except NumberError as exc:
            raise ValidationFailed([FieldError("number", exc.code, exc.message)]) from exc
        removed = await store_mod.lift_suppression(self.store, e164)
        if not removed and e164 not in self._suppressed:
            raise NotSuppressed(f"{e164} is not suppressed.")
        self._suppressed.discard(e164)
        logger.info("event=suppression_lifted number=%s", e164)
        self._events.publish("suppression_lifted", {"number": e164})
        return e164
