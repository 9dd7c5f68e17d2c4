"""The telnyx kind, pure: golden answers and events modelled on Telnyx's docs, the mapping,
and the Ed25519 signature checked both ways against the official SDK's verifiers."""

from __future__ import annotations

import base64
import json
import time
import typing
from typing import Any

import httpx
import pytest
import telnyx
from nacl.signing import SigningKey
from telnyx.lib.webhook_verification import (
    TIMESTAMP_TOLERANCE_SECONDS,
    WebhookVerificationError,
    verify_webhook_signature,
)
from telnyx.types.outbound_message_payload import To

from dispatchd.devtools.simulator_telnyx import private_key, sign
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
from dispatchd.providers.telnyx import (
    INVALID_NUMBER_CODES,
    NOT_INVALID_CODES,
    REJECTED_CODES,
    REPORT_STATUSES,
    THROTTLE_CODES,
    TIMESTAMP_TOLERANCE,
    UNAVAILABLE_CODES,
    Telnyx,
    TelnyxSettings,
    report_status,
    signed_bytes,
)

# Its SDK oracle takes seconds to import: left out of `make unit`, run by `make test`.
pytestmark = pytest.mark.slow

API_KEY = "KEY0123456789ABCDEF_test"
# A fixed test key pair (PyNaCl, the SDK's own Ed25519 library, signs in these tests).
SIGNER = SigningKey(bytes(range(32)))
PUBLIC_KEY = base64.b64encode(bytes(SIGNER.verify_key)).decode("ascii")
OTHER_SIGNER = SigningKey(bytes(range(1, 33)))
SENDER = "+13125550001"
PROFILE = "83d2343b-553f-4c5f-b8c8-fd27004f94bf"
NUMBER = "+13125550002"
MESSAGE_ID = "0190d8a5-7c3e-7a41-9e2b-5f6a7b8c9d0e"  # a dispatchd id (UUIDv7)
REPORT_URL = (
    f"https://dispatchd.example.com/providers/telnyx/reports?message={MESSAGE_ID}&token=t0k3n"
)
PROVIDER_ID = "ac012cbf-5e09-46af-a69a-7c0e2d90993c"
NOW = 1_705_354_334.0

# Modelled on the message record the "Receiving Webhooks for Messaging" guide shows
# (developers.telnyx.com/docs/messaging/messages/receiving-webhooks): its fields and style.
RECORD: dict[str, Any] = {
    "completed_at": None,
    "cost": None,
    "direction": "outbound",
    "encoding": "GSM-7",
    "errors": [],
    "from": {"carrier": "Telnyx", "line_type": "Wireless", "phone_number": SENDER},
    "id": PROVIDER_ID,
    "media": [],
    "messaging_profile_id": PROFILE,
    "organization_id": "9d76d591-1b7d-405d-8c64-1320ee070245",
    "parts": 1,
    "received_at": "2024-01-15T21:32:13.552+00:00",
    "record_type": "message",
    "sent_at": None,
    "text": "Hello there!",
    "to": [
        {
            "carrier": "T-MOBILE USA, INC.",
            "line_type": "Wireless",
            "phone_number": NUMBER,
            "status": "queued",
        }
    ],
    "type": "SMS",
    "valid_until": "2024-01-15T22:32:13.552+00:00",
    "webhook_url": REPORT_URL,
}
SEND_ANSWER = {"data": RECORD}
# The 40302 answer as developers.telnyx.com/docs/messaging/messages/sms-chunking shows it.
TOO_LARGE = {
    "errors": [
        {
            "code": "40302",
            "title": "Message too large",
            "detail": "The SMS message would be divided into 11 parts. The maximum is 10.",
        }
    ]
}
# The 429 body of development/api-fundamentals/reliability/rate-limiting.
RATE_LIMITED = {
    "errors": [
        {
            "code": "10011",
            "title": "Too many requests",
            "detail": "You have exceeded the maximum number of allowed requests.",
        }
    ]
}
# 10009 as the API error codes page titles and details it.
AUTH_FAILED = {
    "errors": [
        {
            "code": "10009",
            "title": "Authentication failed",
            "detail": "The required authentication headers were either invalid or not included "
            "in the request.",
        }
    ]
}


