"""Health-aware routing: circuit breakers and weight shifts, against a real daemon.

The daemon's simulator stands in for the providers; faults are switched through its
`/_faults` endpoint and what each provider saw is read from `/_stats`. The breaker
settings are test-sized (cooldowns under two seconds); state is polled, never slept on.
The last tests drive the HealthRegistry alone with a fake clock.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from dispatchd.config import DispatchdProviderConfig, ProviderConfig
from dispatchd.daemon import Daemon
from dispatchd.domain.breaker import BreakerSettings, BreakerState
from dispatchd.events import EventBus, Subscription
from dispatchd.health import HealthRegistry, ProviderState, announce
from tests.conftest import DaemonFactory, free_port, make_config, wait_for
from tests.helpers import NUMBER, Json


@dataclass
class Rig:
    """A started daemon, its HTTP API and simulator, and a subscription to its events."""

    daemon: Daemon
    http: aiohttp.ClientSession
    events: Subscription

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.daemon.port}"

    async def send(self, text: str = "hello") -> str:
        body = {"to_number": NUMBER, "message": text}
        async with self.http.post(f"{self.base}/messages", json=body) as resp:
            data = await resp.json()
            assert resp.status == 202, data
            return str(data["id"])

    async def send_many(self, count: int, prefix: str) -> list[str]:
        # One by one, so acceptance order is the order of the list.
        return [await self.send(f"{prefix} {i}") for i in range(count)]

    async def get(self, msg_id: str) -> Json:
        async with self.http.get(f"{self.base}/messages/{msg_id}") as resp:
            assert resp.status == 200
            data: Json = await resp.json()
            return data

    async def wait_delivered(self, ids: list[str], within: float = 10.0) -> list[Json]:
        messages: dict[str, Json] = {}

        async def all_delivered() -> bool:
            for msg_id in ids:
                if messages.get(msg_id, {}).get("status") != "delivered":
                    messages[msg_id] = msg = await self.get(msg_id)
                    assert msg["status"] in ("queued", "sending", "sent", "delivered"), msg
                    if msg["status"] != "delivered":
                        return False
            return True

        await wait_for(all_delivered, within=within, interval=0.02, what=f"{len(ids)} delivered")
        return [messages[i] for i in ids]

    async def faults(self, name: str, body: Json | None = None) -> None:
        method = "PUT" if body is not None else "DELETE"
        url = f"{self.base}/simulator/_faults/{name}"
        async with self.http.request(method, url, json=body) as resp:
            assert resp.status == 200, await resp.text()

    async def requests(self, name: str) -> int:
        async with self.http.get(f"{self.base}/simulator/_stats") as resp:
            stats = await resp.json()
        return int(stats["providers"].get(name, {}).get("requests", 0))

    async def control_snapshot(self) -> dict[str, Json]:
        """The providers of the control socket's snapshot, by name."""
        connector = aiohttp.UnixConnector(path=str(self.daemon.config.control_socket))
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get("http://d/v1/snapshot") as resp,
        ):
            snap = await resp.json()
        return {p["name"]: p for p in snap["providers"]}

    def breaker(self, name: str) -> BreakerState:
        return self.daemon.health.get(name).breaker.state

    def published(self) -> list[tuple[str, Json]]:
        """Events published since the last call (breaker and weight ones only)."""
        out = []
        while not self.events.queue.empty():
            event = self.events.queue.get_nowait()
            if event.type.startswith("breaker_") or event.type == "weight_shifted":
                out.append((event.type, dict(event.payload)))
        assert self.events.dropped == 0
        return out


RigFactory = Any


@pytest.fixture
async def rig(start_daemon: DaemonFactory, short_tmp: Path) -> AsyncIterator[RigFactory]:
    """`await rig(weights=(a, b), breaker={...}, delivery={...})` starts a daemon."""
    async with aiohttp.ClientSession() as http:

        async def start(
            *, weights: tuple[int, int] = (50, 50), breaker: Json, **sections: Any
        ) -> Rig:
            port = free_port()
            sim = f"http://127.0.0.1:{port}/simulator"
            providers = [
                {"name": name, "url": f"{sim}/{name}", "weight": w, "timeout": 2.0}
                for name, w in zip(("provider1", "provider2"), weights, strict=True)
            ]
            cfg = make_config(short_tmp, port, providers=providers, breaker=breaker, **sections)
            daemon = await start_daemon(cfg)
            return Rig(daemon, http, daemon.events.subscribe(maxsize=100_000))

        yield start


