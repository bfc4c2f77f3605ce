"""The real ComfyUI's source and Python environment, built once per machine in a cache outside the checkout.

- The versions come from the Dockerfile, the one place they are written: ``ARG COMFYUI_VERSION``,
  ``ARG COMFYUI_COMMIT``, ``ARG COMFYUI_SOURCE_DIGEST``, ``ARG TORCH_VERSION``, ``ARG TORCHVISION_VERSION``.
- The source comes from ``$WAN_WORKER_COMFYUI_URL`` when it is set, else from the shared folder's
  ``ComfyUI-<version>.tar.gz`` (``<repo>/../shared/comfyui/``, or ``$WAN_WORKER_SHARED/comfyui/``) when there
  is one, else from GitHub's archive of the pinned commit. Whichever it is, its files must have the pinned
  digest (:func:`tree_digest`), so that any honest copy passes and nothing else does.
- The cache is ``~/.cache/wan-worker-tests/`` (or ``$WAN_WORKER_TEST_CACHE``): the checked source, keyed on its
  digest, and the environment, keyed on the digest and the torch pins. An entry is built in a temporary folder
  beside it and renamed into place, and its marker file is written last, so a half-built entry is never used. A
  file lock makes concurrent builders (several test runs, several pytest-xdist processes) wait for the first.
- Every failure is a :class:`SetupError` that names its step; none is a skip.
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

import requests

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
MARKER = ".complete.json"
PIN_ARGS = (
    "COMFYUI_VERSION",
    "COMFYUI_COMMIT",
    "COMFYUI_SOURCE_DIGEST",
    "TORCH_VERSION",
    "TORCHVISION_VERSION",
)
OPTIONAL_PIN_ARGS = ("TORCHAUDIO_VERSION",)
TORCH_PACKAGES = ("torch", "torchvision", "torchaudio")
"""Left out of ComfyUI's requirements: they are installed first, torch and torchvision pinned. ComfyUI v0.33.0
does not start without torchaudio (``comfy/sd.py`` imports ``comfy.ldm.lightricks.vae.audio_vae``, which
imports it), so it is installed too: at the Dockerfile's ``ARG TORCHAUDIO_VERSION`` when there is one, else the
newest release that accepts the pinned torch (torchaudio 2.11 and later take any torch from 2.11 on)."""


GITHUB_ARCHIVE = "https://github.com/Comfy-Org/ComfyUI/archive/{commit}.tar.gz"
SOURCE = "ComfyUI"
"""The source folder's name in its cache entry (archives name their top folder each their own way)."""
DIGEST_EXCLUDED = (
    "comfy/text_encoders/llama_tokenizer/tokenizer.json",
    "comfy/text_encoders/qwen35_tokenizer/vocab.json",
)
"""Files the digest leaves out: two tokenizers of other model families (Llama, Qwen 3.5) that GitHub's archive
has and the shared copy lacks. Nothing a Wan graph runs reads them."""


class SetupError(RuntimeError):
    """The real ComfyUI could not be prepared; the message says which step failed and why."""


@dataclass(frozen=True)
class Pins:
    comfyui_version: str
    comfyui_commit: str
    comfyui_source_digest: str
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

    @property
    def source_digest(self) -> str:
        return self.pins.comfyui_source_digest


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
        comfyui_source_digest=found["COMFYUI_SOURCE_DIGEST"],
        torch=found["TORCH_VERSION"],
        torchvision=found["TORCHVISION_VERSION"],
        torchaudio=found.get("TORCHAUDIO_VERSION"),
    )


def source_origin(pins: Pins) -> str:
    """Where the source comes from: ``$WAN_WORKER_COMFYUI_URL``, else the shared copy, else GitHub."""
    url = os.environ.get("WAN_WORKER_COMFYUI_URL", "").strip()
    if url:
        return url
    shared = shared_dir() / f"ComfyUI-{pins.comfyui_version}.tar.gz"
    return str(shared) if shared.is_file() else GITHUB_ARCHIVE.format(commit=pins.comfyui_commit)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_digest(root: Path, excluded: tuple[str, ...] = DIGEST_EXCLUDED) -> str:
    """The sha256 of ``sha256sum``'s lines (``<sha256 of the file>  <path>``) for the regular files under
    ``root``, by their path relative to it, sorted bytewise; folders, symlinks and ``excluded`` do not count.
    Any copy of the same files has the same digest, whatever its archive's format, order, times or top folder.
    The same in a shell, in the source folder::

        find . -type f ! -path ./comfy/text_encoders/llama_tokenizer/tokenizer.json \\
            ! -path ./comfy/text_encoders/qwen35_tokenizer/vocab.json -printf '%P\\n' \\
            | LC_ALL=C sort | xargs -d '\\n' sha256sum | sha256sum
    """
    paths = sorted(
        relative
        for path in root.rglob("*")
        if path.is_file()
        and not path.is_symlink()
        and (relative := path.relative_to(root).as_posix()) not in excluded
    )
    lines = "".join(f"{sha256_of(root / relative)}  {relative}\n" for relative in paths)
    return hashlib.sha256(lines.encode()).hexdigest()


