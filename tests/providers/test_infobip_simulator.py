"""The simulator's Infobip dialect, driven by our infobip kind (and by the official SDK where
it is installed)."""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from dispatchd.config import SimulatorConfig
from dispatchd.devtools.simulator import SimulatorState, make_simulator_app
from dispatchd.devtools.simulator_infobip import CALLBACKS, add_infobip_routes
from dispatchd.domain.models import Status
from dispatchd.providers.base import (
    Accepted,
    IncomingReport,
    Outcome,
    Rejected,
    Submission,
    Throttled,
    Unavailable,
)
from dispatchd.providers.infobip import Infobip, InfobipSettings

# Its SDK oracle takes seconds to import: left out of `make unit`, run by `make test`.
pytestmark = pytest.mark.slow

KEY = "003026bbc133714df1834b8638bb496e-8f4b3d9a-e931-478d-a994-28a725159ab9"
OTHER_KEY = "another-accounts-key"
NUMBER = "+41793026727"
INVALID = "+41793020000"  # the simulator's invalid_suffix
QUIET = {
    "latency": 0.0,
    "callback_delay": 0.0,
    "failure_rate": 0.0,
    "delivered": 1.0,
    "failed": 0.0,
    "invalid": 0.0,
}
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


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
    def results(self) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = json.loads(self.body)["results"]
        return results

    def incoming(self) -> IncomingReport:
        return IncomingReport(self.url, self.headers, self.body, self.content_type)


@dataclass
class Receiver:
    """A delivery report endpoint; answers from `script` first, then 200."""

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
        return web.Response(status=200)

    def statuses(self) -> list[list[str]]:
        """Each POST's status names, in the order they came."""
        return [[r["status"]["name"] for r in c.results] for c in self.callbacks]


