"""The download tests' servers, on the suite's one HTTP server: :class:`FileServer` (files as a plain host or a
CDN serves them) and :class:`FakeHub` (the Hugging Face Hub as ``HF_ENDPOINT`` reaches it); model-like bytes.

``python -m tests.models.fileserver FILE`` serves one file from a process of its own (for bench/download.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import threading
from pathlib import Path
from typing import Any

from tests.support.httpserver import Handler, Hit, HttpServer, Request, Route


class FileServer(HttpServer):
    """``with FileServer() as server: url = server.add("/a.safetensors", data)``."""

    def add(
        self,
        path: str,
        data: bytes | Path,
        *,
        statuses: list[int] | None = None,
        content_disposition: str | None = None,
        **options: Any,
    ) -> str:
        """Serve ``data`` at ``path`` (with ``Range`` unless ``ranges=False``); ``statuses`` are answered first,
        one a request, as error pages; ``options`` are the other :class:`Route` fields."""
        headers = {"Content-Type": "application/octet-stream", "ETag": '"v1"'}
        if content_disposition:
            headers["Content-Disposition"] = content_disposition
        options.setdefault("ranges", True)
        route = Route(body=data, headers=headers, **options)
        self.routes[path] = _after_errors(list(statuses), route, self) if statuses else route
        return self.url(path)

    def redirect(self, path: str, location: str, headers: dict[str, str] | None = None) -> str:
        self.routes[path] = Route(302, headers={**(headers or {}), "Location": location})
        return self.url(path)

    def hub_file(
        self, path: str, data: bytes, *, announce: dict[str, str] | None = None, **options: Any
    ) -> str:
        """Serve ``data`` as the Hub serves an LFS file: ``path`` (``/<repo>/resolve/main/<file>``) answers 302
        to ``/cdn<path>`` with ``X-Linked-Etag: "<sha256>"`` and ``X-Linked-Size`` (``announce`` replaces these
        headers: wrong values, or none)."""
        if announce is None:
            announce = {"X-Linked-Etag": f'"{_sha256(data)}"', "X-Linked-Size": str(len(data))}
        return self.redirect(path, self.add("/cdn" + path, data, **options), announce)


def _after_errors(statuses: list[int], route: Route, server: HttpServer) -> Handler:
    def answer(request: Request) -> Route:
        with server.lock:
            status = statuses.pop(0) if statuses else None
        return route if status is None else Route(status, b"<html>error</html>")

    return answer


COMMIT = "c0ffee" * 6 + "c0ff"


class FakeHub:
    """The Hub's ``resolve`` endpoint as ``HF_ENDPOINT`` reaches it: ``HEAD``/``GET /<repo>/resolve/<rev>/<path>``
    answers 302 to a CDN on another origin (as the Hub does, so huggingface_hub keeps the token off it) with
    ``X-Linked-Etag`` (the sha256), ``X-Linked-Size``, ``X-Repo-Commit`` and ``ETag``; the CDN honours ``Range``.

    ``with FakeHub() as hub: url = hub.add("org/repo", "sub/x.safetensors", data)`` gives the file's
    ``https://huggingface.co/...`` URL; point ``HF_ENDPOINT`` at ``hub.url``."""

    def __init__(self) -> None:
        self.hub, self.cdn = FileServer(), FileServer()
        self.url = self.hub.url()

    def add(
        self, repo: str, path: str, data: bytes | Path, *, announce: dict[str, str] | None = None, **cdn: Any
    ) -> str:
        """Serve ``data`` as ``<repo>/resolve/main/<path>``; ``announce`` replaces the announced headers;
        ``cdn`` are :meth:`FileServer.add` options of the bytes (``cut_after``, ``wrong``, ``throttle_bps`` ...)."""
        sha256, size = _sha256(data), Route(body=data).size
        headers = {"X-Linked-Etag": f'"{sha256}"', "X-Linked-Size": str(size), "ETag": f'"{sha256}"'}
        location = self.cdn.add(f"/blobs/{sha256}", data, **cdn)
        resolve = f"/{repo}/resolve/main/{path}"
        self.hub.redirect(resolve, location, {**headers, "X-Repo-Commit": COMMIT, **(announce or {})})
        return "https://huggingface.co" + resolve

    def hits(self) -> list[Hit]:
        """Every request either server saw."""
        return self.hub.hits() + self.cdn.hits()

    def __enter__(self) -> FakeHub:
        self.hub.start()
        self.cdn.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.hub.close()
        self.cdn.close()


def _sha256(data: bytes | Path) -> str:
    if isinstance(data, bytes):
        return hashlib.sha256(data).hexdigest()
    with data.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def model_bytes(size: int, seed: int = 0) -> bytes:
    """``size`` bytes that look like a safetensors file: an 8-byte header length, a JSON header, then data."""
    header = b'{"__metadata__":{}}'
    head = len(header).to_bytes(8, "little") + header
    body = random.Random(seed).randbytes(max(0, size - len(head)))
    return (head + body)[:size]


def write_model_file(path: Path, size: int, seed: int = 0) -> Path:
    """A large :func:`model_bytes`-like file written in blocks (for the benchmark)."""
    rng = random.Random(seed)
    header = b'{"__metadata__":{}}'
    with path.open("wb") as fh:
        fh.write(len(header).to_bytes(8, "little") + header)
        left = size - 8 - len(header)
        while left > 0:
            block = rng.randbytes(min(left, 16 << 20))
            fh.write(block)
            left -= len(block)
    return path


def serve_file(argv: list[str] | None = None) -> None:
    """``python -m tests.models.fileserver FILE [--throttle BYTES_PER_S]``: serve one file in this process (so
    that the client measured does not share its interpreter), both at ``/<name>`` and through a fake Hub; prints
    ``{"url": ..., "endpoint": ..., "hub_url": ...}`` as one line of JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("file", type=Path)
    parser.add_argument("--throttle", type=float, default=None, help="bytes per second per connection")
    args = parser.parse_args(argv)
    with FileServer() as server, FakeHub() as hub:
        url = server.add(f"/{args.file.name}", args.file, throttle_bps=args.throttle)
        hub_url = hub.add("bench/repo", args.file.name, args.file, throttle_bps=args.throttle)
        print(json.dumps({"url": url, "endpoint": hub.url, "hub_url": hub_url}), flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    serve_file()
