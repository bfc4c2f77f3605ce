"""The default model files, as data: name, kind (volume folder), URL, size and sha256.

The list ships in the package as ``manifest.json``. ``MODELS_MANIFEST=/path/to.json`` (read by the CLI only)
replaces it with a file of the same shape, e.g. to point the defaults at a mirror or, in tests, a local server.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .volume import FOLDER_KINDS

MANIFEST_ENV = "MODELS_MANIFEST"
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ManifestError(ValueError):
    """The manifest file is not valid."""


@dataclass(frozen=True)
class ManifestEntry:
    """One default file. ``role`` says what the job uses it for (``high_model``, ``lightning_low`` ...)."""

    role: str
    name: str
    kind: str
    url: str
    size: int
    sha256: str

    @property
    def folder(self) -> str:
        """The volume subfolder, e.g. ``models`` for diffusion models."""
        return FOLDER_KINDS[self.kind]


Manifest = tuple[ManifestEntry, ...]


def _entry(item: Any, index: int) -> ManifestEntry:
    where = f"files[{index}]"
    if not isinstance(item, Mapping):
        raise ManifestError(f"{where} must be an object")
    try:
        entry = ManifestEntry(
            role=str(item["role"]),
            name=str(item["name"]),
            kind=str(item["kind"]),
            url=str(item["url"]),
            size=int(item["size"]),
            sha256=str(item["sha256"]).lower(),
        )
    except KeyError as exc:
        raise ManifestError(f"{where} has no {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise ManifestError(f"{where}: {exc}") from None
    if entry.kind not in FOLDER_KINDS:
        raise ManifestError(f"{where}: kind must be one of {', '.join(FOLDER_KINDS)}, not {entry.kind!r}")
    if entry.size <= 0:
        raise ManifestError(f"{where}: size must be positive")
    if not _SHA256.fullmatch(entry.sha256):
        raise ManifestError(f"{where}: sha256 must be 64 hexadecimal digits")
    if "/" in entry.name or "\\" in entry.name or entry.name.startswith("."):
        raise ManifestError(f"{where}: name must be a plain file name")
    return entry


def parse_manifest(data: Any) -> Manifest:
    """Validate the JSON form ``{"version": 1, "files": [...]}``."""
    if not isinstance(data, Mapping) or not isinstance(data.get("files"), list):
        raise ManifestError('a manifest is an object with a "files" list')
    entries = tuple(_entry(item, i) for i, item in enumerate(data["files"]))
    names = [(e.kind, e.name) for e in entries]
    if len(set(names)) != len(names):
        raise ManifestError("a manifest lists a file twice")
    return entries


def load_manifest(path: Path | None = None) -> Manifest:
    """The manifest at ``path``, or the packaged one."""
    try:
        if path is None:
            text = resources.files(__package__).joinpath("manifest.json").read_text(encoding="utf-8")
        else:
            text = path.read_text(encoding="utf-8")
        data = json.loads(text)
    except OSError as exc:
        raise ManifestError(f"cannot read the manifest {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ManifestError(f"the manifest {path or 'manifest.json'} is not valid JSON: {exc}") from None
    return parse_manifest(data)


def manifest_from_env(env: Mapping[str, str]) -> Manifest:
    """The manifest named by ``MODELS_MANIFEST``, or the packaged one."""
    raw = env.get(MANIFEST_ENV, "").strip()
    return load_manifest(Path(raw) if raw else None)


def default_names(manifest: Manifest | None = None) -> dict[str, str]:
    """Role -> default file name, e.g. ``{"high_model": "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors"}``."""
    return {e.role: e.name for e in manifest or load_manifest()}


def find_by_name(manifest: Manifest, kind: str, name: str) -> ManifestEntry | None:
    return next((e for e in manifest if e.kind == kind and e.name == name), None)


def find_by_url(manifest: Manifest, kind: str, url: str) -> ManifestEntry | None:
    return next((e for e in manifest if e.kind == kind and e.url == url), None)
