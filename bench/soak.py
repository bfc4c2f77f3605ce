"""A soak on the real ComfyUI: many jobs of mixed kinds through the worker as RunPod runs it (production mode,
against the stand-in of RunPod's job API), with cancels, bad inputs, ComfyUI errors and one ComfyUI crash.

Kinds: I2V, FLF2V, frame interpolation, a LoRA by URL (from a local HTTP server, deleted from the volume after
each job so that every such job downloads it), and a video delivered to a bucket (moto's S3 server) and read back
by its URL. Every tenth job is cancelled while it samples; every seventh is a bad input, every ninth names a
zero-byte LoRA that ComfyUI fails on at run time. The fourth job is sampling when ComfyUI is killed (SIGKILL): its
result must say ``comfyui_unavailable`` with ``stopPod``; then, as ``start.sh`` and RunPod would, the worker is
stopped, ComfyUI started again and a fresh worker takes the next jobs. Every MP4 is decoded and its frames, size
and rate checked.

Printed: a table per kind (done, failed as expected, lost, wrong) and the worker's open file descriptors,
threads and RSS, the temporary files (the worker's temp folder, ComfyUI's input, output and temp folders, new
files on the volume) and ComfyUI's queue and history entries, once the restarted worker is warm and at the end.

    python bench/soak.py --jobs 200     # starts its own ComfyUI from the real tier's cached environment

Run it under the real tier's lock (``flock /tmp/wan-real-tier.lock``): ComfyUI peaks at about 13 GB. The real
tier runs a short soak (``run`` with the tier's ComfyUI) as its last test.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import platform
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.real.comfyui_server import RealComfyUI  # noqa: E402
from tests.real.runpod_standin import ProductionWorker, RunpodStandin, production_env  # noqa: E402
from tests.real.tiny_models import tiny_manifest  # noqa: E402
from tests.support.httpserver import HttpServer, Route  # noqa: E402
from tests.support.images import data_uri, image_bytes  # noqa: E402
from tests.support.video import probe  # noqa: E402

from worker.cleanup import CANCEL_WAIT_S  # noqa: E402

PROMPT = "a red fox runs through the snow"
"""One prompt (the real tier's): ComfyUI encodes it once per start and keeps the encoding."""
START = data_uri(image_bytes("PNG", (128, 128), (200, 60, 30)))
END = data_uri(image_bytes("PNG", (128, 128), (30, 60, 200)))
LENGTH = 5
LORA_URL_NAME = "soak_lora_high.safetensors"
LORA_SOURCE = "style_high.safetensors"
BROKEN_LORA = "validate_lora_1_high.safetensors"
"""A zero-byte file (``make_validation_files``): listed by ComfyUI, so the graph validates; its loader fails."""
LONG_STEPS = 100
"""A cancelled or crashed job samples long enough to be caught sampling: 50 steps on each expert."""
KILL_AT = 4
SNAPSHOT_EVERY = 50
SETTLE_S = CANCEL_WAIT_S + 2
"""How long a snapshot watches the worker's threads and descriptors, keeping the fewest seen: a cancelled job's
cleanup waits up to CANCEL_WAIT_S, in a thread of its own, for ComfyUI's history entry of the prompt to delete it.
A thread or descriptor that leaked is there at every reading."""
WARM_UP = 7
"""Jobs after the restart before the first snapshot: every kind has run once in the fresh worker."""
FIRST_JOB_S = 1500.0
"""A job after ComfyUI's start loads the text encoder and encodes the prompts: minutes on two CPU cores."""
JOB_S = 600.0
NORMAL_KINDS = ("i2v", "flf2v", "interpolate", "lora_url", "bucket")
KINDS = (*NORMAL_KINDS, "bad_input", "comfy_error", "cancel", "kill")
BAD_INPUTS: tuple[dict[str, Any], ...] = (
    {"width": "wide"},
    {"image_base64": None},
    {"colour": "red"},
)
OUTCOMES = ("done", "failed as expected", "lost", "wrong")
BUCKET = "videos"
STOP = threading.Event()
"""Set (by SIGINT when run alone): no more jobs start; the table of those that ran is printed."""
RSS_ALLOWANCE_MB = 24.0
"""Growth of the worker's RSS from the warm snapshot to the end that still counts as flat (allocator noise)."""
THREAD_ALLOWANCE = 1
"""Threads the worker may gain from the warm snapshot to the end: asyncio's default executor starts a thread only
when all it has are busy, and keeps it, so how many it holds depends on how the steps of jobs (a cancelled job's
cleanup beside the next job's image loading) happened to overlap. A leak grows with the jobs; the long run shows
it (200 jobs: 6 threads at the warm snapshot and at the end)."""


def schedule(jobs: int) -> list[str]:
    """The kind of each job, in order."""
    kinds, normal = [], 0
    for index in range(1, jobs + 1):
        if index == KILL_AT:
            kinds.append("kill")
        elif index % 10 == 0:
            kinds.append("cancel")
        elif index % 7 == 3:
            kinds.append("bad_input")
        elif index % 9 == 5:
            kinds.append("comfy_error")
        else:
            kinds.append(NORMAL_KINDS[normal % len(NORMAL_KINDS)])
            normal += 1
    return kinds


def job_input(kind: str, index: int, lora_url: str) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "prompt": PROMPT,
        "image_base64": START,
        "width": 128,
        "height": 128,
        "length": LENGTH,
        "steps": 2,
        "seed": 1000 + index,
        "output": "base64",
    }
    if kind == "flf2v":
        fields["end_image_base64"] = END
    elif kind == "interpolate":
        fields |= {"interpolate": 2, "interpolation_model": "tiny_film.safetensors"}
    elif kind == "lora_url":
        fields["lora_pairs"] = [{"high_url": lora_url, "high_weight": 0.5}]
    elif kind == "bucket":
        fields["output"] = "url"
    elif kind == "bad_input":
        fields |= BAD_INPUTS[index % len(BAD_INPUTS)]
        fields = {k: v for k, v in fields.items() if v is not None}
    elif kind == "comfy_error":
        fields["lora_pairs"] = [{"high": BROKEN_LORA}]
    elif kind in ("cancel", "kill"):
        fields["steps"] = LONG_STEPS
    return fields


