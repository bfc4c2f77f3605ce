"""The read-ahead: the default models on the volume are read into the page cache, within the memory budget,
skipping what is cached already; page-cache residency is read with util-linux's fincore."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from worker import readahead
from worker.config import Settings
from worker.models.manifest import load_manifest
from worker.readahead import cached_bytes, plan

MB = 1 << 20


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages are not dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def cold_file(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    evict(path)
    return path


def test_fincore_tells_a_cached_file_from_an_evicted_one(tmp_path: Path) -> None:
    path = tmp_path / "a.safetensors"
    path.write_bytes(os.urandom(2 * MB))
    path.read_bytes()
    assert cached_bytes(path) == 2 * MB
    evict(path)
    assert cached_bytes(path) == 0


def test_without_fincore_nothing_counts_as_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.safetensors"
    path.write_bytes(os.urandom(MB))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert cached_bytes(path) == 0


def test_uncached_files_are_read_into_the_page_cache(tmp_path: Path) -> None:
    paths = [cold_file(tmp_path / "a", 5 * MB + 123), cold_file(tmp_path / "b", 3 * MB)]
    assert readahead.readahead(paths, budget=1 << 40, threads=3) == 8 * MB + 123
    assert [cached_bytes(p) for p in paths] == [5 * MB + 4096, 3 * MB]  # whole pages


def test_a_cached_file_is_skipped(tmp_path: Path) -> None:
    cached = tmp_path / "cached"
    cached.write_bytes(os.urandom(2 * MB))
    cached.read_bytes()
    cold = cold_file(tmp_path / "cold", 2 * MB)
    assert {path for path, _, _ in plan([cached, cold], budget=1 << 40)} == {cold}


def test_the_budget_bounds_what_is_read_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readahead, "CHUNK", MB)
    first, second, third = (cold_file(tmp_path / name, 3 * MB) for name in ("first", "second", "third"))
    chunks = plan([first, second, third], budget=4 * MB + 5)
    assert chunks == [
        (first, 0, MB),
        (first, MB, MB),
        (first, 2 * MB, MB),
        (second, 0, MB),
        (second, MB, 5),
    ]
    assert readahead.readahead([first, second, third], budget=4 * MB + 5) == 4 * MB + 5
    assert cached_bytes(third) == 0
    assert cached_bytes(first) == 3 * MB


def test_main_reads_the_default_models_on_the_volume(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    entries = [e for e in load_manifest() if not e.on_demand]
    folders = {"diffusion_models": "models"}
    models = [cold_file(tmp_path / folders.get(e.kind, e.kind) / e.name, MB) for e in entries[:3]]
    other = cold_file(tmp_path / "loras" / "someone_elses.safetensors", MB)

    with caplog.at_level("INFO", logger="worker"):
        assert readahead.main(Settings(volume_root=tmp_path, readahead=False)) == 0
    assert [cached_bytes(p) for p in [*models, other]] == [0, 0, 0, 0]
    assert "read-ahead is off (READAHEAD=false)" in caplog.text and "GB" not in caplog.text

    assert readahead.main(Settings(volume_root=tmp_path)) == 0
    assert [cached_bytes(p) for p in models] == [MB] * 3
    assert cached_bytes(other) == 0


def test_main_reads_in_the_order_a_job_loads_the_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entries = {e.role: e for e in load_manifest() if not e.on_demand}
    folders = {"diffusion_models": "models"}
    for entry in entries.values():
        cold_file(tmp_path / folders.get(entry.kind, entry.kind) / entry.name, 4096)
    seen: list[str] = []
    monkeypatch.setattr(readahead, "readahead", lambda paths, budget: seen.extend(p.name for p in paths) or 0)

    readahead.main(Settings(volume_root=tmp_path))
    order = ["text_encoder", "vae", "high_model", "lightning_high", "low_model", "lightning_low"]
    assert seen == [entries[role].name for role in order]


def test_a_read_error_stops_the_read_ahead_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    entry = next(e for e in load_manifest() if e.role == "vae")
    cold_file(tmp_path / "vae" / entry.name, MB)

    def fails(path: Path, offset: int, length: int) -> int:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(readahead, "read_chunk", fails)
    assert readahead.main(Settings(volume_root=tmp_path)) == 1
    assert "model read-ahead stopped" in caplog.text
