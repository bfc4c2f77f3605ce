"""Progress updates: a few a second, every stage in order, the latest state, nothing after close; and the
bytes of a job's model download, end to end through the handler."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from itertools import groupby, pairwise
from typing import Any

from tests.emulator import Emulator
from tests.models.fileserver import FileServer, model_bytes
from tests.support.images import data_uri, image_bytes
from tests.support.settings import settings_for
from worker.config import Settings
from worker.handler import handle_job
from worker.progress import ProgressReporter

STAGES = ["inputs", "models", "comfyui", "sampling", "delivering"]


class Recorder:
    """A sender that keeps what it was given and when."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.lock = threading.Lock()
        self.calls: list[tuple[float, dict[str, Any]]] = []
        self.busy = threading.Event()

    def __call__(self, job: dict[str, Any], update: dict[str, Any]) -> None:
        self.busy.set()
        time.sleep(self.delay_s)
        with self.lock:
            self.calls.append((time.monotonic(), update))
        self.busy.clear()

    @property
    def updates(self) -> list[dict[str, Any]]:
        with self.lock:
            return [update for _, update in self.calls]

    def stages(self) -> list[str]:
        return [stage for stage, _ in groupby(u["stage"] for u in self.updates)]

    def gaps(self) -> list[float]:
        with self.lock:
            times = [t for t, _ in self.calls]
        return [b - a for a, b in pairwise(times)]


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def reporter(recorder: Recorder, interval_s: float, enabled: bool = True) -> ProgressReporter:
    return ProgressReporter({"id": "j"}, enabled=enabled, min_interval_s=interval_s, sender=recorder)


def test_a_fast_job_sends_every_stage_in_order_with_the_latest_state() -> None:
    sent, interval = Recorder(), 0.1
    progress = reporter(sent, interval)
    posted: list[dict[str, Any]] = []
    progress.stage("inputs")
    posted.append({"stage": "inputs"})
    progress.stage("models")
    for done in (0, 10, 40):
        progress.download("lora_pairs[0].high_url", done, 40)
    posted.append(
        {"stage": "models", "field": "lora_pairs[0].high_url", "bytes": 40, "total": 40, "percent": 100.0}
    )
    progress.stage("comfyui")
    posted.append({"stage": "comfyui"})
    progress.stage("sampling", step=0, steps=4)
    for step in range(1, 5):
        progress.step(step, 4)
    posted.append({"stage": "sampling", "step": 4, "steps": 4})
    progress.stage("delivering")
    posted.append({"stage": "delivering"})

    wait_for(lambda: sent.stages()[-1:] == ["delivering"])
    time.sleep(2 * interval)
    progress.close()
    assert sent.stages() == STAGES
    last_of_each = {u["stage"]: u for u in sent.updates}
    assert list(last_of_each.values()) == posted
    assert len(sent.updates) < 12  # what waited was replaced, not queued
    assert min(sent.gaps()) >= 0.9 * interval


def test_a_one_second_job_shows_every_stage_with_the_default_intervals() -> None:
    sent = Recorder()
    progress = ProgressReporter({"id": "j"}, enabled=True, sender=sent)
    started = time.monotonic()
    for stage in ("inputs", "models", "comfyui", "sampling", "interpolating", "delivering"):
        progress.stage(stage)
        time.sleep(0.02)
    wait_for(lambda: sent.stages()[-1:] == ["delivering"])
    progress.close()
    assert sent.stages() == ["inputs", "models", "comfyui", "sampling", "interpolating", "delivering"]
    assert time.monotonic() - started < 1.0
    assert min(sent.gaps()) >= 0.09


def test_steps_are_throttled_and_the_last_step_is_sent() -> None:
    sent, interval = Recorder(), 0.1
    progress = reporter(sent, interval)
    started = time.monotonic()
    progress.stage("sampling", step=0, steps=30)
    for step in range(1, 31):
        time.sleep(0.01)
        progress.step(step, 30)
    wait_for(lambda: sent.updates[-1:] == [{"stage": "sampling", "step": 30, "steps": 30}])
    elapsed = time.monotonic() - started
    progress.close()
    steps = [u["step"] for u in sent.updates]
    assert steps == sorted(set(steps)) and steps[-1] == 30
    assert len(steps) <= elapsed / interval + 1
    assert min(sent.gaps()) >= 0.9 * interval


