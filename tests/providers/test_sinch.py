"""The sinch kind, pure: golden answers and reports from Sinch's docs and SDK fixtures, the
mapping, and the request and report shapes checked against the official SDK."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from sinch import SinchClient  # type: ignore[import-untyped]
from sinch.core.clients.retry_configuration import (  # type: ignore[import-untyped]
    RetryConfiguration,
)
from sinch.core.enums import RetryPolicy  # type: ignore[import-untyped]
from sinch.core.models.http_response import HTTPResponse  # type: ignore[import-untyped]
from sinch.core.ports.http_transport import HTTPTransport  # type: ignore[import-untyped]
from sinch.domains.sms.sinch_events.v1.sms_sinch_event import (  # type: ignore[import-untyped]
    SmsSinchEvent,
)

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
from dispatchd.providers.sinch import (
    INVALID_NUMBER_CODES,
    NOT_INVALID_CODES,
    REGIONS,
    REJECTED_CODES,
    REPORT_STATUSES,
    UNAVAILABLE_CODES,
    VALIDITY_MAX,
    Sinch,
    SinchSettings,
    expire_at,
    report_status,
)

# Its SDK oracle takes seconds to import: left out of `make unit`, run by `make test`.
pytestmark = pytest.mark.slow

PLAN = "jd63jf88477ll123ab4567cd89012ef3"  # the API reference's example service_plan_id
TOKEN = "f" * 32
SENDER = "+12015555555"
REPORT_URL = "https://dispatchd.example.com/providers/sinch/reports?message=01JABCDEF&token=t0k3n"
NOW = 1_717_661_839.0  # 2024-06-06T08:17:19Z
BATCH_ID = "01FC66621XXXXX119Z8PMV1QPQ"  # the API reference's example batch id

# Modelled on the "Send" operation's 201 answer in the batches reference: the request's
# fields plus id, created_at, modified_at and canceled.
BATCH = {
    "id": BATCH_ID,
    "to": ["15551231234"],
    "from": SENDER,
    "canceled": False,
    "body": "Hi there! How are you?",
    "type": "mt_text",
    "created_at": "2019-08-24T14:15:22Z",
    "modified_at": "2019-08-24T14:15:22Z",
    "delivery_report": "per_recipient",
    "callback_url": REPORT_URL,
    "client_reference": "01JABCDEF",
    "flash_message": False,
}
# The recipient delivery reports of the SDKs' shared webhook fixtures (sinch-sdk-python
# tests/e2e/sms/features/steps/webhooks.steps.py and its Java, .NET and Node twins).
DELIVERED = {
    "at": "2024-06-06T08:17:19.210Z",
    "batch_id": "01W4FFL35P4NC4K35SMSBATCH9",
    "client_reference": "client-ref",
    "code": 0,
    "operator_status_at": "2024-06-06T08:17:00Z",
    "recipient": "12017777777",
    "status": "Delivered",
    "type": "recipient_delivery_report_sms",
}
ABORTED = {
    "at": "2024-06-06T08:17:15.603Z",
    "batch_id": "01W4FFL35P4NC4K35SMSBATCH9",
    "client_reference": "client-ref",
    "code": 412,
    "recipient": "12010000000",
    "status": "Aborted",
    "type": "recipient_delivery_report_sms",
}
# The Node SDK tutorial's "get for number" answer: an intermediate report.
DISPATCHED = {
    "at": "2024-06-07T14:03:26.536Z",
    "batch_id": "01J06CY78GZ2F74YZNNH2VBWR6",
    "code": 401,
    "recipient": "4479000000003",
    "status": "Dispatched",
    "type": "recipient_delivery_report_sms",
}
# The batch delivery report of the same fixtures.
BATCH_REPORT = {
    "batch_id": "01W4FFL35P4NC4K35SMSBATCH8",
    "client_reference": "client-ref",
    "statuses": [
        {
            "code": 0,
            "count": 2,
            "recipients": ["12017777777", "33612345678"],
            "status": "Delivered",
        }
    ],
    "total_message_count": 2,
    "type": "delivery_report_sms",
}
INBOUND = {
    "id": "01W4FFL35P4NC4K35SMSBATCH8",
    "from": "12015555555",
    "to": "12017777777",
    "body": "Hello John! 👋",
    "type": "mo_text",
    "operator_id": "311071",
    "received_at": "2024-06-06T07:52:37.386Z",
}


def kind(clock: float = NOW, **overrides: Any) -> Sinch:
    values: dict[str, Any] = {"service_plan_id": PLAN, "api_token": TOKEN, "from_": SENDER}
    return Sinch(SinchSettings(**{**values, **overrides}), clock=lambda: clock)


def submission(**overrides: Any) -> Submission:
    values: dict[str, Any] = {
        "message_id": "01JABCDEF",
        "to_number": "+15551231234",
        "body": "Hi there, ça va? 👋",
        "segments": 1,
        "report_url": REPORT_URL,
        "validity": 600.0,
    }
    return Submission(**{**values, **overrides})


def incoming(body: Any, content_type: str = "application/json") -> IncomingReport:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return IncomingReport(REPORT_URL, {"Content-Type": content_type}, raw, content_type)


def answer(body: Any) -> bytes:
    return json.dumps(body).encode()


class Capture(HTTPTransport):  # type: ignore[misc]
    """The SDK's transport port, recording what the SDK would send instead of sending it."""

    def __init__(self, sinch: Any) -> None:
        super().__init__(sinch)
        self.sent: list[Any] = []

    def send_request(self, request_data: Any) -> Any:
        self.sent.append(request_data)
        return HTTPResponse(status_code=201, headers={}, body=BATCH)


