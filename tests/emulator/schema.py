"""Node definitions and model files: what the emulated ComfyUI knows and has.

The node definitions come from ``tests/fixtures/object_info.json`` (``GET /object_info`` of ComfyUI v0.3.64 for
the node classes a Wan2.2 graph uses). The COMBO lists that name files (models, input images) are filled in at
run time from the emulator's own file lists, as ComfyUI rescans its folders on every request.
"""

from __future__ import annotations

import copy
import json
import mimetypes
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

FIXTURE_PATH = Path(__file__).resolve().parents[1] / "fixtures" / "object_info.json"

# Folder names ComfyUI v0.3.64 answers for GET /models, in its order.
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
    "custom_nodes",
    "hypernetworks",
    "photomaker",
    "classifiers",
    "model_patches",
    "audio_encoders",
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
}


def canonical_folder(name: str) -> str:
    """Map a legacy folder name (``unet``, ``clip``) to the one ComfyUI uses now."""
    return LEGACY_FOLDERS.get(name, name)


def _scan_dir(directory: str) -> list[str]:
    """Model files under ``directory`` (recursively), as paths relative to it with ``/`` separators."""
    found: list[str] = []
    if not os.path.isdir(directory):
        return found
    for root, dirs, files in os.walk(directory, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for fname in files:
            if fname.lower().endswith(MODEL_EXTENSIONS):
                rel = os.path.relpath(os.path.join(root, fname), directory)
                found.append(rel.replace(os.sep, "/"))
    return found


class ModelFiles:
    """The model files the emulated ComfyUI "has": fixed names per folder plus real directories scanned on
    every call (like ComfyUI's model folders and extra_model_paths)."""

    def __init__(
        self,
        models: Mapping[str, Iterable[str]] | None = None,
        model_dirs: Mapping[str, Iterable[str | os.PathLike[str]]] | None = None,
    ) -> None:
        self.models: dict[str, list[str]] = {}
        self.model_dirs: dict[str, list[str]] = {}
        self.set_models(DEFAULT_MODELS if models is None else models)
        self.set_model_dirs(model_dirs or {})

    def set_models(self, models: Mapping[str, Iterable[str]]) -> None:
        out: dict[str, list[str]] = {}
        for folder, names in models.items():
            if isinstance(names, str):
                raise TypeError(f"models[{folder!r}] must be a list of file names")
            out.setdefault(canonical_folder(folder), []).extend(str(n) for n in names)
        self.models = out

    def set_model_dirs(self, model_dirs: Mapping[str, Iterable[str | os.PathLike[str]]]) -> None:
        out: dict[str, list[str]] = {}
        for folder, dirs in model_dirs.items():
            if isinstance(dirs, (str, os.PathLike)):
                dirs = [dirs]
            out.setdefault(canonical_folder(folder), []).extend(os.fspath(d) for d in dirs)
        self.model_dirs = out

    def add_model_dir(self, folder: str, directory: str | os.PathLike[str]) -> None:
        self.model_dirs.setdefault(canonical_folder(folder), []).append(os.fspath(directory))

    def list(self, folder: str) -> list[str]:
        """Sorted file names in ``folder``, as ComfyUI's ``folder_paths.get_filename_list``."""
        folder = canonical_folder(folder)
        names = set(self.models.get(folder, []))
        for directory in self.model_dirs.get(folder, []):
            names.update(_scan_dir(directory))
        return sorted(names)

    def describe(self) -> dict[str, Any]:
        return {"models": copy.deepcopy(self.models), "model_dirs": copy.deepcopy(self.model_dirs)}


def is_image_file(name: str) -> bool:
    ext = os.path.splitext(name)[1].lower().lstrip(".")
    if ext == "webp":
        return True
    guessed = mimetypes.guess_type(name)[0]
    return guessed is not None and guessed.startswith("image/")


def list_input_images(input_dir: str) -> list[str]:
    """Files LoadImage offers: image files directly in the input folder, sorted."""
    try:
        names = [f for f in os.listdir(input_dir) if os.path.isfile(os.path.join(input_dir, f))]
    except FileNotFoundError:
        return []
    return sorted(f for f in names if is_image_file(f))


class NodeSchemas:
    """Node class definitions as ComfyUI's validator and executor see them."""

    def __init__(self, path: Path = FIXTURE_PATH) -> None:
        with open(path, encoding="utf-8") as fh:
            self._info: dict[str, dict[str, Any]] = json.load(fh)

    def __contains__(self, class_type: object) -> bool:
        return isinstance(class_type, str) and class_type in self._info

    def classes(self) -> list[str]:
        return list(self._info)

    def is_v3(self, class_type: str) -> bool:
        # Nodes written against ComfyUI's newer node API always report these keys.
        return "api_node" in self._info[class_type]

    def is_output(self, class_type: str) -> bool:
        return bool(self._info[class_type].get("output_node"))

    def return_types(self, class_type: str) -> Sequence[str]:
        out = self._info[class_type]["output"]
        return list(out) if self.is_v3(class_type) else tuple(out)

    def has_custom_validation(self, class_type: str) -> bool:
        return class_type == "LoadImage"

    def node_info(self, class_type: str, files: Mapping[tuple[str, str], list[str]]) -> dict[str, Any]:
        """``GET /object_info`` entry with file COMBOs replaced by ``files[(class, input)]``."""
        info = copy.deepcopy(self._info[class_type])
        for section in info.get("input", {}).values():
            if not isinstance(section, dict):
                continue
            for name, spec in section.items():
                key = (class_type, name)
                if key in files and isinstance(spec, list) and spec and isinstance(spec[0], list):
                    spec[0] = list(files[key])
        return info

    def input_types(
        self, class_type: str, files: Mapping[tuple[str, str], list[str]]
    ) -> dict[str, dict[str, tuple[Any, dict[str, Any]]]]:
        """``INPUT_TYPES()`` as the validator sees it: category -> name -> (type, extra info).

        V1 COMBOs have a list as type; V3 COMBOs have ``"COMBO"`` (and ComfyUI does not check their value).
        """
        info = self.node_info(class_type, files)
        out: dict[str, dict[str, tuple[Any, dict[str, Any]]]] = {}
        for category, section in info.get("input", {}).items():
            if category == "hidden" or not isinstance(section, dict):
                continue
            entries: dict[str, tuple[Any, dict[str, Any]]] = {}
            order = info.get("input_order", {}).get(category, list(section))
            for name in order:
                spec = section[name]
                extra = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                entries[name] = (spec[0], extra)
            out[category] = entries
        return out
