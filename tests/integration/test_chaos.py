"""Provider faults against a real daemon: outages, flapping, hangs and misbehaving reports.

Each test starts an in-process daemon with the simulator mounted on its own port,
turns on faults through the simulator's `/_faults` endpoint, and checks the end
state of every message through the HTTP API only. The assertions hold with or
without health-aware routing: they look at where messages ended up and what the
providers saw, never at exact attempt counts.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import DaemonFactory, free_port, make_config, wait_for
from tests.helpers import NUMBER, Json

pytestmark = pytest.mark.slow  # providers that fail and hang for a while

UNFINISHED = ("queued", "sending", "sent")
# Small retries so outages measured in seconds are survived in seconds.
FAST_RETRY = {"backoff_initial": 0.1, "backoff_max": 0.4, "max_attempts": 100}


@dataclass
class Api:
    """The daemon's HTTP API and its mounted simulator's control endpoints."""

    http: aiohttp.ClientSession
    base: str

    async def send(self, text: str = "hello", to: str = NUMBER) -> str:
        body = {"to_number": to, "message": text}
        async with self.http.post(f"{self.base}/messages", json=body) as resp:
            data = await resp.json()
            assert resp.status == 202, data
            return str(data["id"])

    async def send_many(self, count: int, prefix: str = "m") -> list[str]:
        return list(await asyncio.gather(*(self.send(f"{prefix} {i}") for i in range(count))))

    async def get(self, msg_id: str) -> Json:
        async with self.http.get(f"{self.base}/messages/{msg_id}") as resp:
            assert resp.status == 200
            data: Json = await resp.json()
            return data

    async def count(self, status: str) -> int:
        async with self.http.get(f"{self.base}/messages?status={status}&limit=500") as resp:
            assert resp.status == 200
            return len((await resp.json())["items"])

    async def all_final(self) -> bool:
        return not any([await self.count(s) for s in UNFINISHED])

    async def wait_final(self, ids: list[str], within: float) -> list[Json]:
        """Poll until no message is unfinished; then every message, in `ids` order."""
        await wait_for(self.all_final, within=within, interval=0.05, what="every message final")
        return [await self.get(i) for i in ids]

    async def faults(self, name: str, body: Json | None = None, method: str = "PUT") -> Json:
        url = f"{self.base}/simulator/_faults/{name}"
        async with self.http.request(method, url, json=body) as resp:
            data: Json = await resp.json()
            assert resp.status == 200, data
            return data

    async def stats(self) -> Json:
        async with self.http.get(f"{self.base}/simulator/_stats") as resp:
            data: Json = await resp.json()
            return data


async def start(
    start_daemon: DaemonFactory,
    tmp_path: Path,
    http: aiohttp.ClientSession,
    *,
    weights: tuple[int, int] = (30, 70),
    provider_timeout: float = 5.0,
    **sections: Any,
) -> Api:
    port = free_port()
    sim = f"http://127.0.0.1:{port}/simulator"
    providers = [
        {"name": name, "url": f"{sim}/{name}", "weight": w, "timeout": provider_timeout}
        for name, w in zip(("provider1", "provider2"), weights, strict=True)
    ]
    d = await start_daemon(make_config(tmp_path, port, providers=providers, **sections))
    return Api(http, f"http://127.0.0.1:{d.port}")


def statuses(messages: list[Json]) -> set[str]:
    return {m["status"] for m in messages}


def history_details(msg: Json) -> list[str]:
    return [h["detail"] or "" for h in msg["history"]]


def outcomes(msg: Json, provider: str) -> list[str]:
    return [a["outcome"] for a in msg["attempts"] if a["provider"] == provider]


async def test_one_provider_down_moves_traffic_to_the_other_and_back(
    start_daemon: DaemonFactory, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    # provider1 takes most first attempts, so its outage is felt by most messages.
    api = await start(start_daemon, tmp_path, http, weights=(70, 30), delivery=FAST_RETRY)
    await api.faults("provider1", {"down": True})
    ids = await api.send_many(30, "outage")
    messages = await api.wait_final(ids, within=10)
    assert statuses(messages) == {"delivered"}
    assert {m["provider"] for m in messages} == {"provider2"}
    assert (await api.stats())["providers"]["provider1"]["down"] >= 1, "the outage was felt"

    await api.faults("provider1", method="DELETE")  # provider1 recovers
    used: set[str] = set()
    round_no = 0

    async def provider1_back() -> bool:
        nonlocal round_no
        round_no += 1
        batch = await api.send_many(10, f"after {round_no}")
        done = await api.wait_final(batch, within=10)
        assert statuses(done) == {"delivered"}
        used.update(m["provider"] for m in done)
        return "provider1" in used

    await wait_for(provider1_back, within=20, interval=0.2, what="provider1 to take traffic again")


async def test_both_down_for_a_window_then_everything_is_delivered(
    start_daemon: DaemonFactory, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    # The scenario is a 30 s outage; 2 s with 0.1-0.4 s backoff runs the same code
    # (every attempt fails, messages wait queued, retries continue) in a test-sized time.
    api = await start(start_daemon, tmp_path, http, delivery=FAST_RETRY)
    window_start = time.time()  # each provider's window starts at its change, a bit later
    for name in ("provider1", "provider2"):
        await api.faults(name, {"down_for": 2.0})
    ids = await api.send_many(40, "window")
    messages = await api.wait_final(ids, within=20)
    assert statuses(messages) == {"delivered"}
    # Messages either failed attempts during the window or (once both circuits were open)
    # waited untried; either way none was taken before the window ended.
    for m in messages:
        (taken,) = [a for a in m["attempts"] if a["outcome"] == "accepted"]
        started = datetime.fromisoformat(taken["started_at"]).timestamp()
        assert started >= window_start + 2.0 - 0.05, f"{m['id']} was sent during the window"
    assert any(
        "unavailable" in outcomes(m, p) for m in messages for p in ("provider1", "provider2")
    )
    providers = (await api.stats())["providers"]
    assert providers["provider1"]["down"] >= 1 and providers["provider2"]["down"] >= 1
    assert (await api.stats())["messages"]["duplicates"] == 0


async def test_a_flapping_provider_loses_nothing_and_sends_nothing_twice(
    start_daemon: DaemonFactory, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    api = await start(start_daemon, tmp_path, http, delivery=FAST_RETRY)
    # The main provider flaps (up 0.25 s, down 0.25 s); the backup fails half its calls,
    # so some attempts find no provider at all and go through the retry path.
    await api.faults("provider2", {"flap_period": 0.5})
    await api.faults("provider1", {"failure_rate": 0.5})
    ids: list[str] = []

    async def flapping_felt() -> bool:
        # 80 messages can all go out inside one up half: keep sending until one is not.
        ids.extend(await api.send_many(20, f"flap {len(ids)}"))
        return len(ids) >= 80 and (await api.stats())["providers"]["provider2"]["down"] >= 1

    await wait_for(flapping_felt, within=10, interval=0.05, what="provider2's down half")
    messages = await api.wait_final(ids, within=20)
    assert statuses(messages) == {"delivered"}
    for m in messages:
        accepted = [a for a in m["attempts"] if a["outcome"] == "accepted"]
        assert len(accepted) == 1, m["attempts"]
    stats = await api.stats()
    assert stats["messages"]["accepted"] == len(ids)
    assert stats["messages"]["duplicates"] == 0


async def test_a_hang_past_the_provider_timeout_fails_over(
    start_daemon: DaemonFactory, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    api = await start(start_daemon, tmp_path, http, weights=(100, 1), provider_timeout=0.5)
    await api.faults("provider1", {"hang_rate": 1.0})
    ids = await api.send_many(5, "hang")
    messages = await api.wait_final(ids, within=15)
    assert statuses(messages) == {"delivered"}
    assert {m["provider"] for m in messages} == {"provider2"}
    timed_out = [
        a
        for m in messages
        for a in m["attempts"]
        if a["provider"] == "provider1" and a["outcome"] == "unavailable"
    ]
    assert timed_out, "provider1 was never tried"
    assert all(a["http_status"] is None and a["latency_ms"] >= 450 for a in timed_out)
    assert (await api.stats())["providers"]["provider1"]["hung"] >= 1


async def test_duplicate_reports_are_recorded_and_change_nothing(
    start_daemon: DaemonFactory, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    api = await start(start_daemon, tmp_path, http, simulator={"duplicate_callback_rate": 1.0})
    msg_id = await api.send()

    async def second_report_seen() -> bool:
        return any("ignored" in d for d in history_details(await api.get(msg_id)))

    await wait_for(second_report_seen, what="the duplicate report")
    msg = await api.get(msg_id)
    assert msg["status"] == "delivered"
    assert [h["status"] for h in msg["history"]].count("delivered") == 2  # applied + ignored
    assert msg["error"] is None


async def test_out_of_order_reports_keep_the_first_final_status(
    start_daemon: DaemonFactory, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    # The simulator reports `failed`, then `delivered`: a final status never changes.
    api = await start(start_daemon, tmp_path, http, simulator={"out_of_order_rate": 1.0})
    msg_id = await api.send()

    async def late_report_seen() -> bool:
        return any("'delivered'" in d for d in history_details(await api.get(msg_id)))

    await wait_for(late_report_seen, what="the out-of-order report")
    msg = await api.get(msg_id)
    assert msg["status"] == "failed"
    assert msg["error"]["code"] == "reported_failed"
    assert [h["status"] for h in msg["history"]][-2:] == ["failed", "failed"]
    assert "ignored" in history_details(msg)[-1]


async def test_a_report_before_the_providers_200_is_applied(
    start_daemon: DaemonFactory, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    # Only the early report is sent (a normal one would come 30 s later), so the messages
    # can only become final in time through a report that outran the provider's 200.
    early = {"early_callback_rate": 1.0, "callback_delay": 30.0}
    api = await start(start_daemon, tmp_path, http, simulator=early)
    ids = await api.send_many(5, "early")
    messages = await api.wait_final(ids, within=10)
    assert statuses(messages) == {"delivered"}
    for m in messages:
        assert m["provider"] in ("provider1", "provider2")
        assert [a["outcome"] for a in m["attempts"]] == ["accepted"]
        # Never `sent`: the report had already made the message final.
        assert "sent" not in [h["status"] for h in m["history"]]
    assert (await api.stats())["messages"]["duplicates"] == 0


async def test_late_reports_find_the_message_sent_and_finish_it(
    start_daemon: DaemonFactory, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    api = await start(start_daemon, tmp_path, http)
    for name in ("provider1", "provider2"):
        await api.faults(name, {"callback_delay": 1.0})
    msg_id = await api.send()

    async def status_is(status: str) -> bool:
        return (await api.get(msg_id))["status"] == status

    await wait_for(lambda: status_is("sent"), what="the message to be sent")
    await wait_for(lambda: status_is("delivered"), what="the late report")
    history = (await api.get(msg_id))["history"]
    assert [h["status"] for h in history][-2:] == ["sent", "delivered"]
    sent_at, delivered_at = (datetime.fromisoformat(h["at"]) for h in history[-2:])
    assert (delivered_at - sent_at).total_seconds() >= 0.9


async def test_a_malformed_200_counts_as_accepted_and_is_not_resent(
    start_daemon: DaemonFactory, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    api = await start(start_daemon, tmp_path, http, simulator={"malformed_rate": 1.0})
    ids = await api.send_many(5, "malformed")
    messages = await api.wait_final(ids, within=10)
    assert statuses(messages) == {"delivered"}
    for m in messages:
        assert [(a["outcome"], a["http_status"]) for a in m["attempts"]] == [("accepted", 200)]
    stats = await api.stats()
    requests = sum(p["requests"] for p in stats["providers"].values())
    assert requests == len(ids), "a 2xx without a readable id must not be sent again"
    assert sum(p["malformed"] for p in stats["providers"].values()) == len(ids)
