"""Faults around ComfyUI: each gives a clear error in time, the next job succeeds, nothing is left behind."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from tests.emulator import Emulator, EmulatorProcess
from tests.support.images import data_uri, image_bytes
from tests.support.settings import settings_for
from tests.support.video import probe_b64
from worker.config import Settings
from worker.handler import handle_job

START = data_uri(image_bytes())


def job(**fields: Any) -> dict[str, Any]:
    return {
        "id": "fault-job",
        "input": {"prompt": "p", "image_base64": START, "width": 128, "height": 128, "length": 9, **fields},
    }


def run(settings: Settings, **fields: Any) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    result = asyncio.run(handle_job(job(**fields), settings))
    return result, time.monotonic() - started


def assert_clean(emulator: Emulator) -> None:
    state = emulator.state()
    assert state["running"] is None and state["queue_pending"] == []
    assert [p for p in Path(emulator.input_dir).rglob("*") if p.is_file()] == []
    assert [p for p in Path(emulator.output_dir).rglob("*") if p.is_file()] == []


def assert_next_job_succeeds(emulator: Emulator, settings: Settings) -> None:
    emulator.set_faults()
    result, _ = run(settings)
    assert "error" not in result, result
    assert probe_b64(result["video"]).frames == 9
    assert_clean(emulator)


def test_hang_times_out_and_is_interrupted(emulator: Emulator, settings: Settings) -> None:
    emulator.set_faults(hang=True)
    result, took = run(settings.model_copy(update={"comfy_idle_timeout_s": 1.0}))
    assert result["error_code"] == "timeout" and "COMFY_IDLE_TIMEOUT_S" in result["error"]
    assert took < 5
    state = emulator.state()
    assert state["interrupts"] >= 1 and state["prompt_ids"][-1] in state["queue_deletes"]
    assert_next_job_succeeds(emulator, settings)


def test_dropped_websocket_still_completes(emulator: Emulator, settings: Settings) -> None:
    emulator.configure(step_delay=0.05)
    emulator.set_faults(drop_ws_after_steps=1)
    result, _ = run(settings, steps=6)
    assert "error" not in result, result
    assert probe_b64(result["video"]).frames == 9
    assert emulator.state()["ws_drops"]
    assert_next_job_succeeds(emulator, settings)


def test_execution_error_names_node_class_and_message(emulator: Emulator, settings: Settings) -> None:
    emulator.set_faults(exec_error_node="sampler_high")
    result, _ = run(settings)
    assert result["error_code"] == "comfyui_execution"
    assert "'sampler_high' (KSamplerAdvanced)" in result["error"]
    detail = result["details"][0]
    assert detail["node_id"] == "sampler_high" and detail["exception_message"]
    assert_next_job_succeeds(emulator, settings)


@pytest.mark.parametrize("fault", [{"no_output": True}, {"view_404": True}])
def test_missing_output_is_no_output(emulator: Emulator, settings: Settings, fault: dict[str, bool]) -> None:
    emulator.set_faults(**fault)
    result, _ = run(settings)
    assert result["error_code"] == "no_output" and result["error"].startswith("no_output: ")
    assert_next_job_succeeds(emulator, settings)


def test_output_too_large_without_a_bucket(emulator: Emulator, settings: Settings) -> None:
    emulator.set_faults(output_padding_mb=2)
    result, _ = run(settings.model_copy(update={"inline_output_max_mb": 1.0}))
    assert result["error_code"] == "output_too_large"
    assert "INLINE_OUTPUT_MAX_MB" in result["error"] and "bucket" in result["error"]
    assert_next_job_succeeds(emulator, settings)


def test_slow_start_is_waited_for(tmp_path: Path) -> None:
    with EmulatorProcess(startup_delay=1.5, wait=False) as proc:
        settings = settings_for(f"http://127.0.0.1:{proc.port}", tmp_path)
        result, took = run(settings)
        assert "error" not in result, result
        assert took >= 1.0


def test_start_deadline_gives_comfyui_unavailable(tmp_path: Path) -> None:
    with EmulatorProcess(startup_delay=30, wait=False) as proc:
        settings = settings_for(f"http://127.0.0.1:{proc.port}", tmp_path, COMFY_START_TIMEOUT_S="1")
        result, took = run(settings)
        assert result["error_code"] == "comfyui_unavailable" and "COMFY_START_TIMEOUT_S" in result["error"]
        assert result["refresh_worker"] is True
        assert took < 4


def test_crash_mid_job_is_reported_fast_and_asks_for_a_new_worker(tmp_path: Path) -> None:
    with EmulatorProcess(step_delay=0.1, faults={"crash_after_steps": 2}) as proc:
        settings = settings_for(proc.url, tmp_path)
        result, took = run(settings, steps=10)
        assert result["error_code"] == "comfyui_unavailable", result
        assert result["refresh_worker"] is True
        assert took < 10
