"""The job's story: validate -> inputs -> models -> graph -> run -> deliver.

Three layers, each with one job:

- :func:`handler` is RunPod's entry point: it reads the settings from the environment once and hands over.
- :func:`handle_job` runs one job with given settings and turns every outcome into a result: the video's
  fields, or ``{"error": "<code>: <what and how to fix>", "error_code", "details"}``. Nothing raised ever reaches
  the SDK, except the cancellation itself, re-raised after ComfyUI was interrupted. It always cleans up.
- :func:`make_video` is the story itself, one stage after another.

An async handler, so that RunPod's cancel (task cancellation) reaches it; blocking work runs in threads.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, TypeVar

from pydantic import ValidationError

from . import cleanup, deliver, extend, framing, graph, media
from .comfy import ComfyClient, Outcome, OutputFile, ProgressCallback, Watch
from .config import Settings
from .errors import (
    ComfyUnavailable,
    ComfyValidationError,
    InternalError,
    InvalidInput,
    JobTimeout,
    NoOutput,
    WorkerError,
)
from .models import job as jobmodels
from .models.fetch import check_ref
from .progress import ProgressReporter, Sender, runpod_sender
from .schema import JobInput, WorkflowInput, describe_errors

log = logging.getLogger("worker.handler")
Upload = media.ImageData | extend.GivenVideo | None
Input = TypeVar("Input", JobInput, WorkflowInput)


@lru_cache(maxsize=1)
def current_settings() -> Settings:
    return Settings.from_env()


@lru_cache(maxsize=4)
def comfy_client(base_url: str, timeout_s: float) -> ComfyClient:
    """One client (and one HTTP connection pool) per ComfyUI, reused across jobs."""
    return ComfyClient(base_url, timeout_s=timeout_s)


@lru_cache(maxsize=4)
def forgetter(client: ComfyClient) -> cleanup.Forgetter:
    """One record per ComfyUI of the prompts whose history entries are still to be deleted."""
    return cleanup.Forgetter(client)


def safe_id(job_id: str) -> str:
    """The job id as it may appear in file and object names: safe characters only, at most 48."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", job_id)[:48] or "job"


@dataclass
class JobRun:
    """The state of one job, kept so that cancellation and cleanup know what to undo."""

    job: dict[str, Any]
    settings: Settings
    job_id: str
    client: ComfyClient
    progress: ProgressReporter
    started: float = field(default_factory=time.monotonic)
    timings: dict[str, float] = field(default_factory=dict)
    cancel: threading.Event = field(default_factory=threading.Event)
    uploads: list[str] = field(default_factory=list)
    outputs: list[OutputFile] = field(default_factory=list)
    prompt_id: str | None = None
    watch: Watch | None = None
    finished: bool = False
    cancelled: bool = False

    @property
    def deadline(self) -> float:
        return self.started + self.settings.job_timeout_s

    @property
    def safe_id(self) -> str:
        return safe_id(self.job_id)

    @contextmanager
    def stage(self, name: str | None, timing: str, **progress: Any) -> Iterator[None]:
        """One stage of the job: announced to RunPod as ``name`` (None: no announcement), timed as ``timing``."""
        if name is not None:
            self.progress.stage(name, **progress)
        started = time.monotonic()
        yield
        self.timings[timing] = round(time.monotonic() - started, 3)


async def handler(job: dict[str, Any]) -> dict[str, Any]:
    """RunPod's entry point for one job."""
    return await handle_job(job, current_settings())


async def handle_job(
    job: dict[str, Any], settings: Settings, *, sender: Sender = runpod_sender
) -> dict[str, Any]:
    """One job with the given settings: a result dict, or the error shape; never raises but on cancel.

    ``sender`` delivers progress updates (RunPod's ``progress_update``; tests pass their own).
    """
    job_id = str(job.get("id") or "local")
    client = comfy_client(settings.comfy_url, settings.http_timeout_s)
    progress = ProgressReporter(job, enabled=settings.progress_updates, sender=sender)
    run = JobRun(job, settings, job_id, client, progress)
    try:
        if isinstance(job.get("input"), dict) and "workflow" in job["input"]:
            from .passthrough import run_workflow  # the user's own graph

            return await run_workflow(run)
        return await make_video(run)
    except asyncio.CancelledError:
        log.warning("job %s: cancelled; interrupting ComfyUI", job_id)
        run.cancelled = True
        stop_comfy(run)
        raise
    except WorkerError as err:
        log.warning("job %s: failed: %s: %s", job_id, err.code, err.message)
        if isinstance(err, JobTimeout):
            stop_comfy(run)
        result = err.to_result()
        if isinstance(err, ComfyUnavailable):
            result["refresh_worker"] = True
        return result
    except Exception:
        log.exception("job %s: unexpected failure", job_id)
        stop_comfy(run)
        return InternalError(
            f"the worker failed unexpectedly; its log has the details for job {job_id}"
        ).to_result()
    finally:
        run.progress.close()
        await asyncio.shield(asyncio.to_thread(clean_up, run))


