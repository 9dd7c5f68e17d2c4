"""The simulator's Sinch dialect, driven by our sinch kind and by the official SDK."""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sinch import SinchClient  # type: ignore[import-untyped]
from sinch.core.clients.retry_configuration import (  # type: ignore[import-untyped]
    RetryConfiguration,
)
from sinch.core.enums import RetryPolicy  # type: ignore[import-untyped]
from sinch.core.exceptions import SinchException  # type: ignore[import-untyped]
from sinch.domains.sms.sinch_events.v1.sms_sinch_event import (  # type: ignore[import-untyped]
    SmsSinchEvent,
)

from dispatchd.devtools.simulator_sinch import CALLBACKS, add_sinch_routes, batch_id
from dispatchd.domain.models import Status
from dispatchd.providers.base import Accepted, Rejected, Unavailable
from dispatchd.providers.sinch import Sinch, SinchSettings
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
    bearer,
    final_reports_of_a_failed_and_an_invalid,
)

# Its SDK oracle takes seconds to import: left out of `make unit`, run by `make test`.
pytestmark = pytest.mark.slow

PLAN = "a" * 32
TOKEN = "secret-token"
OTHER_PLAN = "b" * 32
SENDER = "+12015555555"
NUMBER = "+15558675310"
INVALID = "+15558670000"  # the simulator's invalid_suffix
ULID = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")


class SinchCallback(Callback):
    @property
    def status(self) -> str:
        status: str = self.data["status"]
        return status

    @property
    def provider_message_id(self) -> str:
        batch: str = self.data["batch_id"]
        return batch


class Sim(Simulator[Sinch, SinchCallback]):
    name = "sinch"
    pending = CALLBACKS
    callback_type = SinchCallback
    number = NUMBER
    message_id = "01JMSG"
    answer = 204
    report_query = "message=01JMSG&token=abc123"

    def mount(self) -> None:
        add_sinch_routes(self.app, self.state, {PLAN: TOKEN, OTHER_PLAN: "other-token"})

    def kind(self, **overrides: Any) -> Sinch:
        values: dict[str, Any] = {
            "service_plan_id": PLAN,
            "api_token": TOKEN,
            "from_": SENDER,
            "url": f"{self.base}/sinch",
        }
        return Sinch(SinchSettings(**{**values, **overrides}))

    async def post(self, batch: dict[str, Any], plan: str = PLAN, token: str = TOKEN) -> Any:
        resp = await self.client.post(
            f"/sinch/xms/v1/{plan}/batches", json=batch, headers=bearer(token)
        )
        return resp.status, await resp.read()


SimFactory = Callable[..., Awaitable[Sim]]


@pytest.fixture
def sim(simulator: StartSimulator) -> SimFactory:
    return lambda **settings: simulator(Sim, **settings)


def batch(**fields: Any) -> dict[str, Any]:
    return {"to": [NUMBER], "from": SENDER, "body": "hi", **fields}


# -- the happy path ---------------------------------------------------------------------------


async def test_accepts_and_reports_per_recipient(sim: SimFactory) -> None:
    s = await sim()
    outcome, resp = await s.send(validity=30.0)
    assert resp.status == 201
    assert isinstance(outcome, Accepted)
    assert outcome.provider_message_id is not None
    assert ULID.fullmatch(outcome.provider_message_id)
    resource = await resp.json()
    assert resource["id"] == outcome.provider_message_id
    assert (resource["to"], resource["from"], resource["body"]) == (
        ["15558675310"],
        SENDER,
        "hello",
    )
    assert (resource["type"], resource["canceled"]) == ("mt_text", False)
    assert (resource["delivery_report"], resource["client_reference"]) == (
        "per_recipient",
        "01JMSG",
    )
    assert resource["callback_url"] == s.receiver.url
    assert "expire_at" in resource

    callbacks = await s.settled(2)
    assert s.receiver.statuses() == ["Dispatched", "Delivered"]
    sinch = s.kind()
    for callback in callbacks:
        assert callback.url == s.receiver.url
        assert callback.content_type == "application/json"
        data = callback.data
        assert data["type"] == "recipient_delivery_report_sms"
        assert (data["batch_id"], data["recipient"]) == (outcome.provider_message_id, "15558675310")
        assert data["client_reference"] == "01JMSG"
        datetime.fromisoformat(data["at"].replace("Z", "+00:00"))
        sinch.verify(callback.incoming(), now=0.0)
    assert [c.data["code"] for c in callbacks] == [401, 0]
    assert "operator_status_at" in callbacks[1].data
    reports = [sinch.parse(c.incoming())[0] for c in callbacks]
    assert [(r.provider_message_id, r.status, r.raw_status, r.error_code) for r in reports] == [
        (outcome.provider_message_id, None, "Dispatched", "401"),
        (outcome.provider_message_id, Status.DELIVERED, "Delivered", "0"),
    ]
    stats = s.state.stats.providers["sinch"]
    assert (stats.requests, stats.accepted) == (1, 1)


