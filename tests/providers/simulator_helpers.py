"""What the tests of the simulator's dialects share: the simulator under test with its report
receiver, and the checks every dialect passes in its own words (a hung request, faults keyed
by the dialect's name, a malformed answer, early, duplicate and refused reports).

A dialect's module subclasses `Simulator` and `Callback` with what is its own (its accounts,
its kind, its raw requests, its status vocabulary) and starts it with the `simulator` fixture
of tests/providers/conftest.py. No provider SDK is imported here: every dialect's module
imports this one, and `make unit` skips the slow ones without importing them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from dispatchd.devtools.simulator import SimulatorState, make_simulator_app
from dispatchd.domain.models import Status
from dispatchd.providers.base import (
    Accepted,
    HttpKind,
    IncomingReport,
    Outcome,
    Submission,
    Throttled,
    Unavailable,
)
from tests.conftest import wait_for

# Every message delivered and reported at once, no faults: a test sets only what it is about.
QUIET = {
    "latency": 0.0,
    "callback_delay": 0.0,
    "failure_rate": 0.0,
    "delivered": 1.0,
    "failed": 0.0,
    "invalid": 0.0,
}
UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def basic(login: str, password: str) -> dict[str, str]:
    credentials = base64.b64encode(f"{login}:{password}".encode()).decode("ascii")
    return {"Authorization": f"Basic {credentials}"}


def bearer(token: str | bytes) -> dict[str, str]:
    return {"Authorization": f"Bearer {token.decode() if isinstance(token, bytes) else token}"}


@dataclass
class Callback:
    """One report as the receiver got it; a dialect's subclass says how to read its status."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    content_type: str

    @property
    def params(self) -> dict[str, str]:
        """The form fields: from the query of a GET, from the body otherwise."""
        form = urlsplit(self.url).query if self.method == "GET" else self.body.decode()
        return dict(parse_qsl(form, keep_blank_values=True))

    @property
    def data(self) -> dict[str, Any]:
        """The JSON body."""
        data: dict[str, Any] = json.loads(self.body)
        return data

    @property
    def status(self) -> Any:
        """The status reported, in the dialect's words."""
        raise NotImplementedError

    @property
    def provider_message_id(self) -> str:
        """The provider's id of the message reported on."""
        raise NotImplementedError

    def incoming(self) -> IncomingReport:
        return IncomingReport(self.url, self.headers, self.body, self.content_type)


C = TypeVar("C", bound=Callback)
K = TypeVar("K", bound=HttpKind)


@dataclass
class Receiver(Generic[C]):
    """A report endpoint: refuses with the statuses in `script` first, then takes with `answer`."""

    callback_type: type[C]
    answer: int
    url: str = ""
    script: list[int] = field(default_factory=list)
    tries: list[C] = field(default_factory=list)  # every request, in the order they came
    refused: list[C] = field(default_factory=list)  # those answered from `script`
    callbacks: list[C] = field(default_factory=list)  # those taken

    async def handle(self, request: web.Request) -> web.Response:
        callback = self.callback_type(
            request.method,
            str(request.url),
            dict(request.headers),
            await request.read(),
            request.content_type,
        )
        self.tries.append(callback)
        if self.script:
            self.refused.append(callback)
            return web.Response(status=self.script.pop(0))
        self.callbacks.append(callback)
        return web.Response(status=self.answer)

    def statuses(self) -> list[Any]:
        """The statuses of the reports taken, in the order they came."""
        return [c.status for c in self.callbacks]


