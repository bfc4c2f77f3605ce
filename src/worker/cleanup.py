"""Per-job cleanup: nothing of a finished job stays in ComfyUI's queue, history or folders.

ComfyUI has no API to delete input or output files, so files are removed only when the worker knows where
ComfyUI keeps them (``COMFY_INPUT_DIR``, ``COMFY_OUTPUT_DIR``: the container sets both); names come from
ComfyUI's own answers and are checked to stay inside those folders.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from .comfy import ComfyClient, OutputFile
from .errors import WorkerError

log = logging.getLogger("worker.cleanup")


def _remove_inside(root: Path, relative: str, job_id: str) -> None:
    base = root.resolve()
    target = (base / relative).resolve()
    if not target.is_relative_to(base) or target == base:
        log.warning("job %s: not removing %r, it is outside %s", job_id, relative, base)
        return
    try:
        target.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("job %s: could not remove %s (%s)", job_id, target, exc)


def remove_job_files(
    *,
    job_id: str,
    uploads: Iterable[str],
    outputs: Iterable[OutputFile],
    input_dir: Path | None,
    output_dir: Path | None,
) -> None:
    if input_dir is not None:
        for name in uploads:
            _remove_inside(input_dir, name, job_id)
    if output_dir is not None:
        for out in outputs:
            if out.type == "output":
                _remove_inside(
                    output_dir, f"{out.subfolder}/{out.filename}" if out.subfolder else out.filename, job_id
                )


def forget_prompt(client: ComfyClient, prompt_id: str, job_id: str) -> None:
    """Drop the prompt from ComfyUI's queue (if still pending) and from its history."""
    for step in (client.delete_from_queue, client.delete_history):
        try:
            step(prompt_id)
        except WorkerError as exc:
            log.warning("job %s: cleanup of prompt %s failed: %s", job_id, prompt_id, exc.message)
