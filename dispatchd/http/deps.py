"""What the HTTP layer's handlers share: the daemon's dependencies and the app keys."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from dispatchd.http.auth import KeyRing
from dispatchd.http.idempotency import Idempotency
from dispatchd.http.watch import Watchers
from dispatchd.metrics import Metrics
from dispatchd.service import Service

__all__ = ["DEPS", "WebDeps"]


@dataclass(frozen=True, slots=True)
class WebDeps:
    """What the HTTP layer needs from the rest of the daemon."""

    service: Service
    default_region: str
    ready: Callable[[], str | None]  # None when ready, else the reason it is not
    # Live-status waiters, woken from the event bus.
    watchers: Watchers
    # Idempotency-Key handling for the routes that create messages.
    idempotency: Idempotency
    # API keys; empty: no authentication (the daemon allows that on loopback only).
    keys: KeyRing = field(default_factory=lambda: KeyRing(()))
    metrics: Metrics | None = None  # None: no /metrics route
    metrics_auth: bool = False  # /metrics needs an API key too
    # `[server] public_url`: providers sign the URL they call, which is this plus the path.
    public_url: str = ""


DEPS = web.AppKey("deps", WebDeps)