class Simulator(Generic[K, C]):
    """The simulator's app with one dialect mounted, served, with a receiver for its reports.

    The `simulator` fixture serves it: it starts `reports` (the receiver's server), mounts the
    dialect and starts `client`. A dialect's subclass sets the class attributes and `mount`,
    `kind` (the dispatchd kind that speaks the dialect) and whatever raw requests it needs.
    """

    name: ClassVar[str]  # the dialect's key in the simulator's faults and stats
    pending: ClassVar[web.AppKey[set[asyncio.Task[None]]]]  # its reports on their way
    callback_type: type[C]  # its Callback subclass (not a ClassVar: those cannot hold C)
    number: ClassVar[str]  # where a submission goes unless told
    message_id: ClassVar[str]  # dispatchd's id of a submission unless told
    answer: ClassVar[int] = 200  # what the receiver answers a report it takes
    report_method: ClassVar[str] = "POST"
    report_paths: ClassVar[tuple[str, ...]] = ("/report",)  # the first is the report URL's
    report_query: ClassVar[str] = "token=abc123"

    client: TestClient[Any, Any]
    reports: TestServer

    def __init__(self, state: SimulatorState) -> None:
        self.state = state
        self.receiver = Receiver(self.callback_type, self.answer)
        # Mounted the way the daemon does: on the simulator's own app.
        self.app = make_simulator_app(state)

    def mount(self) -> None:
        """Add the dialect's routes, with its test accounts, to `app`."""
        raise NotImplementedError

    def kind(self, **overrides: Any) -> K:
        raise NotImplementedError

    @property
    def base(self) -> str:
        return str(self.client.make_url("")).rstrip("/")

    def local(self, url: str) -> str:
        """`url` on the simulator: a kind's request URL, where it is not already."""
        return url

    def submission(
        self, to: str | None = None, body: str = "hello", message_id: str | None = None, **kw: Any
    ) -> Submission:
        return Submission(
            message_id or self.message_id, to or self.number, body, 1, self.receiver.url, **kw
        )

    async def send(
        self, kind: K | None = None, **kw: Any
    ) -> tuple[Outcome, aiohttp.ClientResponse]:
        """Send a submission (`kw`) through `kind`; its outcome, and the answer, already read."""
        kind = kind or self.kind()
        req = kind.request(self.submission(**kw))
        async with self.client.session.request(
            req.method, self.local(req.url), headers=dict(req.headers), data=req.body
        ) as resp:
            body = await resp.read()
            return kind.classify(resp.status, resp.headers, body), resp

    async def settled(self, count: int) -> list[C]:
        """The reports taken, once `count` have been and none is on its way."""
        await wait_for(
            lambda: len(self.receiver.callbacks) >= count and not self.app[self.pending],
            within=5.0,
            what=f"{count} callbacks",
        )
        return self.receiver.callbacks


S = TypeVar("S", bound=Simulator[Any, Any])


class StartSimulator(Protocol):
    """The `simulator` fixture: `await simulator(Sim, **settings)`, settings over QUIET."""

    async def __call__(self, sim_type: type[S], **settings: Any) -> S: ...


# -- the checks every dialect passes ----------------------------------------------------------


def assert_no_reports(sim: Simulator[Any, Any]) -> None:
    """No report is on its way, and none has come."""
    assert not sim.app[sim.pending]
    assert sim.receiver.callbacks == []


async def final_reports_of_a_failed_and_an_invalid(
    sim: Simulator[Any, Any], invalid: str, intermediate: Any, **invalid_send: Any
) -> list[tuple[str, str | None, Status | None]]:
    """With `failed=1.0`, one message to a good number and one to `invalid`, each reported
    twice: every report but the `intermediate` ones, read by the kind, as sorted (raw status,
    error code, status)."""
    await sim.send()
    await sim.send(to=invalid, **invalid_send)
    callbacks = await sim.settled(4)
    kind = sim.kind()
    finals = [kind.parse(c.incoming())[0] for c in callbacks if c.status != intermediate]
    return sorted((r.raw_status, r.error_code, r.status) for r in finals)


async def assert_a_wrong_credential_is_a_401(sim: Simulator[K, Any], kind: K) -> None:
    """Sent through a kind with a wrong credential: a 401, unavailable, and no reports."""
    outcome, resp = await sim.send(kind)
    assert resp.status == 401
    assert isinstance(outcome, Unavailable)
    assert sim.receiver.callbacks == []


async def assert_throttled(sim: Simulator[Any, Any]) -> tuple[Throttled, aiohttp.ClientResponse]:
    """Sent while the dialect throttles: a 429, throttled, counted, and no reports."""
    outcome, resp = await sim.send()
    assert resp.status == 429
    assert isinstance(outcome, Throttled)
    assert sim.state.stats.providers[sim.name].throttled == 1
    assert sim.receiver.callbacks == []
    return outcome, resp


