"""The pure half of the smpp kind: receipts, ids, statuses, and the PDU codec."""

from __future__ import annotations

import struct
from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatchd.domain.encoding import GSM7_BASIC, GSM7_EXTENSION, Encoding, segment
from dispatchd.domain.models import Status
from dispatchd.providers import smpp_pdu as p
from dispatchd.providers.base import (
    Accepted,
    BadReport,
    InvalidNumber,
    Rejected,
    Report,
    Throttled,
    Unavailable,
)
from dispatchd.providers.smpp import SmppSettings
from dispatchd.providers.smpp_receipts import (
    MESSAGE_STATES,
    canonical_id,
    id_aliases,
    is_receipt,
    parse_receipt,
    parse_receipt_text,
    receipt_date,
    stat_status,
    submit_outcome,
)


def receipt(text: str, **tlvs: bytes) -> Report:
    tags = {
        "receipted_message_id": p.TLV_RECEIPTED_MESSAGE_ID,
        "message_state": p.TLV_MESSAGE_STATE,
        "network_error_code": p.TLV_NETWORK_ERROR_CODE,
        "message_payload": p.TLV_MESSAGE_PAYLOAD,
    }
    return parse_receipt(text.encode("latin-1"), {tags[k]: v for k, v in tlvs.items()})


# -- receipt text: SMPP 3.4 Appendix B and what SMSCs really send ----------------------------


def test_appendix_b_layout_with_ten_digit_dates() -> None:
    # Appendix B's layout, with the values of a published example (Vonage's SMPP docs).
    text = (
        "id:0000000012345678 sub:001 dlvrd:001 submit date:1601010100 "
        "done date:1601010101 stat:DELIVRD err:000 text:none"
    )
    fields = parse_receipt_text(text)
    assert fields.id == "0000000012345678"
    assert (fields.sub, fields.dlvrd) == ("001", "001")
    assert fields.submit_date == datetime(2016, 1, 1, 1, 0)
    assert fields.done_date == datetime(2016, 1, 1, 1, 1)
    assert (fields.stat, fields.err, fields.text) == ("DELIVRD", "000", "none")
    assert receipt(text) == Report(
        "12345678", Status.DELIVERED, "DELIVRD", "000", aliases=("bc614e", "305419896")
    )


def test_twelve_digit_dates_with_seconds() -> None:
    text = (
        "id:64567564356765435676 sub:001 dlvrd:001 submit date:190608165232 "
        "done date:190608165237 stat:DELIVRD err:000 text:Hello World"
    )
    fields = parse_receipt_text(text)
    assert fields.submit_date == datetime(2019, 6, 8, 16, 52, 32)
    assert fields.done_date == datetime(2019, 6, 8, 16, 52, 37)
    assert fields.text == "Hello World"
    assert receipt(text).status is Status.DELIVERED


def test_undelivered_keeps_the_smsc_error_code_and_is_failed_not_invalid() -> None:
    text = (
        "id:0911897980 sub:001 dlvrd:000 submit date:1201121551 done date:1201121551 "
        "stat:UNDELIV err:075 text:-PROFILE"
    )
    report = receipt(text)
    assert report.provider_message_id == "911897980"
    assert (report.status, report.raw_status, report.error_code) == (
        Status.FAILED,
        "UNDELIV",
        "075",
    )


def test_fields_split_over_lines_and_keys_in_any_case() -> None:
    text = (
        "Id:40072910491427628\nSub:001\nDlvrd:001\nSubmit date:1007291049 done\n"
        "date:1007291049\nStat:delivrd\nErr:000\nText:hi"
    )
    fields = parse_receipt_text(text)
    assert fields.id == "40072910491427628"
    assert fields.done_date == datetime(2010, 7, 29, 10, 49)
    assert (fields.stat, fields.text) == ("DELIVRD", "hi")


