"""SMS encoding detection and segment counting (GSM 03.38 / UCS-2)."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

__all__ = ["Encoding", "Segmentation", "segment", "smart_encode"]


class Encoding(enum.StrEnum):
    """Character encoding an SMS will be sent with."""

    GSM7 = "GSM-7"
    UCS2 = "UCS-2"


@dataclass(frozen=True, slots=True)
class Segmentation:
    """How a message body splits into SMS parts."""

    encoding: Encoding
    segments: int
    units: int


# GSM 03.38 default alphabet, excluding 0x1B (ESC), which only introduces the extension table.
GSM7_BASIC: frozenset[str] = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# Each of these is sent as ESC + char, so it costs two septets.
GSM7_EXTENSION: frozenset[str] = frozenset("\f^{}\\[~]|€")
GSM7_ALL: frozenset[str] = GSM7_BASIC | GSM7_EXTENSION

_GSM7_WIDE = re.compile("[" + "".join(re.escape(ch) for ch in sorted(GSM7_EXTENSION)) + "]")
_UCS2_WIDE = re.compile("[\U00010000-\U0010ffff]")

GSM7_SINGLE_MAX = 160
GSM7_PART_MAX = 153  # 7 septets go to the concatenation UDH
UCS2_SINGLE_MAX = 70
UCS2_PART_MAX = 67  # 6 bytes go to the concatenation UDH


def _parts(total: int, capacity: int) -> int:
    """Ceiling division for a run of one-unit characters."""
    return -(-total // capacity)


def segment(text: str) -> Segmentation:
    """Pick the encoding for ``text`` and count its SMS parts and units."""
    chars = set(text)
    if chars <= GSM7_ALL:
        wide = chars & GSM7_EXTENSION
        # str.count runs in C; at most 10 passes instead of a Python loop over every char.
        units = len(text) + sum(text.count(ch) for ch in wide)
        if units <= GSM7_SINGLE_MAX:
            return Segmentation(Encoding.GSM7, 1, units)
        if not wide:
            return Segmentation(Encoding.GSM7, _parts(units, GSM7_PART_MAX), units)
        return Segmentation(Encoding.GSM7, _pack(text, _GSM7_WIDE, GSM7_PART_MAX), units)

    # Each UTF-16 code unit is 2 bytes; astral chars become a surrogate pair (2 units).
    # surrogatepass: a lone surrogate (legal in a JSON string) must count, not raise.
    units = len(text.encode("utf-16-le", "surrogatepass")) // 2
    if units <= UCS2_SINGLE_MAX:
        return Segmentation(Encoding.UCS2, 1, units)
    if units == len(text):
        return Segmentation(Encoding.UCS2, _parts(units, UCS2_PART_MAX), units)
    return Segmentation(Encoding.UCS2, _pack(text, _UCS2_WIDE, UCS2_PART_MAX), units)


def _pack(text: str, wide: re.Pattern[str], capacity: int) -> int:
    """Greedily fill parts, never splitting a two-unit char across a boundary."""
    # Only two-unit chars can leave a gap, so step between them (found by a C-level regex scan)
    # and fill the one-unit runs in between arithmetically.
    parts = 1
    used = 0
    start = 0
    for match in wide.finditer(text):
        used += match.start() - start
        if used > capacity:
            parts += (used - 1) // capacity
            used = (used - 1) % capacity + 1
        if used + 2 > capacity:
            parts += 1
            used = 0
        used += 2
        start = match.end()
    used += len(text) - start
    if used > capacity:
        parts += (used - 1) // capacity
    return parts


# Typographic characters that word processors and phones substitute for plain ones. Each
# would force the whole message into UCS-2 (70 characters a segment instead of 160), and
# each has an equivalent in the GSM-7 alphabet that reads the same on a phone.
_SMART_MAP: dict[str, str] = {
    # Single quotes, primes and the modifier-letter apostrophe.
    **dict.fromkeys("\u2018\u2019\u201a\u201b\u2032\u2035\u02bc", "'"),
    # Double quotes, double primes and guillemets.
    **dict.fromkeys("\u201c\u201d\u201e\u201f\u2033\u2036\u00ab\u00bb", '"'),
    # Hyphen, non-breaking hyphen, figure, en, em and horizontal-bar dashes, minus sign.
    **dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2212", "-"),
    "\u2026": "...",  # horizontal ellipsis
    # No-break, en/em/thin/hair and the other fixed-width spaces, ideographic space.
    **dict.fromkeys("\u00a0\u2000\u2001\u2002\u2003\u2004\u2005\u2006", " "),
    **dict.fromkeys("\u2007\u2008\u2009\u200a\u202f\u205f\u3000", " "),
    # Invisible: zero-width space, word joiner, BOM/zero-width no-break space, soft hyphen.
    **dict.fromkeys("\u200b\u2060\ufeff\u00ad", ""),
}
_SMART_TABLE = str.maketrans(_SMART_MAP)


def smart_encode(text: str) -> str:
    """Replace typographic quotes, dashes, ellipses and unicode spaces with GSM-7 ones."""
    return text.translate(_SMART_TABLE)
