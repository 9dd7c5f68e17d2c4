"""Layering is a test: the daemon never loads Textual; the console never loads the store.

Each check runs in a fresh interpreter, because this test process has imported everything.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

DAEMON_SIDE = [
    "dispatchd.cli",
    "dispatchd.daemon",
    "dispatchd.control.server",
    "dispatchd.events",
    "dispatchd.health",
    "dispatchd.http.app",
    "dispatchd.worker",
    "dispatchd.service",
    "dispatchd.store.sqlite",
]
# What the console must never need: the database and everything that writes to it.
NOT_FOR_THE_CONSOLE = [
    "dispatchd.store.sqlite",
    "dispatchd.worker",
    "dispatchd.service",
    "dispatchd.daemon",
    "dispatchd.control.server",
    "aiosqlite",
]


def modules_after(code: str) -> set[str]:
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_the_daemon_side_never_imports_textual() -> None:
    imports = "\n".join(f"import {m}" for m in DAEMON_SIDE)
    loaded = modules_after(imports)
    assert "dispatchd.daemon" in loaded
    assert not {m for m in loaded if m == "textual" or m.startswith("textual.")}


def test_serving_parses_its_command_line_without_textual() -> None:
    # `dispatchd serve` goes through cli.main; a config error stops it right after parsing.
    code = (
        "from dispatchd import cli\n"
        "try:\n    cli.main(['serve', '--config', '/nonexistent/dispatchd.toml'])\n"
        "except SystemExit:\n    pass"
    )
    assert "textual" not in modules_after(code)


@pytest.mark.parametrize("entry", ["dispatchd.console.app", "dispatchd.console.client"])
def test_the_console_never_imports_the_store_or_the_worker(entry: str) -> None:
    loaded = modules_after(f"import {entry}")
    assert "textual" in loaded or entry.endswith("client")
    assert not set(NOT_FOR_THE_CONSOLE) & loaded
