"""The start check: run by the runpod SDK before the worker takes its first job, in order, and the optional
warm-up after it. The SDK runs them on RunPod only (not with the local API or ``--test_input``); a failing one
ends the worker (exit 1) with its reason in the log, and RunPod replaces the worker."""

from __future__ import annotations

import tempfile
from collections.abc import Callable

from .config import Settings
from .handler import comfy_client, handle_job
from .models import volume
from .models.manifest import load_manifest

PIXEL = "iVBORw0KGgoAAAANSUhEUgAAABAAAAAQCAIAAACQkWg2AAAAGUlEQVR42mOsqKhgIAUwMZAIRjWMahg6GgB//AGIMoiFLAAAAABJRU5ErkJggg=="
WARMUP_INPUT = dict(prompt="warm-up", image_base64=PIXEL, width=128, height=128, length=5, steps=2)
"""The smallest built-in job: its graph loads the default models under the node ids real jobs use."""


def checks(settings: Settings) -> list[Callable[[], object]]:
    """The checks, each named for what it checks; each raises an exception that says what is wrong."""
    client = comfy_client(settings.comfy_url, settings.http_timeout_s)

    def comfyui_answers() -> None:
        client.wait_ready(settings.comfy_start_timeout_s)

    def cuda_device() -> None:
        kinds = [str(d.get("type")) for d in client.system_stats().get("devices") or []]
        if "cuda" not in kinds and not settings.allow_cpu:
            raise RuntimeError(
                f"ComfyUI reports no CUDA device (devices: {kinds}); ALLOW_CPU=true allows that"
            )

    def volume_writable() -> None:
        (folder := settings.volume_root / ".wan-worker").mkdir(parents=True, exist_ok=True)
        tempfile.NamedTemporaryFile(dir=folder, prefix="fitness-").close()  # created, then deleted

    def default_models() -> None:
        """By size only: hashing the 37 GB of default models at every start would take minutes."""
        for entry in (e for e in load_manifest(settings.models_manifest) if not e.on_demand):
            path = volume.target_path(settings.volume_root, entry.kind, entry.name)
            state, size, _ = volume.file_status(path, entry.size, entry.sha256)
            if state.usable or (size is None and entry.name in (client.list_models(entry.kind) or [])):
                continue  # missing here, ComfyUI may have it in a folder of its own
            what = "missing" if size is None else "cut short" if size < (entry.size or 0) else state
            raise RuntimeError(
                f"the default model {path} is {what} ({size or 0} of {entry.size} bytes); `python -m worker models ensure` fetches it"
            )

    async def warm_up() -> None:
        """The tiny job, through the handler: logged and cleaned up like any job; a failure is not fatal."""
        update = {"job_timeout_s": settings.warmup_timeout_s, "progress_updates": False}
        await handle_job({"id": "warmup", "input": WARMUP_INPUT}, settings.model_copy(update=update))

    return [comfyui_answers, cuda_device, volume_writable, default_models] + [warm_up] * settings.warmup
