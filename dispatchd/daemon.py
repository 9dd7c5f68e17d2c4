"""The composition root: `build` makes every part once and wires it; `serve` runs the daemon.

`build` opens the store and the HTTP sessions and constructs every component, passing each
its dependencies; nothing is optional afterwards. `Daemon.start` binds the control socket
and the API and starts the background loops under one supervisor. Everything acquired is
released in reverse order by one exit stack (`Daemon.stop`): the API stops accepting, the
worker and the webhook sender finish in-flight work within the grace, the control socket
closes, then the sessions, then the store. Tests build the same daemon and may drive its
worker by hand instead of starting it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import signal
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

from dispatchd import config as config_mod
from dispatchd.config import Config, SmppProviderConfig
from dispatchd.control.server import ControlDeps, ControlServer, make_control_app
from dispatchd.devtools import dialects
from dispatchd.devtools.simulator import SimulatorState
from dispatchd.devtools.smsc import Smsc
from dispatchd.domain.errors import ConfigError, StoreError, StoreUnavailable
from dispatchd.domain.retry import RetryPolicy
from dispatchd.events import EventBus
from dispatchd.health import HealthRegistry
from dispatchd.http import auth
from dispatchd.http.app import WebDeps, make_app
from dispatchd.http.connections import make_runner
from dispatchd.http.idempotency import Idempotency
from dispatchd.http.watch import Watchers
from dispatchd.metrics import Metrics
from dispatchd.providers import registry
from dispatchd.providers.base import Connector, HttpKind
from dispatchd.retention import Retention
from dispatchd.service import Service
from dispatchd.store.api import QueueStats, Store
from dispatchd.store.sqlite import SqliteStore
from dispatchd.systemd import Notifier
from dispatchd.tasks import Supervisor
from dispatchd.webhooks import Sender, SenderSettings, make_session, restart_only_changes
from dispatchd.worker import Worker, WorkerSettings

logger = logging.getLogger(__name__)

SHUTDOWN_GRACE = 10.0
STORE_PROBE_INTERVAL = 1.0


@dataclass(eq=False)
class Daemon:
    """One dispatchd: every component, built once by `build`."""

    config: Config
    clock: Callable[[], float]
    store: Store
    events: EventBus
    health: HealthRegistry
    service: Service
    worker: Worker
    connectors: dict[str, Connector]
    webhooks: Sender
    watchers: Watchers
    metrics: Metrics
    idempotency: Idempotency
    retention: Retention
    control: ControlServer
    runner: web.AppRunner
    simulator: SimulatorState
    smsc: Smsc | None  # the simulated SMSC, when `[simulator] smpp_port` is set
    provider_session: aiohttp.ClientSession
    supervisor: Supervisor
    # What `stop` releases, in reverse order of acquisition.
    resources: AsyncExitStack
    _grace: float = field(default=SHUTDOWN_GRACE, init=False)
    _stopped: bool = field(default=False, init=False)

    @property
    def port(self) -> int:
        """The API's port (once started; useful when the config asks for port 0)."""
        address = self.runner.addresses[0]
        return int(address[1])

    @property
    def failed(self) -> bool:
        """A background task died: the daemon must exit non-zero."""
        return self.supervisor.failed.is_set()

    async def start(self) -> None:
        """Serve the control socket and the API, then start the background loops."""
        cfg = self.config
        stack = self.resources
        await self.control.start()
        stack.push_async_callback(self.control.stop)
        if self.smsc is not None:
            await self.smsc.start()
            stack.push_async_callback(self.smsc.stop)
        # Closed after the worker stops (the stack unwinds in reverse): SMPP unbinds last.
        for connector in self.connectors.values():
            await connector.start()
            stack.push_async_callback(connector.close)
        # Pushed before the API: on stop the API closes first, then the loops end.
        stack.push_async_callback(self._stop_tasks)
        await self.runner.setup()
        stack.push_async_callback(self.runner.cleanup)
        await web.TCPSite(self.runner, cfg.server.host, cfg.server.port).start()
        # Started once the API listens: the simulator, when on, is served by it.
        spawn = self.supervisor.spawn
        spawn("worker", self.worker.run())
        spawn("webhooks", self.webhooks.run())
        spawn("idempotency-purge", self.idempotency.purge_loop())
        spawn("store-watch", watch_store(self.store))
        spawn("sweeper", self.worker.sweep_loop())
        if cfg.storage.retention > 0:
            spawn("retention", self.retention.run())
        logger.info(
            "event=started host=%s port=%d db=%s control=%s providers=%s simulator=%s",
            cfg.server.host,
            self.port,
            cfg.storage.path,
            cfg.control_socket,
            ",".join(f"{p.name}:{p.weight}" for p in cfg.providers),
            cfg.simulator.enabled,
        )

    async def stop(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Stop accepting, finish in-flight work (up to `grace`), release everything."""
        if self._stopped:
            return
        self._stopped = True
        self._grace = grace
        await self.resources.aclose()
        logger.info("event=stopped")

    async def _stop_tasks(self) -> None:
        self.supervisor.stopping()
        # Callbacks finish (or stay pending for the next start) alongside the deliveries.
        webhooks = asyncio.create_task(self.webhooks.stop(self._grace), name="webhooks-stop")
        cut = await self.worker.stop(self._grace)
        if cut:
            # Released now, so a restart (or another process) need not wait for the lease.
            with contextlib.suppress(StoreError):
                await self.store.release(cut, self.clock(), "released at shutdown")
        await webhooks
        await self.supervisor.stop()

    def healthy(self) -> bool:
        """Whether systemd's watchdog should be fed: delivery is alive."""
        return self.worker.running

    async def reload(self, new: Config) -> None:
        """Apply new provider weights, URLs, timeouts and breaker settings without a restart.

        Raises ConfigError when the change needs a restart (other providers, other sections).
        """
        old = self.config
        if [p.name for p in new.providers] != [p.name for p in old.providers]:
            raise ConfigError("providers: adding, removing or reordering providers needs a restart")
        # Only the provider list, the breaker and the webhook timings are live; anything else
        # needs a restart.
        frozen = {"providers", "breaker", "webhooks"}
        changed = [
            key
            for key in type(old).model_fields
            if key not in frozen and getattr(new, key) != getattr(old, key)
        ]
        changed += restart_only_changes(old.webhooks, new.webhooks)
        if changed:
            raise ConfigError(f"{', '.join(changed)}: changing these needs a restart")
        self.health.reconfigure(new.providers, new.breaker_settings())
        self.worker.update_connectors(self._reconnect(old, new))
        self.service.update_kinds(report_kinds(new, self.clock))
        self.webhooks.update(new.webhooks)
        self.config = new
        logger.info(
            "event=config_reloaded providers=%s",
            ",".join(f"{p.name}:{p.weight}/{p.timeout:g}s" for p in new.providers),
        )

    def _reconnect(self, old: Config, new: Config) -> dict[str, Connector]:
        """New HTTP connectors for a reloaded config; SMPP sessions stay as they are."""
        connectors = dict(self.connectors)
        for before, after in zip(old.providers, new.providers, strict=True):
            if before.kind != after.kind:
                raise ConfigError(f"providers: {after.name}'s kind changed; that needs a restart")
            if isinstance(after, SmppProviderConfig):
                limits = {"weight", "rate", "max_in_flight"}
                if before.model_dump(exclude=limits) != after.model_dump(exclude=limits):
                    raise ConfigError(
                        f"providers: {after.name}'s SMPP session settings changed; "
                        "that needs a restart"
                    )
                continue
            connectors[after.name] = registry.connector(
                after,
                self.provider_session,
                clock=self.clock,
                on_report=self.service.provider_report,
            )
        self.connectors = connectors
        return connectors

    def status_line(self) -> str:
        """A short live summary for systemd's STATUS=."""
        if not self.store.healthy:
            return "degraded: the database cannot take writes"
        open_circuits = [
            p["name"] for p in self.health.snapshot() if p["state"] in ("circuit_open", "paused")
        ]
        text = f"ready; {self.worker.in_flight} deliveries in flight"
        if open_circuits:
            text += f"; not routing to {', '.join(open_circuits)}"
        return text


async def build(
    config: Config,
    clock: Callable[[], float],
    rng: random.Random,
    *,
    store: Store | None = None,
    simulator: SimulatorState | None = None,
) -> Daemon:
    """Open the store and sessions and construct every part of the daemon, not yet started.

    `store`, when given, is used (and closed with the daemon) instead of opening the
    configured database. Call `stop` on the result, started or not, to release it all.
    """
    stack = AsyncExitStack()
    if store is not None:
        stack.push_async_callback(store.close)
    try:
        # Before anything is opened: a refused config leaves nothing to clean up.
        keys = auth.load_keys(config.api)
        auth.check_exposure(keys, config.server.host)
        if store is None:
            store = await open_store(config, clock)
            stack.push_async_callback(store.close)
        return await _assemble(config, clock, rng, store, simulator, keys, stack)
    except BaseException:
        await stack.aclose()
        raise


async def open_store(config: Config, clock: Callable[[], float]) -> Store:
    """The configured database; it requeues what a previous process left `sending`."""
    ordered = config.delivery.ordering == "per_recipient"
    return await SqliteStore.open(config.storage.path, ordered=ordered, clock=clock)


async def _assemble(
    cfg: Config,
    clock: Callable[[], float],
    rng: random.Random,
    store: Store,
    simulator: SimulatorState | None,
    keys: auth.KeyRing,
    stack: AsyncExitStack,
) -> Daemon:
    d = cfg.delivery
    secret = await store.ensure_secret(secrets.token_hex(32))
    provider_session = await stack.enter_async_context(
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=d.concurrency, limit_per_host=0))
    )
    # Callbacks get a session of their own, so client endpoints never slow delivery; its
    # resolver refuses private addresses unless webhooks.allow_private_addresses.
    webhook_session = await stack.enter_async_context(make_session(cfg.webhooks))

    events = EventBus(clock=clock)
    # Live-status watchers (SSE, long polls): woken by every event naming a message.
    watchers = Watchers()
    events.add_listener(watchers.on_event)
    health = HealthRegistry(cfg.providers, clock=clock, breaker=cfg.breaker_settings())
    metrics = _metrics(store, health, clock)
    service = Service(
        store,
        d,
        cfg.webhooks,
        public_url=cfg.server.public_url,
        secret=secret,
        suppressed=await store.suppressed_numbers(),
        events=events,
        clock=clock,
        kinds=report_kinds(cfg, clock),
    )
    connectors = {
        p.name: registry.connector(
            p, provider_session, clock=clock, on_report=service.provider_report
        )
        for p in cfg.providers
    }
    worker = Worker(
        store,
        connectors,
        WorkerSettings(
            concurrency=d.concurrency,
            lease=d.lease,
            policy=RetryPolicy(d.max_attempts, d.backoff_initial, d.backoff_max),
            report_timeout=d.report_timeout,
        ),
        report_url=service.report_url,
        is_suppressed=service.is_suppressed,
        clock=clock,
        rng=rng,
        health=health,
        events=events,
    )
    webhooks = Sender(
        store,
        webhook_session,
        SenderSettings.from_config(cfg.webhooks),
        clock=clock,
        rng=rng,
        events=events,
    )
    idempotency = Idempotency(store, ttl=cfg.api.idempotency_ttl, clock=clock)
    deps = WebDeps(
        service,
        d.default_region,
        lambda: not_ready_reason(store, worker),
        watchers=watchers,
        idempotency=idempotency,
        keys=keys,
        metrics=metrics,
        metrics_auth=cfg.api.metrics_auth,
        public_url=cfg.server.public_url.rstrip("/"),
    )
    simulator = simulator or SimulatorState(cfg.simulator)
    app, smsc = _api(cfg, deps, simulator)
    return Daemon(
        config=cfg,
        clock=clock,
        store=store,
        events=events,
        health=health,
        service=service,
        worker=worker,
        connectors=connectors,
        webhooks=webhooks,
        watchers=watchers,
        metrics=metrics,
        idempotency=idempotency,
        retention=Retention(store, cfg.storage.retention, metrics=metrics, clock=clock),
        control=_control(cfg, service, health, events, clock, store),
        runner=make_runner(app),
        simulator=simulator,
        smsc=smsc,
        provider_session=provider_session,
        supervisor=Supervisor(),
        resources=stack,
    )


