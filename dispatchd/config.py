"""Typed configuration: `dispatchd.toml` overlaid with `DISPATCHD_<SECTION>__<KEY>` env vars."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from dispatchd.domain.addresses import private_literal
from dispatchd.domain.breaker import BreakerSettings
from dispatchd.domain.errors import ConfigError
from dispatchd.domain.numbers import valid_region

DEFAULT_CONFIG_PATH = Path("dispatchd.toml")


def _provider_kind(value: Any) -> str:
    """The `kind` of a `[[providers]]` entry: `dispatchd` when it names none."""
    kind = (
        value.get("kind", "dispatchd")
        if isinstance(value, dict)
        else getattr(value, "kind", "dispatchd")
    )
    return str(kind)


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"must be an http(s) URL with a host, got {value!r}")
    return value.rstrip("/")


class _Section(BaseModel):
    # Unknown keys are typos far more often than intent, so they fail loudly. Inputs stay out
    # of the errors: a rejected value may be a secret.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    """Address the HTTP API listens on."""
    port: int = Field(8080, ge=0, le=65535)
    """TCP port of the HTTP API (0 picks a free one)."""
    public_url: str = "http://127.0.0.1:8080"
    """Base URL providers call back on; delivery reports go to `{public_url}/messages/...`."""
    shutdown_grace: float = Field(10.0, ge=0, le=3600)
    """Seconds in-flight provider calls may take to finish after SIGTERM/SIGINT."""

    _check_url = field_validator("public_url")(_http_url)


class StorageConfig(_Section):
    path: Path = Path("var/dispatchd.db")
    """SQLite database file; its parent directory is created if missing."""
    retention: float = Field(2_592_000, ge=0)
    """Seconds a final message (with its attempts, history and status callbacks) is kept
    after it ended; 0 keeps everything. Suppressions are kept; idempotency keys have their
    own TTL (`[api] idempotency_ttl`)."""


class DeliveryConfig(_Section):
    concurrency: int = Field(64, ge=1, le=10_000)
    """Provider requests in flight at most."""
    max_attempts: int = Field(5, ge=1, le=100)
    """Attempts per message; each attempt tries every provider once."""
    backoff_initial: float = Field(1.0, ge=0)
    """Seconds before the 2nd attempt; doubles per attempt, jittered."""
    backoff_max: float = Field(300.0, ge=0)
    """Upper bound of the delay between attempts, in seconds."""
    max_age: float = Field(3600, gt=0)
    """Seconds after acceptance at which a message no provider accepted expires."""
    max_segments: int = Field(10, ge=1, le=255)
    """Longest message accepted, in SMS segments."""
    default_region: str = "US"
    """ISO 3166 region assumed for numbers written without a country code."""
    lease: float = Field(60.0, gt=0)
    """Seconds a claimed message stays reserved for this process before others may retry it."""
    report_timeout: float = Field(259_200, ge=0)
    """Seconds a `sent` message waits for its delivery report before it ends `unknown` (the
    provider took it; nobody knows whether it arrived); 0 waits forever."""
    ordering: Literal["unordered", "per_recipient"] = "unordered"
    """`per_recipient`: messages to one number go to providers in acceptance order, each
    waiting until the previous one is sent or final; `unordered` is faster."""
    smart_encoding: bool = False
    """Replace typographic quotes, dashes, ellipses and non-breaking spaces with GSM-7
    equivalents, so such text stays GSM-7 (messages can override it)."""

    @field_validator("default_region")
    @classmethod
    def _known_region(cls, value: str) -> str:
        region = value.upper()
        if not valid_region(region):
            raise ValueError(f"{value!r} is not a region code phonenumbers knows (e.g. 'US', 'GB')")
        return region


class _Provider(_Section):
    """What every provider kind has: a name, its share of traffic, and its limits."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    """Short name used in logs, attempts, metrics and the message resource."""
    weight: int = Field(1, ge=0, le=1_000_000)
    """Share of first attempts; 0 makes the provider a failover-only backup."""
    timeout: float = Field(5.0, gt=0, le=300)
    """Seconds to wait for the provider's answer before failing over."""
    rate: float = Field(0.0, ge=0, le=100_000)
    """Segments per second at most, over any sliding second (0: unlimited). Providers
    publish their limits per sender: a US long code 1/s, toll-free 3/s, short codes 100/s."""
    max_in_flight: int = Field(0, ge=0, le=100_000)
    """Requests to this provider in flight at most (0: only `[delivery] concurrency`)."""

    # Secrets may come from the file, from `<key>_file` (a path, read at start) or from the
    # environment (`DISPATCHD_PROVIDERS` as JSON); they never reach a log or the console.
    _secrets: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="before")
    @classmethod
    def _read_secret_files(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for key in cls._secrets:
            path = out.pop(f"{key}_file", None)
            if path is None:
                continue
            if key in out:
                raise ValueError(f"{key} and {key}_file are both set; keep one")
            try:
                out[key] = Path(str(path)).read_text().strip()
            except OSError as exc:
                raise ValueError(f"{key}_file: cannot read {path}: {exc.strerror}") from exc
            except UnicodeDecodeError as exc:
                raise ValueError(f"{key}_file: {path} is not UTF-8 text") from exc
        return out


class DispatchdProviderConfig(_Provider):
    """The take-home assignment's wire format, which the simulator speaks."""

    kind: Literal["dispatchd"] = "dispatchd"
    url: str
    """Endpoint that takes `POST {to_number, message, callback_url}`."""

    _check_url = field_validator("url")(_http_url)


class TwilioProviderConfig(_Provider):
    """Twilio's Programmable Messaging REST API."""

    kind: Literal["twilio"]
    url: str = "https://api.twilio.com"
    """The API base; point it at the simulator (`{public_url}/simulator/twilio`) to test."""
    account_sid: str = Field(pattern=r"^AC[0-9a-fA-F]{32}$")
    """The account (AC...) the messages are sent from."""
    auth_token: SecretStr = Field(min_length=1)
    """The account's Auth Token: HTTP Basic password, and the key of X-Twilio-Signature."""
    from_: str | None = Field(None, alias="from", min_length=1)
    """The sender: a number in E.164, a short code or an alphanumeric sender ID."""
    messaging_service_sid: str | None = Field(None, pattern=r"^MG[0-9a-fA-F]{32}$")
    """A Messaging Service (MG...) to send through instead of one `from`."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, hide_input_in_errors=True
    )
    _secrets: ClassVar[tuple[str, ...]] = ("auth_token",)
    _check_url = field_validator("url")(_http_url)

    @model_validator(mode="after")
    def _one_sender(self) -> TwilioProviderConfig:
        if (self.from_ is None) == (self.messaging_service_sid is None):
            raise ValueError("set exactly one of from and messaging_service_sid")
        return self


class SmppProviderConfig(_Provider):
    """An SMSC spoken to over SMPP 3.4 sessions."""

    kind: Literal["smpp"]
    host: str = Field(min_length=1)
    port: int = Field(2775, ge=1, le=65535)
    system_id: str = Field(min_length=1, max_length=15)
    password: SecretStr = Field(min_length=1)
    system_type: str = Field("", max_length=12)
    source_addr: str = Field(min_length=1, max_length=20)
    """The sender address the SMSC shows (a number, short code or alphanumeric ID)."""
    source_addr_ton: int = Field(0, ge=0, le=6)
    source_addr_npi: int = Field(0, ge=0, le=18)
    binds: int = Field(1, ge=1, le=64)
    """Transceiver sessions kept bound."""
    window: int = Field(10, ge=1, le=1000)
    """Submits written and unanswered per bind, at most."""
    enquire_link: float = Field(30.0, gt=0, le=3600)
    """Seconds of idle link between enquire_link keep-alives."""
    tls: bool = False
    """Wrap the sessions in TLS (the SMSC's certificate is checked against the system CAs)."""
    long_messages: Literal["udh", "payload"] = "udh"
    """`udh`: one submit_sm per segment with a concatenation header; `payload`: one
    submit_sm with the whole text in the message_payload parameter."""

    _secrets: ClassVar[tuple[str, ...]] = ("password",)

    @field_validator("password")
    @classmethod
    def _short_password(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) > 8:
            raise ValueError("SMPP 3.4 passwords are at most 8 characters")
        return value


class VonageProviderConfig(_Provider):
    """Vonage's Messages API v1 (SMS channel)."""

    kind: Literal["vonage"]
    url: str = "https://api.nexmo.com"
    """The API base (regional: https://api-eu.vonage.com, https://api-ap.vonage.com)."""
    application_id: str | None = None
    """The Vonage application whose private key signs the request JWTs (RS256)."""
    private_key: SecretStr | None = None
    """The application's private key, PEM; usually given as `private_key_file`."""
    api_key: str | None = None
    """With `api_secret`: HTTP Basic instead of an application JWT."""
    api_secret: SecretStr | None = None
    from_: str = Field(alias="from", min_length=1)
    """The sender: a number or an alphanumeric sender ID."""
    signature_secret: SecretStr = Field(min_length=1)
    """The account's signature secret: the key of the HS256 JWTs on status webhooks."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, hide_input_in_errors=True
    )
    _secrets: ClassVar[tuple[str, ...]] = ("private_key", "api_secret", "signature_secret")
    _check_url = field_validator("url")(_http_url)

    @model_validator(mode="after")
    def _one_auth(self) -> VonageProviderConfig:
        app = self.application_id is not None or self.private_key is not None
        basic = self.api_key is not None or self.api_secret is not None
        if app == basic:
            raise ValueError("set application_id with private_key_file, or api_key with api_secret")
        if app and (self.application_id is None or self.private_key is None):
            raise ValueError("application_id and private_key_file go together")
        if basic and (self.api_key is None or self.api_secret is None):
            raise ValueError("api_key and api_secret go together")
        return self


class TelnyxProviderConfig(_Provider):
    """Telnyx's Messaging API v2."""

    kind: Literal["telnyx"]
    url: str = "https://api.telnyx.com"
    api_key: SecretStr = Field(min_length=1)
    """The API key (Authorization: Bearer)."""
    from_: str | None = Field(None, alias="from", min_length=1)
    """The sender number, or use `messaging_profile_id`."""
    messaging_profile_id: str | None = Field(None, min_length=1)
    public_key: str = Field(min_length=1)
    """The account's Ed25519 public key (base64) that verifies webhook signatures."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, hide_input_in_errors=True
    )
    _secrets: ClassVar[tuple[str, ...]] = ("api_key",)
    _check_url = field_validator("url")(_http_url)

    @model_validator(mode="after")
    def _one_sender(self) -> TelnyxProviderConfig:
        if self.from_ is None and self.messaging_profile_id is None:
            raise ValueError("set from or messaging_profile_id")
        return self


class SinchProviderConfig(_Provider):
    """Sinch's SMS REST API (XMS batches)."""

    kind: Literal["sinch"]
    service_plan_id: str = Field(min_length=1)
    api_token: SecretStr = Field(min_length=1)
    """The service plan's API token (Authorization: Bearer)."""
    from_: str = Field(alias="from", min_length=1)
    region: Literal["us", "eu", "au", "br", "ca"] = "us"
    """Picks the API base https://{region}.sms.api.sinch.com unless `url` is set."""
    url: str | None = None

    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, hide_input_in_errors=True
    )
    _secrets: ClassVar[tuple[str, ...]] = ("api_token",)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        return None if value is None else _http_url(value)


class InfobipProviderConfig(_Provider):
    """Infobip's SMS API v3."""

    kind: Literal["infobip"]
    url: str
    """The account's own API base URL (https://xxxxx.api.infobip.com)."""
    api_key: SecretStr = Field(min_length=1)
    """Sent as `Authorization: App <key>`."""
    from_: str = Field(alias="from", min_length=1)

    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, hide_input_in_errors=True
    )
    _secrets: ClassVar[tuple[str, ...]] = ("api_key",)
    _check_url = field_validator("url")(_http_url)


