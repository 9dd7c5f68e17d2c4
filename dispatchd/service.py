"""Use cases: accept a message, apply a delivery report, answer questions about messages.

The service decides and the store persists: a handler reads fields, `validate` checks them
once, `prepare` builds the message, and `accept` commits it (with the idempotent answer, if
any) in one store call.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode

from dispatchd.config import DeliveryConfig, WebhooksConfig
from dispatchd.domain.errors import (
    BadToken,
    FieldError,
    NotRetryable,
    NotSuppressed,
    NumberSuppressed,
    UnknownMessage,
    ValidationFailed,
)
from dispatchd.domain.ids import IdGenerator
from dispatchd.domain.models import (
    REPORT_STATUSES,
    DeliveryReport,
    HistoryEntry,
    Message,
    Status,
)
from dispatchd.domain.numbers import NumberError, to_e164
from dispatchd.domain.sending import SendRequest, SendRules, validate_send
from dispatchd.events import Event, EventBus
from dispatchd.providers.base import HttpKind, IncomingReport, Report
from dispatchd.store.api import QueueStats, ReportResult, SavedResponse, Store

logger = logging.getLogger(__name__)

# `unknown` too: the operator decides whether a second copy beats none.
RETRYABLE_STATUSES = frozenset({Status.FAILED, Status.EXPIRED, Status.UNKNOWN})


class Service:
    """Accepts messages and delivery reports; decides, then asks the store to persist."""

    def __init__(
        self,
        store: Store,
        delivery: DeliveryConfig,
        webhooks: WebhooksConfig,
        *,
        public_url: str,
        secret: str,
        suppressed: set[str],
        events: EventBus,
        clock: Callable[[], float],
        kinds: Mapping[str, HttpKind] | None = None,
        ids: IdGenerator | None = None,
    ) -> None:
        self._store = store
        # The HTTP kind of each provider, which verifies and reads its reports; providers
        # of the `dispatchd` kind report through /messages/{id}/delivery_status instead.
        self._kinds = dict(kinds or {})
        self._delivery = delivery
        self._rules = SendRules(
            default_region=delivery.default_region,
            max_segments=delivery.max_segments,
            smart_encoding=delivery.smart_encoding,
            can_sign=bool(webhooks.secret),
            allow_private=webhooks.allow_private_addresses,
            default_callback_url=webhooks.default_url,
        )
        self._public_url = public_url.rstrip("/")
        self._secret = secret.encode()
        # A cache of the suppressions table: checked on every accept, so kept in memory.
        self._suppressed = suppressed
        self._ids = ids or IdGenerator()
        self._clock = clock
        self._events = events
        # A number the worker suppressed (a provider refused it as invalid) is refused here too.
        events.add_listener(self._on_event)

    def _on_event(self, event: Event) -> None:
        if event.type == "number_suppressed" and isinstance(event.payload.get("number"), str):
            self._suppressed.add(event.payload["number"])

    def now(self) -> float:
        """The service's clock, for callers that stamp several messages with one time."""
        return self._clock()

    # -- accepting ------------------------------------------------------------------------

    def validate(self, fields: Mapping[str, Any]) -> SendRequest:
        """Check the fields of a send request; raise ValidationFailed listing every problem."""
        return validate_send(fields, self._rules, self._clock())

    def prepare(self, request: SendRequest, now: float | None = None) -> Message:
        """The queued message a valid request becomes, due at `send_at` (or now), valid from
        then on; NumberSuppressed if its number takes no messages."""
        self.check_not_suppressed(request.to_number)
        now = self._clock() if now is None else now
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

    async def accept(
        self,
        msgs: Sequence[Message],
        saved: SavedResponse | None = None,
        *,
        retry_of: str | None = None,
    ) -> None:
        """Store prepared messages durably, with the idempotent answer `saved`: all or none.

        Call it right after `prepare`, with no await between: message ids are the order of
        messages to one number, so nothing may commit a later id first.
        """
        if not msgs and saved is None:
            return
        detail = "accepted" if retry_of is None else f"accepted: operator retry of {retry_of}"
        await self._store.insert(msgs, detail, saved)
        for msg in msgs:
            logger.info("event=accepted id=%s segments=%d", msg.id, msg.segments)
            self._events.publish(
                "accepted",
                {
                    "id": msg.id,
                    "number": msg.to_number,
                    "segments": msg.segments,
                    "retry_of": retry_of,
                },
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

    def update_kinds(self, kinds: Mapping[str, HttpKind]) -> None:
        """Read reports with a reloaded configuration's kinds (new credentials)."""
        self._kinds = dict(kinds)

    def report_url(self, provider: str, msg_id: str) -> str:
        """Where `provider` sends this message's reports: its own route when its kind signs
        or shapes them its way, the wire format's route otherwise; always with the token."""
        if provider not in self._kinds:
            return self.callback_url(msg_id)
        query = urlencode({"message": msg_id, "token": self.token(msg_id)})
        return f"{self._public_url}/providers/{quote(provider)}/reports?{query}"

    def check_token(self, msg_id: str, token: str | None) -> None:
        # compare_digest keeps the comparison constant-time, so timing leaks nothing.
        if not token or not hmac.compare_digest(self.token(msg_id), token):
            raise BadToken()

    async def report(
        self, msg_id: str, report: DeliveryReport, token: str | None, provider: str | None = None
    ) -> ReportResult:
        """Apply a provider's delivery report to the message `msg_id`."""
        self.check_token(msg_id, token)
        return await self._apply(msg_id, report, provider)

    async def provider_reports(
        self, provider: str, incoming: IncomingReport, msg_id: str | None, token: str | None
    ) -> int:
        """Verify, read and apply what a provider posted to /providers/{name}/reports.

        With `msg_id` (the per-message URL) its token must match; either way the
        provider's signature is checked by its kind. Returns how many reports applied to
        a known message; UnknownMessage when some were sent and none did.
        """
        kind = self._kinds.get(provider)
        if kind is None:
            raise UnknownMessage(f"No provider named {provider!r} takes reports here.")
        if msg_id is not None:
            self.check_token(msg_id, token)
        elif not kind.signs_body:
            # Nothing but the token would tell a forged report from the provider's.
            raise BadToken(
                f"{provider}'s reports are not signed over their body; they are taken only "
                "at the per-message URL, with its token."
            )
        kind.verify(incoming, self._clock())
        reports = kind.parse(incoming)
        found = 0
        for report in reports:
            found += await self.provider_report(provider, report, msg_id, missing_ok=True)
        if reports and not found:
            raise UnknownMessage(
                f"No message is known by {reports[0].provider_message_id!r} at {provider}."
            )
        return found

    async def provider_report(
        self, provider: str, report: Report, msg_id: str | None = None, *, missing_ok: bool = False
    ) -> bool:
        """Apply one report read by a provider's kind (an SMPP receipt, a webhook's entry).

        The message is `msg_id`, or the one `provider` knows by the report's id (or one
        of its other spellings). An intermediate status is only recorded in the history.
        UnknownMessage if there is none (False with `missing_ok`), so an SMSC offers the
        receipt again once the submit's answer has been stored.
        """
        msg_id = msg_id or await self._find(provider, report)
        if msg_id is None:
            logger.info(
                "event=report_unknown provider=%s id=%s", provider, report.provider_message_id
            )
            if missing_ok:
                return False
            raise UnknownMessage(f"No message is known by {report.provider_message_id!r}.")
        said = report.raw_status + (f", error {report.error_code}" if report.error_code else "")
        if report.status is None:
            note = f"report '{said}' from {provider}: not final, status kept"
            if not await self._store.add_note(msg_id, note, self._clock()):
                raise UnknownMessage(f"No message has id {msg_id!r}.")
            return True
        await self._apply(
            msg_id, DeliveryReport(report.status, report.provider_message_id, said), provider
        )
        return True

    async def _find(self, provider: str, report: Report) -> str | None:
        for spelling in (report.provider_message_id, *report.aliases):
            found = await self._store.id_for_provider_message(spelling, provider)
            if found is not None:
                return found
        return None

    async def _apply(
        self, msg_id: str, report: DeliveryReport, provider: str | None
    ) -> ReportResult:
        if report.status not in REPORT_STATUSES:
            raise ValueError(f"{report.status} is not a delivery report status")
        result = await self._store.apply_report(msg_id, report, provider, self._clock())
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
        msg_id = await self._store.id_for_provider_message(report.provider_message_id)
        if msg_id is None:
            raise UnknownMessage()
        return await self.report(msg_id, report, token)

    # -- operator actions (control socket) -------------------------------------------------

    async def retry(self, msg_id: str) -> Message:
        """Send a failed, expired or unknown message again, as a new message.

        The original keeps its final status (final statuses never change) and gains a
        history note naming the new message, which is accepted like any other.
        """
        original = await self._store.get(msg_id)
        if original is None:
            raise UnknownMessage(f"No message has id {msg_id!r}.")
        if original.status not in RETRYABLE_STATUSES:
            raise NotRetryable(
                f"Message {msg_id} is {original.status}; only failed, expired or unknown messages "
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
        msg = self.prepare(request)
        await self.accept([msg], retry_of=msg_id)
        await self._store.add_note(msg_id, f"retried by the operator as {msg.id}", self._clock())
        logger.info("event=operator_retry id=%s new_id=%s", msg_id, msg.id)
        return msg

    async def lift_suppression(self, number: str) -> str:
        """Accept messages to a number reported invalid again; return it in E.164."""
        try:
            e164 = to_e164(number, self._delivery.default_region)
        except NumberError as exc:
            raise ValidationFailed([FieldError("number", exc.code, exc.message)]) from exc
        removed = await self._store.lift_suppression(e164)
        if not removed and e164 not in self._suppressed:
            raise NotSuppressed(f"{e164} is not suppressed.")
        self._suppressed.discard(e164)
        logger.info("event=suppression_lifted number=%s", e164)
        self._events.publish("suppression_lifted", {"number": e164})
        return e164

    # -- reading --------------------------------------------------------------------------

    async def get(self, msg_id: str) -> Message | None:
        """The message with its attempts, history and status callbacks."""
        return await self._store.get(msg_id)

    async def search(
        self, *, to_number: str | None, status: Status | None, limit: int, cursor: str | None
    ) -> list[Message]:
        """Newest first, after `cursor` (the last id of the previous page)."""
        return await self._store.search(
            to_number=to_number, status=status, limit=limit, cursor=cursor
        )

    async def status(self, msg_id: str) -> Status | None:
        """Only the message's status: what a woken watcher re-reads."""
        return await self._store.message_status(msg_id)

    async def history(self, msg_id: str) -> tuple[HistoryEntry, ...]:
        return await self._store.message_history(msg_id)

    async def queue_stats(self) -> QueueStats:
        return await self._store.queue_stats()
