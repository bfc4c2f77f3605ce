"""The default model files: ``manifest.json`` in the package, read once (the ``MODELS_MANIFEST`` setting may name
another). A file fetched ``on_demand`` (by the first job that needs it) may leave ``size`` and ``sha256``
null (the sha256 the Hub announces is checked) and ``role`` null (an alternative file, no role's default)."""

from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BeforeValidator, Field

from .volume import Kind


class ManifestError(ValueError):
    """The manifest file is not valid."""


class ManifestEntry(pydantic.BaseModel, frozen=True):
    """One file; ``role`` says what a job uses it for (``high_model``, ``lightning_low`` ...)."""

    role: str | None = None
    name: Annotated[str, Field(pattern=r"^[^./\\][^/\\]*$")]
    kind: Kind
    url: str
    size: pydantic.PositiveInt | None = None
    sha256: Annotated[str, BeforeValidator(str.lower), Field(pattern="^[0-9a-f]{64}$")] | None = None
    fetch: Literal["start", "on_demand"] = "start"

    @pydantic.model_validator(mode="after")
    def _check(self) -> ManifestEntry:
        if not self.on_demand and None in (self.role, self.size, self.sha256):
            raise ValueError('role, size and sha256 may be null only with "fetch": "on_demand"')
        return self

    @property
    def on_demand(self) -> bool:
        return self.fetch == "on_demand"


Manifest = tuple[ManifestEntry, ...]


class _File(pydantic.BaseModel):
    files: list[ManifestEntry]


def parse_manifest(data: Any) -> Manifest:
    """Validate the JSON form ``{"version": 1, "files": [...]}``."""
    try:
        entries = tuple(_File.model_validate(data).files)
    except pydantic.ValidationError as exc:
        problems = (f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ManifestError("; ".join(problems)) from None
    roles = [e.role for e in entries if e.role is not None]
    if len({(e.kind, e.name) for e in entries}) != len(entries) or len(set(roles)) != len(roles):
        raise ManifestError("a manifest lists a file twice, or gives a role two files")
    return entries


@functools.cache
def load_manifest(path: Path | None = None) -> Manifest:
    try:
        packaged = resources.files(__package__).joinpath("manifest.json")
        return parse_manifest(json.loads((path or packaged).read_text("utf-8")))
    except (OSError, ValueError) as exc:
        raise exc if isinstance(exc, ManifestError) else ManifestError(f"cannot read {path}: {exc}") from None


def default_names(manifest: Manifest | None = None) -> dict[str, str]:
    """Role -> default file name, e.g. ``{"vae": "wan_2.1_vae.safetensors"}``."""
    return {e.role: e.name for e in manifest or load_manifest() if e.role is not None}


def find(manifest: Manifest, kind: str, name: str = "", url: str = "") -> ManifestEntry | None:
    return next((e for e in manifest if e.kind == kind and (e.name == name or e.url == url)), None)
