"""Where a model file's bytes come from. The Hub (a ``[/datasets|/spaces]/<repo>/resolve/<rev>/<path>`` URL on
huggingface.co, hf.co or ``HF_ENDPOINT``'s host): RunPod's model cache, else huggingface_hub (and hf_xet) from
``HF_ENDPOINT`` with ``HF_TOKEN``. Other hosts: one GET through a :data:`.policy.Opener`, hashed as written, a cut
transfer resumed with ``Range`` after a backoff (tenacity)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar
from urllib.parse import unquote, urlsplit

import requests
import tenacity
import urllib3.exceptions

from ..config import Settings
from ..errors import ModelDownloadFailed, WorkerError
from .policy import Opener

T = TypeVar("T")
Meter = Callable[[int, int | None], None]  # told (bytes written, whole size or None); may refuse a size
_RESOLVE = re.compile(r"/((?P<t>dataset|space)s/)?(?P<repo>[^/]+(/[^/]+)?)/resolve/(?P<rev>[^/]+)/(?P<f>.+)")
_RANGE = re.compile(r"bytes\s+(\d+)-\d+/(\d+|\*)", re.IGNORECASE)
_SHA256 = re.compile(r"[0-9a-f]{64}")
RETRYABLE: tuple[type[Exception], ...] = (requests.ConnectionError, requests.Timeout, ConnectionError)
RETRYABLE += (requests.exceptions.ChunkedEncodingError, urllib3.exceptions.HTTPError, TimeoutError)


class Remote(NamedTuple):  # what a source announces of a file before its download
    size: int | None = None
    sha256: str | None = None
    disposition: str | None = None  # Content-Disposition, for its name (not from the Hub)
    final_url: str = ""


class HubFile(NamedTuple):
    repo_id: str
    filename: str
    repo_type: str
    revision: str


def endpoint() -> str:  # HF_ENDPOINT as huggingface_hub reads it, looked up at each call
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def hub_file(url: str) -> HubFile | None:
    parts = urlsplit(url)
    hub = parts.hostname in ("huggingface.co", "hf.co") or parts.netloc == urlsplit(endpoint()).netloc
    match = _RESOLVE.fullmatch(parts.path) if hub else None
    path = unquote(match["f"]) if match else ""
    if match is None or any(part in ("", ".", "..") for part in path.split("/")):
        return None
    return HubFile(unquote(match["repo"]), path, match["t"] or "model", unquote(match["rev"]))


def cached(file: HubFile, cache: Path, size: int | None, sha: str | None) -> tuple[Path, str | None] | None:
    """(blob, its sha256 when named by it, as LFS blobs are) of the file in a Hub cache, with no request."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.file_download import repo_folder_name

    blobs = cache / repo_folder_name(repo_id=file.repo_id, repo_type=file.repo_type) / "blobs"
    found: Any = try_to_load_from_cache(**file._asdict(), cache_dir=cache) if sha is None else blobs / sha
    blob = Path(found).resolve() if isinstance(found, (str, Path)) else None
    if blob is None or not blob.is_file() or not blob.is_relative_to(cache.resolve()):
        return None
    named = blob.name if _SHA256.fullmatch(blob.name) else None
    return None if (size not in (None, blob.stat().st_size)) or sha not in (None, named) else (blob, named)


def _hub_failed(label: str, exc: Exception) -> ModelDownloadFailed:  # its own message may quote addresses
    status = getattr(getattr(exc, "response", None), "status_code", None)
    hint = "; a gated or private file needs HF_TOKEN" if status in (401, 403) else "; check the URL"
    what = f"{type(exc).__name__}, HTTP {status}" if status else type(exc).__name__
    return ModelDownloadFailed(f"{label}: the Hub download failed ({what}){hint if status else ''}")


def hub_metadata(file: HubFile, settings: Settings, label: str) -> Remote:
    """(size, sha256) as the Hub announces them (``X-Linked-Size``, ``X-Linked-Etag``): one HEAD request."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url, token = hf_hub_url(**file._asdict(), endpoint=endpoint()), settings.hf_token or False
    try:
        meta = get_hf_file_metadata(url, token=token, endpoint=endpoint(), retry_on_errors=True)
    except Exception as exc:
        raise _hub_failed(label, exc) from exc
    return Remote(meta.size, meta.etag if meta.etag and _SHA256.fullmatch(meta.etag) else None)


def from_hub(file: HubFile, into: Path, meter: Meter, settings: Settings, label: str) -> Path:
    """Fetch the file into the folder ``into`` with huggingface_hub, which does not check its sha256."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.utils.tqdm import tqdm

    class Bar(tqdm):  # what huggingface_hub reports progress to: the bytes written go to ``meter``
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "disable": True})  # type: ignore[no-untyped-call]

        def update(self, n: int = 1) -> None:
            self.n += n
            meter(self.n, self.total)

        def update_transfer(self, n: int = 1) -> None:  # Xet's network bytes: with it, a single bar
            pass

    os.environ.setdefault("HF_XET_CLIENT_AC_INITIAL_DOWNLOAD_CONCURRENCY", str(settings.download_connections))
    constants.HF_HUB_DOWNLOAD_TIMEOUT = max(1, round(settings.model_read_timeout_s))
    token, hub = settings.hf_token or False, endpoint()
    try:
        path = hf_hub_download(**file._asdict(), local_dir=into, token=token, endpoint=hub, tqdm_class=Bar)
    except WorkerError:  # from ``meter``
        raise
    except Exception as exc:
        raise _hub_failed(label, exc) from exc
    return Path(path)


