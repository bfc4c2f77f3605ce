"""extra_model_paths.yaml: valid for ComfyUI, and searching the same volume folders as the worker."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from worker.models.volume import FOLDER_KINDS, search_dirs

from .harness import REPO, comfyui_source_text

pytestmark = pytest.mark.timeout(30)

PATHS_FILE = REPO / "extra_model_paths.yaml"

# The legacy folder names ComfyUI maps (folder_paths.map_legacy): clip -> text_encoders, unet -> diffusion_models.
LEGACY = {"clip": "text_encoders", "unet": "diffusion_models"}
SECTION_KEYS = {"base_path", "is_default"}


def comfy_folder_kinds() -> set[str]:
    """The folder kinds of the shipped ComfyUI (folder_paths.folder_names_and_paths), plus the legacy names."""
    source = comfyui_source_text("folder_paths.py")
    kinds = set(re.findall(r'^folder_names_and_paths\["([a-z0-9_]+)"\]', source, re.MULTILINE))
    assert {"diffusion_models", "loras", "text_encoders", "vae", "clip_vision"} <= kinds, kinds
    assert re.search(r'"unet": "diffusion_models",\s*"clip": "text_encoders"', source), (
        "the legacy names changed"
    )
    return kinds | set(LEGACY)


def load() -> dict[str, dict[str, object]]:
    data = yaml.safe_load(PATHS_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict) and data, "a mapping of sections"
    return data


def comfy_search_paths(volume_root: str) -> dict[str, list[str]]:
    """The folders ComfyUI adds for each kind, by the rules of its utils/extra_config.py."""
    found: dict[str, list[str]] = {}
    saved = os.environ.get("VOLUME_ROOT")
    os.environ["VOLUME_ROOT"] = volume_root
    try:
        for conf in load().values():
            conf = dict(conf)
            base = conf.pop("base_path", None)
            if base:
                base = os.path.expandvars(os.path.expanduser(str(base)))
                if not os.path.isabs(base):
                    base = os.path.abspath(os.path.join(PATHS_FILE.parent, base))
            conf.pop("is_default", None)
            for kind, value in conf.items():
                for line in str(value).split("\n"):
                    if line:
                        full = os.path.join(base, line) if base else line
                        found.setdefault(LEGACY.get(kind, kind), []).append(os.path.normpath(full))
    finally:
        if saved is None:
            os.environ.pop("VOLUME_ROOT", None)
        else:
            os.environ["VOLUME_ROOT"] = saved
    return found


def test_parses_and_names_only_comfyui_folder_kinds() -> None:
    comfy_kinds = comfy_folder_kinds()
    for name, section in load().items():
        assert isinstance(section, dict), name
        keys = set(section) - SECTION_KEYS
        assert keys, f"{name} names no folder"
        assert keys <= comfy_kinds, f"{name}: not ComfyUI folder kinds: {sorted(keys - comfy_kinds)}"
        assert "custom_nodes" not in keys, "no custom nodes"
        for kind in keys:
            assert isinstance(section[kind], str) and section[kind].strip(), f"{name}.{kind}"


def test_comfyui_searches_every_folder_the_worker_downloads_to_or_searches() -> None:
    root = "/runpod-volume"
    paths = comfy_search_paths(root)
    for kind in FOLDER_KINDS:
        wanted = [os.path.normpath(str(d)) for d in search_dirs(Path(root), kind)]
        assert wanted == [p for p in paths.get(kind, []) if p in wanted], f"{kind}: {paths.get(kind)}"
        assert set(wanted) <= set(paths[kind]), kind
