"""Hub files through huggingface_hub, against a fake of the Hub reached through HF_ENDPOINT: the worker's own
sha256 check, cut transfers, writers racing without a lock that holds, RunPod's model cache, cancel."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker.config import Settings
from worker.errors import JobCancelled, ModelDownloadFailed
from worker.models.fetch import Context, ModelRef, Target, fetch
from worker.models.volume import State, file_status

from .conftest import FAST, run
from .fileserver import COMMIT, FakeHub, model_bytes

SIZE = 600_000


def lora(url: str, name: str | None = None) -> ModelRef:
    return ModelRef("lora_pairs[0].high_url", "loras", url, name)


def leftovers(volume: Path) -> list[str]:
    """Anything but whole model files, their records, locks and the URL index."""
    kept = (".verified", ".lock", ".safetensors")
    return [
        str(p)
        for p in volume.rglob("*")
        if p.is_file() and "url-index" not in str(p) and not p.name.endswith(kept)
    ]


def test_a_hub_file_is_fetched_checked_and_reused(
    hub: FakeHub, settings: Settings, volume: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    data = model_bytes(SIZE, seed=1)
    url = hub.add("org/repo", "loras/style.safetensors", data)
    secret = settings.model_copy(update={"hf_token": "hf_TOKENSECRET"})
    seen: list[tuple[str, int, int | None]] = []
    assert run([lora(url)], secret, on_progress=lambda *a: seen.append(a)) == {
        lora(url).field: "style.safetensors"
    }
    path = volume / "loras" / "style.safetensors"
    assert path.read_bytes() == data
    assert file_status(path, SIZE, hashlib.sha256(data).hexdigest()).state is State.VERIFIED
    assert seen[-1] == (lora(url).field, SIZE, SIZE)
    assert leftovers(volume) == [] and list((volume / ".wan-worker" / "staging").iterdir()) == []
    # HF_TOKEN went to the Hub (HF_ENDPOINT), never to the CDN, never into a log
    assert all(
        h.headers.get("authorization") == "Bearer hf_TOKENSECRET"
        for h in hub.hub.hits()
        if "resolve" in h.path
    )
    assert not any("authorization" in {k.lower() for k in h.headers} for h in hub.cdn.hits())
    assert "TOKENSECRET" not in caplog.text
    count = len(hub.hits())
    assert run([lora(url)], settings) == {lora(url).field: "style.safetensors"}  # the same URL: no request
    assert len(hub.hits()) == count


def test_a_file_whose_bytes_do_not_match_the_announced_sha256_is_never_kept(
    hub: FakeHub, settings: Settings, volume: Path
) -> None:
    data = model_bytes(SIZE, seed=2)
    url = hub.add("org/repo", "bad.safetensors", data, wrong=True)  # the CDN serves other bytes
    with pytest.raises(ModelDownloadFailed, match="did not match") as info:
        run([lora(url)], settings)
    assert info.value.details[0]["expected_sha256"] == hashlib.sha256(data).hexdigest()
    assert not (volume / "loras" / "bad.safetensors").exists() and leftovers(volume) == []


def test_a_cut_transfer_is_resumed_and_one_cut_too_often_fails_cleanly(
    hub: FakeHub, settings: Settings, volume: Path
) -> None:
    data = model_bytes(SIZE * 3, seed=3)
    url = hub.add("org/repo", "cut.safetensors", data, cut_after=SIZE, cuts=1)
    run([lora(url)], settings)
    assert (volume / "loras" / "cut.safetensors").read_bytes() == data
    url = hub.add("org/repo", "cutcut.safetensors", model_bytes(SIZE * 3, seed=4), cut_after=1000, cuts=99)
    with pytest.raises(ModelDownloadFailed, match="the Hub download failed"):
        run([lora(url)], settings)
    assert not (volume / "loras" / "cutcut.safetensors").exists() and leftovers(volume) == []


@contextlib.contextmanager
def lying_lock(path: Path, timeout: float) -> Iterator[bool]:
    yield True  # "held", as a lock on some network file systems says, for every writer at once


def test_writers_racing_without_a_lock_that_holds_leave_one_whole_file(
    hub: FakeHub, settings: Settings, volume: Path
) -> None:
    data = model_bytes(SIZE * 2, seed=5)
    url = hub.add("org/repo", "race.safetensors", data, throttle_bps=2e6)
    path = volume / "loras" / "race.safetensors"
    sha = hashlib.sha256(data).hexdigest()
    results: list[object] = []

    def writer() -> None:
        ctx = Context(settings, lock=lying_lock, retry=FAST)
        results.append(fetch(Target("f", url, path, len(data), sha), ctx))

    threads = [threading.Thread(target=writer) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == ["downloaded"] * 3  # each downloaded, verified and renamed its own whole copy
    assert path.read_bytes() == data and leftovers(volume) == []
    assert file_status(path, len(data), sha).state is State.VERIFIED


def hub_cache(volume: Path, repo: str, path: str, data: bytes) -> Path:
    """RunPod's model cache as huggingface_hub lays it out: blobs named by sha256, snapshots linking to them."""
    folder = volume / "huggingface-cache" / "hub" / f"models--{repo.replace('/', '--')}"
    blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True)
    blob.write_bytes(data)
    link = folder / "snapshots" / COMMIT / path
    link.parent.mkdir(parents=True)
    link.symlink_to(os.path.relpath(blob, link.parent))
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(COMMIT)
    return blob


