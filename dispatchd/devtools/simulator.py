"""Simulated SMS providers speaking the real providers' wire format.

`POST /{name}` with JSON `{"to_number", "message", "callback_url"}` answers
`200 {"message_id": "<uuid4>"}`, or `500 {"error": "Something went wrong"}` for a
`failure_rate` share of requests, after `latency` seconds; `callback_delay`
seconds later it POSTs `{"status", "message_id"}` to `callback_url`. Statuses are
drawn from the delivered/failed/invalid weights, except that numbers ending in
`invalid_suffix` (default `0000`) are always reported `invalid`.

Fault injection. The `[simulator]` section holds the defaults for every provider
name; `hang_rate` leaves a request unanswered until the client gives up; `down`
answers every request `503 {"error": "Service unavailable"}` at once, and so do
the `down_after`/`down_for` window and the second half of every `flap_period`;
a larger `latency` answers slowly and a larger `callback_delay` reports late;
`duplicate_callback_rate` sends a report twice, `out_of_order_rate` sends a
contrary report (`failed`, or `delivered` if the real one is `failed`) just
before the real one, `early_callback_rate` sends the report before answering
`200`, and `malformed_rate` answers `200` with a body that is not JSON (the
report still follows). `callback_retry_for` keeps retrying a report the
receiver did not take (no connection or 5xx) for that many seconds.

Control endpoints, beside the providers (so under `/simulator/` on the daemon):
- `GET /_faults`: the defaults and every provider's overrides.
- `GET /_faults/{name}`: one provider's overrides and effective settings.
- `PUT /_faults/{name}` with a JSON object of `[simulator]` keys replaces that
  provider's overrides (`{}` clears them), `PATCH` merges into them, `DELETE`
  clears them. A change naming `down_after` or `down_for` starts the window's
  clock (and `flap_period`'s) for that provider. Bad keys or values get `400`.
- `GET /_stats`: per-provider request counts by outcome, report counts, and how
  often each `(to_number, message)` pair was accepted (`duplicates` counts the
  extra acceptances; `?pairs=all` lists every pair). `DELETE /_stats` resets it.

With a seeded `rng` (and a given order of requests) every outcome is reproducible:
a fault whose rate is 0 or 1 draws nothing, so unused faults leave the sequence
of draws exactly as it was without them.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from dispatchd.config import SimulatorConfig, describe
from dispatchd.devtools.callbacks import Reporter

logger = logging.getLogger(__name__)

# `(to_number, message)` pairs counted at most; beyond it they are only tallied, so a
# long-running simulator's memory stays bounded.
MAX_TRACKED_PAIRS = 200_000
# Keys a provider may not override: they concern the simulator as a whole.
NOT_PER_PROVIDER = frozenset({"enabled", "smpp_port"})
WINDOW_KEYS = frozenset({"down_after", "down_for", "flap_period"})


@dataclass
class ProviderCounts:
    """What one simulated provider answered."""

    requests: int = 0
    accepted: int = 0
    errors: int = 0
    down: int = 0
    hung: int = 0
    malformed: int = 0
    bad_requests: int = 0
    throttled: int = 0


@dataclass
class SimulatorStats:
    """Counts for `GET /_stats`."""

    providers: dict[str, ProviderCounts] = field(default_factory=dict)
    pairs: Counter[tuple[str, str]] = field(default_factory=Counter)
    untracked: int = 0
    reports_sent: int = 0
    reports_failed: int = 0
    report_retries: int = 0

    def provider(self, name: str) -> ProviderCounts:
        counts = self.providers.get(name)
        if counts is None:
            counts = self.providers[name] = ProviderCounts()
        return counts

    def count_pair(self, to_number: str, message: str) -> None:
        key = (to_number, message)
        if key in self.pairs or len(self.pairs) < MAX_TRACKED_PAIRS:
            self.pairs[key] += 1
        else:
            self.untracked += 1

    def as_json(self, *, all_pairs: bool = False) -> dict[str, Any]:
        def listed(items: list[tuple[tuple[str, str], int]]) -> list[dict[str, Any]]:
            return [{"to_number": t, "message": m, "count": c} for (t, m), c in items]

        repeated = sorted((k, c) for k, c in self.pairs.items() if c > 1)
        data: dict[str, Any] = {
            "providers": {n: asdict(c) for n, c in sorted(self.providers.items())},
            "reports": {
                "sent": self.reports_sent,
                "failed": self.reports_failed,
                "retries": self.report_retries,
            },
            "messages": {
                "accepted": sum(self.pairs.values()) + self.untracked,
                "distinct": len(self.pairs),
                "duplicates": sum(c - 1 for _, c in repeated),
                "untracked": self.untracked,
                "duplicated": listed(repeated),
            },
        }
        if all_pairs:
            data["messages"]["pairs"] = listed(sorted(self.pairs.items()))
        return data


class FaultError(ValueError):
    """A `/_faults` change with unknown keys or bad values."""


class SimulatorState:
    """Live, mutable behaviour of the simulated providers (tests may change it at run time)."""

    def __init__(
        self,
        settings: SimulatorConfig,
        rng: random.Random | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self.rng = rng or random.Random()
        self.clock = clock
        self.received: list[dict[str, str]] = []
        self.keep_received = False
        self.stats = SimulatorStats()
        self._started = clock()
        self._overrides: dict[str, dict[str, Any]] = {}
        self._window_since: dict[str, float] = {}
        self._resolved: dict[str, SimulatorConfig] = {}

    @property
    def settings(self) -> SimulatorConfig:
        """The defaults for every provider name."""
        return self._settings

    @settings.setter
    def settings(self, value: SimulatorConfig) -> None:
        self._settings = value
        self._resolved.clear()

    @property
    def overrides(self) -> dict[str, dict[str, Any]]:
        return {name: dict(patch) for name, patch in self._overrides.items()}

    def settings_for(self, name: str) -> SimulatorConfig:
        """The defaults with `name`'s overrides applied."""
        resolved = self._resolved.get(name)
        if resolved is None:
            patch = self._overrides.get(name)
            resolved = self._merge(patch) if patch else self._settings
            self._resolved[name] = resolved
        return resolved

    def set_faults(self, name: str, patch: dict[str, Any], *, replace: bool) -> SimulatorConfig:
        """Replace or merge `name`'s overrides; raise FaultError and change nothing if bad."""
        refused = sorted(NOT_PER_PROVIDER & patch.keys())
        if refused:
            raise FaultError(f"{', '.join(refused)}: cannot be set per provider")
        merged = dict(patch) if replace else {**self._overrides.get(name, {}), **patch}
        resolved = self._merge(merged)
        self._overrides[name] = {k: getattr(resolved, k) for k in merged}
        self._resolved[name] = resolved
        if WINDOW_KEYS & patch.keys():
            self._window_since[name] = self.clock()
        logger.info("event=simulator_faults provider=%s overrides=%s", name, merged)
        return resolved

    def clear_faults(self, name: str) -> None:
        self._overrides.pop(name, None)
        self._window_since.pop(name, None)
        self._resolved.pop(name, None)

    def _merge(self, patch: dict[str, Any]) -> SimulatorConfig:
        try:
            return SimulatorConfig.model_validate({**self._settings.model_dump(), **patch})
        except ValidationError as exc:
            raise FaultError(describe(exc)) from exc

    def is_down(self, name: str, settings: SimulatorConfig) -> bool:
        """Whether `name` answers 503 now: `down`, inside the window, or a flap's low half."""
        if settings.down:
            return True
        elapsed = self.clock() - self._window_since.get(name, self._started)
        start = settings.down_after
        if settings.down_for > 0 and start <= elapsed < start + settings.down_for:
            return True
        period = settings.flap_period
        return period > 0 and elapsed % period >= period / 2

    def chance(self, rate: float) -> bool:
        """True for a `rate` share of calls; draws from the rng only when 0 < rate < 1."""
        if rate <= 0:
            return False
        if rate >= 1:
            return True
        return self.rng.random() < rate

    def report_status(self, to_number: str) -> str:
        return self._report_status(to_number, self._settings)

    def _report_status(self, to_number: str, s: SimulatorConfig) -> str:
        suffix = s.invalid_suffix
        if suffix and to_number.endswith(suffix):
            return "invalid"
        return self.rng.choices(
            ("delivered", "failed", "invalid"), weights=(s.delivered, s.failed, s.invalid)
        )[0]

    def plan_reports(self, to_number: str, s: SimulatorConfig) -> list[str]:
        """The statuses to report for one accepted message, in the order they are sent."""
        status = self._report_status(to_number, s)
        reports = [status]
        if self.chance(s.out_of_order_rate):
            reports.insert(0, "delivered" if status == "failed" else "failed")
        if self.chance(s.duplicate_callback_rate):
            reports.append(status)
        return reports