# ------------------------------------------------------------------------------------------------ measurements
@dataclass(frozen=True)
class Snapshot:
    fds: int
    threads: int
    rss_mb: float
    temp_files: int
    queue: int
    history: int
    comfy_rss_mb: float


def proc_status(pid: int, key: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{key}:\s+(\d+)", text, flags=re.MULTILINE)
    return int(match.group(1)) if match else 0


def count_files(*roots: Path) -> int:
    return sum(len(files) for root in roots if root.exists() for _, _, files in os.walk(root))


def volume_files(volume: Path) -> set[Path]:
    return {Path(d, f) for d, _, files in os.walk(volume) for f in files}


# ------------------------------------------------------------------------------------------------ the table
@dataclass
class Row:
    jobs: int = 0
    done: int = 0
    expected: int = 0
    lost: int = 0
    wrong: int = 0
    seconds: list[float] = field(default_factory=list)


@dataclass
class Report:
    rows: dict[str, Row]
    problems: list[str]
    warm: Snapshot | None = None
    end: Snapshot | None = None
    between: list[tuple[int, Snapshot]] = field(default_factory=list)
    """Snapshots after every ``SNAPSHOT_EVERY`` jobs of a long run."""
    wall_s: float = 0.0

    def total(self) -> Row:
        total = Row()
        for row in self.rows.values():
            total.jobs += row.jobs
            total.done += row.done
            total.expected += row.expected
            total.lost += row.lost
            total.wrong += row.wrong
            total.seconds += row.seconds
        return total

    def not_flat(self) -> list[str]:
        """What grew between the warm snapshot and the end (empty: flat)."""
        if self.warm is None or self.end is None:
            return ["no snapshots (the run ended before the worker was warm)"]
        a, b = self.warm, self.end
        allowed = {"fds": 0, "threads": THREAD_ALLOWANCE, "temp_files": 0}
        grew = [
            f"{n}: {getattr(a, n)} -> {getattr(b, n)}"
            for n, k in allowed.items()
            if getattr(b, n) > getattr(a, n) + k
        ]
        if b.queue or a.queue:
            grew.append(f"ComfyUI's queue: {a.queue} -> {b.queue} entries")
        if b.history > a.history:
            grew.append(f"ComfyUI's history: {a.history} -> {b.history} entries")
        if b.rss_mb - a.rss_mb > RSS_ALLOWANCE_MB:
            grew.append(f"RSS: {a.rss_mb:.0f} -> {b.rss_mb:.0f} MB (more than {RSS_ALLOWANCE_MB:.0f} MB)")
        return grew

    def ok(self) -> bool:
        total = self.total()
        return total.lost == 0 and total.wrong == 0 and not self.problems and not self.not_flat()

    def table(self) -> str:
        lines = [
            f"{'kind':<12} {'jobs':>5} {'done':>5} {'failed as expected':>19} {'lost':>5} {'wrong':>6} {'mean s':>7}"
        ]
        for kind, row in [*self.rows.items(), ("total", self.total())]:
            mean = sum(row.seconds) / len(row.seconds) if row.seconds else 0.0
            lines.append(
                f"{kind:<12} {row.jobs:>5} {row.done:>5} {row.expected:>19} {row.lost:>5} {row.wrong:>6} {mean:>7.1f}"
            )
        lines.append("")
        lines.append(
            f"{'':<22} {'fds':>5} {'threads':>8} {'RSS MB':>7} {'temp files':>11} {'queue':>6} {'history':>8}  ComfyUI RSS MB"
        )
        between = [(f"after job {index}", snap) for index, snap in self.between]
        for name, snap in [("warm (after restart)", self.warm), *between, ("end", self.end)]:
            if snap is not None:
                lines.append(
                    f"{name:<22} {snap.fds:>5} {snap.threads:>8} {snap.rss_mb:>7.0f} {snap.temp_files:>11} "
                    f"{snap.queue:>6} {snap.history:>8}  {snap.comfy_rss_mb:.0f}"
                )
        lines.append("")
        lines.append(f"flat: {'yes' if not self.not_flat() else '; '.join(self.not_flat())}")
        lines.extend(f"problem: {p}" for p in self.problems)
        lines.append(f"{self.total().jobs} jobs in {self.wall_s / 60:.1f} min")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ the run
class Soak:
    def __init__(
        self, comfyui: RealComfyUI, workdir: Path, standin: RunpodStandin, env: dict[str, str]
    ) -> None:
        self.comfyui = comfyui
        self.workdir = workdir
        self.standin = standin
        self.env = env
        self.tmp = Path(env["TMPDIR"])
        self.volume_before = volume_files(comfyui.volume)
        self.report = Report(rows={kind: Row() for kind in KINDS}, problems=[])
        self.cancelled: list[str] = []
        self.workers = 0
        self.worker = self.start_worker()
        self.fresh = True
        """The next job is the first since ComfyUI started: it encodes the prompt."""

    def start_worker(self) -> ProductionWorker:
        self.workers += 1
        log = self.workdir / f"worker-{self.workers}.log"
        worker = ProductionWorker(self.env, cwd=self.workdir, log_path=log)
        worker.wait_polling(self.standin)
        return worker

    def snapshot(self) -> Snapshot:
        pid, comfy = self.worker.proc.pid, self.comfyui
        fds, threads, settled = [], [], time.monotonic() + SETTLE_S
        while not fds or time.monotonic() < settled:
            fds.append(len(os.listdir(f"/proc/{pid}/fd")))
            threads.append(proc_status(pid, "Threads"))
            time.sleep(0.5)
        queue = comfy.queue()
        history = comfy.http.get(f"{comfy.url}/history", timeout=10).json()
        new_on_volume = volume_files(comfy.volume) - self.volume_before
        temp = count_files(self.tmp, comfy.input_dir, comfy.output_dir, comfy.workdir / "temp")
        comfy_pid = comfy.proc.pid if comfy.proc is not None else 0
        return Snapshot(
            fds=min(fds),
            threads=min(threads),
            rss_mb=proc_status(pid, "VmRSS") / 1024,
            temp_files=temp + len(new_on_volume),
            queue=len(queue["queue_running"]) + len(queue["queue_pending"]),
            history=len(history),
            comfy_rss_mb=proc_status(comfy_pid, "VmRSS") / 1024 if comfy_pid else 0.0,
        )

    def clean_volume(self) -> None:
        """Remove what a LoRA-by-URL job left on the volume, so that the next one downloads it again."""
        for path in volume_files(self.comfyui.volume) - self.volume_before:
            path.unlink(missing_ok=True)

    def wait_sampling(self, since: int, job_id: str, timeout_s: float) -> bool:
        pattern = re.compile(rf"\|\s*[1-9]\d*/{LONG_STEPS // 2} \[")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if pattern.search(self.comfyui.log_text()[since:]):
                return True
            if job_id in self.standin.results:
                return False
            time.sleep(0.1)
        return False

    def run_job(self, index: int, kind: str, lora_url: str) -> None:
        row = self.report.rows[kind]
        row.jobs += 1
        timeout = FIRST_JOB_S if self.fresh else JOB_S
        since = len(self.comfyui.log_text())
        started = time.monotonic()
        job_id = self.standin.submit(job_input(kind, index, lora_url))
        if kind in ("cancel", "kill"):
            if not self.wait_sampling(since, job_id, timeout):
                self.wrong(row, index, kind, "was never seen sampling", self.standin.results.get(job_id))
                return
            if kind == "cancel":
                self.cancel(row, index, job_id)
            else:
                self.kill(row, index, job_id)
            row.seconds.append(time.monotonic() - started)
            return
        try:
            body = self.standin.wait_result(job_id, timeout_s=timeout)
        except AssertionError as exc:
            row.lost += 1
            self.report.problems.append(f"job {index} ({kind}) lost: {exc}")
            return
        row.seconds.append(time.monotonic() - started)
        problem = self.check(kind, body)
        self.fresh = self.fresh and (kind not in NORMAL_KINDS or problem is not None)
        if problem:
            self.wrong(row, index, kind, problem, body)
        elif kind in ("bad_input", "comfy_error"):
            row.expected += 1
        else:
            row.done += 1
        if kind == "lora_url":
            self.clean_volume()

    def wrong(self, row: Row, index: int, kind: str, problem: str, body: Any) -> None:
        row.wrong += 1
        text = repr(body)
        self.report.problems.append(f"job {index} ({kind}) {problem}: {text[:600]}")

    def check(self, kind: str, body: dict[str, Any]) -> str | None:
        """What is wrong with a job's posted result (None: what was expected)."""
        output = body.get("output") or {}
        if kind == "bad_input":
            return None if output.get("error_code") == "invalid_input" else "expected invalid_input"
        if kind == "comfy_error":
            if output.get("error_code") != "comfyui_execution" or body.get("stopPod"):
                return "expected comfyui_execution, the worker kept"
            return None
        if "error" in body:
            return "failed"
        if kind == "bucket":
            url = output.get("video_url")
            if not url:
                return "no video_url"
            response = requests.get(url, timeout=60)
            if response.status_code != 200:
                return f"the bucket answered {response.status_code}"
            data = response.content
        else:
            data = base64.b64decode(output.get("video", ""))
        try:
            info = probe(data)
        except Exception as exc:  # any decode failure is a wrong output
            return f"the MP4 does not decode: {exc}"
        frames, fps = (2 * LENGTH - 1, 32) if kind == "interpolate" else (LENGTH, 16)
        got = (info.frames, info.width, info.height, float(info.fps), info.codec)
        if got != (frames, 128, 128, float(fps), "h264"):
            return f"the MP4 holds {got}, expected {(frames, 128, 128, float(fps), 'h264')}"
        mode = "flf2v" if kind == "flf2v" else "i2v"
        if output.get("mode") != mode:
            return f"mode {output.get('mode')}, expected {mode}"
        return None

    def cancel(self, row: Row, index: int, job_id: str) -> None:
        self.standin.cancel(job_id)
        try:
            self.comfyui.wait_queue_empty(timeout_s=30)
        except AssertionError as exc:
            self.wrong(row, index, "cancel", "left ComfyUI busy", str(exc)[:300])
            return
        self.cancelled.append(job_id)
        row.expected += 1

    def kill(self, row: Row, index: int, job_id: str) -> None:
        """ComfyUI dies mid-job; the job fails with comfyui_unavailable and stopPod; then what start.sh and
        RunPod do: the worker stops, ComfyUI and a fresh worker start."""
        self.comfyui.kill()
        try:
            body = self.standin.wait_result(job_id, timeout_s=120)
        except AssertionError as exc:
            row.lost += 1
            self.report.problems.append(f"job {index} (kill) lost: {exc}")
            body = None
        if body is not None:
            output = body.get("output") or {}
            if output.get("error_code") == "comfyui_unavailable" and body.get("stopPod") is True:
                row.expected += 1
            else:
                self.wrong(row, index, "kill", "expected comfyui_unavailable with stopPod", body)
        self.worker.stop()
        self.comfyui.start()
        self.worker = self.start_worker()
        self.fresh = True

    def run(self, jobs: int, lora_url: str, max_s: float | None = None) -> Report:
        started = time.monotonic()
        warm_at = min(KILL_AT + WARM_UP, jobs)
        try:
            for index, kind in enumerate(schedule(jobs), start=1):
                if STOP.is_set() or (max_s is not None and time.monotonic() - started > max_s):
                    self.report.problems.append(f"stopped early, after {index - 1} of {jobs} jobs")
                    break
                row = self.report.rows[kind]
                before = (row.done, row.expected, row.lost, row.wrong)
                self.run_job(index, kind, lora_url)
                after = (row.done, row.expected, row.lost, row.wrong)
                changed = [n for n, a, b in zip(OUTCOMES, before, after, strict=True) if b > a]
                outcome = changed[0] if changed else "?"
                print(
                    f"job {index}/{jobs} {kind}: {outcome} ({time.monotonic() - started:.0f} s)", flush=True
                )
                if index == warm_at:
                    self.report.warm = self.snapshot()
                elif index > warm_at and index % SNAPSHOT_EVERY == 0 and index < jobs:
                    self.report.between.append((index, self.snapshot()))
            time.sleep(1.0)  # a cancelled job's result would have arrived by now
            for job_id in self.cancelled:
                if job_id in self.standin.results:
                    self.report.rows["cancel"].wrong += 1
                    self.report.problems.append(
                        f"cancelled job {job_id} posted {self.standin.results[job_id]}"
                    )
            self.report.end = self.snapshot()
        finally:
            self.report.wall_s = time.monotonic() - started
            self.worker.stop()
            self.clean_volume()
        return self.report


@contextlib.contextmanager
def bucket_server() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 with one bucket; yields its endpoint."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="k",
            aws_secret_access_key="s",
            region_name="us-east-1",
        ).create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        server.stop()