async def test_the_sdk_reads_the_reports(sim: SimFactory) -> None:
    s = await sim(delivered=0.0, failed=1.0)
    await s.send()
    await s.send(to=INVALID)
    callbacks = await s.settled(4)
    events = SmsSinchEvent()
    for callback in callbacks:
        event = events.parse_event(callback.body, callback.headers)
        assert (event.batch_id, event.status, event.code) == (
            callback.data["batch_id"],
            callback.data["status"],
            callback.data["code"],
        )
        assert event.client_reference == "01JMSG"


async def test_failures_and_invalid_numbers_use_sinchs_statuses(sim: SimFactory) -> None:
    s = await sim(delivered=0.0, failed=1.0)
    assert await final_reports_of_a_failed_and_an_invalid(s, INVALID, "Dispatched") == [
        ("Aborted", "404", Status.FAILED),
        ("Deleted", "0", Status.INVALID),
    ]


async def test_per_recipient_final_reports_only_the_final_status(sim: SimFactory) -> None:
    s = await sim()
    status, _ = await s.post(
        batch(delivery_report="per_recipient_final", callback_url=s.receiver.url)
    )
    assert status == 201
    await s.settled(1)
    assert s.receiver.statuses() == ["Delivered"]


@pytest.mark.parametrize("kind_of_report", ["summary", "full"])
async def test_batch_reports(sim: SimFactory, kind_of_report: str) -> None:
    s = await sim()
    status, body = await s.post(batch(delivery_report=kind_of_report, callback_url=s.receiver.url))
    assert status == 201
    callback = (await s.settled(1))[0]
    data = callback.data
    assert (data["type"], data["batch_id"]) == ("delivery_report_sms", json.loads(body)["id"])
    entry = data["statuses"][0]
    assert (entry["status"], entry["code"], entry["count"]) == ("Delivered", 0, 1)
    assert ("recipients" in entry) == (kind_of_report == "full")
    assert s.kind().parse(callback.incoming())[0].status is Status.DELIVERED
    assert SmsSinchEvent().parse_event(callback.body).batch_id == data["batch_id"]


async def test_no_delivery_report_no_callbacks(sim: SimFactory) -> None:
    s = await sim()
    status, body = await s.post(batch(callback_url=s.receiver.url))
    assert status == 201
    assert json.loads(body)["delivery_report"] == "none"
    status, _ = await s.post(batch(delivery_report="none"))
    assert status == 201
    assert_no_reports(s)


def test_batch_ids_are_ulids() -> None:
    assert batch_id(0) == "0" * 26
    assert ULID.fullmatch(batch_id(random.Random(1).getrandbits(128)))
    assert len({batch_id(random.Random(n).getrandbits(128)) for n in range(50)}) == 50


# -- authentication and validation ------------------------------------------------------------


@pytest.mark.parametrize(
    "auth",
    [
        {},
        bearer("wrong"),
        bearer("other-token"),  # a real token, but not this path's service plan
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
    ],
)
async def test_a_bad_token_is_a_401(sim: SimFactory, auth: dict[str, str]) -> None:
    s = await sim()
    resp = await s.client.post(f"/sinch/xms/v1/{PLAN}/batches", json=batch(), headers=auth)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    outcome = s.kind().classify(resp.status, resp.headers, await resp.read())
    assert isinstance(outcome, Unavailable)
    assert s.state.stats.providers["sinch"].bad_requests == 1


