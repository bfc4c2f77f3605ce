"""The download engine: one URL to one temporary file, resumable, in parallel ranges, hashed while written.

The engine knows nothing of policies or volumes: it is given an :data:`Opener` (which applies the URL rules
at every hop and adds tokens) and the path of a temporary file that belongs to the caller alone.

- The first request asks for the first block (``Range: bytes=<first missing byte>-<end of block>``). A ``206``
  answer means ranges work: the missing bytes are fetched in blocks, in file order, over up to
  ``connections`` connections; at the end a connection with nothing left takes half of the largest block in
  flight, so all stay busy to the last byte. A ``200`` answer means the server ignores ranges: one stream,
  started again from zero if it breaks.
- A thread hashes the file while it is written, following the contiguous prefix on disk; connections may run
  only a bounded window ahead of it, so the hash reads back data written moments ago (from the page cache)
  and is complete soon after the last byte arrives.
- What is on disk is recorded, every few seconds and whenever the transfer stops, in a state file beside the
  temporary file (``<part>.json``: missing ranges, total size, ETag), so that a later call fetches only the
  missing bytes. A state that does not match the server's file (other size or ETag) is discarded.
- Network errors are retried with exponential backoff, a bounded number of times in a row without progress.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import requests
import urllib3.exceptions

from ..errors import JobCancelled, ModelDownloadFailed, UrlNotAllowed
from .volume import HASH_BLOCK, read_json, state_path, write_json_atomic

Opener = Callable[[Mapping[str, str]], requests.Response]
"""GETs the download's URL with these extra headers (following and checking redirects); returns the stream."""

Progress = Callable[[int, int | None], None]
"""Called with (bytes on disk, total bytes or None) a few times a second."""

T = TypeVar("T")
STATE_VERSION = 1
BLOCKS_PER_CONNECTION = 4
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)
_SHA256 = re.compile(r"[0-9a-f]{64}")
LINKED_ETAG = "X-Linked-Etag"
"""Hugging Face: the ETag of the file a ``resolve`` URL redirects to; the sha256 of an LFS file."""
LINKED_SIZE = "X-Linked-Size"
"""Hugging Face: the size in bytes of that file."""


@dataclass(frozen=True)
class Tuning:
    """How the engine behaves; the defaults suit multi-GB files over the internet."""

    connections: int = 8
    chunk_bytes: int = 1 << 20
    block_bytes: int = 64 << 20
    """Ranges are fetched in blocks of this size, in file order."""
    window_blocks: int = 16
    """How far (in blocks) a connection may run ahead of the contiguous prefix on disk."""
    min_piece_bytes: int = 1 << 20
    """The first request's size, and the smallest range split off a block in flight at the end."""
    max_attempts: int = 6
    backoff_s: float = 1.0
    backoff_max_s: float = 30.0
    checkpoint_s: float = 10.0
    tick_s: float = 0.25


@dataclass(frozen=True)
class Remote:
    """What the server says about the file."""

    total: int | None
    ranged: bool
    etag: str | None
    content_disposition: str | None
    final_url: str
    sha256: str | None = None
    """The file's sha256 as the server announces it (Hugging Face's ``X-Linked-Etag``), or None."""


@dataclass(frozen=True)
class Result:
    size: int
    sha256: str
    fetched: int
    """Bytes received by this call (less than ``size`` when it resumed)."""


class BadContent(ModelDownloadFailed):
    """The bytes received are whole but wrong: resuming them would be pointless."""


class HashMismatch(BadContent):
    """The bytes received do not have the expected sha256."""


class _Retryable(Exception):
    """A failure worth another attempt: a broken connection, a timeout, a 5xx or 429 answer."""


_RETRYABLE: tuple[type[BaseException], ...] = (
    _Retryable,
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.HTTPError,
    ConnectionError,
    TimeoutError,
)


# -- responses ---------------------------------------------------------------------------------------------