def run(comfyui: RealComfyUI, jobs: int, workdir: Path, max_s: float | None = None) -> Report:
    """The soak against a running ComfyUI (which it kills and starts again once), its files under ``workdir``."""
    tmp = workdir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    lora = comfyui.volume / "loras" / LORA_SOURCE
    with bucket_server() as endpoint, RunpodStandin() as standin, HttpServer() as files:
        files.routes[f"/{LORA_URL_NAME}"] = Route(body=lora)
        env = production_env(comfyui.worker_env(), standin) | {
            "ALLOW_CPU": "true",  # the start check: ComfyUI runs on CPU here, with the tiny models' sizes
            "MODELS_MANIFEST": str(tiny_manifest(comfyui.volume, workdir)),
            "TMPDIR": str(tmp),
            "ALLOW_HTTP_MODEL_URLS": "true",
            "ALLOWED_MODEL_HOSTS": "127.0.0.1",
            "DOWNLOAD_CONNECTIONS": "1",
            "BUCKET_ENDPOINT_URL": endpoint,
            "BUCKET_ACCESS_KEY_ID": "k",
            "BUCKET_SECRET_ACCESS_KEY": "s",
            "BUCKET_NAME": BUCKET,
        }
        soak = Soak(comfyui, workdir, standin, env)
        return soak.run(jobs, files.url(f"/{LORA_URL_NAME}"), max_s)


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    return f"{os.cpu_count()} x {cpu}, Python {platform.python_version()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs) when the run passes")
    parser.add_argument("--max-minutes", type=float, help="start no job after this long (a shared machine)")
    args = parser.parse_args()
    signal.signal(signal.SIGINT, lambda *_: STOP.set())

    from tests.real.comfy_env import ensure_env, ensure_source, pins_from_dockerfile
    from tests.real.tiny_models import ensure_volume, make_validation_files

    pins = pins_from_dockerfile()
    env = ensure_env(pins, ensure_source(pins))
    volume = ensure_volume(env)
    make_validation_files(volume)
    workdir = Path(tempfile.mkdtemp(prefix="wan-soak-"))
    (workdir / "comfyui").mkdir()
    comfyui = RealComfyUI(env, volume, workdir / "comfyui")
    print(
        f"soak: {args.jobs} jobs, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {machine()}; logs in {workdir}",
        flush=True,
    )
    comfyui.start()
    try:
        report = run(comfyui, args.jobs, workdir, args.max_minutes and args.max_minutes * 60)
    finally:
        peak = comfyui.peak_rss_mb()
        comfyui.stop()
    print(report.table())
    print(f"ComfyUI peak RSS since its restart: {peak or 0:.0f} MB")
    if report.ok() and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if report.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
