"""Frame interpolation through the handler: the model fetched into the volume on first use and checked against
the hash the Hub announces, the graph's extra nodes, and the video's frames and fps."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.emulator import DEFAULT_MODELS, Emulator
from tests.models.fileserver import FakeHub, model_bytes
from tests.support.images import data_uri, image_bytes
from tests.support.settings import settings_for
from tests.support.video import probe, probe_b64
from worker.config import Settings
from worker.handler import handle_job

FILM = "film_net_fp16.safetensors"
JOB = {
    "prompt": "p",
    "image_base64": data_uri(image_bytes()),
    "width": 128,
    "height": 128,
    "length": 9,
    "fps": 16,
    "interpolate": 2,
}


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    (tmp_path / "frame_interpolation").mkdir()
    return tmp_path


@pytest.fixture
def emulator(volume: Path) -> Iterator[Emulator]:
    with Emulator(
        models=DEFAULT_MODELS, model_dirs={"frame_interpolation": [volume / "frame_interpolation"]}
    ) as emu:
        yield emu


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeHub, bytes]]:
    """A fake of the Hub, reached through HF_ENDPOINT, that has the packaged manifest's FILM file."""
    data = model_bytes(300_000, seed=9)
    with FakeHub() as fake:
        fake.add("Comfy-Org/frame_interpolation", f"frame_interpolation/{FILM}", data)
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        yield fake, data


def settings(emulator: Emulator, volume: Path) -> Settings:
    return settings_for(emulator.url, volume)


def run(emulator: Emulator, volume: Path, **fields: Any) -> dict[str, Any]:
    return asyncio.run(handle_job({"id": "job-i", "input": {**JOB, **fields}}, settings(emulator, volume)))


def test_the_model_is_fetched_on_first_use_then_reused(
    emulator: Emulator, volume: Path, hub: tuple[FakeHub, bytes]
) -> None:
    server, data = hub
    result = run(emulator, volume)
    assert "error" not in result, result
    assert (volume / "frame_interpolation" / FILM).read_bytes() == data
    info = probe_b64(result["video"])
    assert (info.frames, info.fps) == (17, 32)
    assert (result["length"], result["fps"], result["output_length"], result["output_fps"]) == (
        9,
        16.0,
        17,
        32.0,
    )
    graph = emulator.state()["prompts"][-1]
    assert graph["interpolation_model"]["inputs"]["model_name"] == FILM
    assert graph["interpolate"]["inputs"]["multiplier"] == 2
    fetched = len(server.hits())
    again = run(emulator, volume, interpolate=3)
    assert "error" not in again and probe_b64(again["video"]).frames == 25
    assert len(server.hits()) == fetched  # present: one stat, no request


def test_a_file_that_does_not_match_the_announced_hash_is_not_kept(
    emulator: Emulator, volume: Path, hub: tuple[FakeHub, bytes]
) -> None:
    server, data = hub
    wrong = {"X-Linked-Etag": f'"{hashlib.sha256(b"other").hexdigest()}"'}
    server.add("Comfy-Org/frame_interpolation", f"frame_interpolation/{FILM}", data, announce=wrong)
    result = run(emulator, volume)
    assert result["error_code"] == "model_download_failed", result
    assert result["error"].startswith("model_download_failed: interpolation_model")
    assert not (volume / "frame_interpolation" / FILM).exists()
    assert emulator.state()["prompt_requests"] == []


def test_interpolation_without_it_adds_no_nodes(emulator: Emulator, volume: Path) -> None:
    result = run(emulator, volume, interpolate=1)
    assert "error" not in result, result
    graph = emulator.state()["prompts"][-1]
    assert "interpolate" not in graph and "interpolation_model" not in graph
    assert probe_b64(result["video"]).frames == 9


def test_an_interpolated_video_goes_to_the_bucket(
    emulator: Emulator, volume: Path, hub: tuple[FakeHub, bytes], s3_endpoint: str
) -> None:
    bucket = settings(emulator, volume).model_copy(
        update={
            "bucket_endpoint_url": s3_endpoint,
            "bucket_access_key_id": "k",
            "bucket_secret_access_key": "s",
            "bucket_name": "videos",
        }
    )
    result = asyncio.run(handle_job({"id": "job-b", "input": {**JOB, "output": "url"}}, bucket))
    assert "error" not in result, result
    response = requests.get(result["video_url"], timeout=10)
    assert response.status_code == 200
    assert probe(response.content).frames == 17 and result["output_fps"] == 32.0
