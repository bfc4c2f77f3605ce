"""``wan-video generate``, ``extend``, ``workflow``, ``batch`` (resumable): on a RunPod endpoint or the local API.
Exits 0 on success, 1 when a job failed or the API could not be used, 2 on a usage error, 130 on Ctrl-C."""

import argparse
import contextlib
import queue
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from ..schema import input_json_schema
from . import Client, ClientError, Interrupted, JobFailed, Progress, UsageError, make_input, workflow_input
from .options import DEST, add_job_options, job_fields

try:
    from .progress import ProgressBar, format_elapsed, print_table
except ModuleNotFoundError as missing:  # rich: the command's own extra
    raise SystemExit(f"wan-video needs {missing.name}: pip install 'wan-worker[client]'") from None

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
EPILOG = "Exit codes: 0 success, 1 a job failed, 2 usage error, 130 interrupted."


def build_parser() -> argparse.ArgumentParser:
    where = argparse.ArgumentParser(add_help=False)
    group = where.add_argument_group("where to run")
    backend = group.add_mutually_exclusive_group(required=True)
    backend.add_argument("--endpoint", help="RunPod serverless endpoint id (API key from RUNPOD_API_KEY)")
    backend.add_argument("--url", help="the local API, e.g. http://localhost:8000")
    group.add_argument("--webhook", metavar="URL", help="also post each job's result to this URL")
    group.add_argument("--timeout", type=float, help="give up waiting for a job after this many seconds")
    first_pause = "first pause between status polls; it grows to 5 s while nothing changes (default 0.5)"
    group.add_argument("--poll-interval", type=float, default=0.5, metavar="SECONDS", help=first_pause)
    group.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_job_options(common := argparse.ArgumentParser(add_help=False, parents=[where]))
    about = "Turn images into videos with a wan-worker (Wan2.2 through ComfyUI)."
    parser = argparse.ArgumentParser(prog="wan-video", description=about, epilog=EPILOG)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    generate = commands.add_parser("generate", parents=[common], help="one video from a start image")
    generate.add_argument("--image", required=True, help="start image: a file, an http(s) URL or volume:PATH")
    generate.add_argument("--end-image", help="end image (first-last-frame video): same forms as --image")
    extend = commands.add_parser("extend", parents=[common], help="a video made longer from its last frames")
    video = extend.add_mutually_exclusive_group(required=True)
    video.add_argument("--video", help="the video to extend: a file, an http(s) URL or volume:PATH")
    video.add_argument("--video-url", dest=DEST + "extend_video_url", metavar="URL", help="the video by URL")
    for command in (generate, extend):
        command.add_argument("-o", "--output", required=True, type=Path, help="where to save the MP4")
        chain = "jobs chained into one video, each extending the one before (default 1)"
        command.add_argument("--segments", type=int, default=1, metavar="N", help=chain)
    batch = commands.add_parser("batch", parents=[common], help="one video per image in a folder")
    batch.add_argument("--images", required=True, type=Path, help="folder of images (png, jpg, webp)")
    batch.add_argument("-o", "--output", required=True, type=Path, help="folder for the MP4s")
    batch.add_argument("--concurrency", type=int, default=1, metavar="N", help="jobs at once (default 1)")
    flow = commands.add_parser("workflow", parents=[where], help="your own ComfyUI graph (API format)")
    flow.add_argument("graph", type=Path, metavar="GRAPH.json", help="the graph, exported for the API")
    files = "a file that the graph loads by NAME: a local file or an http(s) URL; repeatable"
    flow.add_argument("--image", action="append", default=[], metavar="NAME=PATH", help=files)
    flow.add_argument("--output-dir", dest="output", required=True, type=Path, help="folder for its files")
    add_job_options(
        flow, input_json_schema(workflow=True)
    )  # the fields a workflow job takes beside its graph
    return parser


