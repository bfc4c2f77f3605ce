"""Rules for model URLs (on :mod:`worker.netsafe`): https, public addresses, hosts of ALLOWED_MODEL_HOSTS, every
redirect checked; file names by :mod:`.names`; tokens only to their own hosts (HF_TOKEN to huggingface.co and
hf.co, CIVITAI_TOKEN to civitai.com), over https."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from email.message import Message
from email.utils import collapse_rfc2231_value
from pathlib import PurePosixPath
from urllib.parse import unquote, urlsplit

import requests

from ..config import Settings
from ..errors import UrlNotAllowed
from ..netsafe import Resolver, check_url, make_session, open_checked, redact_url
from . import names

Opener = Callable[[Mapping[str, str]], requests.Response]
"""GETs a download's URL with these extra headers, every redirect checked; returns the open answer."""
TOKEN_HOSTS = {"huggingface.co": "hf_token", "hf.co": "hf_token", "civitai.com": "civitai_token"}


def check_name(name: str, *, field: str, settings: Settings) -> str:
    if problem := names.name_problem(name, allow_pickle=settings.allow_pickle_models):
        shown = name[: names.MAX_NAME_BYTES]
        message = f"{field}: the file name {shown!r} {problem}; model file names are {names.RULE}"
        raise UrlNotAllowed(message, details=[{"field": field, "name": shown}])
    return name


def derive_name(field: str, url: str, final_url: str, disposition: str | None, settings: Settings) -> str:
    """The name to save a download under when the job gave none: the server's ``Content-Disposition`` (Civitai's
    URLs end in a number; its ``filename*`` (RFC 2231) first), then the last part of the URL's path, then that
    of the URL redirected to."""
    header = Message()
    header["content-disposition"] = disposition or ""
    given = [v for k, v in header.get_params([], header="content-disposition")[1:] if k == "filename"]
    value = next((v for v in given if isinstance(v, tuple)), given[0] if given else None)
    paths = (unquote(PurePosixPath(urlsplit(u).path).name) for u in (url, final_url))
    raw = filter(None, [value and collapse_rfc2231_value(value), *paths])
    candidates = [c for c in map(names.sanitize, raw) if c]
    ends = names.allowed_extensions(settings.allow_pickle_models)
    for candidate in [c for c in candidates if c.lower().endswith(ends)] or candidates[:1]:
        return check_name(candidate, field=field, settings=settings)
    message = f"{field}: cannot tell the file name of {redact_url(url)}; give it in the matching name field"
    raise UrlNotAllowed(message, details=[{"field": field, "url": redact_url(url)}])


def check_host(url: str, *, field: str, settings: Settings) -> None:
    """Refuse ``url`` unless its host is on the allow-list (checked at every redirect too)."""
    host = (urlsplit(url).hostname or "").lower().rstrip(".")
    allowed = [p.strip().lower().removeprefix("*.").rstrip(".") for p in settings.allowed_model_hosts]
    if not any(p and (host == p or host.endswith("." + p)) for p in allowed):
        listed = ", ".join(settings.allowed_model_hosts) or "none"
        message = f"{field}: the host {host!r} is not allowed for model downloads; allowed hosts: {listed}"
        message += " and their subdomains (ALLOWED_MODEL_HOSTS changes the list)"
        raise UrlNotAllowed(message, details=[{"field": field, "url": redact_url(url)}])


def schemes(settings: Settings) -> tuple[str, ...]:
    return ("https", "http") if settings.allow_http_model_urls else ("https",)


def check_url_rules(url: str, *, field: str, settings: Settings) -> None:
    """The rules a model URL must pass that need no look-up: the scheme, the host list."""
    scheme = urlsplit(url).scheme.lower()  # the job contract has checked the URL's shape
    if scheme not in schemes(settings):
        hint = " (plain http only when ALLOW_HTTP_MODEL_URLS is set)" * (not settings.allow_http_model_urls)
        message = f"{field}: model URLs must use https, not {scheme or 'no scheme'!r}{hint}"
        raise UrlNotAllowed(message, details=[{"field": field, "url": redact_url(url)}])
    check_host(url, field=field, settings=settings)


def check_model_url(url: str, *, field: str, settings: Settings, resolver: Resolver) -> None:
    check_url_rules(url, field=field, settings=settings)  # the scheme too: check_url adds the address
    check_url(url, field=field, allow_private=settings.allow_private_urls, resolver=resolver)


def check_size(size: int | None, *, field: str, url: str, settings: Settings) -> None:
    if size is not None and size > settings.max_model_gb * 1e9:
        message = f"{field}: the file at {redact_url(url)} is {size / 1e9:.1f} GB, more than the limit of "
        message += f"{settings.max_model_gb:g} GB (MAX_MODEL_GB)"
        raise UrlNotAllowed(message, details=[{"field": field, "url": redact_url(url), "bytes": size}])


def auth_headers(url: str, settings: Settings) -> dict[str, str]:
    """The token for ``url``'s host, over https only: HF_TOKEN for Hugging Face, CIVITAI_TOKEN for Civitai."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower().removeprefix("www.")
    token = getattr(settings, TOKEN_HOSTS[host]) if parts.scheme == "https" and host in TOKEN_HOSTS else ""
    return {"Authorization": f"Bearer {token}"} if token else {}


@contextmanager
def opener(url: str, field: str, settings: Settings, resolver: Resolver) -> Iterator[Opener]:
    """GETs ``url`` with extra headers: every redirect checked against the rules, tokens only to their own hosts."""
    read_s, private = settings.model_read_timeout_s, settings.allow_private_urls
    with make_session(allow_private=private, pool_size=2) as session:
        yield lambda headers: open_checked(
            session,
            url,
            field=field,
            timeout=(min(10.0, read_s), read_s),
            schemes=schemes(settings),
            allow_private=private,
            resolver=resolver,
            headers_for=lambda hop: {**headers, **auth_headers(hop, settings)},
            extra_check=lambda hop: check_host(hop, field=field, settings=settings),
        )