def providers_of(messages: list[Json]) -> set[str]:
    return {m["provider"] for m in messages}


# -- the breaker ----------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_failing_provider_is_cut_off_then_probed_and_closed(
    rig: RigFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dispatchd.health")
    # provider1 takes nearly every first pick, so its outage is felt at once.
    r: Rig = await rig(
        weights=(100, 1),
        breaker={"failure_threshold": 3, "cooldown": 2.0, "probes": 2, "min_calls": 1000},
    )
    await r.faults("provider1", {"down": True})
    first = await r.wait_delivered(await r.send_many(8, "before"))
    assert providers_of(first) == {"provider2"}, "failover within the attempt still works"
    assert r.breaker("provider1") is BreakerState.OPEN
    seen_when_opened = await r.requests("provider1")
    assert 3 <= seen_when_opened <= 8

    snap = await r.control_snapshot()
    p1 = snap["provider1"]
    assert (p1["state"], p1["breaker"], p1["effective_weight"]) == ("circuit_open", "open", 0)
    assert "3 failures in a row" in p1["breaker_reason"]
    assert p1["breaker_until"] is not None
    assert snap["provider2"]["state"] == "healthy"

    # While open, provider1 gets nothing, and messages record no attempt there.
    during = await r.wait_delivered(await r.send_many(8, "while open"))
    assert r.breaker("provider1") is BreakerState.OPEN, "the cooldown outlasts 8 messages"
    assert await r.requests("provider1") == seen_when_opened
    for m in during:
        assert [a["provider"] for a in m["attempts"]] == ["provider2"]

    # The provider recovers; after the cooldown probes go through and the circuit closes.
    await r.faults("provider1")
    round_no = 0

    async def closed() -> bool:
        nonlocal round_no
        round_no += 1
        await r.wait_delivered([await r.send(f"probing {round_no}")])
        return r.breaker("provider1") is BreakerState.CLOSED

    await wait_for(closed, within=10, interval=0.05, what="provider1's circuit to close")
    after = await r.wait_delivered(await r.send_many(10, "after"))
    assert "provider1" in providers_of(after), "provider1 takes traffic again"

    events = [(kind, p["reason"]) for kind, p in r.published() if kind.startswith("breaker_")]
    assert [kind for kind, _ in events] == ["breaker_opened", "breaker_half_open", "breaker_closed"]
    assert events[0][1] == "3 failures in a row"
    assert events[2][1] == "2 probes succeeded"
    logged = [m for m in caplog.messages if m.startswith("event=breaker_")]
    assert logged[0].startswith("event=breaker_opened provider=provider1 from=closed to=open")
    assert "reason='3 failures in a row'" in logged[0]
    final = (await r.control_snapshot())["provider1"]
    assert (final["breaker"], final["breaker_reason"]) == ("closed", "2 probes succeeded")


@pytest.mark.slow
async def test_with_every_circuit_open_messages_wait_then_go_oldest_first(rig: RigFactory) -> None:
    # One delivery at a time, so the order providers take the messages is observable.
    r: Rig = await rig(
        breaker={"failure_threshold": 2, "cooldown": 1.5, "probes": 1, "min_calls": 1000},
        delivery={"concurrency": 1},  # max_attempts stays 5: waiting must not use them up
    )
    for name in ("provider1", "provider2"):
        await r.faults(name, {"down": True})
    tripwire = await r.send("tripwire")

    def both_open() -> bool:
        return all(r.breaker(n) is BreakerState.OPEN for n in ("provider1", "provider2"))

    await wait_for(both_open, what="both circuits to open")
    calls = await r.requests("provider1") + await r.requests("provider2")
    waiting = await r.send_many(8, "waiting")
    assert not r.daemon.health.routable()
    for msg_id in waiting:  # queued untouched: not claimed, no attempt used
        msg = await r.get(msg_id)
        assert (msg["status"], msg["attempts"]) == ("queued", []), msg
    assert await r.requests("provider1") + await r.requests("provider2") == calls
    assert (await r.get(tripwire))["status"] == "queued"

    sent_order: list[str] = []
    sub = r.daemon.events.subscribe(maxsize=10_000)
    for name in ("provider1", "provider2"):
        await r.faults(name)

    async def collected() -> bool:
        while not sub.queue.empty():
            event = sub.queue.get_nowait()
            if event.type == "sent":
                sent_order.append(str(event.payload["id"]))
        return len(sent_order) == 9

    # No new message arrives to wake the worker: it wakes itself when the cooldown ends.
    await wait_for(collected, within=10, what="every waiting message to be sent")
    messages = await r.wait_delivered([tripwire, *waiting])
    assert sent_order == [tripwire, *waiting], "oldest first"
    assert {m["status"] for m in messages} == {"delivered"}
    assert all(m["error"] is None for m in messages)