def _api(
    cfg: Config, deps: WebDeps, simulator: SimulatorState
) -> tuple[web.Application, Smsc | None]:
    """The HTTP API, with the simulator's dialects mounted when it is on, and its SMSC."""
    app = make_app(deps)
    smsc = None
    if cfg.simulator.enabled:
        app.add_subapp("/simulator/", dialects.simulator_app(simulator, cfg.providers))
        if cfg.simulator.smpp_port is not None:
            smsc = dialects.smsc(simulator, cfg.providers, cfg.simulator.smpp_port)
    return app, smsc


def report_kinds(cfg: Config, clock: Callable[[], float]) -> dict[str, HttpKind]:
    """The providers whose reports come to /providers/{name}/reports, by name."""
    kinds = {}
    for provider in cfg.providers:
        kind = registry.http_kind(provider, clock)
        if kind is not None and provider.kind != "dispatchd":
            kinds[provider.name] = kind
    return kinds


def _metrics(store: Store, health: HealthRegistry, clock: Callable[[], float]) -> Metrics:
    async def queue_stats() -> QueueStats:
        if store.closed:
            raise StoreUnavailable("the store is not open")
        return await store.queue_stats()

    metrics = Metrics(stats=queue_stats, breakers=health.breaker_states, clock=clock)
    health.add_observer(metrics.observe_call)
    return metrics


