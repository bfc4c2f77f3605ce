"""Streaming an output file from ComfyUI's /view: fixed-size chunks through one buffer, sizes checked."""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator

import pytest

from tests.support.httpserver import HttpServer, Route
from worker.comfy import ComfyClient, OutputFile
from worker.errors import NoOutput

VIDEO = OutputFile("save_video", "wan_00001.mp4", "video", "output")


class Recorder:
    def __init__(self) -> None:
        self.expected: list[int | None] = []
        self.chunks: list[bytes] = []

    def expect(self, size: int | None) -> None:
        self.expected.append(size)

    def write(self, chunk: memoryview) -> None:
        self.chunks.append(bytes(chunk))


@pytest.fixture
def server() -> Iterator[HttpServer]:
    with HttpServer() as srv:
        yield srv


def test_chunks_have_the_asked_size_and_the_size_is_announced_first(server: HttpServer) -> None:
    data = os.urandom(10 * 999 + 123)
    server.routes["/view"] = Route(body=data)
    sink = Recorder()
    read = ComfyClient(server.url(""), timeout_s=5).read_output(VIDEO, sink, chunk_size=999)
    assert read == len(data) and b"".join(sink.chunks) == data
    assert [len(c) for c in sink.chunks] == [999] * 10 + [123]
    assert sink.expected == [len(data)]
    hit = server.hits()[-1]
    assert hit.query == {"filename": ["wan_00001.mp4"], "subfolder": ["video"], "type": ["output"]}
    assert hit.headers.get("Accept-Encoding") == "identity"


def test_fetch_output_returns_the_whole_file(server: HttpServer) -> None:
    data = os.urandom(5 * 1024 * 1024 + 1)
    server.routes["/view"] = Route(body=data)
    assert ComfyClient(server.url(""), timeout_s=5).fetch_output(VIDEO) == data


def test_a_truncated_body_is_no_output(server: HttpServer) -> None:
    server.routes["/view"] = Route(body=b"x" * 5000, cut_after=1000)
    with pytest.raises(NoOutput, match=r"wan_00001\.mp4"):
        ComfyClient(server.url(""), timeout_s=5).read_output(VIDEO, Recorder())


def test_an_encoded_body_is_decoded_and_its_size_is_not_taken_from_the_header(server: HttpServer) -> None:
    data = os.urandom(4000)
    server.routes["/view"] = Route(body=gzip.compress(data), headers={"Content-Encoding": "gzip"})
    sink = Recorder()
    assert ComfyClient(server.url(""), timeout_s=5).read_output(VIDEO, sink, chunk_size=1500) == len(data)
    assert sink.expected == [None] and b"".join(sink.chunks) == data


def test_http_errors_are_no_output(server: HttpServer) -> None:
    client = ComfyClient(server.url(""), timeout_s=5)
    with pytest.raises(NoOutput, match="no such file"):
        client.read_output(VIDEO, Recorder())
    server.routes["/view"] = Route(status=500, body=b"boom")
    with pytest.raises(NoOutput, match="HTTP 500"):
        client.read_output(VIDEO, Recorder())
