"""What WARMUP=true buys: the first job's time with and without the warm-up, on the real ComfyUI (tiny models).

For each mode a fresh ComfyUI (nothing loaded) and a worker as on RunPod (production mode, against the suite's
stand-in of RunPod's job API) whose one job is queued before it starts, as for a worker started by that job:
- ready: from the worker's start to its first request for a job (the start check, and the warm-up if any);
- first result: from the worker's start to the job's result (what the job's sender waits, after ComfyUI's start);
- job: the job's own time, from the worker taking it to its result (what a job sent to a worker that is already
  up waits: a pre-scaled worker, or one FlashBoot resumed).
Run under the real tier's lock (ComfyUI takes up to 13 GB):
    flock /tmp/wan-real-tier.lock python bench/warmup.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.real.comfy_env import ComfyEnv, ensure_env, ensure_source, pins_from_dockerfile  # noqa: E402
from tests.real.comfyui_server import RealComfyUI  # noqa: E402
from tests.real.runpod_standin import ProductionWorker, RunpodStandin, production_env  # noqa: E402
from tests.real.tiny_models import ensure_volume, tiny_manifest  # noqa: E402
from tests.support.images import data_uri, image_bytes  # noqa: E402

JOB = {
    "prompt": "a red fox runs through the snow",
    "image_base64": data_uri(image_bytes("PNG", (128, 128), (200, 60, 30))),
    "width": 128,
    "height": 128,
    "length": 9,
    "seed": 7,
}


def first_job(
    comfy_env: ComfyEnv, volume: Path, work: Path, warmup: bool, timeout_s: float
) -> dict[str, float]:
    (work / "comfyui").mkdir()
    comfyui = RealComfyUI(comfy_env, volume, work / "comfyui")
    comfyui.start()
    try:
        with RunpodStandin() as standin:
            env = {**comfyui.worker_env(), "ALLOW_CPU": "true", "WARMUP": str(warmup).lower()}
            env["MODELS_MANIFEST"] = str(tiny_manifest(volume, work))
            job_id = standin.submit(JOB)
            started = time.monotonic()
            worker = ProductionWorker(production_env(env, standin), cwd=work, log_path=work / "worker.log")
            try:
                result = standin.wait_result(job_id, timeout_s=timeout_s)
                done = time.monotonic()
            finally:
                log = worker.log()
                worker.stop()
            if "error" in result:
                raise SystemExit(f"the job failed: {result['error']}\n{log[-3000:]}")
            if warmup and "job warmup: done in" not in log:
                raise SystemExit(f"the warm-up did not run:\n{log[-3000:]}")
            folders = (comfyui.input_dir, comfyui.output_dir)
            leftovers = [f.name for folder in folders for f in folder.rglob("*") if f.is_file()]
            print(f"files left in ComfyUI's folders: {leftovers or 'none'}")
            taken = standin.taken[job_id]
            return {"ready": taken - started, "first result": done - started, "job": done - taken}
    finally:
        comfyui.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed for each mode")
    args = parser.parse_args()
    pins = pins_from_dockerfile()
    comfy_env = ensure_env(pins, ensure_source(pins))
    volume = ensure_volume(comfy_env)
    results = {}
    for warmup in (False, True):
        with tempfile.TemporaryDirectory(prefix="wan-warmup-bench-") as work:
            results[warmup] = first_job(comfy_env, volume, Path(work), warmup, args.timeout)
        print(
            f"WARMUP={str(warmup).lower():5}  "
            + "  ".join(f"{k} {v:6.1f} s" for k, v in results[warmup].items())
        )
    for key in results[False]:
        print(
            f"{key:12}: with the warm-up {results[True][key] / results[False][key]:.2f} x the time without it"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
