"""Outbound URL guard for webhooks and runner pushes (ARCHITECTURE §4, "Webhooks").

Resolve the host, refuse loopback, private, link-local, metadata and other non-public
addresses unless private targets are allowed (``WEBHOOK_ALLOW_PRIVATE``; metadata and
link-local addresses are refused even then), then connect to the
address that was checked (no second lookup an attacker could answer differently), follow no
redirects, cap the response body read and bound the whole call by one timeout.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

__all__ = [
    "IPAddress",
    "ResolvedTarget",
    "Resolver",
    "UrlRefused",
    "check_url_syntax",
    "classify",
    "post_json",
    "resolve_and_check",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[Iterable[str | IPAddress]]]
"""``async (host, port) -> addresses``; the default uses the loop's ``getaddrinfo``."""

_DEFAULT_PORTS = {"http": 80, "https": 443}

_METADATA = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack, ...
        ipaddress.ip_address("fd00:ec2::254"),  # AWS IMDS over IPv6
        ipaddress.ip_address("168.63.129.16"),  # Azure WireServer: a public-looking address
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud ECS, inside 100.64.0.0/10
    }
)
# Refused whatever WEBHOOK_ALLOW_PRIVATE says (the reasons of :func:`classify`, embedded or not).
ALWAYS_REFUSED = ("metadata", "link-local")
# How :func:`classify` names the reason of an IPv6 address that embeds an IPv4 one.
EMBEDDED = "IPv4-embedded "
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class UrlRefused(Exception):
    """An outbound URL is not allowed; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ResolvedTarget:
    """A checked URL and the one address it will be reached at."""

    url: str
    scheme: str
    host: str
    port: int
    ip: IPAddress


def check_url_syntax(url: str) -> tuple[str, str, int]:
    """Return ``(scheme, host, port)`` of an http(s) URL; raise UrlRefused otherwise.

    Refuses other schemes, a missing host, userinfo (``user:pass@``), a bad port and control
    characters or whitespace anywhere in the URL. ``host`` is lowercase, IPv6 without brackets.
    """
    if any(ord(ch) <= 0x20 or ord(ch) == 0x7F for ch in url):
        raise UrlRefused("URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlRefused(f"URL cannot be parsed: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise UrlRefused(f"scheme {parts.scheme!r} is not allowed; use http or https")
    if "@" in parts.netloc:
        raise UrlRefused("URL must not contain credentials (user:pass@)")
    host = parts.hostname
    if not host:
        raise UrlRefused("URL has no host")
    if port is None:
        port = _DEFAULT_PORTS[scheme]
    elif not 1 <= port <= 65535:
        raise UrlRefused(f"port {port} is out of range")
    return scheme, host, port


def classify(ip: IPAddress) -> str | None:
    """Return why ``ip`` must not be reached from the server, or None when it is public.

    IPv6 forms that embed an IPv4 address (IPv4-mapped ``::ffff:a.b.c.d``, NAT64
    ``64:ff9b::/96``, 6to4 ``2002::/16``) are judged by the embedded address.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            reason = classify(embedded)
            return None if reason is None else EMBEDDED + reason
    if ip in _METADATA:
        return "metadata"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "shared address space (CGNAT)"
    if ip.is_reserved:  # before is_private, which also covers 240.0.0.0/4 on 3.11
        return "reserved"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "not globally routable"
    return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


async def _getaddrinfo(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return [str(info[4][0]) for info in infos]


async def resolve_and_check(
    url: str, *, allow_private: bool, resolver: Resolver | None = None
) -> ResolvedTarget:
    """Check ``url``, resolve its host and return the address to connect to.

    Every resolved address must be public (one private answer among public ones refuses the
    URL, so a split DNS answer cannot smuggle one in) unless ``allow_private``; even then
    metadata and link-local addresses (:data:`ALWAYS_REFUSED`) are refused: a development
    server reaching its own machine's services is the point of the setting, a cloud host's
    credentials endpoint never is. The first address is chosen. An IP-literal host is checked
    without a lookup.
    """
    scheme, host, port = check_url_syntax(url)
    addresses = await _resolve(host, port, resolver or _getaddrinfo)
    for ip in addresses:
        reason = classify(ip)
        if reason is not None and (
            not allow_private or reason.removeprefix(EMBEDDED) in ALWAYS_REFUSED
        ):
            raise UrlRefused(f"{host} resolves to {ip}, a {reason} address")
    return ResolvedTarget(url=url, scheme=scheme, host=host, port=port, ip=addresses[0])


async def _resolve(host: str, port: int, resolver: Resolver) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        answers = await resolver(host, port)
    except (OSError, UnicodeError) as exc:  # socket.gaierror is an OSError
        raise UrlRefused(f"cannot resolve {host}: {exc}") from None
    addresses: list[IPAddress] = []
    for answer in answers:
        try:
            ip = ipaddress.ip_address(str(answer))
        except ValueError:
            raise UrlRefused(f"{host} resolved to a non-address {answer!r}") from None
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise UrlRefused(f"{host} has no address")
    return addresses


def _host_header(target: ResolvedTarget) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host
    if target.port != _DEFAULT_PORTS[target.scheme]:
        host = f"{host}:{target.port}"
    return host


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context (the trust roots httpx uses, environment ignored as the
    client ignores it) for every outbound POST: building one loads the whole CA bundle, which
    cost more CPU than the rest of the request when each POST built its own."""
    return httpx.create_ssl_context(trust_env=False)


async def post_json(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    allow_private: bool,
    timeout: float = 10.0,
    max_response_bytes: int = 65536,
    resolver: Resolver | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> int:
    """POST ``body`` as JSON to ``url`` through the guard and return the response status.

    The request goes to the checked address with ``Host`` (and TLS SNI and certificate name)
    set to the original host. Redirects are not followed: a 3xx is returned as its status.
    At most ``max_response_bytes`` of the (still encoded) response body are read. ``timeout``
    bounds the whole call, resolution included.

    Raises UrlRefused for a refused URL, httpx.HTTPError for transport failures and
    TimeoutError when ``timeout`` runs out.
    """
    async with asyncio.timeout(timeout):
        target = await resolve_and_check(url, allow_private=allow_private, resolver=resolver)
        send_headers = {k: v for k, v in headers.items() if k.lower() != "host"}
        lowered = {k.lower() for k in send_headers}
        if "content-type" not in lowered:
            send_headers["Content-Type"] = "application/json"
        if "accept-encoding" not in lowered:
            send_headers["Accept-Encoding"] = "identity"
        send_headers["Host"] = _host_header(target)
        ip_url = httpx.URL(url).copy_with(host=str(target.ip), username=None, password=None)
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        async with (
            httpx.AsyncClient(
                transport=transport,
                verify=_tls_context(),
                follow_redirects=False,
                timeout=httpx.Timeout(timeout),
                trust_env=False,  # an environment proxy would bypass the address check
            ) as client,
            client.stream(
                "POST", ip_url, content=body, headers=send_headers, extensions=extensions
            ) as response,
        ):
            read = 0
            async for chunk in response.aiter_raw():
                read += len(chunk)
                if read >= max_response_bytes:
                    break
            return response.status_code
