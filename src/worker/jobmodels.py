"""Which model files a job needs, fetched where the job gives URLs, and checked against what ComfyUI sees.

This is the glue between the job contract and :mod:`worker.models` (manifest, volume, downloads): it names a
:class:`~worker.models.ModelRef` per model field, lets the models package download URL overrides into the
volume, and then asks ComfyUI (``GET /models/<folder>``) whether it has every file, so that a missing file is
reported by name and folder before anything is queued.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from .comfy import ComfyClient
from .config import Settings
from .errors import ComfyValidationError, ModelMissing
from .graph import LoraFiles, ModelFiles
from .models import FOLDER_KINDS, ModelRef, default_names, ensure_job_models
from .schema import JobInput

ROLE_KIND = {
    "high_model": "diffusion_models",
    "low_model": "diffusion_models",
    "text_encoder": "text_encoders",
    "vae": "vae",
    "clip_vision": "clip_vision",
}

INPUT_KIND = {
    ("UNETLoader", "unet_name"): "diffusion_models",
    ("CLIPLoader", "clip_name"): "text_encoders",
    ("VAELoader", "vae_name"): "vae",
    ("LoraLoaderModelOnly", "lora_name"): "loras",
    ("CLIPVisionLoader", "clip_name"): "clip_vision",
}
"""Loader inputs that name a model file, and the model folder kind they read from."""


def job_refs(job: JobInput) -> list[ModelRef]:
    """One reference per model the job names by name or URL (defaults are not references)."""
    refs: list[ModelRef] = []
    for role, kind in ROLE_KIND.items():
        name, url = getattr(job, role), getattr(job, f"{role}_url")
        if name or url:
            refs.append(ModelRef(field=f"{role}_url" if url else role, kind=kind, url=url, name=name))
    for index, pair in enumerate(job.lora_pairs):
        for side in ("high", "low"):
            name, url = getattr(pair, side), getattr(pair, f"{side}_url")
            if name or url:
                field = f"lora_pairs[{index}].{side}_url" if url else f"lora_pairs[{index}].{side}"
                refs.append(ModelRef(field=field, kind="loras", url=url, name=name))
    return refs


def resolve(
    job: JobInput,
    settings: Settings,
    *,
    job_id: str,
    on_progress: Callable[[str, int, int | None], None] | None = None,
    cancel: threading.Event | None = None,
) -> ModelFiles:
    """Download what the job gives as URLs; returns the file names the graph will load."""
    refs = job_refs(job)
    downloads = [r for r in refs if r.url]
    fetched = ensure_job_models(downloads, settings, job_id=job_id, on_progress=on_progress, cancel=cancel)
    names = {r.field: r.name for r in refs if not r.url}
    names.update(fetched)
    defaults = default_names()

    def pick(role: str) -> str | None:
        return names.get(f"{role}_url") or names.get(role) or defaults.get(role)

    loras = []
    for index, pair in enumerate(job.lora_pairs):
        high = names.get(f"lora_pairs[{index}].high_url") or names.get(f"lora_pairs[{index}].high")
        low = names.get(f"lora_pairs[{index}].low_url") or names.get(f"lora_pairs[{index}].low")
        loras.append(LoraFiles(high=high, low=low, high_weight=pair.high_weight, low_weight=pair.low_weight))
    return ModelFiles(
        high_model=str(pick("high_model")),
        low_model=str(pick("low_model")),
        text_encoder=str(pick("text_encoder")),
        vae=str(pick("vae")),
        lightning_high=defaults["lightning_high"],
        lightning_low=defaults["lightning_low"],
        clip_vision=pick("clip_vision"),
        loras=tuple(loras),
    )


def wanted(files: ModelFiles, job: JobInput) -> list[tuple[str, str, str]]:
    """(field, folder kind, file name) for every model the graph will load."""
    items = [
        ("high_model", "diffusion_models", files.high_model),
        ("low_model", "diffusion_models", files.low_model),
        ("text_encoder", "text_encoders", files.text_encoder),
        ("vae", "vae", files.vae),
    ]
    if job.lightning:
        items += [("lightning", "loras", files.lightning_high), ("lightning", "loras", files.lightning_low)]
    if files.clip_vision:
        items.append(("clip_vision", "clip_vision", files.clip_vision))
    for index, pair in enumerate(files.loras):
        for side, name in (("high", pair.high), ("low", pair.low)):
            if name:
                items.append((f"lora_pairs[{index}].{side}", "loras", name))
    return items


def missing_model(field: str, kind: str, name: str) -> ModelMissing:
    folder = FOLDER_KINDS.get(kind, kind)
    hint = (
        "the default models are fetched by `python -m worker models ensure` (start.sh runs it)"
        if field in ("high_model", "low_model", "text_encoder", "vae", "lightning")
        else f"put the file there, or give {field.removesuffix('_url')}_url to download it"
    )
    return ModelMissing(
        f"{field}: the model file {name!r} was not found in the volume folder {folder}/ "
        f"(ComfyUI folder {kind}); {hint}",
        details=[{"field": field, "file": name, "folder": f"{folder}/", "comfy_folder": kind}],
    )


def check_available(client: ComfyClient, files: ModelFiles, job: JobInput) -> None:
    """Refuse the job, naming file and folder, when ComfyUI does not list a model it must load."""
    listings: dict[str, set[str] | None] = {}
    for field, kind, name in wanted(files, job):
        if kind not in listings:
            found = client.list_models(kind)
            listings[kind] = None if found is None else set(found)
        available = listings[kind]
        if available is not None and name not in available:
            raise missing_model(field, kind, name)


def missing_from_validation(err: ComfyValidationError) -> ModelMissing | None:
    """ComfyUI's ``value_not_in_list`` on a loader's file input means a missing model: say so plainly."""
    for detail in err.details:
        kind = INPUT_KIND.get((str(detail.get("class_type")), str(detail.get("input_name"))))
        if detail.get("type") == "value_not_in_list" and kind is not None:
            name = detail.get("received_value")
            return missing_model(f"node {detail.get('node_id')}", kind, str(name) if name else "?")
    return None
