"""``wan-video``: make videos from images with a wan-worker, on a RunPod endpoint or the local API.

    wan-video generate --image start.png [--end-image end.png] --prompt "..." -o out.mp4 --endpoint ID
    wan-video batch --images DIR --prompt "..." -o OUTDIR [--concurrency N] --url http://localhost:8000

Exit codes: 0 success, 1 a job failed (or the API could not be used), 2 usage error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import queue
import re
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ..schema import DEFAULT_CRF, RESOLUTIONS
from .api import (
    ApiError,
    Client,
    ClientError,
    Interrupted,
    JobFailed,
    Progress,
    UsageError,
    VideoResult,
    WaitTimeout,
    make_input,
)
from .progress import ProgressBar, format_elapsed

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
_FIELD = re.compile(r"^[a-z][a-z0-9_]*$")


# --------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    backend = _backend_options()
    job = _job_options()
    parser = argparse.ArgumentParser(
        prog="wan-video",
        description="Turn images into videos with a wan-worker (Wan2.2 through ComfyUI).",
        epilog="Exit codes: 0 success, 1 a job failed, 2 usage error, 130 interrupted.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    generate = commands.add_parser(
        "generate", parents=[backend, job], help="one video from a start image (and an end image)"
    )
    generate.add_argument(
        "--image", required=True, help="start image: a file, an http(s) URL, or volume:PATH"
    )
    generate.add_argument("--end-image", help="end image (first-last-frame video): same forms as --image")
    generate.add_argument("-o", "--output", required=True, type=Path, help="where to save the MP4")
    generate.set_defaults(func=run_generate)
    batch = commands.add_parser("batch", parents=[backend, job], help="one video per image in a folder")
    batch.add_argument("--images", required=True, type=Path, help="folder of images (png, jpg, webp)")
    batch.add_argument("-o", "--output", required=True, type=Path, help="folder for the MP4s")
    batch.add_argument("--concurrency", type=_positive_int, default=1, help="jobs at once (default 1)")
    batch.set_defaults(func=run_batch)
    return parser


def _backend_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("where to run")
    where = group.add_mutually_exclusive_group(required=True)
    where.add_argument("--endpoint", help="RunPod serverless endpoint id (API key from RUNPOD_API_KEY)")
    where.add_argument("--url", help="the local API, e.g. http://localhost:8000")
    group.add_argument("--timeout", type=float, help="give up waiting for a job after this many seconds")
    group.add_argument(
        "--poll-interval",
        type=float,
        default=0.5,
        metavar="SECONDS",
        help="first pause between status polls; it grows to 5 s while nothing changes (default 0.5)",
    )
    group.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return parent


def _job_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("job")
    group.add_argument("--prompt", required=True, help="what should happen in the video")
    group.add_argument("--negative-prompt", help="what to avoid (default: Wan's usual negative prompt)")
    group.add_argument(
        "--width",
        type=int,
        help="pixels, rounded to a multiple of 16 (default: from the image and --resolution)",
    )
    group.add_argument(
        "--height",
        type=int,
        help="pixels, rounded to a multiple of 16 (default: from the image and --resolution)",
    )
    group.add_argument(
        "--resolution",
        choices=tuple(RESOLUTIONS),
        help="the short side when no size is given; the image gives the aspect ratio (default 480p)",
    )
    group.add_argument("--length", type=int, help="frames, rounded to 4n+1 (default 81)")
    group.add_argument("--fps", type=float, help="frames per second (default 16)")
    group.add_argument("--steps", type=int, help="sampling steps (default 4 with Lightning, else 20)")
    group.add_argument("--high-noise-steps", type=int, help="steps on the high-noise expert (default half)")
    group.add_argument("--cfg", type=float, help="guidance (default 1.0 with Lightning, else 3.5)")
    group.add_argument("--shift", type=float, help="sampling shift (default 5.0)")
    group.add_argument("--seed", type=int, help="seed (default random; the result says which)")
    group.add_argument("--context-overlap", type=int, help="frames shared by context windows (default 48)")
    group.add_argument(
        "--no-freenoise",
        dest="context_freenoise",
        action="store_false",
        default=None,
        help="context windows without FreeNoise noise shuffling",
    )
    group.add_argument(
        "--retain-first-frame",
        dest="context_retain_first_frame",
        action="store_true",
        default=None,
        help="keep the start image in every context window (long I2V videos)",
    )
    group.add_argument(
        "--no-lightning", dest="lightning", action="store_false", default=None, help="without Lightning LoRAs"
    )
    group.add_argument(
        "--lora",
        action="append",
        type=parse_lora,
        default=[],
        metavar="HIGH,LOW[,HW[,LW]]",
        help="a LoRA pair: files on the volume or URLs, optional weights; repeat for more (at most 4)",
    )
    group.add_argument(
        "--interpolate",
        type=int,
        metavar="N",
        help="frame interpolation: N times the frames and the fps (default 1: off)",
    )
    group.add_argument(
        "--crf", type=int, help=f"H.264 quality, 0-51, lower is sharper (default {DEFAULT_CRF})"
    )
    group.add_argument("--output-mode", choices=("auto", "base64", "url"), help="how the worker returns it")
    group.add_argument(
        "--set",
        dest="extra",
        action="append",
        type=parse_assignment,
        default=[],
        metavar="FIELD=VALUE",
        help="any other job field, e.g. high_model=my.safetensors (VALUE is JSON or text); repeatable",
    )
    return parent


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def parse_lora(text: str) -> dict[str, Any]:
    """``HIGH,LOW[,HW[,LW]]`` -> a ``lora_pairs`` entry; either side may be empty, a file name or a URL."""
    parts = [p.strip() for p in text.split(",")]
    if not 2 <= len(parts) <= 4 or not (parts[0] or parts[1]):
        raise argparse.ArgumentTypeError("expected HIGH,LOW or HIGH,LOW,WEIGHT or HIGH,LOW,HIGH_W,LOW_W")
    pair: dict[str, Any] = {}
    for side, value in (("high", parts[0]), ("low", parts[1])):
        if value:
            pair[f"{side}_url" if re.match(r"^https?://", value, re.I) else side] = value
    weights = parts[2:]
    if len(weights) == 1:
        weights = weights * 2
    try:
        for side, weight in zip(("high", "low"), weights, strict=False):
            pair[f"{side}_weight"] = float(weight)
    except ValueError:
        raise argparse.ArgumentTypeError("LoRA weights must be numbers") from None
    return pair


def parse_assignment(text: str) -> tuple[str, Any]:
    """``FIELD=VALUE``; VALUE is read as JSON when it parses, else kept as text."""
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep or not _FIELD.match(name):
        raise argparse.ArgumentTypeError("expected FIELD=VALUE with a field name such as high_model")
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    return name, value


def job_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The job fields the options ask for (None = the worker's default)."""
    fields: dict[str, Any] = {
        "negative_prompt": args.negative_prompt,
        "width": args.width,
        "height": args.height,
        "resolution": args.resolution,
        "length": args.length,
        "fps": args.fps,
        "steps": args.steps,
        "high_noise_steps": args.high_noise_steps,
        "cfg": args.cfg,
        "shift": args.shift,
        "seed": args.seed,
        "context_overlap": args.context_overlap,
        "context_freenoise": args.context_freenoise,
        "context_retain_first_frame": args.context_retain_first_frame,
        "lightning": args.lightning,
        "lora_pairs": args.lora or None,
        "interpolate": args.interpolate,
        "crf": args.crf,
        "output": args.output_mode,
    }
    fields.update(dict(args.extra))
    return fields


