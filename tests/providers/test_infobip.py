"""The infobip kind, pure: golden requests, answers and reports from Infobip's API reference
(its OpenAPI examples for `POST /sms/3/messages` and the "Receive outbound SMS message
reports" webhook), and the status and error-code mapping.

The official SDK (`infobip-api-python-client`) is the oracle for the request and report
shapes where it is installed; those tests skip where it is not.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from dispatchd.domain.models import Status
from dispatchd.providers.base import (
    Accepted,
    BadReport,
    IncomingReport,
    Rejected,
    Report,
    Submission,
    Throttled,
    Unavailable,
)
from dispatchd.providers.infobip import (
    DELIVERED_STATUSES,
    INVALID_NUMBER_ERRORS,
    NOT_INVALID_ERRORS,
    REJECTED_STATUSES,
    STATUS_GROUPS,
    VALIDITY_MAX,
    Infobip,
    InfobipSettings,
    api_error,
    base_url,
    destination,
    report_status,
    validity_seconds,
)

# Its SDK oracle takes seconds to import: left out of `make unit`, run by `make test`.
pytestmark = pytest.mark.slow

API_KEY = "003026bbc133714df1834b8638bb496e-8f4b3d9a-e931-478d-a994-28a725159ab9"
BASE = "https://xxxxx.api.infobip.com"
REPORT_URL = "https://dispatchd.example.com/providers/ib/reports?message=01JABC&token=t0k3n"

# The API reference's examples (Infobip OpenAPI 3.210.0, `POST /sms/3/messages`).
SEND_EXAMPLE = {
    "messages": [
        {
            "sender": "InfoSMS",
            "destinations": [{"to": "41793026727"}],
            "content": {"text": "This is a sample message"},
        }
    ]
}
ANSWER_EXAMPLE: dict[str, Any] = {
    "bulkId": "2034072219640523072",
    "messages": [
        {
            "messageId": "2250be2d4219-3af1-78856-aabe-1362af1edfd2",
            "status": {
                "groupId": 1,
                "groupName": "PENDING",
                "id": 26,
                "name": "PENDING_ACCEPTED",
                "description": "Message sent to next instance",
            },
            "destination": "41793026727",
            "details": {"messageCount": 1},
        }
    ],
}
ERROR_400 = {
    "errorCode": "E400",
    "description": "Request cannot be processed.",
    "action": "Check the syntax, violations and adjust the request.",
    "violations": [{"property": "property.path", "violation": "Violation message."}],
    "resources": [],
}
ERROR_401 = {
    "errorCode": "E401",
    "description": "The request lacks valid authentication credentials for the requested resource.",
    "action": "Check the resources and adjust authentication credentials.",
    "violations": [],
    "resources": [
        {
            "name": "API Authentication",
            "url": "https://www.infobip.com/docs/essentials/api-authentication",
        }
    ],
}
ERROR_403 = {
    "errorCode": "E403",
    "description": "Insufficient permissions to access the requested resource.",
    "action": "Repeat the request with new or different credentials.",
    "violations": [],
    "resources": [],
}
# infobip.com/docs/developer-resources/api-fundamentals/rate-limits-and-throttling.
ERROR_429 = {
    "errorCode": "E429",
    "description": "Too many requests sent.",
    "action": "Check request rate limit specified in the API endpoint documentation resource.",
    "violations": [],
    "resources": [
        {
            "name": "Throttling handling errors",
            "url": "/docs/developer-resources/api-fundamentals/rate-limits-and-throttling",
        }
    ],
}
ERROR_500 = {
    "errorCode": "E500",
    "description": "Something went wrong.",
    "action": "Contact the support.",
    "violations": [],
    "resources": [],
}
# The "Delivery report" example of the receive-outbound-sms-message-reports-v3 webhook.
REPORT_EXAMPLE = {
    "results": [
        {
            "bulkId": "BULK-ID-123-xyz",
            "price": {"pricePerMessage": 0.01, "currency": "EUR"},
            "status": {
                "groupId": 3,
                "groupName": "DELIVERED",
                "id": 5,
                "name": "DELIVERED_TO_HANDSET",
                "description": "Message delivered to handset",
            },
            "error": {
                "groupId": 0,
                "groupName": "OK",
                "id": 0,
                "name": "NO_ERROR",
                "description": "No Error",
                "permanent": False,
            },
            "messageId": "MESSAGE-ID-123-xyz",
            "to": "41793026727",
            "sender": "InfoSMS",
            "sentAt": "2019-11-09T16:00:00.000+0100",
            "doneAt": "2019-11-09T16:00:00.000+0100",
            "messageCount": 1,
            "callbackData": "callbackData",
            "platform": {
                "entityId": "promotional-traffic-entity",
                "applicationId": "marketing-automation-application",
            },
        },
        {
            "bulkId": "BULK-ID-123-xyz",
            "price": {"pricePerMessage": 0.01, "currency": "EUR"},
            "status": {
                "groupId": 3,
                "groupName": "DELIVERED",
                "id": 5,
                "name": "DELIVERED_TO_HANDSET",
                "description": "Message delivered to handset",
            },
            "error": {
                "groupId": 0,
                "groupName": "OK",
                "id": 0,
                "name": "NO_ERROR",
                "description": "No Error",
                "permanent": False,
            },
            "messageId": "12db39c3-7822-4e72-a3ec-c87442c0ffc5",
            "to": "41793026834",
            "sender": "InfoSMS",
            "sentAt": "2019-11-09T17:00:00.000+0100",
            "doneAt": "2019-11-09T17:00:00.000+0100",
            "messageCount": 1,
        },
    ]
}


def kind(**overrides: Any) -> Infobip:
    settings: dict[str, Any] = {"api_key": API_KEY, "url": BASE, "from_": "InfoSMS"}
    return Infobip(InfobipSettings(**{**settings, **overrides}))


def submission(**overrides: Any) -> Submission:
    values: dict[str, Any] = {
        "message_id": "01JABC",
        "to_number": "+41793026727",
        "body": "This is a sample message",
        "segments": 1,
        "report_url": REPORT_URL,
        "validity": None,
    }
    return Submission(**{**values, **overrides})


def answer(body: Any) -> bytes:
    return json.dumps(body).encode()


def result(
    group: str,
    name: str,
    error: str | None = None,
    *,
    message_id: str = "m-1",
    error_id: int = 0,
    group_id: int | None = None,
) -> dict[str, Any]:
    status: dict[str, Any] = {"groupName": group, "name": name}
    if group_id is not None:
        status["groupId"] = group_id
    entry: dict[str, Any] = {"messageId": message_id, "status": status}
    if error is not None:
        entry["error"] = {"groupId": 1, "id": error_id, "name": error, "permanent": True}
    return entry


def parse(*results: dict[str, Any], content_type: str = "application/json") -> list[Report]:
    body = answer({"results": list(results)})
    return kind().parse(IncomingReport(REPORT_URL, {}, body, content_type))


# -- settings --------------------------------------------------------------------------------


def test_settings_need_a_key_and_the_accounts_own_url_and_hide_the_key() -> None:
    with pytest.raises(ValueError, match=r"^url: required"):
        InfobipSettings(API_KEY, "")
    with pytest.raises(ValueError, match=r"^url: not an http"):
        InfobipSettings(API_KEY, "ftp://xxxxx.api.infobip.com")
    with pytest.raises(ValueError, match=r"^url: the Base URL takes no query"):
        InfobipSettings(API_KEY, f"{BASE}?x=1")
    with pytest.raises(ValueError, match=r"^api_key: required"):
        InfobipSettings(" ", BASE)
    with pytest.raises(ValueError, match=r"^from: empty"):
        InfobipSettings(API_KEY, BASE, from_=" ")
    assert API_KEY not in repr(InfobipSettings(API_KEY, BASE, from_="InfoSMS"))


def test_the_base_url_as_the_portal_shows_it_gets_https() -> None:
    # The portal shows `xxxxx.api.infobip.com`; the official SDK adds https:// the same way.
    assert base_url("xxxxx.api.infobip.com") == BASE
    assert base_url(f" {BASE}/ ") == BASE
    assert base_url("http://127.0.0.1:8080/simulator/infobip/") == (
        "http://127.0.0.1:8080/simulator/infobip"
    )
    assert kind(url="xxxxx.api.infobip.com").request(submission()).url == f"{BASE}/sms/3/messages"


# -- request ---------------------------------------------------------------------------------


def test_the_request_is_the_documented_send_with_a_per_message_webhook() -> None:
    req = kind().request(submission())
    assert (req.method, req.url) == ("POST", f"{BASE}/sms/3/messages")
    assert req.headers["Authorization"] == f"App {API_KEY}"
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["Accept"] == "application/json"
    body = json.loads(req.body)
    (message,) = body["messages"]
    # The documented basic example, plus the per-message delivery webhook.
    assert {k: message[k] for k in ("sender", "destinations", "content")} == (
        SEND_EXAMPLE["messages"][0]
    )
    assert message["webhooks"] == {
        "delivery": {"url": REPORT_URL},
        "contentType": "application/json",
        "callbackData": "01JABC",
    }
    assert "options" not in message


def test_validity_and_no_sender_and_unicode_text() -> None:
    req = kind(from_=None).request(submission(validity=600.9, body="Hi there, ça va? 👋"))
    (message,) = json.loads(req.body)["messages"]
    assert "sender" not in message
    assert message["content"] == {"text": "Hi there, ça va? 👋"}
    assert message["options"] == {"validityPeriod": {"amount": 600, "timeUnit": "SECONDS"}}
    assert "ça va? 👋".encode() in req.body  # UTF-8 on the wire, not escaped


@pytest.mark.parametrize(
    ("seconds", "sent"),
    [(0.0, 1), (0.4, 1), (59.9, 59), (172_800.0, VALIDITY_MAX), (1e9, VALIDITY_MAX)],
)
def test_validity_is_whole_seconds_up_to_48_hours(seconds: float, sent: int) -> None:
    # ValidityPeriod: "Validity period longer than 48h is not supported."
    assert validity_seconds(seconds) == sent
    assert validity_seconds(float("inf")) == VALIDITY_MAX


def test_numbers_go_out_without_the_plus() -> None:
    assert destination("+41793026727") == "41793026727"
    assert destination("41793026727") == "41793026727"


# -- classify --------------------------------------------------------------------------------


def test_the_documented_200_is_accepted_with_its_message_id() -> None:
    outcome = kind().classify(200, {}, answer(ANSWER_EXAMPLE))
    assert outcome == Accepted("2250be2d4219-3af1-78856-aabe-1362af1edfd2", 200)


@pytest.mark.parametrize(
    "body", [b"", b'{"bulkId": "20340', b"[]", answer({"messages": []}), answer({"x": 1})]
)
def test_a_2xx_without_a_readable_id_is_still_accepted(body: bytes) -> None:
    # Resending could deliver it twice; its reports reach the per-message URL anyway.
    assert kind().classify(200, {}, body) == Accepted(None, 200)


def rejected_answer(name: str, group: str = "REJECTED") -> bytes:
    entry = ANSWER_EXAMPLE["messages"][0]
    status = {"groupId": 5, "groupName": group, "id": 52, "name": name, "description": "x"}
    return answer({"bulkId": "1", "messages": [{**entry, "status": status}]})


def test_a_rejected_status_in_the_200_is_a_rejection_by_name() -> None:
    outcome = kind().classify(200, {}, rejected_answer("REJECTED_DESTINATION"))
    assert outcome == Rejected(
        "HTTP 200, Infobip REJECTED_DESTINATION: x", 200, "REJECTED_DESTINATION"
    )
    # Not an invalid number: Infobip's prefix tables can lag a new range.
    assert "REJECTED_DESTINATION" not in INVALID_NUMBER_ERRORS


@pytest.mark.parametrize(("name", "scope"), sorted(REJECTED_STATUSES.items()))
def test_every_rejected_status_classifies_as_its_table_says(name: str, scope: str) -> None:
    outcome = kind().classify(200, {}, rejected_answer(name))
    assert isinstance(outcome, Unavailable if scope == "account" else Rejected), name


def test_a_rejected_group_id_without_its_name_is_still_a_rejection() -> None:
    body = answer({"messages": [{"messageId": "m", "status": {"groupId": 5}}]})
    assert isinstance(kind().classify(200, {}, body), Rejected)


def test_429_e429_throttles_and_honours_retry_after() -> None:
    outcome = kind().classify(429, {"retry-after": "3"}, answer(ERROR_429))
    assert outcome == Throttled("HTTP 429, Infobip E429: Too many requests sent.", 429, 3.0)
    bare = kind().classify(429, {}, b"")
    assert isinstance(bare, Throttled)
    assert bare.retry_after is None
    legacy = {"requestError": {"serviceException": {"messageId": "TOO_MANY_REQUESTS"}}}
    assert isinstance(kind().classify(429, {}, answer(legacy)), Throttled)


@pytest.mark.parametrize(
    ("status", "body", "outcome"),
    [
        (400, answer(ERROR_400), Rejected),
        (401, answer(ERROR_401), Unavailable),  # a bad key: every message alike
        (403, answer(ERROR_403), Unavailable),
        (404, b"", Unavailable),  # a wrong Base URL
        (408, b"", Unavailable),
        (500, answer(ERROR_500), Unavailable),
        (502, b"<html>Bad Gateway</html>", Unavailable),
        (503, answer(ERROR_400), Unavailable),  # a 5xx is never about the message
        (422, b"not json", Rejected),
        (
            401,
            answer({"requestError": {"serviceException": {"messageId": "UNAUTHORIZED"}}}),
            Unavailable,
        ),
    ],
)
def test_classify(status: int, body: bytes, outcome: type) -> None:
    assert isinstance(kind().classify(status, {}, body), outcome)


def test_a_400_keeps_its_code_and_violations() -> None:
    outcome = kind().classify(400, {}, answer(ERROR_400))
    assert outcome == Rejected(
        "HTTP 400, Infobip E400: Request cannot be processed.; property.path: Violation message.",
        400,
        "E400",
    )


def test_api_error_reads_both_formats() -> None:
    assert api_error(answer(ERROR_401))[0] == "E401"
    legacy = {"requestError": {"serviceException": {"messageId": "BAD_REQUEST", "text": "Bad"}}}
    assert api_error(answer(legacy)) == ("BAD_REQUEST", "Bad")
    assert api_error(b"\xff\xfe") == (None, "\ufffd\ufffd")
    assert api_error(answer([1])) == (None, "no detail")


# -- parse -----------------------------------------------------------------------------------


def test_the_documented_batched_report_is_two_delivered_reports() -> None:
    body = answer(REPORT_EXAMPLE)
    reports = kind().parse(IncomingReport(REPORT_URL, {}, body, "application/json"))
    assert reports == [
        Report("MESSAGE-ID-123-xyz", Status.DELIVERED, "DELIVERED_TO_HANDSET", None),
        Report("12db39c3-7822-4e72-a3ec-c87442c0ffc5", Status.DELIVERED, "DELIVERED_TO_HANDSET"),
    ]


@pytest.mark.parametrize(
    ("group", "name", "error", "mapped"),
    [
        ("DELIVERED", "DELIVERED_TO_HANDSET", "NO_ERROR", Status.DELIVERED),
        # message-status-codes: "Intermediate. Reached the operator, not yet the handset."
        ("DELIVERED", "DELIVERED_TO_OPERATOR", "NO_ERROR", None),
        ("DELIVERED", "DELIVERED_SOMETHING_NEW", None, None),
        ("PENDING", "PENDING_ACCEPTED", None, None),
        ("PENDING", "PENDING_ENROUTE", None, None),
        ("PENDING", "PENDING_WAITING_DELIVERY", None, None),
        ("ACCEPTED", "MESSAGE_ACCEPTED", None, None),
        ("UNDELIVERABLE", "UNDELIVERABLE_NOT_DELIVERED", "EC_ABSENT_SUBSCRIBER", Status.FAILED),
        ("UNDELIVERABLE", "UNDELIVERABLE_REJECTED_OPERATOR", "EC_CALL_BARRED", Status.FAILED),
        ("UNDELIVERABLE", "UNDELIVERABLE_NOT_DELIVERED", "EC_UNKNOWN_SUBSCRIBER", Status.INVALID),
        ("REJECTED", "REJECTED_NETWORK", None, Status.FAILED),
        ("REJECTED", "REJECTED_DESTINATION", None, Status.FAILED),
        ("REJECTED", "REJECTED_PREFIX_MISSING", None, Status.FAILED),
        ("REJECTED", "REJECTED_DND", None, Status.FAILED),
        ("REJECTED", "REJECTED_OPERATOR", "EC_UNKNOWN_SUBSCRIBER", Status.INVALID),
        ("EXPIRED", "EXPIRED_EXPIRED", None, Status.FAILED),
        ("EXPIRED", "EXPIRED_DLR_UNKNOWN", None, Status.FAILED),
        ("SOMETHING_NEW", "NEW_STATUS", None, None),  # recorded, the message waits
        # An error name never turns a delivery into an invalid number.
        ("DELIVERED", "DELIVERED_TO_HANDSET", "EC_UNKNOWN_SUBSCRIBER", Status.DELIVERED),
        ("PENDING", "PENDING_ENROUTE", "EC_UNKNOWN_SUBSCRIBER", None),
    ],
)
def test_the_status_mapping(group: str, name: str, error: str | None, mapped: Any) -> None:
    (report,) = parse(result(group, name, error))
    expected_code = None if error in (None, "NO_ERROR") else error
    assert (report.status, report.raw_status, report.error_code) == (mapped, name, expected_code)


@pytest.mark.parametrize("error", sorted(NOT_INVALID_ERRORS))
def test_errors_that_do_not_prove_a_bad_number_are_only_failures(error: str) -> None:
    (report,) = parse(result("UNDELIVERABLE", "UNDELIVERABLE_NOT_DELIVERED", error))
    assert (report.status, report.error_code) == (Status.FAILED, error)


def test_status_ids_and_group_ids_stand_in_for_missing_names() -> None:
    reports = parse(
        {"messageId": "a", "status": {"groupId": 3, "id": 5}},
        {"messageId": "b", "status": {"groupId": 3, "id": 2}},
        {"messageId": "c", "status": {"groupId": 2, "id": 9}, "error": {"id": 27}},
        {"messageId": "d", "status": {"groupId": 1, "name": "PENDING_ENROUTE"}},
    )
    assert [(r.status, r.raw_status, r.error_code) for r in reports] == [
        (Status.DELIVERED, "DELIVERED", None),
        (None, "DELIVERED", None),
        (Status.FAILED, "UNDELIVERABLE", "27"),
        (None, "PENDING_ENROUTE", None),
    ]


def test_names_are_read_case_insensitively() -> None:
    (report,) = parse(
        result("undeliverable", "Undeliverable_Not_Delivered", "ec_unknown_subscriber")
    )
    assert (report.status, report.raw_status, report.error_code) == (
        Status.INVALID,
        "UNDELIVERABLE_NOT_DELIVERED",
        "EC_UNKNOWN_SUBSCRIBER",
    )


def test_an_empty_batch_is_no_reports() -> None:
    assert parse() == []


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'{"results": [', "application/json"),
        (b"\xff", "application/json"),
        (answer([]), "application/json"),
        (answer({"results": {}}), "application/json"),
        (answer({"results": [1]}), "application/json"),
        (answer({"results": [{"status": {"groupName": "DELIVERED"}}]}), "application/json"),
        (
            answer({"results": [{"messageId": "x" * 201, "status": {"name": "X"}}]}),
            "application/json",
        ),
        (answer({"results": [{"messageId": "m"}]}), "application/json"),
        (answer({"results": [{"messageId": "m", "status": {}}]}), "application/json"),
        (answer(REPORT_EXAMPLE), "application/xml"),
        (answer(REPORT_EXAMPLE), "application/x-www-form-urlencoded"),
    ],
)
def test_unreadable_reports(body: bytes, content_type: str) -> None:
    with pytest.raises(BadReport):
        kind().parse(IncomingReport(REPORT_URL, {}, body, content_type))


def test_a_charset_and_a_missing_content_type_are_fine() -> None:
    body = answer(REPORT_EXAMPLE)
    for content_type in ("application/json; charset=UTF-8", ""):
        assert len(kind().parse(IncomingReport(REPORT_URL, {}, body, content_type))) == 2


# -- verify ----------------------------------------------------------------------------------


def test_verify_checks_nothing_because_infobip_signs_nothing() -> None:
    # Infobip documents no signature on SMS delivery reports: the per-message token in the
    # report URL, checked by the service before verify, is what authenticates them.
    for headers in ({}, {"Authorization": "Bearer whatever"}, {"X-Signature": "forged"}):
        report = IncomingReport(REPORT_URL, headers, answer(REPORT_EXAMPLE), "application/json")
        kind().verify(report, now=0.0)


# -- the tables ------------------------------------------------------------------------------


def test_the_tables_are_consistent_and_invalid_is_conservative() -> None:
    assert set(INVALID_NUMBER_ERRORS) == {"EC_UNKNOWN_SUBSCRIBER"}
    assert not INVALID_NUMBER_ERRORS.keys() & NOT_INVALID_ERRORS.keys()
    assert set(STATUS_GROUPS) == {"ACCEPTED", "PENDING", "UNDELIVERABLE", "REJECTED", "EXPIRED"}
    assert DELIVERED_STATUSES == {
        "DELIVERED_TO_HANDSET": Status.DELIVERED,
        "DELIVERED_TO_OPERATOR": None,
    }
    assert set(REJECTED_STATUSES.values()) == {"account", "message"}
    assert report_status("DELIVERED", None, None, status_id=5) is Status.DELIVERED
    assert report_status(None, None, "EC_UNKNOWN_SUBSCRIBER") is None


# -- the official SDK as the oracle (where installed) ----------------------------------------


def test_the_request_is_what_the_official_sdk_builds() -> None:
    sdk = pytest.importorskip("infobip_api_client")
    ours = json.loads(kind().request(submission(validity=600.0)).body)
    theirs = sdk.SmsRequest(
        messages=[
            sdk.SmsMessage(
                sender="InfoSMS",
                destinations=[sdk.SmsDestination(to="41793026727")],
                content=sdk.SmsMessageContent(
                    actual_instance=sdk.SmsTextContent(text="This is a sample message")
                ),
                options=sdk.SmsMessageOptions(
                    validity_period=sdk.ValidityPeriod(
                        amount=600, time_unit=sdk.ValidityPeriodTimeUnit.SECONDS
                    )
                ),
                webhooks=sdk.SmsWebhooks(
                    delivery=sdk.SmsMessageDeliveryReporting(url=REPORT_URL),
                    content_type="application/json",
                    callback_data="01JABC",
                ),
            )
        ]
    )
    assert json.loads(theirs.to_json()) == ours
    # And the SDK reads ours back into the same model.
    assert sdk.SmsRequest.from_json(json.dumps(ours)) == theirs


def test_reports_the_official_sdk_serialises_parse() -> None:
    sdk = pytest.importorskip("infobip_api_client")
    model = sdk.SmsDeliveryResult.from_json(json.dumps(REPORT_EXAMPLE))
    # The SDK's own to_json cannot serialise its datetimes; pydantic's dump is what it means.
    body = model.model_dump_json(by_alias=True, exclude_none=True).encode()
    reports = kind().parse(IncomingReport(REPORT_URL, {}, body, "application/json"))
    assert [(r.provider_message_id, r.status) for r in reports] == [
        ("MESSAGE-ID-123-xyz", Status.DELIVERED),
        ("12db39c3-7822-4e72-a3ec-c87442c0ffc5", Status.DELIVERED),
    ]
