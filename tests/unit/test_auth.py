"""API keys: parsing, checking, loading from config, env and file, and the exposure rule."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest

from dispatchd import config as config_mod
from dispatchd.config import ApiConfig
from dispatchd.domain.errors import ConfigError
from dispatchd.http.auth import (
    KeyRing,
    Verdict,
    check_exposure,
    is_loopback,
    key_file_entries,
    load_keys,
    parse_key,
)

KEY = "k-3f9a1c2e"


def hashed(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def test_a_hashed_key_is_the_same_key_as_its_plain_form() -> None:
    plain = KeyRing([parse_key(KEY, "x")])
    stored = KeyRing([parse_key(hashed(KEY).upper().replace("SHA256:", "sha256:"), "x")])
    assert plain.check(f"Bearer {KEY}") == stored.check(f"Bearer {KEY}")
    assert stored.check(f"Bearer {KEY}").scope


def test_check_tells_missing_from_wrong_and_names_the_key() -> None:
    ring = KeyRing([parse_key(KEY, "x"), parse_key("other-key", "x")])
    assert ring.check(None).reason == "missing"
    assert ring.check("Basic dXNlcjpwYXNz").reason == "missing"
    assert ring.check("Bearer ").reason == "missing"
    assert ring.check("Bearer nope").reason == "wrong"
    assert ring.check(f"Bearer {KEY}x").reason == "wrong"
    # The scheme is case-insensitive (RFC 7235); the key is not.
    ok, other = ring.check(f"bearer {KEY}"), ring.check("Bearer other-key")
    assert ok.scope and other.scope and ok.scope != other.scope
    assert ring.check(f"Bearer {KEY.upper()}").scope is None


@pytest.mark.parametrize(
    "token",
    ["\udcff\udcfe", "cl\u00e9", "k\x00ey", "tab\there"],
    ids=["undecodable-bytes", "non-ascii", "nul", "control"],
)
def test_a_token_that_is_not_printable_ascii_is_wrong_not_an_error(token: str) -> None:
    # aiohttp decodes header bytes with surrogateescape: b"\xff\xfe" arrives as surrogates.
    ring = KeyRing([parse_key(KEY, "x")])
    assert ring.check(f"Bearer {token}") == Verdict(None, "wrong")


def test_without_keys_everyone_is_let_in_with_one_scope() -> None:
    ring = KeyRing([])
    assert not ring.enabled
    assert ring.check(None).scope == ""
    assert ring.check("Bearer anything").scope == ""


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("", "cannot be empty"),
        ("sha256:abc", "64 hex digits"),
        ("two words", "printable ASCII"),
        ("clé", "printable ASCII"),
    ],
)
def test_bad_keys_are_config_errors_naming_the_key(entry: str, says: str) -> None:
    with pytest.raises(ConfigError, match=rf"api\.keys\[1\]: .*{says}"):
        load_keys(ApiConfig(keys=[KEY, entry]))


def test_keys_file_lines_comments_and_blanks() -> None:
    text = f"# ops keys\n{KEY}\n\n  {hashed('b')}  # rotated 2025-01\n#{hashed('c')}\n"
    assert key_file_entries(text) == [KEY, hashed("b")]


def test_keys_come_from_the_list_and_the_file(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# one a line\n{hashed('from-file')}\n")
    ring = load_keys(ApiConfig(keys=[KEY], keys_file=keys_file))
    assert len(ring) == 2
    assert ring.check("Bearer from-file").scope
    assert ring.check(f"Bearer {KEY}").scope


def test_an_unreadable_keys_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"api\.keys_file: cannot read .*missing"):
        load_keys(ApiConfig(keys_file=tmp_path / "missing"))
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match=r"api\.keys_file: .*not UTF-8"):
        load_keys(ApiConfig(keys_file=binary))


def test_keys_from_the_environment_as_a_json_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCHD_API__KEYS", f'["{KEY}", "{hashed("b")}"]')
    cfg = config_mod.load(None)
    assert len(load_keys(cfg.api)) == 2
    # A bare string is not a list: a config error that shows the JSON form, not a traceback.
    monkeypatch.setenv("DISPATCHD_API__KEYS", KEY)
    with pytest.raises(ConfigError, match=r"DISPATCHD_API__KEYS='\[\"key\"\]'"):
        config_mod.load(None)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("example.com", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_no_keys_is_refused_beyond_loopback_and_warned_about_on_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with pytest.raises(ConfigError, match=r"^api\.keys: no API keys"):
        check_exposure(KeyRing([]), "0.0.0.0")
    with caplog.at_level(logging.INFO, logger="dispatchd.http.auth"):
        check_exposure(KeyRing([]), "127.0.0.1")
        check_exposure(KeyRing([parse_key(KEY, "x")]), "0.0.0.0")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "unauthenticated" in warnings[0].getMessage()
    assert "only reachable from this machine" in warnings[0].getMessage()
