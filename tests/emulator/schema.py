"""Node definitions and model files: what the emulated ComfyUI knows and has.

The node definitions come from ``tests/fixtures/object_info.json`` (ComfyUI v0.33.0's ``GET /object_info`` for
the node classes a Wan2.2 graph uses, as recorded in ``shared/comfyui/v0.33.0/object_info_wan.json``). The COMBO
lists that name files (models, input images) are filled in at run time from the emulator's own file lists, as
ComfyUI rescans its folders on every request.

Nodes written against ComfyUI's newer node API ("V3", recognisable by their ``api_node`` key) may have dynamic
inputs: a ``COMFY_DYNAMICCOMBO_V3`` input offers options, each with inputs of its own. In an API-format prompt
the nested values sit beside the combo under dotted names, e.g. SaveVideo's
``{"codec": "h264", "codec.encoding": "re-encode", "codec.encoding.crf": 18}``; only the inputs of the chosen
options exist for validation, and the node receives them nested:
``codec={"codec": "h264", "encoding": {"encoding": "re-encode", "crf": 18.0}}``.
"""

from __future__ import annotations

import copy
import json
import mimetypes
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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

DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"

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


InputSpec = tuple[Any, dict[str, Any]]


@dataclass
class ClassInputs:
    """A node's inputs as the validator and executor see them for one prompt: ``name -> (type, extra info)``.

    For V3 nodes the dynamic inputs are expanded against the prompt's values (ComfyUI's
    ``get_finalized_class_inputs``): the nested inputs of the chosen options appear under dotted names, and
    ``dynamic_paths`` maps each of them (and each combo) to where its value goes in the nested argument.
    """

    required: dict[str, InputSpec] = field(default_factory=dict)
    optional: dict[str, InputSpec] = field(default_factory=dict)
    dynamic_paths: dict[str, str] = field(default_factory=dict)

    def names(self) -> list[str]:
        return list(self.required) + [n for n in self.optional if n not in self.required]

    def __contains__(self, name: object) -> bool:
        return name in self.required or name in self.optional

    def category(self, name: str) -> str:
        return "required" if name in self.required else "optional"

    def spec(self, name: str) -> InputSpec:
        return self.required[name] if name in self.required else self.optional[name]


def _as_spec(value: Sequence[Any]) -> InputSpec:
    extra = value[1] if len(value) > 1 and isinstance(value[1], dict) else {}
    return value[0], extra


def _parse_inputs(
    out: ClassInputs, live: Mapping[str, Any], sections: Mapping[str, Any], prefix: list[str]
) -> None:
    for category in ("required", "optional"):
        section = sections.get(category) or {}
        for name, value in section.items():
            target = out.required if category == "required" else out.optional
            path = [*prefix, name]
            full = ".".join(path)
            if value[0] == DYNAMIC_COMBO:
                if full not in live:
                    continue  # an absent or unknown choice leaves the whole combo out, as ComfyUI does
                chosen = next((o for o in value[1].get("options", []) if o.get("key") == live[full]), None)
                if chosen is None:
                    continue
                target[full] = _as_spec(value)
                out.dynamic_paths[full] = ".".join([*path, name])
                _parse_inputs(out, live, chosen.get("inputs", {}), path)
            else:
                target[full] = _as_spec(value)
                if prefix:
                    out.dynamic_paths[full] = full


def build_nested(values: Mapping[str, Any], dynamic_paths: Mapping[str, str]) -> dict[str, Any]:
    """Input values with the dotted dynamic ones folded into nested dicts (ComfyUI's ``build_nested_inputs``)."""
    if not dynamic_paths:
        return dict(values)
    values = dict(values)
    nested: dict[str, Any] = {}
    for key, path in dynamic_paths.items():
        parts = path.split(".")
        current = nested
        for part in parts[:-1]:
            current = current.setdefault(part, {})
        current[parts[-1]] = values.pop(key, None)
    values.update(nested)
    return values


class NodeSchemas:
    """Node class definitions as ComfyUI's validator and executor see them."""

    def __init__(self, path: Path = FIXTURE_PATH, classes: Iterable[str] | None = None) -> None:
        with open(path, encoding="utf-8") as fh:
            info: dict[str, dict[str, Any]] = json.load(fh)
        if classes is not None:
            keep = set(classes)
            info = {name: entry for name, entry in info.items() if name in keep}
        self._info = info

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
                if key not in files or not isinstance(spec, list) or not spec:
                    continue
                if isinstance(spec[0], list):  # old-style COMBO: the options are the type
                    spec[0] = list(files[key])
                elif spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
                    spec[1]["options"] = list(files[key])
        return info

    def class_inputs(
        self,
        class_type: str,
        files: Mapping[tuple[str, str], list[str]],
        live_inputs: Mapping[str, Any] | None = None,
    ) -> ClassInputs:
        """The inputs of ``class_type`` for a node whose prompt values are ``live_inputs`` (hidden ones left out).

        V1 COMBOs have a list as type; V3 COMBOs have ``"COMBO"`` and their options in the extra info.
        """
        info = self.node_info(class_type, files)
        sections = {k: v for k, v in info.get("input", {}).items() if k != "hidden" and isinstance(v, dict)}
        out = ClassInputs()
        if self.is_v3(class_type):
            _parse_inputs(out, live_inputs or {}, sections, [])
            return out
        for category, section in sections.items():
            target = out.required if category == "required" else out.optional
            for name in info.get("input_order", {}).get(category, list(section)):
                target[name] = _as_spec(section[name])
        return out