def source_version(source: Path) -> str:
    """``__version__`` of the source's ``comfyui_version.py``."""
    try:
        text = (source / "comfyui_version.py").read_text(encoding="utf-8")
    except OSError as exc:
        raise SetupError(f"ComfyUI's source {source} has no comfyui_version.py: {exc}") from None
    match = re.search(r"__version__\s*=\s*['\"]([^'\"]+)['\"]", text)
    if not match:
        raise SetupError(f"{source / 'comfyui_version.py'} declares no __version__")
    return match.group(1)


def ensure_source(pins: Pins | None = None) -> Path:
    """ComfyUI's source folder, checked against the pinned digest; fetched and unpacked once per machine."""
    pins = pins or pins_from_dockerfile()
    digest = pins.comfyui_source_digest
    final = cache_dir() / f"comfyui-source-{pins.comfyui_version}-{digest[:12]}"

    def build(work: Path) -> None:
        origin = source_origin(pins)
        local = Path(origin)
        archive = local if local.is_file() else download(origin, work / "download.tar.gz")
        unpack_source(archive, work / SOURCE, origin=origin)
        if archive != local:
            archive.unlink()
        found = tree_digest(work / SOURCE)
        if found != digest:
            raise SetupError(
                f"checking ComfyUI's source from {origin} against the Dockerfile's ARG COMFYUI_SOURCE_DIGEST: its "
                f"files' digest is {found}, the pin is {digest}. It is not ComfyUI {pins.comfyui_version} "
                f"(commit {pins.comfyui_commit}) as the tests know it: point WAN_WORKER_COMFYUI_URL at an "
                "honest copy, or fix the pin"
            )

    built = build_once(
        final, {"source_digest": digest}, build, what=f"ComfyUI {pins.comfyui_version}'s source"
    )
    return built / SOURCE


def download(url: str, to: Path) -> Path:
    """``url`` streamed into ``to``; any failure is a :class:`SetupError` naming the URL."""
    try:
        with requests.get(url, stream=True, timeout=(15, 60)) as response:
            response.raise_for_status()
            with open(to, "wb") as out:
                for chunk in response.iter_content(1 << 20):
                    out.write(chunk)
    except (requests.RequestException, OSError) as exc:
        raise SetupError(f"downloading ComfyUI's source from {url} failed: {exc}") from None
    return to


def unpack_source(archive: Path, into: Path, *, origin: str) -> None:
    """Unpack ``archive`` (a tarball with one top folder, as GitHub makes them) so that ``into`` is that folder."""
    unpacked = into.with_name(into.name + ".unpacked")
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(unpacked, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise SetupError(f"unpacking ComfyUI's source from {origin} failed: {exc}") from None
    tops = list(unpacked.iterdir())
    if len(tops) != 1 or not tops[0].is_dir():
        names = ", ".join(sorted(p.name for p in tops)) or "nothing"
        raise SetupError(f"unpacking ComfyUI's source from {origin}: expected one top folder, found {names}")
    tops[0].rename(into)
    unpacked.rmdir()


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


def ensure_env(pins: Pins | None = None, source: Path | None = None) -> ComfyEnv:
    """A venv with the pinned torch and the requirements of ComfyUI's checked source (built if absent)."""
    pins = pins or pins_from_dockerfile()
    source = source or ensure_source(pins)
    digest = pins.comfyui_source_digest
    key: dict[str, object] = {"source_digest": digest, "torch": pins.torch_requirements()}
    name = f"comfyui-{pins.comfyui_version}-{digest[:12]}-torch{pins.torch}-tv{pins.torchvision}"
    built = build_once(
        cache_dir() / name,
        key,
        lambda work: _make_venv(work / "venv", source, pins),
        what=f"ComfyUI {pins.comfyui_version}'s environment with torch {pins.torch}",
    )
    return ComfyEnv(root=built, source=source, python=built / "venv" / "bin" / "python", pins=pins)


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
