"""The control socket server: live state, an event stream and operator commands (see
`dispatchd.control.protocol` for the protocol).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from aiohttp import WSCloseCode, web

from dispatchd.control.protocol import PROTOCOL_VERSION
from dispatchd.domain.errors import (
    ControlSocketError,
    FieldError,
    NotRetryable,
    NotSuppressed,
    NumberSuppressed,
    StoreError,
    UnknownMessage,
    ValidationFailed,
)
from dispatchd.domain.models import Status
from dispatchd.domain.numbers import NumberError, to_e164
from dispatchd.events import EventBus, Subscription
from dispatchd.health import BadWeight, HealthRegistry, UnknownProvider
from dispatchd.http.bodies import whole_number
from dispatchd.http.middleware import problem_middleware
from dispatchd.http.problems import Problem
from dispatchd.http.resources import message_resource
from dispatchd.service import Service

logger = logging.getLogger(__name__)

# sun_path is 108 bytes on Linux, including the terminating NUL.
MAX_SOCKET_PATH = 107
HEARTBEAT = 15.0
CLOSE_TIMEOUT = 1.0
LOOKUP_LIMIT_DEFAULT = 20
LOOKUP_LIMIT_MAX = 100


@dataclass(frozen=True, slots=True)
class ControlDeps:
    """What the control socket needs from the rest of the daemon."""

    service: Service
    health: HealthRegistry
    bus: EventBus
    default_region: str
    clock: Callable[[], float] = time.time
    started_at: float = 0.0
    instance: str = ""
    tick: float = 1.0
    """Seconds between `stats` events (and rate samples)."""
    queue_every: float = 2.0
    """Seconds between `queue` events while someone is subscribed."""
    subscriber_queue: int = 1000
    """Events a subscriber may fall behind by before its events are dropped."""
    backup: Callable[[str], Awaitable[BackupCopy]] | None = None
    """Copies the database to a path (`POST /v1/backup`); None when the store has no file."""


class BackupCopy(Protocol):
    """What a finished backup reports (`dispatchd.store.sqlite.backup.BackupResult`)."""

    def as_dict(self) -> dict[str, Any]: ...


class Backups:
    """The one backup a daemon runs at a time: copying the database twice at once would
    only make both slower."""

    def __init__(self) -> None:
        self.running: asyncio.Task[BackupCopy] | None = None
        self.path = ""


DEPS = web.AppKey("control_deps", ControlDeps)
SOCKETS = web.AppKey("control_sockets", set[web.WebSocketResponse])
BACKUPS = web.AppKey("control_backups", Backups)


# -- reading ------------------------------------------------------------------------------


async def queue_state(deps: ControlDeps) -> dict[str, Any] | None:
    """The Queue object, or None when the database cannot be read."""
    try:
        stats = await deps.service.queue_stats()
    except StoreError as exc:
        logger.warning("event=control_queue_failed error=%r", exc.message)
        return None
    oldest = stats.oldest_queued_at
    return {
        "counts": {s.value: stats.counts.get(s.value, 0) for s in Status},
        "oldest_queued_age_s": None if oldest is None else round(deps.clock() - oldest, 1),
        "waiting_retry": stats.waiting_retry,
    }


async def build_snapshot(deps: ControlDeps) -> dict[str, Any]:
    # seq and recent are read together, before any await, so they agree.
    seq = deps.bus.seq
    recent = [e.as_dict() for e in deps.bus.recent()]
    snapshot: dict[str, Any] = {
        "protocol": PROTOCOL_VERSION,
        "instance": deps.instance,
        "pid": os.getpid(),
        "started_at": deps.started_at,
        "uptime_s": round(deps.clock() - deps.started_at, 1),
        "seq": seq,
        "providers": deps.health.snapshot(),
        "rates": deps.bus.rates(),
        "recent": recent,
    }
    snapshot["queue"] = await queue_state(deps)
    return snapshot


async def get_snapshot(request: web.Request) -> web.Response:
    return web.json_response(await build_snapshot(request.app[DEPS]))


async def _pump(ws: web.WebSocketResponse, sub: Subscription, after: int) -> None:
    """Send the subscriber's events, announcing drops; ends when the client goes away."""
    reported = 0
    try:
        while True:
            event = await sub.get()
            if event.seq <= after:
                continue  # already in the snapshot
            if sub.dropped != reported:
                reported = sub.dropped
                await ws.send_str(
                    json.dumps({"type": "dropped", "seq": None, "payload": {"count": reported}})
                )
            await ws.send_str(event.json())
    except ConnectionError:
        await ws.close()


