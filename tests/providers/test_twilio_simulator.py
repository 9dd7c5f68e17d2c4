"""The simulator's Twilio dialect, driven by our twilio kind and by the official SDK."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from twilio.base.exceptions import TwilioRestException  # type: ignore[import-untyped]
from twilio.http.async_http_client import AsyncTwilioHttpClient  # type: ignore[import-untyped]
from twilio.request_validator import RequestValidator  # type: ignore[import-untyped]
from twilio.rest import Client  # type: ignore[import-untyped]

from dispatchd.config import SimulatorConfig
from dispatchd.devtools.simulator import SimulatorState, make_simulator_app
from dispatchd.devtools.simulator_twilio import CALLBACKS, add_twilio_routes
from dispatchd.domain.models import Status
from dispatchd.providers.base import (
    Accepted,
    IncomingReport,
    InvalidNumber,
    Outcome,
    Rejected,
    Submission,
    Throttled,
    Unavailable,
)
from dispatchd.providers.twilio import Twilio, TwilioSettings

SID = "AC" + "1" * 32
TOKEN = "secret-token"
OTHER_SID = "AC" + "2" * 32
SENDER = "+15017122661"
SERVICE = "MG" + "3" * 32
NUMBER = "+15558675310"
INVALID = "+15558670000"  # the simulator's invalid_suffix
QUIET = {
    "latency": 0.0,
    "callback_delay": 0.0,
    "failure_rate": 0.0,
    "delivered": 1.0,
    "failed": 0.0,
    "invalid": 0.0,
}


def basic(login: str, password: str) -> dict[str, str]:
    credentials = base64.b64encode(f"{login}:{password}".encode()).decode("ascii")
    return {"Authorization": f"Basic {credentials}"}


async def eventually(predicate: Callable[[], bool], what: str, within: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@dataclass
class Callback:
    url: str
    headers: dict[str, str]
    body: bytes
    content_type: str

    @property
    def params(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode(), keep_blank_values=True))

    def incoming(self) -> IncomingReport:
        return IncomingReport(self.url, self.headers, self.body, self.content_type)


@dataclass
class Receiver:
    """A status callback endpoint; answers from `script` first, then 204."""

    url: str = ""
    callbacks: list[Callback] = field(default_factory=list)
    script: list[int] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        if self.script:
            return web.Response(status=self.script.pop(0))
        self.callbacks.append(
            Callback(
                str(request.url), dict(request.headers), await request.read(), request.content_type
            )
        )
        return web.Response(status=204)

    def statuses(self) -> list[str]:
        return [c.params["MessageStatus"] for c in self.callbacks]


@dataclass
class Sim:
    client: TestClient[Any, Any]
    state: SimulatorState
    receiver: Receiver
    base: str
    app: web.Application

    def kind(self, **overrides: Any) -> Twilio:
        values: dict[str, Any] = {
            "account_sid": SID,
            "auth_token": TOKEN,
            "from_": SENDER,
            "url": f"{self.base}/twilio",
        }
        return Twilio(TwilioSettings(**{**values, **overrides}))

    def submission(self, to: str = NUMBER, body: str = "hello", **kw: Any) -> Submission:
        return Submission("01J", to, body, 1, self.receiver.url, **kw)

    async def send(self, twilio: Twilio | None = None, **kw: Any) -> tuple[Outcome, Any]:
        twilio = twilio or self.kind()
        req = twilio.request(self.submission(**kw))
        async with self.client.session.request(
            req.method, req.url, headers=dict(req.headers), data=req.body
        ) as resp:
            body = await resp.read()
            return twilio.classify(resp.status, resp.headers, body), resp

    async def post(self, fields: dict[str, str]) -> Any:
        resp = await self.client.post(
            f"/twilio/2010-04-01/Accounts/{SID}/Messages.json",
            data=fields,
            headers=basic(SID, TOKEN),
        )
        return resp.status, await resp.json()

    async def settled(self, count: int) -> list[Callback]:
        await eventually(
            lambda: len(self.receiver.callbacks) >= count and not self.app[CALLBACKS],
            what=f"{count} callbacks",
        )
        return self.receiver.callbacks


SimFactory = Callable[..., Awaitable[Sim]]


@pytest.fixture
async def sim(aiohttp_client: Any, aiohttp_server: Any) -> SimFactory:
    async def start(**settings: Any) -> Sim:
        receiver = Receiver()
        reports = web.Application()
        reports.router.add_post("/report", receiver.handle)
        server = await aiohttp_server(reports)
        receiver.url = str(server.make_url("/report")) + "?token=abc123"
        state = SimulatorState(SimulatorConfig(**{**QUIET, **settings}), random.Random(5))
        # Mounted the way the daemon does: on the simulator's own app.
        app = make_simulator_app(state)
        add_twilio_routes(app, state, {SID: TOKEN, OTHER_SID: "other-token"})
        client = await aiohttp_client(app)
        return Sim(client, state, receiver, str(client.make_url("")).rstrip("/"), app)

    return start


def with_throttle(state: SimulatorState, rate: float) -> None:
    """Set `throttle_rate` for twilio, whether or not SimulatorConfig has the key yet."""
    if "throttle_rate" in SimulatorConfig.model_fields:
        state.set_faults("twilio", {"throttle_rate": rate}, replace=False)
        return
    original = state.settings_for

    class Settings:
        def __init__(self, inner: SimulatorConfig) -> None:
            self._inner = inner
            self.throttle_rate = rate

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

    state.settings_for = lambda name: Settings(original(name))  # type: ignore[method-assign, assignment, return-value]


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
    await s.send()
    await s.send(to=INVALID)
    callbacks = await s.settled(4)
    twilio = s.kind()
    finals = [
        twilio.parse(c.incoming())[0] for c in callbacks if c.params["MessageStatus"] != "sent"
    ]
    assert sorted((r.raw_status, r.error_code, r.status) for r in finals) == [
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
    assert not s.app[CALLBACKS]
    assert s.receiver.callbacks == []


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
    outcome, resp = await s.send(s.kind(auth_token="nope"))
    assert resp.status == 401
    assert isinstance(outcome, Unavailable)
    assert s.receiver.callbacks == []


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
    with_throttle(s.state, 1.0)
    outcome, resp = await s.send()
    assert resp.status == 429
    assert (await resp.json())["code"] == 20429
    assert isinstance(outcome, Throttled)
    assert s.receiver.callbacks == []


async def test_faults_are_keyed_by_twilio(sim: SimFactory) -> None:
    s = await sim()
    s.state.set_faults("provider1", {"failure_rate": 1.0}, replace=True)
    outcome, _ = await s.send()
    assert isinstance(outcome, Accepted)

    s.state.set_faults("twilio", {"failure_rate": 1.0}, replace=True)
    outcome, resp = await s.send()
    assert resp.status == 500
    assert (await resp.json())["code"] == 20500
    assert isinstance(outcome, Unavailable)

    s.state.set_faults("twilio", {"down": True}, replace=True)
    outcome, resp = await s.send()
    assert resp.status == 503
    assert isinstance(outcome, Unavailable)
    counts = s.state.stats.providers["twilio"]
    assert (counts.accepted, counts.errors, counts.down) == (1, 1, 1)


async def test_a_hung_request_is_left_unanswered(sim: SimFactory) -> None:
    s = await sim(hang_rate=1.0)
    req = s.kind().request(s.submission())
    with pytest.raises(TimeoutError):
        await s.client.session.post(
            req.url,
            headers=dict(req.headers),
            data=req.body,
            timeout=aiohttp.ClientTimeout(total=0.3),
        )
    await eventually(lambda: s.state.stats.providers["twilio"].hung == 1, what="the hang")


async def test_a_malformed_answer_is_accepted_and_still_reported(sim: SimFactory) -> None:
    s = await sim(malformed_rate=1.0)
    outcome, resp = await s.send()
    assert resp.status == 201
    assert outcome == Accepted(None, 201)
    assert [c.params["MessageStatus"] for c in await s.settled(2)] == ["sent", "delivered"]


async def test_the_final_report_can_come_before_the_answer(sim: SimFactory) -> None:
    s = await sim(early_callback_rate=1.0)
    outcome, _ = await s.send()
    # The final report was taken before the 201 came back.
    assert s.receiver.statuses() == ["delivered"]
    assert isinstance(outcome, Accepted)
    callbacks = await s.settled(2)
    assert s.receiver.statuses() == ["delivered", "sent"]
    assert {c.params["MessageSid"] for c in callbacks} == {outcome.provider_message_id}


async def test_duplicate_and_contrary_reports(sim: SimFactory) -> None:
    s = await sim(duplicate_callback_rate=1.0, out_of_order_rate=1.0)
    await s.send()
    callbacks = await s.settled(4)
    assert s.receiver.statuses() == ["sent", "undelivered", "delivered", "delivered"]
    twilio = s.kind()
    for callback in callbacks:
        twilio.verify(callback.incoming(), now=0.0)


async def test_reports_are_retried_for_callback_retry_for(sim: SimFactory) -> None:
    s = await sim(callback_retry_for=5.0)
    s.receiver.script = [503, 503]
    await s.send()
    await s.settled(2)
    assert s.receiver.statuses() == ["sent", "delivered"]
    assert s.state.stats.report_retries == 2


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