def event(event_type: str, status: str, errors: list[dict[str, Any]] | None = None) -> bytes:
    payload = {**RECORD, "to": [{**RECORD["to"][0], "status": status}], "errors": errors or []}
    if event_type == "message.finalized":
        payload["completed_at"] = "2024-01-15T21:32:14.148+00:00"
    document = {
        "data": {
            "event_type": event_type,
            "id": "4ee8c3a6-4995-4309-a3c6-38e3db9ea4be",
            "occurred_at": "2024-01-15T21:32:14.148+00:00",
            "payload": payload,
            "record_type": "event",
        },
        "meta": {"attempt": 1, "delivered_to": REPORT_URL},
    }
    return json.dumps(document).encode()


def failure(code: str, title: str = "failed") -> list[dict[str, Any]]:
    return [{"code": code, "title": title, "source": {"pointer": "/to/0/phone_number"}}]


def kind(**overrides: Any) -> Telnyx:
    values: dict[str, Any] = {"api_key": API_KEY, "public_key": PUBLIC_KEY, "from_": SENDER}
    return Telnyx(TelnyxSettings(**{**values, **overrides}))


def submission(**overrides: Any) -> Submission:
    values: dict[str, Any] = {
        "message_id": MESSAGE_ID,
        "to_number": NUMBER,
        "body": "Hi there, ça va? 👋",
        "segments": 1,
        "report_url": REPORT_URL,
        "validity": 600.0,
    }
    return Submission(**{**values, **overrides})


def signed(
    body: bytes, stamp: float = NOW, signer: SigningKey = SIGNER, **headers: str
) -> IncomingReport:
    timestamp = str(int(stamp))
    sig = signer.sign(timestamp.encode() + b"|" + body).signature
    sent = {
        "telnyx-signature-ed25519": base64.b64encode(sig).decode("ascii"),
        "telnyx-timestamp": timestamp,
        **headers,
    }
    return IncomingReport(REPORT_URL, sent, body, "application/json")


def answer(body: Any) -> bytes:
    return json.dumps(body).encode()


# -- settings and request --------------------------------------------------------------------


def test_the_request_is_telnyxs_send_a_message() -> None:
    req = kind().request(submission())
    assert (req.method, req.url) == ("POST", "https://api.telnyx.com/v2/messages")
    assert req.headers["Authorization"] == f"Bearer {API_KEY}"
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["Idempotency-Key"] == MESSAGE_ID
    assert json.loads(req.body) == {
        "to": NUMBER,
        "from": SENDER,
        "text": "Hi there, ça va? 👋",
        "webhook_url": REPORT_URL,
        "use_profile_webhooks": False,
    }


def test_a_messaging_profile_and_a_custom_url() -> None:
    telnyx_kind = kind(from_=None, messaging_profile_id=PROFILE, url="http://127.0.0.1:9/s/telnyx/")
    req = telnyx_kind.request(submission())
    assert req.url == "http://127.0.0.1:9/s/telnyx/v2/messages"
    fields = json.loads(req.body)
    assert fields["messaging_profile_id"] == PROFILE
    assert "from" not in fields
    both = json.loads(kind(messaging_profile_id=PROFILE).request(submission()).body)
    assert (both["from"], both["messaging_profile_id"]) == (SENDER, PROFILE)


def test_the_request_bytes_are_the_same_on_every_try() -> None:
    # An idempotent replay needs byte-identical bodies; validity is not part of them.
    first = kind().request(submission(validity=600.0))
    again = kind().request(submission(validity=12.5))
    assert first.body == again.body
    assert first.headers == again.headers


@pytest.mark.parametrize("message_id", ["", "has space", "x" * 256, "semi;colon"])
def test_an_id_outside_telnyxs_key_format_goes_without_a_key(message_id: str) -> None:
    assert "Idempotency-Key" not in kind().request(submission(message_id=message_id)).headers


def test_settings_name_the_bad_key_and_hide_the_api_key() -> None:
    with pytest.raises(ValueError, match=r"^from / messaging_profile_id:"):
        TelnyxSettings(API_KEY, PUBLIC_KEY)
    for bad in ("", "two words", "new\nline"):
        with pytest.raises(ValueError, match=r"^api_key:"):
            TelnyxSettings(bad, PUBLIC_KEY, from_=SENDER)
    for bad in ("not base64!", base64.b64encode(b"short").decode(), ""):
        with pytest.raises(ValueError, match=r"^public_key:"):
            TelnyxSettings(API_KEY, bad, from_=SENDER)
    settings = TelnyxSettings(API_KEY, PUBLIC_KEY, messaging_profile_id=PROFILE)
    assert API_KEY not in repr(settings)
    assert PUBLIC_KEY in repr(settings)  # public, and useful when checking a config


