"""What an SMSC's answers mean, without I/O: submit_sm_resp statuses, receipts, message ids.

Receipts. SMPP 3.4 carries a receipt's meaning twice: in the `receipted_message_id` and
`message_state` TLVs (section 5.3.2, defined by the standard) and in the short_message
text of Appendix B (`id:… sub:… dlvrd:… submit date:… done date:… stat:… err:… text:…`),
whose format the standard itself calls SMSC-specific. So the TLVs win where both are
present, and the text is read leniently: keys in any case, `submit_date` or `done\\ndate`,
10-digit `YYMMDDhhmm` or 12-digit `YYMMDDhhmmss` dates, missing fields.

Statuses. DELIVRD is `delivered`; UNDELIV, REJECTD, DELETED, EXPIRED and UNKNOWN are
`failed`; ENROUTE and ACCEPTD are intermediate (recorded, the message does not change).
No receipt maps to `invalid`: the `err:` field and the network_error_code TLV are
network- or SMSC-specific (Appendix B says so of `err:`), so none of them can be proven
to mean "the number itself is bad", and a wrong guess would suppress a good number.

Ids. The same message id can come back in another case, with or without leading zeros,
or in decimal where the submit_sm_resp gave hex (SMPP 3.3 habits, or an SMSC's own
setting). `canonical_id` is the one spelling dispatchd stores and looks up; `aliases`
lists the other plausible ones (hex read as decimal and the reverse), canonicalised.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from dispatchd.domain.models import Status
from dispatchd.providers import smpp_pdu as p
from dispatchd.providers.base import (
    Accepted,
    BadReport,
    Outcome,
    Rejected,
    Report,
    Throttled,
    Unavailable,
)

# -- submit_sm_resp ---------------------------------------------------------------------------

THROTTLE_STATUSES = frozenset({p.ESME_RTHROTTLED, p.ESME_RMSGQFUL})

# Documented refusals of this message's fields: sending it again unchanged gets the same
# answer, another provider may take it. ESME_RINVDSTADR is among them and not an invalid
# number: the spec's "Invalid Dest Addr" covers a destination this SMSC cannot parse or
# route (wrong TON/NPI or format, no route for the prefix), which says nothing about
# whether the subscriber exists; a misconfigured bind would otherwise suppress every number.
REJECT_STATUSES = frozenset(
    {
        p.ESME_RINVMSGLEN,
        p.ESME_RINVCMDLEN,
        p.ESME_RINVCMDID,
        p.ESME_RINVPRTFLG,
        p.ESME_RINVREGDLVFLG,
        p.ESME_RINVSRCADR,
        p.ESME_RINVDSTADR,
        p.ESME_RINVSERTYP,
        p.ESME_RINVESMCLASS,
        p.ESME_RINVSRCTON,
        p.ESME_RINVSRCNPI,
        p.ESME_RINVDSTTON,
        p.ESME_RINVDSTNPI,
        p.ESME_RINVREPFLAG,
        p.ESME_RINVSCHED,
        p.ESME_RINVEXPIRY,
        p.ESME_RINVDFTMSGID,
        p.ESME_RX_P_APPN,
        p.ESME_RX_R_APPN,
        p.ESME_RINVOPTPARSTREAM,
        p.ESME_ROPTPARNOTALLWD,
        p.ESME_RINVPARLEN,
        p.ESME_RMISSINGOPTPARAM,
        p.ESME_RINVOPTPARAMVAL,
    }
)
# Everything else is Unavailable: system errors (ESME_RSYSERR, ESME_RX_T_APPN,
# ESME_RUNKNOWNERR), the session's state (ESME_RINVBNDSTS...), the generic
# ESME_RSUBMITFAIL, and vendor codes (0x400-0x4FF) we cannot read. Unavailable keeps the
# message alive (retried, failed over) where a wrong Rejected could end it.


def submit_outcome(status: int, message_id: str) -> Outcome:
    """The outcome of one submit_sm_resp (or generic_nack) with this command_status."""
    name = p.status_name(status)
    if status == p.ESME_ROK:
        canonical = canonical_id(message_id)
        # A 3.4 SMSC must send an id; without one the message is still taken (resending
        # would deliver it twice), and its receipts cannot be matched.
        return Accepted(canonical or None)
    reason = f"submit_sm_resp {name} (0x{status:08X})"
    if status in THROTTLE_STATUSES:
        return Throttled(reason)
    if status in REJECT_STATUSES:
        return Rejected(reason, code=name)
    return Unavailable(reason)


# -- message ids ------------------------------------------------------------------------------

_DECIMAL = re.compile(r"[0-9]+")
_HEX = re.compile(r"[0-9a-f]+")
# Past this many digits an id is not a number written two ways, and int() would be slow.
_MAX_NUMERIC = 40


def canonical_id(raw: str) -> str:
    """The spelling of an SMSC message id that dispatchd stores: lower case, no leading zeros."""
    value = raw.strip().strip("\0").strip().lower()
    stripped = value.lstrip("0")
    if value and not stripped:
        return "0"
    return stripped


def id_aliases(canonical: str) -> tuple[str, ...]:
    """The other spellings of a canonical id: read as hex, given in decimal, and the reverse."""
    if not canonical or len(canonical) > _MAX_NUMERIC:
        return ()
    found: list[str] = []
    if _DECIMAL.fullmatch(canonical):
        found.append(format(int(canonical), "x"))
    if _HEX.fullmatch(canonical):
        found.append(str(int(canonical, 16)))
    return tuple(dict.fromkeys(a for a in found if a != canonical))


# -- receipts ---------------------------------------------------------------------------------

ESM_TYPE_MASK = 0x3C
ESM_SMSC_RECEIPT = 0x04
ESM_INTERMEDIATE = 0x20


def is_receipt(esm_class: int) -> bool:
    """An SMSC delivery receipt or intermediate notification (esm_class bits 2-5)."""
    return esm_class & ESM_TYPE_MASK in (ESM_SMSC_RECEIPT, ESM_INTERMEDIATE)


# message_state (SMPP 3.4 section 5.2.28) as the Appendix B stat word.
MESSAGE_STATES: Mapping[int, str] = {
    1: "ENROUTE",
    2: "DELIVRD",
    3: "EXPIRED",
    4: "DELETED",
    5: "UNDELIV",
    6: "ACCEPTD",
    7: "UNKNOWN",
    8: "REJECTD",
}

STAT_STATUS: Mapping[str, Status | None] = {
    "DELIVRD": Status.DELIVERED,
    "UNDELIV": Status.FAILED,
    "REJECTD": Status.FAILED,
    "DELETED": Status.FAILED,
    "UNKNOWN": Status.FAILED,
    "EXPIRED": Status.FAILED,
    "ENROUTE": None,
    "ACCEPTD": None,
}
# The state names written out, which some SMSCs put in `stat:`, and SMPP 5.0's additions.
_STAT_SYNONYMS: Mapping[str, str] = {
    "DELIVERED": "DELIVRD",
    "UNDELIVERABLE": "UNDELIV",
    "REJECTED": "REJECTD",
    "ACCEPTED": "ACCEPTD",
    "SKIPPED": "UNDELIV",  # 5.0 state 9: accepted, never sent, final
    "SCHEDULED": "ENROUTE",  # 5.0 state 0: not yet attempted
}


def stat_status(stat: str) -> Status | None:
    """The dispatchd status a stat word means; an unknown word is only recorded."""
    word = stat.upper()
    return STAT_STATUS.get(_STAT_SYNONYMS.get(word, word))


_KEY = re.compile(
    r"(?<![A-Za-z_])(id|sub|dlvrd|submit[ _\r\n]*date|done[ _\r\n]*date|stat|err|text)[ \t]*:",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class ReceiptText:
    """The Appendix B fields found in a receipt's text; absent ones are None."""

    id: str | None = None
    sub: str | None = None
    dlvrd: str | None = None
    submit_date: datetime | None = None
    done_date: datetime | None = None
    stat: str | None = None
    err: str | None = None
    text: str | None = None


