"""The real ComfyUI's source and Python environment, built once per machine in a cache outside the checkout.

- The source is ``ComfyUI-<version>.tar.gz`` from the shared folder (``<repo>/../shared/comfyui/``, or
  ``$WAN_WORKER_SHARED/comfyui/``).
- The versions come from the Dockerfile, the one place they are written: ``ARG COMFYUI_VERSION``,
  ``ARG COMFYUI_COMMIT``, ``ARG TORCH_VERSION``, ``ARG TORCHVISION_VERSION``.
- The cache is ``~/.cache/wan-worker-tests/`` (or ``$WAN_WORKER_TEST_CACHE``). An entry is keyed on the
  tarball's sha256 and the torch pins; it is built in a temporary folder beside it and renamed into place, and
  its marker file is written last, so a half-built environment is never used. A file lock makes concurrent
  builders (several test runs, several pytest-xdist processes) wait for the first one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
MARKER = ".complete.json"
PIN_ARGS = ("COMFYUI_VERSION", "COMFYUI_COMMIT", "TORCH_VERSION", "TORCHVISION_VERSION")
OPTIONAL_PIN_ARGS = ("TORCHAUDIO_VERSION",)
TORCH_PACKAGES = ("torch", "torchvision", "torchaudio")
"""Left out of ComfyUI's requirements: they are installed first, torch and torchvision pinned. ComfyUI v0.33.0
does not start without torchaudio (``comfy/sd.py`` imports ``comfy.ldm.lightricks.vae.audio_vae``, which
imports it), so it is installed too: at the Dockerfile's ``ARG TORCHAUDIO_VERSION`` when there is one, else the
newest release that accepts the pinned torch (torchaudio 2.11 and later take any torch from 2.11 on)."""


class SetupError(RuntimeError):
    """The real ComfyUI could not be prepared; the message says which step failed and why."""


@dataclass(frozen=True)
class Pins:
    comfyui_version: str
    comfyui_commit: str
    torch: str
    torchvision: str
    torchaudio: str | None = None

    def torch_requirements(self) -> list[str]:
        audio = f"torchaudio=={self.torchaudio}" if self.torchaudio else "torchaudio"
        return [f"torch=={self.torch}", f"torchvision=={self.torchvision}", audio]


@dataclass(frozen=True)
class ComfyEnv:
    """A built environment: ComfyUI's source folder and the Python that runs it."""

    root: Path
    source: Path
    python: Path
    pins: Pins
    tarball_sha256: str


def shared_dir() -> Path:
    """The shared folder's ``comfyui/`` part: the ComfyUI tarball and the records made from it."""
    base = os.environ.get("WAN_WORKER_SHARED")
    return (Path(base) if base else REPO.parent / "shared") / "comfyui"


def cache_dir() -> Path:
    base = os.environ.get("WAN_WORKER_TEST_CACHE")
    return Path(base) if base else Path.home() / ".cache" / "wan-worker-tests"


def read_pins(dockerfile_text: str) -> dict[str, str]:
    """The ``ARG NAME=value`` defaults of the pinned versions that the Dockerfile declares."""
    found: dict[str, str] = {}
    for name in (*PIN_ARGS, *OPTIONAL_PIN_ARGS):
        match = re.search(rf"^\s*ARG\s+{name}=(\S+)\s*$", dockerfile_text, flags=re.MULTILINE)
        if match:
            found[name] = match.group(1).strip("\"'")
    return found


def pins_from_dockerfile(path: Path = DOCKERFILE) -> Pins:
    found = read_pins(path.read_text(encoding="utf-8"))
    missing = [name for name in PIN_ARGS if name not in found]
    if missing:
        raise SetupError(
            f"{path} declares no {', '.join('ARG ' + m for m in missing)}: the real-ComfyUI tests take the "
            "ComfyUI and torch versions from the Dockerfile"
        )
    return Pins(
        comfyui_version=found["COMFYUI_VERSION"],
        comfyui_commit=found["COMFYUI_COMMIT"],
        torch=found["TORCH_VERSION"],
        torchvision=found["TORCHVISION_VERSION"],
        torchaudio=found.get("TORCHAUDIO_VERSION"),
    )


def tarball_for(pins: Pins) -> Path:
    path = shared_dir() / f"ComfyUI-{pins.comfyui_version}.tar.gz"
    if not path.is_file():
        raise SetupError(f"the ComfyUI source {path} is missing (set WAN_WORKER_SHARED to the shared folder)")
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tarball_version(tarball: Path) -> str:
    """``__version__`` of the tarball's ``comfyui_version.py``."""
    with tarfile.open(tarball) as archive:
        for member in archive.getmembers():
            if member.name.endswith("/comfyui_version.py") and member.name.count("/") == 1:
                handle = archive.extractfile(member)
                if handle is None:
                    break
                match = re.search(r"__version__\s*=\s*['\"]([^'\"]+)['\"]", handle.read().decode())
                if match:
                    return match.group(1)
    raise SetupError(f"{tarball} has no comfyui_version.py at its top level")


