"""The simulator's Telnyx dialect, driven by our telnyx kind and by the official SDK."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx
import pytest
import telnyx
from aiohttp import web
from aiohttp.test_utils import TestClient
from telnyx.lib.webhook_verification import WebhookVerificationError, verify_webhook_signature

from dispatchd.config import SimulatorConfig
from dispatchd.devtools.simulator import SimulatorState, make_simulator_app
from dispatchd.devtools.simulator_telnyx import (
    CALLBACKS,
    DEV_PRIVATE_KEY,
    DEV_PUBLIC_KEY,
    POOL_SENDER,
    add_telnyx_routes,
    dev_key_pair,
    private_key,
    public_key_for,
)
from dispatchd.domain.models import Status
from dispatchd.providers.base import (
    Accepted,
    ForgedReport,
    IncomingReport,
    InvalidNumber,
    Outcome,
    Rejected,
    Submission,
    Throttled,
    Unavailable,
)
from dispatchd.providers.telnyx import Telnyx, TelnyxSettings

# Its SDK oracle takes seconds to import: left out of `make unit`, run by `make test`.
pytestmark = pytest.mark.slow

API_KEY = "KEY_simulated_account_1"
OTHER_KEY = "KEY_simulated_account_2"
OTHER_PRIVATE = base64.b64encode(bytes(range(32))).decode("ascii")
SENDER = "+13125550001"
PROFILE = "83d2343b-553f-4c5f-b8c8-fd27004f94bf"
NUMBER = "+13125550002"
INVALID = "+13125550000"  # the simulator's invalid_suffix
MESSAGE_ID = "0190d8a5-7c3e-7a41-9e2b-5f6a7b8c9d0e"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
QUIET = {
    "latency": 0.0,
    "callback_delay": 0.0,
    "failure_rate": 0.0,
    "delivered": 1.0,
    "failed": 0.0,
    "invalid": 0.0,
}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


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
    def event(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)["data"]
        return data

    @property
    def status(self) -> str:
        status: str = self.event["payload"]["to"][0]["status"]
        return status

    def incoming(self) -> IncomingReport:
        return IncomingReport(self.url, self.headers, self.body, self.content_type)


@dataclass
class Receiver:
    """A webhook endpoint; answers from `script` first, then 200."""

    url: str = ""
    callbacks: list[Callback] = field(default_factory=list)
    script: list[int] = field(default_factory=list)
    refused: list[Callback] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        callback = Callback(
            str(request.url), dict(request.headers), await request.read(), request.content_type
        )
        if self.script:
            self.refused.append(callback)
            return web.Response(status=self.script.pop(0))
        self.callbacks.append(callback)
        return web.Response(status=200)

    def statuses(self) -> list[str]:
        return [c.status for c in self.callbacks]


@dataclass
class Sim:
    client: TestClient[Any, Any]
    state: SimulatorState
    receiver: Receiver
    base: str
    app: web.Application

    def kind(self, **overrides: Any) -> Telnyx:
        values: dict[str, Any] = {
            "api_key": API_KEY,
            "public_key": DEV_PUBLIC_KEY,
            "from_": SENDER,
            "url": f"{self.base}/telnyx",
        }
        return Telnyx(TelnyxSettings(**{**values, **overrides}))

    def submission(self, to: str = NUMBER, body: str = "hello", **kw: Any) -> Submission:
        kw.setdefault("message_id", MESSAGE_ID)
        return Submission(kw.pop("message_id"), to, body, 1, self.receiver.url, **kw)

    async def send(self, kind: Telnyx | None = None, **kw: Any) -> tuple[Outcome, Any]:
        kind = kind or self.kind()
        req = kind.request(self.submission(**kw))
        async with self.client.session.request(
            req.method, req.url, headers=dict(req.headers), data=req.body
        ) as resp:
            body = await resp.read()
            return kind.classify(resp.status, resp.headers, body), resp

    async def post(self, fields: Any, **headers: str) -> tuple[int, Any]:
        resp = await self.client.post(
            "/telnyx/v2/messages", json=fields, headers={**bearer(API_KEY), **headers}
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
        receiver.url = str(server.make_url("/report")) + f"?message={MESSAGE_ID}&token=abc123"
        state = SimulatorState(SimulatorConfig(**{**QUIET, **settings}), random.Random(5))
        # Mounted the way the daemon does: on the simulator's own app.
        app = make_simulator_app(state)
        add_telnyx_routes(app, state, {API_KEY: DEV_PRIVATE_KEY, OTHER_KEY: OTHER_PRIVATE})
        client = await aiohttp_client(app)
        return Sim(client, state, receiver, str(client.make_url("")).rstrip("/"), app)

    return start


def assert_signed_by(callback: Callback, public_key: str) -> None:
    """Both of the SDK's verifiers and ours accept the callback under `public_key`."""
    verify_webhook_signature(callback.body, callback.headers, public_key)
    client = telnyx.Telnyx(api_key="unused", public_key=public_key)
    unwrapped: Any = client.webhooks.unwrap(callback.body.decode(), headers=callback.headers)
    assert unwrapped.data.event_type == callback.event["event_type"]
    kind = Telnyx(TelnyxSettings("unused", public_key, from_=SENDER))
    kind.verify(callback.incoming(), time.time())


