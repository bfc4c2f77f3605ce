"""Cold start through a slow network volume: start.sh to the first video, with and without the model read-ahead.

    flock /tmp/wan-real-tier.lock python bench/coldstart.py [--latency-ms 2] [--stream-mb 200] [--total-mb 1500]

1. Writes, once, a few GB of real random weights under the default models' names (``coldstart_models.py``, with
   the real ComfyUI tier's cached environment: ``tests/real/comfy_env.py``), into ``--cache``.
2. Mounts the slow-volume stand-in over them (``tests/support/slowfs.py``: a latency per read request, a
   bandwidth limit per stream and in all) and uses the mount as ``VOLUME_ROOT``.
3. Runs start.sh as the image does (``SKIP_MODEL_DOWNLOAD=true``: the files are there), with the real ComfyUI v0.33.0
   on CPU and the real worker, which runs one I2V job (``test_input.json``, 128x128, 9 frames, 4 Lightning steps)
   and exits: the time from start.sh's start to the worker's exit after delivering the video. Three runs:

   - ``warm``: the files already in the page cache, read-ahead off: ComfyUI's own start plus the job;
   - ``cold``: every file evicted from the page cache (``posix_fadvise(POSIX_FADV_DONTNEED)``), read-ahead off;
   - ``cold + read-ahead``: evicted, read-ahead on (the default).

4. Prints each time, the floor (the files' size / the stand-in's total bandwidth + the warm run) and each cold
   run's ratio to it, and the ratio of the two cold runs. Each cold run's time over the warm one is also
   given against the transfer time alone: on CPU the job dominates the floor, and that figure shows what the
   reading itself costs. Goal: cold with read-ahead within 1.25x the floor; the
   exit code is 0 when it is met.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))

from tests.real.comfy_env import build_once, ensure_env  # noqa: E402
from tests.support import slowfs  # noqa: E402

from worker import readahead as readahead_mod  # noqa: E402

MAKER = REPO / "bench" / "coldstart_models.py"
GOAL = 1.25


@dataclass
class Run:
    name: str
    seconds: float = 0.0
    comfy_ready_s: float | None = None
    code: int | None = None
    log: list[str] = field(default_factory=list)


def volume(cache: Path) -> Path:
    """The benchmark's models, written once with ComfyUI's Python (keyed on the writer and ComfyUI's source)."""
    env = ensure_env()
    makers = b"".join(p.read_bytes() for p in (MAKER, REPO / "tests" / "real" / "make_tiny_models.py"))
    key: dict[str, object] = {"source_digest": env.source_digest, "maker": hashlib.sha256(makers).hexdigest()}
    name = f"coldstart-{hashlib.sha256(json.dumps(key).encode()).hexdigest()[:12]}"

    def build(work: Path) -> None:
        command = [str(env.python), str(MAKER), "--comfyui", str(env.source), "--volume", str(work)]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)

    return build_once(cache / name, key, build, what="the cold-start benchmark's models")


def model_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.safetensors") if not p.name.startswith("."))


