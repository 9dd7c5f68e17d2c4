"""Hostile clients: huge and compressed bodies, deep nesting, invalid UTF-8, NUL bytes,
lone surrogates, very long numbers, unicode digits, slowloris and connection floods.

Body and parsing attacks run against a real in-process daemon. Connection-level attacks
(slowloris, floods, unparseable HTTP) need the connection guard, which lives in the
runner: they run against `make_runner(make_app(...))` serving the same daemon's service,
exactly what `Daemon.start` builds once it creates its runner with `make_runner`.

The daemon runs in this process, so its memory is this process's: each attack checks
that the peak resident set grows by less than a bound far below what buffering the
attack would take.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import re
import resource
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from dispatchd.daemon import Daemon
from dispatchd.http import bodies as dispatchd_bodies
from dispatchd.http import connections as dispatchd_connections
from dispatchd.http.app import GUARD, MAX_BODY, ConnectionGuard, WebDeps, make_app, make_runner
from tests.conftest import wait_for
from tests.helpers import NUMBER, Json

MiB = 1024 * 1024
PROBLEM = "application/problem+json"
# How long a well-behaved client may wait for an answer while the daemon is under attack.
ANSWER_WITHIN = 5.0
# Sockets per flood: both ends live in this process, so two descriptors each.
FLOOD = min(1000, (resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 256) // 2)


# -- helpers --------------------------------------------------------------------------------


def _reset_peak() -> bool:
    """Reset the kernel's high-water mark of the resident set (VmHWM); False if refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    assert match, f"/proc/self/status has no {field}"
    return int(match.group(1))


class PeakMemory:
    """The peak resident set of this process (the daemon's too) over a block, above its start.

    Uses the kernel's high-water mark, reset on entry (`/proc/self/clear_refs`); where
    that is not allowed, samples VmRSS every few milliseconds instead.
    """

    def __init__(self) -> None:
        self.baseline = 0
        self.peak = 0
        self._hwm = False
        self._sampler: asyncio.Task[None] | None = None

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.baseline) / 1024

    async def __aenter__(self) -> PeakMemory:
        self.baseline = self.peak = _status_kib("VmRSS")
        self._hwm = _reset_peak()
        self._sampler = asyncio.create_task(self._sample(), name="rss-sampler")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._sampler is not None
        self._sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._sampler
        self._take()

    def _take(self) -> None:
        self.peak = max(self.peak, _status_kib("VmHWM" if self._hwm else "VmRSS"))

    async def _sample(self) -> None:
        while True:
            self._take()
            # The sampling period, not a wait for state: VmRSS is read every 5 ms.
            await asyncio.sleep(0.005)


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def read_response(reader: asyncio.StreamReader) -> RawResponse:
    """One HTTP/1.1 response with a Content-Length, read off a raw stream."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return RawResponse(status, headers, body)


def assert_problem(resp: RawResponse, status: int, code: str) -> Json:
    assert resp.status == status, (resp.status, resp.body[:300])
    assert resp.headers["content-type"].split(";")[0] == PROBLEM, resp.headers
    body: Json = resp.json()
    assert body["status"] == status and body["code"] == code, body
    return body


async def call(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, Json, str]:
    async with http.request(method, url, **kwargs) as resp:
        raw = await resp.read()
        return resp.status, (json.loads(raw) if raw else {}), resp.content_type


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sent until it closed the connection."""
    data = b""
    try:
        while chunk := await reader.read(65536):
            data += chunk
    except ConnectionError:
        pass
    return data


async def healthy(http: aiohttp.ClientSession, base: str, rounds: int = 5) -> float:
    """Slowest answer to a few ordinary requests, failing if any takes over ANSWER_WITHIN."""
    slowest = 0.0
    for _ in range(rounds):
        started = time.monotonic()
        async with asyncio.timeout(ANSWER_WITHIN):
            status, body, _ = await call(http, "GET", f"{base}/healthz")
            assert status == 200, body
            status, body, _ = await call(
                http, "POST", f"{base}/messages", json={"to_number": NUMBER, "message": "hi"}
            )
            assert status == 202, body
        slowest = max(slowest, time.monotonic() - started)
    return slowest


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # A fresh connection per request: a flood must not be dodged by a warm keep-alive one.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


