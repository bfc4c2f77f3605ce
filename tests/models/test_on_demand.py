"""The manifest's on-demand files (the frame interpolation models): fetched from the Hub by the first job that
needs them, checked against the sha256 the Hub announces, then a stat for every later job."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from worker.config import Settings
from worker.errors import ModelDownloadFailed, UrlNotAllowed
from worker.models.fetch import ModelRef
from worker.models.manifest import find, load_manifest
from worker.models.volume import State, file_status

from .conftest import run
from .fileserver import FakeHub, model_bytes

FILM = "film_net_fp16.safetensors"


def film_ref() -> ModelRef:
    """What a job whose graph interpolates frames asks for: the packaged manifest's FILM file."""
    entry = find(load_manifest(), "frame_interpolation", FILM)
    assert entry is not None and entry.on_demand and entry.url.startswith("https://huggingface.co/")
    return ModelRef("interpolation_model", entry.kind, entry.url, entry.name)


def test_an_on_demand_file_is_fetched_by_the_first_job_then_costs_no_request(
    hub: FakeHub, settings: Settings, volume: Path
) -> None:
    data = model_bytes(300_000, seed=1)
    hub.add("Comfy-Org/frame_interpolation", f"frame_interpolation/{FILM}", data)
    seen: list[tuple[str, int, int | None]] = []
    assert run([film_ref()], settings, on_progress=lambda *a: seen.append(a)) == {"interpolation_model": FILM}
    path = volume / "frame_interpolation" / FILM
    assert path.read_bytes() == data and seen[-1] == ("interpolation_model", len(data), len(data))
    assert file_status(path, None, hashlib.sha256(data).hexdigest()).state is State.VERIFIED
    count = len(hub.hits())
    assert run([film_ref()], settings) == {"interpolation_model": FILM}
    assert len(hub.hits()) == count


def test_bytes_other_than_the_announced_sha256_are_not_kept(
    hub: FakeHub, settings: Settings, volume: Path
) -> None:
    data = model_bytes(300_000, seed=2)
    wrong = {"X-Linked-Etag": f'"{hashlib.sha256(b"other").hexdigest()}"'}
    hub.add("Comfy-Org/frame_interpolation", f"frame_interpolation/{FILM}", data, announce=wrong)
    with pytest.raises(
        ModelDownloadFailed, match=r"^interpolation_model \(https://huggingface.co/.*did not match"
    ):
        run([film_ref()], settings)
    assert not (volume / "frame_interpolation" / FILM).exists()


def test_the_size_cap_holds_for_what_the_hub_announces(
    hub: FakeHub, settings: Settings, volume: Path
) -> None:
    hub.add("Comfy-Org/frame_interpolation", f"frame_interpolation/{FILM}", model_bytes(300_000, seed=3))
    with pytest.raises(UrlNotAllowed, match="MAX_MODEL_GB"):
        run([film_ref()], settings.model_copy(update={"max_model_gb": 0.0001}))
    assert not any("blobs" in h.path for h in hub.hits())


def test_a_file_missing_on_the_hub_says_so(hub: FakeHub, settings: Settings) -> None:
    with pytest.raises(ModelDownloadFailed, match=r"HTTP 404\); check the URL"):
        run([film_ref()], settings)
