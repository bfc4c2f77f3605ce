"""One ComfyUI emulator and one worker local API per module; faults reset before every test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.emulator import DEFAULT_MODELS, Emulator
from tests.support.worker_proc import LocalApi, worker_env

DEFAULTS = {
    **DEFAULT_MODELS,
    "loras": [
        *DEFAULT_MODELS["loras"],
        "style_high.safetensors",
        "style_low.safetensors",
        "motion_high.safetensors",
    ],
    "clip_vision": ["clip_vision_h.safetensors"],
    "frame_interpolation": ["film_net_fp16.safetensors"],
}


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with Emulator(models=DEFAULTS) as emu:
        yield emu


@pytest.fixture(autouse=True)
def _reset_faults(request: pytest.FixtureRequest) -> None:
    if "emulator" in request.fixturenames:
        request.getfixturevalue("emulator").set_faults()


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The network volume; the interpolation model, fetched on first use, is already there."""
    root = tmp_path_factory.mktemp("volume")
    (root / "frame_interpolation").mkdir()
    (root / "frame_interpolation" / "film_net_fp16.safetensors").write_bytes(b"present")
    return root


@pytest.fixture(scope="module")
def api(emulator: Emulator, volume: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalApi]:
    logs = tmp_path_factory.mktemp("logs")
    server = LocalApi(
        worker_env(emulator.url, volume, COMFY_IDLE_TIMEOUT_S="10", JOB_TIMEOUT_S="60"),
        cwd=logs,
        log_path=logs / "worker.log",
    )
    yield server
    server.stop()
