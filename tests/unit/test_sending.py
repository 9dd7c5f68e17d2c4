"""domain.sending: a send request's fields checked once, every problem listed in field order."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from dispatchd.domain.errors import ValidationFailed
from dispatchd.domain.sending import SendRules, validate_send

NOW = 1_750_000_000.0
RULES = SendRules(
    default_region="US",
    max_segments=3,
    smart_encoding=False,
    can_sign=True,
    allow_private=False,
    default_callback_url=None,
)


def problems(fields: Mapping[str, object], rules: SendRules = RULES) -> list[tuple[str, str]]:
    with pytest.raises(ValidationFailed) as caught:
        validate_send(fields, rules, NOW)
    return [(e.field, e.code) for e in caught.value.errors]


def test_a_valid_request_is_normalised_and_segmented_once() -> None:
    send = validate_send({"to_number": "(703) 457-3322", "message": "ж" * 71}, RULES, NOW)
    assert (send.to_number, send.segments, send.encoding) == ("+17034573322", 2, "UCS-2")
    assert send.send_at is None and send.validity_period is None


def test_smart_encoding_replaces_lookalikes_before_counting() -> None:
    text = "\u201chi\u201d " * 40  # curly quotes force UCS-2: 3 segments; straight ones fit GSM
    assert validate_send({"to_number": "+17034573322", "message": text}, RULES, NOW).segments == 3
    smart = {"to_number": "+17034573322", "message": text, "smart_encoding": True}
    send = validate_send(smart, RULES, NOW)
    assert (send.encoding, send.segments, send.message[0]) == ("GSM-7", 2, '"')


def test_every_problem_is_listed_in_field_order() -> None:
    fields = {"message": " ", "to_number": "12", "send_at": "2025-01-31T09:00", "smart_encoding": 1}
    assert problems(fields) == [
        ("to_number", "invalid_number"),
        ("message", "empty"),
        ("send_at", "no_timezone"),
        ("smart_encoding", "not_a_boolean"),
    ]


def test_nul_and_lone_surrogates_are_refused_once_not_also_as_missing() -> None:
    assert problems({"to_number": "+1703\x004573322", "message": "a\ud800"}) == [
        ("to_number", "invalid_characters"),
        ("message", "invalid_characters"),
    ]


def test_too_many_segments_names_the_limit() -> None:
    with pytest.raises(ValidationFailed) as caught:
        validate_send({"to_number": "+17034573322", "message": "x" * 500}, RULES, NOW)
    assert "at most 3" in caught.value.errors[0].message


def test_status_callbacks_need_a_signing_secret_and_a_public_address() -> None:
    fields = {
        "to_number": "+17034573322",
        "message": "hi",
        "status_callback_url": "http://10.0.0.1/",
    }
    assert problems(fields) == [("status_callback_url", "private_address")]
    unsigned = SendRules("US", 3, False, can_sign=False, allow_private=True)
    assert problems(fields, unsigned) == [("status_callback_url", "callbacks_disabled")]
    private_ok = SendRules("US", 3, False, can_sign=True, allow_private=True)
    assert validate_send(fields, private_ok, NOW).status_callback_url == "http://10.0.0.1/"


def test_the_default_callback_url_applies_when_the_request_names_none() -> None:
    rules = SendRules("US", 3, False, True, False, default_callback_url="https://example.com/cb")
    send = validate_send({"to_number": "+17034573322", "message": "hi"}, rules, NOW)
    assert send.status_callback_url == "https://example.com/cb"


def test_send_at_and_validity_are_bounded() -> None:
    fields = {
        "to_number": "+17034573322",
        "message": "hi",
        "send_at": "2099-01-01T00:00:00Z",
        "validity_period": 0,
    }
    assert problems(fields) == [("send_at", "out_of_range"), ("validity_period", "out_of_range")]
    ok = validate_send(
        {**fields, "send_at": "2025-06-15T15:06:40Z", "validity_period": 900}, RULES, NOW
    )
    assert (ok.send_at, ok.validity_period) == (1_750_000_000.0, 900.0)
