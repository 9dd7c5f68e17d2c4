"""The OpenAPI document matches what a running daemon really answers.

Every response below comes from a real daemon over real HTTP and is checked against the
document's entry for its path, method and status: the body against the JSON Schema, the
Content-Type against the documented media type, and the documented headers.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from dispatchd.daemon import Daemon
from dispatchd.domain.errors import StoreUnavailable
from dispatchd.http.app import WebDeps, make_app
from dispatchd.http.openapi import openapi_document
from tests.conftest import DaemonFactory, wait_for

DOC_URI = "urn:dispatchd:openapi"
BAD_NUMBER = "+17034570000"  # the simulator reports numbers ending in 0000 as invalid

_RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")
FORMATS = FormatChecker()


@FORMATS.checks("date-time", raises=ValueError)
def _date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    datetime.fromisoformat(value)
    return _RFC3339.fullmatch(value) is not None


@FORMATS.checks("uri")
def _uri(value: object) -> bool:
    if not isinstance(value, str):
        return True
    parts = urlsplit(value)
    return bool(parts.scheme and parts.netloc)


def _escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


def _pointer(*parts: str) -> str:
    return "#/" + "/".join(_escape(p) for p in parts)


class ApiChecker:
    """Checks real answers against one OpenAPI document."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        resource = DRAFT202012.create_resource(doc)
        self.registry: Registry[Any] = Registry().with_resource(DOC_URI, resource)

    def resolve(self, ref: str) -> Any:
        return self.registry.resolver(DOC_URI).lookup(ref).contents

    def errors(self, pointer: str, instance: Any) -> list[str]:
        validator = Draft202012Validator(
            {"$ref": DOC_URI + pointer}, registry=self.registry, format_checker=FORMATS
        )
        return [
            f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
            for e in validator.iter_errors(instance)
        ]

    def request_errors(self, path: str, method: str, media: str, body: Any) -> list[str]:
        """Why the document would call this request body invalid (empty if it would not)."""
        op = self.doc["paths"][path][method]
        assert media in op["requestBody"]["content"], f"{media} not documented for {path}"
        pointer = _pointer("paths", path, method, "requestBody", "content", media, "schema")
        return self.errors(pointer, body)

    async def check(
        self, resp: aiohttp.ClientResponse, path: str, method: str, *, key: str | None = None
    ) -> Any:
        """Assert `resp` is what the document says `method path` answers; return its JSON."""
        status = key or str(resp.status)
        where = f"{method.upper()} {path} -> {resp.status}"
        responses = self.doc["paths"][path][method]["responses"]
        assert status in responses, f"{where}: status not in the document"
        spec = responses[status]
        for name, header in spec.get("headers", {}).items():
            header = self.resolve(header["$ref"]) if "$ref" in header else header
            value = resp.headers.get(name)
            if header.get("required"):
                assert value is not None, f"{where}: documented header {name} missing"
            if value is not None:
                typed: Any = int(value) if header["schema"].get("type") == "integer" else value
                problems = self.errors(
                    _pointer(*self._header_path(path, method, status, name)), typed
                )
                assert not problems, f"{where}: header {name}={value!r}: {problems}"
        body = await resp.read()
        content = spec.get("content")
        if not content:
            assert body == b"", f"{where}: documented without a body, got {body[:200]!r}"
            return None
        assert resp.content_type in content, (
            f"{where}: Content-Type {resp.content_type} is not documented ({list(content)})"
        )
        if resp.content_type == "text/event-stream":
            return self._check_events(where, content[resp.content_type], body.decode())
        data = json.loads(body)
        pointer = _pointer(
            "paths", path, method, "responses", status, "content", resp.content_type, "schema"
        )
        problems = self.errors(pointer, data)
        assert not problems, f"{where}: body does not match the document: {problems}\n{data}"
        if resp.content_type == "application/problem+json":
            assert data["status"] == resp.status, f"{where}: problem says {data['status']}"
            assert data["type"].endswith("/" + data["code"]), f"{where}: type/code mismatch"
        return data

    def _check_events(self, where: str, media: dict[str, Any], text: str) -> list[Any]:
        """Each event's `data` against the schema the document names for it; the data."""
        pointer = media["schema"]["properties"]["data"]["contentSchema"]["$ref"]
        events = []
        for block in text.split("\n\n"):
            lines = [line for line in block.splitlines() if not line.startswith(":")]
            data = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
            if data:
                event = json.loads("\n".join(data))
                problems = self.errors(pointer, event)
                assert not problems, f"{where}: event data does not match: {problems}\n{event}"
                events.append(event)
        return events

    def _header_path(self, path: str, method: str, status: str, name: str) -> list[str]:
        header = self.doc["paths"][path][method]["responses"][status]["headers"][name]
        if "$ref" in header:
            return [*header["$ref"].removeprefix("#/").split("/"), "schema"]
        return ["paths", path, method, "responses", status, "headers", name, "schema"]


