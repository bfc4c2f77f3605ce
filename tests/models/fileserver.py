"""A local HTTP file server for download tests and the benchmark.

Serves byte strings or files on 127.0.0.1 with optional Range support, per-connection throttling, transfers
cut after N bytes, wrong bytes, forced error statuses, Content-Disposition and redirects (with headers of their
own, as the Hugging Face Hub announces a file's sha256 and size on its redirect to the CDN); records every
request (headers, Range, bytes actually sent) so tests can count what was fetched.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

SLICE = 256 * 1024


@dataclass
class Resource:
    data: bytes | Path
    ranges: bool = True
    throttle_bps: float | None = None
    cut_after: int | None = None
    cuts: int = 0
    wrong: bool = False
    statuses: list[int] = field(default_factory=list)
    content_disposition: str | None = None
    etag: str | None = '"v1"'
    content_length: bool = True
    """False: a 200 answer has no Content-Length (the body ends when the connection closes)."""
    _fd: int | None = field(default=None, repr=False)

    @property
    def size(self) -> int:
        return self.data.stat().st_size if isinstance(self.data, Path) else len(self.data)

    def read(self, offset: int, count: int) -> bytes:
        if isinstance(self.data, Path):
            if self._fd is None:
                self._fd = os.open(self.data, os.O_RDONLY)
            chunk = os.pread(self._fd, count, offset)
        else:
            chunk = self.data[offset : offset + count]
        if self.wrong and chunk:
            chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
        return chunk


@dataclass
class Redirect:
    location: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    status: int
    range: str | None
    sent: int = 0


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients closing connections early is part of the tests


class FileServer:
    """``with FileServer() as server: url = server.add("/a.safetensors", data)``."""

    def __init__(self) -> None:
        self.resources: dict[str, Resource] = {}
        self.redirects: dict[str, Redirect] = {}
        self.hits: list[Hit] = []
        self.lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def add(self, path: str, data: bytes | Path, **options: Any) -> str:
        self.resources[path] = Resource(data, **options)
        return self.url(path)

    def redirect(self, path: str, location: str, headers: dict[str, str] | None = None) -> str:
        self.redirects[path] = Redirect(location, dict(headers or {}))
        return self.url(path)

    def hub_file(
        self, path: str, data: bytes, *, announce: dict[str, str] | None = None, **options: Any
    ) -> str:
        """Serve ``data`` as the Hub serves an LFS file: ``path`` (``/<repo>/resolve/main/<file>``) answers 302
        to ``/cdn<path>`` with ``X-Linked-Etag: "<sha256>"`` and ``X-Linked-Size`` (``announce`` replaces these
        headers: wrong values, or none)."""
        if announce is None:
            announce = {
                "X-Linked-Etag": f'"{hashlib.sha256(data).hexdigest()}"',
                "X-Linked-Size": str(len(data)),
            }
        self.add("/cdn" + path, data, **options)
        return self.redirect(path, self.url("/cdn" + path), announce)

    def sent(self, path: str | None = None) -> int:
        """Body bytes actually written to clients (for ``path``, or in all)."""
        with self.lock:
            return sum(h.sent for h in self.hits if path is None or h.path == path)

    def requests(self, path: str | None = None) -> list[Hit]:
        with self.lock:
            return [h for h in self.hits if path is None or h.path == path]

    def start(self) -> FileServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FileServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


def _parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """(first, last) inclusive, None without a usable header, "bad" when unsatisfiable."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if not match or (not match.group(1) and not match.group(2)):
        return None
    if not match.group(1):
        count = int(match.group(2))
        return (max(0, size - count), size - 1) if count else "bad"
    first = int(match.group(1))
    last = int(match.group(2)) if match.group(2) else size - 1
    if first >= size or last < first:
        return "bad"
    return first, min(last, size - 1)


