"""The twilio kind, pure: golden answers from Twilio's docs, the mapping, and the signature
checked both ways against the official SDK's RequestValidator."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest
from twilio.base.exceptions import TwilioRestException  # type: ignore[import-untyped]
from twilio.http import HttpClient  # type: ignore[import-untyped]
from twilio.http.response import Response as TwilioResponse  # type: ignore[import-untyped]
from twilio.request_validator import RequestValidator  # type: ignore[import-untyped]
from twilio.rest import Client  # type: ignore[import-untyped]
from twilio.rest.api.v2010.account.message import MessageInstance  # type: ignore[import-untyped]

from dispatchd.domain.models import Status
from dispatchd.providers.base import (
    Accepted,
    BadReport,
    ForgedReport,
    IncomingReport,
    InvalidNumber,
    Rejected,
    Report,
    Submission,
    Throttled,
    Unavailable,
)
from dispatchd.providers.twilio import (
    INVALID_NUMBER_CODES,
    NOT_INVALID_CODES,
    REJECTED_CODES,
    REPORT_STATUSES,
    THROTTLE_CODES,
    UNAVAILABLE_CODES,
    Twilio,
    TwilioSettings,
    signature,
    url_variants,
    validity_period,
)

SID = "AC" + "a" * 32
TOKEN = "f" * 32
SENDER = "+15017122661"
SERVICE = "MG" + "b" * 32
REPORT_URL = "https://dispatchd.example.com/reports/01JABCDEF?token=t0k3n"
FORM = "application/x-www-form-urlencoded"

# Modelled on the "Create a Message" example answer of Twilio's Message resource page
# (twilio.com/docs/messaging/api/message-resource): its field set and placeholder style.
MESSAGE_RESOURCE = {
    "account_sid": SID,
    "api_version": "2010-04-01",
    "body": "Hi there",
    "date_created": "Thu, 24 Aug 2023 05:01:45 +0000",
    "date_sent": None,
    "date_updated": "Thu, 24 Aug 2023 05:01:45 +0000",
    "direction": "outbound-api",
    "error_code": None,
    "error_message": None,
    "from": SENDER,
    "num_media": "0",
    "num_segments": "1",
    "price": None,
    "price_unit": None,
    "messaging_service_sid": None,
    "sid": "SM" + "a" * 32,
    "status": "queued",
    "subresource_uris": {
        "media": f"/2010-04-01/Accounts/{SID}/Messages/SM{'a' * 32}/Media.json",
    },
    "to": "+15558675310",
    "uri": f"/2010-04-01/Accounts/{SID}/Messages/SM{'a' * 32}.json",
}
# Twilio's debugging guide (twilio.com/docs/usage/troubleshooting/debugging-your-application).
ERROR_21211 = {
    "code": 21211,
    "message": "The 'To' number 5551234567 is not a valid phone number.",
    "more_info": "https://www.twilio.com/docs/errors/21211",
    "status": 400,
}
# A real 401 answer, as Twilio sends it for a bad login.
ERROR_20003 = {
    "code": 20003,
    "message": "Authenticate",
    "more_info": "http://www.twilio.com/docs/errors/20003",
    "status": 401,
}
# The request parameters of a status callback, as the "Track the Message Status of Outbound
# Messages" guide lists them (twilio.com/docs/messaging/guides/track-outbound-message-status).
CALLBACK = {
    "AccountSid": SID,
    "ApiVersion": "2010-04-01",
    "From": SENDER,
    "MessageSid": "SM" + "a" * 32,
    "MessageStatus": "sent",
    "SmsSid": "SM" + "a" * 32,
    "SmsStatus": "sent",
    "To": "+15558675310",
}


def kind(**overrides: Any) -> Twilio:
    settings: dict[str, Any] = {"account_sid": SID, "auth_token": TOKEN, "from_": SENDER}
    return Twilio(TwilioSettings(**{**settings, **overrides}))


def submission(**overrides: Any) -> Submission:
    values: dict[str, Any] = {
        "message_id": "01JABCDEF",
        "to_number": "+15558675310",
        "body": "Hi there, ça va? 👋",
        "segments": 1,
        "report_url": REPORT_URL,
        "validity": 600.0,
    }
    return Submission(**{**values, **overrides})


def incoming(
    params: dict[str, str], url: str = REPORT_URL, token: str = TOKEN, **headers: str
) -> IncomingReport:
    sig = {"X-Twilio-Signature": RequestValidator(token).compute_signature(url, params)}
    return IncomingReport(url, {**sig, **headers}, urlencode(params).encode(), FORM)


def answer(body: Any) -> bytes:
    return json.dumps(body).encode()


# -- request ---------------------------------------------------------------------------------


def test_the_request_is_twilios_create_message() -> None:
    req = kind().request(submission())
    assert req.method == "POST"
    assert req.url == f"https://api.twilio.com/2010-04-01/Accounts/{SID}/Messages.json"
    assert req.headers["Content-Type"] == FORM
    assert req.headers["Authorization"] == "Basic " + base64.b64encode(
        f"{SID}:{TOKEN}".encode()
    ).decode("ascii")
    assert parse_qsl(req.body.decode("ascii")) == [
        ("To", "+15558675310"),
        ("From", SENDER),
        ("Body", "Hi there, ça va? 👋"),
        ("StatusCallback", REPORT_URL),
        ("ValidityPeriod", "600"),
    ]


def test_a_messaging_service_and_a_custom_url() -> None:
    twilio = kind(from_=None, messaging_service_sid=SERVICE, url="http://127.0.0.1:9/sim/twilio/")
    req = twilio.request(submission(validity=None))
    assert req.url == f"http://127.0.0.1:9/sim/twilio/2010-04-01/Accounts/{SID}/Messages.json"
    fields = dict(parse_qsl(req.body.decode("ascii")))
    assert fields["MessagingServiceSid"] == SERVICE
    assert "From" not in fields
    assert "ValidityPeriod" not in fields


@pytest.mark.parametrize(
    ("seconds", "sent"),
    [(0.0, 1), (0.4, 1), (1.0, 1), (59.9, 59), (36_000.0, 36_000), (1e9, 36_000)],
)
def test_validity_is_whole_seconds_within_twilios_range(seconds: float, sent: int) -> None:
    # 1..36000: twilio.com/docs/api/errors/21624 and the SDK's `validity_period` docstring.
    assert validity_period(seconds) == sent
    assert validity_period(float("inf")) == 36_000


def test_settings_need_credentials_and_a_sender_and_hide_the_token() -> None:
    with pytest.raises(ValueError, match="from"):
        TwilioSettings(SID, TOKEN)
    with pytest.raises(ValueError, match="auth_token"):
        TwilioSettings(SID, "", from_=SENDER)
    assert TOKEN not in repr(TwilioSettings(SID, TOKEN, from_=SENDER))


class RecordingClient(HttpClient):  # type: ignore[misc]
    """An SDK HttpClient that records the request and answers with a Message resource."""

    def __init__(self) -> None:
        super().__init__(logger=None, is_async=False)
        self.calls: list[dict[str, Any]] = []

    def request(self, method: str, uri: str, **kwargs: Any) -> TwilioResponse:
        self.calls.append({"method": method, "uri": uri, **kwargs})
        return TwilioResponse(201, json.dumps(MESSAGE_RESOURCE))


def test_the_request_matches_what_the_official_sdk_sends() -> None:
    recorder = RecordingClient()
    client = Client(SID, TOKEN, http_client=recorder)
    client.messages.create(
        to="+15558675310",
        from_=SENDER,
        body="Hi there, ça va? 👋",
        status_callback=REPORT_URL,
        validity_period=600,
    )
    (call,) = recorder.calls
    ours = kind().request(submission())
    assert (call["method"], call["uri"]) == (ours.method, ours.url)
    assert call["auth"] == (SID, TOKEN)
    # What the SDK's transport puts on the wire for its data dict (field order is free).
    sdk_fields = sorted(parse_qsl(urlencode(call["data"])))
    assert sdk_fields == sorted(parse_qsl(ours.body.decode("ascii")))
    assert call["headers"]["Content-Type"] == ours.headers["Content-Type"]
    assert call["headers"]["Accept"] == ours.headers["Accept"]


# -- classify --------------------------------------------------------------------------------


def test_a_201_message_resource_is_accepted_with_its_sid() -> None:
    outcome = kind().classify(201, {}, answer(MESSAGE_RESOURCE))
    assert outcome == Accepted("SM" + "a" * 32, 201)


@pytest.mark.parametrize("body", [b"", b'{"sid": "SM12', b"[]", answer({"sid": 7})])
def test_a_2xx_without_a_readable_sid_is_still_accepted(body: bytes) -> None:
    # Resending could deliver it twice; its reports reach the per-message URL anyway.
    assert kind().classify(201, {}, body) == Accepted(None, 201)


def test_the_documented_invalid_to_answer_is_an_invalid_number() -> None:
    outcome = kind().classify(400, {}, answer(ERROR_21211))
    assert isinstance(outcome, InvalidNumber)
    assert (outcome.code, outcome.http_status) == ("21211", 400)
    assert "not a valid phone number" in outcome.reason


def test_a_bad_login_takes_twilio_out_of_rotation() -> None:
    outcome = kind().classify(401, {}, answer(ERROR_20003))
    assert isinstance(outcome, Unavailable)
    assert outcome.http_status == 401


def test_429_and_20429_throttle_and_honour_retry_after() -> None:
    body = answer({"code": 20429, "message": "Too Many Requests", "status": 429})
    assert kind().classify(429, {"retry-after": "7"}, body) == Throttled(
        "HTTP 429, Twilio 20429: Too Many Requests", 429, 7.0
    )
    bare = kind().classify(429, {}, b"")
    assert isinstance(bare, Throttled)
    assert bare.retry_after is None


def error(code: int, status: int = 400) -> bytes:
    return answer({"code": code, "message": f"error {code}", "status": status})


@pytest.mark.parametrize(
    ("status", "body", "outcome"),
    [
        (400, error(21611), Throttled),  # From queue over 10 h: slow down
        (400, error(21610), Rejected),  # STOP-ed recipient: not an invalid number
        (400, error(21612), Rejected),
        (400, error(21408), Rejected),
        (400, error(21614), InvalidNumber),
        (400, error(21635), InvalidNumber),
        (400, error(21999), Rejected),  # an undocumented 4xx is permanent
        (400, b"<html>bad request</html>", Rejected),
        (404, error(20404, 404), Unavailable),
        (403, b"", Unavailable),
        (408, b"", Unavailable),
        (500, error(20500, 500), Unavailable),
        (502, b"<html>Bad Gateway</html>", Unavailable),
        (503, error(21211, 503), Unavailable),  # a 5xx is never about the number
    ],
)
def test_classify(status: int, body: bytes, outcome: type) -> None:
    assert isinstance(kind().classify(status, {}, body), outcome)


@pytest.mark.parametrize(
    ("table", "outcome"),
    [
        (INVALID_NUMBER_CODES, InvalidNumber),
        (THROTTLE_CODES, Throttled),
        (REJECTED_CODES, Rejected),
    ],
)
def test_every_tabled_code_classifies_as_its_table_says(table: Any, outcome: type) -> None:
    for code in table:
        assert isinstance(kind().classify(400, {}, error(int(code))), outcome), code
    for code in UNAVAILABLE_CODES:
        assert isinstance(kind().classify(400, {}, error(int(code))), Unavailable), code


def test_the_tables_do_not_overlap_and_invalid_is_conservative() -> None:
    tables = [INVALID_NUMBER_CODES, THROTTLE_CODES, UNAVAILABLE_CODES, REJECTED_CODES]
    seen: set[str] = set()
    for table in tables:
        assert not seen & table.keys()
        seen |= table.keys()
    assert not INVALID_NUMBER_CODES.keys() & NOT_INVALID_CODES.keys()
    for code in ("21610", "30003", "30006", "21612"):
        assert code not in INVALID_NUMBER_CODES


# -- parse -----------------------------------------------------------------------------------


def parse(params: dict[str, str]) -> list[Report]:
    return kind().parse(IncomingReport(REPORT_URL, {}, urlencode(params).encode(), FORM))


def test_the_documented_sent_callback_is_intermediate() -> None:
    assert parse(CALLBACK) == [Report("SM" + "a" * 32, None, "sent", None)]


@pytest.mark.parametrize(
    ("status", "code", "mapped"),
    [
        ("delivered", None, Status.DELIVERED),
        ("read", None, Status.DELIVERED),
        ("undelivered", "30003", Status.FAILED),
        ("undelivered", "30006", Status.FAILED),  # landline *or* the short code's route
        ("failed", "30007", Status.FAILED),
        ("failed", "21610", Status.FAILED),  # STOP: the number is fine
        ("undelivered", "30005", Status.INVALID),
        ("failed", "21211", Status.INVALID),
        ("failed", "21614", Status.INVALID),
        ("canceled", None, Status.FAILED),
        ("queued", None, None),
        ("accepted", None, None),
        ("scheduled", None, None),
        ("sending", None, None),
        ("partially_delivered", None, None),
        ("something_new", None, None),  # Twilio adds statuses; record them, change nothing
        ("delivered", "30005", Status.DELIVERED),  # a code never turns delivered invalid
    ],
)
def test_the_status_mapping(status: str, code: str | None, mapped: Status | None) -> None:
    params = {**CALLBACK, "MessageStatus": status, "SmsStatus": status}
    if code:
        params["ErrorCode"] = code
    (report,) = parse(params)
    assert (report.status, report.raw_status, report.error_code) == (mapped, status, code)


def test_every_status_the_sdk_knows_is_mapped() -> None:
    known = {v for k, v in vars(MessageInstance.Status).items() if not k.startswith("_")}
    assert known == set(REPORT_STATUSES)


def test_the_legacy_sms_fields_are_read_when_the_new_ones_are_missing() -> None:
    (report,) = parse({"SmsSid": "SM1", "SmsStatus": "delivered"})
    assert (report.provider_message_id, report.status) == ("SM1", Status.DELIVERED)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (urlencode({"MessageStatus": "delivered"}).encode(), FORM),
        (urlencode({"MessageSid": "SM1"}).encode(), FORM),
        (urlencode({"MessageSid": "SM" + "1" * 99, "MessageStatus": "sent"}).encode(), FORM),
        (b"MessageSid=SM1&MessageStatus=sent&ErrorCode=\xff", FORM),
        (json.dumps({"MessageSid": "SM1", "MessageStatus": "sent"}).encode(), "application/json"),
    ],
)
def test_unreadable_reports(body: bytes, content_type: str) -> None:
    with pytest.raises(BadReport):
        kind().parse(IncomingReport(REPORT_URL, {}, body, content_type))


# -- verify ----------------------------------------------------------------------------------


def test_the_documented_example_signature_verifies() -> None:
    # twilio.com/docs/usage/webhooks/webhooks-security: token 12345, this URL and these
    # parameters sign to 0/KCTR6DLpKmkAf8muzZqo1nDgQ=.
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+12349013030",
        "Digits": "1234",
        "From": "+12349013030",
        "To": "+18005551212",
    }
    assert signature("12345", url, params.items()) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
    report = IncomingReport(
        url,
        {"X-Twilio-Signature": "0/KCTR6DLpKmkAf8muzZqo1nDgQ="},
        urlencode(params).encode(),
        FORM,
    )
    kind(auth_token="12345").verify(report, now=0.0)


def test_a_report_signed_by_the_sdk_verifies() -> None:
    params = {**CALLBACK, "MessageStatus": "undelivered", "ErrorCode": "30003"}
    kind().verify(incoming(params), now=0.0)


def test_a_signature_we_compute_is_valid_for_the_sdk() -> None:
    params = {**CALLBACK, "Body": "héllo 👋 & +more=", "Empty": ""}
    ours = signature(TOKEN, REPORT_URL, params.items())
    assert RequestValidator(TOKEN).validate(REPORT_URL, params, ours)
    assert ours == RequestValidator(TOKEN).compute_signature(REPORT_URL, params)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda r: IncomingReport(r.url, r.headers, r.body.replace(b"=sent", b"=delivered"), FORM),
        lambda r: IncomingReport(r.url.replace("t0k3n", "other"), r.headers, r.body, FORM),
        lambda r: IncomingReport(r.url, r.headers, r.body + b"&Extra=1", FORM),
        lambda r: IncomingReport(r.url, {}, r.body, FORM),
        lambda r: IncomingReport(r.url, {"X-Twilio-Signature": ""}, r.body, FORM),
        lambda r: IncomingReport(r.url, {"X-Twilio-Signature": "é" * 28}, r.body, FORM),
        lambda r: IncomingReport(r.url, r.headers, b"MessageSid=\xff", FORM),
    ],
)
def test_tampered_reports_are_forged(tamper: Any) -> None:
    genuine = incoming(CALLBACK)
    kind().verify(genuine, now=0.0)
    with pytest.raises(ForgedReport):
        kind().verify(tamper(genuine), now=0.0)


def test_another_accounts_token_is_forged() -> None:
    with pytest.raises(ForgedReport):
        kind().verify(incoming(CALLBACK, token="0" * 32), now=0.0)


def test_a_webhook_rule_signature_is_refused_with_a_reason() -> None:
    report = incoming(CALLBACK, **{"X-Twilio-Webhooks-Signature-Settings": "key=k1"})
    with pytest.raises(ForgedReport, match="Webhook Rule"):
        kind().verify(report, now=0.0)


@pytest.mark.parametrize(
    "signed",
    [
        "https://dispatchd.example.com/r?t=1",
        "https://dispatchd.example.com:443/r?t=1",
        "https://dispatchd.example.com:8443/r?t=1",
        "http://127.0.0.1/r?t=1",
        "http://127.0.0.1:80/r?t=1",
        "http://127.0.0.1:8080/r?t=1",
    ],
)
@pytest.mark.parametrize(
    "called",
    [
        "https://dispatchd.example.com/r?t=1",
        "https://dispatchd.example.com:443/r?t=1",
        "https://dispatchd.example.com:8443/r?t=1",
        "http://127.0.0.1/r?t=1",
        "http://127.0.0.1:80/r?t=1",
        "http://127.0.0.1:8080/r?t=1",
    ],
)
def test_ports_are_handled_exactly_as_the_sdk_does(signed: str, called: str) -> None:
    sig = RequestValidator(TOKEN).compute_signature(signed, CALLBACK)
    report = IncomingReport(called, {"X-Twilio-Signature": sig}, urlencode(CALLBACK).encode(), FORM)
    sdk_accepts = RequestValidator(TOKEN).validate(called, CALLBACK, sig)
    try:
        kind().verify(report, now=0.0)
    except ForgedReport:
        ours = False
    else:
        ours = True
    assert ours == sdk_accepts


def test_url_variants() -> None:
    assert url_variants("https://h.example/r?a=1") == (
        "https://h.example/r?a=1",
        "https://h.example:443/r?a=1",
    )
    assert url_variants("http://[::1]:8080/r") == ("http://[::1]/r", "http://[::1]:8080/r")


def test_a_json_webhook_is_verified_through_its_body_hash() -> None:
    # The SDK's own test vector for bodySHA256.
    body = '{"property": "value", "boolean": true}'
    digest = "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620"
    url = f"https://mycompany.com/myapp.php?foo=1&bar=2&bodySHA256={digest}"
    validator = RequestValidator(TOKEN)
    sig = validator.compute_signature(url, {})
    assert validator.validate(url, body, sig)
    report = IncomingReport(url, {"X-Twilio-Signature": sig}, body.encode(), "application/json")
    kind().verify(report, now=0.0)
    with pytest.raises(ForgedReport, match="bodySHA256"):
        kind().verify(
            IncomingReport(url, report.headers, body.encode() + b" ", "application/json"), 0.0
        )


def test_the_sdk_refuses_what_we_refuse_for_a_tampered_body() -> None:
    report = incoming(CALLBACK)
    sig = report.headers["X-Twilio-Signature"]
    changed = {**CALLBACK, "MessageStatus": "delivered"}
    assert not RequestValidator(TOKEN).validate(REPORT_URL, changed, sig)
    with pytest.raises(ForgedReport):
        kind().verify(
            IncomingReport(REPORT_URL, report.headers, urlencode(changed).encode(), FORM), 0.0
        )


def test_the_sdk_raises_on_the_documented_error_answer() -> None:
    # The SDK reads the same fields we do from Twilio's error body.
    class Failing(RecordingClient):
        def request(self, method: str, uri: str, **kwargs: Any) -> TwilioResponse:
            return TwilioResponse(400, json.dumps(ERROR_21211))

    client = Client(SID, TOKEN, http_client=Failing())
    with pytest.raises(TwilioRestException) as raised:
        client.messages.create(to="5551234567", from_=SENDER, body="hi")
    assert (raised.value.code, raised.value.status) == (21211, 400)
    outcome = kind().classify(400, {}, answer(ERROR_21211))
    assert isinstance(outcome, InvalidNumber)
    assert outcome.code == str(raised.value.code)
