"""`dispatchd bench`: measure accept rate, end-to-end delivery and the HTTP stack's ceiling.

By default every server runs as its own process started the same way
(`python -m dispatchd ...`): a throwaway daemon on a temp database, the
simulated providers, and a bare aiohttp "ceiling" endpoint that parses the same
JSON and answers a same-sized 202. The load generator is this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TextIO, TypeVar

import aiohttp
from aiohttp import web

from dispatchd.client import ApiError, Client, SendItem
from dispatchd.control.client import ControlClient
from dispatchd.health import percentile as nearest_rank
from dispatchd.store import sqlite as store_mod

# The same body for every phase, so the ceiling parses exactly what the daemon parses.
PAYLOAD = json.dumps({"to_number": "+17034573322", "message": "Benchmark message from dispatchd"})
HEADERS = {"Content-Type": "application/json"}


@dataclass
class LoadResult:
    """What one load run measured."""

    requests: int = 0
    ok: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        return percentile(self.latencies_ms, p)

    def summary(self) -> dict[str, float]:
        return {
            "requests": self.requests,
            "ok": self.ok,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "rate_per_s": round(self.rate, 1),
            "p50_ms": round(self.percentile(50), 2),
            "p95_ms": round(self.percentile(95), 2),
            "p99_ms": round(self.percentile(99), 2),
        }


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile; 0 for no values (the report has no nulls)."""
    return nearest_rank(values, p) or 0.0


async def drive(
    url: str,
    *,
    concurrency: int,
    duration: float | None,
    requests: int | None,
    expect: int,
    label: str,
    out: TextIO,
    accepted: asyncio.Queue[str] | None = None,
    stop: asyncio.Event | None = None,
    spans: list[tuple[float, float]] | None = None,
) -> LoadResult:
    """Closed-loop load: `concurrency` clients POSTing PAYLOAD back to back.

    With `accepted`, the id of each 202 is offered to it (dropped when it is full), for
    watchers; otherwise answers are not parsed, so the load generator stays cheap. With
    `stop`, the load also ends when it is set; with `spans`, each good answer's start and
    end (`time.perf_counter`) is appended to it.
    """
    result = LoadResult()
    budget = [requests if requests is not None else -1]
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    deadline = (time.perf_counter() + duration) if duration is not None else math.inf
    stopped = stop or asyncio.Event()

    async def client(session: aiohttp.ClientSession) -> None:
        while time.perf_counter() < deadline and not stopped.is_set():
            if budget[0] == 0:
                return
            budget[0] -= 1
            t0 = time.perf_counter()
            try:
                async with session.post(url, data=PAYLOAD, headers=HEADERS) as resp:
                    body = await resp.read()
                    good = resp.status == expect
                if good and accepted is not None and not accepted.full():
                    accepted.put_nowait(json.loads(body)["id"])
            except aiohttp.ClientError:
                good = False
            result.requests += 1
            if good:
                t1 = time.perf_counter()
                result.ok += 1
                result.latencies_ms.append((t1 - t0) * 1000)
                if spans is not None:
                    spans.append((t0, t1))
            else:
                result.errors += 1

    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()
        with _progress(label, result, start, out):
            await asyncio.gather(*(client(session) for _ in range(concurrency)))
        result.seconds = time.perf_counter() - start
    return result


@contextlib.contextmanager
def _progress(label: str, result: LoadResult, start: float, out: TextIO) -> Iterator[None]:
    async def ticker() -> None:
        while True:
            await asyncio.sleep(1.0)
            elapsed = time.perf_counter() - start
            out.write(f"\r  {label}: {result.ok:>9,} ok  {result.ok / elapsed:>9,.0f}/s  ")
            out.flush()

    task = asyncio.get_running_loop().create_task(ticker(), name="bench-progress")
    try:
        yield
    finally:
        task.cancel()
        out.write("\r" + " " * 60 + "\r")
        out.flush()


