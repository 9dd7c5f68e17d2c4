"""The simulator's Twilio dialect, driven by our twilio kind and by the official SDK."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from twilio.base.exceptions import TwilioRestException  # type: ignore[import-untyped]
from twilio.http.async_http_client import AsyncTwilioHttpClient  # type: ignore[import-untyped]
from twilio.request_validator import RequestValidator  # type: ignore[import-untyped]
from twilio.rest import Client  # type: ignore[import-untyped]

from dispatchd.devtools.simulator_twilio import CALLBACKS, add_twilio_routes
from dispatchd.domain.models import Status
from dispatchd.providers.base import Accepted, InvalidNumber, Rejected, Unavailable
from dispatchd.providers.twilio import Twilio, TwilioSettings
from tests.providers.simulator_helpers import (
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

SID = "AC" + "1" * 32
TOKEN = "secret-token"
OTHER_SID = "AC" + "2" * 32
SENDER = "+15017122661"
SERVICE = "MG" + "3" * 32
NUMBER = "+15558675310"
INVALID = "+15558670000"  # the simulator's invalid_suffix


class TwilioCallback(Callback):
    @property
    def status(self) -> str:
        return self.params["MessageStatus"]

    @property
    def provider_message_id(self) -> str:
        return self.params["MessageSid"]


class Sim(Simulator[Twilio, TwilioCallback]):
    name = "twilio"
    pending = CALLBACKS
    callback_type = TwilioCallback
    number = NUMBER
    message_id = "01J"
    answer = 204

    def mount(self) -> None:
        add_twilio_routes(self.app, self.state, {SID: TOKEN, OTHER_SID: "other-token"})

    def kind(self, **overrides: Any) -> Twilio:
        values: dict[str, Any] = {
            "account_sid": SID,
            "auth_token": TOKEN,
            "from_": SENDER,
            "url": f"{self.base}/twilio",
        }
        return Twilio(TwilioSettings(**{**values, **overrides}))

    async def post(self, fields: dict[str, str]) -> Any:
        resp = await self.client.post(
            f"/twilio/2010-04-01/Accounts/{SID}/Messages.json",
            data=fields,
            headers=basic(SID, TOKEN),
        )
        return resp.status, await resp.json()


SimFactory = Callable[..., Awaitable[Sim]]


@pytest.fixture
def sim(simulator: StartSimulator) -> SimFactory:
    return lambda **settings: simulator(Sim, **settings)


# -- the happy path ---------------------------------------------------------------------------


async def test_accepts_and_reports_in_twilios_format_signed(sim: SimFactory) -> None:
    s = await sim()
    outcome, resp = await s.send(validity=30.0)
    assert resp.status == 201
    assert isinstance(outcome, Accepted)
    assert outcome.provider_message_id is not None
    assert re.fullmatch(r"SM[0-9a-f]{32}", outcome.provider_message_id)
    resource = await resp.json()
    assert resource["status"] == "queued"
    assert (resource["to"], resource["from"], resource["account_sid"]) == (NUMBER, SENDER, SID)
    assert resource["num_segments"] == "1"

    callbacks = await s.settled(2)
    assert [c.params["MessageStatus"] for c in callbacks] == ["sent", "delivered"]
    twilio = s.kind()
    for callback in callbacks:
        assert callback.url == s.receiver.url
        assert callback.content_type == "application/x-www-form-urlencoded"
        params = callback.params
        assert params["MessageSid"] == params["SmsSid"] == outcome.provider_message_id
        assert (params["AccountSid"], params["To"], params["From"]) == (SID, NUMBER, SENDER)
        assert params["ApiVersion"] == "2010-04-01"
        assert "ErrorCode" not in params
        sig = callback.headers["X-Twilio-Signature"]
        assert RequestValidator(TOKEN).validate(callback.url, params, sig)
        twilio.verify(callback.incoming(), now=0.0)
    reports = [twilio.parse(c.incoming())[0] for c in callbacks]
    assert [(r.status, r.raw_status) for r in reports] == [
        (None, "sent"),
        (Status.DELIVERED, "delivered"),
    ]
    stats = s.state.stats.providers["twilio"]
    assert (stats.requests, stats.accepted) == (1, 1)


async def test_failures_and_invalid_numbers_use_twilios_codes(sim: SimFactory) -> None:
    s = await sim(delivered=0.0, failed=1.0)
    assert await final_reports_of_a_failed_and_an_invalid(s, INVALID, "sent") == [
        ("undelivered", "30003", Status.FAILED),
        ("undelivered", "30005", Status.INVALID),
    ]


async def test_a_messaging_service_message_starts_accepted(sim: SimFactory) -> None:
    s = await sim()
    outcome, resp = await s.send(s.kind(from_=None, messaging_service_sid=SERVICE))
    assert isinstance(outcome, Accepted)
    resource = await resp.json()
    assert (resource["status"], resource["from"]) == ("accepted", None)
    assert resource["messaging_service_sid"] == SERVICE
    callbacks = await s.settled(2)
    assert callbacks[0].params["MessagingServiceSid"] == SERVICE
    s.kind().verify(callbacks[0].incoming(), now=0.0)


async def test_no_status_callback_no_reports(sim: SimFactory) -> None:
    s = await sim()
    status, body = await s.post({"To": NUMBER, "From": SENDER, "Body": "hi"})
    assert status == 201
    assert body["sid"].startswith("SM")
    assert_no_reports(s)


# -- authentication and validation ------------------------------------------------------------


@pytest.mark.parametrize(
    "auth",
    [
        {},
        basic(SID, "wrong"),
        basic("AC" + "9" * 32, TOKEN),
        basic(OTHER_SID, "other-token"),  # a real account, but not this path's
        {"Authorization": "Basic !!!"},
        {"Authorization": f"Bearer {TOKEN}"},
    ],
)
async def test_a_bad_login_is_twilios_401(sim: SimFactory, auth: dict[str, str]) -> None:
    s = await sim()
    resp = await s.client.post(
        f"/twilio/2010-04-01/Accounts/{SID}/Messages.json",
        data={"To": NUMBER, "From": SENDER, "Body": "hi"},
        headers=auth,
    )
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Basic")
    body = await resp.json()
    assert (body["code"], body["status"]) == (20003, 401)
    assert body["more_info"] == "https://www.twilio.com/docs/errors/20003"
    outcome = s.kind().classify(resp.status, resp.headers, await resp.read())
    assert isinstance(outcome, Unavailable)


async def test_a_wrong_token_through_the_kind(sim: SimFactory) -> None:
    s = await sim()
    await assert_a_wrong_credential_is_a_401(s, s.kind(auth_token="nope"))


@pytest.mark.parametrize(
    ("fields", "code", "outcome"),
    [
        ({"From": SENDER, "Body": "hi"}, 21604, Rejected),
        ({"To": "12345", "From": SENDER, "Body": "hi"}, 21211, InvalidNumber),
        ({"To": "+1 555 867", "From": SENDER, "Body": "hi"}, 21211, InvalidNumber),
        ({"To": NUMBER, "Body": "hi"}, 21603, Rejected),
        ({"To": NUMBER, "From": "not a sender!", "Body": "hi"}, 21212, Rejected),
        ({"To": NUMBER, "MessagingServiceSid": "MG123", "Body": "hi"}, 21705, Rejected),
        ({"To": NUMBER, "From": SENDER}, 21602, Rejected),
        ({"To": NUMBER, "From": SENDER, "Body": "x" * 1601}, 21617, Rejected),
        ({"To": NUMBER, "From": SENDER, "Body": "hi", "ValidityPeriod": "0"}, 21624, Rejected),
        ({"To": NUMBER, "From": SENDER, "Body": "hi", "ValidityPeriod": "36001"}, 21624, Rejected),
        ({"To": NUMBER, "From": SENDER, "Body": "hi", "ValidityPeriod": "²"}, 21624, Rejected),
        ({"To": NUMBER, "From": SENDER, "Body": "   "}, 21602, Rejected),
        (
            {"To": NUMBER, "From": SENDER, "Body": "hi", "StatusCallback": "ftp://x"},
            21609,
            Rejected,
        ),
    ],
)
async def test_bad_requests_get_twilios_400(
    sim: SimFactory, fields: dict[str, str], code: int, outcome: type
) -> None:
    s = await sim()
    status, body = await s.post(fields)
    assert (status, body["code"], body["status"]) == (400, code, 400)
    assert body["more_info"].endswith(f"/{code}")
    classified = s.kind().classify(400, {}, json.dumps(body).encode())
    assert isinstance(classified, outcome)
    assert s.state.stats.providers["twilio"].bad_requests == 1


async def test_alphanumeric_and_short_code_senders_are_accepted(sim: SimFactory) -> None:
    s = await sim()
    for sender in ("Dispatchd", "12345"):
        status, body = await s.post({"To": NUMBER, "From": sender, "Body": "hi"})
        assert status == 201, body


# -- fault injection --------------------------------------------------------------------------


async def test_throttle_rate_answers_20429(sim: SimFactory) -> None:
    s = await sim()
    s.state.set_faults("twilio", {"throttle_rate": 1.0}, replace=False)
    _, resp = await assert_throttled(s)
    assert (await resp.json())["code"] == 20429


async def test_faults_are_keyed_by_twilio(sim: SimFactory) -> None:
    failed = await assert_faults_are_keyed_by_name(await sim(), other="provider1")
    assert (await failed.json())["code"] == 20500


async def test_a_hung_request_is_left_unanswered(sim: SimFactory) -> None:
    await assert_a_hung_request_is_left_unanswered(await sim(hang_rate=1.0))


async def test_a_malformed_answer_is_accepted_and_still_reported(sim: SimFactory) -> None:
    await assert_a_malformed_answer_is_still_reported(
        await sim(malformed_rate=1.0), 201, ["sent", "delivered"]
    )


async def test_the_final_report_can_come_before_the_answer(sim: SimFactory) -> None:
    # The final report is taken before the 201 comes back.
    await assert_the_final_report_can_come_first(
        await sim(early_callback_rate=1.0), ["sent", "delivered"]
    )


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


class LocalTwilio(AsyncTwilioHttpClient):  # type: ignore[misc]
    """The SDK's own aiohttp transport, pointed at the simulator instead of api.twilio.com."""

    def __init__(self, base: str) -> None:
        super().__init__()
        self.base = base

    async def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        local = url.replace("https://api.twilio.com", self.base)
        return await super().request(method, local, *args, **kwargs)


