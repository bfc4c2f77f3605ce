"""The handler in-process against the emulator: cancellation, deadlines, cleanup, the error shape."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from tests.emulator import Emulator
from tests.support.images import data_uri, image_bytes
from tests.support.video import probe_b64
from worker import cleanup
from worker.config import Settings
from worker.handler import handle_job, safe_id

START = data_uri(image_bytes())


def job(**fields: Any) -> dict[str, Any]:
    return {
        "id": "job-1",
        "input": {"prompt": "p", "image_base64": START, "width": 128, "height": 128, "length": 9, **fields},
    }


def files_in(folder: str) -> list[Path]:
    return [p for p in Path(folder).rglob("*") if p.is_file()]


def test_success_leaves_nothing_behind(emulator: Emulator, settings: Settings) -> None:
    result = asyncio.run(handle_job(job(), settings))
    assert "error" not in result, result
    assert probe_b64(result["video"]).frames == 9
    state = emulator.state()
    prompt_id = state["prompt_ids"][-1]
    assert prompt_id in state["history_deletes"]
    assert files_in(emulator.input_dir) == [] and files_in(emulator.output_dir) == []


def test_cancellation_interrupts_comfyui_promptly(emulator: Emulator, settings: Settings) -> None:
    emulator.set_faults(hang=True)
    before = emulator.state()["interrupts"]

    async def scenario() -> float:
        task = asyncio.create_task(handle_job(job(), settings))
        deadline = time.monotonic() + 10
        while emulator.state()["running"] is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        cancelled_at = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return cancelled_at

    cancelled_at = asyncio.run(scenario())
    state = emulator.state()
    assert state["interrupts"] > before
    assert time.monotonic() - cancelled_at < 2
    assert state["prompt_ids"][-1] in state["queue_deletes"]
    assert state["running"] is None
    emulator.set_faults()
    assert "error" not in asyncio.run(handle_job(job(), settings))


def cancel_while_running(
    settings: Settings, emulator: Emulator, job_input: dict[str, Any] | None = None
) -> None:
    """Start a job (``job_input``, else a built-in one), cancel it once ComfyUI runs its prompt, and return when its
    cleanup has finished."""

    async def scenario() -> None:
        task = asyncio.create_task(handle_job(job_input or job(), settings))
        deadline = time.monotonic() + 10
        while emulator.state()["running"] is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())  # returns once the shielded cleanup thread is done


def test_a_cancelled_prompt_leaves_the_history_even_when_its_entry_comes_late(
    emulator: Emulator, settings: Settings
) -> None:
    emulator.set_faults(hang=True)
    emulator.configure(
        history_delay=1.0
    )  # ComfyUI writes the interrupted prompt's entry after the cleanup began
    cancel_while_running(settings, emulator)
    cancelled = emulator.state()["prompt_ids"][-1]
    assert cancelled not in emulator.state()["history_ids"]
    emulator.set_faults()
    emulator.configure(history_delay=0.0)
    assert "error" not in asyncio.run(handle_job(job(), settings))
    state = emulator.state()
    assert not {cancelled, state["prompt_ids"][-1]} & set(state["history_ids"])


def test_a_prompt_still_running_after_the_wait_is_forgotten_by_the_next_job(
    emulator: Emulator, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cleanup, "CANCEL_WAIT_S", 0.0)
    emulator.set_faults(hang=True)
    emulator.configure(history_delay=1.5)
    cancel_while_running(settings, emulator)
    cancelled = emulator.state()["prompt_ids"][-1]
    deadline = time.monotonic() + 10
    while cancelled not in emulator.state()["history_ids"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert cancelled in emulator.state()["history_ids"]  # written after the cleanup had given up waiting
    emulator.set_faults()
    emulator.configure(history_delay=0.0)
    assert "error" not in asyncio.run(handle_job(job(), settings))
    assert cancelled not in emulator.state()["history_ids"]


def test_idle_timeout_interrupts_and_reports(emulator: Emulator, settings: Settings) -> None:
    emulator.set_faults(hang=True)
    result = asyncio.run(handle_job(job(), settings.model_copy(update={"comfy_idle_timeout_s": 0.5})))
    assert result["error_code"] == "timeout" and result["error"].startswith("timeout: ")
    state = emulator.state()
    assert state["interrupts"] >= 1 and state["prompt_ids"][-1] in state["queue_deletes"]


def test_comfyui_down_asks_for_a_new_worker(settings: Settings) -> None:
    down = settings.model_copy(
        update={"comfy_host": "127.0.0.1", "comfy_port": 9, "comfy_start_timeout_s": 0.3}
    )
    result = asyncio.run(handle_job(job(), down))
    assert result["error_code"] == "comfyui_unavailable"
    assert result["refresh_worker"] is True


def test_missing_input_object(settings: Settings) -> None:
    result = asyncio.run(handle_job({"id": "x"}, settings))
    assert result["error"].startswith("invalid_input: ") and result["details"][0]["field"] == "input"


def test_url_output_without_a_bucket_is_refused_before_work(emulator: Emulator, settings: Settings) -> None:
    prompts = len(emulator.state()["prompts"])
    result = asyncio.run(handle_job(job(output="url"), settings))
    assert result["error_code"] == "invalid_input" and "bucket" in result["error"]
    assert len(emulator.state()["prompts"]) == prompts


def test_unexpected_failure_is_an_internal_error_without_traceback(
    settings: Settings, tmp_path: Path
) -> None:
    broken = settings.model_copy(update={"workflows_dir": tmp_path / "nowhere"})
    result = asyncio.run(handle_job(job(), broken))
    assert result["error_code"] == "internal_error"
    assert "Traceback" not in result["error"] and "job-1" in result["error"]


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"lora_pairs": [{"high": ".hidden.safetensors", "high_url": "https://huggingface.co/a/b.safetensors"}]},
         "lora_pairs[0].high", "must not start with '.'"),
        ({"vae": "vae.ckpt"}, "vae", "ALLOW_PICKLE_MODELS"),
        ({"high_model_url": "https://models.example.com/high.safetensors"}, "high_model_url", "not allowed"),
        ({"lora_pairs": [{"low_url": "http://huggingface.co/a/b.safetensors"}]}, "lora_pairs[0].low_url", "https"),
        ({"vae_url": "https://huggingface.co/a/resolve/main/v.safetensors", "vae": "wan_2.1_vae.safetensors"},
         "vae_url", "the name of a default model file"),
    ],
)  # fmt: skip
def test_a_model_the_policy_refuses_is_refused_before_any_work(
    emulator: Emulator, settings: Settings, fields: dict[str, Any], field: str, words: str
) -> None:
    from tests.support.httpserver import HttpServer, Route

    before = emulator.state()
    with HttpServer() as images:
        images.routes["/start.png"] = Route(body=image_bytes(), headers={"Content-Type": "image/png"})
        allowed = settings.model_copy(update={"allow_private_urls": True})
        body = job(**fields)
        del body["input"]["image_base64"]
        body["input"]["image_url"] = images.url("/start.png")
        result = asyncio.run(handle_job(body, allowed))
        assert images.hits() == []
    assert result["error_code"] in ("invalid_input", "url_not_allowed"), result
    assert field in result["error"] and words in result["error"], result
    after = emulator.state()
    assert (len(after["uploads"]), len(after["prompt_requests"])) == (
        len(before["uploads"]),
        len(before["prompt_requests"]),
    )


def test_job_ids_become_safe_names() -> None:
    assert safe_id("job/../x y") == "job____x_y"
    assert safe_id("") == "job"
    assert len(safe_id("a" * 100)) == 48


def test_a_job_with_s3config_puts_its_video_in_that_bucket(
    settings: Settings, s3_endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    import requests

    secret = "secret-of-the-job-0123456789"
    body = job(output="auto")
    body["s3Config"] = {
        "accessId": "k",
        "accessSecret": secret,
        "bucketName": "videos",
        "endpointUrl": s3_endpoint,
    }
    with caplog.at_level("DEBUG"):
        result = asyncio.run(handle_job(body, settings))
    assert "video" not in result and result["bucket_key"].endswith("job-1.mp4"), result
    assert requests.get(result["video_url"], timeout=10).content[4:8] == b"ftyp"
    assert secret not in repr(result) + caplog.text

    body["s3Config"]["accessSecret"] = ""
    refused = asyncio.run(handle_job(body, settings))
    assert refused["error_code"] == "invalid_input" and "s3Config.accessSecret" in refused["error"]
