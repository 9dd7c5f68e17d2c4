"""GET /metrics against a real daemon: Prometheus text whose numbers follow what happens."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from dispatchd.daemon import Daemon
from tests.conftest import DaemonFactory, wait_for
from tests.helpers import NUMBER

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(http: aiohttp.ClientSession, d: Daemon) -> Samples:
    async with http.get(f"http://127.0.0.1:{d.port}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == CONTENT_TYPE_LATEST
        text = await resp.text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name` over every label set that includes `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


async def send(http: aiohttp.ClientSession, d: Daemon, to: str = NUMBER) -> str:
    payload = {"to_number": to, "message": "hi"}
    async with http.post(f"http://127.0.0.1:{d.port}/messages", json=payload) as resp:
        assert resp.status == 202
        return str((await resp.json())["id"])


@pytest.mark.slow
async def test_metrics_follow_messages_requests_and_provider_calls(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    d = await start_daemon()
    before = await scrape(http, d)
    assert value(before, "dispatchd_queue_depth") == 0
    assert value(before, "dispatchd_breaker_state", provider="provider1") == 0
    ids = [await send(http, d) for _ in range(3)]
    async with http.get(f"http://127.0.0.1:{d.port}/messages/{ids[0]}") as resp:
        assert resp.status == 200
    async with http.get(f"http://127.0.0.1:{d.port}/no/such/page") as resp:
        assert resp.status == 404
    seen: Samples = {}

    async def all_delivered() -> bool:
        seen.update(await scrape(http, d))
        return value(seen, "dispatchd_messages", status="delivered") == 3

    # The gauges are cached for a second, so this may take a couple of scrapes.
    await wait_for(all_delivered, within=10, interval=0.2, what="3 delivered in /metrics")
    requests = "dispatchd_http_requests_total"
    assert value(seen, requests, route="/messages", method="POST", code="202") == 3
    # Routes are the path templates, not the URLs: one series for every message id.
    assert value(seen, requests, route="/messages/{id}", method="GET", code="200") == 1
    assert value(seen, requests, route="unmatched", method="GET", code="404") == 1
    assert value(seen, "dispatchd_messages", status="queued") == 0
    assert value(seen, "dispatchd_queue_depth") == 0
    assert value(seen, "dispatchd_oldest_queued_age_seconds") == 0
    attempts = "dispatchd_provider_attempts_total"
    assert total(seen, attempts, outcome="accepted") == 3
    assert total(seen, attempts, outcome="unavailable") == 0
    assert total(seen, "dispatchd_provider_latency_seconds_count") == 3
    assert total(seen, "dispatchd_provider_latency_seconds_sum") > 0
    # The simulator's delivery reports came in over HTTP too.
    report = "/messages/{id}/delivery_status"
    assert value(seen, requests, route=report, method="POST", code="204") == 3


@pytest.mark.slow
async def test_failing_providers_show_in_attempts_breakers_and_the_queue(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    # One failure opens a circuit, and a long cooldown keeps it open for the test.
    d = await start_daemon(
        simulator={"down": True}, breaker={"failure_threshold": 1, "cooldown": 60}
    )
    await send(http, d)
    seen: Samples = {}

    async def both_open() -> bool:
        seen.update(await scrape(http, d))
        return all(
            value(seen, "dispatchd_breaker_state", provider=p) == 2
            for p in ("provider1", "provider2")
        )

    await wait_for(both_open, within=10, interval=0.2, what="both breakers open in /metrics")
    attempts = "dispatchd_provider_attempts_total"
    assert value(seen, attempts, provider="provider1", outcome="unavailable") == 1
    assert value(seen, attempts, provider="provider2", outcome="unavailable") == 1
    assert total(seen, attempts, outcome="accepted") == 0
    assert value(seen, "dispatchd_queue_depth") == 1
    assert value(seen, "dispatchd_messages", status="queued") == 1
    assert value(seen, "dispatchd_oldest_queued_age_seconds") > 0


async def test_each_daemon_counts_for_itself(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    first = await start_daemon()
    second = await start_daemon(storage={"path": str(tmp_path / "second.db")})
    await send(http, first)
    requests = "dispatchd_http_requests_total"

    async def first_counted() -> bool:
        samples = await scrape(http, first)
        return value(samples, requests, route="/messages", method="POST", code="202") == 1

    await wait_for(first_counted, what="the send counted")
    assert total(await scrape(http, second), requests, route="/messages") == 0
