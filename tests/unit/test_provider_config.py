"""`[[providers]]` kinds: each kind's keys, errors that name the exact key, and secrets.

Secrets come from the file, from `<key>_file`, or from `DISPATCHD_PROVIDERS` (JSON); none
of them may show in the config's repr or in a validation error's text.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from dispatchd.config import (
    Config,
    DispatchdProviderConfig,
    SmppProviderConfig,
    TwilioProviderConfig,
    load,
)
from dispatchd.domain.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]

TOKEN = "tok-Secret-4f9Qz81Lw"
PASSWORD = "pW3x9Kq7"  # SMPP 3.4: at most 8 characters
NINE = "Nine9Chrs"  # one character too many, and just as secret
SECRETS = (TOKEN, PASSWORD, NINE)
SID = "AC" + "0123456789abcdef" * 2
MG = "MG" + "fedcba9876543210" * 2

DISPATCHD: dict[str, Any] = {"name": "plain", "url": "http://127.0.0.1:9000/p"}
TWILIO: dict[str, Any] = {
    "name": "tw",
    "kind": "twilio",
    "account_sid": SID,
    "auth_token": TOKEN,
    "from": "+15005550006",
}
SMPP: dict[str, Any] = {
    "name": "smsc",
    "kind": "smpp",
    "host": "smsc.example.net",
    "system_id": "dispatchd",
    "password": PASSWORD,
    "source_addr": "DISPATCHD",
}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No DISPATCHD_* variable from the outer environment may leak into a test."""
    for name in list(os.environ):
        if name.startswith("DISPATCHD_"):
            monkeypatch.delenv(name)


def toml(providers: list[dict[str, Any]], head: str = "") -> str:
    """A config file of these `[[providers]]` tables (values written as JSON, which for
    strings, numbers and booleans is also TOML)."""
    out = head
    for provider in providers:
        out += "[[providers]]\n"
        out += "".join(f"{key} = {json.dumps(value)}\n" for key, value in provider.items())
    return out


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dispatchd.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load_providers(tmp_path: Path, *providers: dict[str, Any]) -> Config:
    return load(write(tmp_path, toml(list(providers))))