def sdk_request(region: str = "us", **send: Any) -> Any:
    client = SinchClient(
        service_plan_id=PLAN,
        sms_api_token=TOKEN,
        sms_region=region,
        retry_configuration=RetryConfiguration(retry_policy=RetryPolicy.NONE),
    )
    transport = Capture(client)
    client.configuration.transport = transport
    client.sms.batches.send_sms(**send)
    return transport.sent[0]


# -- settings --------------------------------------------------------------------------------


def test_settings_pick_the_regional_base_unless_url_is_set() -> None:
    assert SinchSettings(PLAN, TOKEN, SENDER).base_url == "https://us.sms.api.sinch.com"
    for region in REGIONS:
        settings = SinchSettings(PLAN, TOKEN, SENDER, region=region)
        assert settings.base_url == f"https://{region}.sms.api.sinch.com"
    local = SinchSettings(PLAN, TOKEN, SENDER, region="eu", url="http://127.0.0.1:8080/sim/")
    assert local.base_url == "http://127.0.0.1:8080/sim"


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"service_plan_id": ""}, "service_plan_id"),
        ({"api_token": " "}, "api_token"),
        ({"from_": ""}, "from"),
        ({"region": "us-east"}, "region"),
        ({"region": "US"}, "region"),
        ({"url": "ftp://example.com"}, "url"),
        ({"url": "https://"}, "url"),
    ],
)
def test_bad_settings_name_the_key(overrides: dict[str, Any], key: str) -> None:
    values: dict[str, Any] = {"service_plan_id": PLAN, "api_token": TOKEN, "from_": SENDER}
    with pytest.raises(ValueError, match=rf"^{key}: "):
        SinchSettings(**{**values, **overrides})


def test_the_token_stays_out_of_repr() -> None:
    assert TOKEN not in repr(SinchSettings(PLAN, TOKEN, SENDER))


# -- request ---------------------------------------------------------------------------------