class Recorder:
    """An httpx transport for the SDK: records each request, answers from `reply`."""

    def __init__(self, status: int = 200, body: Any = SEND_ANSWER) -> None:
        self.requests: list[httpx.Request] = []
        self.status = status
        self.body = body

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(self.status, json=self.body)

    def client(self) -> Any:
        transport = httpx.MockTransport(self)
        return telnyx.Telnyx(
            api_key=API_KEY, max_retries=0, http_client=httpx.Client(transport=transport)
        )


def test_the_request_matches_what_the_official_sdk_sends() -> None:
    recorder = Recorder()
    sent = recorder.client().messages.send(
        to=NUMBER,
        from_=SENDER,
        text="Hi there, ça va? 👋",
        webhook_url=REPORT_URL,
        use_profile_webhooks=False,
        idempotency_key=MESSAGE_ID,
    )
    assert sent.data.id == PROVIDER_ID
    (call,) = recorder.requests
    ours = kind().request(submission())
    assert (call.method, str(call.url)) == (ours.method, ours.url)
    assert json.loads(call.content) == json.loads(ours.body)
    for name in ("Authorization", "Content-Type", "Idempotency-Key"):
        assert call.headers[name] == ours.headers[name], name
    # What the SDK's client reads from the answer is what we read.
    assert kind().classify(200, {}, answer(SEND_ANSWER)) == Accepted(sent.data.id, 200)


# -- classify --------------------------------------------------------------------------------


def test_a_200_message_record_is_accepted_with_its_id() -> None:
    assert kind().classify(200, {}, answer(SEND_ANSWER)) == Accepted(PROVIDER_ID, 200)


@pytest.mark.parametrize(
    "body", [b"", b'{"data": {"id": "ac01', b"[]", answer({"data": {"id": 7}}), answer({"id": "x"})]
)
def test_a_2xx_without_a_readable_id_is_still_accepted(body: bytes) -> None:
    # Resending could deliver it twice; its reports reach the per-message URL anyway.
    assert kind().classify(200, {}, body) == Accepted(None, 200)


def test_a_bad_api_key_takes_telnyx_out_of_rotation() -> None:
    outcome = kind().classify(401, {}, answer(AUTH_FAILED))
    assert isinstance(outcome, Unavailable)
    assert outcome.reason.startswith("HTTP 401, Telnyx 10009: Authentication failed")


def test_429_throttles_with_telnyxs_rate_limit_headers() -> None:
    headers = {"x-ratelimit-limit": "10", "x-ratelimit-remaining": "0", "x-ratelimit-reset": "4"}
    outcome = kind().classify(429, headers, answer(RATE_LIMITED))
    assert outcome == Throttled(
        "HTTP 429, Telnyx 10011: Too many requests: You have exceeded the maximum number of "
        "allowed requests.",
        429,
        4.0,
    )
    # Retry-After wins when both are there; neither leaves the pause to dispatchd.
    both = kind().classify(429, {**headers, "Retry-After": "9"}, b"")
    assert isinstance(both, Throttled)
    assert both.retry_after == 9.0
    bare = kind().classify(429, {}, b"")
    assert isinstance(bare, Throttled)
    assert bare.retry_after is None


def test_the_documented_too_large_answer_is_a_rejection() -> None:
    outcome = kind().classify(400, {}, answer(TOO_LARGE))
    assert isinstance(outcome, Rejected)
    assert (outcome.code, outcome.http_status) == ("40302", 400)
    assert "divided into 11 parts" in outcome.reason


def error(code: str, *more: str) -> bytes:
    return answer({"errors": [{"code": c, "title": f"error {c}"} for c in (code, *more)]})


