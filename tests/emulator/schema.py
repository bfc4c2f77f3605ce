"""What the emulated ComfyUI knows and has: node classes (from a record of the real server) and model files.

``tests/fixtures/object_info.json`` is ComfyUI v0.33.0's ``GET /object_info`` for the node classes the emulator
runs (the Wan2.2 graphs' classes, context windows and frame interpolation). The COMBO lists that name files
(models, input images) are filled in at run time from the emulator's own file lists, as ComfyUI rescans its
folders on every request.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

FIXTURE_PATH = Path(__file__).resolve().parents[1] / "fixtures" / "object_info.json"

# Folder names ComfyUI v0.33.0 answers for GET /models, in its order (trace http_misc).
MODEL_FOLDERS: tuple[str, ...] = (
    "checkpoints",
    "configs",
    "loras",
    "vae",
    "text_encoders",
    "diffusion_models",
    "clip_vision",
    "style_models",
    "embeddings",
    "diffusers",
    "vae_approx",
    "controlnet",
    "gligen",
    "upscale_models",
    "latent_upscale_models",
    "custom_nodes",
    "datasets",
    "hypernetworks",
    "photomaker",
    "classifiers",
    "model_patches",
    "audio_encoders",
    "background_removal",
    "frame_interpolation",
    "geometry_estimation",
    "optical_flow",
    "detection",
)
LEGACY_FOLDERS = {"unet": "diffusion_models", "clip": "text_encoders"}
"""Old folder names ComfyUI still accepts in extra_model_paths.yaml (not as GET /models/{folder})."""
MODEL_EXTENSIONS = (".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft")

DEFAULT_MODELS: dict[str, list[str]] = {
    "diffusion_models": [
        "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors",
        "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors",
    ],
    "text_encoders": ["umt5_xxl_fp8_e4m3fn_scaled.safetensors"],
    "vae": ["wan_2.1_vae.safetensors"],
    "loras": [
        "wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors",
        "wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors",
    ],
}

# (class, input) -> model folder whose file list fills that COMBO.
MODEL_COMBOS: dict[tuple[str, str], str] = {
    ("UNETLoader", "unet_name"): "diffusion_models",
    ("CLIPLoader", "clip_name"): "text_encoders",
    ("VAELoader", "vae_name"): "vae",
    ("LoraLoaderModelOnly", "lora_name"): "loras",
    ("CLIPVisionLoader", "clip_name"): "clip_vision",
    ("FrameInterpolationModelLoader", "model_name"): "frame_interpolation",
}
DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"

Files = Mapping[tuple[str, str], list[str]]
"""(class, input) -> the file names that input's COMBO offers right now."""


def canonical_folder(name: str) -> str:
    return LEGACY_FOLDERS.get(name, name)


class ModelFiles:
    """The model files the emulated ComfyUI "has": fixed names per folder, plus directories scanned
    (recursively) on every call, like ComfyUI's model folders and extra_model_paths."""

    def __init__(
        self,
        models: Mapping[str, Iterable[str]] | None = None,
        model_dirs: Mapping[str, Iterable[str | os.PathLike[str]] | str | os.PathLike[str]] | None = None,
    ) -> None:
        self.models: dict[str, list[str]] = {}
        self.model_dirs: dict[str, list[str]] = {}
        self.set(DEFAULT_MODELS if models is None else models, model_dirs or {})

    def set(
        self,
        models: Mapping[str, Iterable[str]] | None = None,
        model_dirs: Mapping[str, Iterable[str | os.PathLike[str]] | str | os.PathLike[str]] | None = None,
    ) -> None:
        if models is not None:
            self.models = {}
            for folder, names in models.items():
                self.models.setdefault(canonical_folder(folder), []).extend(map(str, names))
        if model_dirs is not None:
            self.model_dirs = {}
            for folder, dirs in model_dirs.items():
                dirs = [dirs] if isinstance(dirs, (str, os.PathLike)) else dirs
                self.model_dirs.setdefault(canonical_folder(folder), []).extend(os.fspath(d) for d in dirs)

    def list(self, folder: str) -> list[str]:
        """Sorted file names in ``folder`` (paths relative to a scanned directory use ``/``)."""
        folder = canonical_folder(folder)
        names = set(self.models.get(folder, []))
        for directory in self.model_dirs.get(folder, []):
            for root, dirs, files in os.walk(directory, followlinks=True):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                rel = os.path.relpath(root, directory)
                names.update(
                    f if rel == "." else f"{rel}/{f}".replace(os.sep, "/")
                    for f in files
                    if f.lower().endswith(MODEL_EXTENSIONS)
                )
        return sorted(names)

    def describe(self) -> dict[str, Any]:
        return {"models": self.models, "model_dirs": self.model_dirs}


InputSpec = tuple[Any, dict[str, Any], bool]
"""An input's type (a list of options for an old-style COMBO), its extra info, and whether it is required."""


class Definitions:
    """The node classes, as ``GET /object_info`` describes them."""

    def __init__(self, path: Path = FIXTURE_PATH) -> None:
        with open(path, encoding="utf-8") as fh:
            self.info: dict[str, dict[str, Any]] = json.load(fh)

    def __contains__(self, class_type: object) -> bool:
        return isinstance(class_type, str) and class_type in self.info

    def is_output(self, class_type: str) -> bool:
        return bool(self.info[class_type].get("output_node"))

    def outputs(self, class_type: str) -> list[str]:
        return list(self.info[class_type]["output"])

    def inputs(self, class_type: str, files: Files) -> dict[str, InputSpec]:
        """The inputs a prompt gives this class, file COMBOs filled from ``files``. Hidden inputs are left out,
        and so are dynamic combos (SaveVideo's ``codec``): their values pass unchecked."""
        out: dict[str, InputSpec] = {}
        for category in ("required", "optional"):
            for name, spec in (self.info[class_type]["input"].get(category) or {}).items():
                kind, extra = spec[0], dict(spec[1]) if len(spec) > 1 else {}
                if kind == DYNAMIC_COMBO:
                    continue
                if (class_type, name) in files:
                    if kind == "COMBO":
                        extra["options"] = files[(class_type, name)]
                    else:
                        kind = files[(class_type, name)]
                out[name] = (kind, extra, category == "required")
        return out
