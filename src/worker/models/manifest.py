"""The default model files, as data: name, kind (volume folder), URL, size and sha256.

The list ships in the package as ``manifest.json``. ``MODELS_MANIFEST=/path/to.json`` (read by the CLI only)
replaces it with a file of the same shape, e.g. to point the defaults at a mirror or, in tests, a local server.

An entry with ``"fetch": "on_demand"`` (the default is ``"start"``) is not fetched at start but by the first job
whose graph loads it. Such an entry may leave ``size`` and ``sha256`` null (the download then checks what the
server announces) and ``role`` null (an alternative file, not a role's default).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from .volume import FOLDER_KINDS

MANIFEST_ENV = "MODELS_MANIFEST"
_SHA256 = re.compile(r"[0-9a-f]{64}")
FETCH_MODES = ("start", "on_demand")

Fetch = Literal["start", "on_demand"]


class ManifestError(ValueError):
    """The manifest file is not valid."""


@dataclass(frozen=True)
class ManifestEntry:
    """One file. ``role`` says what the job uses it for (``high_model``, ``lightning_low`` ...); None for an
    on-demand alternative that is no role's default. ``size`` and ``sha256`` are None only when on demand."""

    role: str | None
    name: str
    kind: str
    url: str
    size: int | None
    sha256: str | None
    fetch: Fetch = "start"

    @property
    def folder(self) -> str:
        """The volume subfolder, e.g. ``models`` for diffusion models."""
        return FOLDER_KINDS[self.kind]

    @property
    def on_demand(self) -> bool:
        """Fetched by the first job that needs it, not at start."""
        return self.fetch == "on_demand"


Manifest = tuple[ManifestEntry, ...]


def _entry(item: Any, index: int) -> ManifestEntry:
    where = f"files[{index}]"
    if not isinstance(item, Mapping):
        raise ManifestError(f"{where} must be an object")
    fetch = item.get("fetch", "start")
    if fetch not in FETCH_MODES:
        raise ManifestError(f"{where}: fetch must be one of {', '.join(FETCH_MODES)}, not {fetch!r}")
    on_demand = fetch == "on_demand"

    def optional(key: str) -> Any:
        """An on-demand entry may leave ``key`` out or null; any other entry must give it."""
        value = item.get(key) if on_demand else item[key]
        if value is None and not on_demand:
            raise ManifestError(f'{where}: {key} may be null only with "fetch": "on_demand"')
        return value

    try:
        role, size, sha256 = optional("role"), optional("size"), optional("sha256")
        entry = ManifestEntry(
            role=None if role is None else str(role),
            name=str(item["name"]),
            kind=str(item["kind"]),
            url=str(item["url"]),
            size=None if size is None else int(size),
            sha256=None if sha256 is None else str(sha256).lower(),
            fetch=fetch,
        )
    except KeyError as exc:
        raise ManifestError(f"{where} has no {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise ManifestError(f"{where}: {exc}") from None
    if entry.kind not in FOLDER_KINDS:
        raise ManifestError(f"{where}: kind must be one of {', '.join(FOLDER_KINDS)}, not {entry.kind!r}")
    if entry.size is not None and entry.size <= 0:
        raise ManifestError(f"{where}: size must be positive")
    if entry.sha256 is not None and not _SHA256.fullmatch(entry.sha256):
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
    roles = [e.role for e in entries if e.role is not None]
    if len(set(roles)) != len(roles):
        raise ManifestError("a manifest gives a role two default files")
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
    return {e.role: e.name for e in manifest or load_manifest() if e.role is not None}


def at_start(manifest: Manifest) -> Manifest:
    """The entries fetched at start (``python -m worker models ensure``)."""
    return tuple(e for e in manifest if not e.on_demand)


def on_demand_entry(kind: str, name: str, manifest: Manifest | None = None) -> ManifestEntry | None:
    """The on-demand entry for the file ``name`` of ``kind`` (a graph loads ``frame_interpolation/<name>``), or
    None when the manifest fetches no such file on demand. Its ``url`` and ``name`` make the job's
    :class:`~worker.models.ModelRef`, which :func:`~worker.models.ensure_job_models` fetches on first use."""
    entry = find_by_name(manifest if manifest is not None else load_manifest(), kind, name)
    return entry if entry is not None and entry.on_demand else None


def find_by_name(manifest: Manifest, kind: str, name: str) -> ManifestEntry | None:
    return next((e for e in manifest if e.kind == kind and e.name == name), None)


def find_by_url(manifest: Manifest, kind: str, url: str) -> ManifestEntry | None:
    return next((e for e in manifest if e.kind == kind and e.url == url), None)
