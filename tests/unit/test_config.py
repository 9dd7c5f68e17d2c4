"""dispatchd.config.load: TOML files, env overrides, and errors that name the offending key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dispatchd.cli import EXIT_CONFIG
from dispatchd.config import Config, DispatchdProviderConfig, load
from dispatchd.domain.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]

PROVIDERS_OK = """
[[providers]]
name = "provider1"
url = "http://127.0.0.1:9000/p1"
weight = 30

[[providers]]
name = "provider2"
url = "http://127.0.0.1:9000/p2"
weight = 70
"""


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No DISPATCHD_* variable from the outer environment may leak into a test."""
    for name in list(os.environ):
        if name.startswith("DISPATCHD_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str, name: str = "dispatchd.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load(path)
    return info.value.message


def test_shipped_config_loads() -> None:
    cfg = load(REPO_ROOT / "dispatchd.toml", must_exist=True)
    assert isinstance(cfg, Config)
    assert cfg.server.port == 8080
    assert [(p.name, p.weight) for p in cfg.providers] == [("provider1", 30), ("provider2", 70)]
    assert cfg.delivery.max_attempts == 5
    assert cfg.simulator.enabled is True


def test_values_from_file_are_used(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[server]\nport = 9123\n[delivery]\nmax_attempts = 3\ndefault_region = "gb"\n'
        + PROVIDERS_OK,
    )
    cfg = load(path)
    assert cfg.server.port == 9123
    assert cfg.delivery.max_attempts == 3
    assert cfg.delivery.default_region == "GB"
    second = cfg.providers[1]
    assert isinstance(second, DispatchdProviderConfig), "no kind means the dispatchd kind"
    assert second.url == "http://127.0.0.1:9000/p2"


def test_unknown_key_is_named(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, "[delivery]\nconcurency = 3\n"))
    assert "delivery.concurency" in message
    assert "unknown key" in message


def test_unknown_section_is_named(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, "[deliverry]\nconcurrency = 3\n"))
    assert "deliverry" in message
    assert "unknown key" in message


def test_bad_type_names_key(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, '[server]\nport = "x"\n'))
    assert "server.port" in message
    assert "integer" in message


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        (
            '[[providers]]\nname = "p"\nurl = "http://127.0.0.1:1/p"\nweight = -1\n',
            "providers[0].weight",
        ),
        (
            PROVIDERS_OK + '[[providers]]\nname = "p3"\nurl = "ftp://example.com"\n',
            "providers[2].url",
        ),
        ('[delivery]\ndefault_region = "XX"\n', "delivery.default_region"),
        ("[delivery]\nmax_attempts = 0\n", "delivery.max_attempts"),
        ("[server]\nport = 70000\n", "server.port"),
        ("[simulator]\nfailure_rate = 1.5\n", "simulator.failure_rate"),
    ],
)
def test_bad_value_names_key(tmp_path: Path, toml: str, key: str) -> None:
    message = load_error(write(tmp_path, toml))
    assert key in message, message


def test_duplicate_provider_names_are_rejected(tmp_path: Path) -> None:
    toml = PROVIDERS_OK.replace('name = "provider2"', 'name = "provider1"')
    message = load_error(write(tmp_path, toml))
    assert "providers" in message
    assert "provider1" in message
    assert "unique" in message


def test_all_weights_zero_is_rejected(tmp_path: Path) -> None:
    toml = PROVIDERS_OK.replace("weight = 30", "weight = 0").replace("weight = 70", "weight = 0")
    message = load_error(write(tmp_path, toml))
    assert "providers" in message
    assert "weight" in message


def test_invalid_toml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 8080\n[delivery\nmax_attempts = 3\n")
    message = load_error(path)
    assert str(path) in message
    assert "not valid TOML" in message
    assert "line 3" in message


def test_missing_file_with_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load(tmp_path / "absent.toml", must_exist=True)


def test_env_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "[server]\nport = 8000\n[delivery]\nmax_attempts = 2\n" + PROVIDERS_OK)
    monkeypatch.setenv("DISPATCHD_SERVER__PORT", "9001")
    monkeypatch.setenv("DISPATCHD_DELIVERY__MAX_ATTEMPTS", "7")
    cfg = load(path)
    assert cfg.server.port == 9001
    assert cfg.delivery.max_attempts == 7
    # Keys the environment does not mention keep the file's (or default) values.
    assert cfg.server.host == "127.0.0.1"
    assert [p.name for p in cfg.providers] == ["provider1", "provider2"]


def test_env_overrides_shipped_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCHD_SERVER__PORT", "9001")
    cfg = load(REPO_ROOT / "dispatchd.toml")
    assert cfg.server.port == 9001
    assert cfg.delivery.concurrency == 64


def test_bad_env_value_names_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, PROVIDERS_OK)
    monkeypatch.setenv("DISPATCHD_DELIVERY__MAX_ATTEMPTS", "many")
    message = load_error(path)
    assert "delivery.max_attempts" in message


# -- the CLI ------------------------------------------------------------------------------


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHD_")}
    # Run the same dispatchd the tests import, whatever the working directory.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "dispatchd", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.slow
def test_cli_bad_config_exits_78_naming_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[delivery]\nconcurency = 3\n", name="bad.toml")
    proc = run_cli("serve", "--config", str(path), cwd=tmp_path)
    assert proc.returncode == EXIT_CONFIG == 78
    assert "delivery.concurency" in proc.stderr
    assert "Traceback" not in proc.stderr
    # It refused before doing anything: no database was created.
    assert not (tmp_path / "var").exists()


@pytest.mark.slow
def test_cli_missing_config_exits_78(tmp_path: Path) -> None:
    proc = run_cli("serve", "--config", str(tmp_path / "nope.toml"), cwd=tmp_path)
    assert proc.returncode == 78
    assert "nope.toml" in proc.stderr
    assert "Traceback" not in proc.stderr