async def get_events(request: web.Request) -> web.WebSocketResponse:
    deps = request.app[DEPS]
    # No compression: deflating every frame would be CPU taken from delivery. A short close
    # timeout: a console that does not answer the close handshake must not hold a shutdown.
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT, timeout=CLOSE_TIMEOUT, compress=False)
    await ws.prepare(request)
    # Subscribed before the snapshot is built, so nothing falls between the two.
    sub = deps.bus.subscribe(deps.subscriber_queue)
    sockets = request.app[SOCKETS]
    sockets.add(ws)
    pump: asyncio.Task[None] | None = None
    try:
        snapshot = await build_snapshot(deps)
        await ws.send_str(
            json.dumps({"type": "snapshot", "seq": snapshot["seq"], "payload": snapshot})
        )
        pump = asyncio.create_task(_pump(ws, sub, snapshot["seq"]), name="control-event-pump")
        # Consoles send nothing; reading answers pings and notices the close.
        async for _ in ws:
            pass
    except ConnectionError:
        pass
    finally:
        deps.bus.unsubscribe(sub)
        sockets.discard(ws)
        if pump is not None:
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
    return ws


def _message_not_found(msg_id: str) -> Problem:
    return Problem(404, "message_not_found", "Message not found", f"No message has id {msg_id!r}.")


async def get_message(request: web.Request) -> web.Response:
    msg_id = request.match_info["id"]
    msg = await request.app[DEPS].service.get(msg_id)
    if msg is None:
        raise _message_not_found(msg_id)
    return web.json_response(message_resource(msg, detailed=True))