# -- processes ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Process:
    """A child `python -m dispatchd ...` process with its log in the work directory."""

    def __init__(self, name: str, args: list[str], workdir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dispatchd", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            cwd=workdir,
        )

    def cpu_seconds(self) -> float:
        """User plus system CPU time used so far, or 0 where /proc is missing."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        # utime and stime are fields 14 and 15 of stat(5), in clock ticks.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mb(self) -> float:
        """Peak resident memory (VmHWM) in MiB, or 0 where /proc is missing."""
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return 0.0
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


async def wait_http(url: str, proc: Process, within: float = 30.0) -> None:
    """Poll `url` until it answers 200; fail early if the process died."""
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as session:
        while True:
            if proc.proc.poll() is not None:
                raise RuntimeError(
                    f"{proc.name} exited with {proc.proc.returncode}; see {proc.log_path}"
                )
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{proc.name} did not become ready; see {proc.log_path}")
            await asyncio.sleep(0.05)


def daemon_config(
    workdir: Path,
    port: int,
    sim_port: int,
    concurrency: int,
    *,
    retention: float | None = None,
    log_level: str = "warning",
) -> Path:
    sim = f"http://127.0.0.1:{sim_port}"
    keep = "" if retention is None else f"retention = {retention}"
    text = f"""
[server]
port = {port}
public_url = "http://127.0.0.1:{port}"
[storage]
path = "{workdir / "bench.db"}"
{keep}
[control]
socket = "{workdir / "bench.sock"}"
[delivery]
concurrency = {concurrency}
[[providers]]
name = "provider1"
url = "{sim}/provider1"
weight = 30
[[providers]]
name = "provider2"
url = "{sim}/provider2"
weight = 70
[simulator]
enabled = false
failure_rate = 0.0
latency = 0.0
callback_delay = 0.0
invalid_suffix = ""
[log]
level = "{log_level}"
"""
    path = workdir / "dispatchd.toml"
    path.write_text(text)
    return path


@contextlib.asynccontextmanager
async def daemon_process(
    workdir: Path, sim_port: int, concurrency: int, **settings: Any
) -> AsyncIterator[tuple[str, Process]]:
    """The daemon on `workdir`'s database; `settings` go to `daemon_config`."""
    port = free_port()
    config = daemon_config(workdir, port, sim_port, concurrency, **settings)
    proc = Process("daemon", ["serve", "--config", str(config)], workdir, {})
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_http(f"{base}/readyz", proc)
        yield base, proc
    finally:
        code = proc.stop()
        if code not in (0, -signal.SIGTERM):
            raise RuntimeError(f"daemon exited with {code}; see {proc.log_path}")


# -- the ceiling endpoint -----------------------------------------------------------------

_CEILING_BODY = json.dumps(
    {
        "id": "01a222ab-f8ac-7206-bf20-90d60ad50f03",
        "to_number": "+17034573322",
        "message": "Benchmark message from dispatchd",
        "status": "queued",
        "segments": 1,
        "encoding": "GSM-7",
        "provider": None,
        "provider_message_id": None,
        "error": None,
        "created_at": "2026-11-28T15:00:25.388Z",
        "updated_at": "2026-11-28T15:00:25.388Z",
        "next_attempt_at": "2026-11-28T15:00:25.388Z",
    }
)


async def _ceiling_handler(request: web.Request) -> web.Response:
    data = json.loads(await request.read())
    if not isinstance(data, dict):
        raise web.HTTPBadRequest()
    return web.Response(
        status=202,
        text=_CEILING_BODY,
        content_type="application/json",
        headers={"Location": "/messages/01a222ab-f8ac-7206-bf20-90d60ad50f03"},
    )


def run_ceiling(port: int) -> None:
    """A bare aiohttp endpoint: parse the JSON, answer a same-sized 202."""
    app = web.Application()
    app.router.add_post("/messages", _ceiling_handler)
    app.router.add_get("/readyz", lambda _: _ok())
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


async def _ok() -> web.Response:
    return web.Response(text="ok")


# -- the run ------------------------------------------------------------------------------


@dataclass
class BenchOptions:
    url: str | None
    concurrency: int
    duration: float | None
    requests: int | None
    e2e_duration: float
    backlog: int
    delivery_concurrency: int
    # Live-status watchers during a second end-to-end phase (0: no such phase).
    watchers: int = 0
    watch_with: Literal["events", "poll", "idle"] = "events"
    # Accept load while the daemon backs its database up (after the backlog phase).
    backup: bool = False
    # Accept load while retention purges this many old delivered messages (0: no phase).
    purge: int = 0