@pytest.mark.parametrize(
    ("status", "body", "outcome"),
    [
        (400, error("40310"), InvalidNumber),
        (422, error("40310"), InvalidNumber),
        (400, error("40318"), Throttled),  # queue full: back off
        (400, error("40300"), Rejected),  # STOP: the number is fine
        (400, error("10002"), Rejected),  # which phone number? not said
        (422, error("10016"), Rejected),
        (422, error("10004"), Rejected),
        (400, error("40333"), Unavailable),  # spend limit: every message fails alike
        (400, error("40305"), Unavailable),  # the configured sender
        (400, error("40310", "40305"), Unavailable),  # invalid only if every code says so
        (400, error("40310", "40300"), Rejected),
        (400, error("40310", "10011"), Throttled),
        (400, answer({"errors": [{"code": 40310}]}), InvalidNumber),  # an integer code
        (400, answer({"errors": "nope"}), Rejected),
        (400, b"<html>bad request</html>", Rejected),
        (403, error("10010"), Unavailable),
        (404, b"", Unavailable),
        (408, b"", Unavailable),
        (500, error("10007"), Unavailable),
        (502, b"<html>Bad Gateway</html>", Unavailable),
        (503, error("40310"), Unavailable),  # a 5xx is never about the number
    ],
)
def test_classify(status: int, body: bytes, outcome: type) -> None:
    assert isinstance(kind().classify(status, {}, body), outcome)


@pytest.mark.parametrize(
    ("table", "outcome"),
    [
        (INVALID_NUMBER_CODES, InvalidNumber),
        (THROTTLE_CODES, Throttled),
        (UNAVAILABLE_CODES, Unavailable),
        (REJECTED_CODES, Rejected),
    ],
)
def test_every_tabled_code_classifies_as_its_table_says(table: Any, outcome: type) -> None:
    for code in table:
        assert isinstance(kind().classify(400, {}, error(code)), outcome), code


def test_the_tables_do_not_overlap_and_invalid_is_conservative() -> None:
    tables = [INVALID_NUMBER_CODES, THROTTLE_CODES, UNAVAILABLE_CODES, REJECTED_CODES]
    seen: set[str] = set()
    for table in tables:
        assert not seen & table.keys()
        seen |= table.keys()
    assert not INVALID_NUMBER_CODES.keys() & NOT_INVALID_CODES.keys()
    assert set(INVALID_NUMBER_CODES) == {"40001", "40012", "40310"}


class TestTheSdkReadsErrorsAsWeDo:
    """The official SDK raises on the documented answers; we classify the same bodies."""

    def sdk_error(self, status: int, body: Any) -> Any:
        with pytest.raises(telnyx.APIStatusError) as raised:
            Recorder(status, body).client().messages.send(to=NUMBER, from_=SENDER, text="hi")
        return raised.value

    def test_too_large(self) -> None:
        err = self.sdk_error(400, TOO_LARGE)
        assert isinstance(err, telnyx.BadRequestError)
        outcome = kind().classify(400, {}, answer(TOO_LARGE))
        assert isinstance(outcome, Rejected)
        body: Any = err.body
        assert outcome.code == body["errors"][0]["code"]

    def test_authentication(self) -> None:
        assert isinstance(self.sdk_error(401, AUTH_FAILED), telnyx.AuthenticationError)
        assert isinstance(kind().classify(401, {}, answer(AUTH_FAILED)), Unavailable)

    def test_rate_limit(self) -> None:
        assert isinstance(self.sdk_error(429, RATE_LIMITED), telnyx.RateLimitError)
        assert isinstance(kind().classify(429, {}, answer(RATE_LIMITED)), Throttled)


# -- parse -----------------------------------------------------------------------------------


def parse(body: bytes, content_type: str = "application/json") -> list[Report]:
    return kind().parse(IncomingReport(REPORT_URL, {}, body, content_type))


def test_the_documented_sent_event_is_intermediate() -> None:
    assert parse(event("message.sent", "sent")) == [Report(PROVIDER_ID, None, "sent", None)]


def test_the_documented_finalized_event_is_delivered() -> None:
    (report,) = parse(event("message.finalized", "delivered"), "application/json; charset=utf-8")
    assert report == Report(PROVIDER_ID, Status.DELIVERED, "delivered", None)


