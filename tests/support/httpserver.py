"""The suite's one local HTTP server: a table of routes on 127.0.0.1, each a fixed answer or a handler.

    with HttpServer() as server:
        server.routes["/a.png"] = Route(body=png, headers={"Content-Type": "image/png"})
        server.routes["/resolve/main/m.safetensors"] = redirect("/cdn/m", **{"X-Linked-Size": "5"})
        server.routes["/cdn/m"] = Route(body=b"bytes", ranges=True, throttle_bps=1e6)
        server.routes["/v2/*"] = lambda request: json_route({"id": "job-1"})  # a prefix, and a handler
        requests.get(server.url("/a.png"))
        server.hits("/a.png")  # what was asked: method, path, headers, status, Range, body bytes sent

A fixed answer (:class:`Route`) can serve a byte string or a file, honour ``Range``, drip or throttle its body,
cut the connection after some bytes, serve wrong bytes, leave out ``Content-Length``, or drop the connection
without answering. A handler gets the :class:`Request` and returns the :class:`Route` to answer with (it may
block: each connection has its own thread).

Standard library only: ``tests/container/standin_comfy.py`` runs it in an isolated interpreter.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

CHUNK = 256 * 1024


@dataclass
class Route:
    """A fixed answer."""

    status: int = 200
    body: bytes | Path = b""
    headers: dict[str, str] = field(default_factory=dict)
    ranges: bool = False
    """Answer ``Range: bytes=first-last`` with 206 (416 when it cannot be met) and announce ``Accept-Ranges``."""
    content_length: bool = True
    """False: no ``Content-Length``; the body ends when the connection closes."""
    drip_delay_s: float = 0.0
    """Send the body one byte at a time, with this pause after each."""
    throttle_bps: float | None = None
    """Send at most this many body bytes a second."""
    cut_after: int | None = None
    """Close the connection after this many body bytes (of an answer that has more)."""
    cuts: int | None = None
    """How many answers ``cut_after`` cuts; None: all of them."""
    wrong: bool = False
    """Send other bytes than the body's (the first byte of every write flipped), at the body's length."""
    drop: bool = False
    """Close the connection without an answer."""

    @property
    def size(self) -> int:
        return self.body.stat().st_size if isinstance(self.body, Path) else len(self.body)


def redirect(location: str, status: int = 302, **headers: str) -> Route:
    """An answer that sends the client to ``location``, with headers of its own (the Hub's ``X-Linked-Etag``)."""
    return Route(status=status, headers={**headers, "Location": location})


def json_route(data: Any, status: int = 200) -> Route:
    return Route(status, json.dumps(data).encode(), {"Content-Type": "application/json"})


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"null")


