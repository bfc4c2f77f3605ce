"""A fake RunPod API and a start image, for the client's tests; one ComfyUI emulator and one worker local API per
module, for its end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.client.fake_runpod import FakeRunPod
from tests.emulator import Emulator
from tests.support.images import image_bytes
from tests.support.worker_proc import LocalApi, worker_env


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with Emulator() as emu:
        yield emu


@pytest.fixture(scope="module")
def local_api(emulator: Emulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalApi]:
    volume = tmp_path_factory.mktemp("volume")
    logs = tmp_path_factory.mktemp("logs")
    server = LocalApi(
        worker_env(emulator.url, volume, COMFY_IDLE_TIMEOUT_S="10", JOB_TIMEOUT_S="60"),
        cwd=logs,
        log_path=logs / "worker.log",
    )
    yield server
    server.stop()


@pytest.fixture
def runpod(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeRunPod]:
    with FakeRunPod() as server:
        monkeypatch.setenv("RUNPOD_API_KEY", server.api_key)
        monkeypatch.setenv("RUNPOD_API_BASE", server.base_url)
        yield server


@pytest.fixture
def png(tmp_path: Path) -> Path:
    path = tmp_path / "start.png"
    path.write_bytes(image_bytes("PNG"))
    return path