async def assert_faults_are_keyed_by_name(
    sim: Simulator[Any, Any],
    other: str = "twilio",
    message_ids: Sequence[str | None] = (None, None, None),
) -> aiohttp.ClientResponse:
    """Another provider's failures leave the dialect alone; its own answer 500, then 503 when
    down. Returns the 500, for the dialect's own error body; `message_ids` for each send."""
    first, second, third = message_ids
    sim.state.set_faults(other, {"failure_rate": 1.0}, replace=True)
    outcome, _ = await sim.send(message_id=first)
    assert isinstance(outcome, Accepted)

    sim.state.set_faults(sim.name, {"failure_rate": 1.0}, replace=True)
    outcome, failed = await sim.send(message_id=second)
    assert failed.status == 500
    assert isinstance(outcome, Unavailable)

    sim.state.set_faults(sim.name, {"down": True}, replace=True)
    outcome, resp = await sim.send(message_id=third)
    assert resp.status == 503
    assert isinstance(outcome, Unavailable)
    counts = sim.state.stats.providers[sim.name]
    assert (counts.accepted, counts.errors, counts.down) == (1, 1, 1)
    return failed


async def assert_a_hung_request_is_left_unanswered(sim: Simulator[Any, Any]) -> None:
    """With `hang_rate=1.0` a request gets no answer at all, and the hang is counted."""
    req = sim.kind().request(sim.submission())
    with pytest.raises(TimeoutError):
        await sim.client.session.post(
            sim.local(req.url),
            headers=dict(req.headers),
            data=req.body,
            timeout=aiohttp.ClientTimeout(total=0.3),
        )
    await wait_for(
        lambda: sim.state.stats.providers[sim.name].hung == 1, within=5.0, what="the hang"
    )


async def assert_a_malformed_answer_is_still_reported(
    sim: Simulator[Any, Any], status: int, statuses: list[Any]
) -> None:
    """With `malformed_rate=1.0` the answer (`status`) is accepted without an id, and the
    message is still reported (`statuses`)."""
    outcome, resp = await sim.send()
    assert resp.status == status
    assert outcome == Accepted(None, status)
    await sim.settled(len(statuses))
    assert sim.receiver.statuses() == statuses


async def assert_the_final_report_can_come_first(
    sim: Simulator[Any, C], statuses: list[Any]
) -> list[C]:
    """With `early_callback_rate=1.0` the final report of `statuses` (a delivered message's,
    in order) is taken before the answer comes back, and the others after it."""
    outcome, _ = await sim.send()
    assert sim.receiver.statuses() == statuses[-1:]
    assert isinstance(outcome, Accepted)
    callbacks = await sim.settled(len(statuses))
    assert sim.receiver.statuses() == [statuses[-1], *statuses[:-1]]
    assert {c.provider_message_id for c in callbacks} == {outcome.provider_message_id}
    return callbacks


async def assert_duplicate_and_contrary_reports(
    sim: Simulator[Any, C], statuses: list[Any]
) -> tuple[Accepted, list[C]]:
    """With duplicate and out-of-order reports, `statuses` come, each one signed."""
    outcome, _ = await sim.send()
    assert isinstance(outcome, Accepted)
    callbacks = await sim.settled(len(statuses))
    assert sim.receiver.statuses() == statuses
    kind = sim.kind()
    for callback in callbacks:
        kind.verify(callback.incoming(), time.time())
    return outcome, callbacks


async def assert_refused_reports_are_retried(
    sim: Simulator[Any, Any], script: list[int], statuses: list[Any]
) -> None:
    """With `callback_retry_for`, a report the receiver refuses (with the statuses in
    `script`) is tried again until taken: `statuses` come, one retry for each refusal."""
    sim.receiver.script = list(script)
    await sim.send()
    await sim.settled(len(statuses))
    assert sim.receiver.statuses() == statuses
    assert sim.state.stats.report_retries == len(script)
