"""`dispatchd bench` in smoke mode: it runs every phase end to end and its numbers are sane.

This is not a speed test: it asserts that the tool works and that what it reports
is consistent (every 202 stored, every message delivered), never how fast.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dispatchd.devtools import bench
from dispatchd.store import sqlite as store_mod
from tests.conftest import DaemonFactory, wait_for

pytestmark = pytest.mark.slow  # load runs, and the CLI in a subprocess


async def test_bench_runs_every_phase_and_reports_consistent_numbers() -> None:
    opts = bench.BenchOptions(
        url=None,
        concurrency=8,
        duration=None,
        requests=150,
        e2e_duration=0.5,
        backlog=2_000,
        delivery_concurrency=16,
        watchers=20,
    )
    report = await bench.run(opts, out=io.StringIO())
    ceiling, accept, e2e, backlog = (
        report["ceiling"],
        report["accept"],
        report["end_to_end"],
        report["backlog"],
    )
    assert ceiling["ok"] == ceiling["requests"] == 150
    assert accept["ok"] == 150 and accept["errors"] == 0
    assert accept["stored"] == 150, "every 202 is a stored message"
    assert accept["ratio_to_ceiling"] > 0
    assert accept["p50_ms"] <= accept["p95_ms"] <= accept["p99_ms"]
    # Each end-to-end phase stops after 150 requests or 0.5 s, whichever comes first (a
    # loaded machine may not reach 150); whatever was sent must all be delivered.
    plain = e2e["sent_requests"]
    assert 0 < plain <= 150 and e2e["delivered"] == e2e["new_messages"] == plain
    assert e2e["delivered_per_s"] > 0 and e2e["p50_ms"] > 0
    # Again with live-status watchers (SSE, through dispatchd.client): each followed
    # message ended final, none failed.
    watched = report["end_to_end_watched"]
    sent = watched["sent_requests"]
    assert 0 < sent <= 150 and watched["delivered"] == watched["new_messages"] == sent
    assert 0 < watched["watched"] <= sent and watched["watch_errors"] == 0
    assert backlog["ok"] == 150
    assert backlog["stored_messages"] == 2_000 + 2 * 150 + plain + sent
    assert 0 < report["daemon_peak_rss_mb"] < 1000
    table = bench.render(report)
    for phase in ("ceiling", "accept", "end to end", "20 watchers", "backlog"):
        assert phase in table


def test_bench_cli_prints_json_against_a_running_daemon_url_error() -> None:
    # Against a URL nothing listens on, every request fails and the report says so.
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "dispatchd",
            "bench",
            "--url",
            "http://127.0.0.1:9",
            "--requests",
            "5",
            "--concurrency",
            "1",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    report = json.loads(out)
    assert report["accept"]["ok"] == 0
    assert report["accept"]["errors"] == 5


async def test_idle_watchers_hold_their_streams_open_and_are_counted(
    start_daemon: DaemonFactory,
) -> None:
    # The bench's `--watch-with idle`: streams on messages scheduled for later, held by a
    # child process, stay open through the phase, each a live watch in the daemon.
    daemon = await start_daemon(simulator={"enabled": True})
    base = f"http://127.0.0.1:{daemon.port}"
    async with bench._idle_watchers_process(base, 25) as watch:
        assert daemon.watchers.count == 25, "every stream is open when the phase starts"
    assert (watch.watched, watch.errors) == (25, 0)
    await wait_for(lambda: daemon.watchers.count == 0, what="watches closed after the phase")


async def test_backup_phase_measures_accepts_during_a_backup_against_outside_it(
    tmp_path: Path,
) -> None:
    # `--backup`: the daemon copies its database through the control socket while the
    # load runs before, during and after; the report compares the two windows.
    store_mod.seed_backlog(tmp_path / "bench.db", 5_000)
    opts = bench.BenchOptions(
        url=None,
        concurrency=4,
        duration=1.0,
        requests=None,
        e2e_duration=0.1,
        backlog=5_000,
        delivery_concurrency=16,
        backup=True,
    )
    sim_port = bench.free_port()
    sim = bench.Process(
        "simulator", ["simulator", "--port", str(sim_port), "--instant"], tmp_path, {}
    )
    try:
        await bench.wait_http(f"http://127.0.0.1:{sim_port}/readyz", sim)
        phase = await bench._phase_backup(tmp_path, sim_port, opts, io.StringIO())
    finally:
        sim.stop()
    assert phase["stored_messages"] == 5_000 and phase["db_bytes"] > 0
    copied = phase["backup"]
    # The backlog and what the load had accepted by the time the copy started.
    assert copied["integrity"] == "ok" and copied["messages"] > 5_000
    assert copied["bytes"] == (tmp_path / "backup.db").stat().st_size
    assert phase["window_s"] >= copied["seconds"] > 0
    assert phase["errors"] == 0
    for window in ("before", "during", "after"):
        data = phase[window]
        assert set(data) == {
            "requests",
            "rate_per_s",
            "p50_ms",
            "p95_ms",
            "p99_ms",
            "max_ms",
            "longest_gap_ms",
        }
        assert data["p50_ms"] <= data["p99_ms"] <= data["max_ms"]
        assert data["longest_gap_ms"] > 0
    assert phase["before"]["requests"] > 0 and phase["after"]["requests"] > 0
    table = bench.render({"concurrency": 4, "cpus": 2, "backup": phase})
    for window in ("before", "during", "after"):
        assert f"accept {window} a backup" in table
    assert "longest gap" in table
