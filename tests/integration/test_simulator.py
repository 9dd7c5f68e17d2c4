"""The simulated providers on their own: wire format, every fault, the control endpoints."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from dispatchd.config import SimulatorConfig
from dispatchd.devtools.simulator import CALLBACKS, SimulatorState, make_simulator_app
from tests.conftest import wait_for
from tests.helpers import Json

QUIET = {
    "latency": 0.0,
    "callback_delay": 0.0,
    "failure_rate": 0.0,
    "delivered": 1.0,
    "failed": 0.0,
    "invalid": 0.0,
}


@dataclass
class Receiver:
    """A delivery-report endpoint recording what it got; answers from `script`, then 204."""

    url: str = ""
    reports: list[Json] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    script: list[int] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        status = self.script.pop(0) if self.script else 204
        if status < 300:
            self.reports.append(await request.json())
            self.events.append("report")
        return web.Response(status=status)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Sim:
    client: TestClient[Any, Any]
    state: SimulatorState
    receiver: Receiver

    async def send(
        self, name: str = "provider1", to: str = "+17034573322", text: str = "hi"
    ) -> Any:
        body = {"to_number": to, "message": text, "callback_url": self.receiver.url}
        return await self.client.post(f"/{name}", json=body)

    async def faults(self, method: str, name: str, body: Any = None) -> tuple[int, Json]:
        resp = await self.client.request(method, f"/_faults/{name}", json=body)
        return resp.status, await resp.json()

    async def stats(self) -> Json:
        resp = await self.client.get("/_stats")
        assert resp.status == 200
        data: Json = await resp.json()
        return data


SimFactory = Callable[..., Awaitable[Sim]]


@pytest.fixture
async def sim(aiohttp_client: Any, aiohttp_server: Any) -> SimFactory:
    """`await sim(**settings)`: a simulator app whose reports go to a recording receiver."""

    async def start(
        *, rng: random.Random | None = None, clock: Clock | None = None, **settings: Any
    ) -> Sim:
        receiver = Receiver()
        app = web.Application()
        app.router.add_post("/report", receiver.handle)
        server = await aiohttp_server(app)
        receiver.url = str(server.make_url("/report"))
        config = SimulatorConfig(**{**QUIET, **settings})
        state = SimulatorState(config, rng or random.Random(3), clock=clock or Clock())
        client = await aiohttp_client(make_simulator_app(state))
        return Sim(client, state, receiver)

    return start


async def test_default_behaviour_answers_with_an_id_and_reports_it(sim: SimFactory) -> None:
    s = await sim()
    resp = await s.send(to="+17034573322")
    assert resp.status == 200
    message_id = (await resp.json())["message_id"]
    await wait_for(lambda: len(s.receiver.reports) == 1, what="the report")
    assert s.receiver.reports == [{"status": "delivered", "message_id": message_id}]

    resp = await s.send(to="+17034570000")  # invalid_suffix
    invalid_id = (await resp.json())["message_id"]
    await wait_for(lambda: len(s.receiver.reports) == 2, what="the second report")
    assert s.receiver.reports[1] == {"status": "invalid", "message_id": invalid_id}

    resp = await s.client.post("/provider1", data=b"{nope")
    assert resp.status == 400
    stats = await s.stats()
    assert stats["providers"]["provider1"] == {
        "requests": 2,
        "accepted": 2,
        "errors": 0,
        "down": 0,
        "hung": 0,
        "malformed": 0,
        "bad_requests": 1,
        "throttled": 0,
    }


async def _run_script(s: Sim) -> list[tuple[int, str]]:
    out = []
    for i in range(40):
        resp = await s.send(name=f"p{i % 2}", text=f"m{i}")
        out.append((resp.status, await resp.text()))
    assert isinstance(s.client.server, TestServer)
    callbacks = s.client.server.app[CALLBACKS]
    await wait_for(lambda: not callbacks, what="every report to be sent")
    return out


async def test_a_seeded_rng_makes_every_outcome_reproducible(sim: SimFactory) -> None:
    settings = {
        "failure_rate": 0.3,
        "hang_rate": 0.0,
        "malformed_rate": 0.3,
        "duplicate_callback_rate": 0.3,
        "out_of_order_rate": 0.3,
        "delivered": 0.5,
        "failed": 0.5,
    }
    first = await sim(rng=random.Random(42), **settings)
    second = await sim(rng=random.Random(42), **settings)
    a, b = await _run_script(first), await _run_script(second)
    assert a == b
    assert {status for status, _ in a} == {200, 500}
    assert sorted(json.dumps(r) for r in first.receiver.reports) == sorted(
        json.dumps(r) for r in second.receiver.reports
    )
    assert (await first.stats()) == (await second.stats())


async def test_unused_faults_leave_the_sequence_of_draws_unchanged(sim: SimFactory) -> None:
    # What the simulator drew before fault injection: failure, id, then report status.
    rng = random.Random(5)
    expected = []
    for _ in range(10):
        failed = rng.random() < 0.5
        if not failed:
            expected.append(str(uuid.UUID(int=rng.getrandbits(128), version=4)))
            rng.choices((1, 2, 3), weights=(1, 0, 0))
    s = await sim(rng=random.Random(5), failure_rate=0.5)
    got = []
    for _ in range(10):
        resp = await s.send()
        if resp.status == 200:
            got.append((await resp.json())["message_id"])
    assert got == expected


async def test_faults_are_set_per_provider_at_run_time(sim: SimFactory) -> None:
    s = await sim()
    status, body = await s.faults("PUT", "provider1", {"failure_rate": 1.0, "latency": 0.01})
    assert status == 200
    assert body["overrides"] == {"failure_rate": 1.0, "latency": 0.01}
    assert body["effective"]["failure_rate"] == 1.0
    assert (await s.send("provider1")).status == 500
    assert (await s.send("provider2")).status == 200

    status, body = await s.faults("PATCH", "provider1", {"malformed_rate": 1.0})
    assert body["overrides"] == {"failure_rate": 1.0, "latency": 0.01, "malformed_rate": 1.0}
    status, body = await s.faults("PUT", "provider1", {"malformed_rate": 1.0})
    assert body["overrides"] == {"malformed_rate": 1.0}
    resp = await s.send("provider1")
    assert resp.status == 200
    with pytest.raises(ValueError):
        json.loads(await resp.text())

    listing = await (await s.client.get("/_faults")).json()
    assert listing["overrides"] == {"provider1": {"malformed_rate": 1.0}}
    assert listing["defaults"]["malformed_rate"] == 0.0

    status, body = await s.faults("DELETE", "provider1")
    assert status == 200 and body["overrides"] == {}
    assert json.loads(await (await s.send("provider1")).text())["message_id"]


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"failure_rate": 2}, "failure_rate"),
        ({"no_such_fault": 1}, "no_such_fault"),
        ({"enabled": False}, "enabled"),
        ({"delivered": 0, "failed": 0, "invalid": 0}, "at least one"),
        ([1, 2], "JSON object"),
    ],
)
async def test_bad_fault_changes_are_refused_and_change_nothing(
    sim: SimFactory, body: Any, named: str
) -> None:
    s = await sim()
    await s.faults("PUT", "provider1", {"latency": 0.01})
    status, answer = await s.faults("PUT", "provider1", body)
    assert status == 400
    assert named in answer["error"]
    assert s.state.overrides == {"provider1": {"latency": 0.01}}


async def test_down_window_and_flapping_follow_the_clock(sim: SimFactory) -> None:
    clock = Clock()
    s = await sim(clock=clock)
    await s.faults("PUT", "provider1", {"down_after": 1.0, "down_for": 2.0})
    seen = []
    for t in (0.5, 1.5, 2.9, 3.1):
        clock.now = 1000.0 + t
        seen.append((await s.send("provider1")).status)
    assert seen == [200, 503, 503, 200]
    assert (await s.send("provider2")).status == 200

    # The window's clock starts at the change, not at the simulator's start.
    await s.faults("PUT", "provider2", {"flap_period": 2.0})
    seen = []
    for t in (0.5, 1.5, 2.5, 3.5):
        clock.now = 1003.1 + t
        seen.append((await s.send("provider2")).status)
    assert seen == [200, 503, 200, 503]

    await s.faults("PUT", "provider1", {"down": True})
    resp = await s.send("provider1")
    assert resp.status == 503 and (await resp.json())["error"] == "Service unavailable"
    assert (await s.stats())["providers"]["provider1"]["down"] == 3


async def test_a_window_in_the_config_counts_from_the_start(sim: SimFactory) -> None:
    clock = Clock()
    s = await sim(clock=clock, down_for=1.0)
    assert (await s.send()).status == 503
    clock.now += 1.0
    assert (await s.send()).status == 200


async def test_a_hung_request_gets_no_answer_until_the_client_gives_up(sim: SimFactory) -> None:
    s = await sim(hang_rate=1.0)
    with pytest.raises(TimeoutError):
        await s.client.post(
            "/provider1",
            json={"to_number": "+17034573322", "message": "hi", "callback_url": s.receiver.url},
            timeout=aiohttp.ClientTimeout(total=0.3),
        )
    assert (await s.stats())["providers"]["provider1"]["hung"] == 1
    assert s.receiver.reports == []


async def test_a_hung_request_is_let_go_when_the_simulator_shuts_down(sim: SimFactory) -> None:
    s = await sim(hang_rate=1.0)
    pending = asyncio.create_task(s.send())
    await wait_for(lambda: s.state.stats.provider("provider1").hung == 1, what="the hang")
    # Shutting down must not wait for the hang (aiohttp would wait up to 60 s for it).
    await asyncio.wait_for(s.client.server.close(), timeout=5)
    try:
        resp = await pending
    except aiohttp.ClientError:
        return
    assert resp.status == 503


async def test_malformed_200_still_reports_with_the_real_id(sim: SimFactory) -> None:
    s = await sim(malformed_rate=1.0)
    resp = await s.send()
    assert resp.status == 200
    with pytest.raises(ValueError):
        json.loads(await resp.text())
    await wait_for(lambda: len(s.receiver.reports) == 1, what="the report")
    assert s.receiver.reports[0]["status"] == "delivered"
    assert s.state.stats.provider("provider1").malformed == 1


async def test_reports_twice_out_of_order_and_before_the_200(sim: SimFactory) -> None:
    s = await sim(duplicate_callback_rate=1.0)
    mid = (await (await s.send()).json())["message_id"]
    await wait_for(lambda: len(s.receiver.reports) == 2, what="both reports")
    assert s.receiver.reports == [{"status": "delivered", "message_id": mid}] * 2

    s = await sim(out_of_order_rate=1.0)
    mid = (await (await s.send()).json())["message_id"]
    await wait_for(lambda: len(s.receiver.reports) == 2, what="both reports")
    assert [r["status"] for r in s.receiver.reports] == ["failed", "delivered"]

    s = await sim(out_of_order_rate=1.0, delivered=0.0, failed=1.0)
    await s.send()
    await wait_for(lambda: len(s.receiver.reports) == 2, what="both reports")
    assert [r["status"] for r in s.receiver.reports] == ["delivered", "failed"]

    s = await sim(early_callback_rate=1.0, callback_delay=5.0)
    resp = await s.send()
    s.receiver.events.append("200")
    assert resp.status == 200
    assert s.receiver.events == ["report", "200"]
    assert s.receiver.reports == [
        {"status": "delivered", "message_id": (await resp.json())["message_id"]}
    ]


@pytest.mark.slow
async def test_late_reports_wait_for_callback_delay(sim: SimFactory) -> None:
    s = await sim()
    await s.faults("PUT", "provider1", {"callback_delay": 0.5})
    loop = asyncio.get_running_loop()
    await s.send("provider2")
    await wait_for(lambda: len(s.receiver.reports) == 1, what="the prompt report")
    t0 = loop.time()
    await s.send("provider1")
    await wait_for(lambda: len(s.receiver.reports) == 2, what="the late report")
    assert loop.time() - t0 >= 0.5


async def test_reports_not_taken_are_retried_for_callback_retry_for(sim: SimFactory) -> None:
    s = await sim(callback_retry_for=5.0)
    s.receiver.script = [503, 500]
    await s.send()
    await wait_for(lambda: len(s.receiver.reports) == 1, what="the retried report")
    stats = await s.stats()
    assert stats["reports"] == {"sent": 1, "failed": 0, "retries": 2}

    s = await sim()  # callback_retry_for = 0: one try, then give up
    s.receiver.script = [503]
    await s.send()
    await wait_for(lambda: s.state.stats.reports_failed == 1, what="the failed report")
    assert s.receiver.reports == []


async def test_stats_count_how_often_each_message_was_accepted(sim: SimFactory) -> None:
    s = await sim()
    await s.send(text="one")
    await s.send("provider2", text="one")
    await s.send(text="two")
    messages = (await s.stats())["messages"]
    assert messages["accepted"] == 3
    assert messages["distinct"] == 2
    assert messages["duplicates"] == 1
    assert messages["duplicated"] == [{"to_number": "+17034573322", "message": "one", "count": 2}]
    every = (await (await s.client.get("/_stats?pairs=all")).json())["messages"]["pairs"]
    assert [p["count"] for p in every] == [2, 1]
    assert (await s.client.delete("/_stats")).status == 204
    assert (await s.stats())["messages"]["accepted"] == 0