STATE = web.AppKey("simulator_state", SimulatorState)
_REPORTER = Reporter(logger)
CALLBACKS = _REPORTER.callbacks


def _bad_request(detail: str) -> web.Response:
    return web.json_response({"error": detail}, status=400)


def _read_send(body: bytes) -> dict[str, str] | str:
    """The request's fields, or why they are unusable."""
    try:
        data = json.loads(body)
    except ValueError:
        return "body must be JSON"
    if not isinstance(data, dict):
        return "body must be a JSON object"
    fields = ("to_number", "message", "callback_url")
    missing = [f for f in fields if not isinstance(data.get(f), str) or not data[f]]
    if missing:
        return f"missing or non-string fields: {', '.join(missing)}"
    return {f: data[f] for f in fields}


async def _send(request: web.Request) -> web.Response:
    state = request.app[STATE]
    name = request.match_info["name"]
    counts = state.stats.provider(name)
    data = _read_send(await request.read())
    if isinstance(data, str):
        counts.bad_requests += 1
        return _bad_request(data)
    counts.requests += 1
    settings = state.settings_for(name)
    if state.is_down(name, settings):
        counts.down += 1
        return web.json_response({"error": "Service unavailable"}, status=503)
    if state.chance(settings.hang_rate):
        counts.hung += 1
        await _REPORTER.hang(request)
        return web.json_response({"error": "Service unavailable"}, status=503)
    if state.chance(settings.throttle_rate):
        counts.throttled += 1
        return web.json_response(
            {"error": "Too many requests"}, status=429, headers={"Retry-After": "1"}
        )
    if settings.latency:
        await asyncio.sleep(settings.latency)
    if state.rng.random() < settings.failure_rate:
        counts.errors += 1
        return web.json_response({"error": "Something went wrong"}, status=500)
    message_id = str(uuid.UUID(int=state.rng.getrandbits(128), version=4))
    malformed = state.chance(settings.malformed_rate)
    counts.accepted += 1
    state.stats.count_pair(data["to_number"], data["message"])
    if state.keep_received:
        state.received.append({**data, "provider": name, "message_id": message_id})
    reports = state.plan_reports(data["to_number"], settings)
    post = functools.partial(_post_report, request.app, settings, data["callback_url"], message_id)
    if state.chance(settings.early_callback_rate):
        await post(reports.pop(0))
    _REPORTER.schedule(request.app, f"simulator-callback-{message_id}", settings, reports, post)
    if malformed:
        counts.malformed += 1
        # Cut short mid-string, as a proxy that dropped the connection would leave it.
        body = '{"message_id": "' + message_id[:8]
        return web.Response(status=200, text=body, content_type="application/json")
    return web.json_response({"message_id": message_id})


