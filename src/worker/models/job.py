"""The model files of one job: its URLs and the manifest's on-demand files fetched into the volume, and every
file checked against ComfyUI's listing (which the handler hands in as a function) before anything is queued."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator, Mapping

from ..config import Settings
from ..errors import ComfyValidationError, ModelMissing
from ..graph import LoraFiles, ModelFiles
from ..schema import JobInput
from . import roles
from .fetch import Context, ModelRef, ensure_refs
from .manifest import default_names, find, load_manifest
from .volume import FOLDER_KINDS

Listing = Callable[[str], list[str] | None]  # the file names a model folder holds, None when unknown


def url_refs(job: JobInput) -> list[ModelRef]:
    """One reference per model the job gives a URL for (named files need no download)."""
    refs = [(f"{r.name}_url", r.kind, job.model_url(r.name), job.model_name(r.name)) for r in roles.JOB_ROLES]
    for i, pair in enumerate(job.lora_pairs):
        for side, name, url in (("high", pair.high, pair.high_url), ("low", pair.low, pair.low_url)):
            refs.append((f"lora_pairs[{i}].{side}_url", roles.LORA_KIND, url, name))
    return [ModelRef(field, kind, url, name) for field, kind, url, name in refs if url]


def resolve(
    job: JobInput,
    settings: Settings,
    *,
    job_id: str,
    on_progress: Callable[[str, int, int | None], None] | None = None,
    cancel: threading.Event | None = None,
) -> ModelFiles:
    """Fetch what the job gives as URLs, and the manifest's on-demand files its graph loads (the first time one
    is needed); returns the file names the graph will load."""
    refs, named = url_refs(job), named_files(job)
    for role in roles.ROLES:
        given = role.job_field and job.model_url(role.name)  # the job's own file comes from its URL
        entry = find(load_manifest(), role.kind, named.get(role.name) or "")
        if entry and entry.on_demand and role.used_by(job, named=True) and not given:
            refs.append(ModelRef(role.name, role.kind, entry.url, entry.name))
    context = Context(settings, job_id=job_id, on_progress=on_progress, cancel=cancel)
    return named_files(job, ensure_refs(refs, context))


def named_files(job: JobInput, fetched: Mapping[str, str] | None = None) -> ModelFiles:
    """The file names the job's graph loads, by role: the file fetched for its field (``fetched``, field -> name),
    else the name the job gives, else the default. ``graph JOB.json`` binds with the same names."""
    fetched, defaults = fetched or {}, default_names()
    names = {r.name: (r.job_field and job.model_name(r.name)) or defaults.get(r.name) for r in roles.ROLES}
    names |= {r.name: fetched[k] for r in roles.ROLES for k in (r.name, f"{r.name}_url") if k in fetched}
    loras = []
    for i, pair in enumerate(job.lora_pairs):
        high, low = (fetched.get(f"lora_pairs[{i}].{s}_url") or getattr(pair, s) for s in ("high", "low"))
        loras.append(LoraFiles(high, low, pair.high_weight, pair.low_weight))
    return ModelFiles(loras=loras, **names)


def wanted(files: ModelFiles, job: JobInput) -> Iterator[tuple[str, str, str, bool]]:
    """(field, folder kind, file name, whether the job named it) for every model the graph will load."""
    for role in roles.ROLES:
        if (name := files.get(role.name)) and role.used_by(job, named=True):
            mine = role.job_field and bool(job.model_name(role.name) or job.model_url(role.name))
            yield (role.name if role.job_field else "lightning"), role.kind, name, mine
    for index, pair in enumerate(files.loras):
        for side, name in (("high", pair.high), ("low", pair.low)):
            if name:
                yield f"lora_pairs[{index}].{side}", roles.LORA_KIND, name, True


def missing_model(field: str, kind: str, name: str, *, named_by_job: bool) -> ModelMissing:
    folder = FOLDER_KINDS.get(kind, kind)
    hint = "the default models are fetched by `python -m worker models ensure` (start.sh runs it)"
    if named_by_job:
        hint = f"put the file there, or give {field.removesuffix('_url')}_url to download it"
    where = f"the volume folder {folder}/ (ComfyUI folder {kind})"
    details = [{"field": field, "file": name, "folder": f"{folder}/", "comfy_folder": kind}]
    return ModelMissing(f"{field}: the model file {name!r} was not found in {where}; {hint}", details=details)


def check_available(list_models: Listing, files: ModelFiles, job: JobInput) -> None:
    """Refuse the job, naming file and folder, when the listing lacks a model the graph must load."""
    listing = functools.cache(list_models)  # each folder asked once
    for field, kind, name, mine in wanted(files, job):
        if (available := listing(kind)) is not None and name not in available:
            raise missing_model(field, kind, name, named_by_job=mine)


def missing_from_validation(err: ComfyValidationError) -> ModelMissing | None:
    """ComfyUI's ``value_not_in_list`` on a loader's file input means a missing model: say so plainly."""
    for detail in err.details:
        kind = roles.LOADER_KINDS.get((str(detail.get("class_type")), str(detail.get("input_name"))))
        if detail.get("type") == "value_not_in_list" and kind is not None:
            name = str(detail.get("received_value") or "?")
            return missing_model(f"node {detail.get('node_id')}", kind, name, named_by_job=False)
    return None