# -- keys ------------------------------------------------------------------------------------


def test_the_dev_key_pair_is_what_its_seed_says() -> None:
    assert dev_key_pair() == (DEV_PRIVATE_KEY, DEV_PUBLIC_KEY)
    assert public_key_for(DEV_PRIVATE_KEY) == DEV_PUBLIC_KEY
    assert public_key_for(OTHER_PRIVATE) != DEV_PUBLIC_KEY


@pytest.mark.parametrize("bad", ["not base64!", base64.b64encode(b"short").decode()])
def test_a_bad_signing_key_is_refused_when_mounting(bad: str) -> None:
    with pytest.raises(ValueError, match="accounts"):
        private_key(bad)
    app = web.Application()
    state = SimulatorState(SimulatorConfig(**QUIET))
    with pytest.raises(ValueError, match="accounts"):
        add_telnyx_routes(app, state, {API_KEY: bad})


# -- the happy path ---------------------------------------------------------------------------


async def test_accepts_and_reports_in_telnyxs_format_signed(sim: SimFactory) -> None:
    s = await sim()
    outcome, resp = await s.send(body="hello there, ça va?")
    assert resp.status == 200
    assert isinstance(outcome, Accepted)
    assert outcome.provider_message_id is not None
    assert UUID.fullmatch(outcome.provider_message_id)
    record = (await resp.json())["data"]
    assert (record["record_type"], record["direction"], record["type"]) == (
        "message",
        "outbound",
        "SMS",
    )
    assert record["to"][0]["phone_number"] == NUMBER
    assert record["to"][0]["status"] == "queued"
    assert record["from"]["phone_number"] == SENDER
    assert (record["encoding"], record["parts"]) == ("UCS-2", 1)  # ç is not GSM-7
    assert record["webhook_url"] == s.receiver.url

    callbacks = await s.settled(2)
    assert [c.event["event_type"] for c in callbacks] == ["message.sent", "message.finalized"]
    assert s.receiver.statuses() == ["sent", "delivered"]
    kind = s.kind()
    for callback in callbacks:
        assert callback.url == s.receiver.url
        assert callback.content_type == "application/json"
        document = json.loads(callback.body)
        assert document["meta"] == {"attempt": 1, "delivered_to": s.receiver.url}
        assert document["data"]["record_type"] == "event"
        assert UUID.fullmatch(document["data"]["id"])
        assert callback.event["payload"]["id"] == outcome.provider_message_id
        assert callback.headers["telnyx-timestamp"].isdigit()
        assert_signed_by(callback, DEV_PUBLIC_KEY)
    final = callbacks[1].event["payload"]
    assert final["completed_at"] is not None
    assert final["errors"] == []
    reports = [kind.parse(c.incoming())[0] for c in callbacks]
    assert [(r.status, r.raw_status) for r in reports] == [
        (None, "sent"),
        (Status.DELIVERED, "delivered"),
    ]
    stats = s.state.stats.providers["telnyx"]
    assert (stats.requests, stats.accepted) == (1, 1)


async def test_failures_and_invalid_numbers_use_telnyxs_codes(sim: SimFactory) -> None:
    s = await sim(delivered=0.0, failed=1.0)
    await s.send()
    await s.send(to=INVALID, message_id="0190d8a5-7c3e-7a41-9e2b-000000000002")
    callbacks = await s.settled(4)
    kind = s.kind()
    finals = [kind.parse(c.incoming())[0] for c in callbacks if c.status != "sent"]
    assert sorted((r.raw_status, r.error_code, r.status) for r in finals) == [
        ("delivery_failed", "40006", Status.FAILED),
        ("delivery_failed", "40012", Status.INVALID),
    ]


