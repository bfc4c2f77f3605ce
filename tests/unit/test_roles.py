"""The model role table and what reads it: one entry per slot, the same everywhere."""

from __future__ import annotations

import pytest

from worker.errors import ModelMissing
from worker.graph import ModelFiles
from worker.models import job as jobmodels
from worker.models import roles
from worker.models.manifest import default_names
from worker.models.volume import FOLDER_KINDS
from worker.schema import parse_job_input

BASE = {"prompt": "p", "image_base64": "eA=="}


def test_every_role_reads_from_a_known_folder_and_has_a_default_unless_optional() -> None:
    defaults = default_names()
    for role in roles.ROLES:
        assert role.kind in FOLDER_KINDS, role
        assert (role.name in defaults) == role.default, role
    assert roles.LORA_KIND in FOLDER_KINDS


def test_loader_inputs_map_back_to_their_folders() -> None:
    assert roles.LOADER_KINDS[("UNETLoader", "unet_name")] == "diffusion_models"
    assert roles.LOADER_KINDS[("FrameInterpolationModelLoader", "model_name")] == "frame_interpolation"
    assert roles.LOADER_KINDS[roles.LORA_LOADER] == "loras"


def files_for(job_fields: dict[str, object]) -> tuple[ModelFiles, object]:
    job = parse_job_input({**BASE, **job_fields})
    names = {
        role.name: (job.model_name(role.name) if role.job_field else None) or default_names().get(role.name)
        for role in roles.ROLES
    }
    return ModelFiles(**names), job


def test_availability_hint_depends_on_who_named_the_file() -> None:
    files, job = files_for({"vae": "mine.safetensors"})
    listing = {"vae": []}
    with pytest.raises(ModelMissing) as named:
        jobmodels.check_available(lambda kind: listing.get(kind), files, job)  # type: ignore[arg-type]
    assert "give vae_url to download it" in named.value.message
    files, job = files_for({})
    with pytest.raises(ModelMissing) as default:
        jobmodels.check_available(lambda kind: listing.get(kind), files, job)  # type: ignore[arg-type]
    assert "models ensure" in default.value.message and "vae_url" not in default.value.message


def test_only_the_models_a_graph_loads_are_wanted() -> None:
    files, job = files_for({"lightning": False})
    kinds = {field for field, _kind, _name, _mine in jobmodels.wanted(files, job)}  # type: ignore[arg-type]
    assert kinds == {"high_model", "low_model", "text_encoder", "vae"}
    files, job = files_for({"interpolate": 2, "clip_vision": "cv.safetensors"})
    kinds = {field for field, _kind, _name, _mine in jobmodels.wanted(files, job)}  # type: ignore[arg-type]
    assert {"lightning", "clip_vision"} <= kinds
    assert ("interpolation_model" in kinds) == ("interpolation_model" in default_names())