def test_underscored_date_keys_and_missing_counts() -> None:
    fields = parse_receipt_text("id:abc submit_date:2401020304 done_date:240102030405 stat:EXPIRED")
    assert fields.submit_date == datetime(2024, 1, 2, 3, 4)
    assert fields.done_date == datetime(2024, 1, 2, 3, 4, 5)
    assert (fields.sub, fields.dlvrd, fields.err, fields.text) == (None, None, None, None)
    assert receipt("id:abc stat:EXPIRED").status is Status.FAILED


def test_the_quoted_text_cannot_override_the_fields() -> None:
    report = receipt("id:42 sub:001 dlvrd:001 stat:DELIVRD err:000 text:stat:UNDELIV id:99")
    assert (report.provider_message_id, report.status) == ("42", Status.DELIVERED)


@pytest.mark.parametrize("date", ["2413010000", "24010100", "24010100000000", "24010a0000", ""])
def test_a_bad_date_is_dropped_not_fatal(date: str) -> None:
    assert receipt_date(date) is None
    text = f"id:7 submit date:{date} done date:{date} stat:DELIVRD err:000"
    assert receipt(text).status is Status.DELIVERED


# -- receipt TLVs ------------------------------------------------------------------------------


def test_tlvs_alone_make_a_receipt() -> None:
    report = receipt("", receipted_message_id=b"00A1B2\0", message_state=b"\x02")
    assert report == Report("a1b2", Status.DELIVERED, "DELIVRD", None, aliases=("41394",))


def test_the_message_state_tlv_wins_over_the_text() -> None:
    # The TLV is the standard's; the text is, by Appendix B's own words, SMSC-specific.
    report = receipt("id:1 stat:DELIVRD err:000", message_state=b"\x05")
    assert (report.status, report.raw_status) == (Status.FAILED, "UNDELIV")


def test_the_tlv_id_is_primary_and_the_text_id_an_alias() -> None:
    # The submit_sm_resp said 00A0000002 (hex); the text gives it in decimal.
    report = receipt(
        "id:002684354562 stat:DELIVRD err:000",
        receipted_message_id=b"00A0000002\0",
        message_state=b"\x02",
    )
    assert report.provider_message_id == "a0000002"
    assert "2684354562" in report.aliases
    assert "a0000002" not in report.aliases


def test_network_error_code_when_the_text_has_no_err() -> None:
    report = receipt(
        "", receipted_message_id=b"9\0", message_state=b"\x05", network_error_code=b"\x03\x00\x01"
    )
    assert (report.status, report.error_code) == (Status.FAILED, "3:1")


def test_receipt_text_in_message_payload() -> None:
    report = parse_receipt(b"", {p.TLV_MESSAGE_PAYLOAD: b"id:5 stat:REJECTD err:012"})
    assert (report.provider_message_id, report.status, report.error_code) == (
        "5",
        Status.FAILED,
        "012",
    )


def test_ucs2_receipt_text() -> None:
    text = "id:77 stat:DELIVRD err:000".encode("utf-16-be")
    assert parse_receipt(text, {}, p.DATA_CODING_UCS2).provider_message_id == "77"


@pytest.mark.parametrize(
    ("text", "tlvs"),
    [
        ("sub:001 dlvrd:001 stat:DELIVRD err:000", {}),
        ("id: stat:DELIVRD", {}),
        ("", {p.TLV_MESSAGE_STATE: b"\x02"}),
        ("id:12 sub:001 dlvrd:001 err:000", {}),
        ("garbage \x00\xff", {}),
    ],
)
def test_no_id_or_no_state_is_a_bad_report(text: str, tlvs: dict[int, bytes]) -> None:
    with pytest.raises(BadReport):
        parse_receipt(text.encode("latin-1"), tlvs)


# -- status mapping ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stat", "status"),
    [
        ("DELIVRD", Status.DELIVERED),
        ("UNDELIV", Status.FAILED),
        ("REJECTD", Status.FAILED),
        ("DELETED", Status.FAILED),
        ("UNKNOWN", Status.FAILED),
        ("EXPIRED", Status.FAILED),
        ("ENROUTE", None),
        ("ACCEPTD", None),
        ("DELIVERED", Status.DELIVERED),
        ("UNDELIVERABLE", Status.FAILED),
        ("SKIPPED", Status.FAILED),
        ("BUFFRED", None),  # a vendor word we cannot read is recorded, nothing more
        ("delivrd", Status.DELIVERED),
    ],
)
def test_stat_words(stat: str, status: Status | None) -> None:
    assert stat_status(stat) is status