def _handler(server: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _record(self, status: int, range_header: str | None) -> Hit:
            hit = Hit(self.path.split("?", 1)[0], dict(self.headers.items()), status, range_header)
            with server.lock:
                server.hits.append(hit)
            return hit

        def _simple(self, status: int, headers: dict[str, str] | None = None, body: bytes = b"") -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            range_header = self.headers.get("Range")
            if path in server.redirects:
                hop = server.redirects[path]
                self._record(302, range_header)
                self._simple(302, {**hop.headers, "Location": hop.location})
                return
            resource = server.resources.get(path)
            if resource is None:
                self._record(404, range_header)
                self._simple(404, body=b"not found")
                return
            with server.lock:
                forced = resource.statuses.pop(0) if resource.statuses else None
            if forced is not None:
                self._record(forced, range_header)
                self._simple(forced, body=b"<html>error</html>")
                return
            self._serve(resource, range_header)

        def _serve(self, resource: Resource, range_header: str | None) -> None:
            size = resource.size
            wanted = _parse_range(range_header, size) if resource.ranges else None
            if wanted == "bad":
                self._record(416, range_header)
                self._simple(416, {"Content-Range": f"bytes */{size}"})
                return
            headers = {"Content-Type": "application/octet-stream"}
            if resource.ranges:
                headers["Accept-Ranges"] = "bytes"
            if resource.etag:
                headers["ETag"] = resource.etag
            if resource.content_disposition:
                headers["Content-Disposition"] = resource.content_disposition
            if isinstance(wanted, tuple):
                first, last = wanted
                status = 206
                headers["Content-Range"] = f"bytes {first}-{last}/{size}"
            else:
                first, last, status = 0, size - 1, 200
            hit = self._record(status, range_header)
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            if resource.content_length or status == 206:
                self.send_header("Content-Length", str(last - first + 1))
            else:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if self.command != "HEAD":
                self._body(resource, first, last, hit)

        def _body(self, resource: Resource, first: int, last: int, hit: Hit) -> None:
            with server.lock:
                whole = last - first + 1
                cut = (
                    resource.cut_after
                    if resource.cuts > 0 and whole > (resource.cut_after or whole)
                    else None
                )
                if cut is not None:
                    resource.cuts -= 1
            started = time.monotonic()
            offset = first
            try:
                while offset <= last:
                    count = min(SLICE, last - offset + 1)
                    if cut is not None:
                        count = min(count, cut - hit.sent)
                        if count <= 0:
                            self.wfile.flush()
                            self.connection.shutdown(socket.SHUT_RDWR)
                            self.close_connection = True
                            return
                    sent = self._send(resource, offset, count)
                    with server.lock:
                        hit.sent += sent
                    offset += sent
                    if resource.throttle_bps:
                        ahead = hit.sent / resource.throttle_bps - (time.monotonic() - started)
                        if ahead > 0:
                            time.sleep(ahead)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def _send(self, resource: Resource, offset: int, count: int) -> int:
            """Send ``count`` bytes from ``offset``: straight from the file when it is one (no copies)."""
            if isinstance(resource.data, Path) and not resource.wrong:
                resource.read(0, 0)  # opens the file once
                assert resource._fd is not None
                return os.sendfile(self.connection.fileno(), resource._fd, offset, count)
            chunk = resource.read(offset, count)
            self.wfile.write(chunk)
            return len(chunk)

    return Handler


COMMIT = "c0ffee" * 6 + "c0ff"


class FakeHub:
    """The Hub's ``resolve`` endpoint as ``HF_ENDPOINT`` reaches it: ``HEAD``/``GET /<repo>/resolve/<rev>/<path>``
    answers 302 to a CDN on another origin (as the Hub does, so huggingface_hub keeps the token off it) with
    ``X-Linked-Etag`` (the sha256), ``X-Linked-Size``, ``X-Repo-Commit`` and ``ETag``; the CDN honours ``Range``.

    ``with FakeHub() as hub: url = hub.add("org/repo", "sub/x.safetensors", data)`` gives the file's
    ``https://huggingface.co/...`` URL; point ``HF_ENDPOINT`` at ``hub.url``."""

    def __init__(self) -> None:
        self.hub, self.cdn = FileServer(), FileServer()

    @property
    def url(self) -> str:
        return self.hub.url("")

    def add(
        self, repo: str, path: str, data: bytes | Path, *, announce: dict[str, str] | None = None, **cdn: Any
    ) -> str:
        """Serve ``data`` as ``<repo>/resolve/main/<path>``; ``announce`` replaces the announced headers;
        ``cdn`` are :class:`Resource` options of the bytes (``cut_after``, ``wrong``, ``throttle_bps`` ...)."""
        if isinstance(data, Path):
            with data.open("rb") as fh:
                sha, size = hashlib.file_digest(fh, "sha256").hexdigest(), data.stat().st_size
        else:
            sha, size = hashlib.sha256(data).hexdigest(), len(data)
        headers = {"X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(size), "ETag": f'"{sha}"'}
        resolve = f"/{repo}/resolve/main/{path}"
        location = self.cdn.add(f"/blobs/{sha}", data, **cdn)
        self.hub.redirect(resolve, location, {**headers, "X-Repo-Commit": COMMIT, **(announce or {})})
        return "https://huggingface.co" + resolve

    def requests(self) -> list[Hit]:
        """Every request either server saw."""
        return self.hub.requests() + self.cdn.requests()

    def __enter__(self) -> FakeHub:
        self.hub.start(), self.cdn.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.hub.close(), self.cdn.close()


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
    """``python tests/models/fileserver.py FILE [--throttle BYTES_PER_S]``: serve one file in this process (so
    that the client measured does not share its interpreter), both at ``/<name>`` and through a fake Hub; prints
    ``{"url": ..., "endpoint": ..., "hub_url": ...}`` as one line of JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("file", type=Path)
    parser.add_argument("--throttle", type=float, default=None, help="bytes per second per connection")
    args = parser.parse_args(argv)
    server, hub = FileServer().start(), FakeHub().__enter__()
    url = server.add(f"/{args.file.name}", args.file, throttle_bps=args.throttle)
    hub_url = hub.add("bench/repo", args.file.name, args.file, throttle_bps=args.throttle)
    print(json.dumps({"url": url, "endpoint": hub.url, "hub_url": hub_url}), flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    serve_file()