async def test_a_messaging_profile_picks_the_sender(sim: SimFactory) -> None:
    s = await sim()
    outcome, resp = await s.send(s.kind(from_=None, messaging_profile_id=PROFILE))
    assert isinstance(outcome, Accepted)
    record = (await resp.json())["data"]
    assert (record["messaging_profile_id"], record["from"]["phone_number"]) == (
        PROFILE,
        POOL_SENDER,
    )
    callbacks = await s.settled(2)
    assert callbacks[0].event["payload"]["messaging_profile_id"] == PROFILE


async def test_no_webhook_url_no_reports(sim: SimFactory) -> None:
    s = await sim()
    status, body = await s.post({"to": NUMBER, "from": SENDER, "text": "hi"})
    assert status == 200
    assert UUID.fullmatch(body["data"]["id"])
    assert not s.app[CALLBACKS]
    assert s.receiver.callbacks == []


async def test_each_account_signs_with_its_own_key(sim: SimFactory) -> None:
    s = await sim()
    other_public = public_key_for(OTHER_PRIVATE)
    outcome, _ = await s.send(s.kind(api_key=OTHER_KEY, public_key=other_public))
    assert isinstance(outcome, Accepted)
    callbacks = await s.settled(2)
    for callback in callbacks:
        assert_signed_by(callback, other_public)
        with pytest.raises(ForgedReport):
            s.kind().verify(callback.incoming(), time.time())
        with pytest.raises(WebhookVerificationError):
            verify_webhook_signature(callback.body, callback.headers, DEV_PUBLIC_KEY)


# -- authentication and validation ------------------------------------------------------------


@pytest.mark.parametrize(
    "auth",
    [
        {},
        bearer("KEY_wrong"),
        bearer(""),
        {"Authorization": f"Basic {API_KEY}"},
        {"Authorization": API_KEY},
    ],
)
async def test_a_bad_api_key_is_telnyxs_401(sim: SimFactory, auth: dict[str, str]) -> None:
    s = await sim()
    resp = await s.client.post(
        "/telnyx/v2/messages", json={"to": NUMBER, "from": SENDER, "text": "hi"}, headers=auth
    )
    assert resp.status == 401
    (error,) = (await resp.json())["errors"]
    assert (error["code"], error["title"]) == ("10009", "Authentication failed")
    outcome = s.kind().classify(resp.status, resp.headers, await resp.read())
    assert isinstance(outcome, Unavailable)
    assert s.state.stats.providers["telnyx"].bad_requests == 1


async def test_a_wrong_key_through_the_kind(sim: SimFactory) -> None:
    s = await sim()
    outcome, resp = await s.send(s.kind(api_key="KEY_nope"))
    assert resp.status == 401
    assert isinstance(outcome, Unavailable)
    assert s.receiver.callbacks == []


@pytest.mark.parametrize(
    ("fields", "status", "code", "outcome"),
    [
        ({"from": SENDER, "text": "hi"}, 422, "10004", Rejected),
        ({"to": "12", "from": SENDER, "text": "hi"}, 400, "40310", InvalidNumber),
        ({"to": "+1 312 555", "from": SENDER, "text": "hi"}, 400, "40310", InvalidNumber),
        ({"to": NUMBER, "text": "hi"}, 422, "10004", Rejected),
        ({"to": NUMBER, "from": "not a sender!", "text": "hi"}, 400, "40305", Unavailable),
        ({"to": NUMBER, "from": "Dispatchd", "text": "hi"}, 400, "40306", Unavailable),
        ({"to": NUMBER, "messaging_profile_id": "nope", "text": "hi"}, 422, "10006", Rejected),
        ({"to": NUMBER, "from": SENDER}, 400, "40316", Rejected),
        ({"to": NUMBER, "from": SENDER, "text": "  "}, 400, "40316", Rejected),
        ({"to": NUMBER, "from": SENDER, "text": "x" * 1531}, 400, "40302", Rejected),
        (
            {"to": NUMBER, "from": SENDER, "text": "hi", "webhook_url": "ftp://x"},
            422,
            "10003",
            Rejected,
        ),
        ([], 400, "10015", Rejected),
    ],
)
async def test_bad_requests_get_telnyxs_errors(
    sim: SimFactory, fields: Any, status: int, code: str, outcome: type
) -> None:
    s = await sim()
    got, body = await s.post(fields)
    (error,) = body["errors"]
    assert (got, error["code"]) == (status, code)
    assert isinstance(s.kind().classify(got, {}, json.dumps(body).encode()), outcome)
    assert s.state.stats.providers["telnyx"].bad_requests == 1


