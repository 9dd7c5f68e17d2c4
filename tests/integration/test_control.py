"""The control socket and its protocol, without Textual: a real daemon, a real unix socket."""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import stat
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dispatchd.config import Config, DispatchdProviderConfig, ProviderConfig
from dispatchd.control.server import DEPS, make_control_app
from dispatchd.daemon import Daemon, build
from dispatchd.domain.errors import ControlSocketError
from dispatchd.domain.models import Status
from dispatchd.events import EventBus
from dispatchd.health import BadWeight, HealthRegistry, ProviderState, UnknownProvider, percentile
from tests.conftest import DaemonFactory, free_port, make_config, wait_for
from tests.helpers import NUMBER, Json


class Control:
    """A bare protocol client: HTTP over the daemon's unix socket."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        kwargs: dict[str, Any] = {}
        if isinstance(body, str):
            kwargs["data"] = body
            kwargs["headers"] = {"Content-Type": "application/json"}
        elif body is not None:
            kwargs["json"] = body
        async with self.session.request(method, "http://d" + path, **kwargs) as resp:
            data = await resp.json(content_type=None)
            if resp.status >= 400:
                assert resp.content_type == "application/problem+json"
            return resp.status, data

    async def snapshot(self) -> Json:
        status, data = await self.call("GET", "/v1/snapshot")
        assert status == 200
        return dict(data)


async def _daemon(start_daemon: DaemonFactory, short_tmp: Path, **sections: Any) -> Daemon:
    return await start_daemon(control={"socket": str(short_tmp / "c.sock")}, **sections)


@pytest.fixture
async def daemon(start_daemon: DaemonFactory, short_tmp: Path) -> Daemon:
    return await _daemon(start_daemon, short_tmp)


@pytest.fixture
async def control(daemon: Daemon) -> AsyncIterator[Control]:
    connector = aiohttp.UnixConnector(path=str(daemon.config.control_socket))
    async with aiohttp.ClientSession(connector=connector) as session:
        yield Control(session)


async def send(http: aiohttp.ClientSession, d: Daemon, number: str = NUMBER) -> str:
    url = f"http://127.0.0.1:{d.port}/messages"
    async with http.post(url, json={"to_number": number, "message": "hi"}) as resp:
        body = await resp.json()
        assert resp.status == 202, body
        return str(body["id"])


async def status_of(d: Daemon, msg_id: str) -> Status | None:
    assert d.store is not None
    msg = await d.store.get(msg_id)
    return None if msg is None else msg.status


async def wait_status(d: Daemon, msg_id: str, status: Status) -> None:
    async def reached() -> bool:
        return await status_of(d, msg_id) is status

    await wait_for(reached, within=10, what=f"{msg_id} to be {status}")


# -- the socket ---------------------------------------------------------------------------


async def test_socket_is_private_and_removed_on_clean_exit(daemon: Daemon) -> None:
    path = daemon.config.control_socket
    mode = os.stat(path).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600
    await daemon.stop()
    assert not path.exists()


def test_default_socket_sits_beside_the_database(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, 1)
    assert cfg.control_socket == tmp_path / "dispatchd.sock"
    assert Config().control_socket == Path("var/dispatchd.sock")


async def test_stale_socket_left_by_a_crash_is_replaced(
    start_daemon: DaemonFactory, short_tmp: Path, control_path: Path
) -> None:
    # A socket file nobody listens on, as a killed daemon leaves it.
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(control_path))
    d = await _daemon(start_daemon, short_tmp)
    connector = aiohttp.UnixConnector(path=str(control_path))
    async with aiohttp.ClientSession(connector=connector) as session:
        assert (await Control(session).snapshot())["protocol"] == 1
    await d.stop()


@pytest.fixture
def control_path(short_tmp: Path) -> Path:
    return short_tmp / "c.sock"


async def test_a_live_socket_is_not_taken_over(
    daemon: Daemon, control: Control, tmp_path: Path
) -> None:
    other_cfg = make_config(
        tmp_path / "other",
        free_port(),
        control={"socket": str(daemon.config.control_socket)},
    )
    other = await build(other_cfg, time.time, random.Random(1))
    with pytest.raises(ControlSocketError, match="another process is listening"):
        await other.start()
    await other.stop(grace=0.1)
    assert (await control.snapshot())["instance"]  # the first daemon still answers


async def test_a_file_in_the_way_is_not_deleted(tmp_path: Path, control_path: Path) -> None:
    with control_path.open("w") as fh:
        fh.write("not a socket")
    cfg = make_config(tmp_path, free_port(), control={"socket": str(control_path)})
    d = await build(cfg, time.time, random.Random(1))
    with pytest.raises(ControlSocketError, match="not a socket"):
        await d.start()
    await d.stop(grace=0.1)
    assert stat.S_ISREG(os.stat(control_path).st_mode)


# -- reading ------------------------------------------------------------------------------


async def test_snapshot_describes_providers_queue_and_recent_events(
    daemon: Daemon, control: Control, http: aiohttp.ClientSession
) -> None:
    msg_id = await send(http, daemon)
    await wait_status(daemon, msg_id, Status.DELIVERED)
    snap = await control.snapshot()
    assert snap["protocol"] == 1
    assert snap["pid"] == os.getpid()
    providers = {p["name"]: p for p in snap["providers"]}
    assert set(providers) == {"provider1", "provider2"}
    assert providers["provider1"]["configured_weight"] == 30
    assert providers["provider2"]["effective_weight"] == 70
    assert sum(p["calls"] for p in providers.values()) == 1
    assert all(p["state"] == "healthy" for p in providers.values())
    assert snap["queue"]["counts"]["delivered"] == 1
    assert snap["queue"]["counts"]["queued"] == 0
    assert snap["queue"]["oldest_queued_age_s"] is None
    mine = [e["type"] for e in snap["recent"] if e["payload"].get("id") == msg_id]
    assert mine == ["accepted", "sent", "delivered"]
    assert [e["seq"] for e in snap["recent"]] == sorted(e["seq"] for e in snap["recent"])
    assert snap["seq"] == snap["recent"][-1]["seq"]


async def test_event_stream_starts_with_a_snapshot_then_events_in_order(
    daemon: Daemon, control: Control, http: aiohttp.ClientSession
) -> None:
    async with control.session.ws_connect("http://d/v1/events") as ws:
        first = await ws.receive_json(timeout=5)
        assert first["type"] == "snapshot"
        assert first["payload"]["protocol"] == 1
        ids = [await send(http, daemon, f"+1703457332{i}") for i in range(3)]
        events: list[Json] = []
        while sum(e["type"] == "delivered" for e in events) < 3:
            event = await ws.receive_json(timeout=10)
            if event["type"] not in ("stats", "queue"):
                events.append(event)
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and seqs[0] > first["seq"]
    for msg_id in ids:
        kinds = [e["type"] for e in events if e["payload"].get("id") == msg_id]
        assert kinds == ["accepted", "sent", "delivered"]
        sent = next(e for e in events if e["payload"].get("id") == msg_id and e["type"] == "sent")
        assert sent["payload"]["provider"] in {"provider1", "provider2"}
        assert sent["payload"]["number"].startswith("+1703457332")


async def test_stats_and_queue_events_are_coalesced_and_only_sent_to_listeners(
    daemon: Daemon, aiohttp_client: Any
) -> None:
    # The same factory the daemon serves, mounted on a test server with quick ticks.
    assert daemon.control is not None
    deps = replace(daemon.control.app[DEPS], tick=0.02, queue_every=0.02)
    client = await aiohttp_client(make_control_app(deps))
    rates_before = len(daemon.events.rates())
    async with client.ws_connect("/v1/events") as ws:
        await ws.receive_json(timeout=5)
        seen: dict[str, Json] = {}
        while not {"stats", "queue"} <= set(seen):
            event = await ws.receive_json(timeout=5)
            seen[event["type"]] = event["payload"]
    assert set(seen["stats"]["rates"]) == {"at", "accepted", "sent", "delivered", "failed"}
    assert [p["name"] for p in seen["stats"]["providers"]] == ["provider1", "provider2"]
    assert seen["queue"]["counts"]["queued"] == 0
    assert len(daemon.events.rates()) > rates_before  # a rate sample per tick
    # Neither kind crowds the recent events kept for snapshots.
    assert not {"stats", "queue"} & {e.type for e in daemon.events.recent()}


async def test_a_slow_subscriber_loses_events_and_is_told_how_many(
    daemon: Daemon, control: Control
) -> None:
    async with control.session.ws_connect("http://d/v1/events") as ws:
        await ws.receive_json(timeout=5)
        # Published without yielding, so the subscriber reads none of it in between: its
        # queue (1000 by default) fills and the rest is dropped; delivery never waits.
        for i in range(1500):
            daemon.events.publish("probe", {"i": i})
        received: list[Any] = []
        dropped: list[int] = []

        async def read_until(last: Any) -> None:
            while not received or received[-1] != last:
                event = await ws.receive_json(timeout=5)
                if event["type"] == "dropped":
                    dropped.append(event["payload"]["count"])
                elif event["type"] == "probe":
                    received.append(event["payload"]["i"])

        await read_until(999)
        daemon.events.publish("probe", {"i": "after"})
        await read_until("after")
    assert received == [*range(1000), "after"]
    assert dropped == [500]  # announced once, before the first event after the gap


async def test_message_lookup_by_id_and_number(
    daemon: Daemon, control: Control, http: aiohttp.ClientSession
) -> None:
    msg_id = await send(http, daemon)
    await wait_status(daemon, msg_id, Status.DELIVERED)
    status, msg = await control.call("GET", f"/v1/messages/{msg_id}")
    assert status == 200
    assert [h["status"] for h in msg["history"]] == ["queued", "sending", "sent", "delivered"]
    assert msg["attempts"][0]["outcome"] == "accepted"
    status, found = await control.call("GET", "/v1/messages?to_number=(703) 457-3322")
    assert status == 200 and [m["id"] for m in found["items"]] == [msg_id]
    status, problem = await control.call("GET", "/v1/messages/nope")
    assert (status, problem["code"]) == (404, "message_not_found")
    status, problem = await control.call("GET", "/v1/messages?to_number=12")
    assert (status, problem["code"]) == (422, "validation_failed")
    # Digits int() refuses ("²") or that are not ASCII are a bad limit, not a 500.
    for limit in ("%C2%B2", "%D9%A3", "0", "9" * 40):
        status, problem = await control.call(
            "GET", f"/v1/messages?to_number=%2B17034573322&limit={limit}"
        )
        assert (status, problem["code"]) == (422, "validation_failed"), limit


# -- commands -----------------------------------------------------------------------------


async def test_pausing_a_provider_moves_the_next_messages_to_the_other(
    daemon: Daemon, control: Control, http: aiohttp.ClientSession
) -> None:
    status, body = await control.call("POST", "/v1/providers/provider2/pause")
    assert status == 200
    assert (body["state"], body["paused"], body["effective_weight"]) == ("paused", True, 0)
    ids = [await send(http, daemon) for _ in range(6)]
    for msg_id in ids:
        await wait_status(daemon, msg_id, Status.DELIVERED)
    assert daemon.store is not None
    for msg_id in ids:
        msg = await daemon.store.get(msg_id)
        assert msg is not None and [a.provider for a in msg.attempts] == ["provider1"]
    kinds = [e.type for e in daemon.events.recent()]
    assert "provider_paused" in kinds
    status, body = await control.call("POST", "/v1/providers/provider2/resume")
    assert (status, body["state"], body["effective_weight"]) == (200, "healthy", 70)


async def test_with_every_provider_paused_messages_wait_instead_of_failing(
    daemon: Daemon, control: Control, http: aiohttp.ClientSession
) -> None:
    for name in ("provider1", "provider2"):
        assert (await control.call("POST", f"/v1/providers/{name}/pause"))[0] == 200
    msg_id = await send(http, daemon)
    assert daemon.worker is not None
    await daemon.worker.drain()  # claims nothing while no provider may be used
    assert await status_of(daemon, msg_id) is Status.QUEUED
    snap = await control.snapshot()
    assert snap["queue"]["counts"]["queued"] == 1
    assert snap["queue"]["oldest_queued_age_s"] is not None
    await control.call("POST", "/v1/providers/provider1/resume")
    await wait_status(daemon, msg_id, Status.DELIVERED)


async def test_weight_changes_apply_and_bad_ones_are_refused(
    daemon: Daemon, control: Control, http: aiohttp.ClientSession
) -> None:
    status, body = await control.call("PUT", "/v1/providers/provider1/weight", {"weight": 0})
    assert (status, body["weight"], body["configured_weight"]) == (200, 0, 30)
    ids = [await send(http, daemon) for _ in range(5)]
    for msg_id in ids:
        await wait_status(daemon, msg_id, Status.DELIVERED)
    assert daemon.store is not None
    for msg_id in ids:
        msg = await daemon.store.get(msg_id)
        assert msg is not None and msg.provider == "provider2"
    for bad in (-1, 1_000_001, "7", 2.5, True, None):
        status, problem = await control.call(
            "PUT", "/v1/providers/provider1/weight", {"weight": bad}
        )
        assert (status, problem["code"]) == (422, "bad_weight"), bad
    status, problem = await control.call("PUT", "/v1/providers/provider1/weight", "{nope")
    assert (status, problem["code"]) == (400, "malformed_request")
    weight = next(e for e in daemon.events.recent() if e.type == "provider_weight")
    assert weight.payload == {"provider": "provider1", "weight": 0, "previous": 30}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/providers/nope/pause"),
        ("POST", "/v1/providers/nope/resume"),
        ("PUT", "/v1/providers/nope/weight"),
    ],
)
async def test_unknown_provider_is_a_404(control: Control, method: str, path: str) -> None:
    status, problem = await control.call(method, path, {"weight": 1})
    assert (status, problem["code"]) == (404, "unknown_provider")
    assert "provider1, provider2" in problem["detail"]


async def test_retrying_a_failed_message_sends_it_again_as_a_new_one(
    start_daemon: DaemonFactory, short_tmp: Path, http: aiohttp.ClientSession
) -> None:
    d = await _daemon(
        start_daemon, short_tmp, delivery={"max_attempts": 1}, simulator={"failure_rate": 1.0}
    )
    failed_id = await send(http, d)
    await wait_status(d, failed_id, Status.FAILED)
    d.simulator.settings = d.simulator.settings.model_copy(update={"failure_rate": 0.0})
    connector = aiohttp.UnixConnector(path=str(d.config.control_socket))
    async with aiohttp.ClientSession(connector=connector) as session:
        control = Control(session)
        status, body = await control.call("POST", f"/v1/messages/{failed_id}/retry")
        assert status == 202 and body["retry_of"] == failed_id
        new_id = body["message"]["id"]
        await wait_status(d, new_id, Status.DELIVERED)
        status, problem = await control.call("POST", f"/v1/messages/{new_id}/retry")
        assert (status, problem["code"]) == (409, "not_retryable")
        status, problem = await control.call("POST", "/v1/messages/nope/retry")
        assert (status, problem["code"]) == (404, "message_not_found")
    assert d.store is not None
    original = await d.store.get(failed_id)
    assert original is not None and original.status is Status.FAILED  # final stays final
    assert original.history[-1].detail == f"retried by the operator as {new_id}"
    retried = next(e for e in d.events.recent() if e.type == "message_retried")
    assert retried.payload["new_id"] == new_id


async def test_lifting_a_suppression_lets_messages_through_again(
    daemon: Daemon, control: Control, http: aiohttp.ClientSession
) -> None:
    bad = "+17034570000"  # the simulator reports it invalid
    first = await send(http, daemon, bad)
    await wait_status(daemon, first, Status.INVALID)
    async with http.post(
        f"http://127.0.0.1:{daemon.port}/messages", json={"to_number": bad, "message": "x"}
    ) as resp:
        assert resp.status == 422
    assert "number_suppressed" in [e.type for e in daemon.events.recent()]
    status, body = await control.call("DELETE", f"/v1/suppressions/{bad}")
    assert (status, body) == (200, {"number": bad, "lifted": True})
    await send(http, daemon, bad)
    status, problem = await control.call("DELETE", f"/v1/suppressions/{bad}")
    assert (status, problem["code"]) == (404, "not_suppressed")
    status, problem = await control.call("DELETE", "/v1/suppressions/12")
    assert (status, problem["code"]) == (422, "validation_failed")


async def test_retrying_to_a_suppressed_number_is_refused(
    start_daemon: DaemonFactory, short_tmp: Path, http: aiohttp.ClientSession
) -> None:
    d = await _daemon(
        start_daemon, short_tmp, delivery={"max_attempts": 1}, simulator={"failure_rate": 1.0}
    )
    failed_id = await send(http, d, "+17034570000")
    await wait_status(d, failed_id, Status.FAILED)
    # Then a provider takes a second message and reports the number invalid.
    d.simulator.settings = d.simulator.settings.model_copy(update={"failure_rate": 0.0})
    await wait_status(d, await send(http, d, "+17034570000"), Status.INVALID)
    connector = aiohttp.UnixConnector(path=str(d.config.control_socket))
    async with aiohttp.ClientSession(connector=connector) as session:
        status, problem = await Control(session).call("POST", f"/v1/messages/{failed_id}/retry")
    assert (status, problem["code"]) == (422, "number_suppressed")


# -- the bus and the health registry, without sockets ---------------------------------------


async def test_bus_never_blocks_and_counts_drops_per_subscriber() -> None:
    bus = EventBus(clock=lambda: 1.0, recent=3)
    slow = bus.subscribe(maxsize=2)
    fast = bus.subscribe(maxsize=100)
    for i in range(10):
        bus.publish("accepted", {"i": i})
    assert (slow.dropped, slow.queue.qsize()) == (8, 2)
    assert (fast.dropped, fast.queue.qsize()) == (0, 10)
    assert [e.payload["i"] for e in bus.recent()] == [7, 8, 9]
    assert [(await fast.get()).seq for _ in range(3)] == [1, 2, 3]
    bus.unsubscribe(slow)
    bus.publish("stats", {}, keep=False)
    assert slow.queue.qsize() == 2 and fast.queue.qsize() == 8
    assert bus.recent()[-1].type == "accepted"


def test_bus_rolls_counters_into_per_second_rates() -> None:
    bus = EventBus(clock=lambda: 5.0)
    for kind in ("accepted", "accepted", "sent", "delivered", "failed", "expired", "invalid"):
        bus.publish(kind, {})
    bus.publish("failover", {})
    assert bus.roll_rates() == {"at": 5.0, "accepted": 2, "sent": 1, "delivered": 1, "failed": 3}
    assert bus.roll_rates()["accepted"] == 0
    assert len(bus.rates()) == 2
    event = bus.recent()[0]
    assert json.loads(event.json()) == {"seq": 1, "at": 5.0, "type": "accepted", "payload": {}}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def providers() -> list[ProviderConfig]:
    return [
        DispatchdProviderConfig(name="a", url="http://a.test", weight=30),
        DispatchdProviderConfig(name="b", url="http://b.test", weight=70),
    ]


def test_health_window_share_latency_and_state() -> None:
    clock = Clock()
    health = HealthRegistry(providers(), clock=clock, window=60, min_calls=4)

    def call(name: str, ms: float, error: str | None = None) -> None:
        permit, _ = health.acquire(name)
        assert permit is not None
        ok = error is None
        health.finish(permit, ok=ok, transport_ok=ok, latency_ms=ms, error=error)

    for ms in (10.0, 20.0, 30.0, 40.0):
        call("a", ms)
    call("b", 5.0, "HTTP 500: boom")
    a, b = health.snapshot()
    assert (a["calls"], a["share"], a["success_rate"]) == (4, 0.8, 1.0)
    assert (a["p50_ms"], a["p95_ms"], a["in_flight"]) == (20.0, 40.0, 0)
    assert (a["state"], b["state"]) == ("healthy", "healthy")  # one failure is not a trend
    assert b["last_error"] == "HTTP 500: boom"
    for _ in range(2):
        call("b", 5.0, "HTTP 500: boom")
    assert health.snapshot()[1]["state"] == "degraded"
    clock.now += 61
    a, b = health.snapshot()
    assert (a["calls"], a["success_rate"], a["p50_ms"]) == (0, None, None)
    assert b["last_error"] == "HTTP 500: boom"  # the last error outlives the window


def test_health_overrides_shape_the_routing_candidates() -> None:
    health = HealthRegistry(providers(), clock=Clock())
    assert [(c.name, c.weight) for c in health.candidates()] == [("a", 30), ("b", 70)]
    assert health.pause("b") is True and health.pause("b") is False
    assert [c.name for c in health.candidates()] == ["a"]
    assert health.snapshot()[1]["state"] == ProviderState.PAUSED
    assert health.set_weight("a", 5) == 30
    assert [(c.name, c.weight) for c in health.candidates()] == [("a", 5)]
    health.pause("a")
    assert not health.routable() and health.candidates() == []
    assert health.resume("b") is True
    assert health.routable()
    health.set_weight("a", 30)
    assert health.get("a").weight_override is None  # back to the configured weight
    with pytest.raises(UnknownProvider):
        health.pause("c")
    for bad in (-1, 1_000_001, True, "3", 1.5):
        with pytest.raises(BadWeight):
            health.set_weight("a", bad)


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 95) == 3.0
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 95)) == (50.0, 95.0)


async def test_publishing_with_nobody_listening_is_cheap() -> None:
    bus = EventBus()
    loop = asyncio.get_running_loop()
    started = loop.time()
    for i in range(100_000):
        bus.publish("sent", {"id": i})
    # Generous bound: the point is O(1) with no awaiting, not a benchmark.
    assert loop.time() - started < 2.0
    assert len(bus.recent()) == 200
