"""The suite's local HTTP server: what each behaviour of a route does on the wire."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.httpserver import HttpServer, Request, Route, json_route, redirect

DATA = bytes(range(256)) * 40  # 10240 bytes


@pytest.fixture
def server() -> Iterator[HttpServer]:
    with HttpServer() as srv:
        yield srv


def test_fixed_answers_redirects_and_the_request_log(server: HttpServer) -> None:
    server.routes["/a"] = Route(body=b"hello", headers={"Content-Type": "text/plain"})
    server.routes["/hop"] = redirect("/a", 307, **{"X-Linked-Etag": '"abc"'})
    response = requests.get(server.url("/hop?x=1"), headers={"X-Test": "yes"}, timeout=5)
    assert (response.status_code, response.text, response.headers["Content-Type"]) == (
        200,
        "hello",
        "text/plain",
    )
    assert response.history[0].headers["X-Linked-Etag"] == '"abc"'
    assert requests.get(server.url("/nothing"), timeout=5).status_code == 404
    assert [(h.path, h.status, h.sent) for h in server.hits()] == [
        ("/hop", 307, 0),
        ("/a", 200, 5),
        ("/nothing", 404, 9),
    ]
    assert server.hits("/hop")[0].query == {"x": ["1"]} and server.hits("/hop")[0].headers["X-Test"] == "yes"
    head = requests.head(server.url("/a"), timeout=5)
    assert head.headers["Content-Length"] == "5" and server.hits("/a")[-1].sent == 0


def test_ranges(server: HttpServer, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(DATA)
    server.routes["/bytes"] = Route(body=DATA, ranges=True)
    server.routes["/file"] = Route(body=tmp_path / "f", ranges=True)
    server.routes["/plain"] = Route(body=DATA)
    for path in ("/bytes", "/file"):
        part = requests.get(server.url(path), headers={"Range": "bytes=100-199"}, timeout=5)
        assert (part.status_code, part.content, part.headers["Content-Range"]) == (
            206,
            DATA[100:200],
            "bytes 100-199/10240",
        )
        tail = requests.get(server.url(path), headers={"Range": "bytes=-10"}, timeout=5)
        assert (tail.status_code, tail.content) == (206, DATA[-10:])
        rest = requests.get(server.url(path), headers={"Range": "bytes=10000-"}, timeout=5)
        assert rest.content == DATA[10000:] and rest.headers["Accept-Ranges"] == "bytes"
        bad = requests.get(server.url(path), headers={"Range": "bytes=20000-"}, timeout=5)
        assert (bad.status_code, bad.headers["Content-Range"]) == (416, "bytes */10240")
    whole = requests.get(server.url("/plain"), headers={"Range": "bytes=0-9"}, timeout=5)
    assert (whole.status_code, whole.content) == (200, DATA) and "Accept-Ranges" not in whole.headers


def test_a_cut_transfer_ends_the_connection_early(server: HttpServer, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(DATA)
    for path, body in (("/bytes", DATA), ("/file", tmp_path / "f")):
        server.routes[path] = Route(body=body, cut_after=1000, cuts=1)
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            requests.get(server.url(path), timeout=5).raise_for_status()
        assert requests.get(server.url(path), timeout=5).content == DATA  # only the first answer is cut
        assert [h.sent for h in server.hits(path)] == [1000, len(DATA)]


def test_wrong_bytes_keep_the_length_and_a_dropped_connection_has_no_answer(
    server: HttpServer, tmp_path: Path
) -> None:
    (tmp_path / "f").write_bytes(DATA)
    for path, body in (("/bytes", DATA), ("/file", tmp_path / "f")):
        server.routes[path] = Route(body=body, ranges=True, wrong=True)
        whole = requests.get(server.url(path), timeout=5).content
        part = requests.get(server.url(path), headers={"Range": "bytes=5000-"}, timeout=5).content
        assert (len(whole), len(part)) == (len(DATA), len(DATA) - 5000)
        assert whole != DATA and part != DATA[5000:]
    server.routes["/drop"] = Route(body=b"never sent", drop=True)
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(server.url("/drop"), timeout=5)
    assert [(h.status, h.sent) for h in server.hits("/drop")] == [(0, 0)]


def test_an_answer_without_a_length_ends_with_the_connection(server: HttpServer) -> None:
    server.routes["/open"] = Route(body=DATA, content_length=False)
    response = requests.get(server.url("/open"), timeout=5)
    assert response.content == DATA and "Content-Length" not in response.headers


def test_throttle_and_drip_slow_the_body_down(server: HttpServer) -> None:
    server.routes["/slow"] = Route(body=DATA, throttle_bps=20_000)
    server.routes["/drip"] = Route(body=b"abcde", drip_delay_s=0.1)
    started = time.monotonic()
    assert requests.get(server.url("/slow"), timeout=5).content == DATA
    assert 0.4 < time.monotonic() - started < 2
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET /drip HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(5)
        started = time.monotonic()
        received = b""
        while not received.endswith(b"abcde"):
            received += sock.recv(100)
    assert time.monotonic() - started > 0.35


def test_handlers_get_the_request_and_prefixes_route(server: HttpServer) -> None:
    def echo(request: Request) -> Route:
        return json_route({"method": request.method, "path": request.path, "body": request.json()}, 201)

    server.routes["/v2/*"] = echo
    server.routes["/v2/special"] = Route(body=b"exact first")
    server.routes["/v2/broken/*"] = lambda request: Route(body=request.body[100000])  # raises IndexError
    response = requests.post(server.url("/v2/ep/run"), json={"input": 1}, timeout=5)
    assert response.status_code == 201
    assert response.json() == {"method": "POST", "path": "/v2/ep/run", "body": {"input": 1}}
    assert requests.get(server.url("/v2/special"), timeout=5).text == "exact first"
    broken = requests.get(server.url("/v2/broken/x"), timeout=5)
    assert broken.status_code == 500 and "IndexError" in broken.text
