"""A stand-in for a network volume: a read-only FUSE passthrough (mfusepy over libfuse 3) that serves a folder
with a latency on every read request and a bandwidth limit per open file (a stream) and over all streams.

    python tests/support/slowfs.py SOURCE MOUNTPOINT [--latency-ms 2] [--stream-mb 200] [--total-mb 1500]

runs in the foreground until unmounted (``fusermount3 -u MOUNTPOINT``) or signalled; :func:`mounted` does that
around a ``with`` block. The kernel keeps what it read in the page cache across opens (``kernel_cache``), as a
network file system does, so a file read once is read again at memory speed until it is evicted
(``posix_fadvise(POSIX_FADV_DONTNEED)`` on the mounted file). Each request's bytes are dropped from the source
file's own page cache after they are read, so that the machine does not hold the files twice.

The limits are token buckets kept as "the time the bucket is next free": a request of n bytes reserves
n / rate seconds on its stream's bucket and on the shared one, and sleeps until both reservations and the
latency have passed. libfuse runs requests on several threads, so requests of different streams overlap.

This file imports only the standard library and mfusepy: it runs under any Python that has mfusepy.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MB = 1_000_000


def unavailable() -> str | None:
    """Why a FUSE file system cannot be mounted here, or None when it can."""
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse: this machine (or container) offers no FUSE"
    if shutil.which("fusermount3") is None:
        return "no fusermount3: install fuse3 (apt-get install fuse3)"
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as exc:  # mfusepy raises OSError when libfuse is missing
        return f"mfusepy cannot load libfuse: {exc}"
    return None


class Bucket:
    """A token bucket of ``rate`` bytes a second that lets ``burst_s`` seconds of idle time accumulate."""

    def __init__(self, rate: float, burst_s: float = 0.02) -> None:
        self.rate, self.burst_s = rate, burst_s
        self.free_at = 0.0
        self.lock = threading.Lock()

    def reserve(self, nbytes: int, now: float) -> float:
        """Reserve ``nbytes``; returns the time at which they have passed."""
        with self.lock:
            self.free_at = max(self.free_at, now - self.burst_s) + nbytes / self.rate
            return self.free_at


class SlowFS:
    """The mfusepy operations: getattr, readdir, open, read, release, statfs; every write is refused."""

    use_ns = True

    def __init__(self, root: Path, latency_s: float, stream_rate: float, total_rate: float) -> None:
        self.root, self.latency_s, self.stream_rate = root, latency_s, stream_rate
        self.total = Bucket(total_rate)
        self.streams: dict[int, Bucket] = {}

    def _path(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        try:
            st = os.lstat(self._path(path))
        except OSError as exc:
            raise _fuse_error(exc.errno or errno.EIO) from None
        found: dict[str, Any] = {key: getattr(st, key) for key in ("st_nlink", "st_size", "st_uid", "st_gid")}
        found.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
        found["st_mode"] = stat.S_IMODE(st.st_mode) & 0o555 | stat.S_IFMT(st.st_mode)  # read-only
        return found

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self._path(path))]

    def open(self, path: str, flags: int) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_TRUNC):
            raise _fuse_error(errno.EROFS)
        fd = os.open(self._path(path), os.O_RDONLY)
        self.streams[fd] = Bucket(self.stream_rate)
        return fd

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        start = time.monotonic()
        data = os.pread(fh, size, offset)
        os.posix_fadvise(fh, offset, len(data), os.POSIX_FADV_DONTNEED)
        done = max(self.streams[fh].reserve(len(data), start), self.total.reserve(len(data), start))
        time.sleep(max(0.0, max(done, start + self.latency_s) - time.monotonic()))
        return data

    def release(self, path: str, fh: int) -> int:
        self.streams.pop(fh, None)
        os.close(fh)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        st = os.statvfs(self.root)
        keys = ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_namemax")
        return {key: getattr(st, key) for key in keys}


def _fuse_error(code: int) -> Exception:
    import mfusepy

    return mfusepy.FuseOSError(code)


def evict(path: Path) -> None:
    """Drop ``path``'s pages from the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@contextlib.contextmanager
def mounted(
    source: Path,
    mountpoint: Path,
    *,
    latency_ms: float = 2.0,
    stream_mb: float = 200.0,
    total_mb: float = 1500.0,
    read_ahead_kb: int = 1024,
    python: str = sys.executable,
    log: Path | None = None,
) -> Iterator[Path]:
    """Serve ``source`` at ``mountpoint`` (created if absent) through a stand-in in its own process, with the
    kernel's read-ahead window for it set to ``read_ahead_kb`` (FUSE's default, 128 KB, makes every request
    a small one; a network file system reads ahead in larger requests, NFS typically 1 MB) where this process
    may set it (as root)."""
    if (reason := unavailable()) is not None:
        raise RuntimeError(reason)
    mountpoint.mkdir(parents=True, exist_ok=True)
    command = [python, __file__, str(source), str(mountpoint), "--latency-ms", str(latency_ms)]
    command += ["--stream-mb", str(stream_mb), "--total-mb", str(total_mb)]
    with open(log or os.devnull, "ab") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not os.path.ismount(mountpoint):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the slow volume did not mount at {mountpoint} (exit {proc.poll()})")
            time.sleep(0.02)
        st = mountpoint.stat()
        with contextlib.suppress(OSError):
            Path(f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb").write_text(
                str(read_ahead_kb)
            )
        yield mountpoint
    finally:
        if os.path.ismount(mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False, capture_output=True)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("mountpoint", type=Path)
    parser.add_argument("--latency-ms", type=float, default=2.0, help="added to every read request")
    parser.add_argument("--stream-mb", type=float, default=200.0, help="MB/s per open file")
    parser.add_argument("--total-mb", type=float, default=1500.0, help="MB/s over all open files")
    args = parser.parse_args(argv)
    import mfusepy

    operations = SlowFS(
        args.source.resolve(), args.latency_ms / 1000, args.stream_mb * MB, args.total_mb * MB
    )
    mfusepy.FUSE(
        operations, str(args.mountpoint), foreground=True, ro=True, kernel_cache=True, fsname="slowfs"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
