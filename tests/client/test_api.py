"""The Python API against a fake RunPod endpoint: submit, poll with progress, results, errors, cancel."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import worker.client
from tests.client.fake_runpod import DROP, FakeRunPod, completed, failed, progress, queued
from tests.support.images import image_bytes
from worker.client import (
    ApiError,
    Client,
    Interrupted,
    JobFailed,
    JobStatus,
    Progress,
    UsageError,
    WaitTimeout,
    job_failure,
    make_input,
)

VIDEO = b"\x00\x00\x00\x18ftypmp42 not really a video"
FAST = (0.01, 0.05)


def output(**extra: object) -> dict[str, object]:
    return {
        "video": base64.b64encode(VIDEO).decode(),
        "mime_type": "video/mp4",
        "mode": "i2v",
        "seed": 1234,
        "width": 256,
        "height": 448,
        "length": 17,
        "fps": 16.0,
        "steps": 4,
        "adjustments": [{"field": "width", "requested": 250, "used": 256, "reason": "rounded"}],
        "timings": {"inputs": 0.1, "sampling": 2.5, "total": 3.0},
        "size_bytes": len(VIDEO),
        **extra,
    }


@pytest.fixture
def runpod() -> Iterator[FakeRunPod]:
    with FakeRunPod() as server:
        yield server


@pytest.fixture
def client(runpod: FakeRunPod) -> Client:
    return Client(
        endpoint=runpod.endpoint, api_key=runpod.api_key, base_url=runpod.base_url, poll_interval=FAST
    )


def test_generate_reports_progress_and_returns_the_result(runpod: FakeRunPod, client: Client) -> None:
    runpod.scripts.append(
        [
            queued(),
            progress("inputs"),
            progress("sampling", 1, 4),
            progress("sampling", 3, 4),
            progress("delivering"),
            completed(output()),
        ]
    )
    seen: list[Progress] = []
    result = client.generate({"prompt": "p", "image_url": "https://x/a.png"}, on_progress=seen.append)
    assert seen == [
        Progress("queued"),
        Progress("inputs"),
        Progress("sampling", 1, 4),
        Progress("sampling", 3, 4),
        Progress("delivering"),
    ]
    assert seen[3].fraction == 0.75
    assert (result.seed, result.mode, result.width, result.length, result.fps) == (1234, "i2v", 256, 17, 16.0)
    assert result.timings["total"] == 3.0
    assert result.adjustments[0].used == 256
    assert client.video_bytes(result) == VIDEO
    assert runpod.jobs["job-1"].input == {"prompt": "p", "image_url": "https://x/a.png"}
    assert str(output()["video"]) not in repr(result)


def test_video_url_is_downloaded_without_the_api_key(
    runpod: FakeRunPod, client: Client, tmp_path: Path
) -> None:
    runpod.files["v.mp4"] = VIDEO
    runpod.faults["files"] = [(503, {}), DROP]
    runpod.scripts.append([completed(output(video=None, video_url=runpod.file_url("v.mp4")))])
    result = client.generate({"prompt": "p"})
    path = client.save_video(result, tmp_path / "sub" / "out.mp4")
    assert path.read_bytes() == VIDEO
    assert [p.name for p in path.parent.iterdir()] == ["out.mp4"]
    downloads = [hit for hit in runpod.hits() if hit.path.startswith("/files/")]
    assert len(downloads) == 3  # the two faults, then the file
    assert all("authorization" not in {k.lower() for k in hit.headers} for hit in downloads)


def test_production_failure_shows_message_and_code(runpod: FakeRunPod, client: Client) -> None:
    runpod.scripts.append(
        [
            failed(
                "invalid_input: width must be between 128 and 1920 pixels, got 4000",
                {"error_code": "invalid_input", "details": [{"field": "width", "message": "..."}]},
            )
        ]
    )
    with pytest.raises(JobFailed) as caught:
        client.generate({"prompt": "p"})
    exc = caught.value
    assert (exc.code, exc.status, exc.job_id) == ("invalid_input", "FAILED", "job-1")
    assert exc.message == "width must be between 128 and 1920 pixels, got 4000"
    assert str(exc) == "width must be between 128 and 1920 pixels, got 4000 (code invalid_input)"
    assert exc.details[0]["field"] == "width"


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (
            JobStatus("j", "FAILED", error="comfyui_execution: node sampler_high failed"),
            "node sampler_high failed (code comfyui_execution)",
        ),
        (JobStatus("j", "FAILED", error="Job ID not found"), "Job ID not found"),
        (JobStatus("j", "CANCELLED"), "the job was cancelled (code cancelled)"),
        (JobStatus("j", "TIMED_OUT"), "the job timed out on the endpoint (code timed_out)"),
        (
            JobStatus(
                "j",
                "FAILED",
                error='{"error_type": "<class \'ValueError\'>", "error_message": "boom", "error_traceback": "Traceback..."}',
            ),
            "ValueError: boom",
        ),
        (
            JobStatus(
                "j",
                "FAILED",
                output={"error": "timeout: no message from ComfyUI for 60 s", "error_code": "timeout"},
            ),
            "no message from ComfyUI for 60 s (code timeout)",
        ),
    ],
)
def test_failures_read_as_plain_text(status: JobStatus, expected: str) -> None:
    assert str(job_failure(status)) == expected


def test_transient_errors_are_retried(runpod: FakeRunPod, client: Client) -> None:
    runpod.faults["status"] = [(502, {}), DROP]
    runpod.scripts.append([progress("models"), completed(output())])
    assert client.generate({"prompt": "p"}).seed == 1234
    assert runpod.status_polls() == 4


def test_retry_after_is_honoured(runpod: FakeRunPod, client: Client) -> None:
    runpod.faults["status"] = [(429, {"Retry-After": "1"})]
    runpod.scripts.append([completed(output())])
    started = time.monotonic()
    assert client.generate({"prompt": "p"}).seed == 1234
    assert time.monotonic() - started >= 0.9
    assert runpod.status_polls() == 2


def test_a_submit_is_sent_again_only_when_the_server_did_not_take_it(
    runpod: FakeRunPod, client: Client
) -> None:
    runpod.faults["run"] = [(503, {}), (429, {})]
    assert client.submit({"prompt": "p"}) == "job-1"
    assert runpod.calls("run") == 3
    runpod.faults["run"] = [(500, {})]
    with pytest.raises(ApiError) as caught:
        client.submit({"prompt": "p"})
    assert caught.value.status_code == 500 and "HTTP 500" in str(caught.value)
    runpod.faults["run"] = [DROP]
    with pytest.raises(ApiError, match="cannot reach"):
        client.submit({"prompt": "p"})
    assert runpod.calls("run") == 5 and list(runpod.jobs) == ["job-1"]


def test_errors_that_outlast_the_retries_keep_their_status(
    runpod: FakeRunPod, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker.client, "RETRY", worker.client.RETRY.new(backoff_factor=0))  # no waiting
    client = Client(endpoint=runpod.endpoint, api_key=runpod.api_key, base_url=runpod.base_url)
    job_id = client.submit({"prompt": "p"})
    runpod.faults["status"] = [(503, {})] * 6
    with pytest.raises(ApiError) as caught:
        client.wait(job_id)
    assert caught.value.status_code == 503 and runpod.status_polls() == 6


def test_wrong_key_is_refused_without_echoing_it(runpod: FakeRunPod) -> None:
    client = Client(endpoint=runpod.endpoint, api_key="wrong-secret", base_url=runpod.base_url)
    with pytest.raises(ApiError) as caught:
        client.submit({"prompt": "p"})
    assert caught.value.status_code == 401
    assert "RUNPOD_API_KEY" in str(caught.value) and "wrong-secret" not in str(caught.value)
    assert "wrong-secret" not in repr(client)


def test_cancel_and_timeout(runpod: FakeRunPod, client: Client) -> None:
    runpod.default_script = [progress("sampling", 1, 4)]
    job_id = client.submit({"prompt": "p"})
    with pytest.raises(WaitTimeout):
        client.wait(job_id, timeout=0.2)
    assert client.cancel(job_id) is True
    assert runpod.cancelled == [job_id]
    with pytest.raises(JobFailed) as caught:
        client.wait(job_id)
    assert caught.value.code == "cancelled"


def test_stop_event_interrupts_waiting(runpod: FakeRunPod, client: Client) -> None:
    job_id = client.submit({"prompt": "p"})
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    with pytest.raises(Interrupted):
        client.wait(job_id, stop=stop)
    assert runpod.cancelled == []


def test_backend_choice_and_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UsageError):
        Client()
    with pytest.raises(UsageError):
        Client(endpoint="a", url="http://localhost:8000")
    monkeypatch.delenv("RUNPOD_API_KEY", raising=False)
    with pytest.raises(UsageError, match="RUNPOD_API_KEY"):
        Client(endpoint="abc")
    monkeypatch.setenv("RUNPOD_API_KEY", "from-env")
    monkeypatch.setenv("RUNPOD_API_BASE", "http://127.0.0.1:9/v2/")
    client = Client(endpoint="abc")
    assert client.base == "http://127.0.0.1:9/v2/abc" and client.can_cancel
    local = Client(url="http://localhost:8000/")
    assert local.base == "http://localhost:8000" and not local.can_cancel
    assert local.cancel("x") is False


def test_make_input_sends_files_as_base64(tmp_path: Path) -> None:
    start, end = tmp_path / "start.bin", tmp_path / "end.jpg"
    start.write_bytes(image_bytes("PNG"))
    end.write_bytes(image_bytes("JPEG"))
    job = make_input("a fox", start, end_image=end, width=256, seed=None, lora_pairs=[])
    assert base64.b64decode(job["image_base64"]) == start.read_bytes()
    assert base64.b64decode(job["end_image_base64"]) == end.read_bytes()
    assert job["width"] == 256 and "seed" not in job and job["lora_pairs"] == []
    assert make_input("p", "https://example.com/a.png")["image_url"] == "https://example.com/a.png"
    assert make_input("p", "volume:inputs/a.png")["image_path"] == "inputs/a.png"
    with pytest.raises(UsageError, match="no such image file"):
        make_input("p", tmp_path / "missing.png")
