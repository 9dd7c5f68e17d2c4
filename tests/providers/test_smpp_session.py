"""The smpp connector end to end, over loopback: against the simulator's SMSC and smpp34's."""

from __future__ import annotations

import asyncio
import random
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import smpp34

from dispatchd.config import SimulatorConfig
from dispatchd.devtools.simulator import SimulatorState
from dispatchd.devtools.smsc import Smsc
from dispatchd.domain.models import Status
from dispatchd.providers import smpp_pdu as p
from dispatchd.providers.base import Accepted, Call, Report, Submission, Throttled, Unavailable
from dispatchd.providers.smpp import SmppConnector, SmppSettings
from tests.conftest import free_port, wait_for

ACCOUNTS = {"esme": "secret"}
NUMBER = "+17034573322"
LONG = "The quick brown fox jumps over the lazy dog. " * 9  # 405 GSM-7 characters: 3 parts


def submission(body: str = "hello", *, message_id: str = "m1", **fields: Any) -> Submission:
    return Submission(message_id, NUMBER, body, 1, "http://127.0.0.1/unused", **fields)


class Reports:
    """An on_report that records, and can be told to fail."""

    def __init__(self) -> None:
        self.reports: list[Report] = []
        self.failures = 0  # calls left to fail

    async def __call__(self, report: Report) -> None:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("store unavailable")
        self.reports.append(report)


@pytest.fixture
def state() -> SimulatorState:
    settings = SimulatorConfig(
        enabled=True,
        failure_rate=0.0,
        latency=0.0,
        callback_delay=0.0,
        delivered=1.0,
        failed=0.0,
        invalid=0.0,
    )
    sim = SimulatorState(settings, random.Random(1))
    sim.keep_received = True
    return sim


def faults(monkeypatch: pytest.MonkeyPatch, state: SimulatorState, **patch: Any) -> None:
    """Set the smpp provider's faults; keys the config does not know yet are patched in."""
    known = {k: v for k, v in patch.items() if k in SimulatorConfig.model_fields}
    state.set_faults("smpp", known, replace=False)
    unknown = {k: v for k, v in patch.items() if k not in known}
    if unknown:
        resolved = state.settings_for("smpp").model_copy(update=unknown)
        monkeypatch.setattr(state, "settings_for", lambda name: resolved)


@pytest.fixture
async def smsc(state: SimulatorState) -> AsyncIterator[Smsc]:
    server = Smsc(state, ACCOUNTS, record=True)
    await server.start()
    yield server
    await server.stop()


