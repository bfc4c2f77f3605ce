"""Workers sharing one volume: one downloads, the others wait and reuse; a dead worker's lock and partial
file are taken over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from worker.config import Settings
from worker.models.volume import part_paths

from .conftest import fast_options
from .fileserver import FileServer, model_bytes

ROOT = Path(__file__).resolve().parents[2]
SIZE = 1_200_000

WORKER = """
import json, logging, sys
from dataclasses import replace
from pathlib import Path
from worker.models.lock import LockTuning
from worker.config import Settings
from worker.models import ModelRef
from worker.models.ensure import ensure_refs
from tests.models.conftest import fast_options

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
root, url = sys.argv[1], sys.argv[2]
settings = Settings(volume_root=Path(root), allowed_model_hosts=("127.0.0.1",), allow_http_model_urls=True,
                    allow_private_urls=True, model_lock_timeout_s=30)
ref = ModelRef("high_model_url", "diffusion_models", url, None)
options = replace(fast_options(connections=2), lock=LockTuning(heartbeat_s=0.05, stale_after_s=5, poll_s=0.02))
print(json.dumps(ensure_refs([ref], settings, job_id=sys.argv[3], options=options)))
"""


def start_worker(volume: Path, url: str, job: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, str(volume), url, job],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_processes_racing_for_one_file_download_it_once(server: FileServer, volume: Path) -> None:
    data = model_bytes(SIZE, seed=11)
    url = server.add("/race.safetensors", data, throttle_bps=1.5e6)
    workers = [start_worker(volume, url, f"job-{i}") for i in range(2)]
    results = [w.communicate(timeout=60) for w in workers]
    for worker, (out, err) in zip(workers, results, strict=True):
        assert worker.returncode == 0, err
        assert json.loads(out) == {"high_model_url": "race.safetensors"}
    downloads = sum(err.count("downloading race.safetensors (") for _, err in results)
    assert downloads == 1, [err for _, err in results]
    firsts = [
        h for h in server.requests() if (h.range or "").startswith("bytes=0-") and h.range != "bytes=0-0"
    ]
    assert len(firsts) == 1
    assert (volume / "models" / "race.safetensors").read_bytes() == data
    assert sorted(p.name for p in (volume / "models").iterdir()) == [
        ".race.safetensors.verified",
        "race.safetensors",
    ]


def test_a_killed_writer_leaves_a_lock_and_a_part_that_the_next_worker_takes_over(
    server: FileServer, volume: Path, settings: Settings
) -> None:
    data = model_bytes(SIZE, seed=12)
    url = server.add("/killed.safetensors", data, throttle_bps=0.2e6)
    target = volume / "models" / "killed.safetensors"
    victim = start_worker(volume, url, "victim")
    deadline = time.monotonic() + 30
    while victim.poll() is None and time.monotonic() < deadline:
        if any(p.with_name(p.name + ".json").exists() for p in part_paths(target)):
            break
        time.sleep(0.05)
    time.sleep(0.4)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=10)
    server.resources["/killed.safetensors"].throttle_bps = None
    assert (target.parent / ".killed.safetensors.lock").exists()
    assert len(part_paths(target)) == 1
    state = json.loads(part_paths(target)[0].with_suffix(".part.json").read_text())
    on_disk = state["total"] - sum(b - a for a, b in state["remaining"])
    assert 0 < on_disk < SIZE
    time.sleep(fast_options().lock.stale_after_s)  # the dead writer's part is idle long enough to adopt

    from worker.models.ensure import ModelRef, ensure_refs

    missing = [tuple(r) for r in state["remaining"]]
    first_request = len(server.requests())
    names = ensure_refs(
        [ModelRef("high_model_url", "diffusion_models", url, None)],
        settings,
        job_id="next",
        options=fast_options(),
    )
    assert names == {"high_model_url": "killed.safetensors"}
    assert target.read_bytes() == data
    for hit in server.requests()[first_request:]:
        if hit.range == "bytes=0-0":  # the probe for the file's name and size
            continue
        first, _, last = (hit.range or "").removeprefix("bytes=").partition("-")
        assert any(a <= int(first) and int(last) < b for a, b in missing), (hit.range, missing)
    assert part_paths(target) == [] and not (target.parent / ".killed.safetensors.lock").exists()
