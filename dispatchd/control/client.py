"""A client of the control protocol (`dispatchd.control.protocol`) over a unix socket."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp

from dispatchd.control.protocol import BASE_URL, PROTOCOL_VERSION, Json
from dispatchd.domain.errors import DispatchdError

# A copy of a database of many gigabytes takes minutes; the default 5 s is for commands.
BACKUP_TIMEOUT = 6 * 3600.0


class DaemonUnavailable(DispatchdError):
    """The daemon is not answering on its control socket."""


class CommandFailed(DispatchdError):
    """The daemon refused the command; `detail` says why, `code` is machine-readable."""

    def __init__(self, message: str, *, status: int, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class Control(Protocol):
    """What the console needs from the daemon (the real client, or a fake in tests)."""

    def events(self) -> AsyncIterator[Json]: ...
    async def message(self, msg_id: str) -> Json: ...
    async def messages(self, number: str) -> list[Json]: ...
    async def pause(self, provider: str) -> Json: ...
    async def resume(self, provider: str) -> Json: ...
    async def set_weight(self, provider: str, weight: int) -> Json: ...
    async def retry(self, msg_id: str) -> Json: ...
    async def lift_suppression(self, number: str) -> Json: ...
    async def close(self) -> None: ...


class ControlClient:
    """Talks to one daemon's control socket; every call maps failures to typed errors."""

    def __init__(self, socket_path: Path, *, timeout: float = 5.0) -> None:
        self.socket_path = socket_path
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # force_close: a pooled connection to a daemon that restarted is dead anyway.
            connector = aiohttp.UnixConnector(path=str(self.socket_path), force_close=True)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=self._timeout)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _call(
        self, method: str, path: str, body: Json | None = None, *, within: float | None = None
    ) -> Any:
        # A per-call timeout replaces the session's, for commands that take long.
        extra: dict[str, Any] = {}
        if within is not None:
            extra["timeout"] = aiohttp.ClientTimeout(total=within)
        try:
            async with self._client().request(method, BASE_URL + path, json=body, **extra) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise self._unavailable(exc) from exc
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = None
        if status >= 400:
            problem = data if isinstance(data, dict) else {}
            raise CommandFailed(
                str(problem.get("detail") or f"the daemon answered HTTP {status}"),
                status=status,
                code=str(problem.get("code") or f"http_{status}"),
            )
        return data

    def _unavailable(self, exc: BaseException) -> DaemonUnavailable:
        reason = str(exc) or type(exc).__name__
        return DaemonUnavailable(f"no daemon on {self.socket_path} ({reason})")

    async def snapshot(self) -> Json:
        data: Json = await self._call("GET", "/v1/snapshot")
        return data

    async def events(self) -> AsyncIterator[Json]:
        """The live stream: a `snapshot` event first, then events until the daemon goes away.

        Ends by raising DaemonUnavailable, never by returning, so callers reconnect.
        """
        try:
            async with self._client().ws_connect(
                BASE_URL + "/v1/events",
                heartbeat=15.0,
                timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
            ) as ws:
                async for frame in ws:
                    if frame.type is not aiohttp.WSMsgType.TEXT:
                        break
                    event = json.loads(frame.data)
                    if event.get("type") == "snapshot":
                        _check_protocol(event.get("payload", {}))
                    yield event
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise self._unavailable(exc) from exc
        raise DaemonUnavailable("the daemon closed the event stream")

    async def message(self, msg_id: str) -> Json:
        data: Json = await self._call("GET", f"/v1/messages/{quote(msg_id, safe='')}")
        return data

    async def messages(self, number: str) -> list[Json]:
        data: Json = await self._call("GET", f"/v1/messages?to_number={quote(number, safe='')}")
        return list(data.get("items", []))

    async def pause(self, provider: str) -> Json:
        data: Json = await self._call("POST", f"/v1/providers/{quote(provider, safe='')}/pause")
        return data

    async def resume(self, provider: str) -> Json:
        data: Json = await self._call("POST", f"/v1/providers/{quote(provider, safe='')}/resume")
        return data

    async def set_weight(self, provider: str, weight: int) -> Json:
        path = f"/v1/providers/{quote(provider, safe='')}/weight"
        data: Json = await self._call("PUT", path, {"weight": weight})
        return data

    async def retry(self, msg_id: str) -> Json:
        data: Json = await self._call("POST", f"/v1/messages/{quote(msg_id, safe='')}/retry")
        return data

    async def lift_suppression(self, number: str) -> Json:
        data: Json = await self._call("DELETE", f"/v1/suppressions/{quote(number, safe='+')}")
        return data

    async def backup(self, path: str, *, within: float = BACKUP_TIMEOUT) -> Json:
        """Have the daemon copy its database to `path` (absolute; a directory gets a
        timestamped file), waiting up to `within` seconds for the copy to be complete."""
        data: Json = await self._call("POST", "/v1/backup", {"path": path}, within=within)
        return data


def _check_protocol(snapshot: Json) -> None:
    version = snapshot.get("protocol")
    if version != PROTOCOL_VERSION:
        raise CommandFailed(
            f"the daemon speaks control protocol {version}, this console {PROTOCOL_VERSION}",
            status=0,
            code="protocol_mismatch",
        )
