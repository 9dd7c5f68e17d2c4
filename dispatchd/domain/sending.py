"""A send request's fields checked and normalised: pure, so every rule is a unit test.

Every problem is collected, in the order of SEND_FIELDS, so a client fixes them all at once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from dispatchd.domain.addresses import private_literal
from dispatchd.domain.encoding import segment, smart_encode
from dispatchd.domain.errors import FieldError, ValidationFailed
from dispatchd.domain.numbers import NumberError, to_e164

# In the order their errors are listed.
SEND_FIELDS = (
    "to_number",
    "message",
    "send_at",
    "validity_period",
    "smart_encoding",
    "status_callback_url",
)
# NUL and lone UTF-16 surrogates: a JSON string may hold them ("\\u0000", "\\ud800"), but a
# surrogate cannot be encoded as UTF-8 (SQLite refused it: a 500) and NUL is no SMS text
# (providers written in C cut the message there).
_NOT_TEXT = re.compile("[\x00\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class SendRules:
    """What the configuration says about accepting messages."""

    default_region: str
    max_segments: int
    smart_encoding: bool  # the default when a request does not say
    can_sign: bool  # a [webhooks] secret is set, so status callbacks can be sent
    allow_private: bool  # status callbacks may go to private addresses
    default_callback_url: str | None = None


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


def text_errors(fields: Mapping[str, Any], names: tuple[str, ...]) -> list[FieldError]:
    """A field error for each named string field holding NUL or a lone surrogate."""
    errors = []
    for name in names:
        value = fields.get(name)
        if isinstance(value, str) and (found := _NOT_TEXT.search(value)):
            char = found.group()
            what = "a NUL character" if char == "\x00" else "a lone UTF-16 surrogate"
            errors.append(
                FieldError(
                    name,
                    "invalid_characters",
                    f"{name} contains {what} (U+{ord(char):04X} at position {found.start()}), "
                    "which is not text; send valid Unicode without NUL.",
                )
            )
    return errors


def validate_send(fields: Mapping[str, Any], rules: SendRules, now: float) -> SendRequest:
    """The send request in `fields`; ValidationFailed listing every problem otherwise."""
    errors = text_errors(fields, SEND_FIELDS)
    bad = {e.field for e in errors}
    data = {k: v for k, v in fields.items() if k not in bad}
    e164 = _check_number(data.get("to_number"), rules.default_region, errors, "to_number" in bad)
    send_at = _parse_send_at(data.get("send_at"), now)
    validity = _parse_validity(data.get("validity_period"))
    smart = _parse_flag("smart_encoding", data.get("smart_encoding"), rules.smart_encoding)
    url = _parse_callback_url(
        data.get("status_callback_url"), can_sign=rules.can_sign, allow_private=rules.allow_private
    )
    errors += [v for v in (send_at, validity, smart, url) if isinstance(v, FieldError)]
    checked = (
        None if "message" in bad else _check_text(data.get("message"), smart is True, rules, errors)
    )
    if errors or checked is None:
        errors.sort(key=lambda e: SEND_FIELDS.index(e.field) if e.field in SEND_FIELDS else 99)
        raise ValidationFailed(errors)
    text, segments, encoding = checked
    return SendRequest(
        e164,
        text,
        segments,
        encoding,
        send_at=send_at if isinstance(send_at, float) else None,
        validity_period=validity if isinstance(validity, float) else None,
        status_callback_url=url if isinstance(url, str) else rules.default_callback_url,
    )


def _check_number(number: Any, region: str, errors: list[FieldError], refused: bool) -> str:
    """`to_number` in E.164, or "" with its problem added to `errors`."""
    if refused:
        return ""
    if number is None:
        errors.append(FieldError("to_number", "missing", "to_number is required."))
    elif not isinstance(number, str):
        errors.append(FieldError("to_number", "not_a_string", "to_number must be a string."))
    else:
        try:
            return to_e164(number, region)
        except NumberError as exc:
            errors.append(FieldError("to_number", exc.code, exc.message))
    return ""


def _check_text(
    text: object, smart: bool, rules: SendRules, errors: list[FieldError]
) -> tuple[str, int, str] | None:
    """The final text (smart-encoded if asked) with its segment count and encoding, or None
    with its problem in `errors`."""
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
    if seg.segments > rules.max_segments:
        errors.append(
            FieldError(
                "message",
                "too_long",
                f"message needs {seg.segments} SMS segments ({seg.encoding}); "
                f"at most {rules.max_segments} are allowed.",
            )
        )
        return None
    return text, seg.segments, seg.encoding.value
