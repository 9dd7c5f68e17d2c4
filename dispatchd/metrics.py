"""Prometheus metrics, served as text at `GET /metrics`.

Counters and histograms are bumped where things happen (every HTTP answer, every provider
call); the message counts, queue and breaker gauges are read when scraped, from a store
query cached for `cache_for` seconds so frequent scrapes cost the database little.

- `dispatchd_http_requests_total{route, method, code}`: HTTP answers; `route` is the matched
  path template (`/messages/{id}`), `unmatched` for 404/405, so labels stay few.
- `dispatchd_messages{status}`: messages stored in each status.
- `dispatchd_provider_attempts_total{provider, outcome}`: provider calls by outcome
  (`accepted`, `unavailable`, `rejected`).
- `dispatchd_provider_latency_seconds{provider}`: histogram of provider answer times.
- `dispatchd_breaker_state{provider}`: 0 closed, 1 half-open, 2 open.
- `dispatchd_queue_depth`: queued messages (due now or waiting for a retry).
- `dispatchd_oldest_queued_age_seconds`: age of the oldest queued message, 0 if none.
- `dispatchd_retention_deleted_rows_total{table}`: rows retention deleted (`messages`,
  `attempts`, `history`, `callbacks`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from dispatchd.domain.breaker import BreakerState
from dispatchd.domain.models import Status
from dispatchd.store.api import QueueStats

logger = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST
UNMATCHED = "unmatched"
BREAKER_VALUES = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}
# Anything else (a fuzzer's invented method) is counted as "other", so labels stay bounded.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """dispatchd's metrics, in a registry of their own."""

    def __init__(
        self,
        *,
        stats: Callable[[], Awaitable[QueueStats]],
        breakers: Callable[[], Mapping[str, BreakerState]],
        clock: Callable[[], float] = time.time,
        cache_for: float = 1.0,
    ) -> None:
        self._stats = stats
        self._breakers = breakers
        self._clock = clock
        self._cache_for = cache_for
        self._read_at: float | None = None
        self._request_children: dict[tuple[str, str, int], Counter] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "dispatchd_http_requests",
            "HTTP requests answered, by route template, method and status code.",
            ["route", "method", "code"],
            registry=r,
        )
        self.messages = Gauge(
            "dispatchd_messages", "Messages stored, by status.", ["status"], registry=r
        )
        self.attempts = Counter(
            "dispatchd_provider_attempts",
            "Provider calls, by provider and outcome (accepted, unavailable, rejected, throttled).",
            ["provider", "outcome"],
            registry=r,
        )
        self.throttled = Counter(
            "dispatchd_provider_throttled",
            "Throttle answers (HTTP 429, Twilio 20429, SMPP ESME_RTHROTTLED...) by provider.",
            ["provider"],
            registry=r,
        )
        self.latency = Histogram(
            "dispatchd_provider_latency_seconds",
            "Time a provider took to answer a call (or to fail it).",
            ["provider"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.breaker = Gauge(
            "dispatchd_breaker_state",
            "Circuit breaker of each provider: 0 closed, 1 half-open, 2 open.",
            ["provider"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "dispatchd_queue_depth", "Messages queued for delivery (due or waiting).", registry=r
        )
        self.oldest_age = Gauge(
            "dispatchd_oldest_queued_age_seconds",
            "Age of the oldest queued message in seconds; 0 when none is queued.",
            registry=r,
        )

        self.retention_deleted = Counter(
            "dispatchd_retention_deleted_rows",
            "Rows deleted by retention, by table (messages, attempts, history, callbacks).",
            ["table"],
            registry=r,
        )

    def observe_request(self, route: str, method: str, code: int) -> None:
        """Count one HTTP answer."""
        # On every request: the labelled child is looked up once per label set, then cached.
        # Keyed on the bounded label, not the raw method: a fuzzer's methods must not grow it.
        key = (route, method if method in METHODS else "other", code)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(*key[:2], str(code))
        child.inc()

    def observe_call(self, provider: str, outcome: str, latency_ms: float) -> None:
        """Count one provider call and its latency."""
        self.attempts.labels(provider, outcome).inc()
        if outcome == "throttled":
            self.throttled.labels(provider).inc()
        self.latency.labels(provider).observe(latency_ms / 1000)

    async def refresh(self) -> None:
        """Read the gauges' sources, unless they were read less than `cache_for` ago."""
        now = self._clock()
        if self._read_at is not None and now - self._read_at < self._cache_for:
            return
        stats = await self._stats()
        self._read_at = self._clock()
        for status in Status:
            self.messages.labels(status.value).set(stats.counts.get(status.value, 0))
        self.queue_depth.set(stats.counts.get(Status.QUEUED.value, 0))
        oldest = stats.oldest_queued_at
        self.oldest_age.set(max(0.0, now - oldest) if oldest is not None else 0.0)
        for name, state in self._breakers().items():
            self.breaker.labels(name).set(BREAKER_VALUES[state])

    async def exposition(self) -> bytes:
        """Every metric in the Prometheus text format."""
        await self.refresh()
        return generate_latest(self.registry)

    def middleware(self) -> Middleware:
        """Count every answer by its route template, so labels stay few whatever the URL."""

        @web.middleware
        async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
            resource = request.match_info.route.resource
            route = UNMATCHED if resource is None else resource.canonical
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                self.observe_request(route, request.method, exc.status)
                raise
            self.observe_request(route, request.method, response.status)
            return response

        return count


async def metrics_response(metrics: Metrics) -> web.Response:
    """The `/metrics` answer."""
    body = await metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