async def find_messages(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    raw_number = request.query.get("to_number", "")
    raw_limit = request.query.get("limit", str(LOOKUP_LIMIT_DEFAULT))
    try:
        number = to_e164(raw_number, deps.default_region)
    except NumberError as exc:
        raise _invalid("to_number", exc.code, exc.message) from exc
    limit = whole_number(raw_limit)
    if limit is None or not 1 <= limit <= LOOKUP_LIMIT_MAX:
        raise _invalid(
            "limit", "out_of_range", f"limit must be a whole number from 1 to {LOOKUP_LIMIT_MAX}."
        )
    items = await deps.service.search(to_number=number, status=None, limit=limit, cursor=None)
    return web.json_response({"items": [message_resource(m) for m in items]})


def _invalid(field: str, code: str, message: str) -> Problem:
    return Problem(
        422,
        "validation_failed",
        "The request has invalid fields",
        message,
        errors=[FieldError(field, code, message)],
    )


# -- commands -----------------------------------------------------------------------------


def _provider(deps: ControlDeps, name: str) -> dict[str, Any]:
    for provider in deps.health.snapshot():
        if provider["name"] == name:
            return provider
    raise _unknown_provider(UnknownProvider(name, deps.health.names))


def _unknown_provider(exc: UnknownProvider) -> Problem:
    return Problem(404, "unknown_provider", "Unknown provider", exc.message)


async def pause_provider(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    name = request.match_info["name"]
    try:
        changed = deps.health.pause(name)
    except UnknownProvider as exc:
        raise _unknown_provider(exc) from exc
    if changed:
        logger.info("event=provider_paused provider=%s", name)
        deps.bus.publish("provider_paused", {"provider": name})
    return web.json_response(_provider(deps, name))


async def resume_provider(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    name = request.match_info["name"]
    try:
        changed = deps.health.resume(name)
    except UnknownProvider as exc:
        raise _unknown_provider(exc) from exc
    if changed:
        logger.info("event=provider_resumed provider=%s", name)
        deps.bus.publish("provider_resumed", {"provider": name})
    return web.json_response(_provider(deps, name))


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except ValueError as exc:
        raise Problem(
            400, "malformed_request", "Malformed request", "The body must be a JSON object."
        ) from exc
    if not isinstance(data, dict):
        raise Problem(
            400, "malformed_request", "Malformed request", "The body must be a JSON object."
        )
    return data


async def set_weight(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    name = request.match_info["name"]
    try:
        deps.health.get(name)  # an unknown provider is a 404 whatever the body says
    except UnknownProvider as exc:
        raise _unknown_provider(exc) from exc
    weight = (await _json_object(request)).get("weight")
    try:
        previous = deps.health.set_weight(name, weight)
    except BadWeight as exc:
        raise Problem(422, "bad_weight", "Bad weight", exc.message) from exc
    logger.info("event=provider_weight provider=%s weight=%s previous=%d", name, weight, previous)
    deps.bus.publish("provider_weight", {"provider": name, "weight": weight, "previous": previous})
    return web.json_response(_provider(deps, name))


async def retry_message(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    msg_id = request.match_info["id"]
    try:
        msg = await deps.service.retry(msg_id)
    except UnknownMessage as exc:
        raise _message_not_found(msg_id) from exc
    except NotRetryable as exc:
        raise Problem(409, "not_retryable", "Not retryable", exc.message) from exc
    except NumberSuppressed as exc:
        raise Problem(422, "number_suppressed", "Number suppressed", exc.message) from exc
    deps.bus.publish("message_retried", {"id": msg_id, "new_id": msg.id, "number": msg.to_number})
    return web.json_response({"message": message_resource(msg), "retry_of": msg_id}, status=202)


async def lift_suppression(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    try:
        number = await deps.service.lift_suppression(request.match_info["number"])
    except ValidationFailed as exc:
        error = exc.errors[0]
        raise _invalid(error.field, error.code, error.message) from exc
    except NotSuppressed as exc:
        raise Problem(404, "not_suppressed", "Not suppressed", exc.message) from exc
    return web.json_response({"number": number, "lifted": True})


async def run_backup(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    path = _backup_path(await _json_object(request))
    if deps.backup is None:
        raise Problem(
            409,
            "backup_unsupported",
            "Nothing to back up",
            "This daemon keeps its messages in memory; there is no database file to copy.",
        )
    backups = request.app[BACKUPS]
    if backups.running is not None:
        raise Problem(
            409,
            "backup_running",
            "A backup is running",
            f"A backup to {backups.path} is still being written; try again when it is done.",
        )
    task = asyncio.create_task(_backup(deps.backup, path), name="control-backup")
    backups.running, backups.path = task, path
    task.add_done_callback(lambda _: _backup_done(backups))
    try:
        # Shielded: a client that goes away does not abandon a copy half written.
        result = await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.cancelled():
            raise
        raise Problem(
            503,
            "backup_failed",
            "Backup failed",
            "The daemon is stopping; the backup was abandoned and nothing was written.",
        ) from None
    except StoreError as exc:
        raise Problem(503, "backup_failed", "Backup failed", exc.message) from exc
    return web.json_response(result.as_dict())


def _backup_path(body: dict[str, Any]) -> str:
    path = body.get("path")
    if not isinstance(path, str) or not path or "\0" in path:
        raise Problem(
            422,
            "bad_path",
            "Bad path",
            'The body must be {"path": "<absolute path of the backup file, or of a directory '
            'for a timestamped one>"}.',
        )
    if not os.path.isabs(path):
        # Relative to what? The daemon's working directory is not the caller's.
        raise Problem(
            422, "bad_path", "Bad path", f"{path!r} is a relative path; give an absolute one."
        )
    return path


async def _backup(backup: Callable[[str], Awaitable[BackupCopy]], path: str) -> BackupCopy:
    logger.info("event=backup_started path=%s", path)
    try:
        result = await backup(path)
    except StoreError as exc:
        logger.error("event=backup_failed path=%s error=%r", path, exc.message)
        raise
    done = result.as_dict()
    logger.info(
        "event=backup_done path=%s bytes=%d messages=%d seconds=%.3f",
        done["path"],
        done["bytes"],
        done["messages"],
        done["seconds"],
    )
    return result


def _backup_done(backups: Backups) -> None:
    task, backups.running = backups.running, None
    if task is not None and not task.cancelled():
        task.exception()  # retrieved here: the request that started it may be gone


async def _abandon_backup(app: web.Application) -> None:
    """On shutdown: stop a running backup rather than hold the daemon's exit for it."""
    task = app[BACKUPS].running
    if task is not None:
        logger.warning("event=backup_abandoned path=%s reason=shutdown", app[BACKUPS].path)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# -- background: coalesced stats ----------------------------------------------------------


async def _tick_loop(deps: ControlDeps) -> None:
    """Once a tick: close the rate sample; while anyone listens, publish `stats`."""
    while True:
        await asyncio.sleep(deps.tick)
        try:
            rates = deps.bus.roll_rates()
            if deps.bus.subscriber_count:
                uptime = round(deps.clock() - deps.started_at, 1)
                payload = {"rates": rates, "providers": deps.health.snapshot(), "uptime_s": uptime}
                deps.bus.publish("stats", payload, keep=False)
        except Exception:
            logger.exception("event=control_stats_failed")


async def _queue_loop(deps: ControlDeps) -> None:
    """While anyone listens, publish the queue's state every `queue_every` seconds."""
    while True:
        await asyncio.sleep(deps.queue_every)
        if deps.bus.subscriber_count:
            queue = await queue_state(deps)
            if queue is not None:
                deps.bus.publish("queue", queue, keep=False)


async def _background(app: web.Application) -> AsyncIterator[None]:
    deps = app[DEPS]
    tasks = [
        asyncio.create_task(_tick_loop(deps), name="control-stats"),
        asyncio.create_task(_queue_loop(deps), name="control-queue"),
    ]
    yield
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _close_sockets(app: web.Application) -> None:
    # Open streams would hold the runner's shutdown; consoles reconnect on their own.
    sockets = app[SOCKETS]
    for ws in list(sockets):
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"dispatchd is stopping")


def make_control_app(deps: ControlDeps) -> web.Application:
    """The control protocol (see the module docstring)."""
    app = web.Application(middlewares=[problem_middleware])
    app[DEPS] = deps
    app[SOCKETS] = set()
    app[BACKUPS] = Backups()
    app.cleanup_ctx.append(_background)
    app.on_shutdown.append(_close_sockets)
    app.on_shutdown.append(_abandon_backup)
    r = app.router
    r.add_get("/v1/snapshot", get_snapshot)
    r.add_get("/v1/events", get_events)
    r.add_get("/v1/messages", find_messages)
    r.add_get("/v1/messages/{id}", get_message)
    r.add_post("/v1/messages/{id}/retry", retry_message)
    r.add_post("/v1/providers/{name}/pause", pause_provider)
    r.add_post("/v1/providers/{name}/resume", resume_provider)
    r.add_put("/v1/providers/{name}/weight", set_weight)
    r.add_delete("/v1/suppressions/{number}", lift_suppression)
    r.add_post("/v1/backup", run_backup)
    return app


# -- the socket ---------------------------------------------------------------------------


def _replace_stale(path: Path) -> None:
    """Remove a socket file left by a crashed daemon; refuse to touch a live one or a file."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ControlSocketError(f"{path} exists and is not a socket; not replacing it")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(os.fspath(path))
        except (ConnectionRefusedError, FileNotFoundError):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            logger.info("event=stale_control_socket_replaced path=%s", path)
            return
        except OSError as exc:
            raise ControlSocketError(f"cannot check {path}: {exc.strerror}") from exc
    raise ControlSocketError(f"another process is listening on {path}")


def bind_socket(path: Path) -> socket.socket:
    """A listening-ready unix socket at `path`, mode 0600, replacing a stale one."""
    size = len(os.fsencode(path))
    if size > MAX_SOCKET_PATH:
        raise ControlSocketError(
            f"{path} is {size} bytes long; a unix socket path may have at most "
            f"{MAX_SOCKET_PATH}: set [control] socket to a shorter path"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ControlSocketError(f"cannot create {path.parent}: {exc.strerror}") from exc
    _replace_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # The umask makes bind() create the file as 0600, so there is no moment at which
    # another user could connect; it is process-wide but only for this one call.
    old_umask = os.umask(0o177)
    try:
        sock.bind(os.fspath(path))
    except OSError as exc:
        sock.close()
        raise ControlSocketError(f"cannot listen on {path}: {exc.strerror}") from exc
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    return sock


class ControlServer:
    """Serves the control app on its unix socket; removes the socket file on stop."""

    def __init__(self, app: web.Application, path: Path) -> None:
        self.app = app
        self.path = path
        self._runner: web.AppRunner | None = None
        self._inode: int | None = None

    async def start(self) -> None:
        sock = bind_socket(self.path)
        self._inode = os.stat(self.path).st_ino
        self._runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=2.0
        )
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        logger.info("event=control_listening path=%s", self.path)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        # Only our own socket: a newer daemon may already have replaced it.
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.path).st_ino == self._inode:
                self.path.unlink()