async def test_an_unknown_service_plan_is_a_401(sim: SimFactory) -> None:
    s = await sim()
    status, _ = await s.post(batch(), plan="c" * 32)
    assert status == 401


async def test_a_wrong_token_through_the_kind(sim: SimFactory) -> None:
    s = await sim()
    await assert_a_wrong_credential_is_a_401(s, s.kind(api_token="nope"))


def _in(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"to": []}, "syntax_constraint_violation"),
        ({"to": NUMBER}, "syntax_constraint_violation"),
        ({"to": [NUMBER] * 1001}, "syntax_constraint_violation"),
        ({"to": [15558675310]}, "syntax_constraint_violation"),
        ({"to": ["12345"]}, "syntax_invalid_parameter_format"),
        ({"to": ["+1 555 867"]}, "syntax_invalid_parameter_format"),
        ({"from": None}, "syntax_constraint_violation"),
        ({"from": "not a sender!"}, "syntax_invalid_parameter_format"),
        ({"body": None}, "syntax_constraint_violation"),
        ({"body": "x" * 1601}, "syntax_constraint_violation"),
        ({"type": "mt_binary"}, "syntax_constraint_violation"),
        ({"delivery_report": "sometimes"}, "syntax_constraint_violation"),
        ({"callback_url": "ftp://x"}, "syntax_invalid_parameter_format"),
        ({"callback_url": 7}, "syntax_invalid_parameter_format"),
        ({"client_reference": "r" * 129}, "syntax_constraint_violation"),
        ({"expire_at": "tomorrow"}, "syntax_invalid_parameter_format"),
        ({"expire_at": _in(-60)}, "syntax_constraint_violation"),
        ({"expire_at": _in(4 * 24 * 3600)}, "syntax_constraint_violation"),
    ],
)
async def test_bad_requests_get_sinchs_400(
    sim: SimFactory, fields: dict[str, Any], code: str
) -> None:
    s = await sim()
    status, body = await s.post({k: v for k, v in batch(**fields).items() if v is not None})
    error = json.loads(body)
    assert (status, error["code"]) == (400, code)
    assert error["text"]
    outcome = s.kind().classify(400, {}, body)
    assert isinstance(outcome, Rejected)
    assert outcome.code == code
    assert s.state.stats.providers["sinch"].bad_requests == 1


async def test_not_json_is_syntax_invalid_json(sim: SimFactory) -> None:
    s = await sim()
    for raw in (b"{nope", b"[]"):
        resp = await s.client.post(
            f"/sinch/xms/v1/{PLAN}/batches",
            data=raw,
            headers={**bearer(TOKEN), "Content-Type": "application/json"},
        )
        assert resp.status == 400
        assert (await resp.json())["code"] == "syntax_invalid_json"


async def test_a_form_body_is_415(sim: SimFactory) -> None:
    s = await sim()
    resp = await s.client.post(
        f"/sinch/xms/v1/{PLAN}/batches", data={"to": NUMBER}, headers=bearer(TOKEN)
    )
    assert resp.status == 415
    assert isinstance(s.kind().classify(415, {}, await resp.read()), Rejected)


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"delivery_report": "per_recipient"}, "missing_callback_url"),
        ({"to": ["01FC66621VHDBN119Z8PMV1QPU"]}, "unknown_group"),
    ],
)
async def test_403s(sim: SimFactory, fields: dict[str, Any], code: str) -> None:
    s = await sim()
    status, body = await s.post(batch(**fields))
    assert (status, json.loads(body)["code"]) == (403, code)
    assert isinstance(s.kind().classify(403, {}, body), Unavailable)


async def test_alphanumeric_and_short_code_senders_are_accepted(sim: SimFactory) -> None:
    s = await sim()
    for sender in ("Dispatchd", "12345", "15551231234"):
        status, body = await s.post(batch(**{"from": sender}))
        assert status == 201, body