def test_the_request_is_a_one_recipient_batch() -> None:
    req = kind().request(submission())
    assert req.method == "POST"
    assert req.url == f"https://us.sms.api.sinch.com/xms/v1/{PLAN}/batches"
    assert req.headers["Authorization"] == f"Bearer {TOKEN}"
    assert req.headers["Content-Type"] == "application/json"
    assert json.loads(req.body) == {
        "to": ["+15551231234"],
        "from": SENDER,
        "body": "Hi there, ça va? 👋",
        "type": "mt_text",
        "delivery_report": "per_recipient",
        "callback_url": REPORT_URL,
        "client_reference": "01JABCDEF",
        "expire_at": "2024-06-06T08:27:19.000Z",
    }


def test_the_request_matches_the_official_sdks() -> None:
    ours = kind(region="eu").request(submission())
    sdk = sdk_request(
        region="eu",
        to=["+15551231234"],
        from_=SENDER,
        body="Hi there, ça va? 👋",
        delivery_report="per_recipient",
        event_destination_target=REPORT_URL,
        client_reference="01JABCDEF",
        expire_at=datetime.fromtimestamp(NOW + 600, UTC),
    )
    assert ours.url == sdk.url
    assert ours.method == sdk.http_method
    assert ours.headers["Authorization"] == sdk.headers["Authorization"]
    assert ours.headers["Content-Type"] == sdk.headers["Content-Type"]
    body, theirs = json.loads(ours.body), json.loads(sdk.request_body)
    # The same instant; the SDK writes microseconds where the API documents milliseconds.
    parse = datetime.fromisoformat
    assert parse(body.pop("expire_at")) == parse(theirs.pop("expire_at"))
    assert body == theirs


def test_the_service_plan_id_is_quoted_in_the_path() -> None:
    req = kind(service_plan_id="a/b c").request(submission())
    assert req.url == "https://us.sms.api.sinch.com/xms/v1/a%2Fb%20c/batches"


def test_no_validity_no_expire_at() -> None:
    assert "expire_at" not in json.loads(kind().request(submission(validity=None)).body)


@pytest.mark.parametrize(
    ("validity", "expected"),
    [
        (600.0, "2024-06-06T08:27:19.000Z"),
        (0.4567, "2024-06-06T08:17:20.000Z"),  # at least a second
        (-5.0, "2024-06-06T08:17:20.000Z"),
        (90.1239, "2024-06-06T08:18:49.123Z"),  # milliseconds, rounded down
        (VALIDITY_MAX + 1.0, "2024-06-09T08:17:19.000Z"),  # "max is 3 days after send_at"
        (float("inf"), "2024-06-09T08:17:19.000Z"),
        (float("nan"), "2024-06-09T08:17:19.000Z"),
    ],
)
def test_expire_at(validity: float, expected: str) -> None:
    assert expire_at(NOW, validity) == expected


def test_expire_at_follows_the_clock() -> None:
    body = json.loads(kind(clock=NOW + 0.5).request(submission(validity=60.0)).body)
    assert body["expire_at"] == "2024-06-06T08:18:19.500Z"


# -- classify --------------------------------------------------------------------------------


def test_a_201_batch_is_accepted_with_its_id() -> None:
    assert kind().classify(201, {}, answer(BATCH)) == Accepted(BATCH_ID, 201)


@pytest.mark.parametrize("body", [b"", b'{"id": "01FC66', b"[]", answer({"id": 7})])
def test_an_unreadable_2xx_is_still_accepted(body: bytes) -> None:
    assert kind().classify(201, {}, body) == Accepted(None, 201)


@pytest.mark.parametrize(
    ("headers", "after"),
    [({"Retry-After": "3"}, 3.0), ({"retry-after": "7"}, 7.0), ({}, None)],
)
def test_429_is_throttled(headers: dict[str, str], after: float | None) -> None:
    outcome = kind().classify(429, headers, b"Too Many Requests")
    assert isinstance(outcome, Throttled)
    assert (outcome.http_status, outcome.retry_after) == (429, after)


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
def test_server_errors_are_unavailable(status: int) -> None:
    outcome = kind().classify(status, {}, b"Service Unavailable")
    assert isinstance(outcome, Unavailable)
    assert outcome.http_status == status


