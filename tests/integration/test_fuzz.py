"""Fuzz the HTTP API from its own OpenAPI document with schemathesis.

One pytest test per operation. Each runs schemathesis' examples, coverage (boundary and
negative values of every parameter and body field, wrong media types, missing fields) and
fuzzing phases, in positive and negative modes, against a real daemon over real HTTP, and
applies every built-in check (no 5xx, status code / Content-Type / headers / body match
the document, invalid data rejected, unsupported methods answer 405 with `Allow`) plus
`problem_json`: every error is an RFC 9457 problem.

Bounded for CI: a fixed seed, derandomized generation, no shrinking database, at most
`MAX_EXAMPLES` generated cases per operation on top of the coverage phase.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from schemathesis import Case, CheckContext, Response

from dispatchd.daemon import Daemon, build
from dispatchd.http.app import PROBLEM_TYPE
from dispatchd.http.openapi import openapi_document
from tests.conftest import free_port, make_config

pytestmark = pytest.mark.slow  # schemathesis, every operation

MAX_EXAMPLES = 50
SEED = 20250131
START_TIMEOUT = 30.0
TARGET_NUMBER = "+17034573399"
# The daemon requires this API key; schemathesis sends it, and its `ignored_auth` check
# proves every operation documented as protected refuses requests without it or with
# another one.
API_KEY = "fuzz-api-key"

CONFIG = schemathesis.Config.from_dict(
    {
        "seed": SEED,
        "generation": {
            "max-examples": MAX_EXAMPLES,
            "deterministic": True,
            "mode": "all",
            "database": "none",
        },
        "auth": {"openapi": {"bearerAuth": {"bearer": API_KEY}}},
        "checks": {
            # Valid data must get 2xx, or 401/404 (a fuzzed token or id is simply unknown),
            # or 422: the schema cannot say which strings libphonenumber takes as a valid
            # number, how many SMS segments a text needs or which numbers are suppressed.
            # (Narrower than schemathesis' default, which also takes 3xx, 403, 409, 429 and
            # 5xx.) The 422 body is still checked against the document like every answer.
            "positive_data_acceptance": {
                "expected-statuses": ["2xx", "401", "404", "422"],
            },
        },
    }
)

# The document the daemon serves; `test_served_document_is_the_fuzzed_one` pins them equal.
schema = schemathesis.openapi.from_dict(openapi_document(), config=CONFIG)


class DaemonThread:
    """A real daemon on its own event loop in a background thread.

    schemathesis drives the API with a synchronous HTTP client from a synchronous
    Hypothesis test, which would block the test's own event loop; so the daemon cannot
    run there (and the async `start_daemon` fixture cannot be used).
    """

    def __init__(self, tmp: Path) -> None:
        self.config = make_config(tmp, free_port(), api={"keys": [API_KEY]})
        self.port = self.config.server.port
        self.error: BaseException | None = None
        self._up = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.daemon: Daemon | None = None
        self._thread = threading.Thread(target=self._run, name="fuzz-daemon", daemon=True)

    def __enter__(self) -> DaemonThread:
        self._thread.start()
        if not self._up.wait(START_TIMEOUT):
            pytest.fail(f"the daemon did not start within {START_TIMEOUT}s")
        if self.error is not None:
            raise self.error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(START_TIMEOUT)
        assert not self._thread.is_alive(), "the daemon thread did not stop"
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self.error = exc
            self._up.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        daemon = self.daemon = await build(self.config, time.time, random.Random(1))
        try:
            await daemon.start()
            self._up.set()
            await self._stop.wait()
        finally:
            await daemon.stop(grace=1.0)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token(self, msg_id: str) -> str:
        """The callback token of a message (a pure HMAC, safe to compute from this thread)."""
        assert self.daemon is not None and self.daemon.service is not None
        return self.daemon.service.token(msg_id)


@pytest.fixture(scope="module")
def live() -> Iterator[DaemonThread]:
    # A short path: the control socket sits beside the database, and unix socket paths
    # are capped at ~107 bytes.
    tmp = Path(tempfile.mkdtemp(prefix="dd-fuzz-", dir="/tmp"))
    try:
        with DaemonThread(tmp) as daemon:
            yield daemon
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@pytest.fixture(scope="module")
def target(live: DaemonThread, http: requests.Session) -> tuple[str, str]:
    """A real message and its callback token."""
    resp = http.post(
        f"{live.base_url}/messages",
        json={"to_number": TARGET_NUMBER, "message": "fuzz target"},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=10,
    )
    assert resp.status_code == 202, resp.text
    msg_id = str(resp.json()["id"])
    return msg_id, live.token(msg_id)


# Reads of one message; the target is final, so its event stream ends by itself.
_BY_ID = ("/messages/{id}", "/messages/{id}/events")


def aim(case: Case, target: tuple[str, str]) -> None:
    """Point about half the schema-valid cases at a real message, past the 401/404 that a
    fuzzed id or token gets, so the fuzzer also reaches the code that applies reports and
    renders a message with its attempts and history. (Which half depends on the generated
    value, so runs stay deterministic; the other half keeps its fuzzed id and token.)"""
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return
    msg_id, token = target
    params = dict(case.path_parameters or {})
    if case.operation.path == "/messages/{id}/delivery_status":
        query = dict(case.query or {})
        if len(str(query.get("token"))) % 2:
            case.path_parameters = {**params, "id": msg_id}
            case.query = {**query, "token": token}
    elif case.operation.path in _BY_ID and len(str(params.get("id"))) % 2:
        case.path_parameters = {**params, "id": msg_id}


_CODE = re.compile(r"^[a-z0-9_]+$")


def problem_json(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """Every 4xx/5xx is `application/problem+json` with a consistent RFC 9457 body."""
    if response.status_code < 400:
        return None
    ctype = response.headers.get("content-type", [""])[0].split(";")[0].strip()
    assert ctype == "application/problem+json", (
        f"{response.status_code} answered with Content-Type {ctype!r}, not problem+json"
    )
    body: Any = json.loads(response.content)
    assert isinstance(body, dict), f"problem body is not an object: {body!r}"
    assert body.get("status") == response.status_code, f"status field disagrees: {body}"
    code = body.get("code")
    assert isinstance(code, str) and _CODE.match(code), f"bad problem code: {body}"
    assert body.get("type") == PROBLEM_TYPE + code, f"type does not match code: {body}"
    for key in ("title", "detail"):
        assert isinstance(body.get(key), str) and body[key], f"empty {key}: {body}"
    if code == "validation_failed":
        assert body.get("errors"), f"validation_failed without errors: {body}"
    return True


def test_served_document_is_the_fuzzed_one(live: DaemonThread, http: requests.Session) -> None:
    resp = http.get(f"{live.base_url}/openapi.json", timeout=10)
    assert resp.status_code == 200
    assert resp.json() == openapi_document()


@schema.parametrize()
def test_api(
    case: Case, live: DaemonThread, http: requests.Session, target: tuple[str, str]
) -> None:
    aim(case, target)
    case.call_and_validate(
        base_url=live.base_url, session=http, timeout=10, additional_checks=[problem_json]
    )