def base_url(d: Daemon) -> str:
    return f"http://127.0.0.1:{d.port}"


@dataclass
class Guarded:
    port: int
    guard: ConnectionGuard
    runner: web.AppRunner

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


GuardedFactory = Callable[..., Awaitable[Guarded]]


@pytest.fixture
async def guarded(daemon: Daemon) -> AsyncIterator[GuardedFactory]:
    """Serve the daemon's service through `make_runner` with the given limits."""
    runners: list[web.AppRunner] = []

    async def serve(**limits: Any) -> Guarded:
        assert daemon.service is not None
        app = make_app(
            WebDeps(
                daemon.service,
                daemon.config.delivery.default_region,
                lambda: None,
                daemon.watchers,
                daemon.idempotency,
            )
        )
        runner = make_runner(app, **limits)
        runners.append(runner)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return Guarded(runner.addresses[0][1], app[GUARD], runner)

    yield serve
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
def short_body_timeout(monkeypatch: pytest.MonkeyPatch) -> Iterator[float]:
    monkeypatch.setattr(dispatchd_bodies, "BODY_TIMEOUT", 0.5)
    yield 0.5


# -- huge and compressed bodies ---------------------------------------------------------------


def _post_head(length: int | None) -> bytes:
    """The head of a JSON POST /messages: with a Content-Length, or chunked if None."""
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (
        "POST /messages HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"{framing}\r\n\r\n"
    ).encode()


async def _push(writer: asyncio.StreamWriter, total: int, *, chunked: bool) -> int:
    """Write up to `total` body bytes (16 KiB at a time) until done or the server hangs up."""
    block = b"[" * 16384
    frame = f"{len(block):x}\r\n".encode() + block + b"\r\n" if chunked else block
    sent = 0
    try:
        while sent < total:
            writer.write(frame)
            await writer.drain()
            sent += len(block)
        if chunked:
            # End the body: aiohttp keeps reading (and dropping) an unfinished one for its
            # lingering time (10 s) even after the client hangs up, delaying shutdown.
            writer.write(b"0\r\n\r\n")
            await writer.drain()
    except ConnectionError:
        pass
    return sent


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_huge_body_gets_413_before_it_is_all_sent(daemon: Daemon, chunked: bool) -> None:
    """64 MiB announced (or chunked without end), 1 MiB sent: the 413 comes anyway, at once."""
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
    writer.write(_post_head(None if chunked else 64 * MiB))
    pusher = asyncio.create_task(_push(writer, 1 * MiB, chunked=chunked))
    try:
        async with asyncio.timeout(ANSWER_WITHIN):
            resp = await read_response(reader)
        assert_problem(resp, 413, "payload_too_large")
    finally:
        pusher.cancel()
        writer.close()


@pytest.mark.slow
async def test_huge_bodies_are_never_buffered(daemon: Daemon, http: aiohttp.ClientSession) -> None:
    """Eight clients push 32 MiB each (256 MiB in all) while others are served; memory
    grows by a few MiB, not by the bodies."""

    async def hog(chunked: bool) -> RawResponse:
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
        writer.write(_post_head(None if chunked else 32 * MiB))
        pusher = asyncio.create_task(_push(writer, 32 * MiB, chunked=chunked))
        try:
            async with asyncio.timeout(ANSWER_WITHIN * 2):
                refused = await read_response(reader)
                assert await pusher == 32 * MiB
                # The server read the rest and dropped it; the connection still works.
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
                assert (await read_response(reader)).status == 200
            return refused
        finally:
            pusher.cancel()
            writer.close()

    async with PeakMemory() as mem:
        hogs = [asyncio.create_task(hog(chunked=i % 2 == 0)) for i in range(8)]
        slowest = await healthy(http, base_url(daemon))
        answers = await asyncio.gather(*hogs)
    for resp in answers:
        assert_problem(resp, 413, "payload_too_large")
    assert slowest < ANSWER_WITHIN
    assert mem.growth_mib < 32, f"resident memory grew by {mem.growth_mib:.1f} MiB"


