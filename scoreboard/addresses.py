"""What a client address counts as, wherever addresses are counted: the HTTP layer's
per-address caps and the anti-cheat's accounts-per-address flag."""

from __future__ import annotations

import ipaddress


def address_key(address: str) -> str:
    """What a client address counts as for per-address caps: an IPv4 address itself (also when
    it arrives IPv4-mapped on a dual-stack socket), an IPv6 address its /64, the smallest
    allocation a subscriber gets, so that its 2^64 addresses do not each get a cap of their own.
    Anything else (not an IP address) counts as itself."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)