def parse_receipt_text(text: str) -> ReceiptText:
    """Read `id:… sub:… … stat:… err:… text:…`; fields may be missing or out of order."""
    fields: dict[str, str] = {}
    matches = list(_KEY.finditer(text))
    for index, match in enumerate(matches):
        key = re.sub(r"[ _\r\n]+", "_", match.group(1).lower())
        if key == "text":
            # The message's first characters may contain anything, keys included.
            fields.setdefault(key, text[match.end() :].strip())
            break
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        token = text[match.end() : end].split()
        fields.setdefault(key, token[0] if token else "")
    return ReceiptText(
        id=fields.get("id") or None,
        sub=fields.get("sub") or None,
        dlvrd=fields.get("dlvrd") or None,
        submit_date=receipt_date(fields.get("submit_date")),
        done_date=receipt_date(fields.get("done_date")),
        stat=(fields.get("stat") or "").upper() or None,
        err=fields.get("err") or None,
        text=fields.get("text"),
    )


def receipt_date(value: str | None) -> datetime | None:
    """A `YYMMDDhhmm` or `YYMMDDhhmmss` date (SMSC local time); None if it is neither."""
    if value is None or not value.isdigit() or len(value) not in (10, 12):
        return None
    try:
        return datetime.strptime(value, "%y%m%d%H%M%S" if len(value) == 12 else "%y%m%d%H%M")
    except ValueError:
        return None


