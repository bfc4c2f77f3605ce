"""A lock file on the shared volume, so that workers sharing it download each file once.

The lock only saves a second download; correctness never rests on it (some network file systems grant an
exclusive create to everyone): each writer still writes its own temporary file and renames it into place only
after checking it.

- Taking the lock is an exclusive create of ``.<name>.lock``; it holds the owner (host, pid, a random id) and a
  heartbeat counter that a thread of the owner advances every few seconds.
- A waiter takes a lock over when its owner is gone: a process of this machine that no longer exists, or a
  heartbeat that has not moved for ``stale_after_s`` as timed by the waiter's own clock (so clocks of other
  hosts do not matter). Taking over is an atomic rename of the stale lock to a unique name, so only one waiter
  wins, followed by a fresh exclusive create.
- Waiting has a deadline; passing it raises :class:`ModelDownloadFailed` saying who holds the lock.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from ..errors import JobCancelled, ModelDownloadFailed

log = logging.getLogger("worker.models.lock")

LOCK_FILE_BYTES = 512


@dataclass(frozen=True)
class LockTuning:
    heartbeat_s: float = 5.0
    stale_after_s: float = 60.0
    poll_s: float = 0.5


def _read_first_line(path: str) -> str:
    try:
        with open(path, encoding="ascii") as fh:
            return fh.readline().strip()
    except OSError:
        return ""


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


@dataclass(frozen=True)
class Machine:
    """Who this process is, precisely enough to tell whether another process id is alive here."""

    host: str
    boot_id: str
    pid_namespace: str

    @classmethod
    def current(cls) -> Machine:
        return cls(
            socket.gethostname(), _read_first_line("/proc/sys/kernel/random/boot_id"), _pid_namespace()
        )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists but belongs to someone else
        return True
    return True


def _owner_gone(info: dict[str, Any], machine: Machine) -> bool:
    """True when the owner ran on this machine (same host, boot and pid namespace) and has exited."""
    same = (
        info.get("host") == machine.host
        and info.get("boot_id") == machine.boot_id
        and info.get("pid_namespace") == machine.pid_namespace
        and bool(machine.boot_id)
    )
    pid = info.get("pid")
    return same and isinstance(pid, int) and not pid_alive(pid)


def _read_lock(path: Path) -> tuple[bytes, dict[str, Any]]:
    """(raw content, parsed content or {}); raises FileNotFoundError when there is no lock."""
    raw = path.read_bytes()
    try:
        info = json.loads(raw.decode("utf-8"))
    except ValueError:
        return raw, {}
    return raw, info if isinstance(info, dict) else {}


class ModelLock:
    """``with ModelLock(path, timeout_s=...):`` holds the lock, waiting for it (or taking a stale one over)."""

    def __init__(
        self,
        path: Path,
        *,
        timeout_s: float,
        tuning: LockTuning = LockTuning(),
        what: str = "",
        should_stop: Callable[[], bool] = lambda: False,
        machine: Machine | None = None,
    ) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self.tuning = tuning
        self.what = what or path.name
        self.should_stop = should_stop
        self.machine = machine or Machine.current()
        self.owner_id = uuid.uuid4().hex
        self.lost = False
        self.waited_s = 0.0
        self._fd = -1
        self._beat = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- owner side

    def _content(self) -> bytes:
        info = {
            "owner": self.owner_id,
            "host": self.machine.host,
            "boot_id": self.machine.boot_id,
            "pid_namespace": self.machine.pid_namespace,
            "pid": os.getpid(),
            "what": self.what,
            "beat": self._beat,
            "beat_at": time.time(),
        }
        return json.dumps(info).encode().ljust(LOCK_FILE_BYTES)

    def _try_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        except FileExistsError:
            return False
        self._fd = fd
        os.pwrite(fd, self._content(), 0)
        return True

    def _still_ours(self) -> bool:
        try:
            return os.fstat(self._fd).st_ino == self.path.stat().st_ino
        except OSError:
            return False

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.tuning.heartbeat_s):
            if not self._still_ours():
                self.lost = True
                log.warning("the lock %s was taken over by another worker; carrying on", self.path)
                return
            self._beat += 1
            with contextlib.suppress(OSError):
                os.pwrite(self._fd, self._content(), 0)

    # -- waiter side

    def _take_over(self, raw: bytes) -> None:
        """Move the stale lock aside atomically; put it back if it turned out not to be the one judged stale."""
        aside = self.path.with_name(f"{self.path.name}.{uuid.uuid4().hex}.stale")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:
            if aside.read_bytes() != raw:
                with contextlib.suppress(OSError):
                    os.link(aside, self.path)
        finally:
            aside.unlink(missing_ok=True)

    def acquire(self) -> None:
        started = time.monotonic()
        seen: bytes | None = None
        seen_since = started
        while not self._try_create():
            now = time.monotonic()
            try:
                raw, info = _read_lock(self.path)
            except FileNotFoundError:
                continue
            if raw != seen:
                seen, seen_since = raw, now
            if _owner_gone(info, self.machine) or now - seen_since >= self.tuning.stale_after_s:
                log.warning(
                    "taking over the stale lock %s (owner %s, pid %s, no heartbeat for %.0f s)",
                    self.path,
                    info.get("host", "?"),
                    info.get("pid", "?"),
                    now - seen_since,
                )
                self._take_over(raw)
                seen = None
                continue
            self._check_deadline(started, now, info)
            time.sleep(self.tuning.poll_s)
        self.waited_s = time.monotonic() - started
        self._thread = threading.Thread(target=self._heartbeat, name="model-lock-heartbeat", daemon=True)
        self._thread.start()

    def _check_deadline(self, started: float, now: float, info: dict[str, Any]) -> None:
        if self.should_stop():
            raise JobCancelled(f"cancelled while waiting for another worker to finish {self.what}")
        if now - started < self.timeout_s:
            return
        raise ModelDownloadFailed(
            f"waited {now - started:.0f} s for another worker (host {info.get('host', '?')}, pid "
            f"{info.get('pid', '?')}) to finish {self.what}, longer than MODEL_LOCK_TIMEOUT_S="
            f"{self.timeout_s:g}; if no worker is downloading it, delete the lock file {self.path}",
            details=[{"lock": str(self.path), "owner": info.get("host"), "pid": info.get("pid")}],
        )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._fd < 0:
            return
        try:
            if self._still_ours():
                self.path.unlink(missing_ok=True)
            else:
                self.lost = True
        finally:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> ModelLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
