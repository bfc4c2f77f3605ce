"""Rules for model URLs and file names, built on :mod:`worker.netsafe`.

A model URL must use https (plain http only with ``ALLOW_HTTP_MODEL_URLS``), resolve to public addresses
(every redirect is checked again, and the connected socket too), and name a host of ``ALLOWED_MODEL_HOSTS``
(a listed host or any subdomain of it). A file name follows :mod:`worker.modelnames`, the same rule a job's
fields are validated with. Tokens go
only to their own hosts, over https: ``HF_TOKEN`` to huggingface.co and hf.co, ``CIVITAI_TOKEN`` to civitai.com.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from email.message import Message
from pathlib import PurePosixPath
from urllib.parse import unquote, urlsplit

import requests

from .. import modelnames
from ..config import Settings
from ..errors import UrlNotAllowed
from ..netsafe import Resolver, check_url, open_checked, redact_url, system_resolver
from .download import Opener

_EXTENDED_FILENAME = re.compile(r"filename\*\s*=\s*([A-Za-z0-9_-]*)'[^']*'([^;\s]+)", re.IGNORECASE)

HF_HOSTS = ("huggingface.co", "hf.co")
CIVITAI_HOSTS = ("civitai.com", "www.civitai.com")
CONNECT_TIMEOUT_S = 10.0


def max_bytes(settings: Settings) -> int:
    return int(settings.max_model_gb * 1e9)


# -- file names --------------------------------------------------------------------------------------------


def check_name(name: str, *, field: str, settings: Settings) -> str:
    """Return ``name`` if it passes :mod:`worker.modelnames`' rule, else :class:`UrlNotAllowed` saying what is
    wrong (a named file without a URL is checked by the job contract, with the same rule)."""
    problem = modelnames.name_problem(name, allow_pickle=settings.allow_pickle_models)
    if problem is not None:
        raise UrlNotAllowed(
            f"{field}: the file name {name[: modelnames.MAX_NAME_BYTES]!r} {problem}; model file names are "
            + modelnames.RULE,
            details=[{"field": field, "name": name[: modelnames.MAX_NAME_BYTES]}],
        )
    return name


def disposition_filename(header: str | None) -> str | None:
    """The file name of a ``Content-Disposition`` header (``filename*`` preferred), or None."""
    if not header:
        return None
    extended = _EXTENDED_FILENAME.search(header)
    if extended is not None:
        try:
            return unquote(extended.group(2), encoding=extended.group(1) or "utf-8", errors="strict")
        except (LookupError, UnicodeDecodeError):
            pass
    message = Message()
    message["content-disposition"] = header
    name = message.get_filename()
    return name or None


def url_filename(url: str) -> str:
    return unquote(PurePosixPath(urlsplit(url).path).name)


def derive_name(
    *, field: str, url: str, final_url: str, content_disposition: str | None, settings: Settings
) -> str:
    """The name to save a download under when the job gave none.

    The server's ``Content-Disposition`` wins (Civitai's URLs end in a number), then the last part of the URL's
    path, then that of the URL redirected to.
    """
    candidates = [
        modelnames.sanitize(raw)
        for raw in (disposition_filename(content_disposition), url_filename(url), url_filename(final_url))
        if raw
    ]
    candidates = [c for c in candidates if c]
    extensions = modelnames.allowed_extensions(settings.allow_pickle_models)
    for candidate in candidates:
        if candidate.lower().endswith(extensions):
            return check_name(candidate, field=field, settings=settings)
    if candidates:
        return check_name(candidates[0], field=field, settings=settings)
    raise UrlNotAllowed(
        f"{field}: cannot tell the file name of {redact_url(url)}; give the file name in the matching name field",
        details=[{"field": field, "url": redact_url(url)}],
    )


# -- URLs --------------------------------------------------------------------------------------------------


def _host_matches(host: str, pattern: str) -> bool:
    pattern = pattern.strip().lower().removeprefix("*.").rstrip(".")
    return bool(pattern) and (host == pattern or host.endswith("." + pattern))


def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    host = host.lower().rstrip(".")
    return any(_host_matches(host, pattern) for pattern in allowed)


def model_schemes(settings: Settings) -> tuple[str, ...]:
    return ("https", "http") if settings.allow_http_model_urls else ("https",)


def check_host(url: str, *, field: str, settings: Settings) -> None:
    """Refuse ``url`` unless its host is on the allow-list (used for every redirect hop too)."""
    host = (urlsplit(url).hostname or "").lower()
    if not host_allowed(host, settings.allowed_model_hosts):
        raise UrlNotAllowed(
            f"{field}: the host {host!r} is not allowed for model downloads; allowed hosts: "
            f"{', '.join(settings.allowed_model_hosts) or 'none'} and their subdomains "
            "(ALLOWED_MODEL_HOSTS changes the list)",
            details=[{"field": field, "url": redact_url(url)}],
        )


def check_scheme(url: str, *, field: str, settings: Settings) -> None:
    scheme = urlsplit(url).scheme.lower()
    if scheme not in model_schemes(settings):
        hint = (
            "" if settings.allow_http_model_urls else " (plain http only when ALLOW_HTTP_MODEL_URLS is set)"
        )
        raise UrlNotAllowed(
            f"{field}: model URLs must use https, not {scheme or 'no scheme'!r}{hint}",
            details=[{"field": field, "url": redact_url(url)}],
        )


def check_url_rules(url: str, *, field: str, settings: Settings) -> None:
    """The rules a model URL must pass that need no look-up: a valid port, the scheme, the host list."""
    try:
        urlsplit(url).port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise UrlNotAllowed(f"{field} is not a valid URL ({exc})", details=[{"field": field}]) from None
    check_scheme(url, field=field, settings=settings)
    check_host(url, field=field, settings=settings)


def check_model_url(
    url: str, *, field: str, settings: Settings, resolver: Resolver = system_resolver
) -> None:
    """Every rule a model URL must pass before a request is made: scheme, host list, public address."""
    check_url_rules(url, field=field, settings=settings)
    check_url(
        url,
        field=field,
        schemes=model_schemes(settings),
        allow_private=settings.allow_private_urls,
        resolver=resolver,
    )


def check_size(size: int | None, *, field: str, url: str, settings: Settings) -> None:
    if size is not None and size > max_bytes(settings):
        raise UrlNotAllowed(
            f"{field}: the file at {redact_url(url)} is {size / 1e9:.1f} GB, more than the limit of "
            f"{settings.max_model_gb:g} GB (MAX_MODEL_GB)",
            details=[{"field": field, "url": redact_url(url), "bytes": size}],
        )


def auth_headers(url: str, settings: Settings) -> dict[str, str]:
    """The token for ``url``'s host, over https only: HF_TOKEN for Hugging Face, CIVITAI_TOKEN for Civitai."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme.lower() != "https":
        return {}
    if settings.hf_token and host in HF_HOSTS:
        return {"Authorization": f"Bearer {settings.hf_token}"}
    if settings.civitai_token and host in CIVITAI_HOSTS:
        return {"Authorization": f"Bearer {settings.civitai_token}"}
    return {}