async def answering(aiohttp_server: Any, status: int) -> str:
    """A provider URL that answers every request with `status`."""

    async def handle(request: web.Request) -> web.Response:
        if status == 200:
            return web.json_response({"message_id": "ok"})
        return web.json_response({"error": f"answer {status}"}, status=status)

    app = web.Application()
    app.router.add_post("/send", handle)
    return str((await aiohttp_server(app)).make_url("/send"))


async def start_with(
    start_daemon: DaemonFactory,
    tmp_path: Path,
    urls: tuple[str, str],
    cooldown: float = 0.2,
    **delivery: Any,
) -> Daemon:
    providers = [
        {"name": "provider1", "url": urls[0], "weight": 1},
        {"name": "provider2", "url": urls[1], "weight": 0},
    ]
    cfg = make_config(
        tmp_path,
        free_port(),
        providers=providers,
        simulator={"enabled": False},
        breaker={"failure_threshold": 2, "cooldown": cooldown},
        delivery=delivery,
    )
    return await start_daemon(cfg)


async def post(d: Daemon, count: int) -> list[str]:
    ids = []
    async with aiohttp.ClientSession() as http:
        for i in range(count):
            body = {"to_number": NUMBER, "message": f"m{i}"}
            async with http.post(f"http://127.0.0.1:{d.port}/messages", json=body) as resp:
                assert resp.status == 202
                ids.append(str((await resp.json())["id"]))
    return ids


async def test_a_rejection_is_not_held_against_the_provider(
    start_daemon: DaemonFactory, tmp_path: Path, aiohttp_server: Any
) -> None:
    urls = (await answering(aiohttp_server, 400), await answering(aiohttp_server, 200))
    d = await start_with(start_daemon, tmp_path, urls)
    await post(d, 6)
    store = d.store

    async def all_sent() -> bool:
        return (await store.counts()).get("sent", 0) == 6

    await wait_for(all_sent, what="six messages sent by provider2")
    provider1 = d.health.get("provider1")
    assert provider1.breaker.state is BreakerState.CLOSED, "six 400s open nothing"
    assert provider1.consecutive_failures == 6  # still visible as not accepting


async def test_a_rejection_while_the_other_circuit_is_open_is_no_verdict(
    start_daemon: DaemonFactory, tmp_path: Path, aiohttp_server: Any
) -> None:
    urls = (await answering(aiohttp_server, 400), await answering(aiohttp_server, 503))
    d = await start_with(start_daemon, tmp_path, urls, cooldown=30.0, max_attempts=4)
    (msg_id,) = await post(d, 1)
    store = d.store

    async def final() -> bool:
        msg = await store.get(msg_id)
        return msg is not None and msg.status.final

    await wait_for(final, what="the message to end")
    msg = await store.get(msg_id)
    assert msg is not None
    # provider2 was left out of later attempts while its circuit was open; provider1's
    # 400s alone never made the message "rejected by every provider".
    assert (msg.status, msg.error_code) == ("failed", "providers_unavailable")
    assert msg.attempt_count == 4
    assert [a.provider for a in msg.attempts].count("provider2") == 2, "then it was open"
    assert [a.provider for a in msg.attempts].count("provider1") == 4


# -- weight shifting --------------------------------------------------------------------------

