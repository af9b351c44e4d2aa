"""Where an action call may connect: only http(s), and only to public addresses unless the
operator allowed the host (HAL9100_ACTION_ALLOWED_HOSTS).

A spec comes from an API client, so without this any client could make the server reach its
own network (a database's admin port, a cloud's metadata service at 169.254.169.254). The
check runs on the addresses the host name resolves to, and the request then connects to the
address that was checked, so a name that resolves elsewhere a moment later (DNS rebinding)
changes nothing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Collection, Iterable
from dataclasses import dataclass

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# IANA's special-purpose ranges that are not globally reachable, listed because the flags of
# Python's ipaddress miss some of them (which ones depends on the Python version: 3.11 calls
# 192.0.0.8 and fec0::1 global).
SPECIAL_PURPOSE = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",  # "this network"
        "100.64.0.0/10",  # shared address space (CGNAT)
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation (TEST-NET-1)
        "192.88.99.0/24",  # deprecated 6to4 relay anycast
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation (TEST-NET-2)
        "203.0.113.0/24",  # documentation (TEST-NET-3)
        "240.0.0.0/4",  # reserved
        "100::/64",  # discard-only
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation (RFC 9637)
        "fc00::/7",  # unique local
        "fec0::/10",  # site-local (deprecated, RFC 3879)
    )
)
DEFAULT_PORTS = {"http": 80, "https": 443}


class Refused(Exception):
    """The destination may not be reached; the message says why (shown to the model)."""


def embedded_ipv4(address: IPAddress) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries and reaches through its transition
    mechanism (IPv4-mapped, 6to4, Teredo server and client, NAT64's well-known prefix)."""
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address.sixtofour is not None:
        return [address.sixtofour]
    if address.teredo is not None:
        return list(address.teredo)
    if address in NAT64:
        return [ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)]
    return []


def is_public(address: IPAddress) -> bool:
    inner = embedded_ipv4(address)
    if inner:
        return all(is_public(a) for a in inner)
    # `is_global` alone lets multicast (224.0.0.1, ff02::1) through.
    return address.is_global and not (
        address.is_multicast
        or address.is_reserved
        or address.is_loopback
        or address.is_link_local
        or address.is_private
        or address.is_unspecified
        or (isinstance(address, ipaddress.IPv6Address) and address.is_site_local)
        or any(address in network for network in SPECIAL_PURPOSE)
    )


def host_allowed(host: str, port: int, allowed_hosts: Collection[str]) -> bool:
    """Whether the operator listed the host itself or host:port (IPv6 as [addr] or [addr]:port,
    or bare)."""
    host = host.lower().rstrip(".")
    shown = f"[{host}]" if ":" in host else host
    return any(
        entry in (host, shown, f"{shown}:{port}")
        for entry in (e.strip().lower() for e in allowed_hosts)
    )


@dataclass(frozen=True, slots=True)
class Destination:
    url: httpx.URL
    # True when the operator allowed the host: connect by name, no address check.
    allowed: bool


def check_url(url: str | httpx.URL, allowed_hosts: Collection[str]) -> Destination:
    """The checks that need no name resolution: the scheme, and the host when it is an
    address literal or a `localhost` name. Raises Refused."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as exc:
        raise Refused(f"'{url}' is not a valid URL: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        raise Refused(f"only http and https URLs may be called, not '{parsed.scheme}:'")
    host = parsed.host
    if not host:
        raise Refused(f"'{url}' has no host")
    port = parsed.port or DEFAULT_PORTS[parsed.scheme]
    if host_allowed(host, port, allowed_hosts):
        return Destination(parsed, allowed=True)
    literal = _literal(host)
    if literal is not None:
        if not is_public(literal):
            raise Refused(_reason(host, [literal]))
    elif host.lower().rstrip(".") == "localhost" or host.lower().rstrip(".").endswith(".localhost"):
        # RFC 6761: always the loopback interface, whatever a resolver says.
        raise Refused(f"'{host}' is a loopback name and is not in HAL9100_ACTION_ALLOWED_HOSTS")
    return Destination(parsed, allowed=False)


def check_addresses(host: str, addresses: Iterable[str | IPAddress]) -> list[IPAddress]:
    """The host's resolved addresses, all of them public, or Refused."""
    parsed = [ipaddress.ip_address(a) if isinstance(a, str) else a for a in addresses]
    if not parsed:
        raise Refused(f"'{host}' did not resolve to any address")
    if not all(is_public(a) for a in parsed):
        raise Refused(_reason(host, parsed))
    return parsed


def refusal(
    url: str, addresses: Iterable[str] = (), allowed_hosts: Collection[str] = ()
) -> str | None:
    """Why a call to `url` would be refused, given the addresses its host resolves to (an
    address literal is its own), or None when it may go ahead. Pure: resolves nothing."""
    try:
        destination = check_url(url, allowed_hosts)
        if destination.allowed:
            return None
        host = destination.url.host
        literal = _literal(host)
        check_addresses(host, [literal] if literal is not None else addresses)
    except Refused as exc:
        return str(exc)
    return None


async def resolve(
    url: str | httpx.URL, allowed_hosts: Collection[str]
) -> tuple[Destination, list[str]]:
    """The destination and the addresses to connect to, in order, all checked (unless the
    operator allowed the host), resolved with the event loop's getaddrinfo. Raises Refused."""
    destination = check_url(url, allowed_hosts)
    host = destination.url.host
    literal = _literal(host)
    if literal is not None:
        return destination, [str(literal)]
    port = destination.url.port or DEFAULT_PORTS[destination.url.scheme]
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise Refused(f"could not resolve '{host}': {exc}") from None
    # Scope ids (fe80::1%eth0) are dropped: such addresses are refused anyway.
    found = list(dict.fromkeys(str(info[4][0]).split("%")[0] for info in infos))
    if destination.allowed:
        if not found:
            raise Refused(f"'{host}' did not resolve to any address")
        return destination, found
    return destination, [str(a) for a in check_addresses(host, found)]


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return None


def _reason(host: str, addresses: list[IPAddress]) -> str:
    bad = next((a for a in addresses if not is_public(a)), addresses[0])
    literal = _literal(host)
    shown = str(bad) if literal is not None else f"'{host}' resolves to {bad}, which"
    return (
        f"{shown} is not a public address (loopback, private, link-local, multicast, "
        "reserved or another special-purpose range) and the host is not in "
        "HAL9100_ACTION_ALLOWED_HOSTS"
    )