async def _phase_ceiling(opts: BenchOptions, workdir: Path, out: TextIO) -> LoadResult:
    port = free_port()
    proc = Process("ceiling", ["bench-ceiling", "--port", str(port)], workdir, {})
    try:
        await wait_http(f"http://127.0.0.1:{port}/readyz", proc)
        return await _accept(f"http://127.0.0.1:{port}", opts, "ceiling", out)
    finally:
        proc.stop()


async def _accept(
    base: str,
    opts: BenchOptions,
    label: str,
    out: TextIO,
    duration: float | None = None,
    accepted: asyncio.Queue[str] | None = None,
) -> LoadResult:
    """POST /messages at `base` with the run's concurrency, for `duration` or the run's."""
    return await drive(
        f"{base}/messages",
        concurrency=opts.concurrency,
        duration=duration if duration is not None else opts.duration,
        requests=opts.requests,
        expect=202,
        label=label,
        out=out,
        accepted=accepted,
    )


async def _wait_all_final(db: Path, within: float) -> float:
    """Poll the database until no message is unfinished; return when that happened."""
    deadline = time.monotonic() + within
    while True:
        if store_mod.count_unfinished(db) == 0:
            return time.time()
        if time.monotonic() > deadline:
            raise RuntimeError("messages were still undelivered when the bench gave up waiting")
        await asyncio.sleep(0.1)


async def run(opts: BenchOptions, out: TextIO = sys.stderr) -> dict[str, Any]:
    """Run every phase and return the report."""
    report: dict[str, Any] = {"concurrency": opts.concurrency, "cpus": os.cpu_count()}
    if opts.url is not None:
        report["accept"] = (await _accept(opts.url.rstrip("/"), opts, "accept", out)).summary()
        return report
    with tempfile.TemporaryDirectory(prefix="dispatchd-bench-") as tmp:
        workdir = Path(tmp)
        db = workdir / "bench.db"
        ceiling = await _phase_ceiling(opts, workdir, out)
        report["ceiling"] = ceiling.summary()
        sim_port = free_port()
        sim = Process("simulator", ["simulator", "--port", str(sim_port), "--instant"], workdir, {})
        try:
            await wait_http(f"http://127.0.0.1:{sim_port}/readyz", sim)
            async with daemon_process(workdir, sim_port, opts.delivery_concurrency) as (base, d):
                accept = await _accept(base, opts, "accept", out)
                await _wait_all_final(db, within=300)
                stored = store_mod.count_messages(db)
                report["accept"] = {**accept.summary(), "stored": stored}
                report["accept"]["ratio_to_ceiling"] = round(
                    accept.rate / ceiling.rate if ceiling.rate else 0.0, 3
                )
                report["end_to_end"] = await _phase_e2e(base, db, opts, out, d)
                if opts.watchers:
                    report["end_to_end_watched"] = await _phase_e2e(
                        base, db, opts, out, d, watchers=opts.watchers
                    )
                report["daemon_peak_rss_mb"] = round(d.peak_rss_mb(), 1)
            if opts.backlog:
                report["backlog"] = await _phase_backlog(workdir, sim_port, opts, out)
            if opts.backup:
                report["backup"] = await _phase_backup(workdir, sim_port, opts, out)
            if opts.purge:
                report["purge"] = await _phase_purge(workdir / "purge", sim_port, opts, out)
        finally:
            sim.stop()
    return report


async def _phase_e2e(
    base: str, db: Path, opts: BenchOptions, out: TextIO, daemon: Process, watchers: int = 0
) -> dict[str, Any]:
    idle = "idle " if opts.watch_with == "idle" else ""
    label = f"end to end, {watchers} {idle}watchers" if watchers else "end to end"
    async with _watching(base, watchers, opts.watch_with) as watch:
        # Counted from here: idle watchers' own scheduled messages are not part of the load.
        before = store_mod.count_messages(db)
        cpu_before = daemon.cpu_seconds()
        started = time.time()
        load = await _accept(
            base, opts, label, out, duration=opts.e2e_duration, accepted=watch.queue
        )
        finished = await _wait_all_final(db, within=600)
    cpu = daemon.cpu_seconds() - cpu_before
    delivered, latencies = store_mod.delivery_latencies(db, since=started)
    seconds = finished - started
    extra = (
        {
            "watchers": watchers,
            "watch_with": opts.watch_with,
            "watched": watch.watched,
            "watch_errors": watch.errors,
        }
        if watchers
        else {}
    )
    return {
        **extra,
        "sent_requests": load.ok,
        "delivered": delivered,
        "new_messages": store_mod.count_messages(db) - before,
        "seconds": round(seconds, 3),
        "delivered_per_s": round(delivered / seconds, 1) if seconds else 0.0,
        # The daemon's own cost, whatever the load generator (and watchers) cost.
        "daemon_cpu_ms_per_message": round(1000 * cpu / delivered, 2) if delivered else 0.0,
        "p50_ms": round(percentile(latencies, 50), 1),
        "p95_ms": round(percentile(latencies, 95), 1),
        "p99_ms": round(percentile(latencies, 99), 1),
    }


