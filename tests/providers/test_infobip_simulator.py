"""The simulator's Infobip dialect, driven by our infobip kind (and by the official SDK where
it is installed)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from dispatchd.devtools.simulator_infobip import CALLBACKS, add_infobip_routes
from dispatchd.domain.models import Status
from dispatchd.providers.base import Accepted, Rejected, Unavailable
from dispatchd.providers.infobip import Infobip, InfobipSettings
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
)

# Its SDK oracle takes seconds to import: left out of `make unit`, run by `make test`.
pytestmark = pytest.mark.slow

KEY = "003026bbc133714df1834b8638bb496e-8f4b3d9a-e931-478d-a994-28a725159ab9"
OTHER_KEY = "another-accounts-key"
NUMBER = "+41793026727"
INVALID = "+41793020000"  # the simulator's invalid_suffix


class InfobipCallback(Callback):
    """One report POST: Infobip batches several results in one."""

    @property
    def results(self) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = self.data["results"]
        return results

    @property
    def status(self) -> list[str]:
        """The POST's status names, in the order it lists them."""
        return [r["status"]["name"] for r in self.results]

    @property
    def provider_message_id(self) -> str:
        """The message id of a POST with one result."""
        (result,) = self.results
        message_id: str = result["messageId"]
        return message_id


class Sim(Simulator[Infobip, InfobipCallback]):
    name = "infobip"
    pending = CALLBACKS
    callback_type = InfobipCallback
    number = NUMBER
    message_id = "01JABC"
    report_query = "message=01JABC&token=abc123"

    def mount(self) -> None:
        add_infobip_routes(self.app, self.state, {KEY, OTHER_KEY})

    def kind(self, **overrides: Any) -> Infobip:
        values: dict[str, Any] = {
            "api_key": KEY,
            "url": f"{self.base}/infobip",
            "from_": "InfoSMS",
        }
        return Infobip(InfobipSettings(**{**values, **overrides}))

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


SimFactory = Callable[..., Awaitable[Sim]]


@pytest.fixture
def sim(simulator: StartSimulator) -> SimFactory:
    return lambda **settings: simulator(Sim, **settings)


# -- the happy path ---------------------------------------------------------------------------


async def test_accepts_and_reports_in_infobips_format(sim: SimFactory) -> None:
    s = await sim()
    outcome, resp = await s.send(validity=30.0)
    assert resp.status == 200
    assert isinstance(outcome, Accepted)
    assert outcome.provider_message_id is not None
    assert UUID4.fullmatch(outcome.provider_message_id)
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
    assert_no_reports(s)


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
    await assert_a_wrong_credential_is_a_401(s, s.kind(api_key="nope"))


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
    _, resp = await assert_throttled(await sim(throttle_rate=1.0))
    assert (await resp.json())["errorCode"] == "E429"


async def test_faults_are_keyed_by_infobip(sim: SimFactory) -> None:
    failed = await assert_faults_are_keyed_by_name(await sim())
    assert (await failed.json())["errorCode"] == "E500"


async def test_a_hung_request_is_left_unanswered(sim: SimFactory) -> None:
    await assert_a_hung_request_is_left_unanswered(await sim(hang_rate=1.0))


async def test_a_malformed_answer_is_accepted_and_still_reported(sim: SimFactory) -> None:
    await assert_a_malformed_answer_is_still_reported(
        await sim(malformed_rate=1.0), 200, [["DELIVERED_TO_HANDSET"]]
    )


async def test_the_report_can_come_before_the_answer(sim: SimFactory) -> None:
    # The report is taken before the 200 comes back.
    await assert_the_final_report_can_come_first(
        await sim(early_callback_rate=1.0), [["DELIVERED_TO_HANDSET"]]
    )


async def test_a_duplicate_comes_in_the_same_batch_and_a_contrary_report_before(
    sim: SimFactory,
) -> None:
    s = await sim(duplicate_callback_rate=1.0, out_of_order_rate=1.0)
    outcome, callbacks = await assert_duplicate_and_contrary_reports(
        s, [["UNDELIVERABLE_NOT_DELIVERED"], ["DELIVERED_TO_HANDSET", "DELIVERED_TO_HANDSET"]]
    )
    reports = s.kind().parse(callbacks[1].incoming())
    assert [(r.provider_message_id, r.status) for r in reports] == [
        (outcome.provider_message_id, Status.DELIVERED)
    ] * 2


async def test_reports_are_retried_for_callback_retry_for(sim: SimFactory) -> None:
    s = await sim(callback_retry_for=5.0)
    await assert_refused_reports_are_retried(s, [503, 502], [["DELIVERED_TO_HANDSET"]])
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
    assert UUID4.fullmatch(message.message_id)
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
