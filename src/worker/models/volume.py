"""The volume: model folders (the seed worker's layout, then ComfyUI's ``models/<kind>/``), beside each model its
``.<name>.verified`` record (its sha256, while its size and mtime stay) and ``.<name>.lock``; ``.wan-worker/``
(the URL -> file name index, staging folders); RunPod's model cache, ``huggingface-cache/hub/``."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import time
import uuid
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, NamedTuple, get_args

Kind = Literal["diffusion_models", "loras", "text_encoders", "vae", "clip_vision", "frame_interpolation"]
FOLDER_KINDS = {kind: "models" if kind == "diffusion_models" else kind for kind in get_args(Kind)}
LEGACY_KINDS = {"diffusion_models": "unet", "text_encoders": "clip"}
HF_CACHE = "huggingface-cache/hub"
STAGING = ".wan-worker/staging"
STALE_S = 3600.0  # a staging folder nothing was written to for this long belongs to a writer that is gone


class State(StrEnum):  # each value as `models status` and the logs show it
    VERIFIED = "verified"
    UNVERIFIED = "present, not yet hashed"
    CORRUPT = "corrupt (sha256 mismatch)"
    WRONG_SIZE = "wrong size"
    MISSING = "missing"

    @property
    def usable(self) -> bool:  # its size matches and no check found it corrupt
        return self in (State.VERIFIED, State.UNVERIFIED)


class Status(NamedTuple):
    state: State
    size: int | None = None
    sha256: str | None = None  # from a valid verification record


def search_dirs(root: Path, kind: str) -> list[Path]:
    """The folders of ``kind``, in ``extra_model_paths.yaml``'s order."""
    legacy = [root / "models" / LEGACY_KINDS[kind]] if kind in LEGACY_KINDS else []
    return [root / FOLDER_KINDS[kind], root / "models" / kind, *legacy]


def target_path(root: Path, kind: str, name: str) -> Path:
    """Where a file is (re)written: where it already is, else the worker's folder of its kind."""
    found = (d / name for d in search_dirs(root, kind) if (d / name).is_file())
    return next(found, root / FOLDER_KINDS[kind] / name)


def record_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.verified")


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write a file of this writer's own, then rename it into place: no reader sees half of it."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.write_text(json.dumps(data, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_record(path: Path, sha256: str) -> None:
    st = path.stat()
    write_json(record_path(path), {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256})


def file_status(path: Path, size: int | None = None, sha256: str | None = None) -> Status:
    """Classify ``path`` with a stat and its small record: the model itself is never read."""
    try:
        st = path.stat()
    except OSError:
        return Status(State.MISSING)
    if not stat.S_ISREG(st.st_mode) or (size is not None and st.st_size != size):
        return Status(State.WRONG_SIZE if stat.S_ISREG(st.st_mode) else State.MISSING, st.st_size)
    record = read_json(record_path(path))
    if (record.get("size"), record.get("mtime_ns")) != (st.st_size, st.st_mtime_ns):
        return Status(State.UNVERIFIED, st.st_size)
    recorded = str(record.get("sha256"))
    return Status(State.CORRUPT if sha256 not in (None, recorded) else State.VERIFIED, st.st_size, recorded)


def verify_file(path: Path, record: bool = True) -> str:
    """The sha256 of ``path``, recorded beside it (right or wrong) unless the file changed meanwhile."""
    before = path.stat()
    with path.open("rb", buffering=0) as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    if record and (before.st_size, before.st_mtime_ns) == (path.stat().st_size, path.stat().st_mtime_ns):
        write_record(path, digest)
    return digest


def new_staging(root: Path) -> Path:
    """A folder of this writer's own, on the volume but in no folder that ComfyUI lists. Those of writers long
    gone (a killed process leaves its own) are removed."""
    for old in (root / STAGING).glob("*"):
        newest = max((p.stat().st_mtime for p in [old, *old.rglob("*")] if p.exists()), default=0.0)
        if time.time() - newest > STALE_S:
            shutil.rmtree(old, ignore_errors=True)
    (staging := root / STAGING / uuid.uuid4().hex).mkdir(parents=True)
    return staging


def index_path(root: Path, kind: str, url: str) -> Path:
    """Where the name, size and sha256 that an earlier download of ``url`` was saved with are kept."""
    key = hashlib.sha256(f"{kind}\n{url}".encode()).hexdigest()[:40]
    return root / ".wan-worker/url-index" / f"{key}.json"