SHIFTING = {
    # The circuit never opens here: this is the ground between healthy and open.
    "failure_threshold": 10_000,
    "min_calls": 1_000_000,
    "window": 1.0,
    "slow_ms": 50.0,
    "shift_step": 0.25,
    "shift_interval": 0.2,
    "max_shift": 0.5,
}


@pytest.mark.parametrize(
    ("fault", "reason"),
    [({"latency": 0.08}, "took 50 ms or more"), ({"failure_rate": 0.5}, "recent calls failed")],
    ids=["slow", "flaky"],
)
@pytest.mark.slow
async def test_a_misbehaving_provider_loses_weight_gradually_and_gets_it_back(
    rig: RigFactory, fault: Json, reason: str
) -> None:
    r: Rig = await rig(weights=(50, 50), breaker=SHIFTING)
    await r.faults("provider1", fault)
    round_no = 0

    async def shifted_to_the_bound() -> bool:
        nonlocal round_no
        round_no += 1
        await r.wait_delivered(await r.send_many(3, f"load {round_no}"))
        return r.daemon.health.get("provider1").breaker.shift >= 0.5

    await wait_for(shifted_to_the_bound, within=10, interval=0, what="provider1's weight shift")
    p1 = (await r.control_snapshot())["provider1"]
    assert (p1["state"], p1["breaker"]) == ("degraded", "closed")
    assert (p1["configured_weight"], p1["weight_factor"], p1["effective_weight"]) == (50, 0.5, 25)
    assert reason in p1["shift_reason"]
    routed = {c.name: c.weight for c in r.daemon.health.candidates()}
    assert routed == {"provider1": 25, "provider2": 50}

    # It behaves again: with or without traffic the shift decays back to the full weight.
    await r.faults("provider1")

    async def restored() -> bool:
        return (await r.control_snapshot())["provider1"]["effective_weight"] == 50

    await wait_for(restored, within=10, interval=0.05, what="provider1's weight to come back")
    p1 = (await r.control_snapshot())["provider1"]
    assert (p1["weight_factor"], p1["shift_reason"]) == (1.0, None)
    shifts = [p for kind, p in r.published() if kind == "weight_shifted"]
    assert all(p["provider"] == "provider1" for p in shifts)
    factors = [p["weight_factor"] for p in shifts]
    assert factors[:2] == [0.75, 0.5], "one bounded step per interval"
    assert factors[-1] == 1.0 and factors[-2] == 0.75, "and back the same way"
    assert reason in shifts[0]["reason"]
    assert not [kind for kind, _ in r.published() if kind.startswith("breaker_")]


# -- the registry alone, with a fake clock ----------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# No weight shifting here: these tests are about the circuit alone.
FAST = BreakerSettings(failure_threshold=2, cooldown=10.0, probes=1, min_calls=1000, max_shift=0)


def configs(w1: int = 30, w2: int = 70, timeout: float = 5.0) -> list[ProviderConfig]:
    return [
        DispatchdProviderConfig(name="a", url="http://a.test", weight=w1, timeout=timeout),
        DispatchdProviderConfig(name="b", url="http://b.test", weight=w2, timeout=timeout),
    ]


def fail(health: HealthRegistry, name: str, times: int) -> None:
    for _ in range(times):
        permit, _ = health.acquire(name)
        assert permit is not None
        health.finish(permit, ok=False, transport_ok=False, latency_ms=5, error="HTTP 503")


def test_open_and_half_open_circuits_shape_candidates_and_capacity() -> None:
    clock = Clock()
    health = HealthRegistry(configs(), clock=clock, breaker=FAST)
    assert health.capacity() is None and health.next_change_at() is None
    fail(health, "a", 2)
    assert [c.name for c in health.candidates()] == ["b"]
    assert health.capacity() is None, "b's circuit is closed: no limit"
    fail(health, "b", 2)
    assert health.candidates() == [] and health.capacity() == 0 and not health.routable()
    assert health.next_change_at() == 1010.0
    assert health.acquire("a") == (None, [])
    clock.now = 1010.0
    assert health.capacity() == 2, "one probe slot per cooled-down circuit"
    changes = health.tick()
    assert [(c.provider, c.event) for c in changes] == [
        ("a", "breaker_half_open"),
        ("b", "breaker_half_open"),
    ]
    probe, _ = health.acquire("a")
    assert probe is not None and probe.probe
    assert health.acquire("a") == (None, []), "one probe at a time"
    assert [c.name for c in health.candidates()] == ["b"] and health.capacity() == 1
    health.release(probe)  # cancelled: the slot comes back, nothing is counted
    assert health.capacity() == 2 and health.get("a").in_flight == 0
    probe, _ = health.acquire("a")
    assert probe is not None
    changes = health.finish(probe, ok=True, transport_ok=True, latency_ms=5, error=None)
    assert [c.event for c in changes] == ["breaker_closed"]
    assert health.capacity() is None
    snap = {p["name"]: p for p in health.snapshot()}
    assert snap["a"]["state"] == ProviderState.HEALTHY
    assert (snap["b"]["state"], snap["b"]["breaker"]) == ("circuit_open", "half_open")


