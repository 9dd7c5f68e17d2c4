"""From a `[[providers]]` entry to the connector the worker calls and the kind that reads
its reports; the only module that knows every kind."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import aiohttp
from pydantic import SecretStr

from dispatchd.config import (
    DispatchdProviderConfig,
    InfobipProviderConfig,
    PlivoProviderConfig,
    ProviderConfig,
    SinchProviderConfig,
    SmppProviderConfig,
    TelnyxProviderConfig,
    TwilioProviderConfig,
    VonageProviderConfig,
)
from dispatchd.domain.errors import ConfigError
from dispatchd.providers.base import Connector, HttpKind, Report
from dispatchd.providers.dispatchd import DispatchdKind, DispatchdSettings
from dispatchd.providers.http import HttpConnector
from dispatchd.providers.infobip import Infobip, InfobipSettings
from dispatchd.providers.plivo import Plivo, PlivoSettings
from dispatchd.providers.sinch import Sinch, SinchSettings
from dispatchd.providers.smpp import SmppConnector, SmppSettings
from dispatchd.providers.telnyx import Telnyx, TelnyxSettings
from dispatchd.providers.twilio import Twilio, TwilioSettings
from dispatchd.providers.vonage import Vonage, VonageSettings


def http_kind(config: ProviderConfig, clock: Callable[[], float]) -> HttpKind | None:
    """The pure half of an HTTP provider; None for a session kind (SMPP).

    ConfigError names the provider when a kind refuses its settings (a key that is not a
    valid PEM or base64 key, say), so `config check` and `serve` exit 78 on it.
    """
    try:
        return _http_kind(config, clock)
    except ValueError as exc:
        raise ConfigError(f"providers: {config.name}: {exc}") from exc


def check(config: ProviderConfig) -> None:
    """Build the provider's settings as the daemon will, without connecting anything."""
    if isinstance(config, SmppProviderConfig):
        _smpp(config)
    else:
        http_kind(config, time.time)


def _smpp(config: SmppProviderConfig) -> SmppSettings:
    try:
        return smpp_settings(config)
    except ValueError as exc:
        raise ConfigError(f"providers: {config.name}: {exc}") from exc


def _http_kind(config: ProviderConfig, clock: Callable[[], float]) -> HttpKind | None:
    """The pure half of an HTTP provider; None for a session kind (SMPP)."""
    if isinstance(config, DispatchdProviderConfig):
        return DispatchdKind(DispatchdSettings(url=config.url))
    if isinstance(config, TwilioProviderConfig):
        return Twilio(
            TwilioSettings(
                account_sid=config.account_sid,
                auth_token=config.auth_token.get_secret_value(),
                from_=config.from_,
                messaging_service_sid=config.messaging_service_sid,
                url=config.url,
            )
        )
    if isinstance(config, PlivoProviderConfig):
        return Plivo(
            PlivoSettings(
                auth_id=config.auth_id,
                auth_token=config.auth_token.get_secret_value(),
                from_=config.from_,
                url=config.url,
            )
        )
    if isinstance(config, VonageProviderConfig):
        return Vonage(
            VonageSettings(
                from_=config.from_,
                signature_secret=config.signature_secret.get_secret_value(),
                application_id=config.application_id,
                private_key=_secret(config.private_key),
                api_key=config.api_key,
                api_secret=_secret(config.api_secret),
                url=config.url,
            ),
            clock=clock,
        )
    if isinstance(config, TelnyxProviderConfig):
        return Telnyx(
            TelnyxSettings(
                api_key=config.api_key.get_secret_value(),
                public_key=config.public_key,
                from_=config.from_,
                messaging_profile_id=config.messaging_profile_id,
                url=config.url,
            )
        )
    if isinstance(config, InfobipProviderConfig):
        return Infobip(
            InfobipSettings(
                api_key=config.api_key.get_secret_value(), url=config.url, from_=config.from_
            )
        )
    if isinstance(config, SinchProviderConfig):
        settings = SinchSettings(
            service_plan_id=config.service_plan_id,
            api_token=config.api_token.get_secret_value(),
            from_=config.from_,
            region=config.region,
            url=config.url,
        )
        return Sinch(settings, clock=clock)
    return None


def _secret(value: SecretStr | None) -> str | None:
    return None if value is None else value.get_secret_value()


def smpp_settings(config: SmppProviderConfig) -> SmppSettings:
    return SmppSettings(
        host=config.host,
        port=config.port,
        system_id=config.system_id,
        password=config.password.get_secret_value(),
        system_type=config.system_type,
        source_addr=config.source_addr,
        source_addr_ton=config.source_addr_ton,
        source_addr_npi=config.source_addr_npi,
        binds=config.binds,
        window=config.window,
        enquire_link=config.enquire_link,
        tls=config.tls,
        timeout=config.timeout,
        long_messages=config.long_messages,
    )


def connector(
    config: ProviderConfig,
    session: aiohttp.ClientSession,
    *,
    clock: Callable[[], float],
    on_report: Callable[[str, Report], Awaitable[object]],
) -> Connector:
    """How the worker reaches the provider; SMPP receipts go to `on_report(name, report)`."""
    if isinstance(config, SmppProviderConfig):

        async def receipt(report: Report) -> None:
            await on_report(config.name, report)

        return SmppConnector(_smpp(config), on_report=receipt, clock=clock, name=config.name)
    kind = http_kind(config, clock)
    assert kind is not None  # every other kind speaks HTTP
    return HttpConnector(kind, session, timeout=config.timeout, clock=clock)