def test_a_bad_token_is_unavailable() -> None:
    outcome = kind().classify(401, {}, b"Unauthorized")
    assert isinstance(outcome, Unavailable)
    assert outcome.reason == "HTTP 401: Unauthorized"


@pytest.mark.parametrize("code", sorted(UNAVAILABLE_CODES))
def test_403_codes_are_about_the_service_plan(code: str) -> None:
    body = answer({"code": code, "text": "..."})
    outcome = kind().classify(403, {}, body)
    assert isinstance(outcome, Unavailable)
    assert code in outcome.reason


@pytest.mark.parametrize("status", [403, 404])
def test_a_403_or_404_without_a_code_is_unavailable(status: int) -> None:
    assert isinstance(kind().classify(status, {}, b""), Unavailable)


@pytest.mark.parametrize("code", sorted(REJECTED_CODES))
def test_400_codes_are_rejected(code: str) -> None:
    body = answer({"code": code, "text": "The format of a field value is invalid."})
    outcome = kind().classify(400, {}, body)
    assert outcome == Rejected(
        f"HTTP 400, Sinch {code}: The format of a field value is invalid.", 400, code
    )


def test_the_gateways_error_form_is_read() -> None:
    # The 400 sample of the "HTTP Status Codes" page.
    body = answer(
        {
            "error": {
                "code": 400,
                "message": 'parsing field "type": "XXX" is not a valid value',
                "status": "INVALID_ARGUMENT",
                "details": [],
            }
        }
    )
    outcome = kind().classify(400, {}, body)
    assert isinstance(outcome, Rejected)
    assert outcome.code == "INVALID_ARGUMENT"
    assert "is not a valid value" in outcome.reason


def test_other_4xx_are_rejected() -> None:
    assert isinstance(kind().classify(415, {}, b"Unsupported Media Type"), Rejected)
    assert isinstance(kind().classify(400, {}, answer({"code": "brand_new"})), Rejected)


def test_no_send_time_code_suppresses_a_number() -> None:
    # syntax_invalid_parameter_format is about any field, so it is not an invalid number.
    assert dict(INVALID_NUMBER_CODES) == {}
    assert set(NOT_INVALID_CODES) <= set(REJECTED_CODES)
    body = answer({"code": "syntax_invalid_parameter_format", "text": "Invalid MSISDN"})
    assert isinstance(kind().classify(400, {}, body), Rejected)


def test_reasons_are_bounded() -> None:
    outcome = kind().classify(400, {}, answer({"code": "x" * 500, "text": "y" * 500}))
    assert isinstance(outcome, Rejected)
    assert outcome.code is None
    assert len(outcome.reason) < 300


# -- parse -----------------------------------------------------------------------------------


def test_the_sdk_fixtures_parse() -> None:
    sinch = kind()
    assert sinch.parse(incoming(DELIVERED)) == [
        Report("01W4FFL35P4NC4K35SMSBATCH9", Status.DELIVERED, "Delivered", "0")
    ]
    assert sinch.parse(incoming(ABORTED)) == [
        Report("01W4FFL35P4NC4K35SMSBATCH9", Status.FAILED, "Aborted", "412")
    ]
    assert sinch.parse(incoming(DISPATCHED)) == [
        Report("01J06CY78GZ2F74YZNNH2VBWR6", None, "Dispatched", "401")
    ]