@pytest.mark.slow
async def test_compressed_body_is_refused_not_inflated(
    daemon: Daemon, http: aiohttp.ClientSession
) -> None:
    """A 64 MiB gzip bomb that fits in the 64 KiB cap: 415, and it is never inflated."""
    bomb = gzip.compress(b"{" + b" " * (64 * MiB) + b"}", compresslevel=9)
    assert len(bomb) < MAX_BODY
    async with PeakMemory() as mem:
        status, body, ctype = await call(
            http,
            "POST",
            f"{base_url(daemon)}/messages",
            data=bomb,
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
    assert (status, ctype, body["code"]) == (415, PROBLEM, "unsupported_media_type"), body
    assert "gzip" in body["detail"]
    assert mem.growth_mib < 16, f"resident memory grew by {mem.growth_mib:.1f} MiB"


@pytest.mark.slow
async def test_slow_body_times_out_with_408(daemon: Daemon, short_body_timeout: float) -> None:
    """Headers in, then the body stalls: 408 once the body timeout passes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
    writer.write(_post_head(100) + b'{"to_number": ')
    started = time.monotonic()
    async with asyncio.timeout(ANSWER_WITHIN):
        resp = await read_response(reader)
    assert_problem(resp, 408, "request_timeout")
    assert time.monotonic() - started >= short_body_timeout * 0.9
    writer.close()


# -- malformed JSON and text ------------------------------------------------------------------


async def post_raw(
    http: aiohttp.ClientSession,
    d: Daemon,
    body: bytes,
    ctype: str = "application/json",
    path: str = "/messages",
) -> tuple[int, Json]:
    status, data, content_type = await call(
        http, "POST", base_url(d) + path, data=body, headers={"Content-Type": ctype}
    )
    if status >= 400:
        assert content_type == PROBLEM, (status, data)
    return status, data


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"[" * 60_000, "nested too deeply"),
        (b'{"message": ' + b"[" * 60_000, "nested too deeply"),
        (b'{"a":' * 10_000 + b"1" + b"}" * 10_000, "nested too deeply"),
        (b'{"to_number": NaN, "message": "x"}', "NaN"),
        (b'{"to_number": "+17034573322", "message": Infinity}', "Infinity"),
        (b'{"to_number": "+17034573322", "message": "a\x00b"}', "Invalid control character"),
    ],
    ids=["array", "nested-value", "object", "nan", "infinity", "raw-nul"],
)
async def test_unparseable_json_is_400(
    daemon: Daemon, http: aiohttp.ClientSession, body: bytes, fragment: str
) -> None:
    status, problem = await post_raw(http, daemon, body)
    assert (status, problem["code"]) == (400, "malformed_request"), problem
    assert fragment in problem["detail"]


def _nested(depth: int, path: str) -> bytes:
    """A valid send (or one-item batch) whose JSON nests `depth` levels in all."""
    inner = depth - (1 if path == "/messages" else 3)
    send = f'{{"to_number": "{NUMBER}", "message": "hi", "x": {"[" * inner}{"]" * inner}}}'
    return (send if path == "/messages" else f'{{"messages": [{send}]}}').encode()


@pytest.mark.parametrize("keyed", [False, True], ids=["plain", "idempotency-key"])
@pytest.mark.parametrize("path", ["/messages", "/messages/batch"])
@pytest.mark.parametrize("depth", [40, 975])
async def test_deep_nesting_is_400_with_or_without_an_idempotency_key(
    daemon: Daemon, http: aiohttp.ClientSession, depth: int, path: str, keyed: bool
) -> None:
    """Below Python's recursion limit for parsing, but past the nesting cap: 400, never 500
    (the idempotency hash re-encodes the fields one level deeper than they arrived)."""
    headers = {"Content-Type": "application/json"}
    if keyed:
        headers["Idempotency-Key"] = f"deep-{depth}-{path}"
    status, problem, ctype = await call(
        http, "POST", base_url(daemon) + path, data=_nested(depth, path), headers=headers
    )
    assert (status, ctype, problem["code"]) == (400, PROBLEM, "malformed_request"), problem
    assert "nested too deeply" in problem["detail"]


@pytest.mark.parametrize("path", ["/messages", "/messages/batch"])
async def test_no_depth_near_the_recursion_limit_is_a_500(
    daemon: Daemon, http: aiohttp.ClientSession, path: str
) -> None:
    """Where parsing just fits under the recursion limit depends on the stack at the time,
    so sweep past it: every depth is a 400, the idempotency hash included."""
    for depth in range(880, 1010):
        headers = {"Content-Type": "application/json", "Idempotency-Key": f"sweep-{depth}"}
        status, problem, _ = await call(
            http, "POST", base_url(daemon) + path, data=_nested(depth, path), headers=headers
        )
        assert (status, problem["code"]) == (400, "malformed_request"), (depth, problem)


@pytest.mark.parametrize("path", ["/messages", "/messages/batch"])
async def test_nesting_up_to_the_cap_is_parsed(
    daemon: Daemon, http: aiohttp.ClientSession, path: str
) -> None:
    status, body, _ = await call(
        http,
        "POST",
        base_url(daemon) + path,
        data=_nested(dispatchd_bodies.MAX_NESTING, path),
        headers={"Content-Type": "application/json", "Idempotency-Key": f"cap-{path}"},
    )
    assert status in (200, 202), body


async def test_nesting_past_the_size_cap_is_413(
    daemon: Daemon, http: aiohttp.ClientSession
) -> None:
    status, problem = await post_raw(http, daemon, b"[" * 100_000)
    assert (status, problem["code"]) == (413, "payload_too_large"), problem


@pytest.mark.parametrize(
    ("body", "ctype"),
    [
        (b'{"to_number": "+17034573322", "message": "caf\xe9"}', "application/json"),
        (b'{"to_number": "+17034573322", "message": "\xed\xa0\x80"}', "application/json"),
        (b'{"to_number": "+17034573322", "message": "\xc0\xaf"}', "application/json"),
        (
            '{"to_number": "+17034573322", "message": "hi"}'.encode("utf-16"),
            "application/json",
        ),
        (b"to_number=%2B17034573322&message=caf\xe9", "application/x-www-form-urlencoded"),
        (b"to_number=%2B17034573322&message=caf%E9", "application/x-www-form-urlencoded"),
        (b"to_number=%2B17034573322&message=%ED%A0%80", "application/x-www-form-urlencoded"),
        (
            b"to_number=%2B17034573322&message=caf\xe9",
            "application/x-www-form-urlencoded; charset=latin-1",
        ),
    ],
    ids=[
        "latin-1",
        "encoded-surrogate",
        "overlong",
        "utf-16",
        "form-raw",
        "form-escaped",
        "form-surrogate",
        "form-charset",
    ],
)
async def test_invalid_utf8_is_400(
    daemon: Daemon, http: aiohttp.ClientSession, body: bytes, ctype: str
) -> None:
    status, problem = await post_raw(http, daemon, body, ctype)
    assert (status, problem["code"]) == (400, "malformed_request"), problem
    assert "UTF-8" in problem["detail"]


def _field_errors(problem: Json) -> dict[str, str]:
    assert problem["code"] == "validation_failed", problem
    return {e["field"]: e["code"] for e in problem["errors"]}


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"to_number": NUMBER, "message": "a\ud800b"}, {"message": "invalid_characters"}),
        ({"to_number": NUMBER, "message": "\udfff"}, {"message": "invalid_characters"}),
        ({"to_number": "+1703457\udc003322", "message": "hi"}, {"to_number": "invalid_characters"}),
        ({"to_number": NUMBER, "message": "a\u0000b"}, {"message": "invalid_characters"}),
        ({"to_number": NUMBER + "\u0000", "message": "hi"}, {"to_number": "invalid_characters"}),
        (
            {"message": "\ud83d"},
            {"to_number": "missing", "message": "invalid_characters"},
        ),
        (
            {"to_number": "\ud800", "message": " "},
            {"to_number": "invalid_characters", "message": "empty"},
        ),
    ],
    ids=[
        "lone-high-surrogate",
        "lone-low-surrogate",
        "surrogate-in-number",
        "nul-in-message",
        "nul-in-number",
        "with-missing-number",
        "with-empty-message",
    ],
)
async def test_unstorable_text_is_a_field_error(
    daemon: Daemon, http: aiohttp.ClientSession, fields: Json, expected: dict[str, str]
) -> None:
    """Valid JSON ("\\ud800" escapes) whose strings SQLite cannot store: 422, never 500."""
    body = json.dumps(fields).encode()  # ensure_ascii: surrogates go out as \\u escapes
    status, problem = await post_raw(http, daemon, body)
    assert status == 422, problem
    assert _field_errors(problem) == expected
    for error in problem["errors"]:
        if error["code"] == "invalid_characters":
            assert "U+" in error["message"], error
    # Nothing was stored.
    status, page, _ = await call(http, "GET", base_url(daemon) + "/messages")
    assert (status, page["items"]) == (200, [])


async def test_unstorable_text_in_a_form_is_a_field_error(
    daemon: Daemon, http: aiohttp.ClientSession
) -> None:
    status, problem = await post_raw(
        http, daemon, b"to_number=%2B17034573322&message=a%00b", "application/x-www-form-urlencoded"
    )
    assert status == 422
    assert _field_errors(problem) == {"message": "invalid_characters"}


@pytest.mark.parametrize("path", ["/messages/delivery_status", "/messages/{id}/delivery_status"])
async def test_unstorable_report_id_is_a_field_error(
    daemon: Daemon, http: aiohttp.ClientSession, path: str
) -> None:
    status, sent, _ = await call(
        http, "POST", base_url(daemon) + "/messages", json={"to_number": NUMBER, "message": "x"}
    )
    assert status == 202
    assert daemon.service is not None
    path = path.format(id=sent["id"]) + f"?token={daemon.service.token(sent['id'])}"
    for pmid in ("a\ud800", "a\x00"):
        body = json.dumps({"status": "delivered", "message_id": pmid}).encode()
        status, problem = await post_raw(http, daemon, body, path=path)
        assert status == 422, problem
        assert _field_errors(problem) == {"message_id": "invalid_characters"}


async def test_non_ascii_token_is_401(daemon: Daemon, http: aiohttp.ClientSession) -> None:
    """hmac.compare_digest raises TypeError on non-ASCII str: that was a 500."""
    base = base_url(daemon)
    status, sent, _ = await call(
        http, "POST", base + "/messages", json={"to_number": NUMBER, "message": "x"}
    )
    assert status == 202

    async def provider_id() -> str | None:
        _, msg, _ = await call(http, "GET", f"{base}/messages/{sent['id']}")
        return msg["provider_message_id"]

    await wait_for(provider_id, what="a provider to take the message")
    report = {"status": "delivered", "message_id": await provider_id()}
    for path in (f"/messages/{sent['id']}/delivery_status", "/messages/delivery_status"):
        for token in ("é", "\u0663" * 32, "a\x00"):
            status, problem, ctype = await call(
                http, "POST", base + path, params={"token": token}, json=report
            )
            assert (status, ctype, problem["code"]) == (401, PROBLEM, "invalid_token"), problem


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/messages/%00", 404),
        ("/messages?to_number=%00", 422),
        ("/messages?status=%00", 422),
        ("/messages?cursor=%00", 200),
        ("/messages?cursor=%ED%A0%80", 200),
        ("/messages/%ED%A0%80", 404),
    ],
)
async def test_nul_and_bad_escapes_in_the_url(
    daemon: Daemon, http: aiohttp.ClientSession, path: str, status: int
) -> None:
    got, body, ctype = await call(http, "GET", base_url(daemon) + path)
    assert got == status, body
    assert ctype == (PROBLEM if status >= 400 else "application/json")


# -- numbers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"to_number": 1' + b"7" * 60_000 + b', "message": "x"}', {"to_number": "not_a_string"}),
        (b'{"to_number": 1e999999, "message": "x"}', {"to_number": "not_a_string"}),
        (
            b'{"to_number": -0.' + b"0" * 60_000 + b'1, "message": "x"}',
            {"to_number": "not_a_string"},
        ),
        (b'{"to_number": "' + b"7" * 60_000 + b'", "message": "x"}', {"to_number": "unparseable"}),
        (
            b'{"to_number": "+17034573322", "message": ' + b"9" * 60_000 + b"}",
            {"message": "not_a_string"},
        ),
    ],
    ids=["huge-int", "huge-exponent", "long-fraction", "long-string", "huge-int-message"],
)
async def test_very_long_numbers_are_field_errors(
    daemon: Daemon, http: aiohttp.ClientSession, body: bytes, expected: dict[str, str]
) -> None:
    started = time.monotonic()
    status, problem = await post_raw(http, daemon, body)
    assert status == 422, problem
    assert _field_errors(problem) == expected
    assert time.monotonic() - started < ANSWER_WITHIN


def digits(text: str, zero: int) -> str:
    """`text` with its ASCII digits written in the script whose zero is code point `zero`."""
    return "".join(chr(zero + int(c)) if c.isdigit() else c for c in text)


FULLWIDTH, ARABIC_INDIC, DEVANAGARI = 0xFF10, 0x0660, 0x0966


@pytest.mark.parametrize(
    "number",
    [
        digits("703 457 3322", FULLWIDTH),
        "\uff0b" + digits("1 703 457 3322", FULLWIDTH),  # fullwidth plus sign
        digits("7034573322", ARABIC_INDIC),
        digits("7034573322", DEVANAGARI),
        "703\u200b457\u200b3322",  # zero-width spaces
        "\u202e7034573322",  # right-to-left override
        "703\u00a0457\u00a03322",  # no-break spaces
        "+1 703 457 3322\ufeff",  # byte order mark
    ],
    ids=["fullwidth", "fullwidth-plus", "arabic-indic", "devanagari", "zwsp", "rlo", "nbsp", "bom"],
)
async def test_unicode_digits_and_formatting_normalise_to_ascii_e164(
    daemon: Daemon, http: aiohttp.ClientSession, number: str
) -> None:
    status, msg, _ = await call(
        http, "POST", base_url(daemon) + "/messages", json={"to_number": number, "message": "x"}
    )
    assert (status, msg["to_number"]) == (202, NUMBER), msg
    status, page, _ = await call(
        http, "GET", base_url(daemon) + "/messages", params={"to_number": number}
    )
    assert status == 200 and [m["id"] for m in page["items"]] == [msg["id"]], page


@pytest.mark.parametrize(
    "number",
    [
        "\u2077\u2070\u00b3\u2074\u2075\u2077\u00b3\u00b3\u00b2\u00b2",  # superscripts
        digits("703\u0000457 3322", FULLWIDTH),
        "7" * 65,
    ],
    ids=["superscript", "nul", "long"],
)
async def test_numbers_that_only_look_like_digits_are_refused(
    daemon: Daemon, http: aiohttp.ClientSession, number: str
) -> None:
    status, problem, _ = await call(
        http, "POST", base_url(daemon) + "/messages", json={"to_number": number, "message": "x"}
    )
    assert status == 422 and "to_number" in _field_errors(problem), problem


@pytest.mark.parametrize(
    "limit",
    [
        digits("10", ARABIC_INDIC),
        digits("10", FULLWIDTH),
        "\u00b2",  # superscript two: isdigit() but not a decimal
        " 10",
        "+10",
        "1_0",
        "10.0",
        "1" * 5000,
        "",
        "0x10",
    ],
)
async def test_list_limit_takes_only_ascii_digits(
    daemon: Daemon, http: aiohttp.ClientSession, limit: str
) -> None:
    status, problem, ctype = await call(
        http, "GET", base_url(daemon) + "/messages", params={"limit": limit}
    )
    assert (status, ctype) == (422, PROBLEM), problem
    assert _field_errors(problem) == {"limit": "out_of_range"}


# -- connections: slowloris, floods, broken HTTP ----------------------------------------------


class Slowloris:
    """Sockets that send a request head one byte at a time and never finish it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.closed: list[asyncio.Task[bytes]] = []
        self._dribbler: asyncio.Task[None] | None = None

    async def open(self, count: int) -> None:
        for _ in range(count):
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
            self.conns.append((reader, writer))
            self.closed.append(asyncio.create_task(closed_by_server(reader)))
        if self._dribbler is None:
            self._dribbler = asyncio.create_task(self._dribble(), name="slowloris")

    @property
    def still_open(self) -> int:
        return sum(not t.done() for t in self.closed)

    async def _dribble(self) -> None:
        while True:
            # The attack's pace, the subject of the test: one byte per socket every 100 ms.
            await asyncio.sleep(0.1)
            for (_, writer), closed in zip(self.conns, self.closed, strict=True):
                if not closed.done() and not writer.is_closing():
                    writer.write(b"a")

    async def close(self) -> None:
        if self._dribbler is not None:
            self._dribbler.cancel()
        for _, writer in self.conns:
            writer.close()
        for task in self.closed:
            task.cancel()
        await asyncio.gather(*self.closed, return_exceptions=True)


@pytest.fixture
async def slowloris() -> AsyncIterator[Callable[[int], Slowloris]]:
    made: list[Slowloris] = []

    def make(port: int) -> Slowloris:
        made.append(Slowloris(port))
        return made[-1]

    yield make
    for attack in made:
        await attack.close()


@pytest.mark.slow
async def test_slowloris_connections_are_cut_off(
    guarded: GuardedFactory, slowloris: Callable[[int], Slowloris]
) -> None:
    """Request heads dribbled a byte every 100 ms: every connection is closed after the
    header timeout, whether it dribbles or sends nothing at all."""
    served = await guarded(header_timeout=1.0)
    attack = slowloris(served.port)
    silent = [await asyncio.open_connection("127.0.0.1", served.port) for _ in range(20)]
    async with PeakMemory() as mem:
        await attack.open(300)
        await wait_for(lambda: attack.still_open == 0, within=10, what="slow sockets closed")
        for reader, _ in silent:
            async with asyncio.timeout(ANSWER_WITHIN):
                assert await closed_by_server(reader) == b""
    assert served.guard.timed_out >= 320
    assert served.guard.open_connections == 0
    assert mem.growth_mib < 32, f"resident memory grew by {mem.growth_mib:.1f} MiB"
    for _, writer in silent:
        writer.close()


@pytest.mark.slow
async def test_slow_second_request_is_cut_off_by_keepalive_timeout(
    guarded: GuardedFactory,
) -> None:
    """One good request, then the next head dribbled: the keep-alive timeout ends it."""
    served = await guarded(keepalive_timeout=1.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert (await read_response(reader)).status == 200
    writer.write(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
    started = time.monotonic()

    async def dribble() -> None:
        while not writer.is_closing():
            writer.write(b"a")
            # The attack's pace, the subject of the test: one byte every 100 ms.
            await asyncio.sleep(0.1)

    dribbler = asyncio.create_task(dribble())
    async with asyncio.timeout(ANSWER_WITHIN):
        assert await closed_by_server(reader) == b""
    dribbler.cancel()
    assert time.monotonic() - started < 3.0
    writer.close()


@pytest.mark.slow
async def test_slowloris_does_not_starve_other_clients(
    daemon: Daemon, slowloris: Callable[[int], Slowloris], http: aiohttp.ClientSession
) -> None:
    """A thousand dribbling sockets on the daemon: ordinary requests are answered promptly
    and memory grows by kilobytes per socket."""
    attack = slowloris(daemon.port)
    async with PeakMemory() as mem:
        await attack.open(FLOOD)
        slowest = await healthy(http, base_url(daemon))
    assert attack.still_open == FLOOD, "the attack was not holding its connections"
    assert slowest < ANSWER_WITHIN
    assert mem.growth_mib < 64, f"resident memory grew by {mem.growth_mib:.1f} MiB"


@pytest.mark.slow
async def test_connection_flood_evicts_idle_connections_not_clients(
    guarded: GuardedFactory, slowloris: Callable[[int], Slowloris], http: aiohttp.ClientSession
) -> None:
    """A thousand slow sockets against a cap of 200: the server keeps at most 200 open,
    closing the longest-idle ones, and ordinary clients still get through."""
    cap = FLOOD // 5
    served = await guarded(max_connections=cap, header_timeout=30.0)
    attack = slowloris(served.port)
    await attack.open(FLOOD)
    await wait_for(lambda: attack.still_open <= cap, within=10, what="flood trimmed to the cap")
    assert served.guard.open_connections <= cap
    slowest = await healthy(http, served.base)
    assert slowest < ANSWER_WITHIN
    # Oldest first: the survivors are among the newest attackers.
    assert all(t.done() for t in attack.closed[: FLOOD - cap])
    assert served.guard.evicted >= FLOOD - cap


async def test_when_every_connection_is_mid_request_the_newcomer_is_refused(
    guarded: GuardedFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests in progress are never cut to make room: at the cap with all of them busy
    (bodies still arriving), a new connection is closed instead, and the busy ones finish."""
    monkeypatch.setattr(dispatchd_bodies, "BODY_TIMEOUT", 30.0)
    served = await guarded(max_connections=5)
    body = json.dumps({"to_number": NUMBER, "message": "slow"}).encode()
    busy = []
    for _ in range(5):
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        writer.write(_post_head(len(body)) + body[:5])
        busy.append((reader, writer))
    await wait_for(lambda: served.guard.busy_connections == 5, what="five requests in progress")
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    async with asyncio.timeout(ANSWER_WITHIN):
        assert await closed_by_server(reader) == b""
    writer.close()
    assert served.guard.evicted == 1
    for reader, writer in busy:
        writer.write(body[5:])
        async with asyncio.timeout(ANSWER_WITHIN):
            assert (await read_response(reader)).status == 202
        writer.close()


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Nul: a\x00b\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Long: " + b"a" * 20_000 + b"\r\n\r\n",
        b"GET /\x00 HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"POST /messages HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    ],
    ids=["garbage", "nul-header", "long-header", "nul-target", "double-length"],
)
async def test_unparseable_http_gets_problem_json(
    guarded: GuardedFactory, request_bytes: bytes
) -> None:
    served = await guarded()
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(request_bytes)
    async with asyncio.timeout(ANSWER_WITHIN):
        resp = await read_response(reader)
    assert_problem(resp, 400, "malformed_request")
    writer.close()


def test_default_connection_cap_is_half_the_descriptors(monkeypatch: pytest.MonkeyPatch) -> None:
    for soft, expected in ((1024, 512), (20_000, 10_000), (50, 64)):
        monkeypatch.setattr(resource, "getrlimit", lambda _: (soft, soft))  # noqa: B023
        assert dispatchd_connections.default_max_connections() == expected


async def test_connections_left_after_the_servers_shutdown_are_closed_too(
    guarded: GuardedFactory,
) -> None:
    # aiohttp shuts down the connections it knew of when its listener closed. One accepted
    # in that moment registers too late for it; hiding a live one from aiohttp's server
    # before cleanup stands in for that race, which no test can time.
    served = await guarded()
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    try:
        await wait_for(lambda: served.guard.open_connections == 1, what="the connection")
        server = served.runner.server
        assert server is not None
        server._connections.clear()  # the race: aiohttp does not know of it
        await served.runner.cleanup()
        assert await asyncio.wait_for(reader.read(), 5) == b"", "the server hung up"
        assert served.guard.open_connections == 0
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
