"""Workers sharing one volume: with a lock that holds, one downloads and the other waits and reuses; with a lock
that lies (as on some network file systems), both download and one whole, verified file is left."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from .fileserver import FakeHub, model_bytes

ROOT = Path(__file__).resolve().parents[2]
SIZE = 1_200_000

WRITER = """
import contextlib, sys
from pathlib import Path
from worker.config import Settings
from worker.models.fetch import Context, Target, fetch

@contextlib.contextmanager
def lying_lock(path, timeout):
    yield True

root, url, sha = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
target = Target("vae", url, root / "vae" / "race.safetensors", int(sys.argv[4]), sha)
print(fetch(target, Context(Settings(volume_root=root), lock=lying_lock)))
"""


def start(hub: FakeHub, *command: str, **env: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_ENDPOINT": hub.url, **env}
    return subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_two_workers_ensuring_one_file_download_it_once(volume: Path, tmp_path: Path) -> None:
    data = model_bytes(SIZE, seed=11)
    with FakeHub() as hub:
        url = hub.add("org/repo", "race.safetensors", data, throttle_bps=1.5e6)
        entry = {"role": "vae", "name": "race.safetensors", "kind": "vae", "url": url, "size": SIZE}
        manifest = tmp_path / "manifest.json"
        manifest.write_text(json.dumps({"files": [{**entry, "sha256": hashlib.sha256(data).hexdigest()}]}))
        env = {"VOLUME_ROOT": str(volume), "MODELS_MANIFEST": str(manifest)}
        workers = [start(hub, sys.executable, "-m", "worker", "models", "ensure", **env) for _ in range(2)]
        results = [w.communicate(timeout=60) for w in workers]
        downloads = [h for h in hub.cdn.hits() if not h.range]
    assert [w.returncode for w in workers] == [0, 0], results
    assert sorted(out.splitlines()[0] for out, _ in results) == [
        "race.safetensors: downloaded",
        "race.safetensors: present",
    ]
    assert len(downloads) == 1
    assert (volume / "vae" / "race.safetensors").read_bytes() == data
    assert sorted(p.name for p in (volume / "vae").iterdir()) == [
        ".race.safetensors.lock",
        ".race.safetensors.verified",
        "race.safetensors",
    ]


def test_two_workers_whose_lock_lies_leave_one_whole_file(volume: Path) -> None:
    data = model_bytes(SIZE, seed=12)
    sha = hashlib.sha256(data).hexdigest()
    with FakeHub() as hub:
        url = hub.add("org/repo", "race.safetensors", data, throttle_bps=1.5e6)
        workers = [
            start(hub, sys.executable, "-c", WRITER, str(volume), url, sha, str(SIZE)) for _ in range(2)
        ]
        results = [w.communicate(timeout=60) for w in workers]
        downloads = [h for h in hub.cdn.hits() if not h.range]
    assert [w.returncode for w in workers] == [0, 0], results
    assert [out.strip() for out, _ in results] == ["downloaded", "downloaded"]
    assert len(downloads) == 2  # a lock that lies costs a second download, nothing more
    path = volume / "vae" / "race.safetensors"
    assert path.read_bytes() == data and hashlib.sha256(path.read_bytes()).hexdigest() == sha
    assert list((volume / ".wan-worker" / "staging").iterdir()) == []