def _check_status(response: requests.Response, label: str) -> None:
    code = response.status_code
    if code in (200, 206):
        return
    response.close()
    if code in (408, 425, 429) or code >= 500:
        raise _Retryable(f"HTTP {code}")
    if code in (401, 403):
        raise ModelDownloadFailed(
            f"{label}: access refused (HTTP {code}); for a gated or private file set HF_TOKEN or CIVITAI_TOKEN"
        )
    if code == 404:
        raise ModelDownloadFailed(f"{label}: not found (HTTP 404); check the URL")
    raise ModelDownloadFailed(f"{label}: the server answered HTTP {code}")


def _content_range(response: requests.Response) -> tuple[int, int | None]:
    """(first byte, total size or None) of a 206 answer."""
    match = _CONTENT_RANGE.fullmatch(response.headers.get("content-range", "").strip())
    if match is None:
        raise ModelDownloadFailed(
            f"the server sent a partial answer without a usable Content-Range ({match})"
        )
    total = match.group(3)
    return int(match.group(1)), None if total == "*" else int(total)


def _range_end(response: requests.Response) -> int:
    """The byte after the last one a 206 answer carries."""
    match = _CONTENT_RANGE.fullmatch(response.headers.get("content-range", "").strip())
    if match is None:
        raise ModelDownloadFailed("the server sent a partial answer without a usable Content-Range")
    return int(match.group(2)) + 1


def _linked(response: requests.Response, header: str) -> str | None:
    """A header of the answer or of a redirect before it (Hugging Face sets ``X-Linked-*`` on its redirect)."""
    for hop in (response, *reversed(response.history)):
        value = hop.headers.get(header)
        if value:
            return value.strip()
    return None


def announced_sha256(response: requests.Response) -> str | None:
    """The sha256 a Hugging Face ``resolve`` answer announces for an LFS file (``X-Linked-Etag``), or None."""
    etag = _linked(response, LINKED_ETAG)
    if etag is None:
        return None
    value = etag.removeprefix("W/").strip('"').lower()
    return value if _SHA256.fullmatch(value) else None


def describe(response: requests.Response) -> Remote:
    """What a 200 or 206 answer (and the redirects before it) tells about the whole file."""
    if response.status_code == 206:
        _start, total = _content_range(response)
        ranged = total is not None
    else:
        length = response.headers.get("content-length")
        encoded = response.headers.get("content-encoding", "identity").lower() not in ("", "identity")
        total = int(length) if length and length.isdigit() and not encoded else None
        ranged = False
    if total is None:
        linked = _linked(response, LINKED_SIZE)
        total = int(linked) if linked and linked.isdigit() else None
    return Remote(
        total=total,
        ranged=ranged,
        etag=response.headers.get("etag"),
        content_disposition=response.headers.get("content-disposition"),
        final_url=response.url,
        sha256=announced_sha256(response),
    )


def _open(opener: Opener, label: str, start: int, end: int | None) -> requests.Response:
    headers = {"Accept-Encoding": "identity", "Range": f"bytes={start}-{'' if end is None else end}"}
    try:
        response = opener(headers)
    except UrlNotAllowed:
        raise
    except _RETRYABLE:
        raise
    except requests.RequestException as exc:
        raise ModelDownloadFailed(f"{label}: the request failed ({exc.__class__.__name__})") from exc
    _check_status(response, label)
    return response


def _retrying(action: Callable[[], T], *, label: str, tuning: Tuning) -> T:
    """``action()``, tried again after retryable failures, at most ``tuning.max_attempts`` times."""
    failures = 0
    while True:
        try:
            return action()
        except _RETRYABLE as exc:
            failures += 1
            if failures >= tuning.max_attempts:
                raise ModelDownloadFailed(f"{label}: {_reason(exc)} (after {failures} attempts)") from exc
            time.sleep(_backoff(tuning, failures))