@pytest.mark.parametrize(
    ("state", "stat", "status"),
    [
        (1, "ENROUTE", None),
        (2, "DELIVRD", Status.DELIVERED),
        (3, "EXPIRED", Status.FAILED),
        (4, "DELETED", Status.FAILED),
        (5, "UNDELIV", Status.FAILED),
        (6, "ACCEPTD", None),
        (7, "UNKNOWN", Status.FAILED),
        (8, "REJECTD", Status.FAILED),
    ],
)
def test_message_states(state: int, stat: str, status: Status | None) -> None:
    assert MESSAGE_STATES[state] == stat
    report = receipt("", receipted_message_id=b"1\0", message_state=bytes((state,)))
    assert (report.raw_status, report.status) == (stat, status)


@given(
    stat=st.sampled_from([*MESSAGE_STATES.values(), "INVALID", "BADNUMB", "UNKNOWN"]),
    err=st.text(alphabet="0123456789abcdefABCDEF", max_size=4),
    state=st.none() | st.integers(0, 255),
)
def test_no_receipt_ever_means_invalid(stat: str, err: str, state: int | None) -> None:
    tlvs = {p.TLV_RECEIPTED_MESSAGE_ID: b"1\0"}
    if state is not None:
        tlvs[p.TLV_MESSAGE_STATE] = bytes((state,))
    report = parse_receipt(f"id:1 stat:{stat} err:{err}".encode(), tlvs)
    assert report.status is not Status.INVALID


@pytest.mark.parametrize(
    ("esm_class", "expected"),
    [(0x00, False), (0x04, True), (0x08, False), (0x10, False), (0x20, True), (0x44, True)],
)
def test_receipt_bits(esm_class: int, expected: bool) -> None:
    assert is_receipt(esm_class) is expected


# -- ids ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("00A1B2", "a1b2"),
        ("a1b2", "a1b2"),
        (" 0000012345 ", "12345"),
        ("0000", "0"),
        ("", ""),
        ("ABC-def-0", "abc-def-0"),
        ("0f0\0", "f0"),
    ],
)
def test_canonical_id(raw: str, canonical: str) -> None:
    assert canonical_id(raw) == canonical


@pytest.mark.parametrize(
    ("canonical", "aliases"),
    [
        ("255", ("ff", "597")),
        ("ff", ("255",)),
        ("a1b2", ("41394",)),
        ("0", ()),
        ("abc-def", ()),
        ("9" * 41, ()),
    ],
)
def test_id_aliases(canonical: str, aliases: tuple[str, ...]) -> None:
    assert id_aliases(canonical) == aliases


@given(number=st.integers(1, 2**64), zeros=st.integers(0, 6), upper=st.booleans())
def test_hex_and_decimal_spellings_meet(number: int, zeros: int, upper: bool) -> None:
    """Whichever spelling the submit_sm_resp used, the receipt's other one finds it."""
    hex_id = "0" * zeros + (format(number, "X") if upper else format(number, "x"))
    dec_id = "0" * zeros + str(number)
    hex_receipt = receipt(f"id:{hex_id} stat:DELIVRD")
    dec_receipt = receipt(f"id:{dec_id} stat:DELIVRD")
    assert canonical_id(dec_id) in (hex_receipt.provider_message_id, *hex_receipt.aliases)
    assert canonical_id(hex_id) in (dec_receipt.provider_message_id, *dec_receipt.aliases)


# -- submit_sm_resp ----------------------------------------------------------------------------


def test_accepted_with_the_canonical_id() -> None:
    assert submit_outcome(p.ESME_ROK, "00A0000001") == Accepted("a0000001")
    assert submit_outcome(p.ESME_ROK, "") == Accepted(None)


@pytest.mark.parametrize("status", [0x58, 0x14])
def test_throttle_statuses(status: int) -> None:
    assert isinstance(submit_outcome(status, ""), Throttled)