@dataclass
class Watching:
    """Live-status watchers fed with accepted ids, and how their watches ended."""

    queue: asyncio.Queue[str] | None
    watched: int = 0  # followed to a final status
    errors: int = 0


@contextlib.asynccontextmanager
async def _watching(base: str, count: int, mode: str) -> AsyncIterator[Watching]:
    """`count` watchers, each following one fresh message to its final status at a time,
    through `dispatchd.client` (SSE or long polling) on their own connections; or, `idle`,
    each holding an event stream open on a message scheduled for later, which shows what
    open watches cost while nothing they watch changes."""
    if not count:
        yield Watching(None)
        return
    if mode == "idle":
        async with _idle_watchers_process(base, count) as watch:
            yield watch
        return
    queue: asyncio.Queue[str] = asyncio.Queue(maxsize=count)
    watch = Watching(queue)

    async def follow(client: Client, msg_id: str) -> bool:
        if mode == "poll":
            return (await client.wait_for_final(msg_id, timeout=600)).final
        return any([e.final async for e in client.events(msg_id)])

    async def watcher(client: Client) -> None:
        while True:
            msg_id = await queue.get()
            try:
                final = await follow(client, msg_id)
            except (ApiError, aiohttp.ClientError, TimeoutError):
                final = False
            watch.watched += final
            watch.errors += not final

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        client = Client(base, session=session)
        tasks = [asyncio.create_task(watcher(client), name="bench-watcher") for _ in range(count)]
        try:
            yield watch
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


# Idle watchers run in a process of their own, as real clients would: sharing the load
# generator's process would slow the load and so change the daemon's batching.
_IDLE_CHILD = (
    "import asyncio, sys; from dispatchd.devtools.bench import hold_idle_watchers; "
    "asyncio.run(hold_idle_watchers(sys.argv[1], int(sys.argv[2])))"
)


