"""Unit tests for smart encoding: typographic characters replaced by GSM-7 equivalents."""

from __future__ import annotations

import pytest

from dispatchd.domain.encoding import GSM7_ALL, Encoding, segment, smart_encode

# What a phone or word processor makes of `"Don't" - wait...` plus a no-break space.
CURLY = "\u201cDon\u2019t\u201d \u2014 wait\u2026\u00a0ok"


def test_curly_text_becomes_gsm7_with_smart_encoding_and_stays_ucs2_without() -> None:
    assert segment(CURLY).encoding is Encoding.UCS2
    smart = smart_encode(CURLY)
    assert smart == '"Don\'t" - wait... ok'
    assert segment(smart).encoding is Encoding.GSM7


def test_it_saves_segments_on_a_long_text() -> None:
    text = "It\u2019s here \u2013 " * 12  # 144 characters: 3 UCS-2 parts, 1 GSM-7 SMS
    assert segment(text).segments == 3
    assert segment(smart_encode(text)).segments == 1


@pytest.mark.parametrize(
    ("char", "replacement"),
    [
        ("\u2018", "'"),
        ("\u2019", "'"),
        ("\u201a", "'"),
        ("\u201b", "'"),
        ("\u2032", "'"),
        ("\u201c", '"'),
        ("\u201d", '"'),
        ("\u201e", '"'),
        ("\u201f", '"'),
        ("\u2033", '"'),
        ("\u2010", "-"),
        ("\u2011", "-"),
        ("\u2012", "-"),
        ("\u2013", "-"),
        ("\u2014", "-"),
        ("\u2015", "-"),
        ("\u2026", "..."),
        ("\u00a0", " "),
        ("\u2002", " "),
        ("\u2009", " "),
        ("\u200a", " "),
        ("\u202f", " "),
        ("\u205f", " "),
        ("\u3000", " "),
        ("\u200b", ""),
        ("\ufeff", ""),
    ],
)
def test_each_typographic_character_has_a_gsm7_stand_in(char: str, replacement: str) -> None:
    assert smart_encode(f"a{char}b") == f"a{replacement}b"
    assert set(replacement) <= GSM7_ALL


def test_text_with_no_equivalent_is_left_alone_and_stays_ucs2() -> None:
    # Smart encoding only swaps look-alikes: real non-GSM letters and emoji are kept.
    text = "\u201cGr\u00fc\u00dfe\u201d \u0416 \U0001f44b"
    smart = smart_encode(text)
    assert smart == '"Gr\u00fc\u00dfe" \u0416 \U0001f44b'
    assert segment(smart).encoding is Encoding.UCS2


def test_plain_gsm7_text_is_unchanged() -> None:
    text = "Hello @ 10:30, 5\u20ac {ok} [x] ~ caf\u00e9"
    assert smart_encode(text) == text
