"""Idempotency keys (Stripe semantics) for the routes that create messages.

A request with `Idempotency-Key: <key>` runs once per (API key, key): its response is
stored in the same transaction as the messages it created, and a repeat gets that
response again, byte for byte, with `Idempotent-Replayed: true`. The repeat must be the
same request: the SHA-256 of its method, path and parsed body fields, canonicalised as
JSON with sorted keys (so whitespace, key order and JSON-versus-form do not matter), must
match, or it gets `422 idempotency_key_reused`. While the first is still running a repeat
gets `409 request_in_progress`. Only created resources are stored: a request refused for
its fields (400, 415, 422) or for storage (503) can be fixed and retried with the same key.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from dispatchd.domain.errors import StoreError
from dispatchd.http.auth import SCOPE
from dispatchd.http.problems import Problem
from dispatchd.store.api import SavedResponse, Store

logger = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
PURGE_INTERVAL = 60.0
PURGE_BATCH = 1000


@dataclass(frozen=True, slots=True)
class Rendered:
    """A response as it is sent and, for an idempotent request, kept."""

    status: int
    body: str
    location: str | None = None

    def response(self, *, replayed: bool = False) -> web.Response:
        headers = {"Location": self.location} if self.location is not None else {}
        if replayed:
            headers[REPLAYED] = "true"
        return web.Response(
            status=self.status, text=self.body, content_type="application/json", headers=headers
        )


def key_problem(raw: str) -> str | None:
    """Why `raw` is not a usable idempotency key, as a sentence; None when it is one."""
    if not raw:
        return f"The {HEADER} header is empty; send 1 to {MAX_KEY_LENGTH} characters."
    if len(raw) > MAX_KEY_LENGTH:
        return (
            f"The {HEADER} header is {len(raw)} characters long; "
            f"at most {MAX_KEY_LENGTH} are allowed."
        )
    if not (raw.isascii() and raw.isprintable()):
        return f"The {HEADER} header may hold printable ASCII characters only (e.g. a UUID)."
    return None


def request_hash(method: str, path: str, fields: Mapping[str, Any]) -> str:
    """SHA-256 over the method, path and fields as canonical JSON (sorted keys, no spaces)."""
    try:
        canonical = json.dumps(
            [method.upper(), path, fields], sort_keys=True, separators=(",", ":"), ensure_ascii=True
        )
    except RecursionError as exc:
        # bodies.parse_body already caps nesting far below the recursion limit; this keeps
        # any other caller's deep fields a 400 rather than a 500.
        raise Problem(
            400, "malformed_request", "Malformed request", "The body's JSON is nested too deeply."
        ) from exc
    return hashlib.sha256(canonical.encode()).hexdigest()


def _bad_key(detail: str) -> Problem:
    return Problem(400, "invalid_idempotency_key", "Invalid idempotency key", detail)


def _reused(key: str) -> Problem:
    return Problem(
        422,
        "idempotency_key_reused",
        "Idempotency key reused",
        f"The {HEADER} {key!r} was already used with a different request; "
        "use a new key for a new request.",
    )


def _in_progress(key: str) -> Problem:
    return Problem(
        409,
        "request_in_progress",
        "Request in progress",
        f"A request with the {HEADER} {key!r} is still being processed; "
        "retry once it has finished.",
        headers={"Retry-After": "1"},
    )


@dataclass(frozen=True, slots=True)
class Keyed:
    """One request's idempotency: the kept answer to replay, or how to keep the new one."""

    replay: web.Response | None = None
    scope: str = ""
    key: str | None = None  # None: the request has no Idempotency-Key
    digest: str = ""
    ttl: float = 0.0
    now: float = 0.0

    def save(self, rendered: Rendered) -> SavedResponse | None:
        """The answer to keep with the request's effect, or None without a key."""
        if self.key is None:
            return None
        return SavedResponse(
            self.scope,
            self.key,
            self.digest,
            rendered.status,
            rendered.body,
            rendered.location,
            self.now,
            self.now + self.ttl,
        )


class Idempotency:
    """Runs requests at most once per key; replays the kept response to repeats."""

    def __init__(self, store: Store, *, ttl: float, clock: Callable[[], float]) -> None:
        self._store = store
        self._ttl = ttl
        self._clock = clock
        # (scope, key) of the requests running now: one process owns the database, so this
        # is every request that could still store a response.
        self._running: set[tuple[str, str]] = set()

    @property
    def in_progress(self) -> int:
        """How many keyed requests are running now."""
        return len(self._running)

    @contextlib.asynccontextmanager
    async def request(
        self, request: web.Request, fields: Mapping[str, Any]
    ) -> AsyncIterator[Keyed]:
        """The request's `Keyed`: with `replay` set, answer with it and do nothing else;
        otherwise commit `save(rendered)` with the request's effect, inside this block.

        Refused (400, 409, 422) before the block runs for a bad, busy or reused key.
        """
        raw = request.headers.get(HEADER)
        if raw is None:
            yield Keyed()
            return
        problem = key_problem(raw)
        if problem is not None:
            raise _bad_key(problem)
        scope = request.get(SCOPE, "")
        digest = request_hash(request.method, request.path, fields)
        with self._claim(scope, raw):
            now = self._clock()
            saved = await self._store.find_saved_response(scope, raw, now)
            if saved is None:
                yield Keyed(None, scope, raw, digest, self._ttl, now)
                return
            if saved.request_hash != digest:
                raise _reused(raw)
            logger.info("event=idempotent_replay scope=%s", scope or "-")
            yield Keyed(Rendered(saved.status, saved.body, saved.location).response(replayed=True))

    @contextlib.contextmanager
    def _claim(self, scope: str, key: str) -> Iterator[None]:
        # Claimed before the first await, so two concurrent repeats cannot both miss the
        # stored response; released only after the response (if any) is committed.
        if (scope, key) in self._running:
            raise _in_progress(key)
        self._running.add((scope, key))
        try:
            yield
        finally:
            self._running.discard((scope, key))

    async def purge(self, batch: int = PURGE_BATCH) -> int:
        """Delete every expired key, `batch` rows per transaction; return how many."""
        total = 0
        while True:
            deleted = await self._store.purge_saved_responses(self._clock(), batch)
            total += deleted
            if deleted < batch:
                return total
            # Let requests waiting for the writer in between batches.
            await asyncio.sleep(0)

    async def purge_loop(self, interval: float = PURGE_INTERVAL) -> None:
        """Purge expired keys every `interval` seconds, until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                deleted = await self.purge()
            except StoreError as exc:
                # Disk full or read-only: the keys wait for the next round.
                logger.warning("event=idempotency_purge_failed error=%r", exc.message)
                continue
            if deleted:
                logger.info("event=idempotency_purged count=%d", deleted)
