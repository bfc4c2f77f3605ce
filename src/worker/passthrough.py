"""The workflow job: the user's own ComfyUI API graph (worker-comfyui's ``workflow`` and ``images``, and
``models``), run with the built-in jobs' machinery; every file its output nodes saved comes back. Also the
``graph`` command: the API graph of a built-in job, made without ComfyUI."""

from __future__ import annotations

import asyncio
import json
import mimetypes
import re
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from . import deliver, framing, graph, handler, media
from .config import Settings
from .errors import InvalidInput, NoOutput, OutputTooLarge, WorkerError
from .models import job as jobmodels
from .models.fetch import Context, ModelRef, check_ref, ensure_refs
from .schema import WorkflowInput, parse_job_input


async def run_workflow(run: handler.JobRun) -> dict[str, Any]:
    s = run.settings
    if not s.allow_workflow:
        raise InvalidInput("this worker runs no workflow jobs (ALLOW_WORKFLOW=false); send a built-in job")
    job = handler.validate(run, WorkflowInput)
    refs = [ModelRef(f"models[{i}].url", m.folder, m.url, m.name) for i, m in enumerate(job.models)]
    for ref in refs:
        check_ref(ref, s)
    bucket = deliver.target_bucket(run.job, job.output, s)
    with run.stage("inputs", "inputs"):
        files = await asyncio.gather(
            *(asyncio.to_thread(load_file, f.image, i, s) for i, f in enumerate(job.images))
        )
    with run.stage("models", "models"):
        context = Context(s, job_id=run.job_id, on_progress=run.progress.download, cancel=run.cancel)
        await asyncio.to_thread(ensure_refs, refs, context)
    with run.stage("comfyui", "comfyui_ready"):
        await asyncio.to_thread(run.client.wait_ready, s.comfy_start_timeout_s, cancel=run.cancel)
    with run.stage(None, "upload"):
        for entry, (data, mime) in zip(job.images, files, strict=True):
            run.uploads.append(await asyncio.to_thread(run.client.upload_image, data, entry.name, mime=mime))
    # each saver's file name gets a tag: ComfyUI's cache would report an unchanged saver's earlier, deleted file
    bound = {k: tagged(node, uuid.uuid4().hex[:8]) for k, node in job.workflow.items()}
    with run.stage("sampling", "sampling"):
        outcome = await asyncio.to_thread(
            handler.run_graph, run, bound, lambda _, v, m: run.progress.step(v, m)
        )
    with run.stage("delivering", "deliver"):
        result = await asyncio.to_thread(deliver_all, run, bucket)
    run.timings["total"] = round(time.monotonic() - run.started, 3)
    run.finished = True
    return deliver.JobResult({**result, "cached_nodes": outcome.cached_nodes, "timings": run.timings})


def tagged(node: dict[str, Any], tag: str) -> dict[str, Any]:
    if not isinstance(prefix := node["inputs"].get("filename_prefix"), str):
        return node
    return {**node, "inputs": {**node["inputs"], "filename_prefix": f"{prefix}_{tag}"}}


def load_file(source: str, index: int, s: Settings) -> tuple[bytes, str]:
    """An image, checked as the built-in jobs' are, or an MP4 / WebM video; and its MIME type."""
    field, limits = f"images[{index}].image", media.ImageLimits.from_settings(s)
    if re.match(r"^\s*https?://", source, flags=re.IGNORECASE):
        data = media.fetch_url(source.strip(), field=field, limits=limits)
    else:
        data = media.decode_base64(source, field=field, max_bytes=limits.max_bytes, accepted=media.MEDIA_MIME)
    if data[4:8] == b"ftyp" or data[:4] == b"\x1a\x45\xdf\xa3":
        return data, "video/mp4" if data[4:8] == b"ftyp" else "video/webm"
    return data, f"image/{media.check_image(data, field=field, max_pixels=limits.max_pixels).format}"


def deliver_all(run: handler.JobRun, bucket: deliver.Bucket | None) -> dict[str, Any]:
    """Every file the output nodes saved (previews are not), inline or to the bucket; the first video also as
    ``video`` / ``video_url``. Inline, the whole result (that video twice) stays within the limit."""
    if not (saved := [o for o in run.outputs if o.type == "output"]):
        raise NoOutput("the graph's output nodes saved no file; end it in SaveImage, SaveVideo or the like")
    entries, inline, limit, video = [], 0, run.settings.inline_output_max_mb * 2**20, None
    for index, out in enumerate(saved):
        mime = mimetypes.guess_type(out.filename)[0] or "application/octet-stream"
        entry: dict[str, Any] = {"node_id": out.node_id, "filename": out.filename, "mime_type": mime}
        if bucket is not None:
            data = run.client.fetch_output(out)
            key = deliver.object_key(f"{run.safe_id}_{index}", Path(out.filename).suffix)
            url = deliver.upload(data, key=key, bucket=bucket, content_type=mime)
            entry |= {"size_bytes": len(data), "url": url}
        else:
            encoder = deliver.InlineEncoder(run.settings)
            entry["size_bytes"] = run.client.read_output(out, encoder)
            entry["data"] = encoder.result()["video"]
            inline += len(entry["data"]) * (2 if video is None and mime.startswith("video/") else 1)
            if inline > limit:
                message = f"the graph's files are {inline / 1e6:.1f} MB as base64 (the first video twice), "
                raise OutputTooLarge(
                    message + "more than INLINE_OUTPUT_MAX_MB; use a bucket and output 'url'"
                )
        video = video or (entry if mime.startswith("video/") else None)
        entries.append(entry)
    result = {"outputs": entries, "size_bytes": sum(e["size_bytes"] for e in entries)}
    if video is not None:
        result |= {"video_url": video["url"]} if "url" in video else {"video": video["data"]}
        result["mime_type"] = video["mime_type"]
    return result


def export_graph(argv: list[str], s: Settings) -> int:
    """``graph JOB.json``: the API graph a built-in job (a job, or its input) binds to, its images named
    ``start.<ext>`` and ``end.<ext>``: a workflow job's ``images`` brings them under those names."""
    try:
        raw = json.loads(Path(argv[0]).read_text(encoding="utf-8")) if len(argv) == 1 else None
        job = parse_job_input(raw.get("input", raw) if isinstance(raw, dict) else raw)
        if refs := jobmodels.url_refs(job):
            raise InvalidInput(f"{refs[0].field}: name model files on the volume; graph fetches nothing")
        if job.extends:
            raise InvalidInput("extend_video_*: graph exports I2V and FLF2V jobs, not extensions")
        start, end = asyncio.run(handler.load_images(s, job))
        assert start is not None  # required unless the job extends a video
    except (OSError, ValueError, WorkerError) as exc:
        message = handler.invalid_input(exc).message if isinstance(exc, ValidationError) else str(exc)
        print(f"usage: python -m worker graph JOB.json\n{message}", file=sys.stderr)
        return 2
    framing.frame(job, start.width, start.height)
    files = jobmodels.named_files(job)
    images = graph.Images(f"start.{start.extension}", f"end.{end.extension}" if end else None)
    bound = graph.bind(
        graph.load_template(s.workflows_dir, job.mode), job, files, images, filename_prefix="video/wan"
    )
    print(json.dumps(bound, indent=2, ensure_ascii=False))
    return 0
