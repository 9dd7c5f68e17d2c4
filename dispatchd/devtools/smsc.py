"""The simulator's SMSC: SMPP 3.4 over asyncio, for the `smpp` provider kind.

Binds (transmitter, receiver, transceiver) are checked against `accounts`, a mapping of
system_id to password: an unknown system_id is answered ESME_RINVSYSID and a wrong
password ESME_RINVPASWD, as a real SMSC answers, and the connection is closed.
enquire_link and unbind are answered; other requests get generic_nack ESME_RINVCMDID.

submit_sm follows the simulator's settings for the provider name (`"smpp"` unless told):
`down` answers ESME_RSYSERR at once (and refuses binds with ESME_RBINDFAIL), `hang_rate`
never answers, `latency` answers late, `throttle_rate` answers ESME_RTHROTTLED,
`failure_rate` ESME_RSYSERR; the rest are accepted with a message id. The ids exercise
a client's normalisation: the submit_sm_resp and the receipted_message_id TLV give
upper-case hex with leading zeros (`00A0000001`), the receipt text gives the same id
in decimal with leading zeros for even ids and in lower-case hex for odd ones.

Receipts follow `callback_delay` seconds after the answer, as deliver_sm with
esm_class 0x04 on a bound transceiver or receiver of the same system_id: the
Appendix B text with 12-digit dates (10-digit if `receipt_seconds` is False) and the
receipted_message_id, message_state (and, on failure, network_error_code) TLVs. The
statuses come from `plan_reports` (so duplicates and contrary reports happen too);
`early_callback_rate` sends the first receipt before the submit_sm_resp, and
`malformed_rate` sends an unreadable receipt first. A receipt not answered ESME_ROK is
offered again for `callback_retry_for` seconds. A message sent in UDH parts is counted
once it is complete, and every part gets its own receipts, the parts in order.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import OrderedDict
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import smpp34

from dispatchd.config import SimulatorConfig
from dispatchd.devtools.simulator import SimulatorState
from dispatchd.providers import smpp_pdu as p

logger = logging.getLogger(__name__)

FIRST_ID = 0xA0000000  # ten hex digits, two of them leading zeros, letters from the start
DELIVER_TIMEOUT = 10.0  # seconds an ESME has to answer a deliver_sm
RETRY_PAUSE_MAX = 1.0
MAX_PARTIAL = 10_000  # concatenated messages waiting for their other parts
RECEIPT_TEXT = 20  # characters of the message the receipt quotes (Appendix B)

# What each simulated report status becomes in a receipt: stat, message_state, err.
# `invalid` is an undeliverable receipt with an SMSC-specific code, as real SMSCs say it.
RECEIPT_STATES: Mapping[str, tuple[str, int, str]] = {
    "delivered": ("DELIVRD", 2, "000"),
    "failed": ("UNDELIV", 5, "069"),
    "invalid": ("UNDELIV", 5, "001"),
}


@dataclass
class SmscCounts:
    """What the SMSC saw, beside the simulator's per-provider counts."""

    binds: int = 0
    binds_refused: int = 0
    enquire_links: int = 0
    unbinds: int = 0
    submits: int = 0
    throttled: int = 0
    max_outstanding: int = 0  # most submit_sm unanswered at once on one session
    receipts_sent: int = 0
    receipts_refused: int = 0  # answered with an error status (offered again if allowed)


@dataclass
class _Message:
    """One accepted message: its parts' ids, its text, where it goes."""

    to_number: str
    source_addr: str
    destination_addr: str
    system_id: str
    text: str
    ids: list[int] = field(default_factory=list)
    submitted_at: datetime = field(default_factory=lambda: datetime.now(UTC))


