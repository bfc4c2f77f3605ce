"""Manifest files fetched by the first job that needs them, and downloads checked against the sha256 the
server announces (Hugging Face's ``X-Linked-Etag`` on its redirect to the CDN)."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest

from worker.config import Settings
from worker.errors import ModelDownloadFailed, UrlNotAllowed
from worker.models import ModelRef, on_demand_entry
from worker.models.ensure import ensure_defaults, ensure_refs
from worker.models.manifest import Manifest, ManifestEntry
from worker.models.volume import read_index, read_record

from .conftest import fast_options
from .fileserver import FileServer, model_bytes

SIZE = 300_000
HUB = "/Comfy-Org/frame_interpolation/resolve/main/frame_interpolation"
FIELD = "interpolation_model"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def on_demand(
    server: FileServer, name: str, data: bytes, role: str | None = None, **options: object
) -> ManifestEntry:
    url = server.hub_file(f"{HUB}/{name}", data, **options)  # type: ignore[arg-type]
    return ManifestEntry(role, name, "frame_interpolation", url, None, None, "on_demand")


def job_ref(entry: ManifestEntry) -> ModelRef:
    """What the handler builds for a graph that loads ``frame_interpolation/<entry.name>``."""
    return ModelRef(field=FIELD, kind=entry.kind, url=entry.url, name=entry.name)


def run(refs: list[ModelRef], settings: Settings, manifest: Manifest, **kwargs: object) -> dict[str, str]:
    options = kwargs.pop("options", fast_options())
    return ensure_refs(refs, settings, job_id="job-1", options=options, manifest=manifest, **kwargs)  # type: ignore[arg-type]


def test_an_on_demand_file_is_fetched_by_the_first_job_that_needs_it_then_costs_no_request(
    server: FileServer, settings: Settings, volume: Path
) -> None:
    film, rife = model_bytes(SIZE, seed=1), model_bytes(SIZE // 2, seed=2)
    manifest = (
        on_demand(server, "film.safetensors", film, role=FIELD),
        on_demand(server, "rife.safetensors", rife),
    )
    entry = on_demand_entry("frame_interpolation", "film.safetensors", manifest)
    assert entry is manifest[0]
    seen: list[tuple[str, int, int | None]] = []
    names = run([job_ref(entry)], settings, manifest, on_progress=lambda *args: seen.append(args))
    assert names == {FIELD: "film.safetensors"}
    path = volume / "frame_interpolation" / "film.safetensors"
    assert path.read_bytes() == film
    record = read_record(path)
    assert record is not None and record.sha256 == sha(film)
    assert sorted(p.name for p in path.parent.iterdir()) == [".film.safetensors.verified", "film.safetensors"]
    first = server.requests()[0]
    assert (first.path, first.status, first.range) == (
        f"{HUB}/film.safetensors",
        302,
        "bytes=0-0",
    )  # the probe
    assert seen and {field for field, _, _ in seen} == {FIELD} and seen[-1][2] == SIZE
    assert server.requests(f"/cdn{HUB}/rife.safetensors") == []

    count = len(server.requests())
    resolved: list[str] = []
    offline = replace(fast_options(), resolver=lambda host, port: resolved.append(host) or [])
    strict = settings.model_copy(update={"allow_private_urls": False})
    assert run([job_ref(entry)], strict, manifest, options=offline) == {FIELD: "film.safetensors"}
    assert len(server.requests()) == count and resolved == []  # the file is there: no request, not even DNS


def test_ensure_defaults_leaves_on_demand_files_to_the_jobs(
    server: FileServer, settings: Settings, volume: Path
) -> None:
    vae = model_bytes(SIZE, seed=3)
    start = ManifestEntry(
        "vae", "vae.safetensors", "vae", server.add("/vae.safetensors", vae), SIZE, sha(vae)
    )
    manifest = (start, on_demand(server, "film.safetensors", model_bytes(SIZE, seed=4), role=FIELD))
    outcomes = ensure_defaults(settings, manifest, options=fast_options())
    assert [(o.entry.name, o.error) for o in outcomes] == [("vae.safetensors", None)]
    assert not any(hit.path.endswith("film.safetensors") for hit in server.requests())
    assert not (volume / "frame_interpolation").exists()


@pytest.mark.parametrize("how", ["announced hash", "bytes"])
@pytest.mark.parametrize("source", ["on-demand entry", "job URL"])
def test_a_download_that_does_not_match_the_announced_sha256_leaves_no_file(
    server: FileServer, settings: Settings, volume: Path, how: str, source: str
) -> None:
    data = model_bytes(SIZE, seed=5)
    wrong = {"X-Linked-Etag": f'"{"0" * 64}"', "X-Linked-Size": str(SIZE)}
    options = {"announce": wrong} if how == "announced hash" else {"wrong": True}
    entry = on_demand(server, "film.safetensors", data, role=FIELD, **options)
    if source == "on-demand entry":
        refs, manifest, field = [job_ref(entry)], (entry,), FIELD
    else:
        field = "lora_pairs[0].high_url"
        refs, manifest = [ModelRef(field, "loras", entry.url, None)], ()
    with pytest.raises(ModelDownloadFailed) as info:
        run(refs, settings, manifest)
    message = str(info.value)
    assert message.startswith(field) and "sha256 of the downloaded bytes did not match" in message
    expected = "0" * 64 if how == "announced hash" else sha(data)
    assert f"expected {expected}" in message and "the file was discarded" in message
    folder = volume / ("frame_interpolation" if source == "on-demand entry" else "loras")
    assert sorted(p.name for p in folder.iterdir()) == []
    assert read_index(volume, "loras", entry.url) is None


def test_a_job_url_on_the_hub_is_verified_by_the_announced_sha256(
    server: FileServer, settings: Settings, volume: Path
) -> None:
    data = model_bytes(SIZE, seed=6)
    url = server.hub_file("/org/repo/resolve/main/style.safetensors", data)
    field = "lora_pairs[0].high_url"
    assert run([ModelRef(field, "loras", url, None)], settings, ()) == {field: "style.safetensors"}
    record = read_record(volume / "loras" / "style.safetensors")
    index = read_index(volume, "loras", url)
    assert record is not None and index is not None and record.sha256 == index.sha256 == sha(data)


def test_without_an_announcement_the_download_is_checked_as_before(
    server: FileServer, settings: Settings, volume: Path
) -> None:
    data = model_bytes(SIZE, seed=7)
    entry = on_demand(server, "film.safetensors", data, role=FIELD, announce={})
    assert run([job_ref(entry)], settings, (entry,)) == {FIELD: "film.safetensors"}
    record = read_record(volume / "frame_interpolation" / "film.safetensors")
    assert record is not None and record.sha256 == sha(data)  # the hash of what arrived
    html = on_demand(server, "rife.safetensors", b"<!DOCTYPE html><html>log in</html>" * 50, announce={})
    with pytest.raises(ModelDownloadFailed, match="not a safetensors file"):
        run([job_ref(html)], settings, (entry, html))


def test_the_announced_size_counts_when_the_answer_has_no_length(
    server: FileServer, settings: Settings, volume: Path
) -> None:
    data = model_bytes(SIZE, seed=8)
    entry = on_demand(server, "film.safetensors", data, role=FIELD, ranges=False, content_length=False)
    small = settings.model_copy(update={"max_model_gb": SIZE / 2 / 1e9})
    with pytest.raises(UrlNotAllowed, match="MAX_MODEL_GB"):
        run([job_ref(entry)], small, (entry,))
    assert run([job_ref(entry)], settings, (entry,)) == {FIELD: "film.safetensors"}
    assert (volume / "frame_interpolation" / "film.safetensors").read_bytes() == data
