"""Persistence: `api` is the contract, each backend (`sqlite`, `memory`) implements it."""
