"""The composition root: builds every part once, wires them, runs until told to stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import aiohttp
from aiohttp import web

from dispatchd import config as config_mod
from dispatchd.config import Config
from dispatchd.control.server import ControlDeps, ControlServer, make_control_app
from dispatchd.devtools.simulator import SimulatorState, make_simulator_app
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
from dispatchd.providers import ProviderClient
from dispatchd.service import Service
from dispatchd.store import sqlite as store_mod
from dispatchd.store.sqlite import QueueStats, Store
from dispatchd.systemd import Notifier
from dispatchd.webhooks import Sender, SenderSettings, make_session, restart_only_changes
from dispatchd.worker import Worker, WorkerSettings

logger = logging.getLogger(__name__)

SHUTDOWN_GRACE = 10.0


class Daemon:
    """One running dispatchd: store, service, worker and HTTP server."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        simulator_state: SimulatorState | None = None,
    ) -> None:
        self.config = config
        self._clock = clock
        self._rng = rng or random.Random()
        self.simulator = simulator_state or SimulatorState(config.simulator)
        self.events = EventBus(clock=clock)
        # Live-status watchers (SSE, long polls): woken by every event naming a message.
        self.watchers = Watchers()
        self.events.add_listener(self.watchers.on_event)
        self.health = HealthRegistry(
            config.providers, clock=clock, breaker=config.breaker_settings()
        )
        self.metrics = Metrics(
            stats=self._queue_stats, breakers=self.health.breaker_states, clock=clock
        )
        self.health.add_observer(self.metrics.observe_call)
        self.idempotency: Idempotency | None = None
        self._purge_task: asyncio.Task[None] | None = None
        self.control: ControlServer | None = None
        self.store: Store | None = None
        self.service: Service | None = None
        self.worker: Worker | None = None
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._worker_task: asyncio.Task[None] | None = None
        # Status callbacks: their own session and task, so client endpoints never slow delivery.
        self.webhooks: Sender | None = None
        self._webhook_session: aiohttp.ClientSession | None = None
        self._webhook_task: asyncio.Task[None] | None = None
        self._store_watch: asyncio.Task[None] | None = None
        self.port: int | None = None
        self.failed = asyncio.Event()
        self._stopped = False

    async def start(self) -> None:
        """Open the store, recover orphaned work, bind the listener, start delivering."""
        cfg = self.config
        # Before anything is opened: a refused config leaves nothing to clean up.
        keys = auth.load_keys(cfg.api)
        auth.check_exposure(keys, cfg.server.host)
        store = self.store = await Store.open(
            cfg.storage.path, ordered=cfg.delivery.ordering == "per_recipient"
        )
        recovered = await store.release_all_leases(self._clock())
        if recovered:
            logger.info("event=recovered_after_restart count=%d", recovered)
        secret = await store.ensure_secret(secrets.token_hex(32))
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=cfg.delivery.concurrency, limit_per_host=0),
        )
        worker_ref: list[Worker] = []
        service = self.service = Service(
            store,
            cfg.delivery,
            public_url=cfg.server.public_url,
            secret=secret,
            suppressed=await store.suppressed_numbers(),
            on_new_work=lambda: worker_ref[0].wake(),
            clock=self._clock,
            events=self.events,
            webhooks=cfg.webhooks,
        )
        d = cfg.delivery
        worker = self.worker = Worker(
            store,
            ProviderClient(self._session, self._clock),
            cfg.providers,
            WorkerSettings(
                concurrency=d.concurrency,
                lease=d.lease,
                policy=RetryPolicy(d.max_attempts, d.backoff_initial, d.backoff_max),
            ),
            callback_url=service.callback_url,
            is_suppressed=service.is_suppressed,
            clock=self._clock,
            rng=self._rng,
            health=self.health,
            events=self.events,
            on_moved=self._status_moved,
        )
        worker_ref.append(worker)
        control_deps = ControlDeps(
            service,
            self.health,
            self.events,
            worker.wake,
            d.default_region,
            clock=self._clock,
            started_at=self._clock(),
            instance=secrets.token_hex(6),
        )
        self.control = ControlServer(make_control_app(control_deps), cfg.control_socket)
        await self.control.start()
        idempotency = self.idempotency = Idempotency(
            store, ttl=cfg.api.idempotency_ttl, clock=self._clock
        )
        app = make_app(
            WebDeps(
                service,
                d.default_region,
                self._not_ready_reason,
                watchers=self.watchers,
                keys=keys,
                idempotency=idempotency,
                metrics=self.metrics,
                metrics_auth=cfg.api.metrics_auth,
            )
        )
        if cfg.simulator.enabled:
            app.add_subapp("/simulator/", make_simulator_app(self.simulator))
        self._runner = make_runner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, cfg.server.host, cfg.server.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._store_watch = asyncio.create_task(self.watch_store(), name="store-watch")
        self._purge_task = asyncio.create_task(idempotency.purge_loop(), name="idempotency-purge")
        self._purge_task.add_done_callback(self._purge_ended)
        self._worker_task = asyncio.create_task(worker.run(), name="worker")
        self._worker_task.add_done_callback(self._worker_ended)
        self._start_webhooks(store)
        logger.info(
            "event=started host=%s port=%d db=%s control=%s providers=%s simulator=%s",
            cfg.server.host,
            self.port,
            cfg.storage.path,
            cfg.control_socket,
            ",".join(f"{p.name}:{p.weight}" for p in cfg.providers),
            cfg.simulator.enabled,
        )

    def _status_moved(self, ids: Sequence[str]) -> None:
        """The worker moved messages between statuses without an event (claims, silent
        requeues): wake their watchers, and the callback sender, as an event would."""
        self.watchers.wake_many(ids)
        if self.webhooks is not None:
            self.webhooks.wake()

    def _start_webhooks(self, store: Store) -> None:
        """Start the status-callback sender; pending callbacks from before a restart go first."""
        settings = SenderSettings.from_config(self.config.webhooks)
        # Its resolver refuses private addresses unless webhooks.allow_private_addresses.
        self._webhook_session = make_session(self.config.webhooks)
        sender = self.webhooks = Sender(
            store,
            self._webhook_session,
            settings,
            clock=self._clock,
            rng=self._rng,
            events=self.events,
        )
        self._webhook_task = asyncio.create_task(sender.run(), name="webhooks")
        self._webhook_task.add_done_callback(self._webhooks_ended)

    def _webhooks_ended(self, task: asyncio.Task[None]) -> None:
        # Like the worker: it only returns when stopped; otherwise callbacks are dead.
        if task.cancelled() or self.webhooks is None or self.webhooks.stopping:
            return
        logger.error("event=webhooks_died error=%r", task.exception())
        self.failed.set()

    def _purge_ended(self, task: asyncio.Task[None]) -> None:
        # It loops until cancelled (storage errors are retried): anything else is a bug.
        if not task.cancelled():
            logger.error("event=idempotency_purge_died error=%r", task.exception())
            self.failed.set()

    async def _queue_stats(self) -> QueueStats:
        if self.store is None or self.store.closed:
            raise StoreUnavailable("the store is not open")
        return await store_mod.queue_stats(self.store)

    def _worker_ended(self, task: asyncio.Task[None]) -> None:
        # The worker only returns when stopped; anything else means delivery is dead.
        if task.cancelled() or self.worker is None or self.worker.stopping:
            return
        logger.error("event=worker_died error=%r", task.exception())
        self.failed.set()

    def healthy(self) -> bool:
        """Whether systemd's watchdog should be fed: delivery is alive."""
        return self.worker is not None and self.worker.running

    def _not_ready_reason(self) -> str | None:
        if self.store is None or not self.store.healthy:
            last = self.store.last_error if self.store else None
            return f"The message store cannot take writes ({last})."
        if self.worker is None or not self.worker.running:
            return "The delivery worker is not running."
        return None

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
        if self.worker is not None:
            self.worker.update_providers(new.providers)
        if self.webhooks is not None:
            self.webhooks.update(new.webhooks)
        self.config = new
        logger.info(
            "event=config_reloaded providers=%s",
            ",".join(f"{p.name}:{p.weight}/{p.timeout:g}s" for p in new.providers),
        )

    def status_line(self) -> str:
        """A short live summary for systemd's STATUS=."""
        if self.store is not None and not self.store.healthy:
            return "degraded: the database cannot take writes"
        in_flight = self.worker.in_flight if self.worker else 0
        open_circuits = [
            p["name"] for p in self.health.snapshot() if p["state"] in ("circuit_open", "paused")
        ]
        text = f"ready; {in_flight} deliveries in flight"
        if open_circuits:
            text += f"; not routing to {', '.join(open_circuits)}"
        return text

    async def watch_store(self, interval: float = 1.0) -> None:
        """While the database refuses writes, probe it so it recovers without traffic."""
        while True:
            await asyncio.sleep(interval)
            if self.store is not None and not self.store.healthy and not self.store.closed:
                await self.store.probe()

    async def stop(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Stop accepting, finish in-flight deliveries (up to `grace`), close the store."""
        if self._stopped:
            return
        self._stopped = True
        if self._runner is not None:
            await self._runner.cleanup()
        if self._store_watch is not None:
            self._store_watch.cancel()
        if self._purge_task is not None:
            self._purge_task.cancel()
        # Callbacks finish (or stay pending for the next start) alongside the deliveries.
        webhooks_stopped = asyncio.create_task(self._stop_webhooks(grace), name="webhooks-stop")
        if self.worker is not None:
            abandoned = await self.worker.stop(grace)
            if abandoned and self.store is not None:
                # Released now, so a restart (or another host) need not wait for the lease.
                with contextlib.suppress(StoreError):
                    await self.store.release(abandoned, self._clock(), "released at shutdown")
        if self._worker_task is not None:
            await asyncio.gather(self._worker_task, return_exceptions=True)
        await webhooks_stopped
        if self.control is not None:
            await self.control.stop()
        if self._session is not None:
            await self._session.close()
        if self.store is not None:
            await self.store.close()
        logger.info("event=stopped")

    async def _stop_webhooks(self, grace: float) -> None:
        if self.webhooks is not None:
            await self.webhooks.stop(grace)
        if self._webhook_task is not None:
            await asyncio.gather(self._webhook_task, return_exceptions=True)
        if self._webhook_session is not None:
            await self._webhook_session.close()


async def serve(config: Config, config_path: Path | None = None) -> int:
    """Run until SIGTERM/SIGINT (exit 0) or a fatal internal error (exit 1).

    A second SIGTERM/SIGINT exits at once: SQLite's WAL keeps the store consistent
    and the next start requeues whatever was in flight. SIGHUP reloads the config.
    """
    notifier = Notifier()
    daemon = Daemon(config)
    await daemon.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_stop_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            logger.warning("event=forced_exit signal=%s", sig.name)
            os._exit(1)
        logger.info("event=stopping signal=%s", sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop_signal, sig)
    if config_path is not None:
        loop.add_signal_handler(signal.SIGHUP, lambda: _reload(daemon, config_path))
    background = [
        asyncio.create_task(
            notifier.watchdog(daemon.status_line, daemon.healthy), name="systemd-watchdog"
        ),
    ]
    notifier.ready(daemon.status_line())
    stopped = asyncio.create_task(stop.wait(), name="wait-signal")
    failed = asyncio.create_task(daemon.failed.wait(), name="wait-failure")
    await asyncio.wait([stopped, failed], return_when=asyncio.FIRST_COMPLETED)
    for task in (stopped, failed, *background):
        task.cancel()
    notifier.stopping()
    await daemon.stop(grace=daemon.config.server.shutdown_grace)
    return 1 if daemon.failed.is_set() else 0


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