@contextlib.asynccontextmanager
async def _idle_watchers_process(base: str, count: int) -> AsyncIterator[Watching]:
    """`_idle_watching` in a child process; its counts are read back when the phase ends."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _IDLE_CHILD,
        base,
        str(count),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    watch = Watching(None)
    try:
        await asyncio.wait_for(proc.stdout.readline(), IDLE_OPEN_WITHIN + 60)  # all open
        yield watch
    finally:
        proc.stdin.close()
        try:
            out = await asyncio.wait_for(proc.stdout.read(), 60)
            counts = json.loads(out.decode().strip().splitlines()[-1])
            watch.watched, watch.errors = counts["watched"], counts["errors"]
        except (TimeoutError, ValueError, IndexError, KeyError):
            watch.errors = count
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def hold_idle_watchers(base: str, count: int) -> None:
    """The idle watchers' process: report once all streams are open, hold them until stdin
    closes, then print the counts as JSON."""
    async with _idle_watching(base, count) as watch:
        print("open", flush=True)
        await asyncio.to_thread(sys.stdin.read)
    print(json.dumps({"watched": watch.watched, "errors": watch.errors}), flush=True)


IDLE_NUMBER = "+17034573399"
IDLE_OPEN_WITHIN = 60.0  # seconds for every idle stream to be open before the load starts


@contextlib.asynccontextmanager
async def _idle_watching(base: str, count: int) -> AsyncIterator[Watching]:
    """Event streams held open on `count` messages due in an hour; `watched` counts the
    streams still open when the phase ends, `errors` those that ended or failed."""
    watch = Watching(None)
    opened = 0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        client = Client(base, session=session)
        later = datetime.now(UTC) + timedelta(hours=1)
        ids: list[str] = []
        for start in range(0, count, 1000):
            items = [SendItem(IDLE_NUMBER, "held", send_at=later)] * min(1000, count - start)
            batch = await client.send_batch(items)
            ids += [r.message.id for r in batch.results if r.message is not None]

        all_open = asyncio.Event()

        async def hold(msg_id: str) -> None:
            nonlocal opened
            first = True
            try:
                # The first event (queued) arrives once the stream is open; nothing changes
                # after it within the phase, so a stream that ends is an error.
                async for _ in client.events(msg_id):
                    opened += first
                    first = False
                    if opened == len(ids):
                        all_open.set()
            except (ApiError, aiohttp.ClientError):
                pass
            watch.errors += 1
            all_open.set()  # stop waiting: the phase would not measure what it says

        tasks = [asyncio.create_task(hold(i), name="bench-idle-watcher") for i in ids]
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_open.wait(), IDLE_OPEN_WITHIN)
            yield watch
            watch.watched = sum(not t.done() for t in tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def _phase_backlog(
    workdir: Path, sim_port: int, opts: BenchOptions, out: TextIO
) -> dict[str, Any]:
    db = workdir / "bench.db"
    out.write(f"  seeding {opts.backlog:,} delivered messages...\n")
    out.flush()
    store_mod.seed_backlog(db, opts.backlog)
    async with daemon_process(workdir, sim_port, opts.delivery_concurrency) as (base, d):
        accept = await _accept(base, opts, "accept with backlog", out)
        await _wait_all_final(db, within=300)
        return {
            **accept.summary(),
            "stored_messages": store_mod.count_messages(db),
            "daemon_peak_rss_mb": round(d.peak_rss_mb(), 1),
        }


# Seconds of load before the operation starts and after it ends, each; and the first part
# of it, while connections open, which is left out of the figures.
AROUND_DEFAULT = 2.0
WARMUP = 0.5


@dataclass(frozen=True, slots=True)
class Window:
    """Accepts before, during and after an operation, under the same load throughout.

    `before` is the baseline. `after` shows what the operation leaves behind: after a
    backup, say, the checkpoint that catches up on the WAL the copy's snapshot held back.
    """

    result: dict[str, Any]  # what the operation returned
    seconds: float  # how long it ran
    before: dict[str, float]
    during: dict[str, float]
    after: dict[str, float]
    errors: int  # answers other than 202, in and out of the window

    def summary(self) -> dict[str, Any]:
        return {
            "window_s": round(self.seconds, 3),
            "before": self.before,
            "during": self.during,
            "after": self.after,
            "errors": self.errors,
        }


async def accept_during(
    base: str,
    operation: Callable[[], Awaitable[dict[str, Any]]],
    opts: BenchOptions,
    out: TextIO,
    *,
    label: str,
    around: float,
    begin: Callable[[], Awaitable[None]] | None = None,
) -> Window:
    """Accept load for `around` seconds, then while `operation` runs, then `around` more.

    With `begin`, the window opens when it returns (after `around` at least): for an
    operation the daemon starts by itself, `begin` waits until it has started.

    How long the operation held accepts up is `during["longest_gap_ms"]`: the longest time
    in which not one 202 completed, which `before` shows for the same load without it.
    """
    stop = asyncio.Event()
    spans: list[tuple[float, float]] = []
    started = time.perf_counter()
    load = asyncio.create_task(
        drive(
            f"{base}/messages",
            concurrency=opts.concurrency,
            duration=None,
            requests=None,
            expect=202,
            label=label,
            out=out,
            stop=stop,
            spans=spans,
        ),
        name="bench-load-around",
    )
    try:
        await asyncio.sleep(around)
        if begin is not None:
            await begin()
        start = time.perf_counter()
        result = await operation()
        end = time.perf_counter()
        await asyncio.sleep(around)
    finally:
        stop.set()
        loaded = await load
        stopped = time.perf_counter()
    counted = [s for s in spans if s[0] >= started + WARMUP]
    return Window(
        result,
        end - start,
        _in_window(counted, started + WARMUP, start),
        _in_window(counted, start, end),
        _in_window(counted, end, stopped),
        loaded.errors,
    )


def _in_window(spans: list[tuple[float, float]], start: float, end: float) -> dict[str, float]:
    """Latencies of the accepts that overlap [start, end], and the longest time within it
    in which none completed (its edges count as completions: none at all is one gap)."""
    inside = [(a, b) for a, b in spans if a < end and b > start]
    marks = [start, *sorted(b for _, b in spans if start <= b <= end), end]
    gap = max((b - a for a, b in itertools.pairwise(marks)), default=0.0)
    ms = [(b - a) * 1000 for a, b in inside]
    seconds = end - start
    return {
        "requests": len(ms),
        "rate_per_s": round(len(ms) / seconds, 1) if seconds > 0 else 0.0,
        "p50_ms": round(percentile(ms, 50), 2),
        "p95_ms": round(percentile(ms, 95), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms, default=0.0), 2),
        "longest_gap_ms": round(gap * 1000, 2),
    }


async def _phase_backup(
    workdir: Path, sim_port: int, opts: BenchOptions, out: TextIO
) -> dict[str, Any]:
    """A backup through the control socket, as `dispatchd backup` makes it, under load."""
    db = workdir / "bench.db"
    dest = workdir / "backup.db"
    around = max((opts.duration or AROUND_DEFAULT) / 2, WARMUP * 2)
    async with daemon_process(workdir, sim_port, opts.delivery_concurrency) as (base, _):
        stored = store_mod.count_messages(db)
        db_bytes = db.stat().st_size
        control = ControlClient(workdir / "bench.sock")

        async def backup() -> dict[str, Any]:
            note = f"  backing up {stored:,} messages ({db_bytes / 1e6:,.0f} MB)..."
            out.write(f"\r{note:<60}\n")
            return await control.backup(str(dest))

        try:
            window = await accept_during(
                base, backup, opts, out, label="accept around a backup", around=around
            )
        finally:
            await control.close()
        await _wait_all_final(db, within=300)
    return {
        "stored_messages": stored,
        "db_bytes": db_bytes,
        "backup": {k: window.result[k] for k in ("bytes", "seconds", "messages", "integrity")},
        **window.summary(),
    }


T = TypeVar("T")

# Retention in the purge phase: the seeded messages (a day old) are past it, the load's own
# are not; with it, the daemon's first purge cycle comes a minute after its start.
PURGE_RETENTION = 3600.0
PURGE_LOG = "event=retention_purge"


async def _phase_purge(
    workdir: Path, sim_port: int, opts: BenchOptions, out: TextIO
) -> dict[str, Any]:
    """Accepts while the daemon's retention purges `opts.purge` old delivered messages."""
    db = workdir / "bench.db"
    out.write(f"  seeding {opts.purge:,} delivered messages a day old...\n")
    out.flush()
    await asyncio.to_thread(workdir.mkdir)
    store_mod.seed_backlog(db, opts.purge)
    db_bytes = db.stat().st_size
    settings = {"retention": PURGE_RETENTION, "log_level": "info"}
    async with (
        daemon_process(workdir, sim_port, opts.delivery_concurrency, **settings) as (base, d),
        aiohttp.ClientSession() as http,
    ):

        async def deleted() -> float:
            async with http.get(f"{base}/metrics") as resp:
                text = await resp.text()
            return sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith('dispatchd_retention_deleted_rows_total{table="messages"}')
            )

        async def started() -> None:
            out.write(f"\r  waiting for the first purge cycle (up to a minute)...{'':<10}\n")
            await _poll(lambda: _positive(deleted()), within=120, what="a purge to start")

        async def purge() -> dict[str, Any]:
            # The cycle's log line comes once it has deleted everything and given back the
            # free pages.
            line = await _poll(lambda: _logged(d.log_path, PURGE_LOG), within=900, what="a purge")
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            return {k: float(fields[k]) for k in ("messages", "history", "free_pages", "seconds")}

        window = await accept_during(
            base,
            purge,
            opts,
            out,
            label="accept around a purge",
            around=AROUND_DEFAULT,
            begin=started,
        )
    return {
        "seeded_messages": opts.purge,
        "db_bytes_before": db_bytes,
        "db_bytes_after": db.stat().st_size,
        "purge": window.result,
        **window.summary(),
    }


