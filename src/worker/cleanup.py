"""Per-job cleanup: nothing of a finished or cancelled job stays in ComfyUI's queue, history or folders.

ComfyUI has no API to delete input or output files, so files are removed only when the worker knows where
ComfyUI keeps them (``COMFY_INPUT_DIR``, ``COMFY_OUTPUT_DIR``: the container sets both); names come from
ComfyUI's own answers and are checked to stay inside those folders.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
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
        for out in (o for o in outputs if o.type == "output"):
            relative = f"{out.subfolder}/{out.filename}" if out.subfolder else out.filename
            _remove_inside(output_dir, relative, job_id)


CANCEL_WAIT_S = 10.0
"""How long the cleanup of a cancelled job waits for ComfyUI to stop running its prompt, so that the prompt's
history entry, written only then, can be deleted at once; a prompt that takes longer is deleted by a later job's
cleanup."""


class Forgetter:
    """Deletes prompts from ComfyUI's queue and history, including those whose history entry comes late.

    ComfyUI writes a prompt's history entry when it stops running it, and removes it from its queue in the same
    step: a prompt no longer queued nor running has its entry already, and deleting it then removes it for
    good. A prompt still running (an interrupted one winding down) is kept and tried again at every cleanup."""

    def __init__(self, client: ComfyClient) -> None:
        self.client = client
        self.pending: set[str] = set()
        self._lock = threading.Lock()

    def forget(self, prompt_id: str | None, *, job_id: str, wait_s: float = 0.0) -> None:
        """Forget ``prompt_id`` (None: only the prompts kept from earlier jobs), waiting up to ``wait_s`` for
        it to stop running. Never raises: what cannot be done now is kept for the next call."""
        with self._lock:
            if prompt_id is not None:
                self.pending.add(prompt_id)
                self._try(self.client.delete_from_queue, prompt_id, job_id)
            deadline = time.monotonic() + wait_s
            while self.pending and not self._sweep(job_id) and time.monotonic() < deadline:
                time.sleep(0.2)

    def _sweep(self, job_id: str) -> bool:
        """Delete the history of every pending prompt that has left the queue; True when none is left."""
        try:
            active = self.client.active_prompts()
        except WorkerError as exc:
            log.warning("job %s: cannot read ComfyUI's queue: %s", job_id, exc.message)
            return False
        for prompt_id in sorted(self.pending - active):
            if self._try(self.client.delete_history, prompt_id, job_id):
                self.pending.discard(prompt_id)
        return not self.pending

    @staticmethod
    def _try(step: Callable[[str], None], prompt_id: str, job_id: str) -> bool:
        try:
            step(prompt_id)
        except WorkerError as exc:
            log.warning("job %s: cleanup of prompt %s failed: %s", job_id, prompt_id, exc.message)
            return False
        return True
