"""The I/O half of every HTTP kind: one pooled session, a deadline, and timing."""

from __future__ import annotations

import time
from collections.abc import Callable

import aiohttp

from dispatchd.providers.base import Call, HttpKind, Outcome, Submission, Unavailable


class HttpConnector:
    """Sends a kind's requests over the daemon's shared provider session."""

    def __init__(
        self,
        kind: HttpKind,
        session: aiohttp.ClientSession,
        *,
        timeout: float,
        clock: Callable[[], float],
    ) -> None:
        self.kind = kind
        self._session = session
        self.timeout = timeout
        self._clock = clock

    async def start(self) -> None:
        """Nothing to open: the session is the daemon's."""

    async def close(self) -> None:
        """Nothing to close: the session is the daemon's."""

    async def send(self, submission: Submission) -> Call:
        started_at = self._clock()
        t0 = time.perf_counter()
        try:
            outcome = await self._post(submission)
        except TimeoutError:
            # Sent, maybe queued, unanswered: ambiguous, and at least once means fail over.
            outcome = Unavailable(f"no answer within {self.timeout:g}s")
        except aiohttp.ClientError as exc:
            outcome = Unavailable(f"connection failed: {type(exc).__name__}: {exc}")
        latency_ms = (time.perf_counter() - t0) * 1000
        return Call(outcome, started_at, round(latency_ms, 3))

    async def _post(self, submission: Submission) -> Outcome:
        req = self.kind.request(submission)
        async with self._session.request(
            req.method,
            req.url,
            data=req.body,
            headers=dict(req.headers),
            timeout=aiohttp.ClientTimeout(total=self.timeout),
        ) as resp:
            body = await resp.read()
            return self.kind.classify(resp.status, resp.headers, body)
