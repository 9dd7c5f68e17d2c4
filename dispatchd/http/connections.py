"""Connection-level protection for the HTTP server: header deadline and connection cap."""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from http import HTTPStatus
from typing import Any

from aiohttp import web

from dispatchd.http.problems import Problem

logger = logging.getLogger(__name__)

# Seconds a new connection has to send the headers of its first request (slowloris).
HEADER_TIMEOUT = 10.0
# Seconds an idle keep-alive connection stays open between requests. Longer than the usual
# client and proxy pool timeouts (aiohttp 15 s, nginx upstream 60 s) so the server is never
# the side that closes a connection the client is about to reuse.
KEEPALIVE_TIMEOUT = 75.0


# -- connections --------------------------------------------------------------------------


def default_max_connections() -> int:
    """Half the process's file descriptors (at least 64): the rest stays for the store,
    the provider connections and the control socket, whatever HTTP clients do."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(64, soft // 2)


class ConnectionGuard:
    """Keeps HTTP connections from exhausting the daemon (slowloris, connection floods).

    aiohttp has no timeout for the headers of a request (its keep-alive timer, an hour by
    default, is the only bound) and no cap on connections: a client that opens sockets
    and dribbles header bytes holds a file descriptor each until the process runs out,
    and then the store, the provider calls and the control socket fail with it. So:

    - a new connection that has not sent a whole request head within `header_timeout`
      seconds is closed (later requests on a kept-alive connection are bounded by
      aiohttp's `keepalive_timeout`, see `make_runner`);
    - at most `max_connections` are open: one more closes the longest-open connection
      with no request in progress (a slowloris socket, or an idle keep-alive one), so a
      flood cannot lock well-behaved clients out; only when every connection is mid-request
      is the newcomer closed instead.
    """

    def __init__(self, max_connections: int | None = None, header_timeout: float = HEADER_TIMEOUT):
        self.max_connections = max_connections or default_max_connections()
        self.header_timeout = header_timeout
        self.evicted = 0  # connections closed to make room
        self.timed_out = 0  # connections closed for not sending a request in time
        self._open: dict[web.RequestHandler, asyncio.TimerHandle | None] = {}  # oldest first
        self._busy: set[web.RequestHandler] = set()

    @property
    def open_connections(self) -> int:
        return len(self._open)

    @property
    def busy_connections(self) -> int:
        """Connections with a request in progress."""
        return len(self._busy)

    def opened(self, conn: web.RequestHandler) -> None:
        loop = asyncio.get_running_loop()
        self._open[conn] = loop.call_later(self.header_timeout, self._expire, conn)
        while len(self._open) > self.max_connections:
            victim = next((c for c in self._open if c not in self._busy and c is not conn), conn)
            self._close(victim)
            self.evicted += 1
            if victim is conn:
                logger.warning("event=connection_refused open=%d busy=all", len(self._open))
                return

    def closed(self, conn: web.RequestHandler) -> None:
        timer = self._open.pop(conn, None)
        if timer is not None:
            timer.cancel()

    def close_all(self) -> int:
        """Close every connection still open; how many there were."""
        left = list(self._open)
        for conn in left:
            self._close(conn)
        return len(left)

    def _expire(self, conn: web.RequestHandler) -> None:
        if conn in self._open and conn not in self._busy:
            self.timed_out += 1
            self._close(conn)

    def _close(self, conn: web.RequestHandler) -> None:
        self.closed(conn)
        conn.force_close()

    @web.middleware
    async def middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """Mark the connection busy while its request runs; it has met the header deadline."""
        conn = request.protocol
        timer = self._open.get(conn)
        if timer is not None:
            timer.cancel()
            self._open[conn] = None
        self._busy.add(conn)
        try:
            return await handler(request)
        finally:
            self._busy.discard(conn)


GUARD = web.AppKey("connection_guard", ConnectionGuard)


class _ProblemRequestHandler(web.RequestHandler):
    """aiohttp's connection handler, answering unparseable HTTP with problem+json too, and
    telling the handlers running on it when the client goes away (`on_connection_lost`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lost = False
        self.on_lost: set[Callable[[], None]] = set()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = True
        super().connection_lost(exc)
        for callback in tuple(self.on_lost):
            callback()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs; raises if already sent
        if status == 500:
            problem = Problem(
                500,
                "internal_error",
                "Internal error",
                "dispatchd hit an unexpected error; it has been logged.",
            )
        else:
            # aiohttp's message starts with a one-line reason ("Invalid method encountered:").
            reason = (message or "").strip().splitlines()[:1]
            because = f" ({reason[0].rstrip(':')[:200]})" if reason else ""
            problem = Problem(
                status,
                "malformed_request" if status == 400 else f"http_{status}",
                "Malformed request" if status == 400 else HTTPStatus(status).phrase,
                f"The request is not valid HTTP/1.1{because}.",
            )
        response = problem.response()
        response.force_close()
        return response


def connection_gone(request: web.BaseRequest) -> bool:
    """Whether the client of `request` has hung up (nothing sent now would reach it)."""
    transport = request.transport
    return transport is None or transport.is_closing()


@contextmanager
def on_connection_lost(request: web.BaseRequest, callback: Callable[[], None]) -> Iterator[None]:
    """Call `callback` (once) if the connection of `request` closes during the block.

    aiohttp's handler_cancellation would end a handler whose client left, but wherever it
    is: an idempotent request whose store write is queued would release its key before
    the write commits, and a retry could create a second message. So it stays off, and
    handlers that park for long (long polls, event streams) ask for this instead. A
    callback rather than checking `connection_gone` every second or so: idle waiters cost
    nothing (thousands of them would each wake every second) and end at once.
    Only connections served by `make_runner` report it; elsewhere the block runs without.
    """
    conn = request.protocol
    if not isinstance(conn, _ProblemRequestHandler):
        yield
        return
    if conn.lost:
        callback()  # gone before the block began: the callback would never run otherwise
    conn.on_lost.add(callback)
    try:
        yield
    finally:
        conn.on_lost.discard(callback)


class _GuardedServer(web.Server):
    """aiohttp's low-level server, reporting connections to a ConnectionGuard."""

    def __init__(self, guard: ConnectionGuard, plain: web.Server, **kwargs: Any) -> None:
        super().__init__(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            **kwargs,
        )
        self._guard = guard
        self._handler_kwargs = kwargs

    def __call__(self) -> web.RequestHandler:
        return _ProblemRequestHandler(self, loop=asyncio.get_running_loop(), **self._handler_kwargs)

    def connection_made(self, handler: web.RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        self._guard.opened(handler)

    def connection_lost(
        self, handler: web.RequestHandler, exc: BaseException | None = None
    ) -> None:
        self._guard.closed(handler)
        super().connection_lost(handler, exc)


class GuardedAppRunner(web.AppRunner):
    """An AppRunner whose server enforces the app's ConnectionGuard."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        super().__init__(app, handle_signals=False, **kwargs)
        self._handler_kwargs = kwargs

    async def _make_server(self) -> web.Server:
        # aiohttp builds its Server in this (private) hook, after the app's startup; the
        # only public per-connection hooks are the Server's connection_made/lost, so keep
        # aiohttp's server and rebuild it as the subclass that reports to the guard.
        plain = await super()._make_server()
        return _GuardedServer(self.app[GUARD], plain, **self._handler_kwargs)

    async def cleanup(self) -> None:
        await super().cleanup()
        # aiohttp shuts down the connections it had when the listener closed; one accepted
        # in that moment registers later and would stay open, its socket leaked, until
        # the process ends (forever, for a daemon run in-process).
        left = self.app[GUARD].close_all()
        if left:
            logger.info("event=connections_closed_at_shutdown count=%d", left)


def make_runner(
    app: web.Application,
    *,
    max_connections: int | None = None,
    header_timeout: float = HEADER_TIMEOUT,
    keepalive_timeout: float = KEEPALIVE_TIMEOUT,
) -> web.AppRunner:
    """The runner to serve `make_app`'s app with: connection guard on, no access log."""
    guard = app[GUARD]
    guard.max_connections = max_connections or guard.max_connections
    guard.header_timeout = header_timeout
    return GuardedAppRunner(
        app,
        access_log=None,
        keepalive_timeout=keepalive_timeout,
        # Compressed bodies are refused (415), so never inflate one on the way in.
        auto_decompress=False,
    )
