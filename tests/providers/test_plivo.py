"""The plivo kind, pure: golden answers and callbacks from Plivo's docs, the mapping, and the
V2 signature checked both ways against the official SDK's `validate_signature`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any
from urllib.parse import urlencode

import plivo  # type: ignore[import-untyped]
import pytest
import requests
from multidict import CIMultiDict
from plivo.utils import validate_signature  # type: ignore[import-untyped]

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
from dispatchd.providers.plivo import (
    INVALID_NUMBER_CODES,
    NOT_INVALID_CODES,
    OTHER_ERROR_CODES,
    REPORT_STATUSES,
    Plivo,
    PlivoSettings,
    destination,
    message_expiry,
    normal_code,
    report_status,
    signature,
    signed_url,
)

# The SDK refuses an auth_id that is not MA/SA + 18 capitals or digits.
AUTH_ID = "MAXXXXXXXXXXXXXXXXXX"
TOKEN = "plivo-auth-token-0123456789abcdef"
SENDER = "14155550100"
REPORT_URL = "https://dispatchd.example.com/providers/plivo/reports?message=01JABCDEF&token=t0k3n"
FORM = "application/x-www-form-urlencoded"
UUID = "5b40a428-bfc7-4daf-9d06-726c558bf3b8"

# The Python SDK's own fixture of a send answer (tests/resources/fixtures/messageSendResponse.json),
# the shape of the reference's "Response" (HTTP Status: 202).
SEND_ANSWER = {
    "api_id": "948b53a2-3f08-11e7-b6f4-061564b78b75",
    "message": "message(s) queued",
    "message_uuid": [UUID],
}
# plivo.com/docs/messaging/concepts/destination-number-validation.
INVALID_DST = {
    "api_id": "df5d4304-66af-11eb-91d8-0242ac110004",
    "error": "19332631167 is not a valid phone number",
}
# The PHP SDK's mock of a 401 on message create (plivo-php PR #367): no api_id.
ERROR_401 = {"error": "authentication credentials were not provided"}
# The attributes of plivo.com/docs/messaging/api/message/message-status-callbacks, as a
# `delivered` callback carries them (form data, since the method is POST).
CALLBACK = {
    "From": SENDER,
    "MessageTime": "2024-08-21 12:58:49.244057",
    "MessageUUID": UUID,
    "ParentMessageUUID": UUID,
    "PartInfo": "",
    "PowerpackUUID": "",
    "QueuedTime": "2024-08-21 12:58:49.244057",
    "SentTime": "2024-08-21 12:58:50.102934",
    "DeliveryReportTime": "2024-08-21 12:58:51.947720",
    "Sequence": "2",
    "Status": "delivered",
    "To": "14155552671",
    "TotalAmount": "0.00500",
    "TotalRate": "0.00500",
    "Type": "sms",
    "Units": "1",
    "MCC": "310",
    "MNC": "260",
    "ErrorCode": "000",
}
# The docs' worked example (signature-validation): base URI + nonce is the signed message.
DOCS_URI = "https://yourdomain.com/answer/"
DOCS_NONCE = "05429567804466091622"


def kind(**overrides: Any) -> Plivo:
    settings: dict[str, Any] = {"auth_id": AUTH_ID, "auth_token": TOKEN, "from_": SENDER}
    return Plivo(PlivoSettings(**{**settings, **overrides}))


def submission(**overrides: Any) -> Submission:
    values: dict[str, Any] = {
        "message_id": "01JABCDEF",
        "to_number": "+14155552671",
        "body": "Hi there, ça va? 👋",
        "segments": 1,
        "report_url": REPORT_URL,
        "validity": 600.0,
    }
    return Submission(**{**values, **overrides})


def by_hand(token: str, url: str, nonce: str) -> str:
    """The signature as the docs describe it, written out independently of the kind."""
    base = url.split("?", 1)[0]
    digest = hmac.new(token.encode(), (base + nonce).encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def incoming(
    params: dict[str, str] | None = None,
    url: str = REPORT_URL,
    token: str = TOKEN,
    nonce: str = DOCS_NONCE,
    **headers: str,
) -> IncomingReport:
    signed = {
        "X-Plivo-Signature-V2": by_hand(token, url, nonce),
        "X-Plivo-Signature-V2-Nonce": nonce,
    }
    body = urlencode(params if params is not None else CALLBACK).encode()
    return IncomingReport(url, {**signed, **headers}, body, FORM)


def answer(body: Any) -> bytes:
    return json.dumps(body).encode()


# -- settings and request --------------------------------------------------------------------


def test_settings_name_the_bad_key_and_hide_the_token() -> None:
    with pytest.raises(ValueError, match=r"^auth_id:"):
        PlivoSettings("", TOKEN, SENDER)
    with pytest.raises(ValueError, match=r"^auth_id:"):
        PlivoSettings("MA/../x", TOKEN, SENDER)
    with pytest.raises(ValueError, match=r"^auth_token:"):
        PlivoSettings(AUTH_ID, "", SENDER)
    with pytest.raises(ValueError, match=r"^from:"):
        PlivoSettings(AUTH_ID, TOKEN, "")
    with pytest.raises(ValueError, match=r"^from:"):
        PlivoSettings(AUTH_ID, TOKEN, "+ ")
    with pytest.raises(ValueError, match=r"^url:"):
        PlivoSettings(AUTH_ID, TOKEN, SENDER, url="api.plivo.com")
    settings = PlivoSettings(AUTH_ID, TOKEN, SENDER)
    assert settings.url == "https://api.plivo.com"
    assert TOKEN not in repr(settings)


def test_the_request_is_plivos_send_a_message() -> None:
    req = kind().request(submission())
    assert req.method == "POST"
    assert req.url == f"https://api.plivo.com/v1/Account/{AUTH_ID}/Message/"
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["Authorization"] == "Basic " + base64.b64encode(
        f"{AUTH_ID}:{TOKEN}".encode()
    ).decode("ascii")
    assert json.loads(req.body) == {
        "src": SENDER,
        # "prefixed with the country code but without the '+' sign"
        "dst": "14155552671",
        "text": "Hi there, ça va? 👋",
        "type": "sms",
        "url": REPORT_URL,
        "method": "POST",
        "message_expiry": 600,
    }


def test_a_custom_url_and_no_validity() -> None:
    req = kind(url="http://127.0.0.1:9/simulator/plivo/").request(submission(validity=None))
    assert req.url == f"http://127.0.0.1:9/simulator/plivo/v1/Account/{AUTH_ID}/Message/"
    assert "message_expiry" not in json.loads(req.body)


@pytest.mark.parametrize(
    ("seconds", "sent"),
    [
        (0.0, 5),
        (4.9, 5),
        (5.0, 5),
        (59.9, 59),
        (10_799.0, 10_799),
        (10_799.9, 10_799),
        # Plivo's own default (10800 s) is as long as Plivo holds anything: left out.
        (10_800.0, None),
        (1e9, None),
        (float("inf"), None),
    ],
)
def test_message_expiry_is_whole_seconds_in_plivos_range(seconds: float, sent: int | None) -> None:
    # support.plivo.com "Message Expiry": 5..10799 s, default 10800 s.
    assert message_expiry(seconds) == sent


def test_destination_drops_the_plus() -> None:
    assert destination("+447700900123") == "447700900123"
    assert destination("447700900123") == "447700900123"


def sdk_client(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, list[requests.PreparedRequest]]:
    """The official SDK with its network replaced by a recorder that answers a 202."""
    client = plivo.RestClient(AUTH_ID, TOKEN)
    sent: list[requests.PreparedRequest] = []

    def send_request(request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        sent.append(request)
        response = requests.Response()
        response.status_code = 202
        response._content = answer(SEND_ANSWER)
        response.url = request.url or ""
        return response

    monkeypatch.setattr(client, "send_request", send_request)
    return client, sent


def test_the_request_matches_what_the_official_sdk_sends(monkeypatch: pytest.MonkeyPatch) -> None:
    client, sent = sdk_client(monkeypatch)
    response = client.messages.create(
        src=SENDER,
        dst="14155552671",
        text="Hi there, ça va? 👋",
        url=REPORT_URL,
        message_expiry=600,
    )
    assert response.message_uuid == [UUID]
    (theirs,) = sent
    ours = kind().request(submission())
    assert (ours.method, ours.url) == (theirs.method, theirs.url)
    assert ours.headers["Authorization"] == theirs.headers["Authorization"]
    assert ours.headers["Content-Type"] == theirs.headers["Content-Type"]
    assert isinstance(theirs.body, bytes)
    sdk_body = json.loads(theirs.body)
    our_body = json.loads(ours.body)
    # Every field we send is one the SDK sends, with the same value; the SDK adds its
    # defaults (`log`, `trackable`) on top.
    assert {k: sdk_body[k] for k in our_body} == our_body


# -- classify --------------------------------------------------------------------------------


def test_a_202_is_accepted_with_the_first_message_uuid() -> None:
    assert kind().classify(202, {}, answer(SEND_ANSWER)) == Accepted(UUID, 202)


@pytest.mark.parametrize(
    "body",
    [
        b'{"api_id": "948b53a2", "message_uuid": ["5b40a4',
        b"",
        answer({"api_id": "x", "message": "message(s) queued"}),
        answer({"message_uuid": []}),
        answer({"message_uuid": [42]}),
        answer({"message_uuid": ["x" * 65]}),
        answer(["not", "an", "object"]),
    ],
)
def test_a_2xx_without_a_usable_id_is_still_accepted(body: bytes) -> None:
    # Resending could deliver twice; the reports still reach the per-message URL.
    assert kind().classify(202, {}, body) == Accepted(None, 202)


def test_a_2xx_listing_the_number_as_invalid_queued_nothing() -> None:
    # plivo/plivo-node#215: invalid destinations come back in `invalid_number`.
    body = answer({"api_id": "x", "message": "message(s) queued", "invalid_number": ["1"]})
    assert isinstance(kind().classify(202, {}, body), InvalidNumber)
    both = answer({"message_uuid": [UUID], "invalid_number": ["1"]})
    assert kind().classify(202, {}, both) == Accepted(UUID, 202)


def test_429_is_throttled_with_retry_after() -> None:
    # "429 Too many requests, rate limited" (plivo.com/docs/.../api/response).
    body = answer({"api_id": "x", "error": "too many requests"})
    outcome = kind().classify(429, {"Retry-After": "3"}, body)
    assert outcome == Throttled("HTTP 429: too many requests", 429, 3.0)
    assert kind().classify(429, {}, b"") == Throttled("HTTP 429: no detail", 429, None)


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
def test_server_errors_are_unavailable(status: int) -> None:
    body = answer({"api_id": "x", "error": "server error"})
    assert isinstance(kind().classify(status, {}, body), Unavailable)


def test_a_bad_login_is_unavailable_so_the_breaker_takes_the_account_out() -> None:
    outcome = kind().classify(401, {}, answer(ERROR_401))
    assert outcome == Unavailable("HTTP 401: authentication credentials were not provided", 401)
    assert isinstance(kind().classify(404, {}, answer({"error": "not found"})), Unavailable)


def test_insufficient_credit_is_the_accounts_problem() -> None:
    # support.plivo.com: requests "fail with the error 'Insufficient Credit'".
    body = answer({"api_id": "x", "error": "Insufficient Credit"})
    assert isinstance(kind().classify(400, {}, body), Unavailable)


@pytest.mark.parametrize(
    "error",
    [
        "19332631167 is not a valid phone number",  # the docs' example
        "'1111111' is not a valid phone number.",  # plivo/plivo-node#222
        "+1111111 is not a valid phone number",
    ],
)
def test_an_invalid_destination_is_an_invalid_number(error: str) -> None:
    outcome = kind().classify(400, {}, answer({"api_id": "x", "error": error}))
    assert outcome == InvalidNumber(f"HTTP 400: {error}", 400)


@pytest.mark.parametrize(
    ("status", "error"),
    [
        # The same words about our own `src` are the sender's problem, not the number's.
        (400, f"{SENDER} is not a valid phone number"),
        (400, "+1 (415) 555-0100 is not a valid phone number"),
        # Said of several destinations at once: not one named number.
        (400, "invalid phone numbers."),
        (400, "19003356789 is not an MMS enabled phone number"),
        (400, "This caller ID is not allowed for outbound message"),
        (400, "src parameter not present"),
        # The SDK's GeoPermissionError: this destination country is not enabled.
        (403, "destination country barred"),
        (405, "method not allowed"),
        (422, "unprocessable"),
    ],
)
def test_other_client_errors_are_rejected(status: int, error: str) -> None:
    outcome = kind().classify(status, {}, answer({"api_id": "x", "error": error}))
    assert outcome == Rejected(f"HTTP {status}: {error}", status)


def test_field_errors_and_text_bodies_are_kept_readable() -> None:
    fields = answer({"api_id": "x", "error": {"dst": ["This field is required."]}})
    outcome = kind().classify(400, {}, fields)
    assert isinstance(outcome, Rejected)
    assert "This field is required." in outcome.reason
    assert kind().classify(502, {}, b"<html>Bad Gateway</html>") == Unavailable(
        "HTTP 502: <html>Bad Gateway</html>", 502
    )


def test_headers_are_read_case_insensitively() -> None:
    headers = CIMultiDict({"retry-after": "2"})
    outcome = kind().classify(429, headers, b"")
    assert isinstance(outcome, Throttled)
    assert outcome.retry_after == 2.0


# -- the mapping -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "code", "expected"),
    [
        ("queued", None, None),
        ("sent", None, None),
        ("received", None, None),
        ("delivered", "000", Status.DELIVERED),
        ("delivered", None, Status.DELIVERED),
        ("read", None, Status.DELIVERED),
        ("failed", "900", Status.FAILED),
        ("failed", "420", Status.FAILED),
        ("undelivered", "80", Status.FAILED),
        ("undelivered", "70", Status.FAILED),
        ("undelivered", "200", Status.FAILED),
        ("undelivered", "50", Status.INVALID),
        ("failed", "50", Status.INVALID),
        ("rejected", "50", Status.INVALID),
        ("rejected", None, Status.FAILED),
        ("undelivered", "050", Status.INVALID),
        ("Undelivered", " 50 ", Status.INVALID),
        # A code that means invalid does not turn a delivery into one.
        ("delivered", "50", Status.DELIVERED),
        ("sent", "50", None),
        # A status Plivo adds without notice is recorded, not acted on.
        ("accepted_by_carrier", None, None),
    ],
)
def test_report_status(raw: str, code: str | None, expected: Status | None) -> None:
    assert report_status(raw, code) == expected


def test_the_tables_agree() -> None:
    assert not INVALID_NUMBER_CODES.keys() & NOT_INVALID_CODES.keys()
    assert not INVALID_NUMBER_CODES.keys() & OTHER_ERROR_CODES.keys()
    assert not NOT_INVALID_CODES.keys() & OTHER_ERROR_CODES.keys()
    for code in (*NOT_INVALID_CODES, *OTHER_ERROR_CODES):
        assert report_status("undelivered", code) is Status.FAILED
    assert {k for k, v in REPORT_STATUSES.items() if v is None} == {"queued", "sent", "received"}
    assert (normal_code("000"), normal_code("0050"), normal_code("x1")) == ("0", "50", "x1")


# -- parse -----------------------------------------------------------------------------------


def test_a_callback_from_the_docs_is_read() -> None:
    report = incoming()
    assert kind().parse(report) == [Report(UUID, Status.DELIVERED, "delivered", "000")]


def test_a_failed_callback_keeps_its_code() -> None:
    params = {**CALLBACK, "Status": "undelivered", "ErrorCode": "50"}
    assert kind().parse(incoming(params)) == [Report(UUID, Status.INVALID, "undelivered", "50")]
    params = {**CALLBACK, "Status": "sent", "ErrorCode": ""}
    assert kind().parse(incoming(params)) == [Report(UUID, None, "sent", None)]


def test_a_part_reported_under_its_own_uuid_lands_on_the_parent() -> None:
    part = "0f3e2a10-1111-4222-8333-444455556666"
    params = {**CALLBACK, "MessageUUID": part, "ParentMessageUUID": UUID}
    (report,) = kind().parse(incoming(params))
    assert (report.provider_message_id, report.aliases) == (UUID, (part,))
    without_parent = {k: v for k, v in CALLBACK.items() if k != "ParentMessageUUID"}
    assert kind().parse(incoming(without_parent))[0].provider_message_id == UUID


@pytest.mark.parametrize(
    ("params", "content_type"),
    [
        ({k: v for k, v in CALLBACK.items() if k != "MessageUUID"}, FORM),
        ({**CALLBACK, "MessageUUID": "x" * 65}, FORM),
        ({**CALLBACK, "ParentMessageUUID": "x" * 65}, FORM),
        ({k: v for k, v in CALLBACK.items() if k != "Status"}, FORM),
        ({**CALLBACK, "Status": "  "}, FORM),
        ({**CALLBACK, "ErrorCode": "9" * 201}, FORM),
        (CALLBACK, "application/json"),
    ],
)
def test_unreadable_callbacks_are_bad_reports(params: dict[str, str], content_type: str) -> None:
    report = incoming(params)
    with pytest.raises(BadReport):
        kind().parse(IncomingReport(report.url, report.headers, report.body, content_type))


def test_a_body_that_is_not_utf8_is_a_bad_report() -> None:
    with pytest.raises(BadReport):
        kind().parse(IncomingReport(REPORT_URL, {}, b"MessageUUID=\xff", FORM))


# -- verify, against the SDK -----------------------------------------------------------------


def test_the_docs_example_signs_the_base_uri_followed_by_the_nonce() -> None:
    ours = signature(TOKEN, DOCS_URI, DOCS_NONCE)
    expected = hmac.new(
        TOKEN.encode(), b"https://yourdomain.com/answer/05429567804466091622", hashlib.sha256
    ).digest()
    assert ours == base64.b64encode(expected).decode()
    assert validate_signature(DOCS_URI, DOCS_NONCE, ours, TOKEN)


@pytest.mark.parametrize(
    "url",
    [
        REPORT_URL,
        "https://dispatchd.example.com/providers/plivo/reports",
        "http://127.0.0.1:8080/providers/plivo%20eu/reports?message=01J&token=a%2Fb",
        "https://user@dispatchd.example.com:8443/base/providers/plivo/reports?x=1#frag",
    ],
)
def test_signatures_agree_with_the_sdk_both_ways(url: str) -> None:
    nonce = "12345678901234567890"
    ours = signature(TOKEN, url, nonce)
    # Ours, checked by theirs.
    assert validate_signature(url, nonce, ours, TOKEN)
    assert not validate_signature(url, nonce, ours, "other-token")
    # One the SDK accepts (written out from the docs), checked by ours.
    theirs = by_hand(TOKEN, url.split("#", 1)[0], nonce)
    assert validate_signature(url, nonce, theirs, TOKEN)
    report = IncomingReport(
        url,
        {"X-Plivo-Signature-V2": theirs, "X-Plivo-Signature-V2-Nonce": nonce},
        urlencode(CALLBACK).encode(),
        FORM,
    )
    kind().verify(report, now=0.0)


def test_a_signed_callback_verifies_with_case_insensitive_headers() -> None:
    report = incoming()
    headers = CIMultiDict({k.lower(): v for k, v in report.headers.items()})
    kind().verify(IncomingReport(report.url, headers, report.body, FORM), now=0.0)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Plivo-Signature-V2-Nonce": DOCS_NONCE},
        {"X-Plivo-Signature-V2": by_hand(TOKEN, REPORT_URL, DOCS_NONCE)},
        {"X-Plivo-Signature-V2": "", "X-Plivo-Signature-V2-Nonce": DOCS_NONCE},
        {"X-Plivo-Signature-V2": by_hand(TOKEN, REPORT_URL, DOCS_NONCE)[:-4] + "AAA=",
         "X-Plivo-Signature-V2-Nonce": DOCS_NONCE},
        # Signed under another account's token.
        {"X-Plivo-Signature-V2": by_hand("other", REPORT_URL, DOCS_NONCE),
         "X-Plivo-Signature-V2-Nonce": DOCS_NONCE},
        # A real signature replayed with another nonce.
        {"X-Plivo-Signature-V2": by_hand(TOKEN, REPORT_URL, DOCS_NONCE),
         "X-Plivo-Signature-V2-Nonce": "99999999999999999999"},
        # Only the main-account header, which dispatchd does not check.
        {"X-Plivo-Signature-Ma-V2": by_hand(TOKEN, REPORT_URL, DOCS_NONCE),
         "X-Plivo-Signature-V2-Nonce": DOCS_NONCE},
        {"X-Plivo-Signature-V2": "x", "X-Plivo-Signature-V2-Nonce": "1" * 129},
        {"X-Plivo-Signature-V2": "é", "X-Plivo-Signature-V2-Nonce": DOCS_NONCE},
    ],
)  # fmt: skip
def test_unsigned_and_forged_callbacks_are_refused(headers: dict[str, str]) -> None:
    report = IncomingReport(REPORT_URL, headers, urlencode(CALLBACK).encode(), FORM)
    with pytest.raises(ForgedReport):
        kind().verify(report, now=0.0)
    sig = headers.get("X-Plivo-Signature-V2", "")
    nonce = headers.get("X-Plivo-Signature-V2-Nonce", "")
    assert not validate_signature(REPORT_URL, nonce, sig, TOKEN)


@pytest.mark.parametrize(
    "url",
    [
        "https://dispatchd.example.com/providers/plivo/reports/",
        "https://dispatchd.example.com/providers/other/reports?message=01JABCDEF&token=t0k3n",
        "http://dispatchd.example.com/providers/plivo/reports?message=01JABCDEF&token=t0k3n",
        "https://dispatchd.example.com:8443/providers/plivo/reports",
        "https://evil.example.com/providers/plivo/reports",
    ],
)
def test_a_signature_for_another_url_is_refused(url: str) -> None:
    signed = incoming()
    report = IncomingReport(url, signed.headers, signed.body, FORM)
    with pytest.raises(ForgedReport):
        kind().verify(report, now=0.0)


def test_what_v2_does_not_cover_the_query_the_body_and_the_time() -> None:
    """Documented limits, pinned so a change to them is seen: the per-message token in the
    query is what binds a report to its message, and a replay cannot be dated."""
    signed = incoming()
    # Another message's query: the signature still holds (the token check refuses it).
    other = "https://dispatchd.example.com/providers/plivo/reports?message=01JOTHER&token=x"
    assert signed_url(other) == signed_url(REPORT_URL)
    kind().verify(IncomingReport(other, signed.headers, signed.body, FORM), now=0.0)
    # Another body: unsigned in V2.
    forged_body = urlencode({**CALLBACK, "Status": "undelivered", "ErrorCode": "50"}).encode()
    kind().verify(IncomingReport(REPORT_URL, signed.headers, forged_body, FORM), now=0.0)
    # No timestamp: "stale" cannot be told, whatever `now` is.
    for now in (0.0, 1e6, 4e9):
        kind().verify(signed, now=now)
    assert validate_signature(other, DOCS_NONCE, signed.headers["X-Plivo-Signature-V2"], TOKEN)