# -- fault injection --------------------------------------------------------------------------


async def test_throttle_rate_answers_429(sim: SimFactory) -> None:
    s = await sim()
    s.state.set_faults("sinch", {"throttle_rate": 1.0}, replace=True)
    await assert_throttled(s)


async def test_faults_are_keyed_by_sinch(sim: SimFactory) -> None:
    await assert_faults_are_keyed_by_name(await sim())


async def test_a_hung_request_is_left_unanswered(sim: SimFactory) -> None:
    await assert_a_hung_request_is_left_unanswered(await sim(hang_rate=1.0))


async def test_a_malformed_answer_is_accepted_and_still_reported(sim: SimFactory) -> None:
    await assert_a_malformed_answer_is_still_reported(
        await sim(malformed_rate=1.0), 201, ["Dispatched", "Delivered"]
    )


async def test_the_final_report_can_come_before_the_answer(sim: SimFactory) -> None:
    # The final report is taken before the 201 comes back.
    await assert_the_final_report_can_come_first(
        await sim(early_callback_rate=1.0), ["Dispatched", "Delivered"]
    )


async def test_duplicate_and_contrary_reports(sim: SimFactory) -> None:
    await assert_duplicate_and_contrary_reports(
        await sim(duplicate_callback_rate=1.0, out_of_order_rate=1.0),
        ["Dispatched", "Aborted", "Delivered", "Delivered"],
    )


async def test_reports_are_retried_after_5xx_and_429(sim: SimFactory) -> None:
    await assert_refused_reports_are_retried(
        await sim(callback_retry_for=5.0), [503, 429], ["Dispatched", "Delivered"]
    )


async def test_reports_are_not_retried_after_another_4xx(sim: SimFactory) -> None:
    s = await sim(callback_retry_for=5.0)
    s.receiver.script = [404]
    await s.send()
    await s.settled(1)
    # The Dispatched report was answered 404 and dropped, as Sinch drops it.
    assert s.receiver.statuses() == ["Delivered"]
    assert (s.state.stats.report_retries, s.state.stats.reports_sent) == (0, 2)


# -- the official SDK against the simulator ---------------------------------------------------


def sdk_client(base: str, token: str = TOKEN) -> Any:
    client = SinchClient(
        service_plan_id=PLAN,
        sms_api_token=token,
        sms_region="us",
        retry_configuration=RetryConfiguration(retry_policy=RetryPolicy.NONE),
    )
    # The SDK formats this with the region; without a placeholder it is used as it is.
    client.configuration.sms_domain_with_service_plan_id = f"{base}/sinch"
    return client


async def test_the_official_sdk_sends_against_the_simulator(sim: SimFactory) -> None:
    s = await sim()
    client = sdk_client(s.base)
    wrong = sdk_client(s.base, token="wrong")
    try:
        sent = await asyncio.to_thread(
            client.sms.batches.send_sms,
            to=[NUMBER],
            from_=SENDER,
            body="from the SDK",
            delivery_report="per_recipient",
            event_destination_target=s.receiver.url,
            client_reference="01JSDK",
        )
        assert ULID.fullmatch(sent.id)
        assert (sent.to, sent.from_, sent.body) == (["15558675310"], SENDER, "from the SDK")

        with pytest.raises(SinchException) as bad:
            await asyncio.to_thread(
                client.sms.batches.send_sms, to=["12345"], from_=SENDER, body="nope"
            )
        assert bad.value.http_response.status_code == 400

        with pytest.raises(SinchException) as denied:
            await asyncio.to_thread(
                wrong.sms.batches.send_sms, to=[NUMBER], from_=SENDER, body="nope"
            )
        assert denied.value.http_response.status_code == 401
    finally:
        client.configuration.transport.http_session.close()
        wrong.configuration.transport.http_session.close()

    callbacks = await s.settled(2)
    for callback in callbacks:
        event = SmsSinchEvent().parse_event(callback.body, callback.headers)
        assert (event.batch_id, event.client_reference) == (sent.id, "01JSDK")
    assert s.receiver.statuses() == ["Dispatched", "Delivered"]
