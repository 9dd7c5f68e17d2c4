"""Phone number normalisation to E.164."""

from __future__ import annotations

import functools
import re
from typing import Final

import phonenumbers

__all__ = ["MAX_INPUT_LENGTH", "NumberError", "to_e164", "valid_region"]

MAX_INPUT_LENGTH: Final = 64

UNPARSEABLE: Final = "unparseable"
INVALID_NUMBER: Final = "invalid_number"

# phonenumbers silently drops trailing control chars ("7034573322\x00" parses), so reject them.
_CONTROL_CHARS: Final = re.compile(r"[\x00-\x1f\x7f]")


class NumberError(ValueError):
    """The phone number is not usable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def to_e164(raw: str, default_region: str) -> str:
    """Parse and validate ``raw``, returning it in E.164 form or raising NumberError."""
    if len(raw) > MAX_INPUT_LENGTH:
        # Checked before the cache so hostile input can't bloat it or reach phonenumbers.
        raise NumberError(
            UNPARSEABLE,
            f"The phone number is too long ({len(raw)} characters, at most "
            f"{MAX_INPUT_LENGTH} allowed).",
        )
    ok, value = _lookup(raw, default_region)
    if ok:
        return value
    if value == UNPARSEABLE:
        raise NumberError(UNPARSEABLE, f"{raw!r} is not a phone number we can parse.")
    raise NumberError(INVALID_NUMBER, f"{raw!r} is not a valid phone number.")


@functools.lru_cache(maxsize=65536)
def _lookup(raw: str, default_region: str) -> tuple[bool, str]:
    """Return (True, e164) or (False, error code); a plain tuple so failures cache too."""
    if _CONTROL_CHARS.search(raw):
        return False, UNPARSEABLE
    try:
        parsed = phonenumbers.parse(raw, default_region)
    except phonenumbers.NumberParseException:
        return False, UNPARSEABLE
    if not phonenumbers.is_valid_number(parsed):
        return False, INVALID_NUMBER
    return True, phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def valid_region(region: str) -> bool:
    """Whether ``region`` is a region code phonenumbers knows (e.g. "US"; case-sensitive)."""
    return region in phonenumbers.SUPPORTED_REGIONS