def make_client(args: argparse.Namespace) -> Client:
    first = max(0.01, args.poll_interval)
    return Client(endpoint=args.endpoint, url=args.url, poll_interval=(first, max(first, 5.0)))


# -------------------------------------------------------------------------------------------- generate


def run_generate(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    client = make_client(args)
    job = make_input(args.prompt, args.image, end_image=args.end_image, **job_fields(args))
    bar = ProgressBar(err, enabled=not args.quiet)
    job_id: str | None = None
    try:
        job_id = client.submit(job)
        bar.note(f"job {job_id} on {client.where}")
        result = client.wait(job_id, on_progress=bar, timeout=args.timeout)
        if result.video_url and not result.video_base64:
            bar.update(Progress("downloading"))
        path = client.save_video(result, args.output)
    except KeyboardInterrupt:
        bar.close()
        return interrupted(client, job_id, err)
    except (JobFailed, ApiError, WaitTimeout) as exc:
        bar.close()
        return report_failure(exc, client, job_id, err)
    bar.close()
    print_result(result, path, out)
    return EXIT_OK


def report_failure(exc: ClientError, client: Client, job_id: str | None, err: TextIO) -> int:
    print(f"error: {exc}", file=err)
    if isinstance(exc, WaitTimeout) and job_id and client.can_cancel:
        cancel_quietly(client, job_id, err)
    return EXIT_FAILED


def interrupted(client: Client, job_id: str | None, err: TextIO) -> int:
    """Ctrl-C: cancel the job where the backend can, then exit 130."""
    if job_id is None:
        print("interrupted", file=err)
    elif not client.can_cancel:
        print(f"interrupted: the local API cannot cancel jobs; job {job_id} runs on in the worker", file=err)
    else:
        print(f"interrupted: cancelling job {job_id}", file=err)
        cancel_quietly(client, job_id, err)
    return EXIT_INTERRUPTED


def cancel_quietly(client: Client, job_id: str, err: TextIO) -> bool:
    try:
        client.cancel(job_id)
    except (ClientError, KeyboardInterrupt) as exc:
        print(f"could not cancel job {job_id}: {exc or 'interrupted'}", file=err)
        return False
    print(f"cancelled job {job_id}", file=err)
    return True


def print_result(result: VideoResult, path: Path, out: TextIO) -> None:
    shape = f"{result.width}x{result.height}, {result.length} frames at {_number(result.fps)} fps"
    kind = result.mode or "video"
    print(f"saved {path} ({human_size(path.stat().st_size)}): {kind} {shape}, {result.steps} steps", file=out)
    print(f"seed: {result.seed}", file=out)
    for adj in result.adjustments:
        print(f"adjusted {adj.field}: {adj.requested} -> {adj.used} ({adj.reason})", file=out)
    if result.timings:
        print(f"timings: {format_timings(result.timings)}", file=out)


def human_size(size: int) -> str:
    if size < 1000:
        return f"{size} bytes"
    return f"{size / 1e3:.0f} kB" if size < 1_000_000 else f"{size / 1e6:.1f} MB"


def format_timings(timings: dict[str, float]) -> str:
    ordered = sorted(timings.items(), key=lambda kv: kv[0] == "total")
    return ", ".join(f"{name} {seconds:.1f}s" for name, seconds in ordered)


def _number(value: float | None) -> str:
    return "?" if value is None else f"{value:g}"


# ----------------------------------------------------------------------------------------------- batch


@dataclass
class BatchItem:
    """One image of a batch and what became of it."""

    image: Path
    output: Path
    state: str = "pending"
    """pending, running, done, skipped, failed, interrupted, not started."""
    job_id: str | None = None
    seed: int | None = None
    seconds: float | None = None
    message: str = ""


def list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise UsageError(f"{folder}: not a folder")
    images = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )
    if not images:
        raise UsageError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return images