@dataclass
class Hit:
    """One request as the server saw it, and how much of the body it sent."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    status: int = 0
    range: str | None = None
    sent: int = 0
    """Body bytes handed to the connection (counted before the client can read them)."""


Handler = Callable[[Request], Route]
_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | bool | None:
    """(first, last) of a satisfiable ``Range``, None without a usable one, False for an unsatisfiable one."""
    match = _RANGE.match((header or "").strip())
    if not match or match.groups() == ("", ""):
        return None
    if not match.group(1):  # the last n bytes
        count = int(match.group(2))
        return (max(0, size - count), size - 1) if count else False
    first = int(match.group(1))
    last = min(int(match.group(2) or size - 1), size - 1)
    return (first, last) if first < size and first <= last else False


class HttpServer:
    """A threaded HTTP/1.1 server; ``routes`` maps a path (or a prefix ending in ``/*``) to an answer."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.routes: dict[str, Route | Handler] = {}
        self.log: list[Hit] = []
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self._httpd = ThreadingHTTPServer((host, port), _handler(self))
        self._httpd.daemon_threads = True
        self._httpd.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def route(self, path: str) -> Route | Handler | None:
        if path in self.routes:
            return self.routes[path]
        prefixes = [p for p in self.routes if p.endswith("/*") and path.startswith(p[:-1])]
        return self.routes[max(prefixes, key=len)] if prefixes else None

    def hits(self, path: str | None = None) -> list[Hit]:
        with self.lock:
            return [h for h in self.log if path is None or h.path == path]

    def sent(self, path: str | None = None) -> int:
        """Body bytes written to clients (for ``path``, or in all)."""
        return sum(h.sent for h in self.hits(path))

    def start(self) -> Self:
        self._thread.start()
        return self

    def close(self) -> None:
        self.stopped.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _handler(server: HttpServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self._answer()

        do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

        def _answer(self) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            request = Request(
                self.command,
                url.path,
                parse_qs(url.query),
                dict(self.headers.items()),
                self.rfile.read(length),
            )
            hit = Hit(self.command, url.path, request.query, request.headers, range=self.headers.get("Range"))
            with server.lock:
                server.log.append(hit)
            found = server.route(url.path)
            try:
                route = found(request) if callable(found) else found or Route(404, b"not found")
            except Exception as ex:  # a handler's bug: the test sees it in the answer
                route = Route(500, f"{type(ex).__name__}: {ex}".encode())
            self._send(route, hit)

        def _send(self, route: Route, hit: Hit) -> None:
            if route.drop:
                self.close_connection = True
                return
            size = route.size
            first, last, status = 0, size - 1, route.status
            headers = dict(route.headers)
            wanted = parse_range(hit.range, size) if route.ranges and status == 200 else None
            if route.ranges:
                headers.setdefault("Accept-Ranges", "bytes")
            if wanted is False:
                first, last, status = 0, -1, 416
                headers["Content-Range"] = f"bytes */{size}"
            elif isinstance(wanted, tuple):
                (first, last), status = wanted, 206
                headers["Content-Range"] = f"bytes {first}-{last}/{size}"
            hit.status = status
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            if not route.content_length and status != 206:
                self.send_header("Connection", "close")
                self.close_connection = True
            elif "Content-Length" not in headers:
                self.send_header("Content-Length", str(last - first + 1))
            self.end_headers()
            if self.command != "HEAD":
                self._body(route, first, last, hit)

        def _body(self, route: Route, first: int, last: int, hit: Hit) -> None:
            end = last + 1
            with server.lock:
                if route.cut_after is not None and end - first > route.cut_after and route.cuts != 0:
                    end = first + route.cut_after
                    route.cuts = None if route.cuts is None else route.cuts - 1
            started = time.monotonic()
            offset = first
            step = 1 if route.drip_delay_s else CHUNK
            if route.throttle_bps:  # about twenty writes a second
                step = max(1, min(step, int(route.throttle_bps / 20)))
            source = route.body.open("rb") if isinstance(route.body, Path) else io.BytesIO(route.body)
            # a file's bytes go straight to the socket (no copy), unless they are to be altered
            sendfile = isinstance(route.body, Path) and not route.wrong
            try:
                while offset < end and not server.stopped.is_set():
                    count = min(step, end - offset)
                    with server.lock:  # counted before the client can have them, so a test never sees fewer
                        hit.sent += count
                    if sendfile:
                        written = os.sendfile(self.connection.fileno(), source.fileno(), offset, count)
                    else:
                        source.seek(offset)
                        chunk = source.read(count)
                        self.wfile.write(bytes([chunk[0] ^ 0xFF]) + chunk[1:] if route.wrong else chunk)
                        written = len(chunk)
                    with server.lock:
                        hit.sent -= count - written
                    offset += written
                    if route.drip_delay_s:
                        time.sleep(route.drip_delay_s)
                    if route.throttle_bps:
                        time.sleep(max(0.0, hit.sent / route.throttle_bps - (time.monotonic() - started)))
                if end <= last:  # cut short: the connection ends here
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
            except OSError:
                self.close_connection = True
            finally:
                source.close()

    return Handler


def stub_resolver(table: dict[str, str]) -> Callable[[str, int], list[str]]:
    """A resolver that answers from ``table`` and fails for any other name."""

    def resolve(host: str, port: int) -> list[str]:
        if host in table:
            return [table[host]]
        raise OSError(f"unknown host {host}")

    return resolve