@pytest.mark.parametrize(
    ("status", "name"),
    [
        (0x0B, "ESME_RINVDSTADR"),
        (0x0A, "ESME_RINVSRCADR"),
        (0x50, "ESME_RINVDSTTON"),
        (0x51, "ESME_RINVDSTNPI"),
        (0x43, "ESME_RINVESMCLASS"),
        (0x62, "ESME_RINVEXPIRY"),
        (0xC1, "ESME_ROPTPARNOTALLWD"),
        (0x01, "ESME_RINVMSGLEN"),
    ],
)
def test_documented_refusals_are_rejected(status: int, name: str) -> None:
    assert submit_outcome(status, "") == Rejected(
        f"submit_sm_resp {name} (0x{status:08X})", code=name
    )


@pytest.mark.parametrize("status", [0x08, 0x04, 0x45, 0x64, 0xFF, 0x0D, 0x400, 0x4FF, 0x1234])
def test_system_and_unknown_statuses_are_unavailable(status: int) -> None:
    assert isinstance(submit_outcome(status, ""), Unavailable)


@given(status=st.integers(0, 0xFFFF))
def test_no_submit_status_means_invalid_number(status: int) -> None:
    assert not isinstance(submit_outcome(status, "1"), InvalidNumber)


# -- the PDU codec -----------------------------------------------------------------------------


def test_bind_transceiver_bytes() -> None:
    body = p.bind_body("esme1", "secret", "")
    assert body == b"esme1\0secret\0\0\x34\0\0\0"
    wire = p.pdu(p.BIND_TRANSCEIVER, 1, body)
    assert wire[:16] == struct.pack(">IIII", 16 + len(body), 9, 0, 1)
    assert p.read_bind(body) == p.BindRequest("esme1", "secret", "")


@pytest.mark.parametrize(
    ("system_id", "password", "system_type"),
    [("x" * 16, "pw", ""), ("id", "x" * 9, ""), ("id", "pw", "x" * 13)],
)
def test_bind_field_limits(system_id: str, password: str, system_type: str) -> None:
    with pytest.raises(ValueError, match="longer than"):
        p.bind_body(system_id, password, system_type)


def test_frames_come_whole_and_in_order_from_any_chunking() -> None:
    wire = p.pdu(p.ENQUIRE_LINK, 1) + p.pdu(p.SUBMIT_SM | p.RESPONSE, 2, b"abc\0") + b"\0\0"
    for cut in range(len(wire) + 1):
        buffer = bytearray(wire[:cut])
        frames = list(p.split_frames(buffer))
        buffer += wire[cut:]
        frames += list(p.split_frames(buffer))
        assert [(h.command_id, h.sequence) for h, _ in frames] == [
            (p.ENQUIRE_LINK, 1),
            (p.SUBMIT_SM | p.RESPONSE, 2),
        ]
        assert p.read_message_id(frames[1][1][16:]) == "abc"
        assert buffer == b"\0\0"


@pytest.mark.parametrize("length", [0, 15, p.MAX_PDU + 1])
def test_a_bad_length_cannot_be_framed(length: int) -> None:
    with pytest.raises(p.PduError):
        list(p.split_frames(bytearray(struct.pack(">IIII", length, 4, 0, 1))))


def test_the_gsm7_table_is_the_domain_alphabet() -> None:
    text = "".join(sorted(GSM7_BASIC | GSM7_EXTENSION))
    assert p.gsm7_decode(p.gsm7_encode(text)) == text
    assert p.gsm7_encode("@£$\n€[") == b"\x00\x01\x02\x0a\x1b\x65\x1b\x3c"
    with pytest.raises(ValueError, match=r"GSM 03\.38"):
        p.gsm7_encode("ж")


def test_udh_is_read_back() -> None:
    assert p.udh(0x1FF, 3, 2) == b"\x05\x00\x03\xff\x03\x02"
    assert p.read_udh(p.udh(7, 3, 2) + b"abc") == (p.Concatenation(7, 3, 2), b"abc")
    sixteen = b"\x06\x08\x04\x01\x02\x02\x01" + b"xy"
    assert p.read_udh(sixteen) == (p.Concatenation(0x0102, 2, 1), b"xy")