def probe(opener: Opener, *, label: str, tuning: Tuning = Tuning()) -> Remote:
    """Ask for the first byte only, to learn the size, the name and whether ranges work."""
    response = _retrying(lambda: _open(opener, label, 0, 0), label=label, tuning=tuning)
    with contextlib.closing(response):
        return describe(response)


def _reason(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, _Retryable) else exc.__class__.__name__
    return f"the transfer failed: {text}"


def _backoff(tuning: Tuning, failures: int) -> float:
    delay = min(tuning.backoff_max_s, tuning.backoff_s * 2.0 ** max(0, failures - 1))
    return delay * (0.5 + random.random() / 2)


def _chunks(response: requests.Response, size: int) -> Iterator[bytes]:
    """The body as it arrives: a broken connection loses none of the bytes already received."""
    if response.headers.get("content-encoding", "identity").lower() not in ("", "identity"):
        yield from response.iter_content(size)
        return
    while chunk := response.raw.read1(size, decode_content=False):
        yield chunk


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    try:
        while data:
            written = os.pwrite(fd, data, offset)
            data = data[written:]
            offset += written
    except OSError as exc:
        raise ModelDownloadFailed(f"cannot write to the volume: {exc.strerror or exc}") from exc


# -- the plan of ranges ------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Piece:
    pos: int
    """Bytes before this are on disk."""
    claimed: int
    """Bytes before this are being written (claimed >= pos)."""
    end: int
    active: bool = False