async def test_ten_parts_pass_and_the_eleventh_is_telnyxs_documented_answer(
    sim: SimFactory,
) -> None:
    s = await sim()
    status, _ = await s.post({"to": NUMBER, "from": SENDER, "text": "x" * 1530})
    assert status == 200
    status, body = await s.post({"to": NUMBER, "from": SENDER, "text": "x" * 1531})
    assert body["errors"][0]["detail"] == (
        "The SMS message would be divided into 11 parts. The maximum is 10."
    )


async def test_not_json_is_a_bad_request(sim: SimFactory) -> None:
    s = await sim()
    resp = await s.client.post("/telnyx/v2/messages", data=b"{nope", headers=bearer(API_KEY))
    assert resp.status == 400
    assert (await resp.json())["errors"][0]["code"] == "10015"


async def test_alphanumeric_and_short_code_senders_are_accepted(sim: SimFactory) -> None:
    s = await sim()
    for fields in (
        {"to": NUMBER, "from": "Dispatchd", "messaging_profile_id": PROFILE, "text": "hi"},
        {"to": NUMBER, "from": "12345", "text": "hi"},
        {"to": "12345", "from": SENDER, "text": "hi"},
    ):
        status, body = await s.post(fields)
        assert status == 200, body


# -- idempotency ------------------------------------------------------------------------------


async def test_the_same_key_and_bytes_replay_the_first_answer(sim: SimFactory) -> None:
    s = await sim()
    first, resp1 = await s.send()
    again, resp2 = await s.send()
    assert isinstance(first, Accepted)
    assert again == first
    assert await resp1.json() == await resp2.json()
    assert s.state.stats.providers["telnyx"].accepted == 1
    callbacks = await s.settled(2)
    assert len(callbacks) == 2  # one message, one set of webhooks

    other, _ = await s.send(message_id="0190d8a5-7c3e-7a41-9e2b-000000000009")
    assert isinstance(other, Accepted)
    assert other.provider_message_id != first.provider_message_id


async def test_the_same_key_with_other_bytes_is_a_422(sim: SimFactory) -> None:
    s = await sim()
    await s.send(body="first")
    outcome, resp = await s.send(body="second")
    assert resp.status == 422
    assert isinstance(outcome, Rejected)


async def test_a_failed_try_is_not_replayed(sim: SimFactory) -> None:
    s = await sim()
    s.state.set_faults("telnyx", {"failure_rate": 1.0}, replace=True)
    failed, _ = await s.send()
    assert isinstance(failed, Unavailable)
    s.state.clear_faults("telnyx")
    outcome, _ = await s.send()
    assert isinstance(outcome, Accepted)


async def test_a_malformed_key_is_a_bad_request(sim: SimFactory) -> None:
    s = await sim()
    status, body = await s.post(
        {"to": NUMBER, "from": SENDER, "text": "hi"}, **{"Idempotency-Key": "not valid!"}
    )
    assert (status, body["errors"][0]["code"]) == (400, "10015")


# -- fault injection --------------------------------------------------------------------------


async def test_throttle_rate_answers_429_with_the_rate_limit_headers(sim: SimFactory) -> None:
    s = await sim()
    s.state.set_faults("telnyx", {"throttle_rate": 1.0}, replace=True)
    outcome, resp = await s.send()
    assert resp.status == 429
    assert (await resp.json())["errors"][0]["code"] == "10011"
    assert resp.headers["x-ratelimit-remaining"] == "0"
    assert isinstance(outcome, Throttled)
    assert outcome.retry_after == 1.0
    assert s.state.stats.providers["telnyx"].throttled == 1
    assert s.receiver.callbacks == []


async def test_faults_are_keyed_by_telnyx(sim: SimFactory) -> None:
    s = await sim()
    s.state.set_faults("twilio", {"failure_rate": 1.0}, replace=True)
    outcome, _ = await s.send()
    assert isinstance(outcome, Accepted)

    s.state.set_faults("telnyx", {"failure_rate": 1.0}, replace=True)
    outcome, resp = await s.send(message_id="0190d8a5-7c3e-7a41-9e2b-000000000003")
    assert resp.status == 500
    assert (await resp.json())["errors"][0]["code"] == "10007"
    assert isinstance(outcome, Unavailable)

    s.state.set_faults("telnyx", {"down": True}, replace=True)
    outcome, resp = await s.send(message_id="0190d8a5-7c3e-7a41-9e2b-000000000004")
    assert resp.status == 503
    assert isinstance(outcome, Unavailable)
    counts = s.state.stats.providers["telnyx"]
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
    await eventually(lambda: s.state.stats.providers["telnyx"].hung == 1, what="the hang")