def error_of(tmp_path: Path, *providers: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_providers(tmp_path, *providers)
    return info.value


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a secret shows in: {text}"


def without(entry: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k not in keys}


# -- each kind's keys -----------------------------------------------------------------------


def test_twilio_keys(tmp_path: Path) -> None:
    full = {
        **TWILIO,
        "url": "http://127.0.0.1:8080/simulator/twilio/",
        "weight": 7,
        "timeout": 2.5,
        "rate": 10,
        "max_in_flight": 4,
    }
    (p,) = load_providers(tmp_path, full).providers
    assert isinstance(p, TwilioProviderConfig)
    assert p.kind == "twilio"
    assert p.name == "tw"
    assert p.url == "http://127.0.0.1:8080/simulator/twilio"  # no trailing slash
    assert p.account_sid == SID
    assert isinstance(p.auth_token, SecretStr)
    assert p.auth_token.get_secret_value() == TOKEN
    assert p.from_ == "+15005550006"
    assert p.messaging_service_sid is None
    assert (p.weight, p.timeout, p.rate, p.max_in_flight) == (7, 2.5, 10.0, 4)


def test_twilio_defaults_and_messaging_service(tmp_path: Path) -> None:
    entry = {**without(TWILIO, "from"), "messaging_service_sid": MG}
    (p,) = load_providers(tmp_path, entry).providers
    assert isinstance(p, TwilioProviderConfig)
    assert p.url == "https://api.twilio.com", "url defaults to the public API"
    assert p.from_ is None
    assert p.messaging_service_sid == MG
    assert (p.weight, p.timeout, p.rate, p.max_in_flight) == (1, 5.0, 0.0, 0)


def test_smpp_keys(tmp_path: Path) -> None:
    full = {
        **SMPP,
        "port": 2776,
        "system_type": "VMA",
        "source_addr_ton": 5,
        "source_addr_npi": 0,
        "binds": 2,
        "window": 20,
        "enquire_link": 15,
        "tls": True,
        "long_messages": "payload",
        "weight": 3,
        "timeout": 4.0,
        "rate": 5,
        "max_in_flight": 8,
    }
    (p,) = load_providers(tmp_path, full).providers
    assert isinstance(p, SmppProviderConfig)
    assert p.kind == "smpp"
    assert (p.host, p.port, p.system_id, p.system_type) == (
        "smsc.example.net",
        2776,
        "dispatchd",
        "VMA",
    )
    assert isinstance(p.password, SecretStr)
    assert p.password.get_secret_value() == PASSWORD
    assert (p.source_addr, p.source_addr_ton, p.source_addr_npi) == ("DISPATCHD", 5, 0)
    assert (p.binds, p.window, p.enquire_link, p.tls) == (2, 20, 15.0, True)
    assert p.long_messages == "payload"
    assert (p.weight, p.timeout, p.rate, p.max_in_flight) == (3, 4.0, 5.0, 8)


def test_smpp_defaults(tmp_path: Path) -> None:
    (p,) = load_providers(tmp_path, SMPP).providers
    assert isinstance(p, SmppProviderConfig)
    assert p.port == 2775
    assert p.system_type == ""
    assert (p.source_addr_ton, p.source_addr_npi) == (0, 0)
    assert (p.binds, p.window, p.enquire_link, p.tls) == (1, 10, 30.0, False)
    assert p.long_messages == "udh"


def test_no_kind_means_dispatchd(tmp_path: Path) -> None:
    explicit = {**DISPATCHD, "name": "explicit", "kind": "dispatchd"}
    implicit, named = load_providers(tmp_path, DISPATCHD, explicit).providers
    for p in (implicit, named):
        assert isinstance(p, DispatchdProviderConfig)
        assert p.kind == "dispatchd"
        assert p.url == "http://127.0.0.1:9000/p"


def test_kinds_mix_in_one_list(tmp_path: Path) -> None:
    cfg = load_providers(tmp_path, DISPATCHD, TWILIO, SMPP)
    assert [(p.name, p.kind) for p in cfg.providers] == [
        ("plain", "dispatchd"),
        ("tw", "twilio"),
        ("smsc", "smpp"),
    ]


# -- errors name the exact key --------------------------------------------------------------

# (the second provider's entry, the key its error names)
BAD_KEYS = {
    # missing required keys
    "twilio without account_sid": (without(TWILIO, "account_sid"), "account_sid"),
    "twilio without auth_token": (without(TWILIO, "auth_token"), "auth_token"),
    "smpp without host": (without(SMPP, "host"), "host"),
    "smpp without system_id": (without(SMPP, "system_id"), "system_id"),
    "smpp without password": (without(SMPP, "password"), "password"),
    "smpp without source_addr": (without(SMPP, "source_addr"), "source_addr"),
    "dispatchd without url": ({"name": "p2"}, "url"),
    "without name": (without(TWILIO, "name"), "name"),
    # unknown keys, including another kind's
    "twilio unknown key": ({**TWILIO, "region": "us1"}, "region"),
    "twilio with smpp's password": ({**TWILIO, "password": PASSWORD}, "password"),
    "smpp unknown key": ({**SMPP, "url": "http://127.0.0.1:1/x"}, "url"),
    "smpp with twilio's auth_token_file": ({**SMPP, "auth_token_file": "/x"}, "auth_token_file"),
    "dispatchd with twilio's auth_token": ({**DISPATCHD, "auth_token": TOKEN}, "auth_token"),
    "twilio typo of from": ({**without(TWILIO, "from"), "from_number": "+1"}, "from_number"),
    # bad values
    "bad account_sid": ({**TWILIO, "account_sid": "AC123"}, "account_sid"),
    "account_sid of an MG": ({**TWILIO, "account_sid": MG}, "account_sid"),
    "bad messaging_service_sid": (
        {**without(TWILIO, "from"), "messaging_service_sid": SID},
        "messaging_service_sid",
    ),
    "empty from": ({**TWILIO, "from": ""}, "from"),
    "twilio bad url": ({**TWILIO, "url": "ftp://api.twilio.com"}, "url"),
    "auth_token not a string": ({**TWILIO, "auth_token": 12345}, "auth_token"),
    "9-char smpp password": ({**SMPP, "password": NINE}, "password"),
    "smpp port 0": ({**SMPP, "port": 0}, "port"),
    "smpp port too big": ({**SMPP, "port": 65536}, "port"),
    "smpp port not a number": ({**SMPP, "port": "smpp"}, "port"),
    "unknown long_messages": ({**SMPP, "long_messages": "sar"}, "long_messages"),
    "smpp bad ton": ({**SMPP, "source_addr_ton": 7}, "source_addr_ton"),
    "smpp no binds": ({**SMPP, "binds": 0}, "binds"),
    "smpp no window": ({**SMPP, "window": 0}, "window"),
    "smpp long system_id": ({**SMPP, "system_id": "x" * 16}, "system_id"),
    "smpp long system_type": ({**SMPP, "system_type": "x" * 13}, "system_type"),
    "smpp enquire_link 0": ({**SMPP, "enquire_link": 0}, "enquire_link"),
    "negative rate": ({**SMPP, "rate": -1}, "rate"),
    "negative max_in_flight": ({**TWILIO, "max_in_flight": -1}, "max_in_flight"),
    "bad name": ({**TWILIO, "name": "has space"}, "name"),
    # unknown kinds
    "unknown kind": ({**SMPP, "kind": "smtp"}, "kind"),
    "kind in capitals": ({**TWILIO, "kind": "Twilio"}, "kind"),
}


@pytest.mark.parametrize(("entry", "key"), BAD_KEYS.values(), ids=BAD_KEYS.keys())
def test_bad_key_is_named_exactly(tmp_path: Path, entry: dict[str, Any], key: str) -> None:
    message = error_of(tmp_path, DISPATCHD, entry).message
    assert f"providers[1].{key}: " in message, message
    assert "providers[0]" not in message, message
    assert_no_secret(message)


def test_unknown_key_and_kind_say_what_is_wrong(tmp_path: Path) -> None:
    unknown_key = error_of(tmp_path, {**TWILIO, "region": "us1"}).message
    assert "providers[0].region: unknown key" in unknown_key
    unknown_kind = error_of(tmp_path, {**SMPP, "kind": "smtp"}).message
    assert "providers[0].kind: unknown provider kind 'smtp'" in unknown_kind
    for kind in ("dispatchd", "twilio", "smpp"):
        assert kind in unknown_kind, "the kinds there are are listed"


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param({**TWILIO, "messaging_service_sid": MG}, id="both"),
        pytest.param(without(TWILIO, "from"), id="neither"),
    ],
)
def test_exactly_one_of_from_and_messaging_service_sid(
    tmp_path: Path, entry: dict[str, Any]
) -> None:
    message = error_of(tmp_path, DISPATCHD, entry).message
    assert "providers[1]" in message, message
    assert "from" in message and "messaging_service_sid" in message, message
    assert_no_secret(message)


