"""From a `[[providers]]` entry to the connector the worker calls and the kind that reads
its reports; the only module that knows every kind."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp

from dispatchd.config import (
    DispatchdProviderConfig,
    ProviderConfig,
    SmppProviderConfig,
    TwilioProviderConfig,
)
from dispatchd.providers.base import Connector, HttpKind, Report
from dispatchd.providers.dispatchd import DispatchdKind, DispatchdSettings
from dispatchd.providers.http import HttpConnector
from dispatchd.providers.smpp import SmppConnector, SmppSettings
from dispatchd.providers.twilio import Twilio, TwilioSettings


def http_kind(config: ProviderConfig) -> HttpKind | None:
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
    return None


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

        return SmppConnector(
            smpp_settings(config), on_report=receipt, clock=clock, name=config.name
        )
    kind = http_kind(config)
    assert kind is not None  # every other kind speaks HTTP
    return HttpConnector(kind, session, timeout=config.timeout, clock=clock)