def plan_batch(images: Sequence[Path], outdir: Path) -> list[BatchItem]:
    """One item per image, ``OUTDIR/<stem>.mp4``; outputs that exist are skipped (the batch resumes)."""
    stems = [p.stem for p in images]
    items = []
    for image in images:
        name = image.stem if stems.count(image.stem) == 1 else image.name.replace(".", "_")
        item = BatchItem(image, outdir / f"{name}.mp4")
        if item.output.is_file() and item.output.stat().st_size > 0:
            item.state, item.message = "skipped", "output exists"
        items.append(item)
    return items


class BatchRunner:
    """Runs a batch's pending items on ``concurrency`` threads; the main thread reports and handles Ctrl-C."""

    def __init__(self, client: Client, args: argparse.Namespace, err: TextIO) -> None:
        self.client = client
        self.args = args
        self.err = err
        self.stop = threading.Event()
        self.todo: queue.Queue[BatchItem] = queue.Queue()
        self.finished: queue.Queue[BatchItem] = queue.Queue()
        self.bar = ProgressBar(err, enabled=not args.quiet)
        self.threads: list[threading.Thread] = []

    def run(self, items: list[BatchItem]) -> bool:
        """True when every pending item ran to its end; False when interrupted."""
        pending = [item for item in items if item.state == "pending"]
        for item in pending:
            self.todo.put(item)
        self.threads = [
            threading.Thread(target=self._work, name=f"batch-{n}", daemon=True)
            for n in range(min(self.args.concurrency, len(pending)))
        ]
        for thread in self.threads:
            thread.start()
        try:
            self._report(len(pending))
        except KeyboardInterrupt:
            self.bar.close()
            self._interrupt(pending)
            return False
        self.bar.close()
        return True

    def _report(self, total: int) -> None:
        done = 0
        while done < total:
            self.bar.update(Progress("batch", done, total))
            try:
                item = self.finished.get(timeout=0.5)
            except queue.Empty:
                continue
            done += 1
            self.bar.note(f"[{done}/{total}] {item.image.name}: {describe(item)}")

    def _interrupt(self, pending: list[BatchItem]) -> None:
        """Stop the workers (each stops waiting at once), then cancel the jobs they left behind."""
        self.stop.set()
        deadline = time.monotonic() + 5.0
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for item in pending:
            if item.state == "pending":
                item.state, item.message = "not started", "not started"
            elif item.state == "running":
                item.state, item.message = "interrupted", "interrupted"
        ids = [item.job_id for item in pending if item.state == "interrupted" and item.job_id]
        if not ids:
            print("interrupted", file=self.err)
        elif not self.client.can_cancel:
            print(f"interrupted: the local API cannot cancel jobs; {len(ids)} run on", file=self.err)
        else:
            print(f"interrupted: cancelling {len(ids)} job(s)", file=self.err)
            for job_id in ids:
                cancel_quietly(self.client, job_id, self.err)

    def _work(self) -> None:
        while not self.stop.is_set():
            try:
                item = self.todo.get_nowait()
            except queue.Empty:
                return
            self._process(item)
            if item.state != "interrupted":
                self.finished.put(item)

    def _process(self, item: BatchItem) -> None:
        started = time.monotonic()
        try:
            job = make_input(self.args.prompt, item.image, **job_fields(self.args))
            item.state = "running"
            item.job_id = self.client.submit(job)
            result = self.client.wait(item.job_id, timeout=self.args.timeout, stop=self.stop)
            self.client.save_video(result, item.output)
            item.state, item.seed, item.message = "done", result.seed, str(item.output)
        except Interrupted:
            item.state, item.message = "interrupted", "interrupted"
        except JobFailed as exc:
            item.state, item.message = "failed", f"{exc.code}: {exc.message}" if exc.code else exc.message
        except WaitTimeout as exc:
            item.state, item.message = "failed", str(exc)
            if item.job_id and self.client.can_cancel:
                cancel_quietly(self.client, item.job_id, self.err)
        except ClientError as exc:
            item.state, item.message = "failed", str(exc)
        item.seconds = time.monotonic() - started