@pytest.mark.parametrize(
    ("status", "codes", "mapped"),
    [
        ("delivered", [], Status.DELIVERED),
        ("read", [], Status.DELIVERED),
        ("delivery_failed", ["40006"], Status.FAILED),
        ("delivery_failed", ["40008"], Status.FAILED),  # "try alternate route"
        ("delivery_failed", ["40002"], Status.FAILED),  # the two doc pages disagree on it
        ("delivery_failed", ["40300"], Status.FAILED),  # STOP: the number is fine
        ("delivery_failed", [], Status.FAILED),
        ("sending_failed", ["40015"], Status.FAILED),
        ("delivery_failed", ["40001"], Status.INVALID),
        ("delivery_failed", ["40012"], Status.INVALID),
        ("sending_failed", ["40310"], Status.INVALID),
        ("delivery_failed", ["40012", "40008"], Status.FAILED),  # not every code says so
        ("delivery_failed", ["40012", "40001"], Status.INVALID),
        ("expired", ["40005"], Status.FAILED),
        ("cancelled", [], Status.FAILED),
        ("delivery_unconfirmed", [], None),
        ("queued", [], None),
        ("sending", [], None),
        ("sent", [], None),
        ("something_new", [], None),  # Telnyx adds statuses; record them, change nothing
        ("delivered", ["40012"], Status.DELIVERED),  # a code never turns delivered invalid
    ],
)
def test_the_status_mapping(status: str, codes: list[str], mapped: Status | None) -> None:
    errors = [e for c in codes for e in failure(c)]
    (report,) = parse(event("message.finalized", status, errors))
    assert (report.status, report.raw_status) == (mapped, status)
    assert report.error_code == (",".join(codes) or None)


def test_every_recipient_status_the_sdk_knows_is_mapped() -> None:
    (literal,) = typing.get_args(To.model_fields["status"].annotation)[:1]
    known = set(typing.get_args(literal))
    assert known
    assert known <= set(REPORT_STATUSES)


def test_report_status_is_pure_data() -> None:
    assert report_status(" Delivery_Failed ", ["40310"]) is Status.INVALID
    assert report_status("delivery_failed", []) is Status.FAILED


def test_inbound_messages_are_acknowledged_without_effect() -> None:
    inbound = json.loads(event("message.received", "webhook_delivered"))
    inbound["data"]["payload"]["direction"] = "inbound"
    assert parse(json.dumps(inbound).encode()) == []
    inbound["data"]["event_type"] = "message.something"
    assert parse(json.dumps(inbound).encode()) == []


def broken(change: Any) -> bytes:
    document = json.loads(event("message.finalized", "delivered"))
    change(document)
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"not json", "application/json"),
        (b"\xff\xfe", "application/json"),
        (b"[]", "application/json"),
        (answer({"data": "x"}), "application/json"),
        (broken(lambda d: d["data"].pop("payload")), "application/json"),
        (broken(lambda d: d["data"]["payload"].pop("id")), "application/json"),
        (broken(lambda d: d["data"]["payload"].update(id="x" * 99)), "application/json"),
        (broken(lambda d: d["data"]["payload"].update(to=[])), "application/json"),
        (broken(lambda d: d["data"]["payload"]["to"][0].pop("status")), "application/json"),
        (broken(lambda d: d["data"]["payload"].update(to="+1555")), "application/json"),
        (event("message.finalized", "delivered"), "application/x-www-form-urlencoded"),
    ],
)
def test_unreadable_reports(body: bytes, content_type: str) -> None:
    with pytest.raises(BadReport):
        parse(body, content_type)


def test_odd_error_entries_are_skipped() -> None:
    errors: list[Any] = ["x", {"code": True}, {"title": "no code"}, {"code": " 40012 "}]
    (report,) = parse(event("message.finalized", "delivery_failed", errors))
    assert (report.status, report.error_code) == (Status.INVALID, "40012")


# -- verify ----------------------------------------------------------------------------------


def test_a_report_signed_with_pynacl_verifies() -> None:
    kind().verify(signed(event("message.finalized", "delivered")), now=NOW)


def test_what_our_simulator_signs_the_sdk_accepts_and_so_do_we() -> None:
    body = event("message.sent", "sent")
    stamp = str(int(time.time()))
    key = private_key(base64.b64encode(bytes(SIGNER)).decode("ascii"))
    headers = {"telnyx-signature-ed25519": sign(key, stamp, body), "telnyx-timestamp": stamp}
    verify_webhook_signature(body, headers, PUBLIC_KEY)
    client = telnyx.Telnyx(api_key=API_KEY, public_key=PUBLIC_KEY)
    unwrapped: Any = client.webhooks.unwrap(body.decode(), headers=headers)
    assert unwrapped.data.payload.id == PROVIDER_ID
    kind().verify(IncomingReport(REPORT_URL, headers, body, "application/json"), time.time())