def _control(
    cfg: Config,
    service: Service,
    health: HealthRegistry,
    events: EventBus,
    clock: Callable[[], float],
    store: Store,
) -> ControlServer:
    deps = ControlDeps(
        service=service,
        health=health,
        bus=events,
        default_region=cfg.delivery.default_region,
        clock=clock,
        started_at=clock(),
        instance=secrets.token_hex(6),
        # Backups are a capability of a file, not of the Store contract: in memory, none.
        backup=store.backup if isinstance(store, SqliteStore) else None,
    )
    return ControlServer(make_control_app(deps), cfg.control_socket)


def not_ready_reason(store: Store, worker: Worker) -> str | None:
    """Why `/readyz` says no, or None when the daemon is ready."""
    if not store.healthy:
        return f"The message store cannot take writes ({store.last_error})."
    if not worker.running:
        return "The delivery worker is not running."
    return None


async def watch_store(store: Store, interval: float = STORE_PROBE_INTERVAL) -> None:
    """While the database refuses writes, probe it so it recovers without traffic."""
    while True:
        await asyncio.sleep(interval)
        if not store.healthy and not store.closed:
            with contextlib.suppress(StoreError):
                await store.probe()


async def serve(config: Config, config_path: Path | None = None) -> int:
    """Run until SIGTERM/SIGINT (exit 0) or a background task dies (exit 1).

    A second SIGTERM/SIGINT exits at once: SQLite's WAL keeps the store consistent
    and the next start requeues whatever was in flight. SIGHUP reloads the config.
    """
    notifier = Notifier()
    daemon = await build(config, time.time, random.Random())
    try:
        await daemon.start()
    except BaseException:
        await daemon.stop(grace=0)
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_stop_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            logger.warning("event=forced_exit signal=%s", sig.name)
            os._exit(1)
        logger.info("event=stopping signal=%s", sig.name)
        stop.set()

    signals = [signal.SIGTERM, signal.SIGINT]
    for sig in signals:
        loop.add_signal_handler(sig, on_stop_signal, sig)
    if config_path is not None:
        signals.append(signal.SIGHUP)
        loop.add_signal_handler(signal.SIGHUP, lambda: _reload(daemon, config_path))
    try:
        daemon.supervisor.spawn(
            "systemd-watchdog", notifier.watchdog(daemon.status_line, daemon.healthy)
        )
        notifier.ready(daemon.status_line())
        waits = [
            asyncio.create_task(stop.wait(), name="wait-signal"),
            asyncio.create_task(daemon.supervisor.failed.wait(), name="wait-failure"),
        ]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
        notifier.stopping()
        await daemon.stop(grace=daemon.config.server.shutdown_grace)
    finally:
        # A second signal during the stop above still exits at once.
        for sig in signals:
            loop.remove_signal_handler(sig)
    return 1 if daemon.failed else 0


def _reload(daemon: Daemon, path: Path) -> None:
    """SIGHUP: load the file again; keep the old config if the new one is bad."""
    try:
        new = config_mod.load(path, must_exist=True)
        asyncio.get_running_loop().create_task(_apply(daemon, new), name="config-reload")
    except ConfigError as exc:
        logger.error("event=config_reload_rejected error=%r", exc.message)


async def _apply(daemon: Daemon, new: Config) -> None:
    try:
        await daemon.reload(new)
    except ConfigError as exc:
        logger.error("event=config_reload_rejected error=%r", exc.message)