def test_every_bad_key_is_named_at_once(tmp_path: Path) -> None:
    message = error_of(
        tmp_path, {**TWILIO, "account_sid": "AC1"}, {**SMPP, "password": NINE, "port": 0}
    ).message
    for key in ("providers[0].account_sid", "providers[1].password", "providers[1].port"):
        assert key in message, message
    assert_no_secret(message)


def test_a_non_table_entry_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, "providers = 5\n"))
    assert "providers" in info.value.message


@pytest.mark.parametrize("text", ['providers = ["twilio"]\n', "providers = [1]\n"])
def test_a_provider_that_is_not_a_table_is_a_config_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, text))
    assert "providers[0]" in info.value.message


# -- secrets from files ---------------------------------------------------------------------


def test_auth_token_file_is_read_and_stripped(tmp_path: Path) -> None:
    secret = tmp_path / "twilio-token"
    secret.write_text(f"  {TOKEN}\n\n")
    entry = {**without(TWILIO, "auth_token"), "auth_token_file": str(secret)}
    (p,) = load_providers(tmp_path, entry).providers
    assert isinstance(p, TwilioProviderConfig)
    assert p.auth_token.get_secret_value() == TOKEN


def test_password_file_is_read_and_stripped(tmp_path: Path) -> None:
    secret = tmp_path / "smpp-password"
    secret.write_text(f"{PASSWORD}\r\n")
    entry = {**without(SMPP, "password"), "password_file": str(secret)}
    (p,) = load_providers(tmp_path, entry).providers
    assert isinstance(p, SmppProviderConfig)
    assert p.password.get_secret_value() == PASSWORD