class PlivoProviderConfig(_Provider):
    """Plivo's Message API."""

    kind: Literal["plivo"]
    url: str = "https://api.plivo.com"
    auth_id: str = Field(min_length=1)
    auth_token: SecretStr = Field(min_length=1)
    """HTTP Basic password, and the key of X-Plivo-Signature-V2."""
    from_: str = Field(alias="from", min_length=1)

    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, hide_input_in_errors=True
    )
    _secrets: ClassVar[tuple[str, ...]] = ("auth_token",)
    _check_url = field_validator("url")(_http_url)


ProviderConfig = Annotated[
    Annotated[DispatchdProviderConfig, Tag("dispatchd")]
    | Annotated[TwilioProviderConfig, Tag("twilio")]
    | Annotated[SmppProviderConfig, Tag("smpp")]
    | Annotated[VonageProviderConfig, Tag("vonage")]
    | Annotated[TelnyxProviderConfig, Tag("telnyx")]
    | Annotated[SinchProviderConfig, Tag("sinch")]
    | Annotated[InfobipProviderConfig, Tag("infobip")]
    | Annotated[PlivoProviderConfig, Tag("plivo")],
    Discriminator(_provider_kind),
]
"""One `[[providers]]` entry; `kind` picks its keys and defaults to `dispatchd`."""