@dataclass
class Sim:
    client: TestClient[Any, Any]
    state: SimulatorState
    receiver: Receiver
    base: str
    app: web.Application

    def kind(self, **overrides: Any) -> Infobip:
        values: dict[str, Any] = {
            "api_key": KEY,
            "url": f"{self.base}/infobip",
            "from_": "InfoSMS",
        }
        return Infobip(InfobipSettings(**{**values, **overrides}))

    def submission(self, to: str = NUMBER, body: str = "hello", **kw: Any) -> Submission:
        return Submission("01JABC", to, body, 1, self.receiver.url, **kw)

    async def send(self, infobip: Infobip | None = None, **kw: Any) -> tuple[Outcome, Any]:
        infobip = infobip or self.kind()
        req = infobip.request(self.submission(**kw))
        async with self.client.session.request(
            req.method, req.url, headers=dict(req.headers), data=req.body
        ) as resp:
            body = await resp.read()
            return infobip.classify(resp.status, resp.headers, body), resp

    async def post(self, payload: Any, key: str = KEY) -> tuple[int, Any]:
        resp = await self.client.post(
            "/infobip/sms/3/messages",
            data=payload if isinstance(payload, bytes) else json.dumps(payload),
            headers={"Authorization": f"App {key}", "Content-Type": "application/json"},
        )
        return resp.status, await resp.json()

    def message(self, *numbers: str, **extra: Any) -> dict[str, Any]:
        return {
            "sender": "InfoSMS",
            "destinations": [{"to": n} for n in numbers or (NUMBER,)],
            "content": {"text": "hello"},
            "webhooks": {"delivery": {"url": self.receiver.url}},
            **extra,
        }

    async def settled(self, posts: int) -> list[Callback]:
        await eventually(
            lambda: len(self.receiver.callbacks) >= posts and not self.app[CALLBACKS],
            what=f"{posts} report POSTs",
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
        receiver.url = str(server.make_url("/report")) + "?message=01JABC&token=abc123"
        state = SimulatorState(SimulatorConfig(**{**QUIET, **settings}), random.Random(5))
        # Mounted the way the daemon does: on the simulator's own app.
        app = make_simulator_app(state)
        add_infobip_routes(app, state, {KEY, OTHER_KEY})
        client = await aiohttp_client(app)
        return Sim(client, state, receiver, str(client.make_url("")).rstrip("/"), app)

    return start


# -- the happy path ---------------------------------------------------------------------------


async def test_accepts_and_reports_in_infobips_format(sim: SimFactory) -> None:
    s = await sim()
    outcome, resp = await s.send(validity=30.0)
    assert resp.status == 200
    assert isinstance(outcome, Accepted)
    assert outcome.provider_message_id is not None
    assert _UUID.fullmatch(outcome.provider_message_id)
    answer = await resp.json()
    assert answer["bulkId"].isdigit()
    (entry,) = answer["messages"]
    assert entry["status"] == {
        "groupId": 1,
        "groupName": "PENDING",
        "id": 26,
        "name": "PENDING_ACCEPTED",
        "description": "Message sent to next instance",
    }
    assert (entry["destination"], entry["details"]) == ("41793026727", {"messageCount": 1})

    (callback,) = await s.settled(1)
    assert callback.url == s.receiver.url
    assert callback.content_type == "application/json"
    (result,) = callback.results
    assert result["messageId"] == outcome.provider_message_id
    assert result["bulkId"] == answer["bulkId"]
    assert (result["to"], result["sender"], result["callbackData"]) == (
        "41793026727",
        "InfoSMS",
        "01JABC",
    )
    assert result["error"]["name"] == "NO_ERROR"
    assert result["messageCount"] == 1
    infobip = s.kind()
    infobip.verify(callback.incoming(), now=0.0)
    (report,) = infobip.parse(callback.incoming())
    assert (report.provider_message_id, report.status, report.raw_status, report.error_code) == (
        outcome.provider_message_id,
        Status.DELIVERED,
        "DELIVERED_TO_HANDSET",
        None,
    )
    counts = s.state.stats.providers["infobip"]
    assert (counts.requests, counts.accepted) == (1, 1)
    assert s.state.stats.pairs[(NUMBER, "hello")] == 1


async def test_failures_and_invalid_numbers_use_infobips_errors(sim: SimFactory) -> None:
    s = await sim(delivered=0.0, failed=1.0)
    await s.send()
    await s.send(to=INVALID)
    callbacks = await s.settled(2)
    reports = [r for c in callbacks for r in s.kind().parse(c.incoming())]
    assert sorted((r.raw_status, r.error_code, r.status) for r in reports) == [
        ("UNDELIVERABLE_NOT_DELIVERED", "EC_ABSENT_SUBSCRIBER", Status.FAILED),
        ("UNDELIVERABLE_NOT_DELIVERED", "EC_UNKNOWN_SUBSCRIBER", Status.INVALID),
    ]


async def test_several_destinations_are_answered_and_reported_in_one_batch(
    sim: SimFactory,
) -> None:
    s = await sim()
    status, answer = await s.post({"messages": [s.message(NUMBER, "41793026834", INVALID)]})
    assert status == 200
    ids = [m["messageId"] for m in answer["messages"]]
    assert len(set(ids)) == 3
    (callback,) = await s.settled(1)
    reports = s.kind().parse(callback.incoming())
    assert [r.provider_message_id for r in reports] == ids
    assert [r.status for r in reports] == [Status.DELIVERED, Status.DELIVERED, Status.INVALID]
    assert s.state.stats.providers["infobip"].accepted == 3


async def test_intermediate_reports_come_first_when_asked_for(sim: SimFactory) -> None:
    s = await sim()
    message = s.message()
    message["webhooks"]["delivery"]["intermediateReport"] = True
    status, _ = await s.post({"messages": [message]})
    assert status == 200
    callbacks = await s.settled(2)
    assert s.receiver.statuses() == [["DELIVERED_TO_OPERATOR"], ["DELIVERED_TO_HANDSET"]]
    statuses = [s.kind().parse(c.incoming())[0].status for c in callbacks]
    assert statuses == [None, Status.DELIVERED]


@pytest.mark.parametrize(
    "webhooks", [None, {"delivery": {"url": "http://127.0.0.1:9/x", "notify": False}}, {}]
)
async def test_no_webhook_url_no_reports(sim: SimFactory, webhooks: Any) -> None:
    s = await sim()
    message = s.message()
    if webhooks is None:
        del message["webhooks"]
    else:
        message["webhooks"] = webhooks
    status, answer = await s.post({"messages": [message]})
    assert status == 200
    assert answer["messages"][0]["status"]["groupName"] == "PENDING"
    assert not s.app[CALLBACKS]
    assert s.receiver.callbacks == []


# -- authentication and validation ------------------------------------------------------------


@pytest.mark.parametrize(
    "auth",
    [
        {},
        {"Authorization": "App wrong-key"},
        {"Authorization": "App "},
        {"Authorization": f"Bearer {KEY}"},
        {"Authorization": f"Basic {KEY}"},
        {"Authorization": KEY},
    ],
)
async def test_a_bad_key_is_infobips_401(sim: SimFactory, auth: dict[str, str]) -> None:
    s = await sim()
    resp = await s.client.post(
        "/infobip/sms/3/messages", data=json.dumps({"messages": [s.message()]}), headers=auth
    )
    assert resp.status == 401
    body = await resp.json()
    assert body["errorCode"] == "E401"
    assert body["violations"] == []
    outcome = s.kind().classify(resp.status, resp.headers, await resp.read())
    assert isinstance(outcome, Unavailable)
    assert s.state.stats.providers["infobip"].bad_requests == 1


async def test_every_configured_key_works_and_the_scheme_is_case_insensitive(
    sim: SimFactory,
) -> None:
    s = await sim()
    assert (await s.post({"messages": [s.message()]}, key=OTHER_KEY))[0] == 200
    resp = await s.client.post(
        "/infobip/sms/3/messages",
        data=json.dumps({"messages": [s.message()]}),
        headers={"Authorization": f"APP {KEY}"},
    )
    assert resp.status == 200


async def test_a_wrong_key_through_the_kind(sim: SimFactory) -> None:
    s = await sim()
    outcome, resp = await s.send(s.kind(api_key="nope"))
    assert resp.status == 401
    assert isinstance(outcome, Unavailable)
    assert s.receiver.callbacks == []


def _without(message: dict[str, Any], *path: str) -> dict[str, Any]:
    node = message
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return message


@pytest.mark.parametrize(
    ("change", "prop"),
    [
        (lambda m: {"messages": []}, "messages"),
        (lambda m: {"nothing": 1}, "messages"),
        (lambda m: {"messages": [1]}, "messages[0]"),
        (lambda m: {"messages": [_without(m, "destinations")]}, "messages[0].destinations"),
        (lambda m: {"messages": [{**m, "destinations": [{}]}]}, "messages[0].destinations[0].to"),
        (
            lambda m: {"messages": [{**m, "destinations": [{"to": "1" * 65}]}]},
            "messages[0].destinations[0].to",
        ),
        (lambda m: {"messages": [_without(m, "content", "text")]}, "messages[0].content.text"),
        (lambda m: {"messages": [{**m, "content": {"text": ""}}]}, "messages[0].content.text"),
        (lambda m: {"messages": [{**m, "sender": 7}]}, "messages[0].sender"),
        (
            lambda m: {"messages": [{**m, "options": {"validityPeriod": {"amount": 0}}}]},
            "messages[0].options.validityPeriod.amount",
        ),
        (
            lambda m: {
                "messages": [
                    {**m, "options": {"validityPeriod": {"amount": 5, "timeUnit": "DAYS"}}}
                ]
            },
            "messages[0].options.validityPeriod.timeUnit",
        ),
        (
            lambda m: {"messages": [{**m, "webhooks": {"delivery": {"url": "ftp://x"}}}]},
            "messages[0].webhooks.delivery.url",
        ),
        (
            lambda m: {"messages": [{**m, "webhooks": {"callbackData": "x" * 4001}}]},
            "messages[0].webhooks.callbackData",
        ),
        (
            lambda m: {"messages": [{**m, "webhooks": {"contentType": "text/plain"}}]},
            "messages[0].webhooks.contentType",
        ),
    ],
)
async def test_bad_requests_get_infobips_400(
    sim: SimFactory, change: Callable[[dict[str, Any]], Any], prop: str
) -> None:
    s = await sim()
    status, body = await s.post(change(s.message()))
    assert (status, body["errorCode"]) == (400, "E400")
    assert prop in [v["property"] for v in body["violations"]]
    # The report URL carries dispatchd's token: never echoed.
    assert s.receiver.url not in json.dumps(body)
    classified = s.kind().classify(400, {}, json.dumps(body).encode())
    assert isinstance(classified, Rejected)
    assert classified.code == "E400"
    assert s.state.stats.providers["infobip"].bad_requests == 1


async def test_malformed_json_is_a_400(sim: SimFactory) -> None:
    s = await sim()
    status, body = await s.post(b'{"messages": [')
    assert (status, body["errorCode"]) == (400, "E400")


async def test_an_impossible_number_is_rejected_in_the_200_and_not_reported(
    sim: SimFactory,
) -> None:
    s = await sim()
    outcome, resp = await s.send(to="+12")
    assert resp.status == 200
    assert isinstance(outcome, Rejected)
    assert outcome.code == "REJECTED_DESTINATION"
    status, answer = await s.post({"messages": [s.message("41793026727", "abc")]})
    assert status == 200
    assert [m["status"]["groupName"] for m in answer["messages"]] == ["PENDING", "REJECTED"]
    (callback,) = await s.settled(1)
    assert len(callback.results) == 1
    assert s.state.stats.providers["infobip"].accepted == 1


async def test_a_text_over_25_parts_is_rejected_too_long(sim: SimFactory) -> None:
    s = await sim()
    outcome, _ = await s.send(body="x" * 153 * 25 + "y")
    assert isinstance(outcome, Rejected)
    assert outcome.code == "REJECTED_MESSAGE_TOO_LONG"


# -- fault injection --------------------------------------------------------------------------


async def test_throttle_rate_answers_e429(sim: SimFactory) -> None:
    s = await sim(throttle_rate=1.0)
    outcome, resp = await s.send()
    assert resp.status == 429
    assert (await resp.json())["errorCode"] == "E429"
    assert isinstance(outcome, Throttled)
    assert s.state.stats.providers["infobip"].throttled == 1
    assert s.receiver.callbacks == []


async def test_faults_are_keyed_by_infobip(sim: SimFactory) -> None:
    s = await sim()
    s.state.set_faults("twilio", {"failure_rate": 1.0}, replace=True)
    outcome, _ = await s.send()
    assert isinstance(outcome, Accepted)

    s.state.set_faults("infobip", {"failure_rate": 1.0}, replace=True)
    outcome, resp = await s.send()
    assert resp.status == 500
    assert (await resp.json())["errorCode"] == "E500"
    assert isinstance(outcome, Unavailable)

    s.state.set_faults("infobip", {"down": True}, replace=True)
    outcome, resp = await s.send()
    assert resp.status == 503
    assert isinstance(outcome, Unavailable)
    counts = s.state.stats.providers["infobip"]
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
    await eventually(lambda: s.state.stats.providers["infobip"].hung == 1, what="the hang")


async def test_a_malformed_answer_is_accepted_and_still_reported(sim: SimFactory) -> None:
    s = await sim(malformed_rate=1.0)
    outcome, resp = await s.send()
    assert resp.status == 200
    assert outcome == Accepted(None, 200)
    await s.settled(1)
    assert s.receiver.statuses() == [["DELIVERED_TO_HANDSET"]]


async def test_the_report_can_come_before_the_answer(sim: SimFactory) -> None:
    s = await sim(early_callback_rate=1.0)
    outcome, _ = await s.send()
    # The report was taken before the 200 came back.
    assert s.receiver.statuses() == [["DELIVERED_TO_HANDSET"]]
    assert isinstance(outcome, Accepted)
    (callback,) = await s.settled(1)
    assert callback.results[0]["messageId"] == outcome.provider_message_id


async def test_a_duplicate_comes_in_the_same_batch_and_a_contrary_report_before(
    sim: SimFactory,
) -> None:
    s = await sim(duplicate_callback_rate=1.0, out_of_order_rate=1.0)
    outcome, _ = await s.send()
    assert isinstance(outcome, Accepted)
    callbacks = await s.settled(2)
    assert s.receiver.statuses() == [
        ["UNDELIVERABLE_NOT_DELIVERED"],
        ["DELIVERED_TO_HANDSET", "DELIVERED_TO_HANDSET"],
    ]
    reports = s.kind().parse(callbacks[1].incoming())
    assert [(r.provider_message_id, r.status) for r in reports] == [
        (outcome.provider_message_id, Status.DELIVERED)
    ] * 2


async def test_reports_are_retried_for_callback_retry_for(sim: SimFactory) -> None:
    s = await sim(callback_retry_for=5.0)
    s.receiver.script = [503, 502]
    await s.send()
    await s.settled(1)
    assert s.receiver.statuses() == [["DELIVERED_TO_HANDSET"]]
    assert s.state.stats.report_retries == 2
    assert s.state.stats.reports_sent == 1


# -- the official SDK against the simulator (where installed) ---------------------------------


async def test_the_official_sdk_sends_to_the_simulator(sim: SimFactory) -> None:
    sdk = pytest.importorskip("infobip_api_client")
    # The top-level ApiException is the SDK's model of the legacy error body; this is the error.
    errors = pytest.importorskip("infobip_api_client.exceptions")
    s = await sim()
    config = sdk.Configuration(host=f"{s.base}/infobip", api_key=KEY)

    def send(api_key: str, to: str) -> Any:
        config.api_key = {"APIKeyHeader": api_key}
        api = sdk.SmsApi(sdk.ApiClient(config))
        request = sdk.SmsRequest(
            messages=[
                sdk.SmsMessage(
                    sender="InfoSMS",
                    destinations=[sdk.SmsDestination(to=to)],
                    content=sdk.SmsMessageContent(
                        actual_instance=sdk.SmsTextContent(text="from the SDK")
                    ),
                    webhooks=sdk.SmsWebhooks(
                        delivery=sdk.SmsMessageDeliveryReporting(url=s.receiver.url),
                        callback_data="sdk",
                    ),
                )
            ]
        )
        return api.send_sms_messages(sms_request=request)

    # The SDK is synchronous; it runs beside the loop that serves the simulator.
    response = await asyncio.to_thread(send, KEY, "41793026727")
    (message,) = response.messages
    assert message.status.name == "PENDING_ACCEPTED"
    assert _UUID.fullmatch(message.message_id)
    with pytest.raises(errors.ApiException) as denied:
        await asyncio.to_thread(send, "wrong", "41793026727")
    assert denied.value.status == 401

    (callback,) = await s.settled(1)
    delivered = sdk.SmsDeliveryResult.from_json(callback.body.decode())
    (result,) = delivered.results
    assert (result.message_id, result.status.name, result.callback_data) == (
        message.message_id,
        "DELIVERED_TO_HANDSET",
        "sdk",
    )
