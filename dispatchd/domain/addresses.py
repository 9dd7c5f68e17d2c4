"""Which IP addresses status callbacks may go to (pure; no I/O).

Clients choose callback URLs, so without a check they could make dispatchd probe the
network it runs in. Only globally routable unicast addresses are public here; loopback,
RFC 1918, shared (100.64/10), link-local, unique-local, unspecified, multicast, reserved and
documentation ranges are private.
"""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def literal_address(host: str) -> IPAddress | None:
    """The IP address `host` spells (an IPv6 one may have brackets or a zone), or None."""
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        return None


def is_private(address: IPAddress) -> bool:
    """Whether `address` is not a globally routable unicast address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 reaches 127.0.0.1
    return not address.is_global or address.is_multicast


def private_literal(host: str | None) -> IPAddress | None:
    """The address `host` spells when it is a private IP address literal, else None."""
    address = literal_address(host or "")
    return address if address is not None and is_private(address) else None
