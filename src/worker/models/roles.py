"""The model slots of a Wan2.2 graph, declared once: the job contract (``<role>`` and ``<role>_url`` fields), the
graph binder, the downloads, the availability check and the reading of ComfyUI's errors all read this table.
Adding a slot is one entry here plus its node in the templates. LoRA pairs are a list, not a slot. This module
imports nothing of the worker, so that any layer may read it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelRole:
    """One model file a graph loads: ``name`` is the role, the id of its loader node and the job field naming it;
    ``kind`` is ComfyUI's model folder; ``loader`` and ``input``, the node class and input that take the file;
    ``title`` says what it is. ``job_field``: a job may name the file or give a URL for it; ``default``: the
    manifest has a default file for it; ``when``: the job's boolean attribute that must be true for the graph to
    load it; ``in_template``: its loader is in the templates (otherwise the binder adds the nodes that use it)."""

    name: str
    kind: str
    loader: str
    input: str
    title: str
    job_field: bool = True
    default: bool = True
    when: str | None = None
    in_template: bool = True

    def used_by(self, job: object, named: bool) -> bool:
        """Whether the graph of ``job`` loads this model (``named``: the job names a file for it)."""
        return (self.when is None or bool(getattr(job, self.when))) and (self.default or named)


# fmt: off
ROLES: tuple[ModelRole, ...] = (
    ModelRole("high_model", "diffusion_models", "UNETLoader", "unet_name", "the high-noise expert"),
    ModelRole("low_model", "diffusion_models", "UNETLoader", "unet_name", "the low-noise expert"),
    ModelRole("text_encoder", "text_encoders", "CLIPLoader", "clip_name", "the UMT5-XXL text encoder"),
    ModelRole("vae", "vae", "VAELoader", "vae_name", "the Wan 2.1 VAE"),
    ModelRole("clip_vision", "clip_vision", "CLIPVisionLoader", "clip_name",
              "a CLIP vision model whose image embedding conditions the video", default=False, in_template=False),
    ModelRole("interpolation_model", "frame_interpolation", "FrameInterpolationModelLoader", "model_name",
              "the frame interpolation model (FILM or RIFE)", when="interpolates", in_template=False),
    ModelRole("lightning_high", "loras", "LoraLoaderModelOnly", "lora_name",
              "the lightx2v 4-step LoRA of the high-noise expert", job_field=False, when="lightning"),
    ModelRole("lightning_low", "loras", "LoraLoaderModelOnly", "lora_name",
              "the lightx2v 4-step LoRA of the low-noise expert", job_field=False, when="lightning"),
)
# fmt: on

BY_NAME: dict[str, ModelRole] = {role.name: role for role in ROLES}
JOB_ROLES: tuple[ModelRole, ...] = tuple(role for role in ROLES if role.job_field)
LORA_KIND, LORA_LOADER = "loras", ("LoraLoaderModelOnly", "lora_name")
LOADER_KINDS = {**{(role.loader, role.input): role.kind for role in ROLES}, LORA_LOADER: LORA_KIND}
"""(loader class, input) -> model folder, for reading ComfyUI's errors about a missing file."""