async def test_a_malformed_answer_is_accepted_and_still_reported(sim: SimFactory) -> None:
    s = await sim(malformed_rate=1.0)
    outcome, resp = await s.send()
    assert resp.status == 200
    assert outcome == Accepted(None, 200)
    assert [c.status for c in await s.settled(2)] == ["sent", "delivered"]


async def test_the_final_event_can_come_before_the_answer(sim: SimFactory) -> None:
    s = await sim(early_callback_rate=1.0)
    outcome, _ = await s.send()
    # The finalized event was taken before the 200 came back.
    assert s.receiver.statuses() == ["delivered"]
    assert isinstance(outcome, Accepted)
    callbacks = await s.settled(2)
    assert [c.event["event_type"] for c in callbacks] == ["message.finalized", "message.sent"]
    assert {c.event["payload"]["id"] for c in callbacks} == {outcome.provider_message_id}


async def test_duplicate_and_contrary_events(sim: SimFactory) -> None:
    s = await sim(duplicate_callback_rate=1.0, out_of_order_rate=1.0)
    await s.send()
    callbacks = await s.settled(4)
    assert s.receiver.statuses() == ["sent", "delivery_failed", "delivered", "delivered"]
    for callback in callbacks:
        s.kind().verify(callback.incoming(), time.time())


async def test_events_are_retried_and_each_try_is_signed_afresh(sim: SimFactory) -> None:
    s = await sim(callback_retry_for=5.0)
    s.receiver.script = [503, 503]
    await s.send()
    await s.settled(2)
    assert s.receiver.statuses() == ["sent", "delivered"]
    assert s.state.stats.report_retries == 2
    tries = [*s.receiver.refused, s.receiver.callbacks[0]]
    assert [json.loads(c.body)["meta"]["attempt"] for c in tries] == [1, 2, 3]
    assert len({c.headers["telnyx-signature-ed25519"] for c in tries}) == 3
    assert len({c.event["id"] for c in tries}) == 1  # the same event each time
    for callback in tries:
        assert_signed_by(callback, DEV_PUBLIC_KEY)


# -- the official SDK against the simulator ---------------------------------------------------


async def test_the_official_sdk_sends_and_verifies_against_the_simulator(sim: SimFactory) -> None:
    s = await sim()
    async with httpx.AsyncClient() as http:
        client = telnyx.AsyncTelnyx(
            api_key=API_KEY, base_url=f"{s.base}/telnyx/v2", http_client=http, max_retries=0
        )
        sent = await client.messages.send(
            to=NUMBER,
            from_=SENDER,
            text="from the SDK",
            webhook_url=s.receiver.url,
            idempotency_key=MESSAGE_ID,
        )
        assert sent.data is not None
        assert sent.data.id is not None
        assert UUID.fullmatch(sent.data.id)
        assert sent.data.to is not None
        assert (sent.data.to[0].status, sent.data.to[0].phone_number) == ("queued", NUMBER)

        # The SDK's own retry of the same request is a replay, not a second message.
        again = await client.messages.send(
            to=NUMBER,
            from_=SENDER,
            text="from the SDK",
            webhook_url=s.receiver.url,
            idempotency_key=MESSAGE_ID,
        )
        assert again.data is not None
        assert again.data.id == sent.data.id

        with pytest.raises(telnyx.BadRequestError) as raised:
            await client.messages.send(to="12", from_=SENDER, text="nope")
        body: Any = raised.value.body
        assert body["errors"][0]["code"] == "40310"

        wrong = telnyx.AsyncTelnyx(
            api_key="KEY_wrong", base_url=f"{s.base}/telnyx/v2", http_client=http, max_retries=0
        )
        with pytest.raises(telnyx.AuthenticationError):
            await wrong.messages.send(to=NUMBER, from_=SENDER, text="nope")

    callbacks = await s.settled(2)
    assert s.receiver.statuses() == ["sent", "delivered"]
    for callback in callbacks:
        assert callback.event["payload"]["id"] == sent.data.id
        assert_signed_by(callback, DEV_PUBLIC_KEY)
