"""start.sh end to end: the real `models ensure` against a local file server, the ComfyUI emulator in place of
ComfyUI, and the real worker running the local test job (test_input.json) to completion."""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from pathlib import Path

import pytest

from worker.models.volume import FOLDER_KINDS

from ..models.fileserver import FileServer
from .harness import REPO, Harness, read_events

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

MANIFEST = REPO / "src" / "worker" / "models" / "manifest.json"


def tiny_safetensors(name: str) -> bytes:
    """A small file in the safetensors layout (header length, JSON header, data), distinct per name."""
    header = json.dumps({"__metadata__": {"name": name}}).encode()
    return struct.pack("<Q", len(header)) + header + hashlib.sha256(name.encode()).digest() * 64


def serve_tiny_models(server: FileServer, target: Path) -> list[dict[str, object]]:
    """Serves a tiny file under the name of each file fetched at start; writes a manifest of them (entries fetched
    on demand, by the jobs that need them, are kept as they are); returns the served entries."""
    served, files = [], []
    for entry in json.loads(MANIFEST.read_text(encoding="utf-8"))["files"]:
        if entry.get("fetch", "start") == "on_demand":
            files.append(entry)
            continue
        data = tiny_safetensors(entry["name"])
        url = server.add(f"/{entry['kind']}/{entry['name']}", data)
        served.append({**entry, "url": url, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    target.write_text(json.dumps({"version": 1, "files": served + files}), encoding="utf-8")
    return served


def test_start_sh_ensures_models_starts_comfy_and_runs_the_test_job(harness: Harness) -> None:
    work = harness.tmp / "app"
    work.mkdir()
    # The repository's test job, made small: the emulator encodes a real MP4 of this size.
    job = json.loads((REPO / "test_input.json").read_text(encoding="utf-8"))
    job["input"].update(width=128, height=128, length=5)
    (work / "test_input.json").write_text(json.dumps(job), encoding="utf-8")
    vol = harness.volume
    folders = FOLDER_KINDS  # kind -> volume folder, where `models ensure` downloads each default file
    model_dirs = " ".join(f"--model-dir {kind}={vol / folder}" for kind, folder in folders.items())
    manifest = harness.tmp / "manifest.json"
    emulator_log = harness.tmp / "emulator-out"

    with FileServer() as server:
        files = serve_tiny_models(server, manifest)
        result = harness.run(
            timeout=100,
            cwd=work,
            PYTHONPATH=f"{REPO}:{REPO / 'src'}",
            COMFY_CMD=f"{sys.executable} -m tests.emulator --no-default-models --output-directory {emulator_log}",
            COMFY_EXTRA_ARGS=model_dirs,
            WORKER_CMD=f"{sys.executable} -m worker",
            EXTRA_MODEL_PATHS=str(REPO / "extra_model_paths.yaml"),
            SKIP_MODEL_DOWNLOAD="false",
            MODELS_MANIFEST=str(manifest),
            ALLOWED_MODEL_HOSTS="127.0.0.1",
            ALLOW_HTTP_MODEL_URLS="true",
            ALLOW_PRIVATE_URLS="true",
            COMFY_IDLE_TIMEOUT_S="20",
            JOB_TIMEOUT_S="40",
        )
        fetched = {hit.path for hit in server.hits()}

    output = result.stdout + result.stderr
    assert result.code == 0, output[-6000:]
    # The models came from the local server into the volume's layout ...
    for entry in files:
        path = vol / folders[str(entry["kind"])] / str(entry["name"])
        assert path.stat().st_size == entry["size"], path
    assert fetched == {f"/{e['kind']}/{e['name']}" for e in files}
    # ... the emulator stood in for ComfyUI, and the worker ran test_input.json through it to the end: the runpod
    # SDK's local test exits 0 only when the job returned no error.
    assert "ComfyUI is ready after" in output
    assert "the worker exited (status 0)" in output
    assert read_events(harness.worker_record) == []  # no stand-in worker was involved
