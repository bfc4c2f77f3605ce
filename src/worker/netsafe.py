"""Fetching URLs that a job names without letting the job reach the worker's own network.

Every URL a job gives (input images, model overrides) goes through here: the scheme must be allowed, the host
must resolve to public addresses only, and the check is made again at every redirect and once more on the
socket actually connected (so that a name which resolves to a public address for the check and to a private
one for the connection, "DNS rebinding", is caught too).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter
from requests.models import REDIRECT_STATI
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from .errors import UrlNotAllowed

Resolver = Callable[[str, int], Iterable[str]]
"""Resolves (host, port) to IP address strings; tests pass a stub."""

MAX_REDIRECTS = 5


def system_resolver(host: str, port: int) -> list[str]:
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


def is_public_address(address: str) -> bool:
    """True when ``address`` is a globally routable unicast address (IPv4-mapped IPv6 unwrapped)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip.sixtofour is not None:
            ip = ip.sixtofour
        elif ip.teredo is not None:
            return False
    if ip.is_multicast or ip.is_unspecified or ip.is_loopback or ip.is_link_local:
        return False
    return not (ip.is_private or ip.is_reserved or not ip.is_global)


def redact_url(url: str) -> str:
    """The URL without its query string, fragment and credentials: safe for logs and error messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    host = f"{parts.hostname or ''}:{parts.port}" if parts.port else parts.hostname or ""
    query = "<redacted>" if parts.query else ""
    return urlunsplit((parts.scheme, host, parts.path, query, ""))


def check_url(
    url: str,
    *,
    field: str,
    schemes: Iterable[str] = ("https", "http"),
    allow_private: bool = False,
    resolver: Resolver = system_resolver,
) -> None:
    """Refuse ``url`` unless its scheme is allowed and its host resolves to public addresses only."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlNotAllowed(f"{field} is not a valid URL ({exc})", details=[{"field": field}]) from None
    allowed, where = tuple(schemes), [{"field": field, "url": redact_url(url)}]
    if parts.scheme.lower() not in allowed:
        message = f"{field} must use {' or '.join(allowed)}, not {parts.scheme or 'no scheme'!r}"
        raise UrlNotAllowed(message, details=where)
    host = parts.hostname
    if not host:
        raise UrlNotAllowed(f"{field} has no host", details=[{"field": field}])
    if allow_private:
        return
    try:
        addresses = list(resolver(host, port or (443 if parts.scheme.lower() == "https" else 80)))
    except (OSError, UnicodeError) as exc:
        message = f"{field}: the host {host!r} could not be resolved ({exc.__class__.__name__})"
        raise UrlNotAllowed(message, details=where) from None
    if not addresses:
        raise UrlNotAllowed(f"{field}: the host {host!r} has no address", details=[{"field": field}])
    if bad := [a for a in addresses if not is_public_address(a)]:
        message = f"{field}: the host {host!r} resolves to a non-public address ({bad[0]}); only public "
        raise UrlNotAllowed(message + "internet addresses may be fetched", details=where)


class _PeerCheckMixin:
    """Checks the address of the socket actually connected, after DNS and before any byte is sent."""

    def _new_conn(self) -> socket.socket:
        sock: socket.socket = super()._new_conn()  # type: ignore[misc]
        try:
            peer = sock.getpeername()[0]
        except OSError:
            peer = ""
        if not is_public_address(str(peer)):
            sock.close()
            raise UrlNotAllowed(
                f"the connection went to a non-public address ({peer}); only public internet addresses "
                "may be fetched"
            )
        return sock


def _public_pool(pool: type[HTTPConnectionPool], connection: type[HTTPConnection]) -> Any:
    """``pool`` whose connections check their peer (:class:`_PeerCheckMixin`)."""
    checked = type(f"_Public{connection.__name__}", (_PeerCheckMixin, connection), {})
    return type(f"_Public{pool.__name__}", (pool,), {"ConnectionCls": checked})


_PUBLIC_POOLS = {
    "http": _public_pool(HTTPConnectionPool, HTTPConnection),
    "https": _public_pool(HTTPSConnectionPool, HTTPSConnection),
}


class PublicOnlyAdapter(HTTPAdapter):
    """A requests adapter whose connections refuse any non-public peer address."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _PUBLIC_POOLS


def make_session(*, allow_private: bool = False, pool_size: int = 10) -> requests.Session:
    """A session for user-named URLs: environment proxies ignored, peers checked unless ``allow_private``."""
    session = requests.Session()
    session.trust_env = False
    kind = HTTPAdapter if allow_private else PublicOnlyAdapter
    adapter = kind(pool_connections=pool_size, pool_maxsize=pool_size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def open_checked(
    session: requests.Session,
    url: str,
    *,
    field: str,
    timeout: tuple[float, float],
    schemes: Iterable[str] = ("https", "http"),
    allow_private: bool = False,
    resolver: Resolver = system_resolver,
    headers_for: Callable[[str], Mapping[str, str]] | None = None,
    extra_check: Callable[[str], None] | None = None,
    max_redirects: int = MAX_REDIRECTS,
) -> requests.Response:
    """GET ``url`` as a stream, following redirects by hand and checking every hop.

    ``headers_for(url)`` gives the headers for one hop (so that a token is sent only to its own host);
    ``extra_check(url)`` may refuse a hop (a host allow-list). The caller closes the response. Its ``history``
    holds the redirect answers (closed, headers kept), as with requests' own redirects: a Hugging Face
    ``resolve`` URL announces the file's sha256 and size on its redirect to the CDN.
    """
    schemes = tuple(schemes)
    current = url
    hops: list[requests.Response] = []
    for _hop in range(max_redirects + 1):
        check_url(current, field=field, schemes=schemes, allow_private=allow_private, resolver=resolver)
        if extra_check is not None:
            extra_check(current)
        headers = dict(headers_for(current)) if headers_for else {}
        response = session.get(current, headers=headers, stream=True, timeout=timeout, allow_redirects=False)
        if response.status_code not in REDIRECT_STATI:
            response.history = hops
            return response
        location = response.headers.get("location", "").strip()
        response.close()
        if not location:
            raise UrlNotAllowed(
                f"{field}: {redact_url(current)} answered {response.status_code} redirect without a "
                "Location header; give the file's direct URL instead",
                details=[{"field": field, "url": redact_url(current)}],
            )
        hops.append(response)
        current = urljoin(current, location)
    raise UrlNotAllowed(
        f"{field}: too many redirects (more than {max_redirects})", details=[{"field": field}]
    )
