"""The simulator's Telnyx dialect, driven by our telnyx kind and by the official SDK."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
import telnyx
from aiohttp import web
from telnyx.lib.webhook_verification import WebhookVerificationError, verify_webhook_signature

from dispatchd.config import SimulatorConfig
from dispatchd.devtools.simulator import SimulatorState
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
    InvalidNumber,
    Rejected,
    Unavailable,
)
from dispatchd.providers.telnyx import Telnyx, TelnyxSettings
from tests.providers.simulator_helpers import (
    QUIET,
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
    bearer,
    final_reports_of_a_failed_and_an_invalid,
)

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


class TelnyxCallback(Callback):
    @property
    def event(self) -> dict[str, Any]:
        event: dict[str, Any] = self.data["data"]
        return event

    @property
    def status(self) -> str:
        status: str = self.event["payload"]["to"][0]["status"]
        return status

    @property
    def provider_message_id(self) -> str:
        message_id: str = self.event["payload"]["id"]
        return message_id


class Sim(Simulator[Telnyx, TelnyxCallback]):
    name = "telnyx"
    pending = CALLBACKS
    callback_type = TelnyxCallback
    number = NUMBER
    message_id = MESSAGE_ID
    report_query = f"message={MESSAGE_ID}&token=abc123"

    def mount(self) -> None:
        add_telnyx_routes(
            self.app, self.state, {API_KEY: DEV_PRIVATE_KEY, OTHER_KEY: OTHER_PRIVATE}
        )

    def kind(self, **overrides: Any) -> Telnyx:
        values: dict[str, Any] = {
            "api_key": API_KEY,
            "public_key": DEV_PUBLIC_KEY,
            "from_": SENDER,
            "url": f"{self.base}/telnyx",
        }
        return Telnyx(TelnyxSettings(**{**values, **overrides}))

    async def post(self, fields: Any, **headers: str) -> tuple[int, Any]:
        resp = await self.client.post(
            "/telnyx/v2/messages", json=fields, headers={**bearer(API_KEY), **headers}
        )
        return resp.status, await resp.json()


SimFactory = Callable[..., Awaitable[Sim]]


@pytest.fixture
def sim(simulator: StartSimulator) -> SimFactory:
    return lambda **settings: simulator(Sim, **settings)


def assert_signed_by(callback: TelnyxCallback, public_key: str) -> None:
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
    assert UUID4.fullmatch(outcome.provider_message_id)
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
        assert UUID4.fullmatch(document["data"]["id"])
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
    finals = await final_reports_of_a_failed_and_an_invalid(
        s, INVALID, "sent", message_id="0190d8a5-7c3e-7a41-9e2b-000000000002"
    )
    assert finals == [
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
    assert UUID4.fullmatch(body["data"]["id"])
    assert_no_reports(s)


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
    await assert_a_wrong_credential_is_a_401(s, s.kind(api_key="KEY_nope"))


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
    outcome, resp = await assert_throttled(s)
    assert (await resp.json())["errors"][0]["code"] == "10011"
    assert resp.headers["x-ratelimit-remaining"] == "0"
    assert outcome.retry_after == 1.0


async def test_faults_are_keyed_by_telnyx(sim: SimFactory) -> None:
    # Each try is another message: the same key again would be a replay of the first answer.
    failed = await assert_faults_are_keyed_by_name(
        await sim(),
        message_ids=(
            MESSAGE_ID,
            "0190d8a5-7c3e-7a41-9e2b-000000000003",
            "0190d8a5-7c3e-7a41-9e2b-000000000004",
        ),
    )
    assert (await failed.json())["errors"][0]["code"] == "10007"


async def test_a_hung_request_is_left_unanswered(sim: SimFactory) -> None:
    await assert_a_hung_request_is_left_unanswered(await sim(hang_rate=1.0))


async def test_a_malformed_answer_is_accepted_and_still_reported(sim: SimFactory) -> None:
    await assert_a_malformed_answer_is_still_reported(
        await sim(malformed_rate=1.0), 200, ["sent", "delivered"]
    )


async def test_the_final_event_can_come_before_the_answer(sim: SimFactory) -> None:
    # The finalized event is taken before the 200 comes back.
    callbacks = await assert_the_final_report_can_come_first(
        await sim(early_callback_rate=1.0), ["sent", "delivered"]
    )
    assert [c.event["event_type"] for c in callbacks] == ["message.finalized", "message.sent"]


async def test_duplicate_and_contrary_events(sim: SimFactory) -> None:
    await assert_duplicate_and_contrary_reports(
        await sim(duplicate_callback_rate=1.0, out_of_order_rate=1.0),
        ["sent", "delivery_failed", "delivered", "delivered"],
    )


async def test_events_are_retried_and_each_try_is_signed_afresh(sim: SimFactory) -> None:
    s = await sim(callback_retry_for=5.0)
    await assert_refused_reports_are_retried(s, [503, 503], ["sent", "delivered"])
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
        assert UUID4.fullmatch(sent.data.id)
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
