"""A job's model URLs on hosts other than the Hub: one checked, streamed GET into the volume, once; the policy
before any request, the size cap, the sha256, a cut transfer resumed with Range, retries from tenacity."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pytest

from worker.config import Settings
from worker.errors import InvalidInput, ModelDownloadFailed, UrlNotAllowed
from worker.models.fetch import ModelRef
from worker.models.manifest import ManifestEntry
from worker.models.volume import FOLDER_KINDS, State, file_status, write_record

from .conftest import run
from .fileserver import FileServer, model_bytes

SIZE = 400_000


def ref(field: str, kind: str = "loras", url: str = "", name: str | None = None) -> ModelRef:
    return ModelRef(field, kind, url, name)


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
    assert run([ref("lora_pairs[0].high_url", url=url)], settings) == {
        "lora_pairs[0].high_url": "style.safetensors"
    }
    path = volume / "loras" / "style.safetensors"
    assert path.read_bytes() == data
    assert file_status(path, SIZE, hashlib.sha256(data).hexdigest()).state is State.VERIFIED
    requests_before = len(server.hits())
    assert run([ref("lora_pairs[2].low_url", url=url)], settings) == {
        "lora_pairs[2].low_url": "style.safetensors"
    }
    assert len(server.hits()) == requests_before


def test_a_civitai_style_url_is_named_by_content_disposition(
    server: FileServer, settings: Settings, volume: Path
) -> None:
    data = model_bytes(SIZE, seed=2)
    disposition = "attachment; filename=\"x.bin\"; filename*=UTF-8''Detail%20Tweaker%20v2.safetensors"
    url = server.add("/api/download/models/12345", data, content_disposition=disposition)
    names = run([ref("lora_pairs[0].high_url", url=url + "?type=Model&token=QUERYSECRET")], settings)
    assert names["lora_pairs[0].high_url"] == "Detail Tweaker v2.safetensors"
    assert (volume / "loras" / "Detail Tweaker v2.safetensors").read_bytes() == data
    count = len(server.hits())
    run([ref("lora_pairs[1].high_url", url=url + "?type=Model&token=QUERYSECRET")], settings)
    assert len(server.hits()) == count
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
    entry = ManifestEntry(
        role="vae",
        name="vae.safetensors",
        kind="vae",
        url=url,
        size=SIZE,
        sha256=hashlib.sha256(data).hexdigest(),
    )
    with pytest.raises(ModelDownloadFailed) as info:
        run([ref("vae_url", "vae", url)], settings, manifest=(entry,))
    assert "sha256" in str(info.value) and "did not match" in str(info.value)
    assert [p.name for p in (volume / "vae").iterdir()] == [".vae.safetensors.lock"]
    assert list((volume / ".wan-worker" / "staging").iterdir()) == []


def test_an_announced_sha256_is_checked(server: FileServer, settings: Settings, volume: Path) -> None:
    data = model_bytes(SIZE, seed=10)
    wrong = {"X-Linked-Etag": f'"{hashlib.sha256(b"other").hexdigest()}"', "X-Linked-Size": str(SIZE)}
    url = server.hub_file(
        "/mirror/a.safetensors", data, announce=wrong
    )  # a redirect that announces, as the Hub
    with pytest.raises(ModelDownloadFailed, match="did not match"):
        run([ref("lora_pairs[0].low_url", url=url)], settings)
    assert not (volume / "loras" / "a.safetensors").exists()


def test_bytes_that_are_not_safetensors_are_refused(
    server: FileServer, settings: Settings, volume: Path
) -> None:
    url = server.add("/api/download/models/9", b"<!DOCTYPE html><html>log in first</html>" * 50)
    with pytest.raises(ModelDownloadFailed, match="not a safetensors file"):
        run([ref("lora_pairs[0].low_url", url=url, name="x.safetensors")], settings)
    assert [p.name for p in (volume / "loras").iterdir()] == [".x.safetensors.lock"]


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
    assert server.hits() == []


def test_redirects_are_followed_and_every_hop_checked(
    server: FileServer, settings: Settings, volume: Path
) -> None:
    data = model_bytes(SIZE, seed=11)
    server.add("/real/r.safetensors", data)
    url = server.redirect("/go/r.safetensors", server.url("/real/r.safetensors"))
    assert run([ref("lora_pairs[0].high_url", url=url)], settings) == {
        "lora_pairs[0].high_url": "r.safetensors"
    }
    away = server.redirect("/away/r.safetensors", "https://elsewhere.example/r.safetensors")
    with pytest.raises(UrlNotAllowed, match=r"elsewhere\.example"):
        run([ref("lora_pairs[0].high_url", url=away)], settings)


def test_the_size_cap_refuses_before_the_body_and_while_it_streams(
    server: FileServer, settings: Settings, volume: Path
) -> None:
    small = settings.model_copy(update={"max_model_gb": SIZE / 2 / 1e9})
    url = server.add("/big.safetensors", model_bytes(SIZE))
    with pytest.raises(UrlNotAllowed, match="MAX_MODEL_GB"):
        run([ref("vae_url", "vae", url)], small)
    assert server.sent() <= 1
    url = server.add("/nolength.safetensors", model_bytes(SIZE), ranges=False, content_length=False)
    with pytest.raises(UrlNotAllowed, match="MAX_MODEL_GB"):
        run([ref("vae_url", "vae", url)], small)
    assert not (volume / "vae" / "nolength.safetensors").exists()


def test_a_cut_transfer_resumes_with_range_from_the_bytes_already_written(
    server: FileServer, settings: Settings, volume: Path
) -> None:
    data = model_bytes(SIZE * 4, seed=8)
    url = server.add("/big.safetensors", data, cut_after=50_000, cuts=1)
    run([ref("high_model_url", "diffusion_models", url)], settings)
    assert (volume / "models" / "big.safetensors").read_bytes() == data
    assert [h.range for h in server.hits()] == ["bytes=0-0", None, "bytes=50000-"]
    assert server.sent() == len(data) + 1  # nothing fetched twice (the probe's first byte aside)


def test_a_server_without_ranges_sends_it_all_again(
    server: FileServer, settings: Settings, volume: Path
) -> None:
    data = model_bytes(SIZE, seed=9)
    url = server.add("/plain.safetensors", data, ranges=False, cut_after=50_000, cuts=1)
    run([ref("high_model_url", "diffusion_models", url)], settings)
    assert (volume / "models" / "plain.safetensors").read_bytes() == data


def test_server_errors_are_retried_and_client_errors_are_not(server: FileServer, settings: Settings) -> None:
    url = server.add("/flaky.safetensors", model_bytes(SIZE, seed=12), statuses=[503, 502])
    run([ref("lora_pairs[0].high_url", url=url)], settings)
    url = server.add("/forbidden.safetensors", model_bytes(SIZE), statuses=[403])
    with pytest.raises(ModelDownloadFailed, match="HTTP 403; a private file needs CIVITAI_TOKEN"):
        run([ref("lora_pairs[0].low_url", url=url)], settings)
    url = server.add("/down.safetensors", model_bytes(SIZE), statuses=[503] * 9)
    with pytest.raises(ModelDownloadFailed, match=r"HTTP 503; 3 tries"):
        run([ref("lora_pairs[1].low_url", url=url)], settings)


def test_the_same_url_twice_in_a_job_is_fetched_once(server: FileServer, settings: Settings) -> None:
    url = server.add("/both.safetensors", model_bytes(SIZE, seed=7))
    names = run([ref("lora_pairs[0].high_url", url=url), ref("lora_pairs[0].low_url", url=url)], settings)
    assert set(names.values()) == {"both.safetensors"}
    assert [h.range for h in server.hits()] == ["bytes=0-0", None]  # one probe, one download


def test_several_urls_are_fetched_together_reporting_their_bytes(
    server: FileServer, settings: Settings, volume: Path
) -> None:
    urls = [
        server.add(f"/f{i}.safetensors", model_bytes(SIZE * 3, seed=i), throttle_bps=1e6) for i in range(3)
    ]
    seen: dict[str, list[tuple[int, int | None]]] = {}
    names = run(
        [ref(f"lora_pairs[{i}].high_url", url=u) for i, u in enumerate(urls)],
        settings,
        on_progress=lambda field, done, total: seen.setdefault(field, []).append((done, total)),
    )
    assert names == {f"lora_pairs[{i}].high_url": f"f{i}.safetensors" for i in range(3)}
    for updates in seen.values():
        assert updates == sorted(updates) and updates[-1] == (SIZE * 3, SIZE * 3) and len(updates) <= 3
    assert set(seen) == set(names)


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
    assert all("authorization" not in {k.lower() for k in hit.headers} for hit in server.hits())
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("worker"))
    text = ours + str(info.value) + repr(info.value.details)
    assert "TOKENSECRET" not in text and "QUERYSECRET" not in text
    assert "[job job-1]" in caplog.text and "<redacted>" in caplog.text


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
