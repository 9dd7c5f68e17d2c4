"""Fixtures for the provider tests: a simulator dialect served with a real report receiver."""

from __future__ import annotations

import random
from typing import Any

import pytest
from aiohttp import web

from dispatchd.config import SimulatorConfig
from dispatchd.devtools.simulator import SimulatorState
from tests.providers.simulator_helpers import QUIET, S, StartSimulator


@pytest.fixture
def simulator(aiohttp_client: Any, aiohttp_server: Any) -> StartSimulator:
    """Serve a dialect (`await simulator(Sim, **settings)`, settings over QUIET) and a local
    server that receives its reports; both are stopped at teardown."""

    async def start(sim_type: type[S], **settings: Any) -> S:
        state = SimulatorState(SimulatorConfig(**{**QUIET, **settings}), random.Random(5))
        sim = sim_type(state)
        reports = web.Application()
        for path in sim.report_paths:
            reports.router.add_route(sim.report_method, path, sim.receiver.handle)
        sim.reports = await aiohttp_server(reports)
        sim.receiver.url = f"{sim.reports.make_url(sim.report_paths[0])}?{sim.report_query}"
        sim.mount()
        sim.client = await aiohttp_client(sim.app)
        return sim

    return start