class SimulatorConfig(_Section):
    enabled: bool = False
    """Mount simulated providers at `/simulator/{name}` on the daemon's own server."""
    failure_rate: float = Field(0.05, ge=0, le=1)
    """Share of requests answered with `500 {"error": "Something went wrong"}`."""
    latency: float = Field(0.02, ge=0, le=60)
    """Seconds before the simulated provider answers."""
    callback_delay: float = Field(0.5, ge=0, le=3600)
    """Seconds between the provider's 200 and its delivery report."""
    delivered: float = Field(0.97, ge=0)
    """Relative weight of `delivered` reports."""
    failed: float = Field(0.03, ge=0)
    """Relative weight of `failed` reports."""
    invalid: float = Field(0.0, ge=0)
    """Relative weight of `invalid` reports (numbers ending in 0000 are always invalid)."""
    invalid_suffix: str = Field("0000", pattern=r"^[0-9]*$")
    """Numbers ending in these digits are always reported `invalid`; empty disables the rule."""
    # Fault injection. Every key below is also settable per provider at run time through
    # `PUT /_faults/{name}` on the simulator (see dispatchd/devtools/simulator.py).
    hang_rate: float = Field(0.0, ge=0, le=1)
    """Share of requests never answered: the connection stays open until the client gives up."""
    malformed_rate: float = Field(0.0, ge=0, le=1)
    """Share of accepted requests answered `200` with unparseable JSON; the report still follows."""
    down: bool = False
    """The provider is down: every request is answered `503` at once, until this is unset."""
    down_after: float = Field(0.0, ge=0)
    """Seconds from the simulator's start (or the `/_faults` change) to a down window."""
    down_for: float = Field(0.0, ge=0)
    """Length in seconds of that down window (answered like `down`); 0 means no window."""
    flap_period: float = Field(0.0, ge=0)
    """Above 0: the provider is up for the first half of every such period, down the second."""
    duplicate_callback_rate: float = Field(0.0, ge=0, le=1)
    """Share of messages whose delivery report is sent twice."""
    out_of_order_rate: float = Field(0.0, ge=0, le=1)
    """Share of messages that get a contrary report just before the real one (`failed` then
    `delivered`, or `delivered` then `failed`)."""
    early_callback_rate: float = Field(0.0, ge=0, le=1)
    """Share of messages whose delivery report is sent, and answered, before the provider's 200."""
    throttle_rate: float = Field(0.0, ge=0, le=1)
    """Share of requests answered with the provider's throttle signal (HTTP 429, Twilio
    20429, SMPP ESME_RTHROTTLED)."""
    smpp_port: int | None = Field(None, ge=0, le=65535)
    """Run the simulated SMSC for `smpp` providers on this port (0 picks a free one); its
    accounts are the `smpp` providers' system_id and password."""
    callback_retry_for: float = Field(0.0, ge=0, le=3600)
    """Seconds to keep retrying a report the receiver did not take (no connection or 5xx),
    backing off up to 1 s between tries; 0 tries once, like the simplest real provider."""

    @model_validator(mode="after")
    def _some_status(self) -> SimulatorConfig:
        if self.delivered + self.failed + self.invalid <= 0:
            raise ValueError("at least one of delivered, failed, invalid must be above 0")
        return self