Connect = Callable[..., Awaitable[SmppConnector]]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Start connectors (`await connect(port, window=3)`); closed at teardown."""
    started: list[SmppConnector] = []

    async def start(
        port: int,
        *,
        on_report: Callable[[Report], Awaitable[None]] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        **overrides: Any,
    ) -> SmppConnector:
        fields: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": port,
            "system_id": "esme",
            "password": "secret",
            "source_addr": "DISPATCHD",
            "source_addr_ton": 5,
            "timeout": 2.0,
            **overrides,
        }
        connector = SmppConnector(
            SmppSettings(**fields),
            on_report=on_report or Reports(),
            ssl_context=ssl_context,
            reconnect_initial=0.01,
            reconnect_max=0.05,
        )
        await connector.start()
        started.append(connector)
        return connector

    yield start
    for connector in started:
        await connector.close()


# -- the simulator's SMSC ----------------------------------------------------------------------


async def test_bind_submit_and_a_receipt_with_twelve_digit_dates(
    smsc: Smsc, state: SimulatorState, connect: Connect
) -> None:
    reports = Reports()
    connector = await connect(smsc.port, on_report=reports)
    assert connector.bound == 1
    call = await connector.send(submission())
    # The SMSC answered 00A0000001; the receipt's text gives the id in lower-case hex.
    assert call.outcome == Accepted("a0000001")
    await wait_for(lambda: bool(reports.reports), within=5, what="the receipt")
    assert reports.reports == [
        Report("a0000001", Status.DELIVERED, "DELIVRD", "000", ("2684354561",))
    ]
    sent = smsc.submitted[0]
    assert (sent.destination_addr, sent.dest_addr_ton, sent.dest_addr_npi) == ("17034573322", 1, 1)
    assert (sent.source_addr, sent.source_addr_ton, sent.registered_delivery) == ("DISPATCHD", 5, 1)
    assert (sent.data_coding, sent.short_message) == (p.DATA_CODING_DEFAULT, b"hello")
    assert state.received[0]["to_number"] == NUMBER


async def test_receipts_with_ten_digit_dates(state: SimulatorState, connect: Connect) -> None:
    smsc = Smsc(state, ACCOUNTS, receipt_seconds=False)
    await smsc.start()
    try:
        reports = Reports()
        connector = await connect(smsc.port, on_report=reports)
        calls = [await connector.send(submission(message_id=f"m{i}")) for i in range(2)]
        await wait_for(lambda: len(reports.reports) == 2, within=5, what="two receipts")
    finally:
        await smsc.stop()
    # The even id's text gives it in zero-padded decimal; the TLV's hex decides.
    ids = [call.outcome.provider_message_id for call in calls if isinstance(call.outcome, Accepted)]
    assert [r.provider_message_id for r in reports.reports] == ids == ["a0000001", "a0000002"]
    assert "2684354562" in reports.reports[1].aliases


async def test_the_window_holds_unanswered_submits(
    smsc: Smsc, state: SimulatorState, connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    faults(monkeypatch, state, latency=0.05)
    connector = await connect(smsc.port, window=3)
    calls = await asyncio.gather(*(connector.send(submission()) for _ in range(12)))
    assert all(isinstance(c.outcome, Accepted) for c in calls)
    assert smsc.counts.max_outstanding == 3


async def test_every_bind_has_its_own_window(
    smsc: Smsc, state: SimulatorState, connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    faults(monkeypatch, state, latency=0.05)
    connector = await connect(smsc.port, binds=2, window=2)
    assert connector.bound == smsc.sessions == 2
    calls = await asyncio.gather(*(connector.send(submission()) for _ in range(12)))
    assert all(isinstance(c.outcome, Accepted) for c in calls)
    assert smsc.counts.max_outstanding == 2


async def test_an_unanswered_submit_is_ambiguous_and_frees_its_slot(
    smsc: Smsc, state: SimulatorState, connect: Connect
) -> None:
    state.set_faults("smpp", {"hang_rate": 1.0}, replace=False)
    connector = await connect(smsc.port, window=1, timeout=0.2)
    call = await connector.send(submission())
    assert isinstance(call.outcome, Unavailable)
    assert "ambiguous" in call.outcome.reason
    assert 200 <= call.latency_ms < 1500
    state.clear_faults("smpp")
    # The one slot came back although no answer ever did.
    assert isinstance((await connector.send(submission())).outcome, Accepted)


async def test_reconnects_after_the_smsc_drops(smsc: Smsc, connect: Connect) -> None:
    connector = await connect(smsc.port, binds=2)
    assert smsc.drop_connections() == 2
    await wait_for(lambda: smsc.counts.binds == 4 and connector.bound == 2, what="a rebind")
    assert isinstance((await connector.send(submission())).outcome, Accepted)


async def test_a_drop_with_a_submit_in_flight_is_ambiguous_at_once(
    smsc: Smsc, state: SimulatorState, connect: Connect
) -> None:
    state.set_faults("smpp", {"hang_rate": 1.0}, replace=False)
    connector = await connect(smsc.port, timeout=30)
    sending = asyncio.create_task(connector.send(submission()))
    await wait_for(lambda: smsc.counts.submits == 1, what="the submit_sm")
    smsc.drop_connections()
    call = await asyncio.wait_for(sending, 5)
    assert isinstance(call.outcome, Unavailable)
    assert "closed before the submit_sm_resp: ambiguous" in call.outcome.reason


@pytest.mark.parametrize(
    ("patch", "outcome", "reason"),
    [
        ({"throttle_rate": 1.0}, Throttled, "ESME_RTHROTTLED"),
        ({"failure_rate": 1.0}, Unavailable, "ESME_RSYSERR"),
    ],
)
async def test_smsc_refusals(
    smsc: Smsc,
    state: SimulatorState,
    connect: Connect,
    monkeypatch: pytest.MonkeyPatch,
    patch: dict[str, float],
    outcome: type,
    reason: str,
) -> None:
    faults(monkeypatch, state, **patch)
    connector = await connect(smsc.port)
    call = await connector.send(submission())
    assert isinstance(call.outcome, outcome)
    assert isinstance(call.outcome, Throttled | Unavailable)
    assert reason in call.outcome.reason


@pytest.mark.parametrize(
    ("system_id", "password", "status"),
    [("esme", "wrong", "ESME_RINVPASWD"), ("nobody", "secret", "ESME_RINVSYSID")],
)
async def test_a_refused_bind_fails_sends_at_once(
    smsc: Smsc, connect: Connect, system_id: str, password: str, status: str
) -> None:
    connector = await connect(smsc.port, system_id=system_id, password=password)
    assert connector.bound == 0
    assert connector.last_error == f"bind refused: {status}"
    call = await connector.send(submission())
    assert isinstance(call.outcome, Unavailable)
    assert status in call.outcome.reason
    assert call.latency_ms < 50
    assert smsc.counts.binds_refused >= 1


async def test_no_smsc_at_all(connect: Connect) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    connector = await connect(free_port())
    assert loop.time() - started < 1.5
    call = await connector.send(submission())
    assert isinstance(call.outcome, Unavailable)
    assert "no SMPP bind is up" in call.outcome.reason


async def test_a_down_smsc_refuses_binds_then_comes_back(
    smsc: Smsc, state: SimulatorState, connect: Connect
) -> None:
    state.set_faults("smpp", {"down": True}, replace=False)
    connector = await connect(smsc.port)
    assert connector.last_error == "bind refused: ESME_RBINDFAIL"
    assert isinstance((await connector.send(submission())).outcome, Unavailable)
    state.clear_faults("smpp")
    await wait_for(lambda: connector.bound == 1, what="the bind after the outage")
    assert isinstance((await connector.send(submission())).outcome, Accepted)


async def test_enquire_link_every_interval(smsc: Smsc, connect: Connect) -> None:
    await connect(smsc.port, enquire_link=0.05)
    await wait_for(lambda: smsc.counts.enquire_links >= 3, within=3, what="enquire_links")


async def test_an_unanswered_enquire_link_drops_and_rebinds(connect: Connect) -> None:
    """Against a peer that binds and then stops answering: a dead link is noticed."""
    connections = 0

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        header = p.Header(*p.HEADER.unpack(await reader.readexactly(p.HEADER_LEN)))
        await reader.readexactly(header.length - p.HEADER_LEN)
        writer.write(p.pdu(p.BIND_TRANSCEIVER | p.RESPONSE, header.sequence, b"MUTE\0"))
        await reader.read()  # hears, never answers, until the client hangs up
        writer.close()

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await connect(port, enquire_link=0.05, timeout=0.2)
        await wait_for(lambda: connections >= 2, within=5, what="a second connection")
    finally:
        server.close()
        await server.wait_closed()


async def test_a_long_message_in_udh_parts(
    smsc: Smsc, state: SimulatorState, connect: Connect
) -> None:
    reports = Reports()
    connector = await connect(smsc.port, on_report=reports)
    call = await connector.send(submission(LONG))
    assert len(smsc.submitted) == 3
    heads = [p.read_udh(s.short_message)[0] for s in smsc.submitted]
    assert [(h.total, h.number) for h in heads if h] == [(3, 1), (3, 2), (3, 3)]
    assert len({h.reference for h in heads if h}) == 1
    assert all(s.esm_class == p.ESM_UDHI for s in smsc.submitted)
    assert state.received[0]["message"] == LONG
    # Every part gets a receipt; only the last part's is reported.
    assert call.outcome == Accepted("a0000003")
    await wait_for(lambda: smsc.counts.receipts_sent == 3, what="three receipts")
    await wait_for(lambda: bool(reports.reports), what="the report")
    assert [r.provider_message_id for r in reports.reports] == ["a0000003"]


async def test_a_long_message_in_message_payload(
    smsc: Smsc, state: SimulatorState, connect: Connect
) -> None:
    reports = Reports()
    connector = await connect(smsc.port, on_report=reports, long_messages="payload")
    call = await connector.send(submission(LONG))
    assert call.outcome == Accepted("a0000001")
    (sent,) = smsc.submitted
    assert (sent.short_message, sent.esm_class) == (b"", 0)
    assert p.tlv_map(sent.tlvs)[p.TLV_MESSAGE_PAYLOAD] == LONG.encode("ascii")
    assert state.received[0]["message"] == LONG
    await wait_for(lambda: bool(reports.reports), what="the report")
    assert [r.provider_message_id for r in reports.reports] == ["a0000001"]


async def test_ucs2_text_and_validity(smsc: Smsc, state: SimulatorState, connect: Connect) -> None:
    connector = await connect(smsc.port)
    body = "Привет, мир 👋"
    assert isinstance((await connector.send(submission(body, validity=3600))).outcome, Accepted)
    (sent,) = smsc.submitted
    assert sent.data_coding == p.DATA_CODING_UCS2
    assert sent.validity_period == "000000010000000R"
    assert state.received[0]["message"] == body


async def test_a_failing_report_handler_gets_the_receipt_again(
    smsc: Smsc, state: SimulatorState, connect: Connect
) -> None:
    state.set_faults("smpp", {"callback_retry_for": 5.0}, replace=False)
    reports = Reports()
    reports.failures = 1
    connector = await connect(smsc.port, on_report=reports)
    await connector.send(submission())
    await wait_for(lambda: bool(reports.reports), what="the receipt, offered again")
    assert smsc.counts.receipts_refused == 1
    assert len(reports.reports) == 1


async def test_an_unreadable_receipt_is_answered_and_the_session_stays(
    smsc: Smsc, state: SimulatorState, connect: Connect
) -> None:
    state.set_faults("smpp", {"malformed_rate": 1.0}, replace=False)
    reports = Reports()
    connector = await connect(smsc.port, on_report=reports)
    await connector.send(submission())
    await wait_for(lambda: bool(reports.reports), what="the good receipt")
    assert smsc.counts.binds == 1
    assert connector.bound == 1


async def test_receipts_early_duplicated_and_contrary_are_all_passed_on(
    smsc: Smsc, state: SimulatorState, connect: Connect
) -> None:
    patch = {"early_callback_rate": 1.0, "duplicate_callback_rate": 1.0, "out_of_order_rate": 1.0}
    state.set_faults("smpp", patch, replace=False)
    seen: list[str] = []
    reports = Reports()

    async def on_report(report: Report) -> None:
        seen.append(f"report {report.raw_status}")
        await reports(report)

    connector = await connect(smsc.port, on_report=on_report)
    call = await connector.send(submission())
    seen.append("accepted")
    await wait_for(lambda: len(reports.reports) == 3, what="three reports")
    assert seen == ["report UNDELIV", "accepted", "report DELIVRD", "report DELIVRD"]
    assert {r.provider_message_id for r in reports.reports} == {"a0000001"}
    assert call.outcome == Accepted("a0000001")


async def test_close_unbinds(smsc: Smsc, connect: Connect) -> None:
    connector = await connect(smsc.port, binds=2)
    await connector.close()
    assert smsc.counts.unbinds == 2
    assert isinstance((await connector.send(submission())).outcome, Unavailable)


# -- TLS ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext",
         "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_tls(state: SimulatorState, connect: Connect, certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    smsc = Smsc(state, ACCOUNTS, ssl_context=server_context)
    await smsc.start()
    try:
        reports = Reports()
        trusting = ssl.create_default_context(cafile=str(cert))
        connector = await connect(smsc.port, tls=True, ssl_context=trusting, on_report=reports)
        assert isinstance((await connector.send(submission())).outcome, Accepted)
        await wait_for(lambda: bool(reports.reports), what="a receipt over TLS")
        # Without the certificate among its trusted ones, the connector does not bind.
        untrusting = await connect(smsc.port, tls=True)
        assert untrusting.bound == 0
        assert "CERTIFICATE_VERIFY_FAILED" in (untrusting.last_error or "")
        # Plain TCP to a TLS port does not bind either.
        plain = await connect(smsc.port, timeout=0.3)
        assert plain.bound == 0
    finally:
        await smsc.stop()


# -- an SMSC that is not ours: smpp34's Server ---------------------------------------------------


class Smpp34Smsc:
    """smpp34's Rust SMSC, answering as told and sending Appendix B receipts with TLVs."""

    def __init__(self) -> None:
        self.port = free_port()
        self.server = smpp34.Server(host="127.0.0.1", port=self.port, system_id="SMPP34")
        self.submits: list[smpp34.SubmitSmEvent] = []
        self.throttle = False
        self.receipts: list[bool] = []
        self._esmes: dict[str, smpp34.Esme] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._serial = 0

    async def serve(self) -> None:
        while True:
            event = await self.server.next()
            if isinstance(event, smpp34.Esme):
                self._esmes[event.session_id] = event
            elif isinstance(event, smpp34.SubmitSmEvent):
                self.submits.append(event)
                if self.throttle:
                    event.reject(p.ESME_RTHROTTLED)
                    continue
                self._serial += 1
                # Upper-case hex with leading zeros in the answer, decimal in the text.
                event.accept(f"{self._serial:08X}")
                task = asyncio.create_task(self._receipt(event, self._serial))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _receipt(self, event: smpp34.SubmitSmEvent, serial: int) -> None:
        text = (
            f"id:{serial:010d} sub:001 dlvrd:001 submit date:2601021504 "
            f"done date:2601021505 stat:DELIVRD err:000 text:hello"
        )
        resp = await self._esmes[event.session_id].deliver_sm(
            event.source_addr,
            text.encode(),
            source_addr=event.destination_addr,
            esm_class=0x04,
            tlvs=[
                smpp34.Tlv(p.TLV_RECEIPTED_MESSAGE_ID, f"{serial:08X}".encode() + b"\0"),
                smpp34.Tlv(p.TLV_MESSAGE_STATE, b"\x02"),
            ],
        )
        self.receipts.append(resp.is_success)


