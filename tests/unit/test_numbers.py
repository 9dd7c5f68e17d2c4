"""Unit tests for dispatchd.domain.numbers."""

from __future__ import annotations

import pytest

from dispatchd.domain.numbers import NumberError, to_e164, valid_region


def _fullwidth(text: str) -> str:
    """Map ASCII '+' and digits to their fullwidth forms (U+FF0B, U+FF10..U+FF19)."""
    return text.translate({ord(c): ord(c) + 0xFEE0 for c in "+0123456789"})


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("+1 703-457-3322", "US", "+17034573322"),
        ("(703) 457-3322", "US", "+17034573322"),
        ("703.457.3322", "US", "+17034573322"),
        ("+17034573322", "GB", "+17034573322"),
        ("+44 20 7946 0958", "US", "+442079460958"),
        ("020 7946 0958", "GB", "+442079460958"),
        (_fullwidth("+1 703 457 3322"), "US", "+17034573322"),
        ("٧٠٣٤٥٧٣٣٢٢", "US", "+17034573322"),  # Arabic-Indic digits
    ],
)
def test_to_e164_valid(raw: str, region: str, expected: str) -> None:
    assert to_e164(raw, region) == expected


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("12", "invalid_number"),  # phonenumbers parses it; it just isn't a real number
        ("+1 555", "invalid_number"),
        ("+1 555 0100", "invalid_number"),
        ("hello", "unparseable"),
        ("", "unparseable"),
        ("7034573322\x00", "unparseable"),  # phonenumbers alone would accept this
        ("+1703\x004573322", "unparseable"),
        ("\x00", "unparseable"),
        ("+1703\ud8004573322", "unparseable"),  # lone surrogate
        ("7" * 200, "unparseable"),
        ("1" * 65, "unparseable"),
    ],
)
def test_to_e164_rejects(raw: str, code: str) -> None:
    with pytest.raises(NumberError) as info:
        to_e164(raw, "US")
    assert info.value.code == code
    assert str(info.value) == info.value.message


def test_national_number_with_unknown_region_is_unparseable() -> None:
    with pytest.raises(NumberError) as info:
        to_e164("7034573322", "XX")
    assert info.value.code == "unparseable"


def test_error_messages_name_the_input() -> None:
    with pytest.raises(NumberError) as info:
        to_e164("hello", "US")
    assert info.value.message == "'hello' is not a phone number we can parse."
    with pytest.raises(NumberError) as info:
        to_e164("+1 555 0100", "US")
    assert info.value.message == "'+1 555 0100' is not a valid phone number."


def test_overlong_message_does_not_echo_input() -> None:
    with pytest.raises(NumberError) as info:
        to_e164("9" * 200, "US")
    assert "9999" not in info.value.message
    assert "200" in info.value.message


def test_number_error_is_value_error() -> None:
    assert issubclass(NumberError, ValueError)


def test_repeated_calls_are_stable_through_cache() -> None:
    for _ in range(3):
        assert to_e164("(703) 457-3322", "US") == "+17034573322"
        with pytest.raises(NumberError) as info:
            to_e164("+1 555", "US")
        assert info.value.code == "invalid_number"


def test_same_raw_depends_on_region() -> None:
    assert to_e164("020 7946 0958", "GB") == "+442079460958"
    with pytest.raises(NumberError):
        to_e164("020 7946 0958", "US")


@pytest.mark.parametrize(
    ("region", "expected"),
    [("US", True), ("GB", True), ("DE", True), ("XX", False), ("", False), ("us", False)],
)
def test_valid_region(region: str, expected: bool) -> None:
    assert valid_region(region) is expected
