"""Unit tests for dispatchd.domain.encoding."""

from __future__ import annotations

import pytest

from dispatchd.domain.encoding import GSM7_BASIC, GSM7_EXTENSION, Encoding, Segmentation, segment

GSM = Encoding.GSM7
UCS = Encoding.UCS2


def test_empty_text_is_one_gsm_segment() -> None:
    assert segment("") == Segmentation(GSM, 1, 0)


@pytest.mark.parametrize(
    ("length", "segments"),
    [(1, 1), (153, 1), (160, 1), (161, 2), (306, 2), (307, 3), (459, 3), (460, 4)],
)
def test_gsm7_plain_boundaries(length: int, segments: int) -> None:
    assert segment("a" * length) == Segmentation(GSM, segments, length)


@pytest.mark.parametrize(("count", "segments"), [(1, 1), (80, 1), (81, 2), (152, 2), (153, 3)])
def test_gsm7_extension_char_counts_two_septets(count: int, segments: int) -> None:
    # A 153-septet part holds only 76 pairs, so 153 pairs (306 septets) need three parts.
    assert segment("€" * count) == Segmentation(GSM, segments, 2 * count)


@pytest.mark.parametrize("char", sorted(GSM7_EXTENSION))
def test_every_extension_char_is_gsm7_and_costs_two(char: str) -> None:
    assert segment(char) == Segmentation(GSM, 1, 2)


def test_whole_basic_alphabet_is_gsm7_single_septets() -> None:
    text = "".join(sorted(GSM7_BASIC))
    assert len(text) == 127  # 128 code points minus ESC
    assert segment(text) == Segmentation(GSM, 1, 127)


def test_gsm7_mixed_basic_and_extension() -> None:
    assert segment("Price: 5€ [approx]") == Segmentation(GSM, 1, 21)


def test_gsm7_escape_pair_at_boundary_moves_to_next_part() -> None:
    # 152 + 2 would overflow part one, so the pair starts part two: 152 | 2+151 | 1.
    text = "a" * 152 + "€" + "a" * 152
    assert segment(text) == Segmentation(GSM, 3, 306)


def test_gsm7_escape_pair_exactly_filling_part_stays() -> None:
    text = "a" * 151 + "€" + "a" * 153
    assert segment(text) == Segmentation(GSM, 2, 306)


@pytest.mark.parametrize(
    "text",
    ["😀", "Привет", "a" * 200 + "Ж", "ç", "`", "\x1b", "\t", "naïve", "“quoted”"],
)
def test_non_gsm_char_forces_ucs2(text: str) -> None:
    assert segment(text).encoding is UCS


@pytest.mark.parametrize(
    ("length", "segments"),
    [(1, 1), (67, 1), (70, 1), (71, 2), (134, 2), (135, 3), (201, 3), (202, 4)],
)
def test_ucs2_bmp_boundaries(length: int, segments: int) -> None:
    assert segment("Ж" * length) == Segmentation(UCS, segments, length)


def test_single_emoji_is_two_units() -> None:
    assert segment("😀") == Segmentation(UCS, 1, 2)


@pytest.mark.parametrize(("count", "segments"), [(35, 1), (36, 2)])
def test_emoji_units_count_toward_single_limit(count: int, segments: int) -> None:
    assert segment("😀" * count) == Segmentation(UCS, segments, 2 * count)


def test_ucs2_surrogate_pair_at_boundary_moves_to_next_part() -> None:
    # 66 + 2 would overflow part one, so the emoji starts part two: 66 | 2+65 | 1.
    text = "Ж" * 66 + "😀" + "Ж" * 66
    assert segment(text) == Segmentation(UCS, 3, 134)


def test_ucs2_surrogate_pair_exactly_filling_part_stays() -> None:
    text = "Ж" * 65 + "😀" + "Ж" * 67
    assert segment(text) == Segmentation(UCS, 2, 134)


def test_gsm_extension_char_costs_one_unit_once_in_ucs2() -> None:
    assert segment("€Ж") == Segmentation(UCS, 1, 2)


def test_lone_surrogate_counts_one_unit() -> None:
    # json.loads('"\\ud800"') yields this; it must not raise.
    assert segment("a\ud800" * 40) == Segmentation(UCS, 2, 80)


def test_encoding_values() -> None:
    assert str(Encoding.GSM7) == "GSM-7"
    assert str(Encoding.UCS2) == "UCS-2"
