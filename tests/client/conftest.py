"""One ComfyUI emulator and one worker local API per module, for the client's end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.emulator import Emulator
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
