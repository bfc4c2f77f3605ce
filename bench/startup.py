"""Benchmark: start.sh from launch to a ready worker, with a ComfyUI stand-in that answers at once.

    python bench/startup.py [--runs 5] [--no-real-worker]

Each run launches start.sh with SKIP_MODEL_DOWNLOAD=true, the stand-in of tests/container as ComfyUI, and
times, from the moment the stand-in listens (its own start, which start.sh cannot make faster):

- handoff: until the worker command runs (a two-line shell script that writes the time and exits), i.e. what
  start.sh itself adds after ComfyUI is up: noticing that it answers, and starting the worker;
- local API: until the real worker (`python -m worker --rp_serve_api`) answers HTTP, which adds the worker's
  own import and start-up.

The target is the worker ready within 1 s of the stand-in's own start; the ratios printed are time / target
(below 1.0 meets it). The run also reports start.sh's time before ComfyUI starts (reading its settings).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
START_SH = REPO / "start.sh"
STANDIN = REPO / "tests" / "container" / "standin_comfy.py"
TARGET_S = 1.0

# The worker stand-in of the handoff runs: a shell script that notes the time it started (no interpreter start-up
# to add to start.sh's own figure).
WORKER_SCRIPT = 'date +%s.%N > "$1"\n'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def events(path: Path) -> dict[str, float]:
    """Event name -> time; "exec" is when the stand-in's process was created."""
    found: dict[str, float] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            event = json.loads(line)
            found.setdefault(event["event"], float(event["t"]))
            if event.get("exec_t") is not None:
                found.setdefault("exec", float(event["exec_t"]))
    return found


def base_env(tmp: Path, record: Path) -> dict[str, str]:
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    paths_file = tmp / "extra_model_paths.yaml"
    paths_file.write_text("bench:\n  base_path: ${VOLUME_ROOT}\n  vae: vae\n", encoding="utf-8")
    env.update(
        PYTHON=sys.executable,
        PYTHONPATH=str(REPO / "src"),
        COMFY_CMD=f"{sys.executable} {STANDIN} --mode ready --record {record}",
        COMFY_PORT=str(free_port()),
        VOLUME_ROOT=str(tmp),
        EXTRA_MODEL_PATHS=str(paths_file),
        SKIP_MODEL_DOWNLOAD="true",
        COMFY_START_TIMEOUT_S="30",
    )
    return env


def run_handoff(tmp: Path) -> dict[str, float]:
    record, mark, script = tmp / "comfy.jsonl", tmp / "worker-started", tmp / "worker.sh"
    script.write_text(WORKER_SCRIPT, encoding="utf-8")
    env = base_env(tmp, record)
    env["WORKER_CMD"] = f"sh {script} {mark}"
    launched = time.time()
    done = subprocess.run(["bash", str(START_SH)], env=env, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise SystemExit(f"start.sh failed ({done.returncode}):\n{done.stderr}")
    seen = events(record)
    worker = float(mark.read_text(encoding="utf-8"))
    return {
        "before_comfy": seen.get("exec", seen["start"]) - launched,
        "standin_own_start": seen["listening"] - seen.get("exec", seen["start"]),
        "handoff": worker - seen["listening"],
    }


def run_local_api(tmp: Path) -> dict[str, float]:
    record = tmp / "comfy.jsonl"
    env = base_env(tmp, record)
    api_port = free_port()
    env.update(
        WORKER_CMD=f"{sys.executable} -m worker", SERVE_API_LOCALLY="true", LOCAL_API_PORT=str(api_port)
    )
    env.update(LOCAL_API_HOST="127.0.0.1")
    proc = subprocess.Popen(
        ["bash", str(START_SH)],
        env=env,
        cwd=tmp,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(
                    f"start.sh exited ({proc.returncode}):\n{proc.stderr.read() if proc.stderr else ''}"
                )
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/docs", timeout=1):
                    ready = time.time()
                    break
            except OSError:
                time.sleep(0.01)
        else:
            raise SystemExit("the worker's local API did not answer within 60 s")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    seen = events(record)
    return {"local_api": ready - seen["listening"]}


def summary(name: str, values: list[float]) -> str:
    median = statistics.median(values)
    return f"{name:<26} median {median:6.3f} s   max {max(values):6.3f} s   ratio to 1 s target {median / TARGET_S:5.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-real-worker", action="store_true", help="skip the run with the real worker")
    args = parser.parse_args()

    results: dict[str, list[float]] = {}
    real = not args.no_real_worker and importlib.util.find_spec("runpod") is not None
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            for key, value in run_handoff(Path(tmp)).items():
                results.setdefault(key, []).append(value)
        if real:
            with tempfile.TemporaryDirectory() as tmp:
                for key, value in run_local_api(Path(tmp)).items():
                    results.setdefault(key, []).append(value)

    print(f"start.sh start-up, {args.runs} runs, times from the stand-in listening unless noted")
    print(summary("start.sh before ComfyUI", results["before_comfy"]) + "   (from launch)")
    print(summary("stand-in's own start", results["standin_own_start"]) + "   (not start.sh's)")
    print(summary("handoff to the worker", results["handoff"]))
    if "local_api" in results:
        print(summary("real worker's API ready", results["local_api"]))
    return 0 if statistics.median(results["handoff"]) <= TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
