"""A job's model URLs: fetched once into the volume, policies checked first."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pytest

from worker.config import Settings
from worker.errors import InvalidInput, ModelDownloadFailed, UrlNotAllowed
from worker.models import FOLDER_KINDS, ModelRef, ensure_job_models
from worker.models.download import part_info
from worker.models.ensure import ensure_refs
from worker.models.manifest import ManifestEntry
from worker.models.volume import State, file_status, part_paths, write_record

from .conftest import fast_options
from .fileserver import FileServer, model_bytes

SIZE = 400_000


def ref(field: str, kind: str = "loras", url: str | None = None, name: str | None = None) -> ModelRef:
    return ModelRef(field=field, kind=kind, url=url, name=name)


def run(refs: list[ModelRef], settings: Settings, **kwargs: object) -> dict[str, str]:
    options = kwargs.pop("options", fast_options())
    return ensure_refs(refs, settings, job_id="job-1", options=options, **kwargs)  # type: ignore[arg-type]


def test_folder_kinds_are_the_documented_layout() -> None:
    assert FOLDER_KINDS == {
        "diffusion_models": "models",
        "loras": "loras",
        "text_encoders": "text_encoders",
        "vae": "vae",
        "clip_vision": "clip_vision",
        "frame_interpolation": "frame_interpolation",
    }


def test_a_url_is_downloaded_once_and_reused_by_a_later_job(
    server: FileServer, settings: Settings, volume: Path
) -> None:
    data = model_bytes(SIZE, seed=1)
    url = server.add("/org/repo/resolve/main/style.safetensors", data) + "?download=true"
    names = ensure_job_models([ref("lora_pairs[0].high_url", url=url)], settings, job_id="job-1")
    assert names == {"lora_pairs[0].high_url": "style.safetensors"}
    path = volume / "loras" / "style.safetensors"
    assert path.read_bytes() == data
    assert file_status(path, SIZE, hashlib.sha256(data).hexdigest()).state is State.VERIFIED
    assert part_paths(path) == []
    requests_before = len(server.requests())
    again = ensure_job_models([ref("lora_pairs[2].low_url", url=url)], settings, job_id="job-2")
    assert again == {"lora_pairs[2].low_url": "style.safetensors"}
    assert len(server.requests()) == requests_before


def test_a_civitai_style_url_is_named_by_content_disposition(
    server: FileServer, settings: Settings, volume: Path
) -> None:
    data = model_bytes(SIZE, seed=2)
    url = server.add(
        "/api/download/models/12345",
        data,
        content_disposition='attachment; filename="Detail Tweaker v2.safetensors"',
    )
    names = run([ref("lora_pairs[0].high_url", url=url + "?type=Model&token=QUERYSECRET")], settings)
    assert names["lora_pairs[0].high_url"] == "Detail Tweaker v2.safetensors"
    assert (volume / "loras" / "Detail Tweaker v2.safetensors").read_bytes() == data
    count = len(server.requests())
    run([ref("lora_pairs[1].high_url", url=url + "?type=Model&token=QUERYSECRET")], settings)
    assert len(server.requests()) == count
    index = "".join(p.read_text() for p in (volume / ".wan-worker").rglob("*.json"))
    assert "QUERYSECRET" not in index


def test_a_name_given_with_the_url_is_used(server: FileServer, settings: Settings, volume: Path) -> None:
    url = server.add("/api/download/models/7", model_bytes(SIZE, seed=3))
    names = run([ref("high_model_url", "diffusion_models", url, "my_high.safetensors")], settings)
    assert names == {"high_model_url": "my_high.safetensors"}
    assert (volume / "models" / "my_high.safetensors").stat().st_size == SIZE


def test_a_file_of_the_wrong_size_is_downloaded_again(
    server: FileServer, settings: Settings, volume: Path
) -> None:
    data = model_bytes(SIZE, seed=4)
    url = server.add("/vae.safetensors", data)
    (volume / "vae").mkdir()
    (volume / "vae" / "vae.safetensors").write_bytes(data[: SIZE // 2])
    run([ref("vae_url", "vae", url, "vae.safetensors")], settings)
    assert (volume / "vae" / "vae.safetensors").read_bytes() == data


def test_a_whole_file_of_the_wanted_name_is_reused(
    server: FileServer, settings: Settings, volume: Path
) -> None:
    data = model_bytes(SIZE, seed=5)
    url = server.add("/vae.safetensors", data)
    (volume / "models" / "vae").mkdir(parents=True)
    (volume / "models" / "vae" / "vae.safetensors").write_bytes(data)
    assert run([ref("vae_url", "vae", url, "vae.safetensors")], settings) == {"vae_url": "vae.safetensors"}
    assert server.sent() <= 1  # only the probe's first byte
    assert not (volume / "vae").exists()


def test_wrong_bytes_leave_no_file_under_the_final_name(
    server: FileServer, settings: Settings, volume: Path
) -> None:
    data = model_bytes(SIZE, seed=6)
    url = server.add("/vae.safetensors", data, wrong=True)
    entry = ManifestEntry("vae", "vae.safetensors", "vae", url, SIZE, hashlib.sha256(data).hexdigest())
    with pytest.raises(ModelDownloadFailed) as info:
        run([ref("vae_url", "vae", url)], settings, manifest=(entry,))
    assert "sha256" in str(info.value) and "did not match" in str(info.value)
    assert sorted(p.name for p in (volume / "vae").iterdir()) == []


def test_bytes_that_are_not_safetensors_are_refused(
    server: FileServer, settings: Settings, volume: Path
) -> None:
    url = server.add("/api/download/models/9", b"<!DOCTYPE html><html>log in first</html>" * 50)
    with pytest.raises(ModelDownloadFailed, match="not a safetensors file"):
        run([ref("lora_pairs[0].low_url", url=url, name="x.safetensors")], settings)
    assert list((volume / "loras").iterdir()) == []


def test_policy_is_checked_before_any_request(server: FileServer, settings: Settings) -> None:
    good = server.add("/a.safetensors", model_bytes(SIZE))
    strict = settings.model_copy(update={"allow_http_model_urls": False})
    with pytest.raises(UrlNotAllowed, match="https"):
        run([ref("vae_url", "vae", good), ref("lora_pairs[0].high_url", url=good)], strict)
    with pytest.raises(UrlNotAllowed, match="non-public"):
        run([ref("vae_url", "vae", good)], settings.model_copy(update={"allow_private_urls": False}))
    with pytest.raises(UrlNotAllowed, match="not allowed for model downloads"):
        run(
            [ref("vae_url", "vae", good)],
            settings.model_copy(update={"allowed_model_hosts": ("huggingface.co",)}),
        )
    with pytest.raises(UrlNotAllowed, match=r"must end in \.safetensors"):
        run([ref("vae_url", "vae", good, "vae.ckpt")], settings)
    with pytest.raises(InvalidInput, match="path separators"):
        run([ref("vae_url", "vae", good, "../../etc/passwd")], settings)
    with pytest.raises(InvalidInput, match="name of a default model file"):
        run([ref("vae_url", "vae", good, "wan_2.1_vae.safetensors")], settings)
    assert server.requests() == []


def test_the_size_cap_refuses_before_the_body(server: FileServer, settings: Settings, volume: Path) -> None:
    url = server.add("/big.safetensors", model_bytes(SIZE))
    with pytest.raises(UrlNotAllowed, match="MAX_MODEL_GB"):
        run([ref("vae_url", "vae", url)], settings.model_copy(update={"max_model_gb": SIZE / 2 / 1e9}))
    assert server.sent() <= 1


def test_the_same_url_twice_in_a_job_is_fetched_once(server: FileServer, settings: Settings) -> None:
    url = server.add("/both.safetensors", model_bytes(SIZE, seed=7))
    names = run([ref("lora_pairs[0].high_url", url=url), ref("lora_pairs[0].low_url", url=url)], settings)
    assert set(names.values()) == {"both.safetensors"}
    starts = [h.range for h in server.requests() if h.range and h.range.startswith("bytes=0-")]
    assert len(starts) == 2 and starts[0] == "bytes=0-0"  # one probe, one download


def test_several_urls_are_fetched_together(server: FileServer, settings: Settings, volume: Path) -> None:
    urls = [server.add(f"/f{i}.safetensors", model_bytes(SIZE, seed=i), throttle_bps=2e6) for i in range(3)]
    seen: dict[str, int] = {}
    names = run(
        [ref(f"lora_pairs[{i}].high_url", url=u) for i, u in enumerate(urls)],
        settings,
        on_progress=lambda field, done, total: seen.__setitem__(field, done),
    )
    assert names == {f"lora_pairs[{i}].high_url": f"f{i}.safetensors" for i in range(3)}
    assert set(seen) <= set(names)


def test_two_urls_may_not_share_a_name(server: FileServer, settings: Settings) -> None:
    a = server.add("/a/x.safetensors", model_bytes(SIZE, seed=1))
    b = server.add("/b/x.safetensors", model_bytes(SIZE, seed=2))
    with pytest.raises(InvalidInput, match=r"would both be saved as 'x\.safetensors'"):
        run([ref("lora_pairs[0].high_url", url=a), ref("lora_pairs[1].high_url", url=b)], settings)


def test_tokens_and_queries_stay_out_of_requests_and_logs(
    server: FileServer, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="worker")
    secret = settings.model_copy(update={"hf_token": "hf_TOKENSECRET", "civitai_token": "cv_TOKENSECRET"})
    url = server.add("/m.safetensors", model_bytes(SIZE)) + "?token=QUERYSECRET"
    run([ref("vae_url", "vae", url)], secret)
    with pytest.raises(ModelDownloadFailed) as info:
        run(
            [ref("clip_vision_url", "clip_vision", server.url("/nothing.safetensors?token=QUERYSECRET"))],
            secret,
        )
    assert all("Authorization" not in hit.headers for hit in server.requests())
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("worker"))
    text = ours + str(info.value) + repr(info.value.details)
    assert "TOKENSECRET" not in text and "QUERYSECRET" not in text
    assert "[job job-1]" in caplog.text and "<redacted>" in caplog.text


def test_a_failed_download_resumes_in_the_next_job_with_only_the_missing_bytes(
    server: FileServer, settings: Settings, volume: Path
) -> None:
    data = model_bytes(SIZE * 4, seed=8)
    url = server.add("/big.safetensors", data, cut_after=50_000, cuts=1)
    one_try = fast_options(connections=1, max_attempts=1)
    with pytest.raises(ModelDownloadFailed):
        run([ref("high_model_url", "diffusion_models", url)], settings, options=one_try)
    assert not (volume / "models" / "big.safetensors").exists()
    parts = part_paths(volume / "models" / "big.safetensors")
    assert len(parts) == 1
    on_disk = part_info(parts[0], "url:" + hashlib.sha256(url.encode()).hexdigest())
    assert on_disk is not None and on_disk.on_disk == server.sent() - 1  # all but the probe's first byte
    before = server.sent()
    run([ref("high_model_url", "diffusion_models", url)], settings, options=one_try)
    assert server.sent() - before == len(data) - on_disk.on_disk + 1  # the rest, and the probe's first byte
    assert (volume / "models" / "big.safetensors").read_bytes() == data
    assert part_paths(volume / "models" / "big.safetensors") == []


def test_a_verified_record_is_kept_beside_the_file(
    server: FileServer, settings: Settings, volume: Path
) -> None:
    data = model_bytes(SIZE, seed=9)
    url = server.add("/v.safetensors", data)
    run([ref("vae_url", "vae", url)], settings)
    path = volume / "vae" / "v.safetensors"
    os.utime(path, ns=(0, 0))
    assert file_status(path, SIZE, hashlib.sha256(data).hexdigest()).state is State.UNVERIFIED
    write_record(path, hashlib.sha256(data).hexdigest())
    assert file_status(path, SIZE, hashlib.sha256(data).hexdigest()).state is State.VERIFIED
