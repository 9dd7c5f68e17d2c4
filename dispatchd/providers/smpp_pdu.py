"""SMPP 3.4 on the wire, without I/O: framing, the PDUs dispatchd sends and reads, SMS text.

`submit_sm` and `deliver_sm` go through smpp34's codec (a Rust core with type stubs); the
PDUs around them (bind, enquire_link, unbind, the responses, generic_nack) are a header
and a few C-strings, built here. Field limits are checked here because smpp34's encoder
does not check them, and an over-long C-string would be cut or refused by the SMSC.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import smpp34

from dispatchd.domain.encoding import Encoding, segment

# -- command ids (SMPP 3.4 section 5.1.2.1) ---------------------------------------------------
GENERIC_NACK = 0x80000000
BIND_RECEIVER = 0x00000001
BIND_TRANSMITTER = 0x00000002
SUBMIT_SM = 0x00000004
DELIVER_SM = 0x00000005
UNBIND = 0x00000006
BIND_TRANSCEIVER = 0x00000009
OUTBIND = 0x0000000B
ENQUIRE_LINK = 0x00000015
ALERT_NOTIFICATION = 0x00000102
DATA_SM = 0x00000103
RESPONSE = 0x80000000  # the bit every response's command_id carries
BIND_COMMANDS = frozenset({BIND_RECEIVER, BIND_TRANSMITTER, BIND_TRANSCEIVER})

# -- command_status (SMPP 3.4 section 5.1.3) --------------------------------------------------
ESME_ROK = 0x00
ESME_RINVMSGLEN = 0x01
ESME_RINVCMDLEN = 0x02
ESME_RINVCMDID = 0x03
ESME_RINVBNDSTS = 0x04
ESME_RALYBND = 0x05
ESME_RINVPRTFLG = 0x06
ESME_RINVREGDLVFLG = 0x07
ESME_RSYSERR = 0x08
ESME_RINVSRCADR = 0x0A
ESME_RINVDSTADR = 0x0B
ESME_RINVMSGID = 0x0C
ESME_RBINDFAIL = 0x0D
ESME_RINVPASWD = 0x0E
ESME_RINVSYSID = 0x0F
ESME_RMSGQFUL = 0x14
ESME_RINVSERTYP = 0x15
ESME_RINVESMCLASS = 0x43
ESME_RSUBMITFAIL = 0x45
ESME_RINVSRCTON = 0x48
ESME_RINVSRCNPI = 0x49
ESME_RINVDSTTON = 0x50
ESME_RINVDSTNPI = 0x51
ESME_RINVSYSTYP = 0x53
ESME_RINVREPFLAG = 0x54
ESME_RTHROTTLED = 0x58
ESME_RINVSCHED = 0x61
ESME_RINVEXPIRY = 0x62
ESME_RINVDFTMSGID = 0x63
ESME_RX_T_APPN = 0x64
ESME_RX_P_APPN = 0x65
ESME_RX_R_APPN = 0x66
ESME_RINVOPTPARSTREAM = 0xC0
ESME_ROPTPARNOTALLWD = 0xC1
ESME_RINVPARLEN = 0xC2
ESME_RMISSINGOPTPARAM = 0xC3
ESME_RINVOPTPARAMVAL = 0xC4
ESME_RDELIVERYFAILURE = 0xFE
ESME_RUNKNOWNERR = 0xFF

STATUS_NAMES: dict[int, str] = {
    value: name for name, value in globals().items() if name.startswith("ESME_R")
}


def status_name(status: int) -> str:
    """`ESME_RTHROTTLED` for 0x58; vendor codes as hex."""
    return STATUS_NAMES.get(status, f"0x{status:08X}")


# -- optional parameter tags (SMPP 3.4 section 5.3.2) -------------------------------------------
TLV_RECEIPTED_MESSAGE_ID = 0x001E
TLV_NETWORK_ERROR_CODE = 0x0423
TLV_MESSAGE_PAYLOAD = 0x0424
TLV_MESSAGE_STATE = 0x0427
TLV_SC_INTERFACE_VERSION = 0x0210

INTERFACE_VERSION = 0x34
HEADER = struct.Struct(">IIII")
HEADER_LEN = HEADER.size
# message_payload may carry up to 64K octets; anything much larger is a corrupt stream.
MAX_PDU = 70_000

# Field sizes without the terminating NUL (SMPP 3.4 sections 4.1 and 4.4).
MAX_SYSTEM_ID = 15
MAX_PASSWORD = 8
MAX_SYSTEM_TYPE = 12
MAX_ADDRESS = 20
MAX_SHORT_MESSAGE = 254

ESM_UDHI = 0x40
DATA_CODING_DEFAULT = 0x00  # the SMSC default alphabet: GSM 03.38, one septet per octet
DATA_CODING_UCS2 = 0x08
REGISTERED_DELIVERY_RECEIPT = 0x01  # an SMSC receipt on final success or failure


class PduError(ValueError):
    """The byte stream cannot be framed into PDUs: the session has to be dropped."""


@dataclass(frozen=True, slots=True)
class Header:
    length: int
    command_id: int
    status: int
    sequence: int


def split_frames(buffer: bytearray) -> Iterator[tuple[Header, bytes]]:
    """Take every complete PDU off the front of `buffer` (which keeps what is left)."""
    offset = 0
    end = len(buffer)
    try:
        while end - offset >= HEADER_LEN:
            length, command_id, status, sequence = HEADER.unpack_from(buffer, offset)
            if length < HEADER_LEN or length > MAX_PDU:
                raise PduError(f"command_length {length} is out of range")
            if end - offset < length:
                break
            yield (
                Header(length, command_id, status, sequence),
                bytes(buffer[offset : offset + length]),
            )
            offset += length
    finally:
        del buffer[:offset]


def pdu(command_id: int, sequence: int, body: bytes = b"", status: int = ESME_ROK) -> bytes:
    return HEADER.pack(HEADER_LEN + len(body), command_id, status, sequence) + body


def c_string(value: str, limit: int, field: str) -> bytes:
    raw = value.encode("ascii")
    if len(raw) > limit:
        raise ValueError(f"{field} is longer than {limit} characters")
    return raw + b"\0"


def read_c_strings(body: bytes, count: int) -> tuple[list[str], int]:
    """The first `count` C-strings of a body and the offset after them; short bodies give ''."""
    values: list[str] = []
    offset = 0
    for _ in range(count):
        end = body.find(b"\0", offset)
        if end < 0:
            values.append(body[offset:].decode("ascii", "replace"))
            offset = len(body)
        else:
            values.append(body[offset:end].decode("ascii", "replace"))
            offset = end + 1
    return values, offset


def bind_body(
    system_id: str, password: str, system_type: str, addr_ton: int = 0, addr_npi: int = 0
) -> bytes:
    return (
        c_string(system_id, MAX_SYSTEM_ID, "system_id")
        + c_string(password, MAX_PASSWORD, "password")
        + c_string(system_type, MAX_SYSTEM_TYPE, "system_type")
        + bytes((INTERFACE_VERSION, addr_ton, addr_npi))
        + b"\0"  # address_range: any
    )


@dataclass(frozen=True, slots=True)
class BindRequest:
    system_id: str
    password: str
    system_type: str


def read_bind(body: bytes) -> BindRequest:
    (system_id, password, system_type), _ = read_c_strings(body, 3)
    return BindRequest(system_id, password, system_type)


def bind_resp_body(system_id: str) -> bytes:
    tlv = struct.pack(">HHB", TLV_SC_INTERFACE_VERSION, 1, INTERFACE_VERSION)
    return system_id.encode("ascii", "replace")[:MAX_SYSTEM_ID] + b"\0" + tlv


def message_id_body(message_id: str) -> bytes:
    """The body of submit_sm_resp (and, empty, of deliver_sm_resp)."""
    return message_id.encode("ascii", "replace") + b"\0"


def read_message_id(body: bytes) -> str:
    (message_id,), _ = read_c_strings(body, 1)
    return message_id


# -- TLVs ---------------------------------------------------------------------------------------


def tlv_map(tlvs: Sequence[smpp34.Tlv]) -> dict[int, bytes]:
    """Tag to value; a repeated tag keeps its first value."""
    found: dict[int, bytes] = {}
    for tlv in tlvs:
        found.setdefault(tlv.tag, tlv.value)
    return found


# -- text: GSM 03.38 (unpacked, one septet per octet) and UCS-2 ---------------------------------

# GSM 03.38 default alphabet in code order; 0x1B is the escape to the extension table.
_GSM7_TABLE = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"
    " !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXTENSION = {
    "\f": 0x0A, "^": 0x14, "{": 0x28, "}": 0x29, "\\": 0x2F,
    "[": 0x3C, "~": 0x3D, "]": 0x3E, "|": 0x40, "€": 0x65,
}  # fmt: skip
_GSM7_ENCODE: dict[str, bytes] = {
    **{ch: bytes((code,)) for code, ch in enumerate(_GSM7_TABLE) if code != 0x1B},
    **{ch: bytes((0x1B, code)) for ch, code in _GSM7_EXTENSION.items()},
}
_GSM7_DECODE_EXT = {code: ch for ch, code in _GSM7_EXTENSION.items()}
ESCAPE = 0x1B


def gsm7_encode(text: str) -> bytes:
    """Unpacked GSM 03.38; ValueError names the first character outside the alphabet."""
    try:
        return b"".join(_GSM7_ENCODE[ch] for ch in text)
    except KeyError as exc:
        raise ValueError(f"{exc.args[0]!r} is not in the GSM 03.38 alphabet") from None


def gsm7_decode(data: bytes) -> str:
    out: list[str] = []
    escaped = False
    for byte in data:
        if escaped:
            # An unknown escape reads as a space, as 3GPP TS 23.038 asks of receivers.
            out.append(_GSM7_DECODE_EXT.get(byte, " "))
            escaped = False
        elif byte == ESCAPE:
            escaped = True
        else:
            out.append(_GSM7_TABLE[byte & 0x7F])
    return "".join(out)


def decode_text(data: bytes, data_coding: int) -> str:
    """A short_message or message_payload as text, for the data codings dispatchd sends."""
    if data_coding == DATA_CODING_UCS2:
        return data.decode("utf-16-be", "replace")
    if data_coding == DATA_CODING_DEFAULT:
        return gsm7_decode(data)
    return data.decode("latin-1")


@dataclass(frozen=True, slots=True)
class EncodedText:
    data_coding: int
    data: bytes
    parts: list[bytes]  # the payload cut for UDH concatenation; one part when it fits one SMS


def _cut(
    data: bytes, size: int, *, unit: int, keeps_next: Callable[[bytes, int], bool]
) -> list[bytes]:
    """Cut `data` into parts of at most `size` bytes, never between two halves of a character."""
    parts: list[bytes] = []
    start = 0
    while len(data) - start > size:
        end = start + size
        if keeps_next(data, end):
            end -= unit
        parts.append(data[start:end])
        start = end
    parts.append(data[start:])
    return parts


def _gsm7_splits_escape(data: bytes, end: int) -> bool:
    """Whether a cut before `end` would leave an escape octet without its character."""
    run = 0
    index = end - 1
    while index >= 0 and data[index] == ESCAPE:
        run += 1
        index -= 1
    return run % 2 == 1


def _ucs2_splits_pair(data: bytes, end: int) -> bool:
    """Whether the code unit before `end` is a high surrogate whose low half follows."""
    return 0xD8 <= data[end - 2] <= 0xDB


GSM7_PART_OCTETS = 153  # 160 septets less the 7 the concatenation UDH takes
UCS2_PART_OCTETS = 134  # 140 octets less the 6 of the UDH: 67 UTF-16 code units


def encode_text(text: str) -> EncodedText:
    """The data_coding and octets for `text`, and its UDH parts, as `segment` counts them."""
    seg = segment(text)
    if seg.encoding is Encoding.GSM7:
        data = gsm7_encode(text)
        coding, size, unit, splits = DATA_CODING_DEFAULT, GSM7_PART_OCTETS, 1, _gsm7_splits_escape
    else:
        data = text.encode("utf-16-be", "surrogatepass")
        coding, size, unit, splits = DATA_CODING_UCS2, UCS2_PART_OCTETS, 2, _ucs2_splits_pair
    parts = [data] if seg.segments == 1 else _cut(data, size, unit=unit, keeps_next=splits)
    return EncodedText(coding, data, parts)


def udh(reference: int, total: int, number: int) -> bytes:
    """A concatenation header with an 8-bit reference (3GPP TS 23.040 IEI 0x00)."""
    return bytes((0x05, 0x00, 0x03, reference & 0xFF, total, number))


@dataclass(frozen=True, slots=True)
class Concatenation:
    reference: int
    total: int
    number: int


def read_udh(short_message: bytes) -> tuple[Concatenation | None, bytes]:
    """The concatenation element of a UDH (8- or 16-bit reference) and the text after it."""
    if not short_message:
        return None, short_message
    length = short_message[0]
    header, text = short_message[1 : 1 + length], short_message[1 + length :]
    index = 0
    while index + 2 <= len(header):
        iei, size = header[index], header[index + 1]
        value = header[index + 2 : index + 2 + size]
        if iei == 0x00 and size == 3 and len(value) == 3:
            return Concatenation(value[0], value[1], value[2]), text
        if iei == 0x08 and size == 4 and len(value) == 4:
            return Concatenation(int.from_bytes(value[:2], "big"), value[2], value[3]), text
        index += 2 + size
    return None, text


def relative_validity(seconds: float) -> str:
    """SMPP relative time (section 7.1.1.2), capped at 30 days: `000001020304000R`."""
    total = max(1, min(int(seconds), 30 * 86_400))
    days, rest = divmod(total, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"0000{days:02d}{hours:02d}{minutes:02d}{secs:02d}000R"


@dataclass(frozen=True, slots=True)
class Destination:
    addr: str
    ton: int
    npi: int


def destination(number: str) -> Destination:
    """An E.164 number as international/ISDN digits; anything else is passed as unknown TON."""
    if number.startswith("+"):
        addr, ton = number[1:], 1
    else:
        addr, ton = number, 0
    if len(addr) > MAX_ADDRESS or not addr:
        raise ValueError(f"destination {number!r} does not fit destination_addr")
    return Destination(addr, ton, 1)


@dataclass(frozen=True, slots=True)
class SubmitTemplate:
    """What every submit_sm of one connector shares."""

    source_addr: str
    source_addr_ton: int
    source_addr_npi: int
    service_type: str = ""


def submit_sm(
    template: SubmitTemplate,
    to: Destination,
    short_message: bytes,
    *,
    sequence: int,
    data_coding: int,
    esm_class: int = 0,
    validity_period: str = "",
    payload: bytes | None = None,
) -> bytes:
    tlvs = [smpp34.Tlv(TLV_MESSAGE_PAYLOAD, payload)] if payload is not None else []
    return smpp34.SubmitSm(
        template.source_addr,
        to.addr,
        short_message,
        service_type=template.service_type,
        source_addr_ton=template.source_addr_ton,
        source_addr_npi=template.source_addr_npi,
        dest_addr_ton=to.ton,
        dest_addr_npi=to.npi,
        esm_class=esm_class,
        validity_period=validity_period,
        registered_delivery=REGISTERED_DELIVERY_RECEIPT,
        data_coding=data_coding,
        tlvs=tlvs,
        sequence_number=sequence,
    ).encode()


def decode_submit(raw: bytes) -> smpp34.SubmitSm:
    """A submit_sm PDU; ValueError if it is not one or is malformed."""
    decoded = _decode(raw)
    if not isinstance(decoded, smpp34.SubmitSm):
        raise ValueError("not a submit_sm")
    return decoded


def decode_deliver(raw: bytes) -> smpp34.DeliverSm:
    """A deliver_sm PDU; ValueError if it is not one or is malformed."""
    decoded = _decode(raw)
    if not isinstance(decoded, smpp34.DeliverSm):
        raise ValueError("not a deliver_sm")
    return decoded


def _decode(raw: bytes) -> smpp34.SubmitSm | smpp34.DeliverSm | smpp34.RawPdu:
    try:
        return smpp34.decode(raw)
    except smpp34.SmppError as exc:
        raise ValueError(f"undecodable PDU: {exc}") from exc


def deliver_sm(
    source_addr: str,
    destination_addr: str,
    short_message: bytes,
    *,
    sequence: int,
    esm_class: int,
    tlvs: Sequence[tuple[int, bytes]] = (),
) -> bytes:
    return smpp34.DeliverSm(
        source_addr,
        destination_addr,
        short_message,
        source_addr_ton=1,
        source_addr_npi=1,
        esm_class=esm_class,
        tlvs=[smpp34.Tlv(tag, value) for tag, value in tlvs],
        sequence_number=sequence,
    ).encode()