EXPIRED_STATUSES = (401, 403, 404, 410)
"""Answers of a signed CDN address that has expired: ask the original URL again."""


def make_opener(
    url: str,
    *,
    field: str,
    settings: Settings,
    session: requests.Session,
    resolver: Resolver = system_resolver,
) -> Opener:
    """A function that GETs ``url`` with extra headers, every hop checked, tokens only to their own hosts.

    After a first answer, requests go straight to the address redirected to (a signed CDN URL), saving a
    round trip per block; when that address answers as expired, the original URL is asked again.
    """
    timeout = (min(CONNECT_TIMEOUT_S, settings.model_read_timeout_s), settings.model_read_timeout_s)
    last = [url]

    def check_hop(hop: str) -> None:
        check_host(hop, field=field, settings=settings)

    def get(start: str, headers: Mapping[str, str]) -> requests.Response:
        def headers_for(hop: str) -> dict[str, str]:
            return {**headers, **auth_headers(hop, settings)}

        return open_checked(
            session,
            start,
            field=field,
            timeout=timeout,
            schemes=model_schemes(settings),
            allow_private=settings.allow_private_urls,
            resolver=resolver,
            headers_for=headers_for,
            extra_check=check_hop,
        )

    def opener(headers: Mapping[str, str]) -> requests.Response:
        start = last[0]
        response = get(start, headers)
        if start != url and response.status_code in EXPIRED_STATUSES:
            response.close()
            response = get(url, headers)
        if response.status_code in (200, 206):
            last[0] = response.url
        return response

    return opener