def describe(item: BatchItem) -> str:
    took = f" in {item.seconds:.1f}s" if item.seconds is not None else ""
    if item.state == "done":
        return f"done{took} (seed {item.seed}) -> {item.output}"
    return f"{item.state}{took}: {item.message}"


def summary_table(items: Sequence[BatchItem]) -> str:
    """A plain-text table: image, state, seed, time, output or error."""
    header = ("image", "status", "seed", "time", "output / error")
    rows = [
        (
            item.image.name,
            item.state,
            "-" if item.seed is None else str(item.seed),
            "-" if item.seconds is None else format_elapsed(item.seconds),
            str(item.output) if item.state in ("done", "skipped") else item.message,
        )
        for item in items
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in [header, *rows]
    ]
    counts = {
        state: sum(1 for item in items if item.state == state)
        for state in ("done", "skipped", "failed", "interrupted", "not started")
    }
    tally = ", ".join(f"{n} {state}" for state, n in counts.items() if n)
    lines.append(f"{len(items)} image(s): {tally}")
    return "\n".join(lines)


def run_batch(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    client = make_client(args)
    items = plan_batch(list_images(args.images), args.output)
    if args.output.exists() and not args.output.is_dir():
        raise UsageError(f"{args.output}: not a folder")
    completed = BatchRunner(client, args, err).run(items)
    print(summary_table(items), file=out)
    if not completed:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if any(item.state == "failed" for item in items) else EXIT_OK


# ------------------------------------------------------------------------------------------------ main


def main(argv: Sequence[str] | None = None) -> int:
    """The ``wan-video`` console script."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    out, err = sys.stdout, sys.stderr
    try:
        code: int = args.func(args, out, err)
    except UsageError as exc:
        print(f"wan-video: error: {exc}", file=err)
        return EXIT_USAGE
    except ClientError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=err)
        return EXIT_INTERRUPTED
    return code


if __name__ == "__main__":
    sys.exit(main())
