"""Which addresses status callbacks may go to: the pure rules, the resolver, the config check."""

from __future__ import annotations

import socket

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from pydantic import ValidationError

from dispatchd.config import WebhooksConfig
from dispatchd.domain.addresses import literal_address, private_literal
from dispatchd.webhooks import PrivateAddressRefused, PublicResolver

PRIVATE = [
    "127.0.0.1",
    "127.8.9.10",
    "10.0.0.5",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # shared address space (carrier NAT)
    "0.0.0.0",
    "224.0.0.1",
    "255.255.255.255",
    "::1",
    "::",
    "fe80::1",
    "fe80::1%eth0",
    "fc00::1",
    "fd12:3456::1",
    "ff02::1",
    "::ffff:127.0.0.1",  # IPv4-mapped: reaches 127.0.0.1
    "::ffff:10.1.2.3",
    "[::1]",
]
PUBLIC = ["8.8.8.8", "93.184.215.14", "2001:4860:4860::8888", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("host", PRIVATE)
def test_private_literals(host: str) -> None:
    assert private_literal(host) is not None


@pytest.mark.parametrize("host", [*PUBLIC, "example.com", "localhost", "127.1", "", None])
def test_public_literals_and_names_are_not_private_literals(host: str | None) -> None:
    # Names (and the legacy forms aiohttp refuses) are judged on what they resolve to.
    assert private_literal(host) is None


def test_literal_address_reads_brackets_and_zones() -> None:
    assert str(literal_address("[2001:db8::1]")) == "2001:db8::1"
    assert literal_address("fe80::1%eth0") is not None
    assert literal_address("hooks.example.com") is None


class FakeResolver(AbstractResolver):
    """Answers every name with the given addresses."""

    def __init__(self, *hosts: str) -> None:
        self.hosts = hosts
        self.closed = False

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(hostname=host, host=h, port=port, family=family, proto=0, flags=0)
            for h in self.hosts
        ]

    async def close(self) -> None:
        self.closed = True


async def test_the_resolver_keeps_only_public_addresses() -> None:
    resolver = PublicResolver(FakeResolver("10.0.0.1", "93.184.215.14", "::1"))
    found = await resolver.resolve("mixed.example", 443)
    assert [(r["hostname"], r["host"], r["port"]) for r in found] == [
        ("mixed.example", "93.184.215.14", 443)
    ]


async def test_the_resolver_refuses_a_name_with_only_private_addresses() -> None:
    inner = FakeResolver("127.0.0.1", "169.254.169.254")
    resolver = PublicResolver(inner)
    with pytest.raises(PrivateAddressRefused, match=r"internal\.example resolves only to private"):
        await resolver.resolve("internal.example", 80)
    await resolver.close()
    assert inner.closed


def test_a_private_default_url_needs_allow_private_addresses() -> None:
    with pytest.raises(ValidationError, match="allow_private_addresses"):
        WebhooksConfig(secret="k", default_url="http://127.0.0.1:9000/hook")
    allowed = WebhooksConfig(
        secret="k", default_url="http://127.0.0.1:9000/hook", allow_private_addresses=True
    )
    assert allowed.default_url == "http://127.0.0.1:9000/hook"
    assert WebhooksConfig(secret="k", default_url="https://hooks.example/x").default_url
    assert WebhooksConfig().allow_private_addresses is False
