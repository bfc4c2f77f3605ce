"""The start check as RunPod runs it: ``python -m worker`` in production mode (the SDK runs fitness checks only
there), against the stand-in of RunPod's job API. An unfit worker exits non-zero before it asks for a job,
with its reason in its log and in its last ping; a fit one takes jobs, after its warm-up when WARMUP=true."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.emulator import Emulator
from tests.real.runpod_standin import ProductionWorker, RunpodStandin, production_env
from tests.support.images import data_uri, image_bytes
from tests.support.video import probe_b64
from tests.support.worker_proc import free_port, worker_env
from worker.models.manifest import default_names, load_manifest

JOB = {"prompt": "p", "image_base64": data_uri(image_bytes()), "width": 128, "height": 128, "length": 9}
HIGH = default_names()["high_model"]


def refusal(comfy_url: str, volume: Path, tmp_path: Path, **extra: str) -> tuple[str, RunpodStandin]:
    """Start a production worker that must be refused; its log, and the stand-in it never asked for a job."""
    with RunpodStandin() as standin:
        env = production_env({**worker_env(comfy_url, volume), **extra}, standin)
        worker = ProductionWorker(env, cwd=tmp_path, log_path=tmp_path / "worker.log")
        try:
            log = worker.wait_refused()
        finally:
            worker.stop()
    assert standin.take_polls == 0, "an unfit worker asked for a job"
    assert "Worker is unhealthy, exiting." in log
    return log, standin


def reported(standin: RunpodStandin) -> tuple[str, str]:
    """The failed check and its reason, as the worker's ping told RunPod."""
    assert len(standin.unhealthy) == 1, standin.unhealthy
    return standin.unhealthy[0]["check"][0], standin.unhealthy[0]["reason"][0]


def test_a_worker_without_comfyui_is_refused(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    log, standin = refusal(closed, tmp_path, tmp_path, COMFY_START_TIMEOUT_S="1")
    assert "Fitness check failed: comfyui_answers" in log
    check, reason = reported(standin)
    assert check == "comfyui_answers"
    assert "did not become ready within 1 s (COMFY_START_TIMEOUT_S)" in reason


def test_a_worker_on_a_comfyui_without_cuda_is_refused_unless_cpu_is_allowed(tmp_path: Path) -> None:
    with Emulator(cpu=True) as cpu_only:
        log, standin = refusal(cpu_only.url, tmp_path, tmp_path)
        assert "Fitness check failed: cuda_device" in log
        check, reason = reported(standin)
        assert check == "cuda_device"
        assert "no CUDA device (devices: ['cpu']); ALLOW_CPU=true allows that" in reason

        with RunpodStandin() as standin:
            env = production_env(worker_env(cpu_only.url, tmp_path, ALLOW_CPU="true"), standin)
            worker = ProductionWorker(env, cwd=tmp_path, log_path=tmp_path / "allowed.log")
            try:
                worker.wait_polling(standin)
                assert "All fitness checks passed" in worker.log()
            finally:
                worker.stop()
        assert not standin.unhealthy


def test_a_cut_default_model_is_refused(emulator: Emulator, tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    (volume / "models").mkdir(parents=True)
    (volume / "models" / HIGH).write_bytes(b"\0" * 1000)  # what an interrupted download leaves
    size = next(e.size for e in load_manifest() if e.name == HIGH)
    log, standin = refusal(emulator.url, volume, tmp_path)
    assert "Fitness check failed: default_models" in log
    check, reason = reported(standin)
    assert check == "default_models"
    assert f"{volume / 'models' / HIGH} is cut short (1000 of {size} bytes)" in reason
    assert "python -m worker models ensure" in reason


def test_the_warm_up_runs_the_default_graph_then_leaves_nothing_behind(tmp_path: Path) -> None:
    with Emulator() as fresh, RunpodStandin() as standin:  # a fresh one: nothing cached before the warm-up
        dirs = {"COMFY_INPUT_DIR": fresh.input_dir, "COMFY_OUTPUT_DIR": fresh.output_dir}
        env = production_env(worker_env(fresh.url, tmp_path, WARMUP="true", **dirs), standin)
        worker = ProductionWorker(env, cwd=tmp_path, log_path=tmp_path / "worker.log")
        try:
            worker.wait_polling(standin)
            log = worker.log()
            assert "job warmup: i2v 128x128, 5 frames, 2 steps" in log
            assert log.index("job warmup: done in") < log.index("All fitness checks passed")
            state = fresh.state()
            assert len(state["prompt_ids"]) == 1, state["prompt_ids"]
            assert not state["history_ids"], "the warm-up's prompt stayed in ComfyUI's history"
            assert not os.listdir(fresh.input_dir), "the warm-up's image stayed in ComfyUI's input folder"
            assert not [f for _, _, files in os.walk(fresh.output_dir) for f in files], "its video stayed"

            job_id = standin.submit(JOB)
            result = standin.wait_result(job_id, timeout_s=30)
            assert "error" not in result, result
            assert probe_b64(result["output"]["video"]).frames == 9
            cached = set(result["output"]["cached_nodes"])
            assert {"high_model", "low_model", "lightning_high", "text_encoder", "vae"} <= cached, cached
            assert list(standin.results) == [job_id], "the warm-up posted a result to RunPod"
        finally:
            worker.stop()


def test_a_warm_up_past_its_deadline_is_stopped_and_the_worker_takes_jobs(
    emulator: Emulator, tmp_path: Path
) -> None:
    emulator.set_faults()
    emulator.configure(step_delay=30.0)
    interrupts = emulator.state()["interrupts"]
    with RunpodStandin() as standin:
        env = production_env(worker_env(emulator.url, tmp_path, WARMUP="true", WARMUP_TIMEOUT_S="2"), standin)
        worker = ProductionWorker(env, cwd=tmp_path, log_path=tmp_path / "worker.log")
        try:
            started = time.monotonic()
            worker.wait_polling(standin)
            assert time.monotonic() - started < 20
            assert "job warmup: failed: timeout" in worker.log()
            assert emulator.state()["interrupts"] > interrupts, "the late warm-up was not interrupted"
        finally:
            worker.stop()
            emulator.configure(step_delay=0.0)