async def _poll(
    check: Callable[[], Awaitable[T | None]], *, within: float, what: str, every: float = 0.05
) -> T:
    """`check`'s first answer other than None, asked every `every` seconds."""
    deadline = time.monotonic() + within
    while True:
        answer = await check()
        if answer is not None:
            return answer
        if time.monotonic() > deadline:
            raise RuntimeError(f"the bench gave up waiting for {what} after {within:g} s")
        await asyncio.sleep(every)


async def _positive(value: Awaitable[float]) -> float | None:
    number = await value
    return number if number > 0 else None


async def _logged(log: Path, marker: str) -> str | None:
    """The first line of `log` holding `marker`, if it is there yet."""
    text = await asyncio.to_thread(log.read_text, errors="replace")
    return next((line for line in text.splitlines() if marker in line), None)


def render(report: dict[str, Any]) -> str:
    """The report as a plain-text table."""
    rows = [("phase", "rate/s", "p50 ms", "p95 ms", "p99 ms", "notes")]

    def add(name: str, data: dict[str, Any] | None, rate_key: str, note: str) -> None:
        if data:
            rows.append(
                (
                    name,
                    f"{data[rate_key]:,.0f}",
                    f"{data['p50_ms']:.1f}",
                    f"{data['p95_ms']:.1f}",
                    f"{data['p99_ms']:.1f}",
                    note,
                )
            )

    ceiling, accept = report.get("ceiling"), report.get("accept")
    add("ceiling (bare aiohttp)", ceiling, "rate_per_s", "same client, same JSON")
    if accept:
        note = f"{accept['ok']:,} accepted"
        if "stored" in accept:
            note += f", {accept['stored']:,} in db"
        if "ratio_to_ceiling" in accept:
            note += f", {accept['ratio_to_ceiling']:.2f}x ceiling"
        add("accept (POST /messages)", accept, "rate_per_s", note)
    e2e = report.get("end_to_end")
    if e2e:
        add(
            "end to end (delivered)",
            e2e,
            "delivered_per_s",
            f"{e2e['delivered']:,} delivered in {e2e['seconds']:.1f}s, accept->delivered",
        )
    watched = report.get("end_to_end_watched")
    if watched:
        idle = watched.get("watch_with") == "idle"
        followed = "streams held open" if idle else "followed to final"
        add(
            f"end to end, {watched['watchers']:,} {'idle ' if idle else ''}watchers",
            watched,
            "delivered_per_s",
            f"{watched['delivered']:,} delivered, {watched['watched']:,} {followed}, "
            f"daemon CPU {watched['daemon_cpu_ms_per_message']:.2f} ms/msg "
            f"(vs {e2e['daemon_cpu_ms_per_message'] if e2e else 0:.2f})",
        )
    backlog = report.get("backlog")
    if backlog:
        add(
            "accept with backlog",
            backlog,
            "rate_per_s",
            f"{backlog['stored_messages']:,} stored, RSS {backlog['daemon_peak_rss_mb']:.0f} MB",
        )
    _window_rows(report.get("backup"), "a backup", add)
    _window_rows(report.get("purge"), "a purge", add)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    extra = [f"concurrency {report['concurrency']}, {report['cpus']} CPUs"]
    if "daemon_peak_rss_mb" in report:
        extra.append(f"daemon peak RSS {report['daemon_peak_rss_mb']:.0f} MB")
    return "\n".join([*lines, "", "; ".join(extra)])