def png_data_uri() -> str:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (128, 128), (200, 60, 30)).save(out, "PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_start_sh(name: str, mnt: Path, work: Path, *, readahead: bool, comfy_args: str, logs: Path) -> Run:
    """start.sh with the real ComfyUI and worker, which runs test_input.json's job and exits."""
    env_info = ensure_env()
    folder = work / name.replace(" ", "")
    for sub in ("input", "output", "temp", "user"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    job = {"prompt": "a red fox runs through the snow", "image_base64": png_data_uri(), "width": 128}
    job.update(height=128, length=9, seed=7, output="base64")
    (folder / "test_input.json").write_text(json.dumps({"input": job}), encoding="utf-8")
    comfy_extra = f"--cpu --temp-directory {folder / 'temp'} --user-directory {folder / 'user'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNPOD_", "COMFY_"))}
    env.update(
        PYTHON=sys.executable,
        PYTHONPATH=str(REPO / "src"),
        COMFY_CMD=f"{env_info.python} {env_info.source / 'main.py'}",
        COMFY_EXTRA_ARGS=f"{comfy_extra} --database-url sqlite:///:memory: {comfy_args}",
        COMFY_PORT=str(free_port()),
        COMFY_INPUT_DIR=str(folder / "input"),
        COMFY_OUTPUT_DIR=str(folder / "output"),
        VOLUME_ROOT=str(mnt),
        SKIP_MODEL_DOWNLOAD="true",
        READAHEAD=str(readahead).lower(),
        LOG_LEVEL="INFO",
    )
    run = Run(name)
    started = time.monotonic()
    proc = subprocess.Popen(
        ["bash", str(REPO / "start.sh")],
        cwd=folder,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            now = time.monotonic() - started
            run.log.append(f"{now:8.2f} {line.rstrip()}")
            if "ComfyUI is ready after" in line:
                run.comfy_ready_s = now
            if "the worker exited" in line and not run.seconds:
                run.seconds = now

    def sample() -> None:  # what is cached, and the free memory: lines in the run's log
        files = model_files(mnt)
        while proc.poll() is None:
            cached = sum(readahead_mod.cached_bytes(p) for p in files)
            available = readahead_mod.meminfo("MemAvailable")
            now = time.monotonic() - started
            run.log.append(
                f"{now:8.2f} [bench] cached {cached / 1e9:.2f} GB, MemAvailable {available / 1e9:.1f} GB"
            )
            time.sleep(2)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    threading.Thread(target=sample, daemon=True).start()
    try:
        run.code = proc.wait(timeout=1800)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        run.code = proc.wait()
    reader.join(timeout=10)
    logs.mkdir(parents=True, exist_ok=True)
    (logs / f"{name}.log").write_text("\n".join(sorted(run.log)) + "\n", encoding="utf-8")
    run.seconds = run.seconds or time.monotonic() - started
    return run


def evict_all(files: list[Path]) -> None:
    for path in files:
        slowfs.evict(path)


def warm_all(files: list[Path]) -> None:
    for path in files:
        with open(path, "rb", buffering=0) as fh:
            while fh.read(16 << 20):
                pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-ms", type=float, default=2.0)
    parser.add_argument("--stream-mb", type=float, default=200.0, help="MB/s per stream")
    parser.add_argument("--total-mb", type=float, default=1500.0, help="MB/s in all")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "wan-worker-bench")
    parser.add_argument("--runs", default="warm,cold,readahead", help="which runs, in order")
    parser.add_argument(
        "--comfy-args",
        default="--bf16-text-enc --bf16-unet",
        help="added to ComfyUI's options (default: bf16 weights, which CPUs with AMX compute fastest)",
    )
    args = parser.parse_args(argv)
    if (reason := slowfs.unavailable()) is not None:
        print(f"coldstart: cannot run: {reason}", file=sys.stderr)
        return 2

    source = volume(args.cache)
    size = sum(p.stat().st_size for p in model_files(source))
    print(f"models: {size / 1e9:.2f} GB in {len(model_files(source))} files at {source}")
    print(
        f"stand-in: {args.latency_ms} ms a request, {args.stream_mb:.0f} MB/s a stream, {args.total_mb:.0f} MB/s in all"
    )
    runs: dict[str, Run] = {}
    with tempfile.TemporaryDirectory(prefix="coldstart-") as tmp:
        work = Path(tmp)
        with slowfs.mounted(
            source,
            work / "mnt",
            latency_ms=args.latency_ms,
            stream_mb=args.stream_mb,
            total_mb=args.total_mb,
            log=work / "slowfs.log",
        ) as mnt:
            files = model_files(mnt)
            for which in args.runs.split(","):
                evict_all(model_files(source))
                if which == "warm":
                    warm_all(files)
                else:
                    evict_all(files)
                logs = args.cache / "coldstart-logs"
                run = run_start_sh(
                    which, mnt, work, readahead=which == "readahead", comfy_args=args.comfy_args, logs=logs
                )
                runs[which] = run
                ready = f"{run.comfy_ready_s:.1f} s" if run.comfy_ready_s else "-"
                print(
                    f"{which:>10}: {run.seconds:7.1f} s (ComfyUI ready at {ready}, exit {run.code})",
                    flush=True,
                )
                for line in run.log:
                    if which == "readahead" and "worker.readahead: read" in line:
                        print(f"{'':>12}{line.split('INFO ', 1)[-1]}")
                if run.code != 0:
                    print("\n".join(run.log[-40:]), file=sys.stderr)
                    return 1
    return report(runs, size, args.total_mb * 1e6)


def report(runs: dict[str, Run], size: int, rate: float) -> int:
    transfer = size / rate
    if "warm" not in runs:
        return 0
    floor = transfer + runs["warm"].seconds
    print(
        f"\nfloor: {transfer:.1f} s (the files at the total bandwidth) + {runs['warm'].seconds:.1f} s (warm) = {floor:.1f} s"
    )
    warm = runs["warm"].seconds
    for which, label in (("cold", "cold, no read-ahead"), ("readahead", "cold + read-ahead")):
        if which in runs:
            took = runs[which].seconds
            print(
                f"{label:>20}: {took:7.1f} s = {took / floor:.2f} x the floor;"
                f" {took - warm:+.1f} s over warm = {(took - warm) / transfer:.2f} x the transfer time"
            )
    if "cold" in runs and "readahead" in runs:
        print(f"read-ahead speed-up: {runs['cold'].seconds / runs['readahead'].seconds:.2f}x")
    met = "readahead" in runs and runs["readahead"].seconds <= GOAL * floor
    print(f"goal (cold + read-ahead within {GOAL}x the floor): {'met' if met else 'NOT met'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
