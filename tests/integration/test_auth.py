"""API keys against a real daemon: every client route needs one, probes and callbacks do not."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dispatchd.daemon import Daemon
from dispatchd.domain.errors import ConfigError
from dispatchd.http.app import WebDeps, make_app
from dispatchd.http.auth import OPEN_PATHS
from dispatchd.http.openapi import openapi_document
from tests.conftest import DaemonFactory, free_port
from tests.helpers import Json

KEY = "test-key-1"
FILE_KEY = "test-key-from-file"
BEARER = {"Authorization": f"Bearer {KEY}"}
SEND = {"to_number": "+17034573322", "message": "hello"}


@pytest.fixture
async def daemon(start_daemon: DaemonFactory, tmp_path: Path) -> Daemon:
    keys_file = tmp_path / "keys"
    digest = hashlib.sha256(FILE_KEY.encode()).hexdigest()
    keys_file.write_text(f"# stored hashed\nsha256:{digest}\n")
    return await start_daemon(api={"keys": [KEY], "keys_file": str(keys_file)})


async def call(
    http: aiohttp.ClientSession, method: str, d: Daemon, path: str, **kwargs: Any
) -> tuple[int, Json, Any]:
    """Like tests.helpers.call, but a body that is not JSON (e.g. /metrics) reads as {}."""
    async with http.request(method, f"http://127.0.0.1:{d.port}{path}", **kwargs) as resp:
        raw = await resp.read()
        body = (
            await resp.json(content_type=None) if raw and resp.content_type.endswith("json") else {}
        )
        return resp.status, body, resp.headers


def protected_routes(d: Daemon) -> list[tuple[str, str]]:
    """(method, path template) of every route of the real app that is not open."""
    assert d.service is not None
    app = make_app(WebDeps(d.service, "US", lambda: None, d.watchers, d.idempotency))
    routes = sorted(
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    )
    protected = [(m, p) for m, p in routes if p not in OPEN_PATHS and p != "/metrics"]
    # The client API is the bulk of it; a refactoring that empties this list is a bug.
    assert ("POST", "/messages") in protected and ("GET", "/messages/{id}") in protected
    return protected


def concrete(template: str) -> str:
    return re.sub(r"\{[^}]+\}", "01a222ab-f8ac-7206-bf20-90d60ad50f03", template)


async def test_every_protected_route_answers_401_without_a_key(
    daemon: Daemon, http: aiohttp.ClientSession
) -> None:
    for method, template in protected_routes(daemon):
        path = concrete(template)
        status, body, headers = await call(http, method, daemon, path, json=SEND)
        where = f"{method} {template}"
        assert status == 401, f"{where} answered {status} without a key"
        assert body["code"] == "unauthorized", where
        assert "Authorization: Bearer" in body["detail"], where
        assert headers["WWW-Authenticate"] == 'Bearer realm="dispatchd"', where
        status, body, headers = await call(
            http, method, daemon, path, json=SEND, headers={"Authorization": "Bearer nope"}
        )
        assert status == 401, f"{where} answered {status} to a wrong key"
        assert "not one dispatchd accepts" in body["detail"], where
        assert headers["WWW-Authenticate"] == 'Bearer realm="dispatchd", error="invalid_token"'


async def test_a_key_of_undecodable_bytes_is_401_not_a_crash(
    daemon: Daemon, caplog: pytest.LogCaptureFixture
) -> None:
    """`Authorization: Bearer \\xff\\xfe` (not UTF-8, so lone surrogates once decoded)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
    try:
        writer.write(
            b"GET /messages HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer \xff\xfe\r\n"
            b"Connection: close\r\n\r\n"
        )
        async with asyncio.timeout(5):
            raw = await reader.read()
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401 "), raw[:300]
    assert b"content-type: application/problem+json" in head.lower()
    assert b'error="invalid_token"' in head
    assert json.loads(body)["code"] == "unauthorized"
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def test_the_document_marks_exactly_the_protected_routes(daemon: Daemon) -> None:
    doc = openapi_document()
    protected = {(m.lower(), p) for m, p in protected_routes(daemon)}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if (method, path) in protected:
                assert op["security"] == [{"bearerAuth": []}], f"{method} {path}"
                assert op["responses"]["401"]["content"], f"{method} {path}"
            elif path != "/metrics":
                assert op["security"] == [], f"{method} {path}"
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


async def test_a_right_key_gets_through_from_the_list_or_the_file(
    daemon: Daemon, http: aiohttp.ClientSession
) -> None:
    status, sent, _ = await call(http, "POST", daemon, "/messages", json=SEND, headers=BEARER)
    assert status == 202, sent
    status, got, _ = await call(http, "GET", daemon, f"/messages/{sent['id']}", headers=BEARER)
    assert status == 200 and got["id"] == sent["id"]
    from_file = {"Authorization": f"Bearer {FILE_KEY}"}
    status, page, _ = await call(http, "GET", daemon, "/messages", headers=from_file)
    assert status == 200 and [m["id"] for m in page["items"]] == [sent["id"]]


async def test_probes_the_document_metrics_callbacks_and_simulator_stay_open(
    daemon: Daemon, http: aiohttp.ClientSession
) -> None:
    for path in ("/healthz", "/readyz", "/openapi.json", "/metrics", "/simulator/_faults"):
        status, _, _ = await call(http, "GET", daemon, path)
        assert status == 200, path
    # Provider callbacks authenticate with their own token: a wrong one is that route's 401.
    report = {"status": "delivered", "message_id": "x"}
    for path in ("/messages/abc/delivery_status?token=t", "/messages/delivery_status?token=t"):
        status, body, _ = await call(http, "POST", daemon, path, json=report)
        assert body["code"] in ("invalid_token", "message_not_found"), path
        assert status in (401, 404), path
    # Unknown URLs are still plain 404s, key or not.
    status, body, _ = await call(http, "GET", daemon, "/nothing-here")
    assert (status, body["code"]) == (404, "not_found")


async def test_metrics_can_require_a_key(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    d = await start_daemon(api={"keys": [KEY], "metrics_auth": True})
    status, body, headers = await call(http, "GET", d, "/metrics")
    assert (status, body["code"]) == (401, "unauthorized")
    assert headers["WWW-Authenticate"].startswith("Bearer")
    status, _, _ = await call(http, "GET", d, "/metrics", headers=BEARER)
    assert status == 200


async def test_without_keys_the_daemon_refuses_to_listen_beyond_loopback(
    start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"^api\.keys: no API keys"):
        await start_daemon(server={"host": "0.0.0.0"})
    # Nothing was opened: no database file, and the port is still free for a retry.
    assert not (tmp_path / "dispatchd.db").exists()


@pytest.mark.slow
def test_serve_exits_78_naming_the_key(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "dispatchd.toml"
    config.write_text(
        f'[server]\nhost = "0.0.0.0"\nport = {port}\n'
        f'[storage]\npath = "{tmp_path / "d.db"}"\n'
        f'[api]\nkeys_file = "{tmp_path / "no-such-file"}"\n'
    )
    env = {**os.environ, "PYTHONPATH": str(Path.cwd())}
    env = {k: v for k, v in env.items() if not k.startswith("DISPATCHD_")}
    done = subprocess.run(
        [sys.executable, "-m", "dispatchd", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )
    assert done.returncode == 78, done.stderr
    assert "configuration error: api.keys_file: cannot read" in done.stderr
    assert "Traceback" not in done.stderr