class _Session(asyncio.Protocol):
    def __init__(self, smsc: Smsc) -> None:
        self.smsc = smsc
        self.transport: asyncio.Transport | None = None
        self.system_id: str | None = None
        self.receives = False
        self.outstanding = 0
        self._mode = p.BIND_TRANSCEIVER
        self._buffer = bytearray()
        self._sequence = 0
        self._pending: dict[int, asyncio.Future[int]] = {}

    @property
    def bound(self) -> bool:
        return self.system_id is not None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.smsc._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.smsc._connections.discard(self)
        self.system_id = None
        for future in self._pending.values():
            if not future.done():
                future.set_result(p.ESME_RSYSERR)
        self._pending.clear()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            for header, raw in p.split_frames(self._buffer):
                self._dispatch(header, raw)
        except p.PduError as exc:
            logger.warning("event=smsc_bad_stream error=%s", exc)
            self.close()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def answer(self, command_id: int, sequence: int, status: int, body: bytes = b"") -> None:
        self.write(p.pdu(command_id | p.RESPONSE, sequence, body, status))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _dispatch(self, header: p.Header, raw: bytes) -> None:
        command_id, sequence = header.command_id, header.sequence
        if command_id & p.RESPONSE:
            future = self._pending.pop(sequence, None)
            if future is not None and not future.done():
                future.set_result(header.status)
        elif command_id in p.BIND_COMMANDS:
            self._bind(header, raw[p.HEADER_LEN :])
        elif command_id == p.SUBMIT_SM:
            if not self.bound or not self._transmits:
                self.answer(command_id, sequence, p.ESME_RINVBNDSTS, p.message_id_body(""))
            else:
                self.smsc._submit(self, header, raw)
        elif command_id == p.ENQUIRE_LINK:
            self.smsc.counts.enquire_links += 1
            self.answer(command_id, sequence, p.ESME_ROK)
        elif command_id == p.UNBIND:
            self.smsc.counts.unbinds += 1
            self.answer(command_id, sequence, p.ESME_ROK)
            self.system_id = None
            self.close()
        else:
            self.write(p.pdu(p.GENERIC_NACK, sequence, status=p.ESME_RINVCMDID))

    @property
    def _transmits(self) -> bool:
        return self._mode != p.BIND_RECEIVER

    def _bind(self, header: p.Header, body: bytes) -> None:
        smsc = self.smsc
        if self.bound:
            self.answer(header.command_id, header.sequence, p.ESME_RALYBND)
            return
        request = p.read_bind(body)
        status = smsc._check_bind(request)
        resp = p.bind_resp_body(smsc.system_id)
        if status != p.ESME_ROK:
            smsc.counts.binds_refused += 1
            logger.info(
                "event=smsc_bind_refused system_id=%s status=%s",
                request.system_id,
                p.status_name(status),
            )
            self.answer(header.command_id, header.sequence, status, resp)
            self.close()
            return
        smsc.counts.binds += 1
        self.system_id = request.system_id
        self._mode = header.command_id
        self.receives = header.command_id != p.BIND_TRANSMITTER
        self.answer(header.command_id, header.sequence, p.ESME_ROK, resp)

    async def deliver(self, data_for: _DeliverBuilder) -> int:
        """Send one deliver_sm; the ESME's answer status (ESME_RSYSERR if none came)."""
        self._sequence = self._sequence % 0x7FFFFFFF + 1
        sequence = self._sequence
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending[sequence] = future
        self.write(data_for(sequence))
        try:
            async with asyncio.timeout(DELIVER_TIMEOUT):
                return await future
        except TimeoutError:
            return p.ESME_RSYSERR
        finally:
            self._pending.pop(sequence, None)


class _DeliverBuilder:
    """A deliver_sm waiting for its sequence number."""

    def __init__(self, source: str, destination: str, text: bytes, tlvs: list[tuple[int, bytes]]):
        self.source, self.destination, self.text, self.tlvs = source, destination, text, tlvs

    def __call__(self, sequence: int) -> bytes:
        return p.deliver_sm(
            self.source,
            self.destination,
            self.text,
            sequence=sequence,
            esm_class=0x04,
            tlvs=self.tlvs,
        )