class BreakerConfig(_Section):
    """Per-provider circuit breaker and traffic shifting (see dispatchd/domain/breaker.py)."""

    failure_threshold: int = Field(5, ge=1, le=10_000)
    """Transport failures in a row (5xx, 408, timeout, connection error) that open the
    circuit; a 4xx rejection is not the provider's fault and does not count, nor does a
    throttle answer (429), which only slows the provider down."""
    error_rate: float = Field(0.5, gt=0, le=1)
    """Share of failed calls in the window that opens the circuit, once `min_calls` were made;
    a fifth of it already shifts traffic away."""
    min_calls: int = Field(20, ge=1, le=1_000_000)
    """Calls in the window before `error_rate` is judged."""
    window: float = Field(30.0, gt=0, le=3600)
    """Seconds of recent calls the error rate and latency are judged over."""
    cooldown: float = Field(30.0, gt=0, le=3600)
    """Seconds an open circuit sends nothing before letting probes through (half-open)."""
    probes: int = Field(3, ge=1, le=1000)
    """Probe calls, one at a time, that must succeed to close a half-open circuit; one
    failure opens it again for another cooldown."""
    slow_ms: float = Field(2000.0, gt=0)
    """Milliseconds at or above which a 95th-percentile answer time counts as slow."""
    shift_step: float = Field(0.1, gt=0, le=1)
    """Share of its weight an erroring or slow provider loses (or a recovered one regains)
    per `shift_interval`."""
    shift_interval: float = Field(5.0, gt=0, le=3600)
    """Seconds between weight-shift steps."""
    max_shift: float = Field(0.9, ge=0, lt=1)
    """Largest share of its weight a provider can lose by shifting (0 disables shifting)."""

    def settings(self) -> BreakerSettings:
        return BreakerSettings(**self.model_dump())