def test_a_late_answer_from_before_the_opening_is_no_probe() -> None:
    clock = Clock()
    health = HealthRegistry(configs(), clock=clock, breaker=FAST)
    early, _ = health.acquire("a")  # admitted while closed, answers after the cooldown
    assert early is not None and not early.probe
    fail(health, "a", 2)
    clock.now += 10
    probe, _ = health.acquire("a")
    assert probe is not None and probe.probe
    assert health.finish(early, ok=True, transport_ok=True, latency_ms=5, error=None) == []
    assert health.get("a").breaker.state is BreakerState.HALF_OPEN
    assert health.acquire("a")[0] is None, "the probe is still out"


def test_reconfigure_keeps_run_time_state_of_surviving_providers() -> None:
    clock = Clock()
    health = HealthRegistry(configs(), clock=clock, breaker=FAST)
    health.pause("b")
    health.set_weight("a", 5)
    in_flight, _ = health.acquire("a")
    fail(health, "a", 2)
    assert health.get("a").breaker.state is BreakerState.OPEN

    longer = replace(FAST, cooldown=60.0)
    new = [
        DispatchdProviderConfig(name="a", url="http://a2.test", weight=40, timeout=1.0),
        DispatchdProviderConfig(name="c", url="http://c.test", weight=10),
    ]
    health.reconfigure(new, longer)
    assert health.names == ["a", "c"]
    a = health.get("a")
    assert (a.configured_weight, a.weight, a.config.timeout) == (40, 5, 1.0)
    assert a.breaker.state is BreakerState.OPEN and a.breaker.settings == longer
    assert health.next_change_at() == 1060.0, "the new cooldown applies to the open circuit"
    assert a.in_flight == 1
    assert [c.name for c in health.candidates()] == ["c"]
    assert health.breaker_settings == longer
    # The operator's weight goes once the configuration says the same.
    health.reconfigure([DispatchdProviderConfig(name="a", url="http://a.test", weight=5)], longer)
    assert health.get("a").weight_override is None
    # A call to a provider that is gone ends harmlessly.
    assert in_flight is not None
    health.finish(in_flight, ok=True, transport_ok=True, latency_ms=1, error=None)
    assert in_flight.provider.in_flight == 0
    assert health.acquire("b") == (None, []), "a provider that is gone takes no calls"


def test_announce_logs_and_publishes_each_change(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dispatchd.health")
    clock = Clock()
    bus = EventBus(clock=clock)
    sub = bus.subscribe()
    health = HealthRegistry(configs(), clock=clock, breaker=FAST)
    permit, _ = health.acquire("a")
    assert permit is not None
    health.finish(permit, ok=False, transport_ok=False, latency_ms=5, error="HTTP 500")
    permit, _ = health.acquire("a")
    assert permit is not None
    announce(
        health.finish(permit, ok=False, transport_ok=False, latency_ms=5, error="HTTP 500"), bus
    )
    event = sub.queue.get_nowait()
    assert event.type == "breaker_opened"
    assert event.payload == {
        "provider": "a",
        "from": "closed",
        "to": "open",
        "reason": "2 failures in a row",
        "effective_weight": 0,
        "weight_factor": 1.0,
    }
    assert caplog.messages == [
        "event=breaker_opened provider=a from=closed to=open effective_weight=0 "
        "reason='2 failures in a row'"
    ]
