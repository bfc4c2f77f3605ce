"""The tiny models' volume in the cache: written once by ``make_tiny_models.py`` with ComfyUI's Python.

Keyed on the digest of ComfyUI's source, the maker script and the manifest's default names, so that a change to any of
them makes a new volume; built in a temporary folder and renamed, under a lock, like the environment.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from worker.models import roles
from worker.models.manifest import default_names
from worker.models.volume import FOLDER_KINDS, target_path
from worker.schema import MAX_LORA_PAIRS

from .comfy_env import REPO, ComfyEnv, SetupError, build_once, cache_dir

MAKER = Path(__file__).with_name("make_tiny_models.py")
MANIFEST = REPO / "src" / "worker" / "models" / "manifest.json"


def ensure_volume(env: ComfyEnv) -> Path:
    maker = hashlib.sha256(MAKER.read_bytes()).hexdigest()
    names = default_names()
    key: dict[str, object] = {
        "source_digest": env.source_digest,
        "maker_sha256": maker,
        "defaults": names,
        "folders": FOLDER_KINDS,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    final = cache_dir() / f"volume-{env.pins.comfyui_version}-{digest}"

    def build(work: Path) -> None:
        manifest = work / "manifest.json"
        manifest.write_text(MANIFEST.read_text(encoding="utf-8"), encoding="utf-8")
        log = work / "make_tiny_models.log"
        with open(log, "wb") as out:
            done = subprocess.run(
                [
                    str(env.python),
                    str(MAKER),
                    "--comfyui",
                    str(env.source),
                    "--manifest",
                    str(manifest),
                    "--volume",
                    str(work),
                    "--folders",
                    json.dumps(FOLDER_KINDS),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=1200,
                check=False,
            )
        if done.returncode != 0:
            tail = log.read_text(errors="replace")[-3000:]
            raise SetupError(f"making the tiny models failed (exit {done.returncode}):\n{tail}")

    return build_once(final, key, build, what="the tiny models")


def tiny_manifest(volume: Path, into: Path) -> Path:
    """The packaged manifest with the sizes of the tiny files, for ``MODELS_MANIFEST``: the start check compares
    the volume's default models with it (by size), as it compares the real ones with the packaged manifest."""
    data = json.loads(MANIFEST.read_text(encoding="utf-8"))
    for entry in data["files"]:
        if (path := target_path(volume, entry["kind"], entry["name"])).is_file():
            entry["size"] = path.stat().st_size
    (manifest := into / "tiny_manifest.json").write_text(json.dumps(data), encoding="utf-8")
    return manifest


def validation_name(role: str) -> str:
    return f"validate_{role}.safetensors"


def validation_lora(index: int, side: str) -> str:
    return f"validate_lora_{index}_{side}.safetensors"


def make_validation_files(volume: Path) -> None:
    """Zero-byte model files, one per model role and LoRA slot, for graphs that are only validated.

    ComfyUI lists a folder's file names for validation and opens a file only when its loader runs: a graph
    that names these validates like a real one, and fails at once in its first loader if it is run. They are
    made on every run from the roles table, so a new role gets its file without rebuilding the volume.
    """
    for role in roles.ROLES:
        folder = volume / FOLDER_KINDS[role.kind]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / validation_name(role.name)).touch()
    loras = volume / FOLDER_KINDS[roles.LORA_KIND]
    for index in range(1, MAX_LORA_PAIRS + 1):
        for side in ("high", "low"):
            (loras / validation_lora(index, side)).touch()
