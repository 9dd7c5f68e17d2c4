"""The simulator's Vonage dialect, driven by our vonage kind and checked with vonage-jwt."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import jwt  # PyJWT
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from vonage_jwt import JwtClient, verify_signature  # type: ignore[import-untyped]

from dispatchd.devtools.simulator_vonage import (
    CALLBACKS,
    VonageAccount,
    add_vonage_routes,
    public_key_pem,
)
from dispatchd.domain.models import Status
from dispatchd.providers.base import Accepted, InvalidNumber, Rejected, Unavailable
from dispatchd.providers.vonage import DEFAULT_URL, Vonage, VonageSettings, application_jwt
from tests.providers.simulator_helpers import (
    UUID4,
    Callback,
    Simulator,
    StartSimulator,
    assert_a_hung_request_is_left_unanswered,
    assert_a_malformed_answer_is_still_reported,
    assert_a_wrong_credential_is_a_401,
    assert_duplicate_and_contrary_reports,
    assert_faults_are_keyed_by_name,
    assert_no_reports,
    assert_refused_reports_are_retried,
    assert_the_final_report_can_come_first,
    assert_throttled,
    basic,
    bearer,
    final_reports_of_a_failed_and_an_invalid,
)


def pem_of(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PEM = pem_of(KEY)
APP_ID = "aaaaaaaa-bbbb-cccc-dddd-0123456789ab"
OTHER_APP = "bbbbbbbb-bbbb-cccc-dddd-0123456789ab"
API_KEY = "a1b2c3d4"
API_SECRET = "s3cr3t-basic"
SECRET = "0123456789abcdef0123456789abcdef"  # HS256 keys under 32 bytes make PyJWT warn
BASIC_SECRET = "fedcba9876543210fedcba9876543210"
SENDER = "447700900001"
NUMBER = "+447700900123"
INVALID = "+447700900000"  # the simulator's invalid_suffix
# Built once: loading an RSA private key validates it, which is slow.
JWT_SETTINGS = VonageSettings(
    from_=SENDER, signature_secret=SECRET, application_id=APP_ID, private_key=PEM
)


class VonageCallback(Callback):
    @property
    def status(self) -> str:
        status: str = self.data["status"]
        return status

    @property
    def provider_message_id(self) -> str:
        uuid_: str = self.data["message_uuid"]
        return uuid_

    @property
    def token(self) -> str:
        scheme, _, token = self.headers["Authorization"].partition(" ")
        assert scheme == "Bearer"
        return token


class Sim(Simulator[Vonage, VonageCallback]):
    name = "vonage"
    pending = CALLBACKS
    callback_type = VonageCallback
    number = NUMBER
    message_id = "01JABCDEF"
    report_paths = ("/report", "/status")
    report_query = "message=01JABCDEF&token=abc123"

    @property
    def status_url(self) -> str:
        """The Basic account's own webhook URL, for messages that name none."""
        return str(self.reports.make_url("/status"))

    def mount(self) -> None:
        accounts = {
            APP_ID: VonageAccount(SECRET, public_key=public_key_pem(PEM), api_key="a1b2c3d"),
            API_KEY: VonageAccount(BASIC_SECRET, api_secret=API_SECRET, status_url=self.status_url),
        }
        add_vonage_routes(self.app, self.state, accounts)

    def kind(self, settings: VonageSettings | None = None, **overrides: Any) -> Vonage:
        """A vonage kind with JWT_SETTINGS, `settings`, or Basic settings with `overrides`."""
        if settings is None and overrides:
            values: dict[str, Any] = {
                "from_": SENDER,
                "signature_secret": BASIC_SECRET,
                "api_key": API_KEY,
                "api_secret": API_SECRET,
                "url": f"{self.base}/vonage",
            }
            settings = VonageSettings(**{**values, **overrides})
        return Vonage(settings or JWT_SETTINGS)

    def local(self, url: str) -> str:
        """`url` on the simulator (JWT_SETTINGS keep the public default, parsed once)."""
        return url.replace(DEFAULT_URL, f"{self.base}/vonage")

    async def post(self, fields: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
        resp = await self.client.post(
            "/vonage/v1/messages",
            data=json.dumps(fields),
            headers={
                "Content-Type": "application/json",
                **(basic(API_KEY, API_SECRET) if headers is None else headers),
            },
        )
        return resp.status, await resp.json(content_type=None), resp


def message(**overrides: Any) -> dict[str, Any]:
    values = {
        "message_type": "text",
        "channel": "sms",
        "to": NUMBER[1:],
        "from": SENDER,
        "text": "hi",
    }
    return {**values, **overrides}


SimFactory = Callable[..., Awaitable[Sim]]


@pytest.fixture
def sim(simulator: StartSimulator) -> SimFactory:
    return lambda **settings: simulator(Sim, **settings)


# -- the happy path ---------------------------------------------------------------------------


async def test_accepts_and_reports_in_vonages_format_signed(sim: SimFactory) -> None:
    s = await sim()
    outcome, resp = await s.send(validity=1800.0)
    assert resp.status == 202
    assert isinstance(outcome, Accepted)
    uuid_ = outcome.provider_message_id
    assert uuid_ is not None
    assert UUID4.fullmatch(uuid_)

    callbacks = await s.settled(2)
    assert s.receiver.statuses() == ["submitted", "delivered"]
    vonage = s.kind()
    for callback in callbacks:
        assert callback.url == s.receiver.url
        assert callback.content_type == "application/json"
        data = callback.data
        assert (data["message_uuid"], data["to"], data["from"]) == (uuid_, NUMBER[1:], SENDER)
        assert (data["channel"], data["client_ref"]) == ("sms", "01JABCDEF")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", data["timestamp"])
        assert "error" not in data
        # The official verifier and PyJWT accept the signature; the claims are Vonage's.
        assert verify_signature(callback.token, SECRET) is True
        claims = jwt.decode(callback.token, SECRET, algorithms=["HS256"])
        assert claims["payload_hash"] == hashlib.sha256(callback.body).hexdigest()
        assert (claims["iss"], claims["api_key"], claims["application_id"]) == (
            "Vonage",
            "a1b2c3d",
            APP_ID,
        )
        assert claims["jti"]
        vonage.verify(callback.incoming(), time.time())
    reports = [vonage.parse(c.incoming())[0] for c in callbacks]
    assert [(r.provider_message_id, r.status, r.raw_status) for r in reports] == [
        (uuid_, None, "submitted"),
        (uuid_, Status.DELIVERED, "delivered"),
    ]
    assert callbacks[1].data["sms"] == {"count_total": "1"}
    stats = s.state.stats.providers["vonage"]
    assert (stats.requests, stats.accepted) == (1, 1)


async def test_failures_and_invalid_numbers_use_vonages_codes(sim: SimFactory) -> None:
    s = await sim(delivered=0.0, failed=1.0)
    assert await final_reports_of_a_failed_and_an_invalid(s, INVALID, "submitted") == [
        ("rejected", "1330", Status.FAILED),
        ("undeliverable", "1190", Status.INVALID),
    ]
    errors = [c.data["error"] for c in s.receiver.callbacks if "error" in c.data]
    assert {e["type"].rpartition("#")[2] for e in errors} == {e["title"] for e in errors}


async def test_basic_auth_reports_are_signed_with_that_accounts_secret(sim: SimFactory) -> None:
    s = await sim()
    vonage = s.kind(from_=SENDER)
    outcome, _ = await s.send(vonage)
    assert isinstance(outcome, Accepted)
    for callback in await s.settled(2):
        assert verify_signature(callback.token, BASIC_SECRET) is True
        claims = jwt.decode(callback.token, BASIC_SECRET, algorithms=["HS256"])
        assert claims["api_key"] == API_KEY
        assert "application_id" not in claims
        vonage.verify(callback.incoming(), time.time())


async def test_the_official_jwt_generator_is_let_in(sim: SimFactory) -> None:
    s = await sim()
    token = JwtClient(APP_ID, PEM).generate_application_jwt()
    status, body, _ = await s.post(message(webhook_url=s.receiver.url), bearer(token))
    assert status == 202, body
    assert set(body) == {"message_uuid"}
    assert [c.data["status"] for c in await s.settled(2)] == ["submitted", "delivered"]


async def test_without_webhook_url_reports_go_to_the_accounts_status_url(sim: SimFactory) -> None:
    s = await sim()
    status, body, _ = await s.post(message(client_ref="ref-1"))
    assert status == 202
    callbacks = await s.settled(2)
    assert {c.url for c in callbacks} == {s.status_url}
    assert {c.data["message_uuid"] for c in callbacks} == {body["message_uuid"]}
    assert {c.data["client_ref"] for c in callbacks} == {"ref-1"}


async def test_no_url_anywhere_no_reports(sim: SimFactory) -> None:
    s = await sim()
    status, body, _ = await s.post(
        message(), bearer(application_jwt(APP_ID, KEY, time.time(), "j"))
    )
    assert status == 202
    assert body["message_uuid"]
    assert_no_reports(s)


# -- authentication and validation ------------------------------------------------------------


def _expired() -> str:
    return application_jwt(APP_ID, KEY, time.time() - 3600, "j")


def _claims_token(claims: dict[str, Any], key: rsa.RSAPrivateKey = KEY) -> str:
    return jwt.encode(claims, key, algorithm="RS256")


@pytest.mark.parametrize(
    "auth",
    [
        {},
        basic(API_KEY, "wrong"),
        basic("nobody", API_SECRET),
        basic(APP_ID, "anything"),  # an application is no Basic login
        {"Authorization": "Basic !!!"},
        {"Authorization": "Bearer not.a.jwt"},
        {"Authorization": "Token " + API_SECRET},
        bearer(application_jwt(APP_ID, OTHER_KEY, time.time(), "j")),
        bearer(application_jwt(OTHER_APP, KEY, time.time(), "j")),
        bearer(_expired()),
        bearer(_claims_token({"application_id": APP_ID, "iat": int(time.time())})),  # no jti
        bearer(
            _claims_token(
                {
                    "application_id": APP_ID,
                    "iat": int(time.time()),
                    "jti": "j",
                    "exp": int(time.time()) + 2 * 86_400,  # over the 24 h maximum
                }
            )
        ),
        bearer(
            jwt.encode(
                {"application_id": APP_ID, "iat": int(time.time()), "jti": "j"},
                SECRET,
                algorithm="HS256",
            )
        ),
    ],
)
async def test_a_bad_login_is_vonages_401(sim: SimFactory, auth: dict[str, str]) -> None:
    s = await sim()
    status, body, resp = await s.post(message(webhook_url=s.receiver.url), auth)
    assert status == 401
    assert resp.content_type == "application/problem+json"
    assert body["type"].endswith("#unauthorized")
    assert (body["title"], body["detail"]) == (
        "Unauthorized",
        "You did not provide correct credentials.",
    )
    assert body["instance"]
    outcome = s.kind().classify(status, resp.headers, json.dumps(body).encode())
    assert isinstance(outcome, Unavailable)
    assert s.receiver.callbacks == []
    assert s.state.stats.providers["vonage"].bad_requests == 1


async def test_a_wrong_private_key_through_the_kind(sim: SimFactory) -> None:
    s = await sim()
    wrong = VonageSettings(
        from_=SENDER, signature_secret=SECRET, application_id=APP_ID, private_key=pem_of(OTHER_KEY)
    )
    await assert_a_wrong_credential_is_a_401(s, s.kind(wrong))


@pytest.mark.parametrize(
    ("fields", "code", "outcome"),
    [
        (message(channel="whatsapp"), "1400", Unavailable),
        (message(message_type="image"), "1440", Unavailable),
        (message(to="+447700900000"), "1430", InvalidNumber),
        (message(to="12345"), "1430", InvalidNumber),
        (message(to=None), "1430", InvalidNumber),
        (message(**{"from": "not a sender!"}), "1420", Rejected),
        (message(text=""), "1150", Rejected),
        (message(text="x" * 3201), "1150", Rejected),
        (message(ttl=5), "1150", Rejected),
        (message(ttl="600"), "1150", Rejected),
        (message(client_ref="x" * 101), "1450", Rejected),
        (message(webhook_url="ftp://example.com/x"), "1150", Rejected),
        (message(webhook_version="v2"), "1150", Rejected),
    ],
)
async def test_bad_requests_get_vonages_422(
    sim: SimFactory, fields: dict[str, Any], code: str, outcome: type
) -> None:
    s = await sim()
    fields = {k: v for k, v in fields.items() if v is not None}
    status, body, resp = await s.post(fields)
    assert status == 422
    assert resp.content_type == "application/problem+json"
    assert body["type"] == f"https://developer.vonage.com/api-errors/messages#{code}"
    assert body["title"] and body["detail"] and body["instance"]
    if code == "1150":
        (param,) = body["invalid_parameters"]
        assert param["name"] in {"text", "ttl", "webhook_url", "webhook_version"}
    classified = s.kind().classify(status, {}, json.dumps(body).encode())
    assert isinstance(classified, outcome)
    assert s.state.stats.providers["vonage"].bad_requests == 1


@pytest.mark.parametrize("raw", [b"{not json", b"[]"])
async def test_a_body_that_is_no_json_object_is_invalid_json(sim: SimFactory, raw: bytes) -> None:
    s = await sim()
    resp = await s.client.post("/vonage/v1/messages", data=raw, headers=basic(API_KEY, API_SECRET))
    assert resp.status == 422
    body = await resp.json(content_type=None)
    assert body["type"] == "https://developer.vonage.com/api-errors#invalid-json"
    assert isinstance(s.kind().classify(422, {}, json.dumps(body).encode()), Rejected)


async def test_alphanumeric_and_short_code_senders_are_accepted(sim: SimFactory) -> None:
    s = await sim()
    for sender in ("Dispatchd", "12345"):
        status, body, _ = await s.post(message(**{"from": sender}))
        assert status == 202, body


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({}, "public_key"),
        ({"public_key": "x", "api_secret": "y"}, "public_key"),
        (
            {"public_key": "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----"},
            "public_key",
        ),
        ({"api_secret": "y", "signature_secret": ""}, "signature_secret"),
    ],
)
def test_a_bad_account_is_refused(values: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=f"^{match}:"):
        VonageAccount(**{"signature_secret": SECRET, **values})