async def _post_report(
    app: web.Application, s: SimulatorConfig, url: str, message_id: str, status: str
) -> None:
    """POST one `{status, message_id}` report to `url`."""
    payload = {"status": status, "message_id": message_id}
    await _REPORTER.post(
        app,
        app[STATE].stats,
        s,
        lambda session: session.post(url, json=payload),
        f"message_id={message_id}",
    )


# -- control endpoints ----------------------------------------------------------------------


def _faults_of(state: SimulatorState, name: str) -> dict[str, Any]:
    effective = state.settings_for(name)
    return {
        "name": name,
        "overrides": state.overrides.get(name, {}),
        "down_now": state.is_down(name, effective),
        "effective": effective.model_dump(mode="json", exclude=set(NOT_PER_PROVIDER)),
    }


async def _list_faults(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response(
        {
            "defaults": state.settings.model_dump(mode="json"),
            "overrides": state.overrides,
        }
    )


async def _get_faults(request: web.Request) -> web.Response:
    return web.json_response(_faults_of(request.app[STATE], request.match_info["name"]))


async def _change_faults(request: web.Request) -> web.Response:
    state = request.app[STATE]
    name = request.match_info["name"]
    try:
        patch = json.loads(await request.read())
    except ValueError:
        return _bad_request("body must be a JSON object of [simulator] keys")
    if not isinstance(patch, dict):
        return _bad_request("body must be a JSON object of [simulator] keys")
    try:
        state.set_faults(name, patch, replace=request.method == "PUT")
    except FaultError as exc:
        return _bad_request(str(exc))
    return web.json_response(_faults_of(state, name))


async def _clear_faults(request: web.Request) -> web.Response:
    state = request.app[STATE]
    name = request.match_info["name"]
    state.clear_faults(name)
    return web.json_response(_faults_of(state, name))


async def _stats(request: web.Request) -> web.Response:
    stats = request.app[STATE].stats
    return web.json_response(stats.as_json(all_pairs=request.query.get("pairs") == "all"))


async def _reset_stats(request: web.Request) -> web.Response:
    request.app[STATE].stats = SimulatorStats()
    return web.Response(status=204)


async def _ready(request: web.Request) -> web.Response:
    return web.json_response({"status": "ready"})


# -- the app --------------------------------------------------------------------------------


def make_simulator_app(state: SimulatorState) -> web.Application:
    """Simulated providers at `POST /{name}` (any name works) plus the control endpoints."""
    app = web.Application()
    app[STATE] = state
    _REPORTER.install(app)
    r = app.router
    r.add_get("/readyz", _ready)
    r.add_get("/_faults", _list_faults)
    r.add_get("/_faults/{name}", _get_faults)
    r.add_put("/_faults/{name}", _change_faults)
    r.add_patch("/_faults/{name}", _change_faults)
    r.add_delete("/_faults/{name}", _clear_faults)
    r.add_get("/_stats", _stats)
    r.add_delete("/_stats", _reset_stats)
    r.add_post("/{name}", _send)
    return app