def test_close_discards_what_waits_and_nothing_is_sent_after_it() -> None:
    sent = Recorder(delay_s=0.1)
    progress = reporter(sent, 0.2)
    progress.stage("inputs")
    wait_for(sent.busy.is_set)  # "inputs" is being sent
    progress.stage("models")
    progress.stage("comfyui")
    started = time.monotonic()
    progress.close()
    assert time.monotonic() - started < 0.5  # waits for the update in flight only
    assert sent.updates == [{"stage": "inputs"}]  # sent before close returned; the rest discarded
    progress.stage("delivering")
    time.sleep(0.4)
    assert sent.updates == [{"stage": "inputs"}]


def test_nothing_when_disabled() -> None:
    sent = Recorder()
    progress = reporter(sent, 0.0, enabled=False)
    progress.stage("inputs")
    progress.step(1, 4)
    progress.close()
    assert sent.updates == [] and progress._thread is None


def test_a_failing_sender_never_raises_and_later_updates_still_go() -> None:
    sent = Recorder()
    calls = []

    def flaky(job: dict[str, Any], update: dict[str, Any]) -> None:
        calls.append(update)
        if len(calls) == 1:
            raise RuntimeError("network down")
        sent(job, update)

    progress = ProgressReporter({"id": "j"}, enabled=True, min_interval_s=0.01, sender=flaky)
    progress.stage("inputs")
    wait_for(lambda: len(calls) == 1)
    progress.stage("models")
    wait_for(lambda: sent.updates == [{"stage": "models"}])
    progress.close()


def test_download_updates_name_the_field_and_the_share_done() -> None:
    sent = Recorder()
    progress = reporter(sent, 0.01)
    progress.stage("models")
    wait_for(lambda: len(sent.updates) == 1)
    progress.download("high_model_url", 5, 40)
    wait_for(lambda: len(sent.updates) == 2)
    progress.download("vae_url", 7, None)
    wait_for(lambda: len(sent.updates) == 3)
    progress.close()
    assert sent.updates[1:] == [
        {"stage": "models", "field": "high_model_url", "bytes": 5, "total": 40, "percent": 12.5},
        {"stage": "models", "field": "vae_url", "bytes": 7},
    ]


# -- through the handler -----------------------------------------------------------------------------------


SIZE = 1_600_000
RATE = 800_000  # bytes a second: a download of about two seconds, long enough for two progress reports


def test_a_model_download_reports_its_bytes_to_the_client(emulator: Emulator, settings: Settings) -> None:
    local = settings_for(
        emulator.url,
        settings.volume_root,
        COMFY_INPUT_DIR=emulator.input_dir,
        COMFY_OUTPUT_DIR=emulator.output_dir,
        PROGRESS_UPDATES="true",
        ALLOW_HTTP_MODEL_URLS="true",
        ALLOW_PRIVATE_URLS="true",
        ALLOWED_MODEL_HOSTS="127.0.0.1",
        DOWNLOAD_CONNECTIONS="1",
    )
    loras = settings.volume_root / "loras"
    emulator.configure(model_dirs={"loras": [str(loras)]})
    sent = Recorder()
    try:
        with FileServer() as server:
            url = server.add("/style_high.safetensors", model_bytes(SIZE), throttle_bps=RATE)
            job = {
                "id": "job-progress",
                "input": {
                    "prompt": "p",
                    "image_base64": data_uri(image_bytes()),
                    "width": 128,
                    "height": 128,
                    "length": 9,
                    "lora_pairs": [{"high_url": url}],
                },
            }
            result = asyncio.run(handle_job(job, local, sender=sent))
    finally:
        emulator.configure(model_dirs={})
    assert "error" not in result, result
    assert (loras / "style_high.safetensors").stat().st_size == SIZE

    stages = sent.stages()
    assert stages == STAGES[: len(stages)] and stages[:2] == ["inputs", "models"]
    downloads = [u for u in sent.updates if "field" in u]
    assert len(downloads) >= 2
    for update in downloads:
        assert update["stage"] == "models" and update["field"] == "lora_pairs[0].high_url"
        assert update["total"] == SIZE and update["percent"] == round(100 * update["bytes"] / SIZE, 1)
    assert [u["bytes"] for u in downloads] == sorted(u["bytes"] for u in downloads)
    assert downloads[-1]["bytes"] == SIZE and downloads[-1]["percent"] == 100.0  # the end is reported too
    # the handler's reporter: a new stage 0.1 s after the last update, more of one stage at most two a second
    assert min(sent.gaps()) >= 0.09
    with sent.lock:
        calls = list(sent.calls)
    same_stage = [b[0] - a[0] for a, b in pairwise(calls) if a[1]["stage"] == b[1]["stage"]]
    assert same_stage and min(same_stage) >= 0.45