def _network_error(value: bytes | None) -> str | None:
    """network_error_code: a network type octet and a 2-octet code, as `type:code`."""
    if value is None or len(value) != 3:
        return None
    return f"{value[0]}:{int.from_bytes(value[1:], 'big')}"


def _receipt_body(short_message: bytes, data_coding: int, tlvs: Mapping[int, bytes]) -> str:
    data = short_message or tlvs.get(p.TLV_MESSAGE_PAYLOAD, b"")
    if data_coding == p.DATA_CODING_UCS2:
        return data.decode("utf-16-be", "replace")
    # Receipt text is ASCII letters and digits, the same octets in GSM 03.38 and Latin-1.
    return data.decode("latin-1")


def parse_receipt(short_message: bytes, tlvs: Mapping[int, bytes], data_coding: int = 0) -> Report:
    """The report a deliver_sm receipt carries; BadReport if it names no id or no state."""
    fields = parse_receipt_text(_receipt_body(short_message, data_coding, tlvs))
    tlv_id = tlvs.get(p.TLV_RECEIPTED_MESSAGE_ID)
    ids = [
        canonical_id(raw)
        for raw in (tlv_id.decode("latin-1") if tlv_id is not None else None, fields.id)
        if raw is not None
    ]
    ids = [i for i in ids if i]
    if not ids:
        raise BadReport("receipt without a message id (no receipted_message_id, no id:)")
    state = tlvs.get(p.TLV_MESSAGE_STATE)
    stat = MESSAGE_STATES.get(state[0]) if state is not None and len(state) == 1 else None
    stat = stat or fields.stat
    if stat is None:
        raise BadReport(f"receipt for {ids[0]} without a state (no message_state, no stat:)")
    aliases = [alias for i in ids for alias in (i, *id_aliases(i))]
    return Report(
        provider_message_id=ids[0],
        status=stat_status(stat),
        raw_status=stat,
        error_code=fields.err or _network_error(tlvs.get(p.TLV_NETWORK_ERROR_CODE)),
        aliases=tuple(a for a in dict.fromkeys(aliases) if a != ids[0]),
    )
