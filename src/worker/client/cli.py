"""``wan-video generate`` (one video from an image) and ``wan-video batch`` (one per image in a folder,
resumable): on a RunPod endpoint or the local API. Exits 0 on success, 1 when a job failed or the API could not be
used, 2 on a usage error, 130 on Ctrl-C."""

from __future__ import annotations

import argparse
import contextlib
import queue
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import Client, ClientError, Interrupted, JobFailed, Progress, UsageError, WaitTimeout, make_input
from .options import add_job_options, job_fields

try:
    from .progress import ProgressBar, format_elapsed, print_table
except ModuleNotFoundError as missing:  # rich: the command's own extra
    raise SystemExit(f"wan-video needs {missing.name}: pip install 'wan-worker[client]'") from None

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("where to run")
    where = group.add_mutually_exclusive_group(required=True)
    where.add_argument("--endpoint", help="RunPod serverless endpoint id (API key from RUNPOD_API_KEY)")
    where.add_argument("--url", help="the local API, e.g. http://localhost:8000")
    group.add_argument("--timeout", type=float, help="give up waiting for a job after this many seconds")
    first_pause = "first pause between status polls; it grows to 5 s while nothing changes (default 0.5)"
    group.add_argument("--poll-interval", type=float, default=0.5, metavar="SECONDS", help=first_pause)
    group.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_job_options(common)
    parser = argparse.ArgumentParser(
        prog="wan-video",
        description="Turn images into videos with a wan-worker (Wan2.2 through ComfyUI).",
        epilog="Exit codes: 0 success, 1 a job failed, 2 usage error, 130 interrupted.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    generate = commands.add_parser("generate", parents=[common], help="one video from a start image")
    generate.add_argument("--image", required=True, help="start image: a file, an http(s) URL or volume:PATH")
    generate.add_argument("--end-image", help="end image (first-last-frame video): same forms as --image")
    generate.add_argument("-o", "--output", required=True, type=Path, help="where to save the MP4")
    batch = commands.add_parser("batch", parents=[common], help="one video per image in a folder")
    batch.add_argument("--images", required=True, type=Path, help="folder of images (png, jpg, webp)")
    batch.add_argument("-o", "--output", required=True, type=Path, help="folder for the MP4s")
    batch.add_argument("--concurrency", type=int, default=1, metavar="N", help="jobs at once (default 1)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``wan-video`` console script."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        first = max(0.01, args.poll_interval)
        client = Client(endpoint=args.endpoint, url=args.url, poll_interval=(first, max(first, 5.0)))
        bar = ProgressBar(sys.stderr, enabled=not args.quiet)
        return (run_generate if args.command == "generate" else run_batch)(args, client, bar)
    except UsageError as exc:
        print(f"wan-video: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def cancel(client: Client, job_ids: Sequence[str], why: str = "") -> None:
    """Cancel jobs left behind (``why``: "interrupted" after Ctrl-C), where the backend can."""
    what = f"job {job_ids[0]}" if len(job_ids) == 1 else f"{len(job_ids)} job(s)"
    told = f"cancelling {what}" if client.can_cancel else f"the local API cannot cancel jobs; {what} runs on"
    if why:
        print(f"{why}: {told}" if job_ids else why, file=sys.stderr)
    for job_id in job_ids if client.can_cancel else ():
        try:
            client.cancel(job_id)
            print(f"cancelled job {job_id}", file=sys.stderr)
        except (ClientError, KeyboardInterrupt) as exc:
            print(f"could not cancel job {job_id}: {exc or 'interrupted'}", file=sys.stderr)


def run_generate(args: argparse.Namespace, client: Client, bar: ProgressBar) -> int:
    job = make_input(image=args.image, end_image=args.end_image, **job_fields(args))
    job_id = ""
    try:
        job_id = client.submit(job)
        bar.note(f"job {job_id} on {client.where}")
        result = client.wait(job_id, on_progress=bar, timeout=args.timeout)
        if result.video_url and not result.video_base64:
            bar(Progress("downloading"))
        path = client.save_video(result, args.output)
    except KeyboardInterrupt:
        bar.close()
        cancel(client, [job_id] if job_id else [], "interrupted")
        return EXIT_INTERRUPTED
    except ClientError as exc:
        bar.close()
        print(f"error: {exc}", file=sys.stderr)
        cancel(client, [job_id] if isinstance(exc, WaitTimeout) else [])
        return EXIT_FAILED
    bar.close()
    size, fps = path.stat().st_size, "?" if result.fps is None else f"{result.fps:g}"
    told = f"{size} bytes" if size < 1e3 else f"{size / 1e3:.0f} kB" if size < 1e6 else f"{size / 1e6:.1f} MB"
    shape = f"{result.width}x{result.height}, {result.length} frames at {fps} fps, {result.steps} steps"
    print(f"saved {path} ({told}): {result.mode or 'video'} {shape}\nseed: {result.seed}")
    for adj in result.adjustments:
        print(f"adjusted {adj.field}: {adj.requested} -> {adj.used} ({adj.reason})")
    if result.timings:
        ordered = sorted(result.timings.items(), key=lambda kv: kv[0] == "total")
        print("timings: " + ", ".join(f"{name} {sec:.1f}s" for name, sec in ordered))
    return EXIT_OK


@dataclass
class BatchItem:
    """An image of a batch and what became of it: pending, running, done, skipped, failed, interrupted or
    not started."""

    image: Path
    output: Path
    state: str = "pending"
    job_id: str = ""
    seed: str = "-"
    time: str = "-"
    message: str = ""


def plan_batch(folder: Path, outdir: Path) -> list[BatchItem]:
    """One item per image, ``OUTDIR/<stem>.mp4``; an image whose video exists is skipped (the batch resumes)."""
    if not folder.is_dir() or outdir.is_file():
        raise UsageError(f"{outdir if folder.is_dir() else folder}: not a folder")
    images = [p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES and p.name[0] != "."]
    if not images:
        raise UsageError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    stems, items = [p.stem for p in images], []
    for image in images:
        name = image.stem if stems.count(image.stem) == 1 else image.name.replace(".", "_")
        items.append(item := BatchItem(image, outdir / f"{name}.mp4"))
        if item.output.is_file() and item.output.stat().st_size > 0:
            item.state, item.message = "skipped", str(item.output)
    return items


def run_batch(args: argparse.Namespace, client: Client, bar: ProgressBar) -> int:
    """The pending images on ``--concurrency`` daemon threads; this one reports, and takes Ctrl-C."""
    items = plan_batch(args.images, args.output)
    if args.concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    pending = [item for item in items if item.state == "pending"]
    todo, finished, stop = queue.SimpleQueue[BatchItem](), queue.Queue[BatchItem](), threading.Event()
    for item in pending:
        todo.put(item)

    def work() -> None:
        with contextlib.suppress(queue.Empty):
            while not stop.is_set():
                item = todo.get_nowait()
                process(client, item, args, stop)
                finished.put(item)

    threads = [threading.Thread(target=work, daemon=True) for _ in pending[: args.concurrency]]
    for thread in threads:
        thread.start()
    try:
        for done in range(1, len(pending) + 1):
            bar(Progress("batch", done - 1, len(pending)))
            item = finished.get()
            told = f"seed {item.seed}, {item.time}" if item.state == "done" else item.time
            bar.note(f"[{done}/{len(pending)}] {item.image.name}: {item.state} ({told}): {item.message}")
    except KeyboardInterrupt:
        stop.set()
        bar.close()
        deadline = time.monotonic() + 5.0
        for thread in threads if client.can_cancel else ():  # each stops waiting at its next poll
            thread.join(max(0.0, deadline - time.monotonic()))
        for item in pending:
            if item.state in ("pending", "running"):
                item.state = item.message = "not started" if item.state == "pending" else "interrupted"
        cancel(client, [i.job_id for i in pending if i.state == "interrupted" and i.job_id], "interrupted")
    bar.close()
    rows = [(i.image.name, i.state, i.seed, i.time, i.message) for i in items]
    print_table(("image", "status", "seed", "time", "output / error"), rows, sys.stdout)
    states = ("done", "skipped", "failed", "interrupted", "not started")
    tally = [f"{n} {state}" for state in states if (n := sum(item.state == state for item in items))]
    print(f"{len(items)} image(s): {', '.join(tally)}")
    if stop.is_set():
        return EXIT_INTERRUPTED
    return EXIT_FAILED if any(item.state == "failed" for item in items) else EXIT_OK


def process(client: Client, item: BatchItem, args: argparse.Namespace, stop: threading.Event) -> None:
    """One image of a batch, from its job to its video; what became of it goes into ``item``."""
    started = time.monotonic()
    try:
        job = make_input(image=item.image, **job_fields(args))
        item.state = "running"
        item.job_id = client.submit(job)
        result = client.wait(item.job_id, timeout=args.timeout, stop=stop)
        client.save_video(result, item.output)
        item.state, item.seed, item.message = "done", str(result.seed), str(item.output)
    except Interrupted:
        item.state = item.message = "interrupted"
    except JobFailed as exc:
        item.state, item.message = "failed", f"{exc.code}: {exc.message}" if exc.code else exc.message
    except ClientError as exc:
        item.state, item.message = "failed", str(exc)
        cancel(client, [item.job_id] if isinstance(exc, WaitTimeout) else [])
    item.time = format_elapsed(time.monotonic() - started)
