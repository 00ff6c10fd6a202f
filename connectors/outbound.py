"""The outbound guard: webhook POSTs and connector targets reach public addresses only, unless allowlisted.

Refused, whatever name leads there: every address that is not globally routable (loopback, private, link-local
with the cloud metadata address 169.254.169.254, shared 100.64/10, unique local fc00::/7 with fd00:ec2::254,
unspecified, reserved, documentation), every multicast address, an IPv4 address inside an IPv6 one (mapped
``::ffff:a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``) judged as that IPv4 address, and the metadata
host names (``metadata.google.internal`` ...). Integer and octal host spellings (``0x7f000001``, ``2130706433``,
``127.1``) resolve like any other name and are judged by their address. Networks listed in the allowlist
(``VLWATCH_OUTBOUND_ALLOW``, e.g. ``127.0.0.1/32,10.0.0.0/8``) are let through.

:meth:`OutboundGuard.connect` is where the guard holds: it resolves the name once, refuses it when any of its
addresses is refused, connects only to an address it checked, and checks the peer address of the connected
socket again. A name that answers a public address to one lookup and a private one to the next (DNS rebinding)
therefore never reaches the private one. :meth:`OutboundGuard.check_url` is the earlier, friendlier check made
when a URL is configured; a name that does not resolve then passes (the connect-time check still applies).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Iterable, Optional, Union
from urllib.parse import urlsplit

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

SETTING = "VLWATCH_OUTBOUND_ALLOW"
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata.goog", "metadata", "instance-data",
                            "instance-data.ec2.internal"})
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200"))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_ULA = ipaddress.ip_network("fc00::/7")


class OutboundRefused(OSError):
    """A connection the guard does not allow; the message names the address, why, and the setting."""


def embedded_ipv4(ip: IPAddress) -> Optional[ipaddress.IPv4Address]:
    """The IPv4 address an IPv6 address stands for (mapped, NAT64, 6to4), if any."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.ipv4_mapped or ip.sixtofour


def _refused(subject: str, why: str) -> OutboundRefused:
    return OutboundRefused(f"refused: {subject} {'' if subject.endswith(',') else 'is '}{why}; "
                           f"to allow it, list it in {SETTING}")


def why_refused(ip: IPAddress) -> Optional[str]:
    """Why ``ip`` is not a public address (None: it is one)."""
    inner = embedded_ipv4(ip)
    if inner is not None:
        why = why_refused(inner)
        return f"an IPv6 form of {inner} ({why})" if why else None
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    for test, words in (("is_loopback", "a loopback address"), ("is_link_local", "a link-local address"),
                        ("is_multicast", "a multicast address"), ("is_unspecified", "the unspecified address")):
        if getattr(ip, test):
            return words
    if ip.version == 6 and ip in _ULA:
        return "a unique local (ULA) address"
    if ip.is_private:
        return "a private address"
    if not ip.is_global:
        return "not a public address"
    return None


@dataclass(frozen=True)
class OutboundGuard:
    """Judges outbound addresses; ``allow`` lists the networks let through although not public."""

    allow: tuple[IPNetwork, ...] = ()

    @classmethod
    def allowing(cls, networks: Iterable[str]) -> "OutboundGuard":
        """From CIDR strings (``"127.0.0.1/32"``); a bare address is its own /32 or /128."""
        return cls(tuple(ipaddress.ip_network(n.strip(), strict=False) for n in networks if n.strip()))

    def refusal(self, ip: IPAddress) -> Optional[str]:
        """Why a connection to ``ip`` is refused (``"a loopback address"``); None when it is allowed."""
        if ip.version == 6 and ip.scope_id:
            ip = ipaddress.IPv6Address(str(ip).split("%", 1)[0])
        why = why_refused(ip)
        if why is None or any(a in net for a in (ip, embedded_ipv4(ip)) if a is not None
                              for net in self.allow if net.version == a.version):
            return None
        return why

    def resolve(self, host: str, port: int) -> list[tuple]:
        """``getaddrinfo`` results for ``host``, every one of them allowed; else :class:`OutboundRefused`."""
        name = host.strip("[]").rstrip(".").lower()
        if name in METADATA_HOSTS:
            raise OutboundRefused(f"refused: {host} is a cloud metadata host name")
        infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
        for *_, sockaddr in infos:
            why = self.refusal(ipaddress.ip_address(sockaddr[0]))
            if why:
                subject = sockaddr[0] if sockaddr[0] == name else f"{host} resolves to {sockaddr[0]},"
                raise _refused(subject, why)
        return infos

    def connect(self, address: tuple[str, int], timeout: Optional[float] = None,
                source_address: Optional[tuple[str, int]] = None) -> socket.socket:
        """A TCP connection to ``(host, port)`` through the guard (the signature of ``socket.create_connection``).
        The peer address of the connected socket is checked, not only what the name resolved to."""
        host, port = address
        error: Optional[OSError] = None
        for family, type_, proto, _, sockaddr in self.resolve(host, port):
            sock = socket.socket(family, type_, proto)
            try:
                sock.settimeout(timeout)
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)
                peer = sock.getpeername()[0]
                why = self.refusal(ipaddress.ip_address(peer))
                if why:
                    raise _refused(f"the connection to {host} reached {peer},", why)
                return sock
            except OutboundRefused:
                sock.close()
                raise
            except OSError as exc:
                sock.close()
                error = exc
        raise error or OSError(f"no address for {host}")

    def check_url(self, url: str, default_port: int = 443) -> Optional[str]:
        """What is wrong with ``url``'s host when it is configured (None: nothing known). A name that does not
        resolve now passes: it is judged again, by address, on every connection."""
        try:
            parts = urlsplit(url)
            host, port = parts.hostname, parts.port or default_port
        except ValueError as exc:
            return f"not a URL: {exc}"
        if not host:
            return None
        try:
            self.resolve(host, port)
        except OutboundRefused as exc:
            return str(exc)
        except (OSError, UnicodeError):
            return None
        return None