@given(
    text=st.text(
        alphabet=st.sampled_from(sorted(GSM7_BASIC | GSM7_EXTENSION)), min_size=0, max_size=700
    )
    | st.text(max_size=400)
)
def test_parts_are_the_segments_dispatchd_counts(text: str) -> None:
    encoded = p.encode_text(text)
    seg = segment(text)
    assert len(encoded.parts) == seg.segments
    assert b"".join(encoded.parts) == encoded.data
    if seg.encoding is Encoding.GSM7:
        assert encoded.data_coding == p.DATA_CODING_DEFAULT
        assert all(len(part) <= (160 if seg.segments == 1 else 153) for part in encoded.parts)
        # No part ends inside an escape pair, so each one decodes on its own.
        assert "".join(p.gsm7_decode(part) for part in encoded.parts) == text
    else:
        assert encoded.data_coding == p.DATA_CODING_UCS2
        assert all(len(part) <= (140 if seg.segments == 1 else 134) for part in encoded.parts)
        assert all(not 0xD8 <= part[-2] <= 0xDB for part in encoded.parts if part)


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (7 * 86_400, "000007000000000R"),
        (3_723, "000000010203000R"),
        (0.2, "000000000001000R"),
        (10**9, "000030000000000R"),
    ],
)
def test_relative_validity(seconds: float, expected: str) -> None:
    assert p.relative_validity(seconds) == expected


def test_destinations() -> None:
    assert p.destination("+17034573322") == p.Destination("17034573322", 1, 1)
    assert p.destination("7034573322") == p.Destination("7034573322", 0, 1)
    with pytest.raises(ValueError):
        p.destination("+" + "1" * 21)


def test_submit_sm_is_read_back_by_smpp34() -> None:
    template = p.SubmitTemplate("DISPATCHD", 5, 0)
    wire = p.submit_sm(
        template,
        p.destination("+17034573322"),
        b"",
        sequence=7,
        data_coding=p.DATA_CODING_UCS2,
        validity_period="000001000000000R",
        payload=b"\x04\x1f" * 100,
    )
    submit = p.decode_submit(wire)
    assert (submit.source_addr, submit.source_addr_ton, submit.source_addr_npi) == (
        "DISPATCHD",
        5,
        0,
    )
    assert (submit.destination_addr, submit.dest_addr_ton, submit.dest_addr_npi) == (
        "17034573322",
        1,
        1,
    )
    assert (submit.registered_delivery, submit.data_coding, submit.sequence_number) == (1, 8, 7)
    assert submit.validity_period == "000001000000000R"
    assert p.tlv_map(submit.tlvs) == {p.TLV_MESSAGE_PAYLOAD: b"\x04\x1f" * 100}


# -- settings ----------------------------------------------------------------------------------


def settings(**overrides: object) -> SmppSettings:
    base: dict[str, object] = {
        "host": "127.0.0.1",
        "port": 2775,
        "system_id": "esme",
        "password": "secret",
        "source_addr": "DISPATCHD",
    }
    return SmppSettings(**{**base, **overrides})  # type: ignore[arg-type]


def test_settings_defaults_and_secret_kept_out_of_repr() -> None:
    s = settings()
    assert (s.binds, s.window, s.enquire_link, s.tls, s.long_messages) == (
        1,
        10,
        30.0,
        False,
        "udh",
    )
    assert "secret" not in repr(s)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("system_id", "x" * 16),
        ("password", "123456789"),
        ("system_type", "x" * 13),
        ("source_addr", "+" + "1" * 21),
        ("source_addr", ""),
        ("binds", 0),
        ("window", 0),
        ("enquire_link", 0),
        ("timeout", 0),
        ("port", 0),
        ("long_messages", "sar"),
        ("password", "pässwd"),
    ],
)
def test_bad_settings_name_the_key(key: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"^{key}: "):
        settings(**{key: value})
