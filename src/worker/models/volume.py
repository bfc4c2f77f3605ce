"""The model folders on the network volume: layout, presence and verification records.

Layout under the volume root, kept from the seed worker: ``models/`` (diffusion models), ``loras/``,
``text_encoders/``, ``vae/``, ``clip_vision/``, and ``frame_interpolation/`` (FILM and RIFE models). ComfyUI's
standard ``models/<kind>/`` layout is searched too.

Beside a model file live small hidden files that ComfyUI never lists (their extensions are not model ones):
``.<name>.verified`` (the sha256 of the file, valid while its size and mtime are unchanged), ``.<name>.lock``
(the download lock), ``.<name>.<id>.part`` (a download in progress) and ``.<name>.<id>.part.json`` (its resume
state). A small URL -> file name index lives under ``.wan-worker/url-index/`` at the volume root.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

FOLDER_KINDS: dict[str, str] = {
    "diffusion_models": "models",
    "loras": "loras",
    "text_encoders": "text_encoders",
    "vae": "vae",
    "clip_vision": "clip_vision",
    "frame_interpolation": "frame_interpolation",
}
"""Model kind (ComfyUI's folder name) -> the volume subfolder the worker downloads into."""

STANDARD_ROOT = "models"
"""ComfyUI's own layout, ``models/<kind>/``, searched after the seed layout."""

LEGACY_KINDS: dict[str, str] = {"diffusion_models": "unet", "text_encoders": "clip"}
"""Older names of ComfyUI's folders, still searched (``models/unet/``, ``models/clip/``)."""

INDEX_DIR = ".wan-worker/url-index"
HASH_BLOCK = 1 << 20


class State(StrEnum):
    """What the volume holds under a file name, as far as a stat (and a verification record) tells."""

    VERIFIED = "verified"
    UNVERIFIED = "unverified"
    CORRUPT = "corrupt"
    WRONG_SIZE = "wrong size"
    MISSING = "missing"

    @property
    def usable(self) -> bool:
        """True when the file may be given to ComfyUI: its size matches and no check found it corrupt."""
        return self in (State.VERIFIED, State.UNVERIFIED)


@dataclass(frozen=True)
class Record:
    """The result of hashing a file, valid while the file keeps this size and mtime."""

    size: int
    mtime_ns: int
    sha256: str
    checked_at: float


@dataclass(frozen=True)
class FileStatus:
    path: Path
    state: State
    size: int | None
    record: Record | None


def check_kind(kind: str) -> str:
    if kind not in FOLDER_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; known kinds: {', '.join(FOLDER_KINDS)}")
    return kind


def download_dir(root: Path, kind: str) -> Path:
    """The folder new files of ``kind`` are downloaded into (the seed layout)."""
    return root / FOLDER_KINDS[check_kind(kind)]


def search_dirs(root: Path, kind: str) -> list[Path]:
    """Folders searched for a file of ``kind``: the seed layout first, then ``models/<kind>/`` (and the legacy
    ``models/unet/`` or ``models/clip/``), as in ``extra_model_paths.yaml``."""
    dirs = [download_dir(root, kind), root / STANDARD_ROOT / kind]
    if kind in LEGACY_KINDS:
        dirs.append(root / STANDARD_ROOT / LEGACY_KINDS[kind])
    return dirs


def locate(root: Path, kind: str, name: str) -> Path | None:
    """The first regular file called ``name`` in the folders of ``kind``, or None."""
    for folder in search_dirs(root, kind):
        path = folder / name
        if path.is_file():
            return path
    return None


def target_path(root: Path, kind: str, name: str) -> Path:
    """Where a file of ``kind`` called ``name`` is (re)written: where it already is, else the seed folder."""
    return locate(root, kind, name) or download_dir(root, kind) / name


# -- hidden files beside a model ---------------------------------------------------------------------------


def record_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.verified")


def lock_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock")


def new_part_path(path: Path) -> Path:
    """A temporary name unique to this writer, in the same folder, that can never be taken for a model."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")


def part_paths(path: Path) -> list[Path]:
    """Temporary files left by writers of ``path`` (finished, dead or still running)."""
    if not path.parent.is_dir():
        return []
    return sorted(path.parent.glob(f".{path.name}.*.part"))


def state_path(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to a unique temporary file and rename it into place: readers never see half of it."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# -- verification records ----------------------------------------------------------------------------------


def read_record(path: Path, st: os.stat_result | None = None) -> Record | None:
    """The verification record of ``path`` if it still describes the file (same size and mtime)."""
    data = read_json(record_path(path))
    if data is None:
        return None
    try:
        record = Record(
            size=int(data["size"]),
            mtime_ns=int(data["mtime_ns"]),
            sha256=str(data["sha256"]).lower(),
            checked_at=float(data.get("checked_at", 0.0)),
        )
    except (KeyError, TypeError, ValueError):
        return None
    if st is None:
        try:
            st = path.stat()
        except OSError:
            return None
    if record.size != st.st_size or record.mtime_ns != st.st_mtime_ns:
        return None
    return record


def write_record(path: Path, sha256: str) -> Record:
    """Record that ``path``, as it is now, hashes to ``sha256``."""
    st = path.stat()
    record = Record(size=st.st_size, mtime_ns=st.st_mtime_ns, sha256=sha256.lower(), checked_at=time.time())
    write_json_atomic(record_path(path), record.__dict__)
    return record


def file_status(path: Path, size: int | None, sha256: str | None) -> FileStatus:
    """Classify ``path`` with one stat and one small read: never reads the model itself."""
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return FileStatus(path, State.MISSING, None, None)
    if not stat.S_ISREG(st.st_mode):
        return FileStatus(path, State.MISSING, None, None)
    if size is not None and st.st_size != size:
        return FileStatus(path, State.WRONG_SIZE, st.st_size, None)
    record = read_record(path, st)
    if record is None:
        return FileStatus(path, State.UNVERIFIED, st.st_size, None)
    if sha256 is not None and record.sha256 != sha256.lower():
        return FileStatus(path, State.CORRUPT, st.st_size, record)
    return FileStatus(path, State.VERIFIED, st.st_size, record)


def hash_file(
    path: Path,
    *,
    progress: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> str:
    """The sha256 of ``path``, read in large blocks; ``progress(bytes_done)`` is called after each block."""
    digest = hashlib.sha256()
    buffer = memoryview(bytearray(HASH_BLOCK))
    done = 0
    with path.open("rb", buffering=0) as fh:
        while count := fh.readinto(buffer):
            digest.update(buffer[:count])
            done += count
            if progress is not None:
                progress(done)
            if should_stop is not None and should_stop():
                raise InterruptedError(f"hashing {path.name} was stopped")
    return digest.hexdigest()


def verify_file(path: Path, *, progress: Callable[[int], None] | None = None) -> Record:
    """Hash ``path`` and store the result beside it; the record keeps the actual hash, right or wrong."""
    before = path.stat()
    digest = hash_file(path, progress=progress)
    after = path.stat()
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
        raise OSError(f"{path} changed while it was being hashed")
    return write_record(path, digest)


# -- URL -> file name index --------------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexEntry:
    name: str
    size: int
    sha256: str | None


def _index_file(root: Path, kind: str, url: str) -> Path:
    key = hashlib.sha256(f"{kind}\n{url}".encode()).hexdigest()[:40]
    return root / INDEX_DIR / f"{key}.json"


def read_index(root: Path, kind: str, url: str) -> IndexEntry | None:
    """What an earlier download of ``url`` was saved as, if anything."""
    data = read_json(_index_file(root, kind, url))
    if data is None:
        return None
    try:
        sha = data.get("sha256")
        return IndexEntry(name=str(data["name"]), size=int(data["size"]), sha256=str(sha) if sha else None)
    except (KeyError, TypeError, ValueError):
        return None


def write_index(root: Path, kind: str, url: str, entry: IndexEntry, *, display_url: str) -> None:
    """Remember that ``url`` was saved as ``entry.name``; only the redacted ``display_url`` is stored."""
    path = _index_file(root, kind, url)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        path,
        {"url": display_url, "kind": kind, "name": entry.name, "size": entry.size, "sha256": entry.sha256},
    )