class _Plan:
    """The byte ranges still missing, cut into blocks handed out in file order.

    A connection takes the first block nobody fetches, but never one further than ``window`` bytes past the
    contiguous prefix on disk: the hash, which follows that prefix, so reads back data written moments ago
    (still in the page cache) and is done soon after the last byte arrives. When no block is left, a
    connection takes the second half of the largest block still in flight, so that all stay busy to the end.
    """

    def __init__(
        self,
        remaining: Iterable[tuple[int, int]],
        *,
        total: int,
        block: int,
        min_piece: int,
        window: int,
        connections: int,
    ) -> None:
        self.total = total
        self.fetched = 0
        self._cond = threading.Condition()
        self._pieces: list[_Piece] = []
        ranges = sorted(remaining)
        if connections > 1:  # smaller files: several blocks per connection, so that the hash keeps up
            share = -(-sum(b - a for a, b in ranges) // (BLOCKS_PER_CONNECTION * connections))
            block = max(min_piece, min(block, share))
        for a, b in ranges:
            while a < b:
                self._pieces.append(_Piece(a, a, min(b, a + block)))
                a = min(b, a + block)
        self._front = 0
        self._min = max(1, min_piece)
        self._window = max(window, block)
        self._splits = connections > 1

    def _split(self, piece: _Piece) -> _Piece | None:
        free = piece.end - piece.claimed
        if free < 2 * self._min:
            return None
        middle = piece.claimed + free // 2
        new = _Piece(middle, middle, piece.end)
        piece.end = middle
        self._pieces.insert(self._pieces.index(piece) + 1, new)
        return new

    def _split_busiest(self) -> _Piece | None:
        if not self._splits:
            return None
        busy = [p for p in self._pieces if p.active and p.claimed < p.end]
        biggest = max(busy, key=lambda p: p.end - p.claimed, default=None)
        return self._split(biggest) if biggest is not None else None

    def take(self, stopping: Callable[[], bool] = lambda: False) -> _Piece | None:
        """The next block for a connection (waiting while it is too far ahead), or None when none is left."""
        with self._cond:
            while not stopping():
                piece = next((p for p in self._pieces if not p.active and p.claimed < p.end), None)
                if piece is not None and piece.pos >= self._prefix() + self._window:
                    self._cond.wait(0.1)
                    continue
                piece = piece or self._split_busiest()
                if piece is not None:
                    piece.active = True
                return piece
            return None

    def claim(self, piece: _Piece, size: int) -> tuple[int, int]:
        """Reserve up to ``size`` bytes of ``piece`` for writing: (offset, bytes)."""
        with self._cond:
            count = max(0, min(size, piece.end - piece.claimed))
            offset = piece.claimed
            piece.claimed += count
            return offset, count

    def commit(self, piece: _Piece, count: int) -> None:
        with self._cond:
            was = self._prefix()
            piece.pos += count
            self.fetched += count
            if self._prefix() != was:
                self._cond.notify_all()

    def done(self, piece: _Piece) -> bool:
        with self._cond:
            return piece.pos >= piece.end

    def _prefix(self) -> int:
        pieces = self._pieces
        while self._front < len(pieces) and pieces[self._front].pos >= pieces[self._front].end:
            self._front += 1  # pieces are in file order, and a split inserts after the piece split
        return pieces[self._front].pos if self._front < len(pieces) else self.total

    def wait_prefix(self, beyond: int, timeout: float) -> int:
        """The contiguous prefix on disk, once it passes ``beyond`` (or after ``timeout``)."""
        with self._cond:
            self._cond.wait_for(lambda: self._prefix() > beyond, timeout)
            return self._prefix()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def remaining(self) -> list[tuple[int, int]]:
        with self._cond:
            return [(p.pos, p.end) for p in self._pieces if p.pos < p.end]

    def on_disk(self) -> int:
        with self._cond:
            return self.total - sum(p.end - p.pos for p in self._pieces if p.pos < p.end)


# -- resume state ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _State:
    total: int
    etag: str | None
    remaining: list[tuple[int, int]]
    active: bool = True
    """False once the writer has stopped (failed, cancelled): another writer may take the file over."""


def _load_state(part: Path, source: str) -> _State | None:
    data = read_json(state_path(part)) if part.exists() else None
    if data is None or data.get("version") != STATE_VERSION or data.get("source") != source:
        return None
    try:
        total = int(data["total"])
        remaining = [(int(a), int(b)) for a, b in data["remaining"]]
    except (KeyError, TypeError, ValueError):
        return None
    if any(not 0 <= a <= b <= total for a, b in remaining):
        return None
    etag = data.get("etag")
    return _State(total, str(etag) if etag else None, remaining, bool(data.get("active", True)))


def _save_state(part: Path, source: str, state: _State) -> None:
    write_json_atomic(
        state_path(part),
        {
            "version": STATE_VERSION,
            "source": source,
            "total": state.total,
            "etag": state.etag,
            "remaining": [list(r) for r in state.remaining],
            "active": state.active,
        },
    )


@dataclass(frozen=True)
class PartInfo:
    on_disk: int
    active: bool


def part_info(part: Path, source: str) -> PartInfo | None:
    """How much of the download ``source`` a temporary file holds and whether its writer said it stopped."""
    state = _load_state(part, source)
    if state is None:
        return None
    return PartInfo(state.total - sum(b - a for a, b in state.remaining), state.active)


# -- the transfer ------------------------------------------------------------------------------------------


@dataclass
class _Transfer:
    opener: Opener
    part: Path
    label: str
    source: str
    max_bytes: int
    tuning: Tuning
    should_stop: Callable[[], bool]
    fd: int = -1
    total: int | None = None
    etag: str | None = None
    plan: _Plan | None = None
    digest: str | None = None
    streamed: int = 0
    abort: threading.Event = field(default_factory=threading.Event)
    errors: list[BaseException] = field(default_factory=list)

    def stopping(self) -> bool:
        return self.abort.is_set() or self.should_stop()

    def fail(self, exc: BaseException) -> None:
        self.errors.append(exc)
        self.abort.set()
        if self.plan is not None:
            self.plan.wake()

    def on_disk(self) -> int:
        return self.plan.on_disk() if self.plan is not None else self.streamed

    # ranged mode

    def run_connection(self, response: requests.Response | None) -> None:
        """Fetch blocks until none is left; the first connection starts with the first answer."""
        assert self.plan is not None
        try:
            while (piece := self.plan.take(self.stopping)) is not None:
                self.fetch_piece(piece, response)
                response = None
        except BaseException as exc:
            self.fail(exc)
        finally:
            if response is not None:
                response.close()

    def fetch_piece(self, piece: _Piece, response: requests.Response | None) -> None:
        assert self.plan is not None
        failures = 0
        while not self.plan.done(piece) and not self.stopping():
            before = piece.pos
            try:
                if response is None:
                    response = _open(self.opener, self.label, piece.pos, piece.end - 1)
                self.expect_range(response, piece.pos)
                self.write_range(piece, response)
                if piece.pos == _range_end(response):
                    continue  # the first answer covers only the start of its block: ask for the rest
                if not self.plan.done(piece) and not self.stopping():
                    raise _Retryable("the connection closed before the end of the range")
            except _RETRYABLE as exc:
                failures = 1 if piece.pos > before else failures + 1
                if failures >= self.tuning.max_attempts:
                    raise ModelDownloadFailed(
                        f"{self.label}: {_reason(exc)} ({failures} attempts in a row without progress)"
                    ) from exc
                self.abort.wait(_backoff(self.tuning, failures))
            finally:
                if response is not None:
                    response.close()
                response = None

    def expect_range(self, response: requests.Response, start: int) -> None:
        if response.status_code != 206 or _content_range(response)[0] != start:
            raise ModelDownloadFailed(
                f"{self.label}: the server stopped honouring byte ranges (asked from byte {start}, got HTTP "
                f"{response.status_code} {response.headers.get('content-range', '')})"
            )

    def write_range(self, piece: _Piece, response: requests.Response) -> None:
        assert self.plan is not None
        for chunk in _chunks(response, self.tuning.chunk_bytes):
            offset, count = self.plan.claim(piece, len(chunk))
            if count:
                _pwrite_all(self.fd, memoryview(chunk)[:count], offset)
                self.plan.commit(piece, count)
            if count < len(chunk) or self.plan.done(piece) or self.stopping():
                return

    def hash_prefix(self) -> None:
        assert self.plan is not None and self.total is not None
        try:
            digest = hashlib.sha256()
            buffer = memoryview(bytearray(HASH_BLOCK))
            offset = 0
            while offset < self.total:
                limit = self.plan.wait_prefix(offset, self.tuning.tick_s)
                if self.abort.is_set():
                    return
                while offset < limit:
                    count = os.preadv(self.fd, [buffer[: min(HASH_BLOCK, limit - offset)]], offset)
                    if not count:
                        raise ModelDownloadFailed(f"{self.label}: the temporary file is shorter than written")
                    digest.update(buffer[:count])
                    offset += count
            self.digest = digest.hexdigest()
        except BaseException as exc:
            self.fail(exc)

    def checkpoint(self, *, active: bool = True) -> None:
        """Record what is on disk (flushed first), so that a later call fetches only the rest."""
        if self.plan is None or self.total is None:
            return
        remaining = self.plan.remaining()
        with contextlib.suppress(OSError):
            os.fsync(self.fd)
        _save_state(self.part, self.source, _State(self.total, self.etag, remaining, active))

    # streaming mode (no ranges)

    def run_stream(self, response: requests.Response | None) -> None:
        failures = 0
        try:
            while not self.stopping():
                try:
                    if response is None:
                        response = _open(self.opener, self.label, 0, None)
                    if response.status_code == 206 and _content_range(response)[0] != 0:
                        raise ModelDownloadFailed(f"{self.label}: the server answered a range not asked for")
                    self.write_stream(response)
                    return
                except _RETRYABLE as exc:
                    failures += 1  # every attempt starts from zero: none of them is progress
                    if failures >= self.tuning.max_attempts:
                        raise ModelDownloadFailed(
                            f"{self.label}: {_reason(exc)} ({failures} attempts; the server does not support "
                            "resuming)"
                        ) from exc
                    self.abort.wait(_backoff(self.tuning, failures))
                finally:
                    if response is not None:
                        response.close()
                    response = None
        except BaseException as exc:
            self.fail(exc)

    def write_stream(self, response: requests.Response) -> None:
        os.ftruncate(self.fd, 0)  # a stream without ranges always starts again from the first byte
        self.streamed = 0
        digest = hashlib.sha256()
        for chunk in _chunks(response, self.tuning.chunk_bytes):
            _pwrite_all(self.fd, memoryview(chunk), self.streamed)
            digest.update(chunk)
            self.streamed += len(chunk)
            if self.streamed > self.max_bytes:
                raise UrlNotAllowed(
                    f"{self.label}: the file is larger than the limit of {self.max_bytes / 1e9:g} GB (MAX_MODEL_GB)"
                )
            if self.stopping():
                return
        if self.total is not None and self.streamed != self.total:
            raise _Retryable(f"the connection closed after {self.streamed} of {self.total} bytes")
        self.total = self.streamed
        self.digest = digest.hexdigest()


def _check_space(part: Path, needed: int, label: str) -> None:
    try:
        free = shutil.disk_usage(part.parent).free
    except OSError:
        return
    if needed > free:
        raise ModelDownloadFailed(
            f"{label}: not enough space on the volume: {needed / 1e9:.2f} GB needed, {free / 1e9:.2f} GB free"
        )


def _start(t: _Transfer, expected_size: int | None) -> tuple[requests.Response | None, _State | None, bool]:
    """The first request: ranges or one stream, and whether the saved state still holds.

    Returns (the open first response or None, the ranges to fetch or None for one stream, resumed).
    """
    state = _load_state(t.part, t.source)
    if state is not None and not state.remaining:
        t.total, t.etag = state.total, state.etag
        return None, state, True
    resuming = state is not None
    start, end = min(state.remaining) if state else (0, t.tuning.min_piece_bytes)
    last = min(end, start + t.tuning.min_piece_bytes) - 1  # a small first block: the size is not known yet
    response = _retrying(lambda: _open(t.opener, t.label, start, last), label=t.label, tuning=t.tuning)
    try:
        remote = describe(response)
        t.total, t.etag = remote.total, remote.etag
        if remote.ranged and _content_range(response)[0] != start:
            raise ModelDownloadFailed(f"{t.label}: the server answered a range not asked for")
        if state is not None and (
            not remote.ranged
            or state.total != remote.total
            or (state.etag and remote.etag and state.etag != remote.etag)
        ):
            state = None
        _check_total(t, expected_size)
    except BaseException:
        response.close()
        raise
    if resuming and state is None:  # the saved state does not match the server's file: start afresh
        response.close()
        return None, _State(t.total or 0, t.etag, [(0, t.total or 0)]) if remote.ranged else None, False
    if not remote.ranged:
        return response, None, False
    if state is None:
        return response, _State(t.total or 0, t.etag, [(0, t.total or 0)]), False
    return response, state, True


def _check_total(t: _Transfer, expected_size: int | None) -> None:
    if expected_size is not None and t.total is not None and t.total != expected_size:
        raise ModelDownloadFailed(
            f"{t.label}: the server's file is {t.total} bytes, but {expected_size} bytes were expected"
        )
    if t.total is not None and t.total > t.max_bytes:
        raise UrlNotAllowed(
            f"{t.label}: the file is {t.total / 1e9:.1f} GB, more than the limit of {t.max_bytes / 1e9:g} GB "
            "(MAX_MODEL_GB)"
        )


def _monitor(t: _Transfer, threads: list[threading.Thread], progress: Progress | None) -> None:
    last_checkpoint = time.monotonic()
    while alive := [th for th in threads if th.is_alive()]:
        alive[0].join(t.tuning.tick_s)
        if t.should_stop():
            t.abort.set()
            if t.plan is not None:
                t.plan.wake()
        if progress is not None:
            progress(t.on_disk(), t.total)
        if t.plan is not None and time.monotonic() - last_checkpoint >= t.tuning.checkpoint_s:
            t.checkpoint()
            last_checkpoint = time.monotonic()
    if progress is not None:
        progress(t.on_disk(), t.total)  # the last count, so that a complete download says so


def _threads(
    t: _Transfer, response: requests.Response | None, state: _State | None
) -> list[threading.Thread]:
    if state is None:
        return [threading.Thread(target=t.run_stream, args=(response,), name="download-stream", daemon=True)]
    assert t.total is not None
    _check_space(t.part, sum(b - a for a, b in state.remaining), t.label)
    tuning = t.tuning
    t.plan = _Plan(
        state.remaining,
        total=t.total,
        block=tuning.block_bytes,
        min_piece=tuning.min_piece_bytes,
        window=tuning.window_blocks * tuning.block_bytes,
        connections=tuning.connections,
    )
    threads = [
        threading.Thread(
            target=t.run_connection, args=(response if i == 0 else None,), name=f"download-{i}", daemon=True
        )
        for i in range(tuning.connections)
    ]
    threads.append(threading.Thread(target=t.hash_prefix, name="download-hash", daemon=True))
    return threads


def download(
    opener: Opener,
    part: Path,
    *,
    label: str,
    source: str,
    expected_size: int | None = None,
    expected_sha256: str | None = None,
    max_bytes: int,
    tuning: Tuning = Tuning(),
    progress: Progress | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> Result:
    """Fetch into ``part`` (created or resumed), check size and hash, and return what was written.

    ``source`` identifies the download (e.g. a hash of the URL) so that a state file is only resumed for the
    same one. On failure ``part`` and its state stay for a later resume, except after a hash mismatch, which
    raises :class:`HashMismatch` (the caller removes the file). Nothing is renamed here.
    """
    t = _Transfer(opener, part, label, source, max_bytes, tuning, should_stop)
    t.fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
    threads: list[threading.Thread] = []
    success = False
    try:
        response, state, resumed = _start(t, expected_size)
        if not resumed:
            os.ftruncate(t.fd, 0)
        threads = _threads(t, response, state)
        for thread in threads:
            thread.start()
        _monitor(t, threads, progress)
        if t.errors:
            raise t.errors[0]
        if t.digest is None and t.should_stop():
            raise JobCancelled(f"{label}: the download was cancelled; the next attempt resumes it")
        result = _finish(t, expected_size, expected_sha256)
        success = True
        return result
    finally:
        try:
            _stop_threads(t, threads)
            if t.plan is not None and not success:
                t.checkpoint(active=False)
        finally:
            os.close(t.fd)
            if success:
                state_path(part).unlink(missing_ok=True)


def _stop_threads(t: _Transfer, threads: list[threading.Thread]) -> None:
    """Make sure no thread writes to the file once this call returns (they stop at their next chunk)."""
    if any(th.is_alive() for th in threads):
        t.abort.set()
        if t.plan is not None:
            t.plan.wake()
        for thread in threads:
            thread.join()


def _finish(t: _Transfer, expected_size: int | None, expected_sha256: str | None) -> Result:
    size = os.fstat(t.fd).st_size
    if t.total is not None and size != t.total:
        raise ModelDownloadFailed(f"{t.label}: the temporary file has {size} bytes, {t.total} expected")
    if expected_size is not None and size != expected_size:
        raise ModelDownloadFailed(f"{t.label}: received {size} bytes, {expected_size} expected")
    if t.digest is None:
        raise ModelDownloadFailed(f"{t.label}: the transfer ended before the whole file was hashed")
    os.fsync(t.fd)
    if expected_sha256 is not None and t.digest != expected_sha256.lower():
        raise HashMismatch(
            f"{t.label}: the sha256 of the downloaded bytes did not match (expected {expected_sha256}, got "
            f"{t.digest}); the file was discarded",
            details=[{"expected_sha256": expected_sha256, "sha256": t.digest}],
        )
    fetched = t.plan.fetched if t.plan is not None else t.streamed
    return Result(size=size, sha256=t.digest, fetched=fetched)