@dataclass(frozen=True)
class Retry:
    attempts: int = 6
    backoff_s: float = 1.0

    def call(self, action: Callable[[], T], label: str) -> T:
        backoff = self.backoff_s
        wait = tenacity.wait_exponential_jitter(multiplier=backoff, max=30 * backoff, jitter=backoff)
        retry, stop = tenacity.retry_if_exception_type(RETRYABLE), tenacity.stop_after_attempt(self.attempts)
        try:
            return tenacity.Retrying(retry=retry, stop=stop, wait=wait)(action)
        except tenacity.RetryError as exc:
            cause = exc.last_attempt.exception()  # its text may quote the URL: only ours is shown
            why = str(cause) if type(cause) is ConnectionError else type(cause).__name__
            message = f"{label}: the transfer failed ({why}; {self.attempts} tries)"
            raise ModelDownloadFailed(message) from cause


def _linked(response: requests.Response, header: str) -> str:  # of the answer, or of a redirect before it
    return next((hop.headers[header] for hop in (response, *response.history) if header in hop.headers), "")


def _open(opener: Opener, start: int, label: str, end: str = "") -> tuple[requests.Response, int | None]:
    """The open answer from byte ``start`` on, and the whole file's size when the server tells it."""
    ranged = {"Range": f"bytes={start}-{end}"} if start or end else {}
    try:
        response = opener({"Accept-Encoding": "identity", **ranged})
    except requests.RequestException as exc:
        if isinstance(exc, RETRYABLE):
            raise
        raise ModelDownloadFailed(f"{label}: the request failed ({type(exc).__name__})") from exc
    code, headers = response.status_code, response.headers
    got = _RANGE.fullmatch(headers.get("content-range", "").strip())
    if code not in (200, 206) or (code == 206) != bool(got and int(got[1]) == start):
        response.close()
        if code in (408, 425, 429) or code >= 500:
            raise ConnectionError(f"HTTP {code}")
        hint = "; a private file needs CIVITAI_TOKEN" if code in (401, 403) else "; check the URL"
        raise ModelDownloadFailed(f"{label}: the server answered HTTP {code}{hint}")
    size = got[2] if got else headers.get("content-length", "")
    if not got and headers.get("content-encoding", "identity").lower() not in ("", "identity"):
        size = ""  # the length of the encoded body
    size = size if size.isdigit() else _linked(response, "X-Linked-Size")
    return response, int(size) if size.isdigit() else None


def probe(opener: Opener, label: str, retry: Retry) -> Remote:
    """Ask for the first byte only: the file's size, announced sha256, Content-Disposition and final URL."""

    def ask() -> Remote:
        response, size = _open(opener, 0, label, end="0")
        with contextlib.closing(response):
            etag = _linked(response, "X-Linked-Etag").removeprefix("W/").strip().strip('"').lower()
            sha256 = etag if _SHA256.fullmatch(etag) else None
            return Remote(size, sha256, response.headers.get("content-disposition"), response.url)

    return retry.call(ask, label)


def from_host(opener: Opener, part: Path, meter: Meter, label: str, size: int | None, retry: Retry) -> str:
    """Fetch the whole file into ``part`` (created here); returns its sha256."""
    digest = [hashlib.sha256()]
    with part.open("wb") as fh:

        def attempt() -> None:
            response, total = _open(opener, fh.tell(), label)
            with contextlib.closing(response):
                if response.status_code == 200 and fh.tell():  # the server ignores ranges: all of it again
                    fh.seek(0)
                    fh.truncate()
                    digest[0] = hashlib.sha256()
                if None not in (size, total) and size != total:
                    raise ModelDownloadFailed(f"{label}: the server's file has {total} bytes, not {size}")
                meter(fh.tell(), total)
                while chunk := response.raw.read1(1 << 20):  # what came before a cut is kept
                    fh.write(chunk)
                    digest[0].update(chunk)
                    meter(fh.tell(), total)
            if total is not None and fh.tell() < total:
                raise ConnectionError(f"the connection closed after {fh.tell()} of {total} bytes")

        retry.call(attempt, label)
    return digest[0].hexdigest()
