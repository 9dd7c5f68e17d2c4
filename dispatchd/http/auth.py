"""API keys: which keys are accepted, who a request is, and whether it may run unauthenticated.

Only SHA-256 digests of the keys are kept in memory. A request's key is hashed once and
compared with `hmac.compare_digest` against every accepted digest, so the time taken says
nothing about how much of a key was right.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from dispatchd.config import ApiConfig
from dispatchd.domain.errors import ConfigError
from dispatchd.http.problems import Problem

logger = logging.getLogger(__name__)

_HASHED = re.compile(r"sha256:([0-9a-fA-F]{64})")
REALM = 'Bearer realm="dispatchd"'
# The idempotency scope of a request: the id of its API key ("" without authentication).
SCOPE = web.RequestKey("dispatchd.scope", str)
# Routes that never need an API key: probes, the API description, and the provider
# callbacks, which carry their own HMAC token (providers hold no API keys). Every other
# route needs one; `/metrics` too when `[api] metrics_auth` is set.
OPEN_PATHS = frozenset(
    {
        "/healthz",
        "/readyz",
        "/openapi.json",
        "/messages/delivery_status",
        "/messages/{id}/delivery_status",
        # Providers' own report formats: signed by the provider, or carrying the token.
        "/providers/{name}/reports",
    }
)
METRICS_PATH = "/metrics"


def digest(key: str) -> bytes:
    """The SHA-256 digest of an API key."""
    return hashlib.sha256(key.encode()).digest()


def parse_key(entry: str, where: str) -> bytes:
    """The digest of one configured key: the key itself or `sha256:<64 hex digits>`."""
    key = entry.strip()
    if not key:
        raise ConfigError(f"{where}: an API key cannot be empty")
    if key.lower().startswith("sha256:"):
        found = _HASHED.fullmatch(key)
        if found is None:
            raise ConfigError(f"{where}: 'sha256:' must be followed by 64 hex digits")
        return bytes.fromhex(found.group(1))
    if not key.isascii() or not key.isprintable() or " " in key:
        raise ConfigError(f"{where}: an API key must be printable ASCII without spaces")
    return digest(key)


def key_file_entries(text: str) -> list[str]:
    """The keys in a keys file: one a line; blank lines and `#` comments are skipped."""
    out = []
    for line in text.splitlines():
        entry = line.split("#", 1)[0].strip()
        if entry:
            out.append(entry)
    return out


def is_loopback(host: str) -> bool:
    """Whether `host` is only reachable from this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a request may go on: its scope if so, else why not."""

    scope: str | None
    reason: str = ""  # "missing" or "wrong" when scope is None


class KeyRing:
    """The accepted API keys, as digests; empty means authentication is off."""

    def __init__(self, digests: Iterable[bytes]) -> None:
        self._digests = tuple(dict.fromkeys(digests))

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def check(self, authorization: str | None) -> Verdict:
        """Judge an `Authorization` header value."""
        if not self._digests:
            return Verdict("")
        if authorization is None:
            return Verdict(None, "missing")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return Verdict(None, "missing")
        # No accepted key is anything but printable ASCII (parse_key), and aiohttp hands
        # undecodable header bytes over as lone surrogates, which cannot even be hashed.
        if not (token.isascii() and token.isprintable()):
            return Verdict(None, "wrong")
        presented = digest(token)
        # Every digest is compared (no early exit), so timing does not say which key matched.
        matched = b""
        for known in self._digests:
            if hmac.compare_digest(known, presented):
                matched = known
        if not matched:
            return Verdict(None, "wrong")
        return Verdict(scope_id(matched))


def scope_id(key_digest: bytes) -> str:
    """A stable, non-secret id of an API key: the first 16 hex digits of its digest."""
    return key_digest.hex()[:16]


def load_keys(api: ApiConfig) -> KeyRing:
    """The key ring from `[api] keys` and `[api] keys_file`; ConfigError naming the bad key."""
    digests = [parse_key(k, f"api.keys[{i}]") for i, k in enumerate(api.keys)]
    if api.keys_file is not None:
        path: Path = api.keys_file
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(f"api.keys_file: cannot read {path}: {why}") from exc
        entries = key_file_entries(text)
        digests += [
            parse_key(e, f"api.keys_file ({path}, key {i + 1})") for i, e in enumerate(entries)
        ]
    return KeyRing(digests)


def check_exposure(keys: KeyRing, host: str) -> None:
    """Refuse to serve an unauthenticated API beyond this machine; warn when local only."""
    if keys.enabled:
        logger.info("event=api_auth keys=%d", len(keys))
        return
    if not is_loopback(host):
        raise ConfigError(
            f"api.keys: no API keys are configured, so the API would be open to anyone who can "
            f"reach {host}; set [api] keys or keys_file, or listen on a loopback address"
        )
    logger.warning(
        "event=api_unauthenticated host=%s detail=%r",
        host,
        "no API keys configured: the API is unauthenticated and only reachable from this machine",
    )


def unauthorized(reason: str) -> Problem:
    """The 401 answer for a missing or wrong API key (RFC 6750 `WWW-Authenticate`)."""
    if reason == "wrong":
        return Problem(
            401,
            "unauthorized",
            "Unauthorized",
            "The API key in the Authorization header is not one dispatchd accepts.",
            headers={hdrs.WWW_AUTHENTICATE: f'{REALM}, error="invalid_token"'},
        )
    return Problem(
        401,
        "unauthorized",
        "Unauthorized",
        "This route needs an API key: send it as 'Authorization: Bearer <key>'.",
        headers={hdrs.WWW_AUTHENTICATE: REALM},
    )


def auth_middleware(keys: KeyRing, open_paths: frozenset[str]) -> Middleware:
    """Require an API key on every matched route but `open_paths` (and mounted sub-apps).

    Protection is the default, so a route added later is protected unless named here.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        info = request.match_info
        resource = info.route.resource
        # Unmatched requests go on to their 404/405; sub-apps (the simulator) are not the API.
        if resource is None or len(info.apps) > 1 or resource.canonical in open_paths:
            request[SCOPE] = ""
            return await handler(request)
        verdict = keys.check(request.headers.get(hdrs.AUTHORIZATION))
        if verdict.scope is None:
            raise unauthorized(verdict.reason)
        request[SCOPE] = verdict.scope
        return await handler(request)

    return middleware
