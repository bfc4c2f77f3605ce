"""``python -m worker models ensure|status|verify`` on a volume, with the manifest's files on a fake Hub."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from worker.__main__ import main as worker_main
from worker.config import Settings
from worker.models import cli
from worker.models.manifest import load_manifest
from worker.models.volume import FOLDER_KINDS, State, file_status, write_record

from .fileserver import FakeHub, model_bytes

ROOT = Path(__file__).resolve().parents[2]

_WATCHED: list[str] = []
_SEEN: list[str] = []


def _audit(event: str, args: tuple[object, ...]) -> None:
    if not _WATCHED:
        return
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.fsdecode(args[0])  # type: ignore[arg-type]
        if path.startswith(tuple(_WATCHED)) and not Path(path).name.startswith("."):
            _SEEN.append(path)
    elif event == "socket.connect":
        _SEEN.append(f"connect {args[1]!r}")


sys.addaudithook(_audit)


def main(argv: list[str]) -> int:
    """``python -m worker models ARGV`` in this process, with the settings of the environment."""
    return cli.main(argv, Settings.from_env())


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, volume: Path) -> Path:
    monkeypatch.setenv("VOLUME_ROOT", str(volume))
    monkeypatch.delenv("MODELS_MANIFEST", raising=False)
    return volume


def small_manifest(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **extra: object
) -> dict[str, bytes]:
    """Three small default files on the fake Hub (and ``extra`` entries); MODELS_MANIFEST points at them."""
    files = {
        ("high_model", "high.safetensors", "diffusion_models"): model_bytes(300_000, seed=1),
        ("vae", "vae.safetensors", "vae"): model_bytes(200_000, seed=2),
        ("lightning_high", "light.safetensors", "loras"): model_bytes(100_000, seed=3),
    }
    entries = [
        {
            "role": role,
            "name": name,
            "kind": kind,
            "url": hub.add("Comfy-Org/small", f"split_files/{name}", data),
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        for (role, name, kind), data in files.items()
    ]
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"version": 1, "files": entries + list(extra.values())}))
    monkeypatch.setenv("MODELS_MANIFEST", str(path))
    return {name: data for (_, name, _), data in files.items()}


def test_status_shows_what_is_on_the_volume(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"volume: {env}"
    for entry in load_manifest():
        line = next(line for line in lines if line.startswith(entry.name + ":"))
        assert (
            f"({FOLDER_KINDS[entry.kind]}/, " in line and ("on demand, missing" in line) == entry.on_demand
        ), line
    assert "6 files missing: run `python -m worker models ensure`" in lines
    assert "6 more fetched on demand by the first job that needs them (0 present)" in lines


def test_ensure_with_the_six_defaults_verified_touches_no_content(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = []
    for entry in (
        e for e in load_manifest() if not e.on_demand
    ):  # the on-demand ones stay missing: ensure leaves them alone
        assert entry.size is not None and entry.sha256 is not None
        path = env / FOLDER_KINDS[entry.kind] / entry.name
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as fh:
            fh.truncate(entry.size)  # sparse, of the real size
        write_record(path, entry.sha256)
        paths.append((path, path.stat().st_mtime_ns))
    _WATCHED.append(str(env))
    try:
        assert main(["ensure"]) == 0
    finally:
        _WATCHED.clear()
    seen, _SEEN[:] = list(_SEEN), []
    assert seen == []  # no model file opened, no connection made
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in paths)
    out = capsys.readouterr().out
    assert out.count(": present\n") == 6 and "all present" in out
    assert "film_net_fp16.safetensors: on demand, missing (frame_interpolation/, size unknown)" in out


def test_ensure_fetches_the_missing_replaces_the_wrong_and_hashes_the_unhashed(
    env: Path,
    hub: FakeHub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    files = small_manifest(hub, tmp_path, monkeypatch)
    (env / "vae").mkdir()
    (env / "vae" / "vae.safetensors").write_bytes(files["vae.safetensors"][:1000])  # the seed's corruption
    (env / "models" / "diffusion_models").mkdir(parents=True)
    (env / "models" / "diffusion_models" / "high.safetensors").write_bytes(files["high.safetensors"])
    assert main(["ensure"]) == 0
    out = capsys.readouterr().out
    assert "high.safetensors: verified" in out
    assert "vae.safetensors: downloaded" in out and "light.safetensors: downloaded" in out
    assert not any("high.safetensors" in h.path for h in hub.hits())
    assert (env / "vae" / "vae.safetensors").read_bytes() == files["vae.safetensors"]
    assert (env / "loras" / "light.safetensors").read_bytes() == files["light.safetensors"]
    assert "high.safetensors: verified (models/diffusion_models/, 0.3 MB)" in out
    requests_before = len(hub.hits())
    assert main(["ensure"]) == 0
    assert len(hub.hits()) == requests_before


def test_ensure_reports_a_file_that_does_not_verify(
    env: Path,
    hub: FakeHub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    small_manifest(hub, tmp_path, monkeypatch)
    next(r for r in hub.cdn.routes.values() if r.size == 100_000).wrong = True
    assert main(["ensure"]) == 1
    out = capsys.readouterr().out
    assert "light.safetensors: FAILED" in out and "did not match" in out
    assert not (env / "loras" / "light.safetensors").exists()
    assert "1 files missing" in out


def test_verify_finds_a_corrupted_file(
    env: Path,
    hub: FakeHub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    files = small_manifest(hub, tmp_path, monkeypatch)
    assert main(["ensure"]) == 0
    path = env / "vae" / "vae.safetensors"
    assert file_status(path, len(files["vae.safetensors"]), None).state is State.VERIFIED
    with path.open("r+b") as fh:
        fh.seek(1000)
        fh.write(b"\0\0\0\0")
    capsys.readouterr()
    assert main(["verify"]) == 1
    out = capsys.readouterr().out
    assert "vae.safetensors: corrupt (sha256 mismatch)" in out and "high.safetensors: verified" in out
    assert main(["status"]) == 1
    assert "vae.safetensors: corrupt (sha256 mismatch)" in capsys.readouterr().out
    assert main(["ensure", "vae"]) == 0
    assert path.read_bytes() == files["vae.safetensors"]


def test_configuration_errors_exit_2(env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"files": [{"name": "x"}]}')
    monkeypatch.setenv("MODELS_MANIFEST", str(bad))
    assert main(["status"]) == 2
    monkeypatch.delenv("MODELS_MANIFEST")
    assert main(["verify", "no-such-file"]) == 2
    assert main(["frobnicate"]) == 2
    monkeypatch.setenv("MAX_MODEL_GB", "lots")
    assert worker_main(["models", "status"]) == 2


def test_python_m_worker_models(env: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "worker", "models", "status"],
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors: missing" in result.stdout


def test_on_demand_files_are_listed_left_to_the_jobs_and_verified_by_their_record(
    env: Path,
    hub: FakeHub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    film = model_bytes(150_000, seed=4)
    url = hub.add("org/interp", "film.safetensors", film)
    entry = {"role": "interpolation_model", "name": "film.safetensors", "kind": "frame_interpolation", "url": url,
             "size": None, "sha256": None, "fetch": "on_demand"}  # fmt: skip
    small_manifest(hub, tmp_path, monkeypatch, film=entry)
    assert main(["ensure"]) == 0
    out = capsys.readouterr().out
    assert "film.safetensors: on demand" not in out.split("volume:")[0]  # left to the jobs
    assert not any("film" in h.path for h in hub.hits())
    assert "film.safetensors: on demand, missing (frame_interpolation/, size unknown)" in out
    assert (
        "all present" in out
        and "1 more fetched on demand by the first job that needs them (0 present)" in out
    )

    from worker.config import Settings
    from worker.models.fetch import Context, ModelRef, ensure_refs

    settings = Settings.from_env()
    ctx = Context(settings, manifest=load_manifest(settings.models_manifest))
    ref = ModelRef("interpolation_model", "frame_interpolation", url, "film.safetensors")
    assert ensure_refs([ref], ctx) == {"interpolation_model": "film.safetensors"}
    assert main(["status"]) == 0
    assert "film.safetensors: on demand, verified" in capsys.readouterr().out
    assert main(["verify"]) == 0
    assert "film.safetensors: on demand, verified" in capsys.readouterr().out
    path = env / "frame_interpolation" / "film.safetensors"
    mtime = path.stat().st_mtime_ns
    with path.open("r+b") as fh:
        fh.seek(1000)
        fh.write(b"\0\0\0\0")
    os.utime(path, ns=(path.stat().st_atime_ns, mtime))  # corrupted in place, its date kept
    assert main(["verify"]) == 1
    assert "film.safetensors: on demand, corrupt (sha256 mismatch)" in capsys.readouterr().out
    assert main(["status"]) == 0  # the defaults are all there; the on-demand file is no longer vouched for
    assert "film.safetensors: on demand, present, not yet hashed" in capsys.readouterr().out