@pytest.fixture
def api() -> ApiChecker:
    return ApiChecker(openapi_document())


@pytest.fixture
async def http(daemon: Daemon) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(f"http://127.0.0.1:{daemon.port}") as session:
        yield session


async def _status_is(daemon: Daemon, msg_id: str, status: str) -> bool:
    assert daemon.store is not None
    msg = await daemon.store.get(msg_id)
    return msg is not None and msg.status == status


async def _send(
    api: ApiChecker, http: aiohttp.ClientSession, to_number: str, text: str
) -> dict[str, Any]:
    body = {"to_number": to_number, "message": text}
    assert api.request_errors("/messages", "post", "application/json", body) == []
    async with http.post("/messages", json=body) as resp:
        assert resp.status == 202
        return dict(await api.check(resp, "/messages", "post"))


def _codes(problem: dict[str, Any]) -> set[tuple[str, str]]:
    return {(e["field"], e["code"]) for e in problem["errors"]}


# -- the document itself ------------------------------------------------------------------


async def test_every_route_of_the_app_is_documented_and_nothing_else(daemon: Daemon) -> None:
    assert daemon.service is not None
    app = make_app(WebDeps(daemon.service, "US", lambda: None, daemon.watchers, daemon.idempotency))
    routes = {
        (route.resource.canonical, route.method.lower())
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    doc = openapi_document()
    documented = {(path, method) for path, item in doc["paths"].items() for method in item}
    assert documented == routes


def test_document_is_complete_and_its_schemas_are_valid(api: ApiChecker) -> None:
    doc = api.doc
    assert doc["openapi"] == "3.1.0"
    operation_ids = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            where = f"{method.upper()} {path}"
            operation_ids.append(op["operationId"])
            assert op["summary"].strip(), where
            assert len(op["description"]) > 40, f"{where}: description too thin"
            for status, response in op["responses"].items():
                assert response["description"].strip(), f"{where} {status}"
    assert len(operation_ids) == len(set(operation_ids)), "operationIds must be unique"
    for name, schema in doc["components"]["schemas"].items():
        Draft202012Validator.check_schema(schema)
        assert api.resolve(f"#/components/schemas/{name}") == schema
    # Every $ref anywhere in the document points at something.
    refs: list[str] = []

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            refs.extend(v for k, v in node.items() if k == "$ref")
            for v in node.values():
                collect(v)
        elif isinstance(node, list):
            for v in node:
                collect(v)

    collect(doc)
    assert refs
    for ref in refs:
        api.resolve(ref)


async def test_the_schemas_reject_what_dispatchd_must_never_send(
    api: ApiChecker, http: aiohttp.ClientSession
) -> None:
    msg = await _send(api, http, "+17034573322", "Hello")
    ok = _pointer("components", "schemas", "Message")
    assert api.errors(ok, msg) == []
    broken = [
        {**msg, "extra": 1},
        {k: v for k, v in msg.items() if k != "provider"},
        {**msg, "status": "lost"},
        {**msg, "to_number": "7034573322"},
        {**msg, "segments": 0},
        {**msg, "encoding": "UTF-8"},
        {**msg, "created_at": "yesterday"},
        {**msg, "id": "42"},
        {**msg, "next_attempt_at": None},  # a queued message always says when
        {**msg, "status": "delivered"},  # ...and a final one never does
        {**msg, "error": {"code": "expired"}},
    ]
    for bad in broken:
        assert api.errors(ok, bad), f"the Message schema accepted {bad}"
    problem = _pointer("components", "schemas", "Problem")
    good = {
        "type": "https://dispatchd.dev/problems/x",
        "title": "X",
        "status": 400,
        "detail": "X.",
        "code": "x",
    }
    assert api.errors(problem, good) == []
    assert api.errors(problem, {**good, "code": "validation_failed"}), "errors list required"
    assert api.errors(problem, {**good, "status": 200})


# -- sending --------------------------------------------------------------------------------


async def test_send_answers_match_the_document(
    api: ApiChecker,
    daemon: Daemon,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = "/messages"
    # 202, JSON, a national-format number.
    msg = await _send(api, http, "(703) 457-3322", "Hello from dispatchd")
    assert (msg["status"], msg["to_number"], msg["encoding"]) == ("queued", "+17034573322", "GSM-7")
    # 202, form-encoded, a UCS-2 text.
    form = {"to_number": "+442079460958", "message": "Grüße 👋"}
    assert api.request_errors(path, "post", "application/x-www-form-urlencoded", form) == []
    async with http.post(path, data=form) as resp:
        assert resp.status == 202
        sent = await api.check(resp, path, "post")
        assert resp.headers["Location"] == f"/messages/{sent['id']}"
        assert (sent["encoding"], sent["to_number"]) == ("UCS-2", "+442079460958")

    # 400: not JSON, not UTF-8, not an object.
    for raw in (b"{nope", b'{"to_number": "\xff"}', b'["to_number"]'):
        async with http.post(path, data=raw, headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 400, raw
            assert (await api.check(resp, path, "post"))["code"] == "malformed_request"

    # 413: over 64 KiB.
    huge = {"to_number": "+17034573322", "message": "x" * (64 * 1024)}
    async with http.post(path, json=huge) as resp:
        assert resp.status == 413
        assert (await api.check(resp, path, "post"))["code"] == "payload_too_large"

    # 415: neither JSON nor a URL-encoded form.
    for ctype in ("text/plain", "multipart/form-data; boundary=x", None):
        headers = {"Content-Type": ctype} if ctype else {}
        async with http.post(path, data=b"to_number=1", headers=headers) as resp:
            assert resp.status == 415, ctype
            assert (await api.check(resp, path, "post"))["code"] == "unsupported_media_type"

    # 422 validation_failed, every field listed; the document's request schema agrees.
    bad = {"to_number": "12", "message": "   "}
    assert api.request_errors(path, "post", "application/json", bad)
    async with http.post(path, json=bad) as resp:
        assert resp.status == 422
        problem = await api.check(resp, path, "post")
        assert problem["code"] == "validation_failed"
        assert _codes(problem) == {("to_number", "invalid_number"), ("message", "empty")}
    async with http.post(path, json={"to_number": 17034573322}) as resp:
        assert resp.status == 422
        problem = await api.check(resp, path, "post")
        assert _codes(problem) == {("to_number", "not_a_string"), ("message", "missing")}
    async with http.post(path, json={"to_number": "+17034573322", "message": "€" * 900}) as resp:
        assert resp.status == 422
        assert _codes(await api.check(resp, path, "post")) == {("message", "too_long")}

    # 422 number_suppressed: once the simulator reports a number invalid, it is refused.
    first = await _send(api, http, BAD_NUMBER, "Hi")
    await wait_for(lambda: _status_is(daemon, first["id"], "invalid"), what="invalid report")
    async with http.post(path, json={"to_number": BAD_NUMBER, "message": "Again"}) as resp:
        assert resp.status == 422
        problem = await api.check(resp, path, "post")
        assert problem["code"] == "number_suppressed"
        assert "errors" not in problem

    # 503 with Retry-After when the database cannot take the write.
    assert daemon.store is not None

    async def disk_full(*args: Any, **kwargs: Any) -> None:
        raise StoreUnavailable("the database cannot take writes: database or disk is full")

    monkeypatch.setattr(daemon.store, "insert", disk_full)
    async with http.post(path, json={"to_number": "+17034573322", "message": "Hi"}) as resp:
        assert resp.status == 503
        assert (await api.check(resp, path, "post"))["code"] == "storage_unavailable"
        assert resp.headers["Retry-After"] == "5"
    monkeypatch.undo()

    # Any other error is a documented problem too: 405 for an unsupported method.
    async with http.delete(path) as resp:
        assert resp.status == 405
        problem = await api.check(resp, path, "post", key="default")
        assert problem["code"] == "method_not_allowed"
        assert "POST" in resp.headers["Allow"]


async def test_message_options_and_batch_answers_match_the_document(
    api: ApiChecker, daemon: Daemon, http: aiohttp.ClientSession
) -> None:
    # 202 with every option set: the new resource fields are documented and filled in.
    body = {
        "to_number": "+17034573322",
        "message": "\u201cHi\u201d \u2014 later",
        "send_at": "2099-01-01T09:00:00+01:00",
        "validity_period": 600,
        "smart_encoding": True,
    }
    async with http.post("/messages", json={**body, "send_at": None}) as resp:
        assert resp.status == 202
        msg = await api.check(resp, "/messages", "post")
    assert (msg["message"], msg["validity_period"]) == ('"Hi" - later', 600)
    assert msg["send_at"] is None and msg["expires_at"]
    # 422: each option's errors use documented codes; the request schema refuses them too.
    bad = {**body, "send_at": "2025-01-31T09:00:00", "validity_period": 0, "smart_encoding": "y"}
    assert api.request_errors("/messages", "post", "application/json", bad)
    async with http.post("/messages", json={**bad, "status_callback_url": "ftp://x"}) as resp:
        assert resp.status == 422
        problem = await api.check(resp, "/messages", "post")
    assert _codes(problem) == {
        ("send_at", "no_timezone"),
        ("validity_period", "out_of_range"),
        ("smart_encoding", "not_a_boolean"),
        ("status_callback_url", "invalid_url"),
    }

    # 200 batch: a 202 result with its message, 422 results with their problems.
    path = "/messages/batch"
    items = [
        {"to_number": "+17034573322", "message": "one", "validity_period": 60},
        {"to_number": "12", "message": "two"},
        [],
    ]
    assert api.request_errors(path, "post", "application/json", {"messages": items}) == []
    async with http.post(path, json={"messages": items}) as resp:
        assert resp.status == 200
        batch = await api.check(resp, path, "post")
    assert [r["status"] for r in batch["results"]] == [202, 422, 422]
    assert (batch["accepted"], batch["rejected"]) == (1, 2)
    results = _pointer("components", "schemas", "BatchResult")
    good, rejected = batch["results"][0], batch["results"][1]
    for broken in (
        {**good, "status": 422},  # a rejection must carry a problem
        {**rejected, "message": good["message"]},  # ...and no message
        {k: v for k, v in good.items() if k != "message"},
        {**rejected, "problem": {**rejected["problem"], "code": "other"}},
    ):
        assert api.errors(results, broken), f"the BatchResult schema accepted {broken}"
    # 422: no list, an empty one, one too long; 415: a form; 413: over 2 MiB.
    too_many = [{"to_number": "+17034573322", "message": "x"}] * 1001
    bad_batches: list[dict[str, Any]] = [
        {},
        {"messages": []},
        {"messages": "x"},
        {"messages": too_many},
    ]
    for bad_batch in bad_batches:
        assert api.request_errors(path, "post", "application/json", bad_batch)
        async with http.post(path, json=bad_batch) as resp:
            assert resp.status == 422
            assert (await api.check(resp, path, "post"))["code"] == "validation_failed"
    async with http.post(path, data={"messages": "x"}) as resp:
        assert resp.status == 415
        assert (await api.check(resp, path, "post"))["code"] == "unsupported_media_type"
    huge = b'{"messages": ["' + b"x" * (2 * 1024 * 1024) + b'"]}'
    headers = {"Content-Type": "application/json"}
    async with http.post(path, data=io.BytesIO(huge), headers=headers) as resp:
        assert resp.status == 413
        assert (await api.check(resp, path, "post"))["code"] == "payload_too_large"


# -- reading --------------------------------------------------------------------------------


async def test_read_answers_match_the_document(
    api: ApiChecker, daemon: Daemon, http: aiohttp.ClientSession
) -> None:
    ids = [(await _send(api, http, "+17034573322", f"Hello {i}"))["id"] for i in range(3)]
    bad = await _send(api, http, BAD_NUMBER, "Hi")
    for msg_id in ids:
        await wait_for(lambda i=msg_id: _status_is(daemon, i, "delivered"), what="delivery")
    await wait_for(lambda: _status_is(daemon, bad["id"], "invalid"), what="invalid report")

    # 200 detail: a delivered message with its attempts and history.
    async with http.get(f"/messages/{ids[0]}") as resp:
        assert resp.status == 200
        detail = await api.check(resp, "/messages/{id}", "get")
    assert detail["status"] == "delivered"
    assert detail["provider"] in ("provider1", "provider2")
    assert [a["outcome"] for a in detail["attempts"]] == ["accepted"]
    assert [h["status"] for h in detail["history"]][-1] == "delivered"
    async with http.get(f"/messages/{bad['id']}") as resp:
        assert resp.status == 200
        invalid = await api.check(resp, "/messages/{id}", "get")
    assert invalid["error"]["code"] == "reported_invalid"

    # 404 for an id nobody issued.
    async with http.get("/messages/01a222ab-f8ac-7206-bf20-90d60ad50f03") as resp:
        assert resp.status == 404
        assert (await api.check(resp, "/messages/{id}", "get"))["code"] == "message_not_found"

    # 200 pages: newest first, following next_cursor to the end.
    seen: list[str] = []
    params: dict[str, str] = {"limit": "2", "to_number": "7034573322", "status": "delivered"}
    while True:
        async with http.get("/messages", params=params) as resp:
            assert resp.status == 200
            page = await api.check(resp, "/messages", "get")
        seen += [m["id"] for m in page["items"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert seen == ids[::-1]

    # The documented limit bounds are the real ones.
    limit = next(
        p["schema"]
        for p in api.doc["paths"]["/messages"]["get"]["parameters"]
        if p["name"] == "limit"
    )
    async with http.get("/messages", params={"limit": str(limit["maximum"])}) as resp:
        assert resp.status == 200
        assert len((await api.check(resp, "/messages", "get"))["items"]) == 4
    # 422 for each kind of bad query.
    for query, field in [
        ({"limit": str(limit["maximum"] + 1)}, "limit"),
        ({"limit": str(limit["minimum"] - 1)}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "²"}, "limit"),  # isdigit() but not int(): was a 500
        ({"limit": "9" * 5000}, "limit"),  # too many digits for int(): was a 500
        ({"status": "lost"}, "status"),
        ({"to_number": "12"}, "to_number"),
    ]:
        async with http.get("/messages", params=query) as resp:
            assert resp.status == 422, query
            problem = await api.check(resp, "/messages", "get")
            assert [e["field"] for e in problem["errors"]] == [field]


async def test_live_status_answers_match_the_document(
    api: ApiChecker, daemon: Daemon, http: aiohttp.ClientSession
) -> None:
    msg = await _send(api, http, "+17034573322", "Hello")
    await wait_for(lambda: _status_is(daemon, msg["id"], "delivered"), what="delivery")
    path, events = "/messages/{id}", "/messages/{id}/events"
    # Long polling: 200 (final, so at once), 422 for each bad parameter, 404.
    async with http.get(f"/messages/{msg['id']}", params={"wait": "30"}) as resp:
        assert resp.status == 200
        assert (await api.check(resp, path, "get"))["status"] == "delivered"
    for query in ({"wait": "61"}, {"wait": "x"}, {"wait": "1", "status": "lost"}):
        async with http.get(f"/messages/{msg['id']}", params=query) as resp:
            assert resp.status == 422, query
            assert (await api.check(resp, path, "get"))["code"] == "validation_failed"
    async with http.get("/messages/nope", params={"wait": "30"}) as resp:
        assert resp.status == 404
        assert (await api.check(resp, path, "get"))["code"] == "message_not_found"
    # Events: the stream of a delivered message ends by itself; 404; 422.
    async with http.get(f"/messages/{msg['id']}/events") as resp:
        assert resp.status == 200
        data = await api.check(resp, events, "get")
        assert [e["status"] for e in data] == ["queued", "sending", "sent", "delivered"]
    async with http.get("/messages/nope/events") as resp:
        assert resp.status == 404
        assert (await api.check(resp, events, "get"))["code"] == "message_not_found"
    async with http.get(f"/messages/{msg['id']}/events", headers={"Last-Event-ID": "x"}) as resp:
        assert resp.status == 422
        assert (await api.check(resp, events, "get"))["code"] == "validation_failed"


# -- delivery reports -----------------------------------------------------------------------


async def test_delivery_report_answers_match_the_document(
    api: ApiChecker,
    daemon: Daemon,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service = daemon.service
    assert service is not None and daemon.store is not None
    msg = await _send(api, http, "+17034573322", "Hello")
    await wait_for(lambda: _status_is(daemon, msg["id"], "delivered"), what="delivery")
    stored = await daemon.store.get(msg["id"])
    assert stored is not None and stored.provider_message_id is not None
    pmid = stored.provider_message_id
    report = {"status": "failed", "message_id": pmid}

    by_id = "/messages/{id}/delivery_status"
    url = urlsplit(service.callback_url(msg["id"]))
    callback = f"{url.path}?{url.query}"
    assert url.path == f"/messages/{msg['id']}/delivery_status"
    seed = "/messages/delivery_status"
    seed_ok = f"{seed}?token={service.token(msg['id'])}"

    for target, path in ((callback, by_id), (seed_ok, seed)):
        # 204, as JSON and as a form; the message is final, so its status stays.
        for media in ("application/json", "application/x-www-form-urlencoded"):
            assert api.request_errors(path, "post", media, report) == []
            kwargs: dict[str, Any] = {"json": report} if "json" in media else {"data": report}
            async with http.post(target, **kwargs) as resp:
                assert resp.status == 204, (path, media)
                assert await api.check(resp, path, "post") is None
        # 400, 415, 413, 422.
        async with http.post(
            target, data=b"{", headers={"Content-Type": "application/json"}
        ) as resp:
            assert resp.status == 400
            assert (await api.check(resp, path, "post"))["code"] == "malformed_request"
        async with http.post(target, data=b"x", headers={"Content-Type": "text/plain"}) as resp:
            assert resp.status == 415
            assert (await api.check(resp, path, "post"))["code"] == "unsupported_media_type"
        async with http.post(target, json={"message_id": "x" * 70_000}) as resp:
            assert resp.status == 413
            assert (await api.check(resp, path, "post"))["code"] == "payload_too_large"
        wrong = {"status": "read", "message_id": ""}
        assert api.request_errors(path, "post", "application/json", wrong)
        async with http.post(target, json=wrong) as resp:
            assert resp.status == 422
            problem = await api.check(resp, path, "post")
            assert _codes(problem) == {("status", "invalid_choice"), ("message_id", "missing")}

    # 401: no token, or someone else's.
    other = "01a222ab-f8ac-7206-bf20-90d60ad50f03"
    for target, path in [
        (f"/messages/{msg['id']}/delivery_status", by_id),
        (f"/messages/{msg['id']}/delivery_status?token={service.token(other)}", by_id),
        (seed, seed),
        (f"{seed}?token={service.token(other)}", seed),
    ]:
        async with http.post(target, json=report) as resp:
            assert resp.status == 401, target
            assert (await api.check(resp, path, "post"))["code"] == "invalid_token"

    # 404: a right token for an id that does not exist; an unknown provider message id.
    async with http.post(
        f"/messages/{other}/delivery_status?token={service.token(other)}", json=report
    ) as resp:
        assert resp.status == 404
        assert (await api.check(resp, by_id, "post"))["code"] == "message_not_found"
    async with http.post(seed_ok, json={**report, "message_id": "no-such-id"}) as resp:
        assert resp.status == 404
        assert (await api.check(resp, seed, "post"))["code"] == "message_not_found"

    # 503 when the database cannot take the write.
    async def disk_full(*args: Any, **kwargs: Any) -> None:
        raise StoreUnavailable("the database cannot take writes: disk I/O error")

    monkeypatch.setattr(daemon.store, "apply_report", disk_full)
    async with http.post(callback, json=report) as resp:
        assert resp.status == 503
        assert (await api.check(resp, by_id, "post"))["code"] == "storage_unavailable"
    monkeypatch.undo()

    # The reports above were recorded but did not change a final status.
    async with http.get(f"/messages/{msg['id']}") as resp:
        detail = await api.check(resp, "/messages/{id}", "get")
    assert detail["status"] == "delivered"
    assert sum("ignored" in (h["detail"] or "") for h in detail["history"]) == 4


# -- operations -----------------------------------------------------------------------------


async def test_operational_answers_match_the_document(
    api: ApiChecker, daemon: Daemon, http: aiohttp.ClientSession
) -> None:
    async with http.get("/healthz") as resp:
        assert resp.status == 200
        assert await api.check(resp, "/healthz", "get") == {"status": "ok"}
    async with http.get("/openapi.json") as resp:
        assert resp.status == 200
        assert await api.check(resp, "/openapi.json", "get") == openapi_document()
    async with http.get("/readyz") as resp:
        assert resp.status == 200
        assert await api.check(resp, "/readyz", "get") == {"status": "ready"}

    # With the delivery worker stopped, the daemon is alive but not ready.
    assert daemon.worker is not None
    await daemon.worker.stop(grace=1.0)
    await wait_for(lambda: not daemon.worker.running, what="worker to stop")
    async with http.get("/readyz") as resp:
        assert resp.status == 503
        problem = await api.check(resp, "/readyz", "get")
        assert problem["code"] == "not_ready"
        assert "worker" in problem["detail"]
    async with http.get("/healthz") as resp:
        assert resp.status == 200


# -- authentication, idempotency, metrics -----------------------------------------------------


async def test_idempotency_and_auth_answers_match_the_document(
    api: ApiChecker, start_daemon: DaemonFactory
) -> None:
    keyed = await start_daemon(api={"keys": ["doc-key"], "metrics_auth": True})
    path = "/messages"
    send = {"to_number": "+17034573322", "message": "Hi"}
    async with aiohttp.ClientSession(f"http://127.0.0.1:{keyed.port}") as http:
        for method, url in (("post", path), ("get", path), ("get", "/metrics")):
            async with http.request(method, url, json=send) as resp:
                assert resp.status == 401, url
                assert (await api.check(resp, url, method))["code"] == "unauthorized"
        auth = {"Authorization": "Bearer doc-key"}
        headers = {**auth, "Idempotency-Key": "doc-1"}
        for replayed in (False, True):
            async with http.post(path, json=send, headers=headers) as resp:
                assert resp.status == 202
                await api.check(resp, path, "post")
                assert ("Idempotent-Replayed" in resp.headers) is replayed
        async with http.post(path, json={**send, "message": "other"}, headers=headers) as resp:
            assert resp.status == 422
            assert (await api.check(resp, path, "post"))["code"] == "idempotency_key_reused"
        async with http.post(path, json=send, headers={**auth, "Idempotency-Key": ""}) as resp:
            assert resp.status == 400
            assert (await api.check(resp, path, "post"))["code"] == "invalid_idempotency_key"
        async with http.get("/metrics", headers=auth) as resp:
            assert resp.status == 200
            documented = api.doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
            assert resp.content_type in documented
            assert "dispatchd_http_requests_total" in await resp.text()
