"""The model slots of a Wan2.2 graph, declared once: what loads each file, from which folder, and whether a
job may name it.

Everything that deals with a model file reads this table: the job contract (``<role>`` and ``<role>_url``
fields for each job role), the graph binder (which node input gets the file name), the downloads (which
folder a URL goes into), the availability check and the reading of ComfyUI's validation errors. Adding a slot
is one entry here plus its node in the templates. LoRA pairs are a list, not a slot: :data:`LORA_KIND`.

This module imports nothing of the worker, so that any layer may read it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelRole:
    """One model file a graph loads."""

    name: str
    """The role, also the id of the node that loads the file, and the job field that names it."""
    kind: str
    """ComfyUI's model folder (``diffusion_models``, ``loras`` ...)."""
    loader: str
    """The class of the node that loads it."""
    input: str
    """The loader's input that takes the file name."""
    title: str
    """What the file is, for documentation and messages."""
    job_field: bool = True
    """The job may name the file (``<name>``) or give a URL for it (``<name>_url``)."""
    default: bool = True
    """The manifest has a default file for it; without one the file is loaded only when the job names it."""
    when: str | None = None
    """The job's boolean attribute that must be true for the graph to load it (``lightning`` ...)."""
    in_template: bool = True
    """Its loader node is in the templates; otherwise the binder adds the nodes that use it."""

    def used_by(self, job: object, named: bool) -> bool:
        """Whether the graph of ``job`` loads this model (``named``: the job names a file for it)."""
        if self.when is not None and not getattr(job, self.when):
            return False
        return self.default or named


ROLES: tuple[ModelRole, ...] = (
    ModelRole("high_model", "diffusion_models", "UNETLoader", "unet_name", "the high-noise expert"),
    ModelRole("low_model", "diffusion_models", "UNETLoader", "unet_name", "the low-noise expert"),
    ModelRole("text_encoder", "text_encoders", "CLIPLoader", "clip_name", "the UMT5-XXL text encoder"),
    ModelRole("vae", "vae", "VAELoader", "vae_name", "the Wan 2.1 VAE"),
    ModelRole(
        "clip_vision",
        "clip_vision",
        "CLIPVisionLoader",
        "clip_name",
        "a CLIP vision model whose image embedding conditions the video",
        default=False,
        in_template=False,
    ),
    ModelRole(
        "interpolation_model",
        "frame_interpolation",
        "FrameInterpolationModelLoader",
        "model_name",
        "the frame interpolation model (FILM or RIFE)",
        when="interpolates",
        in_template=False,
    ),
    ModelRole(
        "lightning_high",
        "loras",
        "LoraLoaderModelOnly",
        "lora_name",
        "the lightx2v 4-step LoRA of the high-noise expert",
        job_field=False,
        when="lightning",
    ),
    ModelRole(
        "lightning_low",
        "loras",
        "LoraLoaderModelOnly",
        "lora_name",
        "the lightx2v 4-step LoRA of the low-noise expert",
        job_field=False,
        when="lightning",
    ),
)

BY_NAME: dict[str, ModelRole] = {role.name: role for role in ROLES}
JOB_ROLES: tuple[ModelRole, ...] = tuple(role for role in ROLES if role.job_field)

LORA_KIND = "loras"
LORA_LOADER = ("LoraLoaderModelOnly", "lora_name")
"""The node class and input of the LoRA pairs' loaders."""

LOADER_KINDS: dict[tuple[str, str], str] = {
    **{(role.loader, role.input): role.kind for role in ROLES},
    LORA_LOADER: LORA_KIND,
}
"""(loader class, input) -> model folder, for reading ComfyUI's errors about a missing file."""
