"""Status callbacks: POST every status change to the client's URL, signed, from the outbox.

The store queues one row per status change in the same transaction as the change, so none
is lost. The sender here reads due rows (only the oldest pending one of each message
has a due time, so a message's callbacks arrive in order), POSTs them with its own HTTP
session and its own concurrency limit (a slow receiver never holds up provider traffic), and
records each outcome on the row. Delivery is at least once: a crash between a receiver's 2xx
and the record of it sends that callback again after the restart.

Clients choose the URLs, so unless `allow_private_addresses` is on, nothing is sent to a
private address: an IP literal is refused before connecting, a host name by the session's
resolver (the address actually connected to, so DNS cannot point it inside later).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import importlib.metadata
import logging
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from dispatchd.config import WebhooksConfig
from dispatchd.domain import retry
from dispatchd.domain.addresses import is_private, literal_address, private_literal
from dispatchd.domain.errors import StoreError
from dispatchd.events import Event, EventBus
from dispatchd.store.api import DueWebhook, Store
from dispatchd.tasks import TaskPool

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "Dispatchd-Signature"
EVENT_ID_HEADER = "Dispatchd-Event-Id"
SIGNATURE_TOLERANCE = 300.0  # seconds a receiver should accept between `t` and its clock
# A fallback: status changes wake the sender (every bus event naming a message, the
# worker's local-only claims included); this poll only bounds the delay should one not.
POLL_INTERVAL = 1.0
# Read per try, so a reload may change them; the rest of [webhooks] needs a restart.
LIVE_KEYS = frozenset({"timeout", "max_attempts", "backoff_initial", "backoff_max"})

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


# -- signatures (pure) ----------------------------------------------------------------------


def sign(secret: str, body: bytes, t: int) -> str:
    """The `Dispatchd-Signature` value: `t=<t>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`."""
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(
    secret: str, body: bytes, header: str, now: float, tolerance: float = SIGNATURE_TOLERANCE
) -> bool:
    """Whether `header` signs `body` under `secret` with a timestamp within `tolerance` of now."""
    t: int | None = None
    macs: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        # isascii: str.isdigit() is true for "²", which int() refuses.
        if key == "t" and value.isascii() and value.isdigit():
            t = int(value)
        elif key == "v1":
            macs.append(value)
    if t is None or abs(now - t) > tolerance:
        return False
    expected = sign(secret, body, t).rpartition("v1=")[2]
    # compare_digest: the time taken must not reveal how much of a forged MAC matched.
    return any(hmac.compare_digest(expected, mac) for mac in macs)


# -- outcome decisions (pure) -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivered:
    """The receiver took it (2xx)."""


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Stop trying: the row ends `failed`."""

    reason: str


Verdict = Delivered | retry.RetryAt | GiveUp


def judge(
    http_status: int | None, attempt: int, policy: retry.RetryPolicy, now: float, rng: random.Random
) -> Verdict:
    """What follows try number `attempt` (1-based) that got `http_status` (None: no answer)."""
    if http_status is not None and 200 <= http_status < 300:
        return Delivered()
    if not retry.retryable_status(http_status):
        return GiveUp(f"the receiver refused it (HTTP {http_status})")
    if attempt >= policy.max_attempts:
        return GiveUp(f"given up after {attempt} tries")
    return retry.RetryAt(now + retry.backoff(attempt, policy, rng))


def restart_only_changes(old: WebhooksConfig, new: WebhooksConfig) -> list[str]:
    """The `[webhooks]` keys that differ and cannot be applied by a reload."""
    return [
        f"webhooks.{key}"
        for key in type(old).model_fields
        if key not in LIVE_KEYS and getattr(old, key) != getattr(new, key)
    ]


# -- private addresses --------------------------------------------------------------------

REFUSED_PRIVATE = "refused: private address"


class PrivateAddressRefused(OSError):
    """The host resolves only to private addresses, which callbacks may not go to."""


class PublicResolver(AbstractResolver):
    """Resolves like `inner`, keeping only public addresses; raises when none is left."""

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        public = [r for r in found if not _private_result(r)]
        if not public:
            raise PrivateAddressRefused(f"{host} resolves only to private addresses")
        return public

    async def close(self) -> None:
        await self._inner.close()


def _private_result(result: ResolveResult) -> bool:
    address = literal_address(result["host"])
    return address is None or is_private(address)  # unparseable: not provably public


def make_session(cfg: WebhooksConfig) -> aiohttp.ClientSession:
    """The sender's own HTTP session (call within the event loop)."""
    resolver = None if cfg.allow_private_addresses else PublicResolver()
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=cfg.concurrency, limit_per_host=0, resolver=resolver),
    )


def user_agent() -> str:
    """`dispatchd/<installed version>`."""
    try:
        version = importlib.metadata.version("dispatchd")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return f"dispatchd/{version}"


