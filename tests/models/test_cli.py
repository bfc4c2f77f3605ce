"""``python -m worker models ensure|status|verify`` on a volume, with the manifest pointed at a local server."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from worker.config import Settings
from worker.models import ModelRef, on_demand_entry
from worker.models.cli import main
from worker.models.ensure import ensure_refs
from worker.models.manifest import at_start, load_manifest, manifest_from_env
from worker.models.volume import FOLDER_KINDS, State, file_status, read_record, write_record

from .fileserver import FileServer, model_bytes

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


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, volume: Path) -> Path:
    monkeypatch.setenv("VOLUME_ROOT", str(volume))
    monkeypatch.setenv("ALLOWED_MODEL_HOSTS", "127.0.0.1")
    monkeypatch.setenv("ALLOW_HTTP_MODEL_URLS", "true")
    monkeypatch.setenv("ALLOW_PRIVATE_URLS", "true")
    monkeypatch.delenv("MODELS_MANIFEST", raising=False)
    return volume


def small_manifest(server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """Three small default files served locally; MODELS_MANIFEST points at them."""
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
            "url": server.add(f"/split_files/{name}", data),
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        for (role, name, kind), data in files.items()
    ]
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"version": 1, "files": entries}))
    monkeypatch.setenv("MODELS_MANIFEST", str(path))
    return {name: data for (_, name, _), data in files.items()}


def test_status_prints_a_table_of_the_defaults(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status"]) == 1
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"volume: {env}"
    assert lines[1].split() == ["FILE", "FOLDER", "STATE", "SIZE"]
    for entry in load_manifest():
        row = next(line for line in lines if line.startswith(entry.name))
        assert f"{entry.folder}/" in row and "missing" in row
        assert ("on demand, missing" in row) == entry.on_demand, row
    assert "6 of 6 files missing" in out and "models ensure" in out
    assert "6 more fetched on demand by the first job that needs them (0 present)" in out


def test_ensure_with_the_six_defaults_verified_touches_no_content(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = []
    for entry in at_start(load_manifest()):  # the on-demand ones stay missing: ensure leaves them alone
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
    assert seen == []
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in paths)
    out = capsys.readouterr().out
    assert out.count(": present") == 6 and "all 6 files present" in out
    assert "film_net_fp16.safetensors: on demand, left to the first job that needs it" in out


def test_ensure_downloads_the_missing_replaces_the_wrong_and_hashes_the_unhashed(
    env: Path,
    server: FileServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    files = small_manifest(server, tmp_path, monkeypatch)
    (env / "vae").mkdir()
    (env / "vae" / "vae.safetensors").write_bytes(files["vae.safetensors"][:1000])  # the seed's corruption
    (env / "models" / "diffusion_models").mkdir(parents=True)
    (env / "models" / "diffusion_models" / "high.safetensors").write_bytes(files["high.safetensors"])
    assert main(["ensure"]) == 0
    out = capsys.readouterr().out
    assert "high.safetensors: verified" in out
    assert "vae.safetensors: downloaded" in out and "light.safetensors: downloaded" in out
    assert server.requests("/split_files/high.safetensors") == []
    assert (env / "vae" / "vae.safetensors").read_bytes() == files["vae.safetensors"]
    assert (env / "loras" / "light.safetensors").read_bytes() == files["light.safetensors"]
    for line in out.splitlines()[-4:-1]:
        assert line.split()[2] == "verified", line
    assert "models/diffusion_models/" in out
    requests_before = len(server.requests())
    assert main(["ensure"]) == 0
    assert len(server.requests()) == requests_before


def test_ensure_reports_a_file_that_does_not_verify(
    env: Path,
    server: FileServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    small_manifest(server, tmp_path, monkeypatch)
    server.resources["/split_files/light.safetensors"].wrong = True
    assert main(["ensure"]) == 1
    out = capsys.readouterr().out
    assert "light.safetensors: FAILED" in out and "did not match" in out
    assert not (env / "loras" / "light.safetensors").exists()
    assert "1 of 3 files missing" in out


def test_verify_finds_a_corrupted_file(
    env: Path,
    server: FileServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    files = small_manifest(server, tmp_path, monkeypatch)
    assert main(["ensure"]) == 0
    path = env / "vae" / "vae.safetensors"
    assert file_status(path, len(files["vae.safetensors"]), None).state is State.VERIFIED
    with path.open("r+b") as fh:
        fh.seek(1000)
        fh.write(b"\0\0\0\0")
    capsys.readouterr()
    assert main(["verify"]) == 1
    out = capsys.readouterr().out
    assert "vae.safetensors: CORRUPT" in out and "high.safetensors: verified" in out
    assert main(["status"]) == 1
    assert "corrupt" in capsys.readouterr().out
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


def test_python_m_worker_models(env: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "worker.models", "status"],
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors" in result.stdout


def test_on_demand_files_are_listed_but_left_to_the_jobs(
    env: Path,
    server: FileServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    small_manifest(server, tmp_path, monkeypatch)
    film = model_bytes(150_000, seed=4)
    url = server.hub_file("/org/interp/resolve/main/film.safetensors", film)
    manifest = Path(os.environ["MODELS_MANIFEST"])
    data = json.loads(manifest.read_text())
    data["files"].append(
        {"role": "interpolation_model", "name": "film.safetensors", "kind": "frame_interpolation", "url": url,
         "size": None, "sha256": None, "fetch": "on_demand"}
    )  # fmt: skip
    manifest.write_text(json.dumps(data))
    assert main(["ensure"]) == 0
    out = capsys.readouterr().out
    assert "film.safetensors: on demand, left to the first job that needs it" in out
    assert server.requests("/org/interp/resolve/main/film.safetensors") == []
    row = next(line for line in out.splitlines() if line.startswith("film.safetensors "))
    assert row.split()[1:] == ["frame_interpolation/", "on", "demand,", "missing", "unknown"]
    assert "all 3 files present" in out and "1 more fetched on demand" in out and "(0 present)" in out

    entries = manifest_from_env(os.environ)
    entry = on_demand_entry("frame_interpolation", "film.safetensors", entries)
    assert entry is not None
    ref = ModelRef("interpolation_model", entry.kind, entry.url, entry.name)
    names = ensure_refs([ref], Settings.from_env(), job_id="j", manifest=entries)
    assert names == {"interpolation_model": "film.safetensors"}
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "on demand, verified" in out and "(1 present)" in out

    assert main(["verify"]) == 0
    assert "film.safetensors: verified" in capsys.readouterr().out
    path = env / "frame_interpolation" / "film.safetensors"
    record = read_record(path)
    assert record is not None and record.sha256 == hashlib.sha256(film).hexdigest()
    mtime = record.mtime_ns
    with path.open("r+b") as fh:
        fh.seek(1000)
        fh.write(b"\0\0\0\0")
    os.utime(path, ns=(path.stat().st_atime_ns, mtime))  # corrupted in place, its date kept
    assert main(["verify"]) == 1
    out = capsys.readouterr().out
    assert "film.safetensors: CORRUPT" in out and "next job that needs it fetches it again" in out
    assert main(["status"]) == 0  # the defaults are all there; the on-demand file is no longer vouched for
    assert "on demand, present, not yet hashed" in capsys.readouterr().out