def test_a_password_file_is_checked_like_the_password(tmp_path: Path) -> None:
    secret = tmp_path / "smpp-password"
    secret.write_text(f"{NINE}\n")
    entry = {**without(SMPP, "password"), "password_file": str(secret)}
    message = error_of(tmp_path, DISPATCHD, entry).message
    assert "providers[1].password" in message, message
    assert_no_secret(message)


@pytest.mark.parametrize(
    ("entry", "key"),
    [
        pytest.param(TWILIO, "auth_token", id="twilio"),
        pytest.param(SMPP, "password", id="smpp"),
    ],
)
def test_key_and_key_file_both_set_is_an_error(
    tmp_path: Path, entry: dict[str, Any], key: str
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("other\n")
    message = error_of(tmp_path, DISPATCHD, {**entry, f"{key}_file": str(secret)}).message
    assert "providers[1]" in message, message
    assert f"{key}_file" in message, message
    assert f"{key} and {key}_file" in message, message
    assert_no_secret(message)


@pytest.mark.parametrize("what", ["missing", "directory", "unreadable"])
def test_unreadable_auth_token_file_is_named(tmp_path: Path, what: str) -> None:
    path = tmp_path / "token"
    if what == "directory":
        path.mkdir()
    elif what == "unreadable":
        path.write_text(TOKEN)
        path.chmod(0)
        if os.access(path, os.R_OK):  # root reads anything
            pytest.skip("running as a user who can read a mode-0 file")
    entry = {**without(TWILIO, "auth_token"), "auth_token_file": str(path)}
    message = error_of(tmp_path, DISPATCHD, entry).message
    assert "providers[1]" in message, message
    assert "auth_token_file" in message, message
    assert str(path) in message, message
    assert_no_secret(message)


def test_missing_password_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "absent"
    entry = {**without(SMPP, "password"), "password_file": str(path)}
    message = error_of(tmp_path, DISPATCHD, entry).message
    assert "providers[1]" in message and "password_file" in message, message


def test_a_secret_file_that_is_not_text_is_named(tmp_path: Path) -> None:
    path = tmp_path / "token.bin"
    path.write_bytes(b"\xff\xfe\x00binary")
    entry = {**without(TWILIO, "auth_token"), "auth_token_file": str(path)}
    message = error_of(tmp_path, DISPATCHD, entry).message
    assert "auth_token_file" in message, message


@pytest.mark.parametrize("how", ["value", "file"])
def test_an_empty_auth_token_is_refused(tmp_path: Path, how: str) -> None:
    entry = without(TWILIO, "auth_token")
    if how == "value":
        entry["auth_token"] = ""
    else:
        (tmp_path / "token").write_text("\n")
        entry["auth_token_file"] = str(tmp_path / "token")
    message = error_of(tmp_path, DISPATCHD, entry).message
    assert "providers[1].auth_token" in message, message


# -- secrets from the environment -----------------------------------------------------------


def test_providers_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, toml([DISPATCHD]))
    monkeypatch.setenv("DISPATCHD_PROVIDERS", json.dumps([TWILIO, SMPP]))
    cfg = load(path)
    twilio, smpp = cfg.providers
    assert isinstance(twilio, TwilioProviderConfig)
    assert isinstance(smpp, SmppProviderConfig)
    assert twilio.auth_token.get_secret_value() == TOKEN
    assert twilio.from_ == "+15005550006"
    assert smpp.password.get_secret_value() == PASSWORD
    assert [p.name for p in cfg.providers] == ["tw", "smsc"], "the whole list is replaced"


def test_environment_providers_may_name_secret_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    entry = {**without(SMPP, "password"), "password_file": str(tmp_path / "pw")}
    monkeypatch.setenv("DISPATCHD_PROVIDERS", json.dumps([entry]))
    (p,) = load(None).providers
    assert isinstance(p, SmppProviderConfig)
    assert p.password.get_secret_value() == PASSWORD


def test_environment_provider_errors_name_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISPATCHD_PROVIDERS", json.dumps([TWILIO, {**SMPP, "password": NINE}]))
    with pytest.raises(ConfigError) as info:
        load(None)
    assert "providers[1].password" in info.value.message
    assert_no_secret(str(info.value))


