"""The `smpp` kind: SMPP 3.4 sessions to an SMSC, on asyncio, with smpp34's PDU codec.

Sessions. `binds` transceiver sessions, each kept up by its own task: connect (TLS if
`tls`), `bind_transceiver`, then `enquire_link` every `enquire_link` seconds; a missing
answer, a dropped connection or an SMSC `unbind` ends the session and the task binds
again after a backoff (doubling from `reconnect_initial` to `reconnect_max`). `send()`
with no session bound answers Unavailable at once, so the worker fails over.

Submits. Each bind has a window of `window` submit_sm written and unanswered; a send
waits for a free slot. Every send has a deadline of `timeout` seconds. A submit_sm
written but unanswered by then, or whose session drops first, is ambiguous (the SMSC
may have queued it): it is Unavailable, and the worker fails over, so a message is
sent at least once and may now and then arrive twice. A slot is given back when its
answer comes or its deadline passes; a late answer is logged and dropped.

Long messages. `long_messages = "udh"` (the default) cuts the text into parts with a
concatenation UDH, exactly as dispatchd counts segments, so the SMSC bills and
rate-limits what dispatchd counted, and SMSCs that do not take the optional
message_payload parameter still take it. `"payload"` sends one
submit_sm with the whole text in the message_payload TLV, for SMSCs that segment
themselves. Multi-part rule: with the payload there is one PDU, one id, one receipt.
With UDH every part is a submit_sm with its own id; the send is Accepted with the last
part's id only if every part was accepted (otherwise the first failing part's outcome
is the send's, and a retry resends every part under a new reference). The last part's
receipt decides the message; receipts for the other parts are acknowledged and
logged, not reported.

Receipts. Every deliver_sm is answered. A receipt is read (see smpp_receipts) and
awaited through `on_report` before the deliver_sm_resp, so an SMSC only forgets a
receipt dispatchd has taken: if `on_report` fails the answer is ESME_RX_T_APPN and
the SMSC sends it again later. An unreadable deliver_sm, or one that is not a
receipt, is logged and answered ESME_ROK (sending it again would not help), and the
session stays up.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, cast

from dispatchd.domain.errors import UnknownMessage
from dispatchd.providers import smpp_pdu as p
from dispatchd.providers.base import (
    Accepted,
    BadReport,
    Call,
    Outcome,
    Rejected,
    Report,
    Submission,
    Unavailable,
)
from dispatchd.providers.smpp_receipts import (
    canonical_id,
    is_receipt,
    parse_receipt,
    submit_outcome,
)

logger = logging.getLogger(__name__)

LongMessages = Literal["payload", "udh"]
MAX_PAYLOAD = 0xFFFF
MAX_UDH_PARTS = 255
# Ids of non-final UDH parts remembered, so their receipts are recognised and not reported;
# past this many the oldest are forgotten (their receipts then find no message, harmlessly).
MAX_PART_IDS = 65_536
# Pauses between tries of a receipt whose message is not known yet (about 1.5 s in all).
UNKNOWN_RECEIPT_PAUSES = (0.05, 0.1, 0.2, 0.4, 0.8)
# How long close() waits for the SMSC's unbind_resp before closing the socket anyway.
UNBIND_GRACE = 1.0


@dataclass(frozen=True, slots=True)
class SmppSettings:
    """One SMSC account: where it is, how to bind, and how to submit."""

    host: str
    port: int
    system_id: str
    password: str = field(repr=False)
    source_addr: str
    system_type: str = ""
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    binds: int = 1  # sessions
    window: int = 10  # submit_sm written and unanswered, per bind
    enquire_link: float = 30.0  # seconds between enquire_link on each bind
    tls: bool = False
    timeout: float = 10.0  # seconds: a send's deadline, and the bind's and enquire_link's
    long_messages: LongMessages = "udh"

    def __post_init__(self) -> None:
        problem = next((f"{key}: {why}" for key, ok, why in self._checks() if not ok), None)
        if problem is not None:
            raise ValueError(problem)

    def _checks(self) -> list[tuple[str, bool, str]]:
        source = self.source_addr.removeprefix("+")  # a leading + is notation, not address
        checks = [
            ("host", bool(self.host), "must not be empty"),
            ("port", 0 < self.port < 65_536, "must be 1-65535"),
            ("system_id", len(self.system_id) <= p.MAX_SYSTEM_ID, "at most 15 characters"),
            ("password", len(self.password) <= p.MAX_PASSWORD, "at most 8 characters"),
            ("system_type", len(self.system_type) <= p.MAX_SYSTEM_TYPE, "at most 12 characters"),
            ("source_addr", 0 < len(source) <= p.MAX_ADDRESS, "must be 1-20 characters"),
            ("source_addr_ton", 0 <= self.source_addr_ton <= 255, "must be 0-255"),
            ("source_addr_npi", 0 <= self.source_addr_npi <= 255, "must be 0-255"),
            ("binds", self.binds >= 1, "must be at least 1"),
            ("window", self.window >= 1, "must be at least 1"),
            ("enquire_link", self.enquire_link > 0, "must be above 0"),
            ("timeout", self.timeout > 0, "must be above 0"),
            ("long_messages", self.long_messages in ("payload", "udh"), "payload or udh"),
        ]
        for key in ("system_id", "password", "system_type", "source_addr"):
            checks.append((key, str(getattr(self, key)).isascii(), "must be ASCII"))
        return checks


class SessionClosed(Exception):
    """The SMPP session ended before the answer came."""


class BindRefused(Exception):
    """The SMSC answered the bind with an error status."""

    def __init__(self, status: int) -> None:
        super().__init__(p.status_name(status))
        self.status = status


@dataclass(frozen=True, slots=True)
class _Part:
    short_message: bytes
    esm_class: int = 0
    payload: bytes | None = None


@dataclass(slots=True)
class _Progress:
    written: int = 0


Answer = tuple[int, int, bytes]  # command_id, command_status, body


class _Session(asyncio.Protocol):
    """One connection: frames PDUs, matches answers to requests, answers the SMSC's requests."""

    def __init__(
        self, window: int, on_deliver: Callable[[_Session, p.Header, bytes], None]
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._pending: dict[int, asyncio.Future[Answer]] = {}
        self._sequence = 0
        self._on_deliver = on_deliver
        self._writable = asyncio.Event()
        self._writable.set()
        self.window = asyncio.Semaphore(window)
        self.in_flight = 0
        self.bound = False
        self.lost: asyncio.Future[None] = self._loop.create_future()

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            for header, raw in p.split_frames(self._buffer):
                self._dispatch(header, raw)
        except p.PduError as exc:
            # Past a bad length there is no way to find the next PDU.
            logger.warning("event=smpp_bad_stream error=%s", exc)
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.bound = False
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(SessionClosed("the SMPP session closed"))
        if not self.lost.done():
            self.lost.set_result(None)
        self._writable.set()  # writers wake up and find the session gone

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # -- requests and answers -----------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.lost.done()

    def next_sequence(self) -> int:
        # SMPP sequence numbers run 0x00000001-0x7FFFFFFF.
        self._sequence = self._sequence % 0x7FFFFFFF + 1
        return self._sequence

    def write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    async def writable(self) -> None:
        await self._writable.wait()
        if self.closed:
            raise SessionClosed("the SMPP session closed")

    def request(self, sequence: int, data: bytes) -> asyncio.Future[Answer]:
        """Write a request already encoded with `sequence`; the future gets its answer."""
        if self.closed:
            raise SessionClosed("the SMPP session closed")
        future: asyncio.Future[Answer] = self._loop.create_future()
        self._pending[sequence] = future
        future.add_done_callback(lambda _: self._pending.pop(sequence, None))
        self.write(data)
        return future

    def call(self, command_id: int, body: bytes = b"") -> asyncio.Future[Answer]:
        sequence = self.next_sequence()
        return self.request(sequence, p.pdu(command_id, sequence, body))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _dispatch(self, header: p.Header, raw: bytes) -> None:
        command_id = header.command_id
        if command_id & p.RESPONSE:
            future = self._pending.pop(header.sequence, None)
            if future is None or future.done():
                # Its deadline passed (the send already answered Unavailable) or it is no
                # answer to anything we asked.
                logger.info(
                    "event=smpp_late_answer command_id=0x%08X sequence=%d status=%s",
                    command_id,
                    header.sequence,
                    p.status_name(header.status),
                )
                return
            future.set_result((command_id, header.status, raw[p.HEADER_LEN :]))
        elif command_id == p.DELIVER_SM:
            self._on_deliver(self, header, raw)
        elif command_id == p.ENQUIRE_LINK:
            self.write(p.pdu(p.ENQUIRE_LINK | p.RESPONSE, header.sequence))
        elif command_id == p.UNBIND:
            logger.warning("event=smpp_unbound_by_smsc")
            self.bound = False
            self.write(p.pdu(p.UNBIND | p.RESPONSE, header.sequence))
            self.close()
        elif command_id != p.ALERT_NOTIFICATION:  # the one request that takes no answer
            # data_sm among them: receipts come as deliver_sm on a transceiver bind.
            self.write(p.pdu(p.GENERIC_NACK, header.sequence, status=p.ESME_RINVCMDID))


ReportSink = Callable[[Report], Awaitable[None]]


class SmppConnector:
    """Sends through `binds` SMPP 3.4 transceiver sessions and hands receipts to `on_report`."""

    def __init__(
        self,
        settings: SmppSettings,
        *,
        on_report: ReportSink,
        clock: Callable[[], float] = time.time,
        name: str = "smpp",
        ssl_context: ssl.SSLContext | None = None,
        reconnect_initial: float = 0.5,
        reconnect_max: float = 30.0,
    ) -> None:
        self.settings = settings
        self.name = name
        self._on_report = on_report
        self._clock = clock
        self._ssl = (ssl_context or ssl.create_default_context()) if settings.tls else None
        self._reconnect = (reconnect_initial, reconnect_max)
        self._template = p.SubmitTemplate(
            source_addr=settings.source_addr.removeprefix("+"),
            source_addr_ton=settings.source_addr_ton,
            source_addr_npi=settings.source_addr_npi,
        )
        self._sessions: list[_Session] = []
        self._supervisors: list[asyncio.Task[None]] = []
        self._receipts: set[asyncio.Task[None]] = set()
        self._closing = asyncio.Event()
        self._turn = 0
        # A random start keeps two runs from reusing references to the same handset.
        self._reference = random.randrange(256)
        self._part_ids: OrderedDict[str, str] = OrderedDict()
        self.last_error: str | None = None

    @property
    def bound(self) -> int:
        """Sessions bound now."""
        return sum(1 for s in self._sessions if s.bound)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every bind; return once each has bound or failed once (within `timeout`)."""
        if self._supervisors:
            return
        self._closing.clear()
        tried = [asyncio.Event() for _ in range(self.settings.binds)]
        for index, event in enumerate(tried):
            task = asyncio.create_task(
                self._keep_bound(index, event), name=f"smpp-bind-{self.name}-{index}"
            )
            task.add_done_callback(self._supervisor_done)
            self._supervisors.append(task)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.timeout):
                await asyncio.gather(*(event.wait() for event in tried))

    async def close(self) -> None:
        """Unbind every session, stop reconnecting, let receipts in hand finish."""
        self._closing.set()
        await asyncio.gather(*(self._unbind(s) for s in list(self._sessions)))
        for task in self._supervisors:
            task.cancel()
        await asyncio.gather(*self._supervisors, return_exceptions=True)
        self._supervisors.clear()
        if self._receipts:
            # Unanswered receipts are sent again by the SMSC; these ones had a head start.
            _, late = await asyncio.wait(set(self._receipts), timeout=self.settings.timeout)
            for task in late:
                task.cancel()

    def _supervisor_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "event=smpp_bind_task_died provider=%s", self.name, exc_info=task.exception()
            )

    async def _keep_bound(self, index: int, tried: asyncio.Event) -> None:
        initial, ceiling = self._reconnect
        delay = initial
        while not self._closing.is_set():
            try:
                session = await self._open()
            except BindRefused as exc:
                self.last_error = f"bind refused: {exc}"
                logger.error(
                    "event=smpp_bind_refused provider=%s bind=%d status=%s system_id=%s",
                    self.name, index, exc, self.settings.system_id,
                )  # fmt: skip
            except (OSError, TimeoutError, SessionClosed) as exc:
                self.last_error = f"connect failed: {type(exc).__name__}: {exc}"
                logger.warning(
                    "event=smpp_connect_failed provider=%s bind=%d error=%s",
                    self.name, index, self.last_error,
                )  # fmt: skip
            else:
                logger.info("event=smpp_bound provider=%s bind=%d", self.name, index)
                self.last_error = None
                tried.set()
                delay = initial
                self._sessions.append(session)
                try:
                    await self._hold(session)
                finally:
                    self._sessions.remove(session)
                if self._closing.is_set():
                    return
                self.last_error = "session lost"
                logger.warning("event=smpp_session_lost provider=%s bind=%d", self.name, index)
            tried.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), delay)
            delay = min(delay * 2, ceiling)

    async def _open(self) -> _Session:
        loop = asyncio.get_running_loop()
        s = self.settings
        session = _Session(s.window, self._on_deliver)
        try:
            async with asyncio.timeout(s.timeout):
                await loop.create_connection(
                    lambda: session,
                    s.host,
                    s.port,
                    ssl=self._ssl,
                    server_hostname=s.host if self._ssl is not None else None,
                )
                body = p.bind_body(s.system_id, s.password, s.system_type)
                _, status, _ = await session.call(p.BIND_TRANSCEIVER, body)
        except BaseException:
            session.abort()
            raise
        if status != p.ESME_ROK:
            session.close()
            raise BindRefused(status)
        session.bound = True
        return session

    async def _hold(self, session: _Session) -> None:
        """Keep the session alive with enquire_link until it ends."""
        while not session.closed:
            done, _ = await asyncio.wait({session.lost}, timeout=self.settings.enquire_link)
            if done or self._closing.is_set():
                return
            try:
                async with asyncio.timeout(self.settings.timeout):
                    await session.call(p.ENQUIRE_LINK)
            except TimeoutError:
                logger.warning(
                    "event=smpp_enquire_link_unanswered provider=%s timeout=%g",
                    self.name,
                    self.settings.timeout,
                )
                session.abort()
            except SessionClosed:
                return

    async def _unbind(self, session: _Session) -> None:
        session.bound = False
        with contextlib.suppress(TimeoutError, SessionClosed):
            async with asyncio.timeout(min(UNBIND_GRACE, self.settings.timeout)):
                await session.call(p.UNBIND)
        session.close()

    # -- sending ------------------------------------------------------------------------------

    async def send(self, submission: Submission) -> Call:
        started_at = self._clock()
        t0 = time.perf_counter()
        outcome = await self._submit(submission)
        latency_ms = (time.perf_counter() - t0) * 1000
        return Call(outcome, started_at, round(latency_ms, 3))

    async def _submit(self, submission: Submission) -> Outcome:
        try:
            parts, to, coding, validity = self._parts(submission)
        except ValueError as exc:
            return Rejected(f"cannot be sent over SMPP: {exc}")
        session = self._pick()
        if session is None:
            return Unavailable(f"no SMPP bind is up ({self.last_error or 'not started'})")
        progress = _Progress()
        timeout = self.settings.timeout
        try:
            async with asyncio.timeout(timeout):
                answers = await self._exchange(
                    session, submission, parts, to, coding, validity, progress
                )
        except TimeoutError:
            if not progress.written:
                return Unavailable(f"no free window slot within {timeout:g}s (nothing sent)")
            return Unavailable(
                f"no submit_sm_resp within {timeout:g}s: ambiguous, the SMSC may have queued it"
            )
        except ValueError as exc:  # smpp34's encoder refusing a field: nothing was written
            return Rejected(f"cannot be encoded as submit_sm: {exc}")
        except SessionClosed:
            if not progress.written:
                return Unavailable("the SMPP session closed before the submit_sm was written")
            return Unavailable(
                "the SMPP session closed before the submit_sm_resp: ambiguous, "
                "the SMSC may have queued it"
            )
        return self._outcome(answers)

    def _outcome(self, answers: list[Answer]) -> Outcome:
        outcomes: list[Outcome] = []
        for command_id, status, body in answers:
            if command_id == p.GENERIC_NACK and status == p.ESME_ROK:
                status = p.ESME_RUNKNOWNERR  # a nack that says "no error" is still a nack
            outcomes.append(submit_outcome(status, p.read_message_id(body)))
        for outcome in outcomes:
            if not isinstance(outcome, Accepted):
                return outcome
        return outcomes[-1]

    def _part_answered(self, future: asyncio.Future[Answer], what: str) -> None:
        """Remember an accepted non-final part's id as soon as its answer is in.

        Done here rather than once the send returns, because the part's receipt may be
        read in between; a part of a send that fails later stays remembered, which is
        right too: the retry sends new parts.
        """
        if future.cancelled() or future.exception() is not None:
            return
        _, status, body = future.result()
        part_id = canonical_id(p.read_message_id(body))
        if status == p.ESME_ROK and part_id:
            self._remember_part(part_id, what)

    def _remember_part(self, part_id: str, what: str) -> None:
        self._part_ids[part_id] = what
        self._part_ids.move_to_end(part_id)
        while len(self._part_ids) > MAX_PART_IDS:
            self._part_ids.popitem(last=False)

    def _pick(self) -> _Session | None:
        """The bound session with the fewest submits in flight (taking turns on a tie)."""
        live = [s for s in self._sessions if s.bound and not s.closed]
        if not live:
            return None
        self._turn = (self._turn + 1) % len(live)
        rotated = live[self._turn :] + live[: self._turn]
        return min(rotated, key=lambda s: s.in_flight)

    def _parts(self, submission: Submission) -> tuple[list[_Part], p.Destination, int, str]:
        to = p.destination(submission.to_number)
        text = p.encode_text(submission.body)
        validity = (
            p.relative_validity(submission.validity) if submission.validity is not None else ""
        )
        if len(text.parts) == 1:
            parts = [_Part(text.data)]
        elif self.settings.long_messages == "payload":
            if len(text.data) > MAX_PAYLOAD:
                raise ValueError(f"{len(text.data)} octets do not fit message_payload")
            parts = [_Part(b"", payload=text.data)]
        else:
            total = len(text.parts)
            if total > MAX_UDH_PARTS:
                raise ValueError(f"{total} parts do not fit a concatenation UDH")
            self._reference = (self._reference + 1) % 256
            parts = [
                _Part(p.udh(self._reference, total, number) + data, esm_class=p.ESM_UDHI)
                for number, data in enumerate(text.parts, start=1)
            ]
        return parts, to, text.data_coding, validity

    async def _exchange(
        self,
        session: _Session,
        submission: Submission,
        parts: list[_Part],
        to: p.Destination,
        coding: int,
        validity: str,
        progress: _Progress,
    ) -> list[Answer]:
        """Write every part in order, each in a window slot, then wait for all answers."""
        futures: list[asyncio.Future[Answer]] = []
        try:
            for number, part in enumerate(parts, start=1):
                await session.window.acquire()
                try:
                    await session.writable()
                    sequence = session.next_sequence()
                    data = p.submit_sm(
                        self._template,
                        to,
                        part.short_message,
                        sequence=sequence,
                        data_coding=coding,
                        esm_class=part.esm_class,
                        validity_period=validity,
                        payload=part.payload,
                    )
                    future = session.request(sequence, data)
                except BaseException:
                    session.window.release()
                    raise
                session.in_flight += 1
                future.add_done_callback(lambda _: self._slot_freed(session))
                if number < len(parts):
                    what = f"{submission.message_id} part {number}/{len(parts)}"
                    future.add_done_callback(functools.partial(self._part_answered, what=what))
                futures.append(future)
                progress.written += 1
            if len(futures) == 1:
                return [await futures[0]]
            return list(await asyncio.gather(*futures))
        finally:
            for future in futures:
                if not future.done():
                    future.cancel()  # frees the slot of an unanswered one
                elif not future.cancelled():
                    future.exception()  # seen: a session lost mid-send fails them all

    @staticmethod
    def _slot_freed(session: _Session) -> None:
        session.in_flight -= 1
        session.window.release()

    # -- receipts -----------------------------------------------------------------------------

    def _on_deliver(self, session: _Session, header: p.Header, raw: bytes) -> None:
        task = asyncio.create_task(
            self._answer_deliver(session, header.sequence, raw),
            name=f"smpp-receipt-{self.name}-{header.sequence}",
        )
        self._receipts.add(task)
        task.add_done_callback(self._receipts.discard)

    async def _answer_deliver(self, session: _Session, sequence: int, raw: bytes) -> None:
        status = await self._take_receipt(raw)
        session.write(p.pdu(p.DELIVER_SM | p.RESPONSE, sequence, p.message_id_body(""), status))

    async def _take_receipt(self, raw: bytes) -> int:
        """Read one deliver_sm and report it; the command_status to answer it with."""
        try:
            deliver = p.decode_deliver(raw)
            if not is_receipt(deliver.esm_class):
                logger.info(
                    "event=smpp_not_a_receipt provider=%s esm_class=0x%02X",
                    self.name,
                    deliver.esm_class,
                )
                return p.ESME_ROK
            report = parse_receipt(
                deliver.short_message, p.tlv_map(deliver.tlvs), deliver.data_coding
            )
        except (ValueError, BadReport) as exc:
            logger.warning(
                "event=smpp_bad_receipt provider=%s error=%s pdu=%s",
                self.name,
                exc,
                raw[:200].hex(),
            )
            return p.ESME_ROK
        part = self._part_ids.get(report.provider_message_id)
        if part is not None:
            logger.info(
                "event=smpp_part_receipt provider=%s part=%s provider_message_id=%s stat=%s",
                self.name,
                part,
                report.provider_message_id,
                report.raw_status,
            )
            return p.ESME_ROK
        try:
            await self._report(report)
        except UnknownMessage:
            # Still unknown: the SMSC keeps the receipt and offers it again later.
            logger.info(
                "event=smpp_receipt_unknown provider=%s provider_message_id=%s",
                self.name,
                report.provider_message_id,
            )
            return p.ESME_RX_T_APPN
        except Exception:
            # Whatever broke, the SMSC keeps the receipt and offers it again later.
            logger.exception(
                "event=smpp_report_failed provider=%s provider_message_id=%s",
                self.name,
                report.provider_message_id,
            )
            return p.ESME_RX_T_APPN
        return p.ESME_ROK

    async def _report(self, report: Report) -> None:
        """Hand the receipt on; while its message is unknown, try again for a moment.

        A receipt may come right behind its submit_sm_resp, before the worker has stored
        the id that answer gave: waiting a little takes it the first time, rather than
        relying on the SMSC to offer it again (not every SMSC does, or does so soon).
        """
        for pause in UNKNOWN_RECEIPT_PAUSES:
            try:
                await self._on_report(report)
                return
            except UnknownMessage:
                await asyncio.sleep(pause)
        await self._on_report(report)