# -- the sender ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SenderSettings:
    secret: str
    timeout: float
    concurrency: int
    policy: retry.RetryPolicy
    allow_private_addresses: bool = False

    @classmethod
    def from_config(cls, cfg: WebhooksConfig) -> SenderSettings:
        policy = retry.RetryPolicy(cfg.max_attempts, cfg.backoff_initial, cfg.backoff_max)
        return cls(cfg.secret, cfg.timeout, cfg.concurrency, policy, cfg.allow_private_addresses)


@dataclass(frozen=True, slots=True)
class _Answer:
    http_status: int | None
    error: str | None  # shown to the client: generic, never an exception's text
    detail: str | None = None  # for the log only
    refused: bool = False  # a private destination: given up at once, never retried


class Sender:
    """Sends due status callbacks, at most `concurrency` at once, woken by status events."""

    def __init__(
        self,
        store: Store,
        session: aiohttp.ClientSession,
        settings: SenderSettings,
        *,
        clock: Callable[[], float],
        rng: random.Random,
        events: EventBus,
    ) -> None:
        self._store = store
        self._session = session
        self._settings = settings
        self._clock = clock
        self._rng = rng
        self._events = events
        self._user_agent = user_agent()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        # A send ending frees a slot, and makes its message's next callback eligible.
        self._pool: TaskPool[DueWebhook] = TaskPool(
            "webhook", settings.concurrency, on_done=self._wake.set
        )
        self._run_ended = asyncio.Event()
        # Rows whose outcome could not be recorded (store down, a bug): still due in the
        # database, so held back here until this time instead of being re-sent in a loop.
        self._held: dict[int, float] = {}
        self.running = False
        events.add_listener(self._on_event)

    @property
    def in_flight(self) -> int:
        return len(self._pool)

    def _on_event(self, event: Event) -> None:
        # A change of a message's status may have queued a callback; our own outcomes and
        # the console's coalesced stats name no status change.
        if not event.type.startswith("webhook_") and event.message_ids():
            self._wake.set()

    def update(self, cfg: WebhooksConfig) -> None:
        """Apply reloaded timeout, attempts and backoff from the next try on."""
        self._settings = SenderSettings.from_config(cfg)

    async def run(self) -> None:
        """Send due callbacks until stopped."""
        self.running = True
        self._run_ended.clear()
        try:
            while not self._stopping.is_set():
                # Cleared before reading so a status change during the read is not missed.
                self._wake.clear()
                now = self._clock()
                free = self._pool.free
                due = await self._due(now, free) if free > 0 else []
                if self._stopping.is_set():
                    break  # stop() is collecting the tasks: start no more
                for row in due:
                    self._start(row)
                if due and len(due) == free:
                    continue  # there may be more due right now
                await self._sleep(now)
        finally:
            self.running = False
            self._run_ended.set()

    async def _due(self, now: float, limit: int) -> list[DueWebhook]:
        self._held = {i: until for i, until in self._held.items() if until > now}
        in_flight = [row.id for row in self._pool.items()]
        try:
            return await self._store.due_webhooks(now, limit, [*in_flight, *self._held])
        except StoreError as exc:
            logger.warning("event=webhook_read_failed error=%r", exc.message)
            return []

    async def _sleep(self, read_at: float) -> None:
        """Wait for a wake, the next retry falling due, or the fallback poll."""
        timeout = POLL_INTERVAL
        try:
            # Asked of the store, not remembered, so retries set before a restart are on time.
            due = await self._store.next_webhook_retry(read_at)
        except StoreError:
            due = None
        if due is not None:
            timeout = max(0.0, min(timeout, due - self._clock()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    def _start(self, row: DueWebhook) -> None:
        self._pool.spawn(row, self._send_safely(row), name=f"webhook-{row.id}")

    async def drain(self) -> None:
        """Send everything due now and wait for it (tests drive the sender this way)."""
        while True:
            free = self._pool.free
            due = await self._due(self._clock(), free) if free > 0 else []
            for row in due:
                self._start(row)
            if self._pool:
                await self._pool.wait()
            elif not due:
                return

    async def stop(self, grace: float) -> int:
        """Stop reading; give in-flight callbacks up to `grace` seconds; the rest stay pending."""
        self._stopping.set()
        self._wake.set()
        if self.running:
            # Its read may be in progress; once it returns, the task list is final.
            await self._run_ended.wait()
        cut = await self._pool.stop(grace)
        if cut:
            logger.warning("event=webhooks_left_pending count=%d", len(cut))
        return len(cut)

    async def _send_safely(self, row: DueWebhook) -> None:
        try:
            await self.send(row)
        except StoreError as exc:
            # The row stays pending and is sent again later: at least once, never lost.
            logger.warning("event=webhook_record_failed webhook=%d error=%r", row.id, exc.message)
            self._hold(row)
        except Exception:
            logger.exception("event=webhook_crashed webhook=%d id=%s", row.id, row.message_id)
            self._hold(row)

    def _hold(self, row: DueWebhook) -> None:
        delay = retry.backoff(row.attempts + 1, self._settings.policy, self._rng)
        self._held[row.id] = self._clock() + max(delay, POLL_INTERVAL)

    async def send(self, row: DueWebhook) -> Verdict:
        """One try: POST the callback, record the outcome, log and publish it."""
        settings = self._settings
        attempt = row.attempts + 1
        verdict: Verdict
        if not settings.secret:
            # Unsigned callbacks could be forged by anyone who learns the URL: never send them.
            answer = _Answer(None, None)
            verdict = GiveUp("webhooks.secret is not set, so callbacks cannot be signed")
        else:
            answer = await self._post(row, settings)
            verdict = (
                GiveUp(REFUSED_PRIVATE)
                if answer.refused
                else judge(answer.http_status, attempt, settings.policy, self._clock(), self._rng)
            )
        error = answer.error
        if isinstance(verdict, GiveUp):
            error = "; ".join(e for e in (answer.error, verdict.reason) if e)
        now = self._clock()
        await self._store.settle_webhook(
            row.id,
            state=PENDING if isinstance(verdict, retry.RetryAt) else _final_state(verdict),
            next_attempt_at=verdict.at if isinstance(verdict, retry.RetryAt) else None,
            http_status=answer.http_status,
            error=error,
            finished_at=None if isinstance(verdict, retry.RetryAt) else now,
        )
        self._report(row, verdict, attempt, answer.http_status, error, answer.detail)
        return verdict

    async def _post(self, row: DueWebhook, settings: SenderSettings) -> _Answer:
        if not settings.allow_private_addresses:
            # IP literals never reach the resolver, so they are checked here.
            literal = private_literal(urlsplit(row.url).hostname)
            if literal is not None:
                return _Answer(None, None, f"{literal} is private", refused=True)
        body = row.payload.encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": self._user_agent,
            SIGNATURE_HEADER: sign(settings.secret, body, int(self._clock())),
            EVENT_ID_HEADER: str(row.id),
        }
        try:
            async with self._session.post(
                row.url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=settings.timeout),
                allow_redirects=False,
            ) as resp:
                status = resp.status
        except TimeoutError:
            return _Answer(None, f"no answer within {settings.timeout:g}s")
        except aiohttp.ClientConnectorError as exc:
            # getattr: not every subclass (the TLS ones) is sure to set os_error.
            if isinstance(getattr(exc, "os_error", None), PrivateAddressRefused):
                return _Answer(None, None, str(exc.os_error), refused=True)
            return _Answer(None, "connection failed", _describe(exc))
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            # Not the text: it would tell the client which of its hosts and ports answer.
            return _Answer(None, "connection failed", _describe(exc))
        return _Answer(status, None if 200 <= status < 300 else f"HTTP {status}")

    def _report(
        self,
        row: DueWebhook,
        verdict: Verdict,
        attempt: int,
        http_status: int | None,
        error: str | None,
        detail: str | None = None,
    ) -> None:
        """Log one line per outcome (the host only: a URL's path or query may hold a token)."""
        host = urlsplit(row.url).hostname
        line = (
            f"id={row.message_id} webhook={row.id} status={row.status} host={host} "
            f"attempt={attempt} http_status={http_status} error={error!r}"
        )
        if detail is not None:
            line += f" detail={detail!r}"
        if isinstance(verdict, retry.RetryAt):
            logger.info(
                "event=webhook_retry_scheduled %s in_s=%.2f", line, verdict.at - self._clock()
            )
            return
        kind = "webhook_delivered" if isinstance(verdict, Delivered) else "webhook_failed"
        logger.log(
            logging.INFO if kind == "webhook_delivered" else logging.WARNING,
            "event=%s %s",
            kind,
            line,
        )
        self._events.publish(
            kind,
            {
                "id": row.message_id,
                "webhook": row.id,
                "status": row.status,
                "attempts": attempt,
                "http_status": http_status,
                "error": error,
            },
        )


def _describe(exc: BaseException) -> str:
    """An exception for the log: its type and OS error, not its text (which may hold the URL)."""
    os_error = (
        getattr(exc, "os_error", None) if isinstance(exc, aiohttp.ClientConnectorError) else exc
    )
    reason = os_error.strerror if isinstance(os_error, OSError) else None
    return type(exc).__name__ if reason is None else f"{type(exc).__name__}: {reason}"


def _final_state(verdict: Delivered | GiveUp) -> str:
    return DELIVERED if isinstance(verdict, Delivered) else FAILED
