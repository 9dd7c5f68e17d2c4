"""Layering is a test: the daemon never loads Textual; the console never loads the store.

import-linter checks the imports written in the code (`make imports`); these check what a
fresh interpreter really loads, lazy and dynamic imports included. Each check runs in a
fresh interpreter, because this test process has imported everything.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import dispatchd

pytestmark = pytest.mark.slow  # a fresh interpreter per check

PACKAGE = Path(dispatchd.__file__).parent
# What the console may load of dispatchd: itself, the control protocol and the domain.
CONSOLE_MAY_LOAD = (
    "dispatchd.console",
    "dispatchd.control.client",
    "dispatchd.control.format",
    "dispatchd.control.protocol",
    "dispatchd.domain",
)
CONSOLE_PARENTS = {"dispatchd", "dispatchd.control"}  # their __init__ only


def daemon_side() -> list[str]:
    """Every dispatchd module outside dispatchd/console, found on disk (importing none)."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[1] == "console" or parts[-1] == "__main__":
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def modules_after(code: str) -> set[str]:
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_the_daemon_side_never_imports_textual() -> None:
    modules = daemon_side()
    assert {"dispatchd.daemon", "dispatchd.cli", "dispatchd.control.server"} <= set(modules)
    loaded = modules_after("\n".join(f"import {m}" for m in modules))
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


@pytest.mark.parametrize("entry", ["dispatchd.console.app", "dispatchd.control.client"])
def test_the_console_loads_only_the_protocol_and_the_domain(entry: str) -> None:
    loaded = modules_after(f"import {entry}")
    assert "textual" in loaded or entry.endswith("client")
    assert not {"sqlite3", "aiosqlite"} & loaded
    ours = {m for m in loaded if m == "dispatchd" or m.startswith("dispatchd.")}
    allowed = {m for m in ours if m in CONSOLE_PARENTS or within(m, CONSOLE_MAY_LOAD)}
    assert ours - allowed == set()


def within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)