def test_a_file_in_runpods_model_cache_is_used_in_place_with_no_request(
    hub: FakeHub, settings: Settings, volume: Path
) -> None:
    data = model_bytes(SIZE, seed=6)
    url = hub.add("org/cached", "sub/c.safetensors", data)
    blob = hub_cache(volume, "org/cached", "sub/c.safetensors", data)
    before = len(hub.hits())
    assert run([lora(url)], settings) == {lora(url).field: "c.safetensors"}  # a job's URL: no known sha256
    path = volume / "loras" / "c.safetensors"
    assert path.is_symlink() and path.resolve() == blob and not os.path.isabs(os.readlink(path))
    assert file_status(path, SIZE, blob.name).state is State.VERIFIED
    # a default's file (its sha256 known) found by its blob, under another name
    sha = hashlib.sha256(data).hexdigest()
    default = Target("vae", url, volume / "vae" / "v.safetensors", SIZE, sha)
    assert fetch(default, Context(settings, retry=FAST)) == "linked from the model cache"
    assert len(hub.hits()) == before
    # a blob that is not the file wanted (another size) is not used: the Hub is asked
    other = model_bytes(SIZE + 1, seed=7)
    url = hub.add("org/cached", "sub/c.safetensors", other)
    target = Target(
        "vae", url, volume / "vae" / "w.safetensors", len(other), hashlib.sha256(other).hexdigest()
    )
    assert fetch(target, Context(settings, retry=FAST)) == "downloaded"
    assert not target.path.is_symlink() and target.path.read_bytes() == other


def test_a_cancelled_job_returns_at_once_and_the_next_one_gets_the_whole_file(
    hub: FakeHub, settings: Settings, volume: Path
) -> None:
    data = model_bytes(SIZE * 4, seed=8)
    url = hub.add("org/repo", "slow.safetensors", data, throttle_bps=800_000)
    cancel, path, cancelled = threading.Event(), volume / "loras" / "slow.safetensors", []
    timer = threading.Timer(0.5, lambda: (cancelled.append(time.monotonic()), cancel.set()))
    timer.start()  # mid-download: it takes about three seconds
    with pytest.raises(JobCancelled):
        run([lora(url)], settings, cancel=cancel)
    assert time.monotonic() - cancelled[0] < 0.3  # at once, while the download goes on
    assert not path.exists()
    assert run([lora(url)], settings) == {lora(url).field: "slow.safetensors"}  # waits for it, or fetches it
    assert path.read_bytes() == data and leftovers(volume) == []
    assert len([h for h in hub.cdn.hits() if not h.range]) == 1  # the one download, finished for this job


def test_a_volume_without_symbolic_links_downloads_the_cached_file_instead(
    hub: FakeHub, settings: Settings, volume: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = model_bytes(SIZE, seed=9)
    url = hub.add("org/nolinks", "n.safetensors", data)
    hub_cache(volume, "org/nolinks", "n.safetensors", data)

    def refused(*args: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "symlink", refused)
    assert run([lora(url)], settings) == {lora(url).field: "n.safetensors"}
    path = volume / "loras" / "n.safetensors"
    assert not path.is_symlink() and path.read_bytes() == data
