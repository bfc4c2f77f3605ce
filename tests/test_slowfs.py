"""The slow-volume stand-in (tests/support/slowfs.py): files go through unchanged, read-only, and reads are
held back by the latency per request and the bandwidth limits per stream and in all. The bounds are generous:
they check that throttling happens, never how fast a machine is. Skipped, with the reason, where this machine
or container offers no FUSE."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support import slowfs

MB = 1_000_000

pytestmark = pytest.mark.skipif(slowfs.unavailable() is not None, reason=f"{slowfs.unavailable()}")


@pytest.fixture
def source(tmp_path: Path) -> Path:
    folder = tmp_path / "source"
    (folder / "models").mkdir(parents=True)
    for index in range(4):
        (folder / "models" / f"part{index}.bin").write_bytes(os.urandom(4 * MB))
    return folder


@contextlib.contextmanager
def mount(source: Path, **limits: float) -> Iterator[Path]:
    with slowfs.mounted(source, source.parent / "mnt", log=source.parent / "slowfs.log", **limits) as mnt:
        yield mnt


def timed_read(path: Path) -> float:
    slowfs.evict(path)
    started = time.monotonic()
    with open(path, "rb", buffering=0) as fh:
        while fh.read(1 << 20):
            pass
    return time.monotonic() - started


def test_bucket_spaces_requests_by_their_size() -> None:
    bucket = slowfs.Bucket(rate=100 * MB, burst_s=0.0)
    assert bucket.reserve(10 * MB, now=5.0) == pytest.approx(5.1)
    assert bucket.reserve(10 * MB, now=5.0) == pytest.approx(5.2)  # queued behind the first
    assert bucket.reserve(10 * MB, now=9.0) == pytest.approx(9.1)  # idle time is not saved up past the burst


def test_files_go_through_unchanged_and_read_only(source: Path) -> None:
    with mount(source) as mnt:
        assert sorted(os.listdir(mnt / "models")) == [f"part{i}.bin" for i in range(4)]
        for index in range(4):
            name = f"models/part{index}.bin"
            assert (mnt / name).read_bytes() == (source / name).read_bytes()
        with pytest.raises(OSError) as refused:
            (mnt / "models" / "part0.bin").write_bytes(b"x")
        assert refused.value.errno in (errno.EROFS, errno.EACCES)


def test_a_stream_is_held_to_its_bandwidth(source: Path) -> None:
    with mount(source, latency_ms=0, stream_mb=20, total_mb=10_000) as mnt:
        # 4 MB at 20 MB/s take 0.2 s; a machine only ever makes it slower.
        assert timed_read(mnt / "models" / "part0.bin") >= 0.15


def test_all_streams_share_the_total_bandwidth(source: Path) -> None:
    with mount(source, latency_ms=0, stream_mb=1000, total_mb=40) as mnt:
        files = [mnt / "models" / f"part{i}.bin" for i in range(4)]
        started = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(timed_read, files))
        # 16 MB at 40 MB/s in all take 0.4 s, however many streams.
        assert time.monotonic() - started >= 0.3


def test_every_read_request_waits_the_latency(source: Path) -> None:
    with mount(source, latency_ms=100, stream_mb=10_000, total_mb=10_000, read_ahead_kb=4) as mnt:
        path = mnt / "models" / "part1.bin"
        slowfs.evict(path)
        started = time.monotonic()
        with open(path, "rb", buffering=0) as fh:
            for index in range(5):  # five small reads far apart: five requests
                fh.seek(index * 800_000)
                fh.read(10)
        assert time.monotonic() - started >= 0.4


def test_what_was_read_stays_in_the_page_cache_until_evicted(source: Path) -> None:
    with mount(source) as mnt:
        path = mnt / "models" / "part2.bin"
        path.read_bytes()
        path.read_bytes()  # a second open keeps the cache (kernel_cache)
        assert resident(path) >= 4 * MB
        slowfs.evict(path)
        assert resident(path) == 0


def resident(path: Path) -> int:
    out = subprocess.run(
        ["fincore", "-bnr", "-o", "RES", str(path)], capture_output=True, text=True, check=True
    )
    return int(out.stdout)