@pytest.fixture
async def foreign() -> AsyncIterator[Smpp34Smsc]:
    smsc = Smpp34Smsc()
    await smsc.server.start()
    serving = asyncio.create_task(smsc.serve())
    yield smsc
    serving.cancel()
    await asyncio.gather(serving, *smsc._tasks, return_exceptions=True)
    await smsc.server.stop()


async def test_smpp34_server_submit_and_receipt(foreign: Smpp34Smsc, connect: Connect) -> None:
    reports = Reports()
    connector = await connect(foreign.port, on_report=reports, binds=2)
    assert connector.bound == 2
    calls: list[Call] = await asyncio.gather(
        *(connector.send(submission(message_id=f"m{i}")) for i in range(4))
    )
    ids = sorted(
        c.outcome.provider_message_id or "" for c in calls if isinstance(c.outcome, Accepted)
    )
    assert ids == ["1", "2", "3", "4"]
    await wait_for(lambda: len(reports.reports) == 4, what="four receipts")
    assert sorted(r.provider_message_id for r in reports.reports) == ids
    assert {r.status for r in reports.reports} == {Status.DELIVERED}
    # Every deliver_sm was answered ESME_ROK.
    await wait_for(lambda: len(foreign.receipts) == 4, what="four deliver_sm_resp")
    assert foreign.receipts == [True] * 4
    event = foreign.submits[0]
    assert (event.destination_addr, event.dest_addr_ton, event.registered_delivery) == (
        "17034573322",
        1,
        1,
    )