@pytest.mark.parametrize("fixture", [DELIVERED, ABORTED, DISPATCHED, BATCH_REPORT])
def test_we_read_what_the_sdk_reads(fixture: dict[str, Any]) -> None:
    body = json.dumps(fixture).encode()
    event = SmsSinchEvent().parse_event(body, {"content-type": "application/json"})
    ours = kind().parse(incoming(body))
    assert {r.provider_message_id for r in ours} == {event.batch_id}
    if fixture["type"] == "delivery_report_sms":
        assert [(r.raw_status, r.error_code) for r in ours] == [
            (s.status, str(s.code)) for s in event.statuses
        ]
    else:
        assert [(r.raw_status, r.error_code) for r in ours] == [(event.status, str(event.code))]


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("Queued", None),
        ("Dispatched", None),
        ("Unknown", None),
        ("Delivered", Status.DELIVERED),
        ("Failed", Status.FAILED),
        ("Rejected", Status.FAILED),
        ("Aborted", Status.FAILED),
        ("Cancelled", Status.FAILED),
        ("Expired", Status.FAILED),
        ("Deleted", Status.INVALID),
        # The SDK's filter enum spells them in capitals; the match is case-insensitive.
        ("DELETED", Status.INVALID),
        (" delivered ", Status.DELIVERED),
        ("Something new", None),
    ],
)
def test_status_mapping(status: str, expected: Status | None) -> None:
    assert report_status(status) is expected
    report = kind().parse(incoming({**ABORTED, "status": status}))[0]
    assert (report.status, report.raw_status) == (expected, status)


def test_every_documented_status_is_mapped() -> None:
    documented = {
        "Queued",
        "Dispatched",
        "Aborted",
        "Cancelled",
        "Rejected",
        "Deleted",
        "Delivered",
        "Failed",
        "Expired",
        "Unknown",
    }
    assert set(REPORT_STATUSES) == documented
    assert [s for s, v in REPORT_STATUSES.items() if v is Status.INVALID] == ["Deleted"]


def test_a_batch_report_gives_one_report_per_status() -> None:
    reports = kind().parse(incoming(BATCH_REPORT))
    assert reports == [Report("01W4FFL35P4NC4K35SMSBATCH8", Status.DELIVERED, "Delivered", "0")]


def test_an_inbound_message_is_not_a_report() -> None:
    assert kind().parse(incoming(INBOUND)) == []


@pytest.mark.parametrize(
    ("code", "kept"),
    [(0, "0"), (412, "412"), ("404", "404"), (None, None), (True, None), ("x", None), (4.5, None)],
)
def test_the_numeric_code_is_kept(code: Any, kept: str | None) -> None:
    report = kind().parse(incoming({**ABORTED, "code": code}))[0]
    assert report.error_code == kept


def test_a_charset_is_fine() -> None:
    assert kind().parse(incoming(DELIVERED, "application/json; charset=utf-8"))[0].status is (
        Status.DELIVERED
    )


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        answer({**DELIVERED, "batch_id": ""}),
        answer({**DELIVERED, "batch_id": 12}),
        answer({**DELIVERED, "batch_id": "x" * 65}),
        answer({k: v for k, v in DELIVERED.items() if k != "batch_id"}),
        answer({**DELIVERED, "status": ""}),
        answer({k: v for k, v in DELIVERED.items() if k != "status"}),
        answer({**DELIVERED, "status": "x" * 201}),
        answer({**DELIVERED, "type": "something_else"}),
        answer({k: v for k, v in DELIVERED.items() if k != "type"}),
        answer({**BATCH_REPORT, "statuses": "Delivered"}),
        answer({**BATCH_REPORT, "statuses": [1]}),
    ],
)
def test_unreadable_reports_are_bad(body: bytes) -> None:
    with pytest.raises(BadReport):
        kind().parse(incoming(body))


def test_a_form_body_is_bad() -> None:
    with pytest.raises(BadReport, match="JSON"):
        kind().parse(incoming(b"status=Delivered", "application/x-www-form-urlencoded"))


# -- verify ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Sinch-Webhook-Signature": "forged"},
        {"Authorization": "Basic Zm9vOmJhcg=="},
    ],
)
def test_verify_checks_nothing_the_token_does(headers: dict[str, str]) -> None:
    # Sinch signs no SMS callback by default; the service checks the per-message token in
    # the report URL before `verify` (tests/integration cover a forged or missing token).
    report = IncomingReport(REPORT_URL, headers, answer(DELIVERED), "application/json")
    kind().verify(report, now=0.0)  # raises nothing