async def make_video(run: JobRun) -> dict[str, Any]:
    job = validate(run, JobInput)
    for ref in jobmodels.url_refs(job):
        check_ref(ref, run.settings)
    bucket = deliver.target_bucket(run.job, job.output, run.settings)

    with run.stage("inputs", "inputs"):
        start_image, end_image = await load_images(run.settings, job)
        given = await asyncio.to_thread(extend.load, job, run.settings) if job.extends else None
        if start_image is not None:
            framing.frame(job, start_image.width, start_image.height)
    log.info(
        "job %s: %s %dx%d, %d frames, %d steps, lightning %s, %d LoRA pairs",
        run.job_id,
        job.mode,
        job.width,
        job.height,
        job.length,
        job.steps,
        job.lightning,
        len(job.lora_pairs),
    )

    with run.stage("models", "models"):
        files = await asyncio.to_thread(
            jobmodels.resolve,
            job,
            run.settings,
            job_id=run.job_id,
            on_progress=run.progress.download,
            cancel=run.cancel,
        )

    with run.stage("comfyui", "comfyui_ready"):
        await asyncio.to_thread(run.client.wait_ready, run.settings.comfy_start_timeout_s, cancel=run.cancel)
    with run.stage(None, "upload"):
        await asyncio.to_thread(jobmodels.check_available, run.client.list_models, files, job)
        images = await upload_images(run, start_image, end_image, given)

    bound = graph.bind(
        graph.load_template(run.settings.workflows_dir, job.mode),
        job,
        files,
        images,
        filename_prefix=f"video/wan_{run.safe_id}_{uuid.uuid4().hex[:8]}",
    )

    with run.stage("sampling", "sampling", step=0, steps=job.steps):
        outcome = await asyncio.to_thread(execute, run, bound, job)

    with run.stage("delivering", "deliver"):
        delivered, size = await asyncio.to_thread(deliver_video, run, find_video(outcome), bucket)
        if job.return_last_frame:
            delivered |= await asyncio.to_thread(deliver_frame, run, outcome, bucket)
    run.timings["total"] = round(time.monotonic() - run.started, 3)
    run.finished = True
    log.info("job %s: done in %.1f s (%d bytes)", run.job_id, run.timings["total"], size)
    return deliver.JobResult(
        {
            **delivered,
            "mime_type": deliver.MIME_TYPE,
            **job.report(),
            **(extend.report(given, job) if given else {}),
            "size_bytes": size,
            "cached_nodes": outcome.cached_nodes,
            "timings": run.timings,
        }
    )


def validate(run: JobRun, contract: type[Input]) -> Input:
    raw = run.job.get("input")
    if raw is None:
        raise InvalidInput(
            "the job has no 'input' object", details=[{"field": "input", "message": "is required"}]
        )
    try:
        return contract.model_validate(raw, context={"allow_pickle_models": run.settings.allow_pickle_models})
    except ValidationError as exc:
        raise invalid_input(exc) from None


def invalid_input(exc: ValidationError) -> InvalidInput:
    problems = describe_errors(exc)
    summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems[:5])
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    return InvalidInput(summary + more, details=problems)


async def load_images(
    settings: Settings, job: JobInput
) -> tuple[media.ImageData | None, media.ImageData | None]:
    """Start and end images, fetched concurrently."""
    limits = media.ImageLimits.from_settings(settings)

    def load(prefix: str) -> media.ImageData | None:
        for name in (f"{prefix}_url", f"{prefix}_base64", f"{prefix}_path"):
            if (value := getattr(job, name)) is not None:
                data = media.read_source(name, value, limits, settings.volume_root)
                return media.check_image(data, field=name, max_pixels=limits.max_pixels)
        return None

    start, end = await asyncio.gather(asyncio.to_thread(load, "image"), asyncio.to_thread(load, "end_image"))
    if start is None and not job.extends:
        raise InvalidInput("a start image is required", details=[{"field": "image_url"}])
    return start, end


async def upload_images(run: JobRun, start: Upload, end: Upload, video: Upload = None) -> graph.Images:
    async def put(role: str, item: Upload) -> str | None:
        if item is None:
            return None
        name = f"wan_{run.safe_id}_{role}_{uuid.uuid4().hex[:8]}.{item.extension}"
        stored = await asyncio.to_thread(run.client.upload_image, item.data, name, mime=item.mime)
        run.uploads.append(stored)
        return stored

    first, last, given = await asyncio.gather(put("start", start), put("end", end), put("given", video))
    return graph.Images(start=first, end=last, video=given)


