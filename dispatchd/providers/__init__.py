"""HTTP client for the provider wire format; maps every outcome to a typed result."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from dispatchd.config import ProviderConfig
from dispatchd.domain.errors import ProviderError, ProviderRejected, ProviderUnavailable
from dispatchd.domain.retry import retryable_status


@dataclass(frozen=True, slots=True)
class Accepted:
    """The provider took the message."""

    provider_message_id: str | None
    http_status: int


@dataclass(frozen=True, slots=True)
class CallResult:
    """One provider call: what happened and how long it took."""

    result: Accepted | ProviderError
    started_at: float
    latency_ms: float


class ProviderClient:
    """Sends messages to providers over one shared, pooled aiohttp session."""

    def __init__(
        self, session: aiohttp.ClientSession, clock: Callable[[], float] = time.time
    ) -> None:
        self._session = session
        self._clock = clock

    async def send(
        self, provider: ProviderConfig, *, to_number: str, message: str, callback_url: str
    ) -> CallResult:
        started_at = self._clock()
        t0 = time.perf_counter()
        payload = {"to_number": to_number, "message": message, "callback_url": callback_url}
        try:
            result = await self._post(provider, payload)
        except TimeoutError:
            result = ProviderUnavailable(f"no answer within {provider.timeout:g}s")
        except aiohttp.ClientError as exc:
            result = ProviderUnavailable(f"connection failed: {type(exc).__name__}: {exc}")
        latency_ms = (time.perf_counter() - t0) * 1000
        return CallResult(result, started_at, round(latency_ms, 3))

    async def _post(
        self, provider: ProviderConfig, payload: dict[str, str]
    ) -> Accepted | ProviderError:
        async with self._session.post(
            provider.url, json=payload, timeout=aiohttp.ClientTimeout(total=provider.timeout)
        ) as resp:
            body = await resp.read()
            status = resp.status
        if 200 <= status < 300:
            return Accepted(_message_id(body), status)
        detail = _error_text(body) or f"HTTP {status}"
        if retryable_status(status):
            return ProviderUnavailable(f"HTTP {status}: {detail}", http_status=status)
        return ProviderRejected(f"HTTP {status}: {detail}", http_status=status)


def _message_id(body: bytes) -> str | None:
    """The provider's id from a 2xx body; None when it sent none we can read.

    A 2xx is taken as acceptance even without an id: resending could deliver the
    message twice, and reports still reach us through the per-message callback URL.
    """
    try:
        data = json.loads(body)
    except ValueError:
        return None
    value = data.get("message_id") if isinstance(data, dict) else None
    return str(value)[:200] if isinstance(value, str | int) and value != "" else None


def _error_text(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        text = body[:200].decode("utf-8", "replace").strip()
        return text or None
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return str(data["error"])[:200]
    return None
