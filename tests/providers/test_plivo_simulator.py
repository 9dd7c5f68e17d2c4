"""The simulator's Plivo dialect, driven by our plivo kind and by the official SDK."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

import plivo  # type: ignore[import-untyped]
import plivo.rest.client  # type: ignore[import-untyped]
import pytest
from plivo.exceptions import (  # type: ignore[import-untyped]
    AuthenticationError,
    ValidationError,
)
from plivo.utils import validate_signature  # type: ignore[import-untyped]

from dispatchd.devtools.simulator_plivo import CALLBACKS, add_plivo_routes
from dispatchd.domain.models import Status
from dispatchd.providers.base import Accepted, InvalidNumber, Rejected, Unavailable
from dispatchd.providers.plivo import Plivo, PlivoSettings
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
    final_reports_of_a_failed_and_an_invalid,
)

AUTH_ID = "MAXXXXXXXXXXXXXXXXXX"
TOKEN = "secret-token"
OTHER_ID = "SAYYYYYYYYYYYYYYYYYY"
SENDER = "14155550100"
NUMBER = "+14155552671"
INVALID = "+14155550000"  # the simulator's invalid_suffix


class PlivoCallback(Callback):
    @property
    def status(self) -> str:
        return self.params["Status"]

    @property
    def provider_message_id(self) -> str:
        return self.params["MessageUUID"]

    def sdk_validates(self, token: str = TOKEN) -> bool:
        return bool(
            validate_signature(
                self.url,
                self.headers["X-Plivo-Signature-V2-Nonce"],
                self.headers["X-Plivo-Signature-V2"],
                token,
            )
        )


class Sim(Simulator[Plivo, PlivoCallback]):
    name = "plivo"
    pending = CALLBACKS
    callback_type = PlivoCallback
    number = NUMBER
    message_id = "01J"
    answer = 204
    report_method = "*"  # Plivo calls back with the message's `method`: POST or GET
    report_paths = ("/providers/plivo/reports",)
    report_query = "message=01J&token=abc"

    def mount(self) -> None:
        add_plivo_routes(self.app, self.state, {AUTH_ID: TOKEN, OTHER_ID: "other-token"})

    def kind(self, **overrides: Any) -> Plivo:
        values: dict[str, Any] = {
            "auth_id": AUTH_ID,
            "auth_token": TOKEN,
            "from_": SENDER,
            "url": f"{self.base}/plivo",
        }
        return Plivo(PlivoSettings(**{**values, **overrides}))

    async def post(self, fields: dict[str, Any], auth_id: str = AUTH_ID) -> tuple[int, Any]:
        resp = await self.client.post(
            f"/plivo/v1/Account/{auth_id}/Message/",
            data=json.dumps(fields),
            headers={**basic(AUTH_ID, TOKEN), "Content-Type": "application/json"},
        )
        return resp.status, await resp.json()


SimFactory = Callable[..., Awaitable[Sim]]


@pytest.fixture
def sim(simulator: StartSimulator) -> SimFactory:
    return lambda **settings: simulator(Sim, **settings)


# -- the happy path ---------------------------------------------------------------------------


async def test_accepts_and_reports_in_plivos_format_signed(sim: SimFactory) -> None:
    s = await sim()
    outcome, resp = await s.send(validity=30.0)
    assert resp.status == 202
    assert isinstance(outcome, Accepted)
    assert outcome.provider_message_id is not None
    assert UUID4.fullmatch(outcome.provider_message_id)
    answer = await resp.json()
    assert answer["message"] == "message(s) queued"
    assert answer["message_uuid"] == [outcome.provider_message_id]
    assert UUID4.fullmatch(answer["api_id"])

    callbacks = await s.settled(2)
    assert s.receiver.statuses() == ["sent", "delivered"]
    kind = s.kind()
    for sequence, callback in enumerate(callbacks, start=1):
        assert callback.method == "POST"
        assert callback.url == s.receiver.url
        assert callback.content_type == "application/x-www-form-urlencoded"
        params = callback.params
        assert params["MessageUUID"] == params["ParentMessageUUID"]
        assert params["MessageUUID"] == outcome.provider_message_id
        assert (params["To"], params["From"], params["Type"]) == (NUMBER[1:], SENDER, "sms")
        assert (params["Units"], params["Sequence"]) == ("1", str(sequence))
        assert re.fullmatch(r"[0-9]{20}", callback.headers["X-Plivo-Signature-V2-Nonce"])
        assert callback.sdk_validates()
        assert not callback.sdk_validates("other-token")
        assert (
            callback.headers["X-Plivo-Signature-Ma-V2"] == callback.headers["X-Plivo-Signature-V2"]
        )
        kind.verify(callback.incoming(), now=0.0)
    assert "ErrorCode" not in callbacks[0].params
    assert callbacks[1].params["ErrorCode"] == "000"
    reports = [kind.parse(c.incoming())[0] for c in callbacks]
    assert [(r.status, r.raw_status) for r in reports] == [
        (None, "sent"),
        (Status.DELIVERED, "delivered"),
    ]
    # Every callback has its own nonce.
    nonces = {c.headers["X-Plivo-Signature-V2-Nonce"] for c in callbacks}
    assert len(nonces) == 2
    stats = s.state.stats.providers["plivo"]
    assert (stats.requests, stats.accepted) == (1, 1)


async def test_failures_and_invalid_numbers_use_plivos_codes(sim: SimFactory) -> None:
    s = await sim(delivered=0.0, failed=1.0)
    assert await final_reports_of_a_failed_and_an_invalid(s, INVALID, "sent") == [
        ("undelivered", "50", Status.INVALID),
        ("undelivered", "80", Status.FAILED),
    ]


async def test_a_long_text_is_billed_in_units(sim: SimFactory) -> None:
    s = await sim()
    await s.send(body="x" * 161)
    callbacks = await s.settled(2)
    assert {c.params["Units"] for c in callbacks} == {"2"}
    assert callbacks[0].params["TotalAmount"] == "0.01000"


async def test_no_url_no_reports(sim: SimFactory) -> None:
    s = await sim()
    status, body = await s.post({"src": SENDER, "dst": NUMBER[1:], "text": "hi"})
    assert status == 202
    assert len(body["message_uuid"]) == 1
    assert_no_reports(s)


async def test_method_get_sends_the_fields_in_the_query(sim: SimFactory) -> None:
    s = await sim()
    status, body = await s.post(
        {"src": SENDER, "dst": NUMBER, "text": "hi", "url": s.receiver.url, "method": "GET"}
    )
    assert status == 202
    callbacks = await s.settled(2)
    assert {c.method for c in callbacks} == {"GET"}
    assert [c.params["Status"] for c in callbacks] == ["sent", "delivered"]
    assert callbacks[1].params["MessageUUID"] == body["message_uuid"][0]
    # Added to the query dispatchd gave, not in place of it: the token is still there.
    assert {c.params["token"] for c in callbacks} == {"abc"}
    # The query grew, the signed base URL did not.
    assert all(c.sdk_validates() for c in callbacks)


# -- authentication and validation ------------------------------------------------------------


async def test_no_credentials_is_plivos_401_without_api_id(sim: SimFactory) -> None:
    s = await sim()
    resp = await s.client.post(f"/plivo/v1/Account/{AUTH_ID}/Message/", data=b"{}", headers={})
    assert resp.status == 401
    assert await resp.json() == {"error": "authentication credentials were not provided"}


@pytest.mark.parametrize(
    "auth",
    [
        basic(AUTH_ID, "wrong"),
        basic("MAZZZZZZZZZZZZZZZZZZ", TOKEN),
        basic(OTHER_ID, "other-token"),  # a real account, but not this path's
        {"Authorization": "Basic !!!"},
        {"Authorization": f"Bearer {TOKEN}"},
        {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
    ],
)
async def test_a_bad_login_is_plivos_401(sim: SimFactory, auth: dict[str, str]) -> None:
    s = await sim()
    resp = await s.client.post(
        f"/plivo/v1/Account/{AUTH_ID}/Message/",
        data=json.dumps({"src": SENDER, "dst": NUMBER, "text": "hi"}),
        headers=auth,
    )
    assert resp.status == 401
    body = await resp.json()
    assert "error" in body
    outcome = s.kind().classify(resp.status, resp.headers, await resp.read())
    assert isinstance(outcome, Unavailable)
    assert s.state.stats.providers["plivo"].accepted == 0


async def test_a_wrong_token_through_the_kind(sim: SimFactory) -> None:
    s = await sim()
    await assert_a_wrong_credential_is_a_401(s, s.kind(auth_token="nope"))


@pytest.mark.parametrize(
    ("fields", "outcome"),
    [
        ({"dst": NUMBER, "text": "hi"}, Rejected),
        ({"src": SENDER, "text": "hi"}, Rejected),
        ({"src": SENDER, "dst": "1", "text": "hi"}, InvalidNumber),
        ({"src": SENDER, "dst": "+1 415 555 abc", "text": "hi"}, Rejected),
        ({"src": SENDER, "dst": "1234567890123456", "text": "hi"}, InvalidNumber),
        ({"src": SENDER, "dst": "14155552671<14155552672", "text": "hi"}, Rejected),
        ({"src": SENDER, "dst": NUMBER}, Rejected),
        ({"src": SENDER, "dst": NUMBER, "text": "   "}, Rejected),
        ({"src": SENDER, "dst": NUMBER, "text": "x" * 1601}, Rejected),
        ({"src": SENDER, "dst": NUMBER, "text": "hi", "url": "ftp://x"}, Rejected),
        ({"src": SENDER, "dst": NUMBER, "text": "hi", "method": "PUT"}, Rejected),
        ({"src": SENDER, "dst": NUMBER, "text": "hi", "message_expiry": 4}, Rejected),
        ({"src": SENDER, "dst": NUMBER, "text": "hi", "message_expiry": 10_800}, Rejected),
        ({"src": SENDER, "dst": NUMBER, "text": "hi", "message_expiry": "60"}, Rejected),
        ({"src": SENDER, "dst": NUMBER, "text": "hi", "message_expiry": True}, Rejected),
    ],
)
async def test_bad_requests_get_plivos_400(
    sim: SimFactory, fields: dict[str, Any], outcome: type
) -> None:
    s = await sim()
    status, body = await s.post(fields)
    assert status == 400
    assert set(body) == {"api_id", "error"}
    classified = s.kind().classify(400, {}, json.dumps(body).encode())
    assert isinstance(classified, outcome), body
    assert s.state.stats.providers["plivo"].bad_requests == 1


async def test_a_body_that_is_not_json_is_a_400(sim: SimFactory) -> None:
    s = await sim()
    for raw in (b"not json", b"[1, 2]"):
        resp = await s.client.post(
            f"/plivo/v1/Account/{AUTH_ID}/Message/", data=raw, headers=basic(AUTH_ID, TOKEN)
        )
        assert resp.status == 400
        assert isinstance(s.kind().classify(400, {}, await resp.read()), Rejected)


async def test_an_invalid_destination_through_the_kind(sim: SimFactory) -> None:
    s = await sim()
    outcome, resp = await s.send(to="+1")
    assert resp.status == 400
    assert (await resp.json())["error"] == "1 is not a valid phone number"
    assert isinstance(outcome, InvalidNumber)


async def test_a_powerpack_sends_without_src(sim: SimFactory) -> None:
    s = await sim()
    status, _ = await s.post(
        {"powerpack_uuid": "d35f2e82", "dst": NUMBER, "text": "hi", "url": s.receiver.url}
    )
    assert status == 202
    callbacks = await s.settled(2)
    assert callbacks[0].params["From"] == "14155550100"


# -- fault injection --------------------------------------------------------------------------


async def test_throttle_rate_answers_429(sim: SimFactory) -> None:
    s = await sim()
    s.state.set_faults("plivo", {"throttle_rate": 1.0}, replace=False)
    _, resp = await assert_throttled(s)
    assert set(await resp.json()) == {"api_id", "error"}


async def test_faults_are_keyed_by_plivo(sim: SimFactory) -> None:
    await assert_faults_are_keyed_by_name(await sim())


async def test_a_hung_request_is_left_unanswered(sim: SimFactory) -> None:
    await assert_a_hung_request_is_left_unanswered(await sim(hang_rate=1.0))


async def test_a_malformed_answer_is_accepted_and_still_reported(sim: SimFactory) -> None:
    await assert_a_malformed_answer_is_still_reported(
        await sim(malformed_rate=1.0), 202, ["sent", "delivered"]
    )


async def test_the_final_report_can_come_before_the_answer(sim: SimFactory) -> None:
    # The final report is taken before the 202 comes back.
    callbacks = await assert_the_final_report_can_come_first(
        await sim(early_callback_rate=1.0), ["sent", "delivered"]
    )
    assert [c.params["Sequence"] for c in callbacks] == ["1", "2"]


async def test_duplicate_and_contrary_reports(sim: SimFactory) -> None:
    await assert_duplicate_and_contrary_reports(
        await sim(duplicate_callback_rate=1.0, out_of_order_rate=1.0),
        ["sent", "undelivered", "delivered", "delivered"],
    )


async def test_reports_are_retried_for_callback_retry_for(sim: SimFactory) -> None:
    await assert_refused_reports_are_retried(
        await sim(callback_retry_for=5.0), [503, 503], ["sent", "delivered"]
    )


# -- the official SDK against the simulator ---------------------------------------------------


async def test_the_official_sdk_sends_and_validates_against_the_simulator(
    sim: SimFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = await sim()
    # The SDK builds every URL from this module constant; point it at the simulator.
    monkeypatch.setattr(plivo.rest.client, "PLIVO_API_BASE_URI", f"{s.base}/plivo/v1/Account")

    def client(token: str) -> Any:
        sdk = plivo.RestClient(AUTH_ID, token)
        sdk.session.trust_env = False  # no proxy from the environment for a local server
        return sdk

    def send(sdk: Any, **kw: Any) -> Any:
        try:
            return sdk.messages.create(src=SENDER, text="from the SDK", **kw)
        finally:
            sdk.session.close()

    # The SDK is synchronous: it runs in a thread while the loop serves it.
    response = await asyncio.to_thread(
        send, client(TOKEN), dst=NUMBER[1:], url=s.receiver.url, message_expiry=120
    )
    assert response.message == "message(s) queued"
    (message_uuid,) = response.message_uuid
    assert UUID4.fullmatch(message_uuid)

    with pytest.raises(ValidationError, match="is not a valid phone number"):
        await asyncio.to_thread(send, client(TOKEN), dst="1")
    with pytest.raises(AuthenticationError):
        await asyncio.to_thread(send, client("wrong"), dst=NUMBER[1:])

    callbacks = await s.settled(2)
    for callback in callbacks:
        assert callback.params["MessageUUID"] == message_uuid
        assert callback.sdk_validates()
    assert s.receiver.statuses() == ["sent", "delivered"]