# The SDK's own transport passes aiohttp.BasicAuth as `auth=`, both deprecated in aiohttp
# 3.14; the SDK is used unchanged, as the oracle it is, so only those warnings pass here.
@pytest.mark.filterwarnings("ignore:BasicAuth is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:The 'auth' parameter is deprecated:DeprecationWarning")
async def test_the_official_sdk_sends_and_validates_against_the_simulator(
    sim: SimFactory,
) -> None:
    s = await sim()
    http = LocalTwilio(f"{s.base}/twilio")
    try:
        client = Client(SID, TOKEN, http_client=http)
        message = await client.messages.create_async(
            to=NUMBER,
            from_=SENDER,
            body="from the SDK",
            status_callback=s.receiver.url,
            validity_period=60,
        )
        assert message.sid is not None
        assert re.fullmatch(r"SM[0-9a-f]{32}", message.sid)
        assert (message.status, message.to, message.account_sid) == ("queued", NUMBER, SID)

        service = await client.messages.create_async(
            to=NUMBER, messaging_service_sid=SERVICE, body="pooled"
        )
        assert service.status == "accepted"

        with pytest.raises(TwilioRestException) as raised:
            await client.messages.create_async(to="12345", from_=SENDER, body="nope")
        assert (raised.value.status, raised.value.code) == (400, 21211)

        wrong = Client(SID, "wrong", http_client=http)
        with pytest.raises(TwilioRestException) as denied:
            await wrong.messages.create_async(to=NUMBER, from_=SENDER, body="nope")
        assert (denied.value.status, denied.value.code) == (401, 20003)
    finally:
        await http.close()

    callbacks = await s.settled(2)
    validator = RequestValidator(TOKEN)
    for callback in callbacks:
        assert callback.params["MessageSid"] == message.sid
        assert validator.validate(
            callback.url, callback.params, callback.headers["X-Twilio-Signature"]
        )
    assert s.receiver.statuses() == ["sent", "delivered"]
