"""A small local HTTP server for tests: fixed routes, redirects, slow drips. 127.0.0.1 only."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    drip_delay_s: float = 0.0
    """Send the body one byte at a time with this delay between bytes."""


class LocalServer:
    """``with LocalServer() as srv: srv.routes["/a.png"] = Route(body=...); srv.url("/a.png")``."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server.requests.append((self.path, dict(self.headers)))
                route = server.routes.get(self.path.split("?")[0])
                if route is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(route.status)
                for key, value in route.headers.items():
                    self.send_header(key, value)
                if "Content-Length" not in route.headers:
                    self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                if route.drip_delay_s:
                    for i in range(len(route.body)):
                        if server._stop.is_set():
                            return
                        try:
                            self.wfile.write(route.body[i : i + 1])
                            self.wfile.flush()
                        except OSError:
                            return
                        time.sleep(route.drip_delay_s)
                else:
                    try:
                        self.wfile.write(route.body)
                    except OSError:
                        return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> LocalServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def stub_resolver(table: dict[str, str]) -> Callable[[str, int], list[str]]:
    """A resolver that answers from ``table`` and fails for any other name."""

    def resolve(host: str, port: int) -> list[str]:
        if host in table:
            return [table[host]]
        raise OSError(f"unknown host {host}")

    return resolve
