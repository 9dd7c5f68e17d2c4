"""The vonage kind, pure: golden requests, answers and webhooks from Vonage's Messages API
documents, the mapping, and the JWTs checked both ways against vonage-jwt and PyJWT."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import jwt  # PyJWT, the library vonage-jwt builds on
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from vonage_jwt import JwtClient, verify_signature  # type: ignore[import-untyped]

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
from dispatchd.providers.vonage import (
    INVALID_NUMBER_CODES,
    NOT_INVALID_CODES,
    REJECTED_CODES,
    REPORT_STATUSES,
    SIGNATURE_TOLERANCE,
    THROTTLE_CODES,
    UNAVAILABLE_CODES,
    Vonage,
    VonageSettings,
    application_jwt,
    b64url,
    report_status,
    sms_ttl,
    webhook_jwt,
    wire_number,
)

# The Messages API OpenAPI document's example values.
APP_ID = "aaaaaaaa-bbbb-cccc-dddd-0123456789ab"
MESSAGE_UUID = "aaaaaaaa-bbbb-4ccc-8ddd-0123456789ab"
API_KEY = "a1b2c3d"
# HS256 keys under 32 bytes make PyJWT warn; Vonage's dashboard secrets are long enough too.
SECRET = "0123456789abcdef0123456789abcdef"
NOW = 1_738_584_865.0  # 2025-02-03T12:14:25Z, the document's example timestamp
REPORT_URL = "https://dispatchd.example.com/providers/vonage/reports?message=01JABCDEF&token=t0k"

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PEM = KEY.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
).decode()

# Answers recorded in the official Python SDK's tests (vonage-python-sdk: messages/tests/data
# and http_client/tests/data), and the OpenAPI document's 422 examples.
SEND_MESSAGE = {"message_uuid": "d8f86df1-dec6-442f-870a-2241be27d721"}
UNAUTHORIZED = {
    "type": "https://developer.nexmo.com/api-errors#unauthorized",
    "title": "Unauthorized",
    "detail": "You did not provide correct credentials.",
    "instance": "a813c536-43f6-4568-acbf-f36ef2db955a",
}
LOW_BALANCE = {
    "type": "https://developer.nexmo.com/api-errors/#low-balance",
    "title": "Low balance",
    "detail": "This request could not be performed due to your account balance being low.",
    "instance": "bf0ca0bf927b3b52e3cb03217e1a1ddf",
}
FORBIDDEN = {
    "type": "https://developer.vonage.com/api-errors#forbidden",
    "title": "Forbidden",
    "detail": "Your account does not have permission to perform this action.",
    "instance": "bf0ca0bf927b3b52e3cb03217e1a1ddf",
}
NOT_FOUND = {
    "type": "https://developer.vonage.com/api-errors#not-found",
    "title": "Not Found",
    "detail": "Message with ID asdf not found",
    "instance": "617431f2-06b7-4798-af36-1b8151df8359",
}
RATE_LIMIT = {
    "title": "Rate Limit Hit",
    "type": "https://developer.vonage.com/api-errors#rate-limit",
    "detail": "Please wait, then retry your request",
    "instance": "bf0ca0bf927b3b52e3cb03217e1a1ddf",
}
INVALID_PARAMS = {
    "type": "https://developer.vonage.com/api-errors/messages#1150",
    "title": "Invalid params",
    "detail": "The value of one or more parameters is invalid.",
    "instance": "bf0ca0bf927b3b52e3cb03217e1a1ddf",
    "invalid_parameters": [{"name": "messenger.tag", "reason": "invalid value"}],
}
INVALID_RECIPIENT = {  # ErrorRecipient, with the document's own example type
    "type": "https://developer.vonage.com/api-errors/messages#110",
    "title": "Invalid recipient",
    "detail": "The `to` parameter is invalid for the given channel.",
    "instance": "bf0ca0bf927b3b52e3cb03217e1a1ddf",
}
INVALID_SENDER = {
    "type": "https://developer.vonage.com/api-errors/messages#1120",
    "title": "Invalid sender",
    "detail": "The `from` parameter is invalid for the given channel.",
    "instance": "bf0ca0bf927b3b52e3cb03217e1a1ddf",
}
# messageStatusSMS, from the document's examples.
STATUS = {
    "message_uuid": MESSAGE_UUID,
    "to": "447700900000",
    "from": "447700900001",
    "timestamp": "2025-02-03T12:14:25Z",
    "status": "submitted",
    "channel": "sms",
    "client_ref": "abc123",
    "destination": {"network_code": "12345"},
    "sms": {"count_total": "2"},
    "usage": {"currency": "EUR", "price": "0.0333"},
}
# The "Sample Signed JWT" claims of the Messages API's signed-webhooks page.
SAMPLE_CLAIMS = {
    "iat": 1587494962,
    "jti": "c5ba8f24-1a14-4c10-bfdf-3fbe8ce511b5",
    "iss": "Vonage",
    "api_key": API_KEY,
    "application_id": APP_ID,
}


def settings(**overrides: Any) -> VonageSettings:
    values: dict[str, Any] = {
        "from_": "447700900001",
        "signature_secret": SECRET,
        "application_id": APP_ID,
        "private_key": PEM,
    }
    return VonageSettings(**{**values, **overrides})


def kind(**overrides: Any) -> Vonage:
    return Vonage(settings(**overrides), clock=lambda: NOW, token_id=lambda: "jti-1")


def basic_kind(**overrides: Any) -> Vonage:
    values: dict[str, Any] = {
        "application_id": None,
        "private_key": None,
        "api_key": API_KEY,
        "api_secret": "s3cr3t",
    }
    return kind(**{**values, **overrides})


VONAGE = kind()  # built once: loading an RSA key validates it, which is slow
BASIC = basic_kind()


def submission(**overrides: Any) -> Submission:
    values: dict[str, Any] = {
        "message_id": "01JABCDEF",
        "to_number": "+447700900000",
        "body": "Hello from Vonage, ça va? 👋",
        "segments": 1,
        "report_url": REPORT_URL,
        "validity": 1800.0,
    }
    return Submission(**{**values, **overrides})


def answer(body: Any) -> bytes:
    return json.dumps(body).encode()


def signed(body: bytes, *, secret: str = SECRET, now: float = NOW, **claims: Any) -> IncomingReport:
    """A status webhook signed by PyJWT (the library vonage-jwt verifies with)."""
    payload = {
        **SAMPLE_CLAIMS,
        "iat": int(now),
        "payload_hash": hashlib.sha256(body).hexdigest(),
        **claims,
    }
    token = jwt.encode(payload, secret, algorithm="HS256")
    return IncomingReport(
        REPORT_URL, {"Authorization": f"Bearer {token}"}, body, "application/json"
    )


# -- request ---------------------------------------------------------------------------------


def test_the_request_is_the_documented_sms_message() -> None:
    req = VONAGE.request(submission())
    assert (req.method, req.url) == ("POST", "https://api.nexmo.com/v1/messages")
    assert req.headers["Content-Type"] == req.headers["Accept"] == "application/json"
    # OutboundSMSText + channelOptionsSms + outboundMessageCommon.
    assert json.loads(req.body) == {
        "message_type": "text",
        "channel": "sms",
        "to": "447700900000",
        "from": "447700900001",
        "text": "Hello from Vonage, ça va? 👋",
        "client_ref": "01JABCDEF",
        "webhook_url": REPORT_URL,
        "webhook_version": "v1",
        "ttl": 1800,
    }


def test_the_application_jwt_is_what_vonage_documents_and_pyjwt_verifies() -> None:
    req = VONAGE.request(submission())
    scheme, _, token = req.headers["Authorization"].partition(" ")
    assert scheme == "Bearer"
    assert jwt.get_unverified_header(token) == {"alg": "RS256", "typ": "JWT"}
    claims = jwt.decode(
        token, KEY.public_key(), algorithms=["RS256"], options={"verify_exp": False}
    )
    assert claims == {
        "application_id": APP_ID,
        "iat": int(NOW),
        "jti": "jti-1",
        "exp": int(NOW) + 900,
    }


def test_our_jwt_carries_the_claims_the_official_generator_sets() -> None:
    sdk = JwtClient(APP_ID, PEM).generate_application_jwt({"iat": int(NOW), "jti": "jti-1"})
    theirs = jwt.decode(sdk, KEY.public_key(), algorithms=["RS256"], options={"verify_exp": False})
    ours = jwt.decode(
        application_jwt(APP_ID, KEY, NOW, "jti-1"),
        KEY.public_key(),
        algorithms=["RS256"],
        options={"verify_exp": False},
    )
    assert ours == theirs
    assert jwt.get_unverified_header(sdk.decode()) == {"alg": "RS256", "typ": "JWT"}


def test_every_request_gets_a_fresh_token() -> None:
    ids = iter(["a", "b"])
    vonage = Vonage(settings(), clock=lambda: NOW, token_id=lambda: next(ids))
    first, second = (vonage.request(submission()).headers["Authorization"] for _ in range(2))
    assert first != second


def test_basic_authentication_and_a_custom_url() -> None:
    req = basic_kind(url="http://127.0.0.1:9/simulator/vonage/").request(submission(validity=None))
    assert req.url == "http://127.0.0.1:9/simulator/vonage/v1/messages"
    assert req.headers["Authorization"] == "Basic " + base64.b64encode(
        f"{API_KEY}:s3cr3t".encode()
    ).decode("ascii")
    assert "ttl" not in json.loads(req.body)


def test_an_alphanumeric_sender_is_sent_as_is() -> None:
    assert json.loads(kind(from_="Dispatchd").request(submission()).body)["from"] == "Dispatchd"
    assert json.loads(kind(from_="+15551234567").request(submission()).body)["from"] == (
        "15551234567"
    )


@pytest.mark.parametrize(
    ("number", "wire"),
    [("+447700900000", "447700900000"), ("447700900000", "447700900000"), ("Vonage", "Vonage")],
)
def test_wire_number(number: str, wire: str) -> None:
    assert wire_number(number) == wire


@pytest.mark.parametrize(
    ("seconds", "sent"),
    [(0.0, 20), (19.9, 20), (59.9, 59), (1800.0, 1800), (604_800.0, 604_800), (1e9, 604_800)],
)
def test_ttl_is_whole_seconds_within_the_documented_range(seconds: float, sent: int) -> None:
    # channelOptionsSms.ttl: minimum 20, maximum 604800.
    assert sms_ttl(seconds) == sent
    assert sms_ttl(float("inf")) == 604_800


def test_a_long_message_id_is_cut_to_the_client_ref_limit() -> None:
    body = json.loads(VONAGE.request(submission(message_id="x" * 150)).body)
    assert body["client_ref"] == "x" * 100


# -- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"from_": ""}, "from"),
        ({"signature_secret": ""}, "signature_secret"),
        ({"private_key": None}, "private_key"),
        ({"application_id": None}, "application_id"),
        ({"application_id": None, "private_key": None}, "application_id"),
        ({"api_key": API_KEY, "api_secret": "x"}, "api_key"),
        ({"application_id": None, "private_key": None, "api_key": API_KEY}, "api_secret"),
        ({"application_id": None, "private_key": None, "api_secret": "x"}, "api_key"),
        (
            {"private_key": "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----"},
            "private_key",
        ),
    ],
)
def test_bad_settings_name_the_key(overrides: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=f"^{key}:"):
        settings(**overrides)


def test_a_non_rsa_key_is_refused() -> None:
    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ValueError, match=r"^private_key: .*RSA"):
        settings(private_key=other.decode())


def test_secrets_stay_out_of_repr_and_a_stripped_pem_loads() -> None:
    text = repr(settings(private_key=PEM.strip()))
    assert SECRET not in text
    assert "PRIVATE KEY" not in text
    assert "s3cr3t" not in repr(BASIC._settings)


# -- classify --------------------------------------------------------------------------------


def test_a_202_is_accepted_with_its_message_uuid() -> None:
    assert VONAGE.classify(202, {}, answer(SEND_MESSAGE)) == Accepted(
        "d8f86df1-dec6-442f-870a-2241be27d721", 202
    )


@pytest.mark.parametrize(
    "body", [b"", b'{"message_uuid": "d8f8', b"[]", answer({"message_uuid": 7})]
)
def test_a_2xx_without_a_readable_uuid_is_still_accepted(body: bytes) -> None:
    # Resending could deliver it twice; its reports reach the per-message URL anyway.
    assert VONAGE.classify(202, {}, body) == Accepted(None, 202)


def test_429_throttles_and_honours_retry_after() -> None:
    outcome = VONAGE.classify(429, {"retry-after": "15"}, answer(RATE_LIMIT))
    assert outcome == Throttled(
        "HTTP 429, Vonage rate-limit: Rate Limit Hit: Please wait, then retry your request",
        429,
        15.0,
    )
    bare = VONAGE.classify(429, {}, b"")
    assert isinstance(bare, Throttled)
    assert bare.retry_after is None


def test_the_invalid_recipient_answer_is_an_invalid_number() -> None:
    outcome = VONAGE.classify(422, {}, answer(INVALID_RECIPIENT))
    assert isinstance(outcome, InvalidNumber)
    assert outcome.http_status == 422
    assert "`to` parameter is invalid" in outcome.reason


def problem(code: str, title: str = "Some title") -> bytes:
    return answer(
        {
            "type": f"https://developer.vonage.com/api-errors/messages#{code}",
            "title": title,
            "detail": f"error {code}",
            "instance": "bf0ca0bf927b3b52e3cb03217e1a1ddf",
        }
    )


@pytest.mark.parametrize(
    ("status", "body", "outcome"),
    [
        (401, answer(UNAUTHORIZED), Unavailable),
        (402, answer(LOW_BALANCE), Unavailable),
        (403, answer(FORBIDDEN), Unavailable),
        (404, answer(NOT_FOUND), Unavailable),
        (422, answer(INVALID_PARAMS), Rejected),
        (422, answer(INVALID_SENDER), Rejected),
        (422, problem("1430", "Invalid recipient"), InvalidNumber),
        (422, problem("1170"), InvalidNumber),
        (422, problem("1000", "Throttled"), Throttled),
        (422, problem("1460"), Unavailable),  # the 10DLC daily cap: every message alike
        (422, problem("1240"), Rejected),  # STOP: not an invalid number
        (422, problem("1050"), Rejected),  # barred at Vonage: not an invalid number
        (422, problem("9999"), Rejected),  # an undocumented 4xx is permanent
        (400, b"<html>bad request</html>", Rejected),
        (408, b"", Unavailable),
        (500, problem("1030", "Internal error"), Unavailable),
        (502, b"<html>Bad Gateway</html>", Unavailable),
        (503, problem("1430", "Invalid recipient"), Unavailable),  # a 5xx is never the number
    ],
)
def test_classify(status: int, body: bytes, outcome: type) -> None:
    assert isinstance(VONAGE.classify(status, {}, body), outcome)


def test_the_code_is_kept_on_a_rejection() -> None:
    outcome = VONAGE.classify(422, {}, answer(INVALID_PARAMS))
    assert isinstance(outcome, Rejected)
    assert outcome.code == "1150"
    assert outcome.reason.startswith("HTTP 422, Vonage 1150: Invalid params")


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
        # Either spelling: `.../api-errors/messages#1430` or `.../api-errors#low-balance`.
        assert isinstance(VONAGE.classify(422, {}, problem(code)), outcome), code


def test_the_tables_do_not_overlap_and_invalid_is_conservative() -> None:
    tables = [INVALID_NUMBER_CODES, THROTTLE_CODES, UNAVAILABLE_CODES, REJECTED_CODES]
    seen: set[str] = set()
    for table in tables:
        assert not seen & table.keys()
        seen |= table.keys()
    assert not INVALID_NUMBER_CODES.keys() & NOT_INVALID_CODES.keys()
    for code in ("1040", "1050", "1240", "1300", "1330"):
        assert code not in INVALID_NUMBER_CODES


# -- parse -----------------------------------------------------------------------------------


def parse(data: dict[str, Any]) -> list[Report]:
    return VONAGE.parse(IncomingReport(REPORT_URL, {}, answer(data), "application/json"))


def test_the_documented_submitted_webhook_is_intermediate() -> None:
    assert parse(STATUS) == [Report(MESSAGE_UUID, None, "submitted", None)]


def error(code: str | int) -> dict[str, Any]:
    return {
        "type": f"https://developer.vonage.com/api-errors/messages#{code}",
        "title": code,
        "detail": "...",
        "instance": "bf0ca0bf927b3b52e3cb03217e1a1ddf",
    }


@pytest.mark.parametrize(
    ("status", "code", "mapped"),
    [
        ("delivered", None, Status.DELIVERED),
        ("read", None, Status.DELIVERED),
        ("rejected", "1330", Status.FAILED),
        ("rejected", "1220", Status.FAILED),
        ("rejected", "1240", Status.FAILED),  # STOP: the number is fine
        ("undeliverable", "1180", Status.FAILED),
        ("undeliverable", None, Status.FAILED),
        ("rejected", "1360", Status.FAILED),  # TTL expired
        ("rejected", "1170", Status.INVALID),
        ("undeliverable", "1190", Status.INVALID),
        ("rejected", "1430", Status.INVALID),
        ("submitted", None, None),
        ("something_new", None, None),  # Vonage adds statuses; record them, change nothing
        ("delivered", "1190", Status.DELIVERED),  # a code never turns delivered invalid
    ],
)
def test_the_status_mapping(status: str, code: str | None, mapped: Status | None) -> None:
    data: dict[str, Any] = {**STATUS, "status": status}
    if code:
        data["error"] = error(code)
    (report,) = parse(data)
    assert (report.status, report.raw_status, report.error_code) == (mapped, status, code)
    assert report_status(status, code) is mapped


def test_every_documented_status_is_mapped() -> None:
    # messageStatusBase.status, plus `read` of the OTT channels' schemas.
    assert set(REPORT_STATUSES) == {"submitted", "delivered", "rejected", "undeliverable", "read"}


def test_a_numeric_title_is_read_like_a_string_one() -> None:
    # The Java SDK's MessageStatusTest sends `"title": 1000`, unquoted.
    data = {**STATUS, "status": "rejected", "error": {**error(1190), "type": "about:blank"}}
    (report,) = parse(data)
    assert (report.error_code, report.status) == ("1190", Status.INVALID)


def test_a_status_webhook_without_content_type_is_read() -> None:
    (report,) = VONAGE.parse(IncomingReport(REPORT_URL, {}, answer(STATUS), ""))
    assert report.provider_message_id == MESSAGE_UUID


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (answer({"status": "delivered"}), "application/json"),
        (answer({"message_uuid": MESSAGE_UUID}), "application/json"),
        (answer({"message_uuid": "x" * 99, "status": "delivered"}), "application/json"),
        (answer({"message_uuid": MESSAGE_UUID, "status": 3}), "application/json"),
        (answer([STATUS]), "application/json"),
        (b'{"message_uuid": "a", "status": "deliv', "application/json"),
        (b"\xff\xfe", "application/json"),
        (answer(STATUS), "application/x-www-form-urlencoded"),
        # An inbound message is no status webhook.
        (answer({"message_uuid": MESSAGE_UUID, "text": "hi", "channel": "sms"}), ""),
    ],
)
def test_unreadable_reports(body: bytes, content_type: str) -> None:
    with pytest.raises(BadReport):
        VONAGE.parse(IncomingReport(REPORT_URL, {}, body, content_type))


# -- verify ----------------------------------------------------------------------------------


def test_a_webhook_signed_by_pyjwt_with_the_documented_claims_verifies() -> None:
    body = answer({**STATUS, "status": "delivered"})
    VONAGE.verify(signed(body), NOW)
    BASIC.verify(signed(body), NOW)


def test_our_signature_is_valid_for_vonage_jwt_and_pyjwt() -> None:
    body = answer(STATUS)
    token = webhook_jwt(SECRET, body, {**SAMPLE_CLAIMS, "iat": int(NOW)})
    assert verify_signature(token, SECRET) is True
    assert verify_signature(token, "f" * 32) is False
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_iat": False})
    assert claims["payload_hash"] == hashlib.sha256(body).hexdigest()
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}
    report = IncomingReport(REPORT_URL, {"authorization": f"bearer {token}"}, body, "")
    VONAGE.verify(report, NOW)


def test_the_sdk_refuses_what_we_refuse_for_another_secret() -> None:
    report = signed(answer(STATUS), secret="f" * 32)
    token = report.headers["Authorization"].split()[1]
    assert verify_signature(token, SECRET) is False
    with pytest.raises(ForgedReport, match="signature"):
        VONAGE.verify(report, NOW)


def hs256(claims: dict[str, Any]) -> str:
    """A correctly signed HS256 JWT with exactly these claims (PyJWT refuses some of them)."""
    signing_input = (
        b64url(b'{"alg":"HS256","typ":"JWT"}') + "." + b64url(json.dumps(claims).encode())
    )
    digest = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(digest)


def retoken(report: IncomingReport, token: str) -> IncomingReport:
    return IncomingReport(report.url, {"Authorization": f"Bearer {token}"}, report.body, "")


def token_of(report: IncomingReport) -> str:
    return report.headers["Authorization"].split()[1]


@pytest.mark.parametrize(
    "tamper",
    [
        lambda r: IncomingReport(r.url, r.headers, r.body.replace(b"submitted", b"delivered"), ""),
        lambda r: IncomingReport(r.url, r.headers, r.body + b" ", ""),
        lambda r: IncomingReport(r.url, {}, r.body, ""),
        lambda r: IncomingReport(r.url, {"Authorization": ""}, r.body, ""),
        lambda r: IncomingReport(r.url, {"Authorization": "Bearer"}, r.body, ""),
        lambda r: IncomingReport(r.url, {"Authorization": "Basic " + token_of(r)}, r.body, ""),
        lambda r: retoken(r, token_of(r) + "x"),
        lambda r: retoken(r, token_of(r).rsplit(".", 1)[0] + "."),
        lambda r: retoken(r, token_of(r).rsplit(".", 1)[0]),
        lambda r: retoken(r, "a.b.c"),
        lambda r: retoken(r, "é.é.é"),
        lambda r: retoken(r, "x" * 9000),
        # The claims swapped for others under the same signature.
        lambda r: retoken(
            r,
            ".".join(
                [
                    token_of(r).split(".")[0],
                    b64url(json.dumps({"iat": int(NOW), "payload_hash": "0" * 64}).encode()),
                    token_of(r).split(".")[2],
                ]
            ),
        ),
    ],
)
def test_tampered_reports_are_forged(tamper: Any) -> None:
    genuine = signed(answer(STATUS))
    VONAGE.verify(genuine, NOW)
    with pytest.raises(ForgedReport):
        VONAGE.verify(tamper(genuine), NOW)


def test_an_unsigned_alg_none_token_is_forged() -> None:
    body = answer(STATUS)
    claims = {"iat": int(NOW), "payload_hash": hashlib.sha256(body).hexdigest()}
    token = b64url(b'{"alg":"none","typ":"JWT"}') + "." + b64url(json.dumps(claims).encode()) + "."
    with pytest.raises(ForgedReport, match="alg"):
        VONAGE.verify(retoken(signed(body), token), NOW)


def test_an_rs256_token_is_not_taken_for_a_webhook_signature() -> None:
    body = answer(STATUS)
    claims = {"iat": int(NOW), "payload_hash": hashlib.sha256(body).hexdigest()}
    token = jwt.encode(claims, KEY, algorithm="RS256")
    with pytest.raises(ForgedReport, match="HS256"):
        VONAGE.verify(retoken(signed(body), token), NOW)


@pytest.mark.parametrize("skew", [SIGNATURE_TOLERANCE + 1, -(SIGNATURE_TOLERANCE + 1), 86_400])
def test_a_stale_or_future_iat_is_forged(skew: float) -> None:
    report = signed(answer(STATUS), now=NOW - skew)
    with pytest.raises(ForgedReport, match="stale"):
        VONAGE.verify(report, NOW)


@pytest.mark.parametrize("skew", [0, SIGNATURE_TOLERANCE, -SIGNATURE_TOLERANCE, 299.5])
def test_an_iat_within_the_tolerance_verifies(skew: float) -> None:
    VONAGE.verify(signed(answer(STATUS), now=NOW - skew), NOW)


@pytest.mark.parametrize(
    ("claims", "match"),
    [
        ({"payload_hash": None}, "payload_hash"),
        ({"payload_hash": ""}, "payload_hash"),
        ({"iat": None}, "iat"),
        ({"iat": "1738584865"}, "iat"),
        ({"iat": True}, "iat"),
        ({"exp": int(NOW) - SIGNATURE_TOLERANCE - 1}, "expired"),
        ({"nbf": int(NOW) + SIGNATURE_TOLERANCE + 1}, "not valid yet"),
        ({"iss": "Mallory"}, "issuer"),
        ({"application_id": "bbbbbbbb-bbbb-cccc-dddd-0123456789ab"}, "application_id"),
    ],
)
def test_bad_claims_are_forged(claims: dict[str, Any], match: str) -> None:
    body = answer(STATUS)
    payload = {**SAMPLE_CLAIMS, "iat": int(NOW), "payload_hash": hashlib.sha256(body).hexdigest()}
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    report = retoken(signed(body), hs256(payload))
    with pytest.raises(ForgedReport, match=match):
        VONAGE.verify(report, NOW)


def test_another_api_key_is_forged_only_when_ours_is_known() -> None:
    report = signed(answer(STATUS), api_key="zzzzzzz")
    VONAGE.verify(report, NOW)  # JWT settings know no api_key
    with pytest.raises(ForgedReport, match="api_key"):
        BASIC.verify(report, NOW)


def test_an_uppercase_payload_hash_is_still_the_same_digest() -> None:
    body = answer(STATUS)
    VONAGE.verify(signed(body, payload_hash=hashlib.sha256(body).hexdigest().upper()), NOW)
