"""The whole simulator: the wire format, every provider dialect, and the SMSC, with the
credentials of the configured providers, so they authenticate and sign as the real ones."""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web

from dispatchd.config import (
    InfobipProviderConfig,
    PlivoProviderConfig,
    ProviderConfig,
    SinchProviderConfig,
    SmppProviderConfig,
    TelnyxProviderConfig,
    TwilioProviderConfig,
    VonageProviderConfig,
)
from dispatchd.devtools.simulator import SimulatorState, make_simulator_app
from dispatchd.devtools.simulator_infobip import add_infobip_routes
from dispatchd.devtools.simulator_plivo import add_plivo_routes
from dispatchd.devtools.simulator_sinch import add_sinch_routes
from dispatchd.devtools.simulator_telnyx import DEV_PRIVATE_KEY, add_telnyx_routes
from dispatchd.devtools.simulator_twilio import add_twilio_routes
from dispatchd.devtools.simulator_vonage import VonageAccount, add_vonage_routes, public_key_pem
from dispatchd.devtools.smsc import Smsc


def simulator_app(state: SimulatorState, providers: Sequence[ProviderConfig]) -> web.Application:
    """Every HTTP dialect, mounted at `/simulator/` by the daemon (or served alone)."""
    app = make_simulator_app(state)
    accounts = {
        p.account_sid: p.auth_token.get_secret_value()
        for p in providers
        if isinstance(p, TwilioProviderConfig)
    }
    add_twilio_routes(app, state, accounts)
    plivo = {
        p.auth_id: p.auth_token.get_secret_value()
        for p in providers
        if isinstance(p, PlivoProviderConfig)
    }
    add_plivo_routes(app, state, plivo)
    sinch = {
        p.service_plan_id: p.api_token.get_secret_value()
        for p in providers
        if isinstance(p, SinchProviderConfig)
    }
    add_sinch_routes(app, state, sinch)
    infobip = {
        p.api_key.get_secret_value() for p in providers if isinstance(p, InfobipProviderConfig)
    }
    add_infobip_routes(app, state, infobip)
    # The simulator signs with its dev-only key pair: the telnyx provider's public_key must
    # be its public half (DEV_PUBLIC_KEY) for the reports to verify.
    telnyx = {
        p.api_key.get_secret_value(): DEV_PRIVATE_KEY
        for p in providers
        if isinstance(p, TelnyxProviderConfig)
    }
    add_telnyx_routes(app, state, telnyx)
    add_vonage_routes(app, state, _vonage_accounts(providers))
    return app


def _vonage_accounts(providers: Sequence[ProviderConfig]) -> dict[str, VonageAccount]:
    """Each vonage provider's way in: its application's public key, or its Basic login."""
    accounts = {}
    for p in providers:
        if not isinstance(p, VonageProviderConfig):
            continue
        secret = p.signature_secret.get_secret_value()
        if p.application_id is not None and p.private_key is not None:
            pem = public_key_pem(p.private_key.get_secret_value())
            accounts[p.application_id] = VonageAccount(secret, public_key=pem)
        elif p.api_key is not None and p.api_secret is not None:
            basic = p.api_secret.get_secret_value()
            accounts[p.api_key] = VonageAccount(secret, api_secret=basic, api_key=p.api_key)
    return accounts


def smsc(
    state: SimulatorState, providers: Sequence[ProviderConfig], port: int, host: str = "127.0.0.1"
) -> Smsc:
    """The SMSC that the `smpp` providers bind to, knowing their system_id and password."""
    accounts = {
        p.system_id: p.password.get_secret_value()
        for p in providers
        if isinstance(p, SmppProviderConfig)
    }
    return Smsc(state, accounts, host=host, port=port)
