"""The volume lock: one holder at a time, stale locks taken over, a clear error past the deadline."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from worker.errors import JobCancelled, ModelDownloadFailed
from worker.models.lock import LOCK_FILE_BYTES, LockTuning, Machine, ModelLock

from .conftest import FAST_LOCK

PATIENT = replace(FAST_LOCK, stale_after_s=1.0)  # a busy machine may delay a heartbeat, not by a second


def lock(path: Path, timeout_s: float = 5.0, tuning: LockTuning = FAST_LOCK, **kwargs: object) -> ModelLock:
    return ModelLock(path, timeout_s=timeout_s, tuning=tuning, what="x.safetensors", **kwargs)  # type: ignore[arg-type]


def write_foreign_lock(path: Path, **info: object) -> None:
    content = {
        "owner": "someone",
        "host": "other-host",
        "boot_id": "b",
        "pid_namespace": "p",
        "pid": 1,
        "beat": 0,
    }
    content.update(info)
    path.write_bytes(json.dumps(content).encode().ljust(LOCK_FILE_BYTES))


def test_one_holder_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / ".x.lock"
    order: list[str] = []
    with lock(path, tuning=PATIENT):
        assert path.exists()

        def second() -> None:
            with lock(path, tuning=PATIENT):
                order.append("second")

        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(PATIENT.stale_after_s * 1.3)  # heartbeats keep the lock alive past stale_after_s
        order.append("first done")
    thread.join(5)
    assert order == ["first done", "second"]
    assert not path.exists()


def test_a_lock_of_a_dead_process_on_this_machine_is_taken_over_at_once(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    machine = Machine.current()
    path = tmp_path / ".x.lock"
    write_foreign_lock(
        path,
        host=machine.host,
        boot_id=machine.boot_id,
        pid_namespace=machine.pid_namespace,
        pid=int(dead.stdout),
    )
    started = time.monotonic()
    with lock(path) as held:
        assert time.monotonic() - started < FAST_LOCK.stale_after_s
        assert json.loads(path.read_bytes())["owner"] == held.owner_id
    assert list(tmp_path.iterdir()) == []


def test_a_lock_whose_heartbeat_stopped_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / ".x.lock"
    write_foreign_lock(path)
    started = time.monotonic()
    with lock(path):
        waited = time.monotonic() - started
    assert FAST_LOCK.stale_after_s <= waited < FAST_LOCK.stale_after_s + 2


def test_a_live_lock_is_waited_for_until_the_deadline(tmp_path: Path) -> None:
    path = tmp_path / ".x.lock"
    with lock(path, tuning=PATIENT), pytest.raises(ModelDownloadFailed) as info:
        lock(path, timeout_s=0.8, tuning=PATIENT).acquire()
    message = str(info.value)
    assert "another worker" in message and "MODEL_LOCK_TIMEOUT_S" in message and str(path) in message


def test_waiting_stops_when_the_job_is_cancelled(tmp_path: Path) -> None:
    path = tmp_path / ".x.lock"
    cancel = threading.Event()
    cancel.set()
    with lock(path), pytest.raises(JobCancelled):
        lock(path, should_stop=cancel.is_set).acquire()


def test_a_holder_whose_lock_was_taken_over_does_not_remove_the_new_one(tmp_path: Path) -> None:
    path = tmp_path / ".x.lock"
    first = lock(path)
    first.acquire()
    path.rename(tmp_path / "moved")
    second = lock(path)
    second.acquire()
    first.release()
    assert first.lost and path.exists()
    second.release()
    assert not path.exists()