@pytest.mark.parametrize(
    "value",
    [
        "twilio",
        f"[{{name = 'tw', auth_token = '{TOKEN}'}}]",  # TOML, not JSON
        f'[{{"name": "tw", "auth_token": "{TOKEN}"',  # cut short
    ],
)
def test_providers_in_the_environment_must_be_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("DISPATCHD_PROVIDERS", value)
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, toml([DISPATCHD])))
    message = info.value.message
    assert "environment" in message and "providers" in message, message
    assert "JSON" in message, message
    assert_no_secret(str(info.value))


# -- secrets never show ---------------------------------------------------------------------


def test_repr_of_the_config_hides_secrets(tmp_path: Path) -> None:
    cfg = load_providers(tmp_path, TWILIO, SMPP)
    for text in (
        repr(cfg),
        str(cfg),
        repr(cfg.providers),
        str(cfg.providers[0]),
        cfg.model_dump_json(),
        json.dumps(cfg.model_dump(mode="json")),
    ):
        assert_no_secret(text)
    assert "**********" in repr(cfg.providers[0])


SECRET_ERRORS = {
    "9-char password": [{**SMPP, "password": NINE}],
    "twilio neither sender": [without(TWILIO, "from")],
    "twilio both senders": [{**TWILIO, "messaging_service_sid": MG}],
    "bad account_sid": [{**TWILIO, "account_sid": "AC1"}],
    "unknown key beside the secret": [{**SMPP, "colour": "red"}],
    "unknown kind": [{**TWILIO, "kind": "twillio"}],
}


@pytest.mark.parametrize("providers", SECRET_ERRORS.values(), ids=SECRET_ERRORS.keys())
def test_config_errors_hide_secrets(tmp_path: Path, providers: list[dict[str, Any]]) -> None:
    exc = error_of(tmp_path, *providers)
    assert_no_secret(str(exc))
    assert_no_secret(repr(exc))


@pytest.mark.parametrize(
    "providers",
    [
        pytest.param(SECRET_ERRORS["9-char password"], id="9-char password"),
        pytest.param(SECRET_ERRORS["twilio neither sender"], id="twilio neither sender"),
    ],
)
def test_the_validation_error_behind_a_config_error_hides_secrets(
    tmp_path: Path, providers: list[dict[str, Any]]
) -> None:
    exc = error_of(tmp_path, *providers)
    cause = exc.__cause__
    assert cause is not None
    assert_no_secret(str(cause))


# -- the shipped files ----------------------------------------------------------------------


def test_examples_providers_toml_loads() -> None:
    cfg = load(REPO_ROOT / "examples" / "providers.toml", must_exist=True)
    twilio, smpp, *backups = cfg.providers
    assert [p.kind for p in backups] == ["vonage", "telnyx", "sinch", "infobip", "plivo"]
    # The part-2 kinds are failover-only backups against the simulator's own dialects.
    for backup in backups:
        assert backup.weight == 0
        assert getattr(backup, "url", "") == f"{cfg.server.public_url}/simulator/{backup.kind}"
    assert isinstance(twilio, TwilioProviderConfig)
    assert isinstance(smpp, SmppProviderConfig)
    assert twilio.auth_token.get_secret_value()
    assert (twilio.from_ is None) != (twilio.messaging_service_sid is None)
    # It runs against the in-daemon simulator: nothing leaves the machine.
    assert cfg.simulator.enabled
    assert twilio.url == f"{cfg.server.public_url}/simulator/twilio"
    assert smpp.host == "127.0.0.1"
    assert smpp.port == cfg.simulator.smpp_port
    assert smpp.password.get_secret_value()
    assert_no_secret(repr(cfg))
    assert twilio.auth_token.get_secret_value() not in repr(cfg)
    assert smpp.password.get_secret_value() not in repr(cfg)


def test_repository_dispatchd_toml_still_loads_unchanged() -> None:
    path = REPO_ROOT / "dispatchd.toml"
    assert "kind" not in path.read_text(), "the shipped file predates kinds"
    cfg = load(path, must_exist=True)
    assert [(p.kind, p.name, p.weight, p.timeout) for p in cfg.providers] == [
        ("dispatchd", "provider1", 30, 5.0),
        ("dispatchd", "provider2", 70, 5.0),
    ]
    for p in cfg.providers:
        assert isinstance(p, DispatchdProviderConfig)
        assert p.url == f"http://127.0.0.1:8080/simulator/{p.name}"
