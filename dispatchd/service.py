"""Use cases: accept a message, apply a delivery report, answer questions about messages."""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dispatchd import store as store_mod
from dispatchd.config import DeliveryConfig
from dispatchd.encoding import segment
from dispatchd.errors import DispatchdError
from dispatchd.events import EventBus
from dispatchd.ids import IdGenerator
from dispatchd.models import REPORT_STATUSES, DeliveryReport, Message, Status
from dispatchd.numbers import NumberError, to_e164
from dispatchd.store import ReportResult, SavedResponse, Store

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
    """A validated send: E.164 number, text and its segmentation."""

    to_number: str
    message: str
    segments: int
    encoding: str


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
    ) -> None:
        self.store = store
        self._delivery = delivery
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
        number = data.get("to_number")
        text = data.get("message")
        e164 = ""
        if number is None:
            errors.append(FieldError("to_number", "missing", "to_number is required."))
        elif not isinstance(number, str):
            errors.append(FieldError("to_number", "not_a_string", "to_number must be a string."))
        else:
            try:
                e164 = to_e164(number, self._delivery.default_region)
            except NumberError as exc:
                errors.append(FieldError("to_number", exc.code, exc.message))
        seg = None
        if text is None:
            errors.append(FieldError("message", "missing", "message is required."))
        elif not isinstance(text, str):
            errors.append(FieldError("message", "not_a_string", "message must be a string."))
        elif not text.strip():
            errors.append(FieldError("message", "empty", "message must contain some text."))
        else:
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
        if errors or seg is None or not isinstance(text, str):
            raise ValidationFailed(errors)
        return SendRequest(e164, text, seg.segments, seg.encoding.value)

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
        if request.to_number in self._suppressed:
            raise NumberSuppressed(
                f"{request.to_number} was reported invalid by a provider; "
                "messages to it are not accepted."
            )
        now = self._clock()
        msg = Message(
            id=self._ids.new(),
            to_number=request.to_number,
            body=request.message,
            status=Status.QUEUED,
            segments=request.segments,
            encoding=request.encoding,
            created_at=now,
            updated_at=now,
            expires_at=now + self._delivery.max_age,
            next_attempt_at=now,
        )
        detail = "accepted" if retry_of is None else f"accepted: operator retry of {retry_of}"
        saved = save_response(msg) if save_response is not None else None
        await self.store.insert(msg, detail, saved)
        logger.info("event=accepted id=%s segments=%d", msg.id, msg.segments)
        self._events.publish(
            "accepted",
            {"id": msg.id, "number": msg.to_number, "segments": msg.segments, "retry_of": retry_of},
        )
        self._on_new_work()
        return msg

    def is_suppressed(self, number: str) -> bool:
        return number in self._suppressed

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
        request = SendRequest(
            original.to_number, original.body, original.segments, original.encoding
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
