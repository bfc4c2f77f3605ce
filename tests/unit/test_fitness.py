"""The start checks one by one, in this process, against the emulator and a temporary volume (the refusals as a
worker on RunPod meets them are in tests/faults/test_fitness.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.emulator import Emulator
from tests.support.settings import settings_for
from worker.fitness import checks
from worker.models.manifest import default_names, load_manifest

HIGH = default_names()["high_model"]


def check(name: str, emulator: Emulator, volume: Path, **env: str) -> Callable[[], object]:
    (found,) = [c for c in checks(settings_for(emulator.url, volume, **env)) if c.__name__ == name]
    return found


def test_the_checks_run_in_order_and_the_warm_up_only_when_asked(emulator: Emulator, tmp_path: Path) -> None:
    names = ["comfyui_answers", "cuda_device", "volume_writable", "default_models"]
    assert [c.__name__ for c in checks(settings_for(emulator.url, tmp_path))] == names
    assert [c.__name__ for c in checks(settings_for(emulator.url, tmp_path, WARMUP="true"))] == [
        *names,
        "warm_up",
    ]


def test_a_healthy_worker_passes_every_check(emulator: Emulator, tmp_path: Path) -> None:
    """An empty volume is fine while ComfyUI lists the default models (in a folder of its own)."""
    for found in checks(settings_for(emulator.url, tmp_path)):
        found()
    assert not list((tmp_path / ".wan-worker").iterdir()), "the volume check left its file behind"


def test_a_volume_that_takes_no_file_is_refused(emulator: Emulator, tmp_path: Path) -> None:
    (not_a_folder := tmp_path / "volume").write_text("a file where the volume should be")
    with pytest.raises(OSError, match=r"volume/\.wan-worker"):
        check("volume_writable", emulator, not_a_folder)()


def test_a_default_model_neither_on_the_volume_nor_in_comfyui_is_refused(tmp_path: Path) -> None:
    models = {"diffusion_models": [default_names()["low_model"]]}
    with Emulator(models=models) as without_high, pytest.raises(RuntimeError, match=f"{HIGH} is missing"):
        check("default_models", without_high, tmp_path)()


def test_models_are_checked_by_size_against_the_manifest_in_use(emulator: Emulator, tmp_path: Path) -> None:
    """MODELS_MANIFEST, as for `models ensure`; a file of the right size passes unhashed, a longer one not."""
    (entry,) = [e for e in load_manifest() if e.name == HIGH]
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"version": 1, "files": [{**entry.model_dump(), "size": 10}]}))
    (tmp_path / "models").mkdir()
    model = tmp_path / "models" / HIGH
    model.write_bytes(b"0123456789")
    default_models = check("default_models", emulator, tmp_path, MODELS_MANIFEST=str(manifest))
    default_models()
    model.write_bytes(b"0123456789+")
    with pytest.raises(RuntimeError, match=r"is wrong size \(11 of 10 bytes\)"):
        default_models()


def test_cpu_is_refused_unless_allowed(tmp_path: Path) -> None:
    with Emulator(cpu=True) as cpu_only:
        with pytest.raises(RuntimeError, match=r"no CUDA device \(devices: \['cpu'\]\)"):
            check("cuda_device", cpu_only, tmp_path)()
        check("cuda_device", cpu_only, tmp_path, ALLOW_CPU="true")()