def _window_rows(
    phase: dict[str, Any] | None,
    what: str,
    add: Callable[[str, dict[str, Any] | None, str, str], None],
) -> None:
    """Rows for accepts before, during and after an operation (`accept_during`)."""
    if not phase:
        return
    for name in ("before", "during", "after"):
        data = phase[name]
        note = f"max {data['max_ms']:.1f} ms, longest gap {data['longest_gap_ms']:.1f} ms"
        copied, purged = phase.get("backup"), phase.get("purge")
        if name == "during" and copied:
            note += (
                f"; {copied['messages']:,} messages, {copied['bytes'] / 1e6:,.0f} MB "
                f"copied in {copied['seconds']:.1f} s"
            )
        if name == "during" and purged:
            note += (
                f"; {purged['messages']:,.0f} messages purged in {purged['seconds']:.1f} s, "
                f"file {phase['db_bytes_before'] / 1e6:,.0f} -> "
                f"{phase['db_bytes_after'] / 1e6:,.0f} MB"
            )
        add(f"accept {name} {what}", data, "rate_per_s", note)


def main(opts: BenchOptions, as_json: bool, echo: Callable[[str], None] = print) -> int:
    report = asyncio.run(run(opts))
    echo(json.dumps(report, indent=2) if as_json else render(report))
    return 0