def test_the_signed_bytes_are_timestamp_bar_body() -> None:
    assert signed_bytes("1705354334", b'{"a":1}') == b'1705354334|{"a":1}'


def test_headers_are_found_whatever_their_case() -> None:
    report = signed(event("message.sent", "sent"))
    shouted = {k.upper(): v for k, v in report.headers.items()}
    kind().verify(IncomingReport(REPORT_URL, shouted, report.body, "application/json"), NOW)


def _with_headers(report: IncomingReport, **headers: str) -> IncomingReport:
    return IncomingReport(report.url, {**report.headers, **headers}, report.body, "")


TAMPERS: dict[str, Any] = {
    "body": lambda r: IncomingReport(r.url, r.headers, r.body.replace(b"sent", b"delivered"), ""),
    "trailing byte": lambda r: IncomingReport(r.url, r.headers, r.body + b" ", ""),
    "no signature": lambda r: IncomingReport(
        r.url, {"telnyx-timestamp": r.headers["telnyx-timestamp"]}, r.body, ""
    ),
    "no timestamp": lambda r: IncomingReport(
        r.url, {"telnyx-signature-ed25519": r.headers["telnyx-signature-ed25519"]}, r.body, ""
    ),
    "empty signature": lambda r: _with_headers(r, **{"telnyx-signature-ed25519": ""}),
    "not base64": lambda r: _with_headers(r, **{"telnyx-signature-ed25519": "!!" * 44}),
    "short signature": lambda r: _with_headers(
        r, **{"telnyx-signature-ed25519": base64.b64encode(b"x" * 63).decode()}
    ),
    "timestamp moved": lambda r: _with_headers(
        r, **{"telnyx-timestamp": str(int(r.headers["telnyx-timestamp"]) + 1)}
    ),
    "timestamp not a number": lambda r: _with_headers(r, **{"telnyx-timestamp": "soon"}),
}


@pytest.mark.parametrize("tamper", TAMPERS.values(), ids=TAMPERS.keys())
def test_tampered_reports_are_forged_for_us_and_for_the_sdk(tamper: Any) -> None:
    genuine = signed(event("message.sent", "sent"), stamp=time.time())
    verify_webhook_signature(genuine.body, dict(genuine.headers), PUBLIC_KEY)
    kind().verify(genuine, time.time())
    forged = tamper(genuine)
    with pytest.raises(ForgedReport):
        kind().verify(forged, time.time())
    with pytest.raises(WebhookVerificationError):
        verify_webhook_signature(forged.body, dict(forged.headers), PUBLIC_KEY)


def test_another_accounts_key_is_forged() -> None:
    report = signed(event("message.sent", "sent"), signer=OTHER_SIGNER)
    with pytest.raises(ForgedReport, match="does not match"):
        kind().verify(report, NOW)


def test_the_url_is_not_part_of_the_signature() -> None:
    # The URL is not signed: the per-message token guards it, the signature the body.
    report = signed(event("message.sent", "sent"))
    moved = IncomingReport("https://elsewhere.example/x", report.headers, report.body, "")
    kind().verify(moved, NOW)


@pytest.mark.parametrize(
    ("skew", "fresh"),
    [
        (0, True),
        (TIMESTAMP_TOLERANCE, True),
        (-TIMESTAMP_TOLERANCE, True),
        (301, False),
        (-301, False),
    ],
)
def test_the_five_minute_tolerance(skew: int, fresh: bool) -> None:
    report = signed(event("message.sent", "sent"), stamp=NOW - skew)
    if fresh:
        kind().verify(report, NOW)
    else:
        with pytest.raises(ForgedReport, match="stale"):
            kind().verify(report, NOW)


@pytest.mark.parametrize(("age", "fresh"), [(-250, True), (250, True), (350, False), (-350, False)])
def test_staleness_agrees_with_the_sdk(age: int, fresh: bool) -> None:
    assert TIMESTAMP_TOLERANCE == TIMESTAMP_TOLERANCE_SECONDS
    now = time.time()
    report = signed(event("message.sent", "sent"), stamp=now - age)
    try:
        verify_webhook_signature(report.body, dict(report.headers), PUBLIC_KEY)
    except WebhookVerificationError:
        sdk_fresh = False
    else:
        sdk_fresh = True
    try:
        kind().verify(report, now)
    except ForgedReport:
        ours = False
    else:
        ours = True
    assert ours == sdk_fresh == fresh