def main(argv: list[str] | None = None) -> int:  # the wan-video console script
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
        return (run_batch if args.command == "batch" else run_job)(args, client, bar)
    except UsageError as exc:
        print(f"wan-video: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def cancel(client: Client, job_ids: list[str], why: str = "") -> None:
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


def run_job(args: argparse.Namespace, client: Client, bar: ProgressBar) -> int:
    """One video (``generate``, ``extend``: ``--segments`` jobs chained) or a graph's files (``workflow``)."""
    jobs, n, flow = list[str](), getattr(args, "segments", 1), args.command == "workflow"
    named = [text.partition("=") for text in args.image] if flow else []
    if n < 1 or not all(all(parts) for parts in named):
        raise UsageError("--segments must be at least 1" if n < 1 else "--image takes NAME=PATH or NAME=URL")
    if flow:
        job = workflow_input(args.graph, {name: file for name, _, file in named}, **job_fields(args))
    else:
        sources = {k: v for k, v in vars(args).items() if k in ("image", "end_image", "video")}
        job = make_input(**sources, **job_fields(args))

    def submitted(job_id: str) -> None:
        jobs.append(job_id)
        bar.note(f"job {job_id} on {client.where}" + (f" (segment {len(jobs)} of {n})" if n > 1 else ""))

    try:
        result = client.generate(
            job, segments=n, webhook=args.webhook, on_submit=submitted, on_progress=bar, timeout=args.timeout
        )
        if result.video_url and not result.video_base64:
            bar(Progress("downloading"))
        paths = client.save_outputs(result, args.output) if flow else [client.save_video(result, args.output)]
    except KeyboardInterrupt:
        bar.close()
        cancel(client, jobs[-1:], "interrupted")
        return EXIT_INTERRUPTED
    except ClientError as exc:
        bar.close()
        print(f"error: {exc}", file=sys.stderr)
        cancel(client, jobs[-1:] if isinstance(exc, TimeoutError) else [])
        return EXIT_FAILED
    bar.close()
    fps = "?" if result.fps is None else f"{result.fps:g}"
    frames = result.frames.get("delivered", result.length)
    shape = f"{result.width}x{result.height}, {frames} frames at {fps} fps, {result.steps} steps"
    for path in paths:
        size, kb = path.stat().st_size, path.stat().st_size / 1e3
        told = f"{size} bytes" if size < 1e3 else f"{kb:.0f} kB" if size < 1e6 else f"{kb / 1e3:.1f} MB"
        print(f"saved {path} ({told})" + ("" if flow else f": {result.mode or 'video'} {shape}"))
    if result.seed is not None:
        print(f"seed: {result.seed}")
    for adj in result.adjustments:
        print(f"adjusted {adj.field}: {adj.requested} -> {adj.used} ({adj.reason})")
    if result.timings:
        ordered = sorted(result.timings.items(), key=lambda kv: kv[0] == "total")
        print("timings: " + ", ".join(f"{name} {sec:.1f}s" for name, sec in ordered))
    return EXIT_OK


@dataclass
class BatchItem:  # an image of a batch: pending, running, done, skipped, failed, interrupted or not started
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
    todo, finished, stop = deque(pending), queue.Queue[BatchItem](), threading.Event()

    def work() -> None:
        with contextlib.suppress(IndexError):  # a deque's popleft is thread-safe
            while not stop.is_set():
                finished.put(process(client, todo.popleft(), args, stop))

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
        for item in (item for item in pending if item.state in ("pending", "running")):
            item.state = item.message = "not started" if item.state == "pending" else "interrupted"
        cancel(client, [i.job_id for i in pending if i.state == "interrupted" and i.job_id], "interrupted")
    bar.close()
    rows = [(i.image.name, i.state, i.seed, i.time, i.message) for i in items]
    print_table(("image", "status", "seed", "time", "output / error"), rows, sys.stdout)
    states = ("done", "skipped", "failed", "interrupted", "not started")
    tally = [f"{n} {state}" for state in states if (n := sum(item.state == state for item in items))]
    print(f"{len(items)} image(s): {', '.join(tally)}")
    failed = any(item.state == "failed" for item in items)
    return EXIT_INTERRUPTED if stop.is_set() else EXIT_FAILED if failed else EXIT_OK


def process(client: Client, item: BatchItem, args: argparse.Namespace, stop: threading.Event) -> BatchItem:
    """One image of a batch, from its job to its video; what became of it goes into ``item``."""
    started, item.state = time.monotonic(), "running"
    try:
        item.job_id = client.submit(make_input(image=item.image, **job_fields(args)), webhook=args.webhook)
        client.save_video(result := client.wait(item.job_id, timeout=args.timeout, stop=stop), item.output)
        item.state, item.seed, item.message = "done", str(result.seed), str(item.output)
    except Interrupted:
        item.state = item.message = "interrupted"
    except JobFailed as exc:
        item.state, item.message = "failed", f"{exc.code}: {exc.message}" if exc.code else exc.message
    except ClientError as exc:
        item.state, item.message = "failed", str(exc)
        cancel(client, [item.job_id] if isinstance(exc, TimeoutError) else [])
    item.time = format_elapsed(time.monotonic() - started)
    return item