class Smsc:
    """A simulated SMSC on `host:port` (port 0 picks one; read `port` after `start()`)."""

    def __init__(
        self,
        state: SimulatorState,
        accounts: Mapping[str, str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        name: str = "smpp",
        ssl_context: ssl.SSLContext | None = None,
        system_id: str = "DISPATCHD-SIM",
        receipt_seconds: bool = True,
        record: bool = False,
    ) -> None:
        self.state = state
        self.accounts = dict(accounts)
        self.host = host
        self.name = name
        self.system_id = system_id
        self.receipt_seconds = receipt_seconds
        self.counts = SmscCounts()
        # Every submit_sm as decoded, when `record` is on (tests look at their fields).
        self.record = record
        self.submitted: list[smpp34.SubmitSm] = []
        self._port = port
        self._ssl = ssl_context
        self._server: asyncio.Server | None = None
        self._connections: set[_Session] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._serial = FIRST_ID
        self._partial: OrderedDict[tuple[int, str, int, int], dict[int, tuple[int, str]]] = (
            OrderedDict()
        )

    @property
    def port(self) -> int:
        return self._port

    @property
    def sessions(self) -> int:
        """Sessions bound now."""
        return sum(1 for s in self._connections if s.bound)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Session(self), self.host, self._port, ssl=self._ssl
        )
        self._port = int(self._server.sockets[0].getsockname()[1])
        logger.info("event=smsc_listening host=%s port=%d", self.host, self._port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.drop_connections()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def drop_connections(self) -> int:
        """Close every connection without an unbind, as a crashing SMSC would; how many."""
        connections = list(self._connections)
        for session in connections:
            if session.transport is not None:
                session.transport.abort()
        return len(connections)

    # -- binds and submits ----------------------------------------------------------------------

    def _check_bind(self, request: p.BindRequest) -> int:
        if self.state.is_down(self.name, self.state.settings_for(self.name)):
            return p.ESME_RBINDFAIL
        expected = self.accounts.get(request.system_id)
        if expected is None:
            return p.ESME_RINVSYSID
        if request.password != expected:
            return p.ESME_RINVPASWD
        return p.ESME_ROK

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _submit(self, session: _Session, header: p.Header, raw: bytes) -> None:
        state, counts = self.state, self.state.stats.provider(self.name)
        counts.requests += 1
        self.counts.submits += 1
        session.outstanding += 1
        self.counts.max_outstanding = max(self.counts.max_outstanding, session.outstanding)
        try:
            submit = p.decode_submit(raw)
        except ValueError:
            counts.bad_requests += 1
            self._answer(session, header.sequence, p.ESME_RINVCMDLEN)
            return
        if self.record:
            self.submitted.append(submit)
        settings = state.settings_for(self.name)
        if state.is_down(self.name, settings):
            counts.down += 1
            self._answer(session, header.sequence, p.ESME_RSYSERR)
        elif state.chance(settings.hang_rate):
            counts.hung += 1  # left unanswered: the ESME's deadline has to notice
        elif settings.latency:
            self._spawn(
                self._answer_late(session, header.sequence, submit, settings),
                f"smsc-submit-{header.sequence}",
            )
        else:
            self._decide(session, header.sequence, submit, settings)

    async def _answer_late(
        self, session: _Session, sequence: int, submit: smpp34.SubmitSm, s: SimulatorConfig
    ) -> None:
        await asyncio.sleep(s.latency)
        self._decide(session, sequence, submit, s)

    def _answer(self, session: _Session, sequence: int, status: int, message_id: str = "") -> None:
        session.outstanding -= 1
        session.answer(p.SUBMIT_SM, sequence, status, p.message_id_body(message_id))

    def _decide(
        self, session: _Session, sequence: int, submit: smpp34.SubmitSm, s: SimulatorConfig
    ) -> None:
        state, counts = self.state, self.state.stats.provider(self.name)
        if state.chance(s.throttle_rate):
            self.counts.throttled += 1
            counts.throttled += 1
            self._answer(session, sequence, p.ESME_RTHROTTLED)
            return
        if state.chance(s.failure_rate):
            counts.errors += 1
            self._answer(session, sequence, p.ESME_RSYSERR)
            return
        counts.accepted += 1
        self._serial += 1
        serial = self._serial
        message = self._complete(session, submit, serial)
        if message is None:  # a part of a message still missing others
            self._answer(session, sequence, p.ESME_ROK, _resp_id(serial))
            return
        reports = self._plan(message, s)
        early = reports.pop(0) if reports and state.chance(s.early_callback_rate) else None
        malformed = state.chance(s.malformed_rate)
        if malformed:
            counts.malformed += 1
        if early is None and not malformed:
            self._answer(session, sequence, p.ESME_ROK, _resp_id(serial))
            answer = None
        else:
            answer = (session, sequence)
        self._spawn(
            self._report(answer, serial, message, reports, early, malformed, s),
            f"smsc-receipts-{serial}",
        )

    def _complete(self, session: _Session, submit: smpp34.SubmitSm, serial: int) -> _Message | None:
        """The message this submit_sm completes, or None while parts are missing."""
        payload = p.tlv_map(submit.tlvs).get(p.TLV_MESSAGE_PAYLOAD)
        data = payload if payload is not None else submit.short_message
        part = None
        if submit.esm_class & p.ESM_UDHI and payload is None:
            part, data = p.read_udh(data)
        text = p.decode_text(data, submit.data_coding)
        ids = [serial]
        if part is not None and part.total > 1:
            key = (id(session), submit.destination_addr, part.reference, part.total)
            parts = self._partial.setdefault(key, {})
            parts[part.number] = (serial, text)
            self._partial.move_to_end(key)
            while len(self._partial) > MAX_PARTIAL:
                self._partial.popitem(last=False)
            if len(parts) < part.total:
                return None
            del self._partial[key]
            ordered = [parts[n] for n in sorted(parts)]
            ids = [i for i, _ in ordered]
            text = "".join(t for _, t in ordered)
        to_number = (
            f"+{submit.destination_addr}" if submit.dest_addr_ton == 1 else submit.destination_addr
        )
        return _Message(
            to_number=to_number,
            source_addr=submit.source_addr,
            destination_addr=submit.destination_addr,
            system_id=session.system_id or "",
            text=text,
            ids=ids,
        )

    def _plan(self, message: _Message, s: SimulatorConfig) -> list[str]:
        state = self.state
        state.stats.count_pair(message.to_number, message.text)
        if state.keep_received:
            state.received.append(
                {
                    "to_number": message.to_number,
                    "message": message.text,
                    "provider": self.name,
                    "message_id": _resp_id(message.ids[-1]),
                }
            )
        return state.plan_reports(message.to_number, s)

    # -- receipts -------------------------------------------------------------------------------

    async def _report(
        self,
        answer: tuple[_Session, int] | None,
        serial: int,
        message: _Message,
        reports: list[str],
        early: str | None,
        malformed: bool,
        s: SimulatorConfig,
    ) -> None:
        """Send the receipts planned for one message (answering its submit_sm when told)."""
        if malformed:
            receiver = self._receiver(message.system_id)
            if receiver is not None:
                await receiver.deliver(_garbage_receipt(serial))
        if early is not None:
            await self._send_receipts(message, early, s)
        if answer is not None:
            self._answer(answer[0], answer[1], p.ESME_ROK, _resp_id(serial))
        if s.callback_delay:
            await asyncio.sleep(s.callback_delay)
        for status in reports:
            await self._send_receipts(message, status, s)

    async def _send_receipts(self, message: _Message, status: str, s: SimulatorConfig) -> None:
        for serial in message.ids:
            await self._offer(message, self._receipt(serial, message, status), s)

    def _receipt(self, serial: int, message: _Message, status: str) -> _DeliverBuilder:
        stat, state, err = RECEIPT_STATES[status]
        fmt = "%y%m%d%H%M%S" if self.receipt_seconds else "%y%m%d%H%M"
        done = datetime.now(UTC)
        quoted = "".join(ch if " " <= ch <= "~" else "?" for ch in message.text[:RECEIPT_TEXT])
        text = (
            f"id:{_text_id(serial)} sub:001 dlvrd:{'001' if stat == 'DELIVRD' else '000'} "
            f"submit date:{message.submitted_at.strftime(fmt)} done date:{done.strftime(fmt)} "
            f"stat:{stat} err:{err} text:{quoted}"
        )
        tlvs = [
            (p.TLV_RECEIPTED_MESSAGE_ID, _resp_id(serial).encode() + b"\0"),
            (p.TLV_MESSAGE_STATE, bytes((state,))),
        ]
        if stat != "DELIVRD":
            # Network type 3 (GSM) with the same code the text gives.
            tlvs.append((p.TLV_NETWORK_ERROR_CODE, bytes((3,)) + int(err).to_bytes(2, "big")))
        return _DeliverBuilder(
            message.destination_addr, message.source_addr, text.encode("ascii"), tlvs
        )

    async def _offer(self, message: _Message, build: _DeliverBuilder, s: SimulatorConfig) -> None:
        """Deliver one receipt, offering it again for `callback_retry_for` seconds."""
        stats = self.state.stats
        loop = asyncio.get_running_loop()
        deadline = loop.time() + s.callback_retry_for
        pause = 0.05
        while True:
            session = self._receiver(message.system_id)
            status = p.ESME_RSYSERR if session is None else await session.deliver(build)
            if status == p.ESME_ROK:
                self.counts.receipts_sent += 1
                stats.reports_sent += 1
                return
            if session is not None:
                self.counts.receipts_refused += 1
            if loop.time() + pause > deadline:
                stats.reports_failed += 1
                logger.warning(
                    "event=smsc_receipt_failed system_id=%s status=%s",
                    message.system_id,
                    "no receiver bound" if session is None else p.status_name(status),
                )
                return
            stats.report_retries += 1
            await asyncio.sleep(pause)
            pause = min(pause * 2, RETRY_PAUSE_MAX)

    def _receiver(self, system_id: str) -> _Session | None:
        for session in self._connections:
            if session.system_id == system_id and session.receives:
                return session
        return None


def _resp_id(serial: int) -> str:
    return f"{serial:010X}"


def _text_id(serial: int) -> str:
    return f"{serial:012d}" if serial % 2 == 0 else f"{serial:x}"


def _garbage_receipt(serial: int) -> _DeliverBuilder:
    """A receipt cut short, with no TLVs: a client must answer it and carry on."""
    return _DeliverBuilder("0", "0", f"id:{_text_id(serial)} sub:0".encode()[:9], [])
