"""The whole simulator: the wire format, every provider dialect, and the SMSC, with the
credentials of the configured providers, so they authenticate and sign as the real ones."""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web

from dispatchd.config import ProviderConfig, SmppProviderConfig, TwilioProviderConfig
from dispatchd.devtools.simulator import SimulatorState, make_simulator_app
from dispatchd.devtools.simulator_twilio import add_twilio_routes
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
    return app


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