def test_accounts_keep_their_secrets_out_of_repr() -> None:
    text = repr(VonageAccount(SECRET, api_secret=API_SECRET))
    assert SECRET not in text
    assert API_SECRET not in text


# -- fault injection --------------------------------------------------------------------------


async def test_throttle_rate_answers_429_with_retry_after(sim: SimFactory) -> None:
    s = await sim()
    s.state.set_faults("vonage", {"throttle_rate": 1.0}, replace=True)
    outcome, resp = await assert_throttled(s)
    assert resp.headers["Retry-After"] == "1"
    assert (await resp.json(content_type=None))["title"] == "Rate Limit Hit"
    assert outcome.retry_after == 1.0


async def test_faults_are_keyed_by_vonage(sim: SimFactory) -> None:
    failed = await assert_faults_are_keyed_by_name(await sim())
    assert (await failed.json(content_type=None))["type"].endswith("#1030")


async def test_a_hung_request_is_left_unanswered(sim: SimFactory) -> None:
    await assert_a_hung_request_is_left_unanswered(await sim(hang_rate=1.0))


async def test_a_malformed_answer_is_accepted_and_still_reported(sim: SimFactory) -> None:
    await assert_a_malformed_answer_is_still_reported(
        await sim(malformed_rate=1.0), 202, ["submitted", "delivered"]
    )


async def test_the_final_report_can_come_before_the_answer(sim: SimFactory) -> None:
    # The final report is taken before the 202 comes back.
    await assert_the_final_report_can_come_first(
        await sim(early_callback_rate=1.0), ["submitted", "delivered"]
    )


async def test_duplicate_and_contrary_reports(sim: SimFactory) -> None:
    await assert_duplicate_and_contrary_reports(
        await sim(duplicate_callback_rate=1.0, out_of_order_rate=1.0),
        ["submitted", "rejected", "delivered", "delivered"],
    )


async def test_reports_are_retried_and_signed_afresh(sim: SimFactory) -> None:
    s = await sim(callback_retry_for=5.0)
    await assert_refused_reports_are_retried(s, [503, 503], ["submitted", "delivered"])
    # Each try carries its own token (a new jti), so a retry is never a replay.
    first_three = [c.headers.get("Authorization", "") for c in s.receiver.tries[:3]]
    assert len(set(first_three)) == 3