async def test_smpp34_server_throttles(foreign: Smpp34Smsc, connect: Connect) -> None:
    foreign.throttle = True
    connector = await connect(foreign.port)
    call = await connector.send(submission())
    assert isinstance(call.outcome, Throttled)


async def test_smpp34_server_long_messages(foreign: Smpp34Smsc, connect: Connect) -> None:
    udh = await connect(foreign.port)
    payload = await connect(foreign.port, long_messages="payload")
    assert isinstance((await udh.send(submission(LONG))).outcome, Accepted)
    assert isinstance((await payload.send(submission(LONG))).outcome, Accepted)
    parts = [e for e in foreign.submits if e.esm_class == p.ESM_UDHI]
    (whole,) = [e for e in foreign.submits if e.esm_class != p.ESM_UDHI]
    # smpp34 hands events over from several threads, so it may reorder them; a handset
    # puts the parts in order by their UDH number, and so does this.
    numbered = {}
    for event in parts:
        head, text = p.read_udh(event.short_message)
        assert head is not None
        numbered[head.number] = text
    assert sorted(numbered) == [1, 2, 3]
    assert p.gsm7_decode(b"".join(numbered[n] for n in (1, 2, 3))) == LONG
    tlvs = {t.tag: t.value for t in whole.tlvs}
    assert p.gsm7_decode(tlvs[p.TLV_MESSAGE_PAYLOAD]) == LONG