@contextlib.contextmanager
def file_lock(path: Path, *, timeout_s: float = 3600.0) -> Iterator[None]:
    """An exclusive ``fcntl`` lock on ``path``; waits for other holders (other test runs, other processes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise SetupError(f"waited {timeout_s:.0f} s for the lock {path}") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def read_marker(folder: Path) -> dict[str, object] | None:
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _marker_matches(folder: Path, key: dict[str, object]) -> bool:
    data = read_marker(folder)
    if data is None:
        return False
    data = dict(data)
    data.pop("built_in_s", None)
    return data == key


def ensure_env(pins: Pins | None = None) -> ComfyEnv:
    """The unpacked source and a venv with the pinned torch and ComfyUI's requirements (built if absent)."""
    pins = pins or pins_from_dockerfile()
    tarball = tarball_for(pins)
    digest = sha256_of(tarball)
    key: dict[str, object] = {"tarball_sha256": digest, "torch": pins.torch_requirements()}
    name = f"comfyui-{pins.comfyui_version}-{digest[:12]}-torch{pins.torch}-tv{pins.torchvision}"
    root = cache_dir() / name
    source_name = tarball.name.removesuffix(".tar.gz")

    def build(work: Path) -> None:
        _unpack(tarball, work)
        source = work / source_name
        if not (source / "main.py").is_file():
            raise SetupError(f"{tarball} does not unpack to {source_name}/main.py")
        _make_venv(work / "venv", source, pins)

    built = build_once(root, key, build, what=f"ComfyUI {pins.comfyui_version} with torch {pins.torch}")
    return ComfyEnv(
        root=built,
        source=built / source_name,
        python=built / "venv" / "bin" / "python",
        pins=pins,
        tarball_sha256=digest,
    )


def build_once(final: Path, key: dict[str, object], build: Callable[[Path], None], *, what: str) -> Path:
    """``final``, whose marker holds ``key``; built by ``build(folder)`` under a lock when it is absent or stale.

    The build writes into a temporary folder beside ``final``, renamed into place when it is done (replacing an
    old ``final``); the marker is written last. A failed build leaves nothing behind, and the temporary folders
    of a killed builder are removed by the next one.
    """
    if _marker_matches(final, key):
        return final
    with file_lock(final.parent / f".{final.name}.lock"):
        if _marker_matches(final, key):
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        for stale in final.parent.glob(f".{final.name}.building-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a builder that was killed; we hold the lock
        work = Path(tempfile.mkdtemp(prefix=f".{final.name}.building-", dir=final.parent))
        started = time.monotonic()
        try:
            build(work)
            work.chmod(0o755)
            if final.exists():
                shutil.rmtree(final)
            work.rename(final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        seconds = round(time.monotonic() - started, 1)
        (final / MARKER).write_text(json.dumps({**key, "built_in_s": seconds}) + "\n", encoding="utf-8")
        print(f"[real-comfyui] built {what} in {seconds} s: {final}", file=sys.stderr)
    return final


def _unpack(tarball: Path, into: Path) -> None:
    with tarfile.open(tarball) as archive:
        archive.extractall(into, filter="data")


def _run(command: list[str], *, what: str, log: Path, timeout_s: float) -> None:
    with open(log, "ab") as out:
        out.write(f"$ {' '.join(command)}\n".encode())
        out.flush()
        try:
            done = subprocess.run(
                command, stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired:
            raise SetupError(f"{what} took over {timeout_s:.0f} s; see {log}") from None
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise SetupError(f"{what} failed (exit {done.returncode}); the end of {log}:\n{tail}")


def _make_venv(venv: Path, source: Path, pins: Pins) -> None:
    log = venv.parent / "build.log"
    _run([sys.executable, "-m", "venv", str(venv)], what="creating the venv", log=log, timeout_s=300)
    python = str(venv / "bin" / "python")
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
    _run(
        [*pip, *pins.torch_requirements()],
        what=f"installing {', '.join(pins.torch_requirements())}",
        log=log,
        timeout_s=1800,
    )
    requirements = venv.parent / "requirements-without-torch.txt"
    requirements.write_text(without_torch((source / "requirements.txt").read_text(encoding="utf-8")))
    _run([*pip, "-r", str(requirements)], what="installing ComfyUI's requirements", log=log, timeout_s=1800)


def without_torch(requirements: str) -> str:
    """ComfyUI's requirements.txt without its torch, torchvision and torchaudio lines."""
    kept = []
    for line in requirements.splitlines():
        name = re.split(r"[\s<>=!~;\[]", line.strip(), maxsplit=1)[0].lower()
        if name not in TORCH_PACKAGES:
            kept.append(line)
    return "\n".join(kept) + "\n"