def execute(run: JobRun, bound: graph.Graph, job: JobInput) -> Outcome:
    """Queue the graph and follow it to its end (blocking; runs in a thread)."""
    offsets = graph.step_offsets(job)

    def on_progress(node: str, value: int, maximum: int) -> None:
        if node in offsets:
            run.progress.step(min(job.steps, offsets[node] + value), job.steps)
        elif node == graph.INTERPOLATE_NODE:
            if run.progress.stage_name != "interpolating":
                run.progress.stage("interpolating")
            run.progress.step(value, maximum)

    return run_graph(run, bound, on_progress)


def run_graph(run: JobRun, bound: graph.Graph, on_progress: ProgressCallback) -> Outcome:
    """Queue a graph and follow it to its end (blocking; runs in a thread)."""
    client_id = uuid.uuid4().hex
    with run.client.open_watch(client_id) as watch:
        run.watch = watch
        if run.cancel.is_set():
            watch.abort()
        try:
            run.prompt_id = run.client.queue_prompt(bound, client_id=client_id)
        except ComfyValidationError as err:
            raise jobmodels.missing_from_validation(err) or err from None
        log.info("job %s: queued as ComfyUI prompt %s", run.job_id, run.prompt_id)
        outcome = watch.wait(
            run.prompt_id,
            idle_timeout_s=run.settings.comfy_idle_timeout_s,
            deadline=run.deadline,
            on_progress=on_progress,
        )
    run.outputs = outcome.outputs
    return outcome


def find_video(outcome: Outcome) -> OutputFile:
    videos = [o for o in outcome.outputs if o.node_id == graph.OUTPUT_NODE] or [
        o for o in outcome.outputs if o.filename.lower().endswith(".mp4")
    ]
    if not videos:
        raise NoOutput("ComfyUI finished without writing a video; its log may say why")
    return videos[0]


def deliver_video(
    run: JobRun, video: OutputFile, bucket: deliver.Bucket | None
) -> tuple[dict[str, Any], int]:
    """Read the video from ComfyUI and hand it over (blocking; runs in a thread): encoded to base64 while it
    streams in, or read whole and uploaded to the bucket. Returns the delivered fields and the video's size."""
    empty = NoOutput(f"ComfyUI's video {video.filename!r} is empty")
    if bucket is not None:
        data = run.client.fetch_output(video)
        if not data:
            raise empty
        key = deliver.object_key(run.safe_id)
        return {"video_url": deliver.upload(data, key=key, bucket=bucket), "bucket_key": key}, len(data)
    encoder = deliver.InlineEncoder(run.settings)
    if not run.client.read_output(video, encoder):
        raise empty
    return encoder.result(), encoder.size


def deliver_frame(run: JobRun, outcome: Outcome, bucket: deliver.Bucket | None) -> dict[str, str]:
    """The video's last frame as a PNG, inline or beside the video in the bucket (blocking)."""
    frames = [o for o in outcome.outputs if o.node_id == graph.LAST_FRAME]
    if not frames:
        raise NoOutput("ComfyUI finished without writing the last frame; its log may say why")
    data = run.client.fetch_output(frames[0])
    if bucket is not None:
        key = deliver.object_key(run.safe_id, "_last_frame.png")
        return {"last_frame_url": deliver.upload(data, key=key, bucket=bucket, content_type="image/png")}
    return {"last_frame": base64.b64encode(data).decode("ascii")}


def stop_comfy(run: JobRun) -> None:
    """Interrupt and dequeue the job's prompt; wake the watching thread. Never raises."""
    run.cancel.set()
    if run.watch is not None:
        run.watch.abort()
    if run.prompt_id is None or run.finished:
        return
    for step in (run.client.interrupt, run.client.delete_from_queue):
        try:
            step(run.prompt_id)
        except WorkerError as exc:
            log.warning("job %s: %s failed: %s", run.job_id, step.__name__, exc.message)


def clean_up(run: JobRun) -> None:
    """Nothing of the job stays in ComfyUI: its prompt leaves the queue and the history, its files go.

    A cancelled prompt gets its history entry only once ComfyUI has stopped running it, which may be after this
    runs: the forgetter waits a little for it, and keeps it to delete at the end of a later job otherwise."""
    try:
        forgetter(run.client).forget(
            run.prompt_id, job_id=run.job_id, wait_s=cleanup.CANCEL_WAIT_S if run.cancelled else 0.0
        )
        cleanup.remove_job_files(
            job_id=run.job_id,
            uploads=run.uploads,
            outputs=run.outputs,
            input_dir=run.settings.comfy_input_dir,
            output_dir=run.settings.comfy_output_dir,
        )
    except Exception:
        log.exception("job %s: cleanup failed", run.job_id)
