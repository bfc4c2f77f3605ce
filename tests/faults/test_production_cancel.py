"""A cancel as it reaches a worker on RunPod: through the job API (the stand-in), to a sampling ComfyUI (the
emulator). The real tier runs the same story against the real ComfyUI; this one takes seconds."""

from __future__ import annotations

import time
from pathlib import Path

from tests.emulator import Emulator
from tests.real.runpod_standin import ProductionWorker, RunpodStandin, production_env
from tests.support.images import data_uri, image_bytes
from tests.support.video import probe_b64
from tests.support.worker_proc import worker_env

JOB = {"prompt": "p", "image_base64": data_uri(image_bytes()), "width": 128, "height": 128, "length": 9}


def test_a_cancel_interrupts_comfyui_posts_nothing_and_the_next_job_runs(
    emulator: Emulator, tmp_path: Path
) -> None:
    emulator.set_faults()
    emulator.configure(step_delay=0.2)
    with RunpodStandin() as standin:
        env = production_env(worker_env(emulator.url, tmp_path), standin)
        worker = ProductionWorker(env, cwd=tmp_path, log_path=tmp_path / "worker.log")
        try:
            worker.wait_polling(standin)
            job_id = standin.submit({**JOB, "steps": 20})
            standin.wait_taken(job_id, timeout_s=30)
            deadline = time.monotonic() + 30
            while emulator.state()["running"] is None:
                assert time.monotonic() < deadline, worker.log()
                time.sleep(0.05)
            prompt_id = emulator.state()["running"]

            standin.cancel(job_id)
            cancelled_at = time.monotonic()
            state = emulator.state()
            while state["running"] is not None or prompt_id not in state["queue_deletes"]:
                assert time.monotonic() - cancelled_at < 5, f"ComfyUI still has the cancelled job: {state}"
                time.sleep(0.05)
                state = emulator.state()
            assert state["interrupts"] >= 1
            assert "cancelled; interrupting ComfyUI" in worker.log()
            time.sleep(0.5)
            assert job_id not in standin.results, standin.results[job_id]
            assert standin.progress.get(job_id), "the job sent progress updates while it ran"

            emulator.configure(step_delay=0.0)
            result = standin.wait_result(standin.submit(JOB), timeout_s=30)
            assert "error" not in result, result
            assert probe_b64(result["output"]["video"]).frames == 9
        finally:
            worker.stop()