class ApiConfig(_Section):
    """Client authentication and request deduplication."""

    keys: list[str] = []
    """API keys accepted as `Authorization: Bearer <key>`, each as the key itself or as
    `sha256:<hex digest of the key>`; from the environment as a JSON list
    (`DISPATCHD_API__KEYS='["k1","k2"]'`). Empty: no authentication, allowed only when the
    server listens on a loopback address."""
    keys_file: Path | None = None
    """A file of further keys, one per line (same forms as `keys`; `#` starts a comment);
    read at start, and a file that cannot be read stops the start (exit 78)."""
    idempotency_ttl: float = Field(86_400, gt=0, le=30 * 86_400)
    """Seconds an `Idempotency-Key` and its saved response are kept."""
    metrics_auth: bool = False
    """Require an API key on `/metrics` too (open by default, for scrapers on a private net)."""


class WebhooksConfig(_Section):
    """Status callbacks: dispatchd POSTs each status change to the client's URL."""

    secret: str = ""
    """Key of the `Dispatchd-Signature` HMAC-SHA256; status callbacks need one."""
    default_url: str | None = None
    """Status callback URL for messages that do not name one."""
    timeout: float = Field(5.0, gt=0, le=300)
    """Seconds to wait for the client's answer to a callback."""
    max_attempts: int = Field(10, ge=1, le=1000)
    """Tries per callback before it is given up (5xx, 408, 429, timeouts are retried)."""
    backoff_initial: float = Field(1.0, ge=0)
    """Seconds before the 2nd try; doubles per try, jittered."""
    backoff_max: float = Field(600.0, ge=0)
    """Upper bound of the delay between tries, in seconds."""
    concurrency: int = Field(16, ge=1, le=1000)
    """Callback requests in flight at most (apart from provider traffic)."""
    allow_private_addresses: bool = False
    """Send callbacks to loopback, RFC 1918, link-local and other non-public addresses too.
    Off, clients cannot use their callback URLs to probe the network dispatchd runs in;
    turn it on only when every client is trusted (or for a receiver on this machine)."""

    @field_validator("default_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        return None if value is None else _http_url(value)

    @model_validator(mode="after")
    def _signed(self) -> WebhooksConfig:
        # Unsigned callbacks could be forged by anyone who learns the URL, so none are sent.
        if self.default_url is not None and not self.secret:
            raise ValueError(
                "default_url is set but secret is empty; status callbacks are signed with "
                "secret, so set webhooks.secret too"
            )
        host = urlsplit(self.default_url or "").hostname
        if not self.allow_private_addresses and private_literal(host) is not None:
            raise ValueError(
                f"default_url points at the private address {host}, and callbacks are not "
                "sent to private addresses; set webhooks.allow_private_addresses = true"
            )
        return self


class ControlConfig(_Section):
    socket: Path | None = None
    """Unix socket of the operator console (mode 0600); default: the database path with
    `.sock` (so `var/dispatchd.sock`). Under systemd, a RuntimeDirectory path such as
    `/run/dispatchd/control.sock`."""


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    """Lowest level logged; `info` logs one line per message event."""
    format: Literal["text", "json"] = "text"
    """`text`: timestamp, level and stable key=value fields; `json`: one JSON object a line."""


def _default_providers() -> list[ProviderConfig]:
    base = "http://127.0.0.1:8080/simulator"
    return [
        DispatchdProviderConfig(name="provider1", url=f"{base}/provider1", weight=30),
        DispatchdProviderConfig(name="provider2", url=f"{base}/provider2", weight=70),
    ]


class Config(BaseSettings):
    """The whole daemon configuration."""

    model_config = SettingsConfigDict(
        env_prefix="DISPATCHD_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        hide_input_in_errors=True,
    )

    server: ServerConfig = ServerConfig()
    storage: StorageConfig = StorageConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    providers: list[ProviderConfig] = Field(default_factory=_default_providers, min_length=1)
    simulator: SimulatorConfig = SimulatorConfig()
    control: ControlConfig = ControlConfig()
    log: LogConfig = LogConfig()
    breaker: BreakerConfig = BreakerConfig()
    api: ApiConfig = ApiConfig()
    webhooks: WebhooksConfig = WebhooksConfig()

    def breaker_settings(self) -> BreakerSettings:
        """The `[breaker]` section as the breaker state machine takes it."""
        return self.breaker.settings()

    @property
    def control_socket(self) -> Path:
        """Where the control socket lives: `[control] socket`, else beside the database."""
        return self.control.socket or self.storage.path.with_suffix(".sock")

    @field_validator("providers")
    @classmethod
    def _usable_providers(cls, providers: list[ProviderConfig]) -> list[ProviderConfig]:
        # A field validator, not the model one, so the error names the `providers` key.
        names = [p.name for p in providers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"provider names must be unique; repeated: {', '.join(duplicates)}")
        if not any(p.weight > 0 for p in providers):
            raise ValueError("at least one provider needs a weight above 0")
        return providers

    @model_validator(mode="after")
    def _coherent(self) -> Config:
        longest = sum(p.timeout for p in self.providers)
        if self.delivery.lease <= longest:
            raise ValueError(
                f"delivery.lease ({self.delivery.lease:g}s) must exceed the sum of provider "
                f"timeouts ({longest:g}s), or a slow attempt could be sent twice"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's values arrive as init kwargs; the environment overrides them.
        return env_settings, init_settings


def config_path(explicit: str | None) -> Path:
    """Resolve the config file: the flag, then `$DISPATCHD_CONFIG`, then `./dispatchd.toml`."""
    if explicit:
        return Path(explicit)
    from_env = os.environ.get("DISPATCHD_CONFIG")
    return Path(from_env) if from_env else DEFAULT_CONFIG_PATH


PROVIDER_KINDS = ("dispatchd", "twilio", "smpp", "vonage", "telnyx", "sinch", "infobip", "plivo")


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    previous: int | str | None = None
    for part in loc:
        # A union member's tag (`providers[0].twilio.auth_token`) says nothing to the reader.
        skip = isinstance(previous, int) and part in PROVIDER_KINDS
        previous = part
        if skip:
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "(top level)"


def describe(exc: ValidationError) -> str:
    """Render validation errors as `key: problem` lines naming each offending key."""
    lines = []
    for err in exc.errors(include_url=False):
        where = _location(tuple(err["loc"]))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "union_tag_invalid":
            where += ".kind"
            tag = err.get("ctx", {}).get("tag")
            msg = f"unknown provider kind {tag!r}; the kinds are {', '.join(PROVIDER_KINDS)}"
        lines.append(f"{where}: {msg}")
    return "; ".join(lines)


def load(path: Path | None, *, must_exist: bool = False) -> Config:
    """Load and validate the config; raise ConfigError naming the bad key."""
    data: dict[str, Any] = {}
    if path is not None and path.exists():
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    elif path is not None and must_exist:
        raise ConfigError(f"{path}: config file not found")
    try:
        return Config(**data)
    except ValidationError as exc:
        raise ConfigError(f"{path or 'config'}: {describe(exc)}") from exc
    except SettingsError as exc:
        # A DISPATCHD_* variable holding a list or table that is not JSON.
        raise ConfigError(
            f"environment: {exc}; give lists as JSON, e.g. DISPATCHD_API__KEYS='[\"key\"]' "
            'or DISPATCHD_PROVIDERS=\'[{"name": "p1", "url": "..."}]\''
        ) from exc
