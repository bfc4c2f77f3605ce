"""What the worker adds around ComfyUI, per job: wall time less ComfyUI's own run, and peak memory.

The ComfyUI emulator (a separate process) finishes at once with an output padded to 2 MB and 50 MB; each job's
time outside ComfyUI (total - sampling) is compared with one plain base64 encode of the same number of bytes,
in-process and through the runpod SDK's local API. Run: ``python bench/overhead.py [--runs 5]``.
Target: overhead <= 50 ms + 1.5 x the base64 pass; peak RSS growth <= 3 x the output size.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.emulator import EmulatorProcess  # noqa: E402
from tests.support.images import data_uri, image_bytes  # noqa: E402
from tests.support.worker_proc import LocalApi, worker_env  # noqa: E402

JOB = {"prompt": "p", "image_base64": data_uri(image_bytes()), "width": 128, "height": 128, "length": 5}


def base64_pass_s(size: int) -> float:
    data = os.urandom(size)
    times = []
    for _ in range(3):
        started = time.perf_counter()
        base64.b64encode(data).decode("ascii")
        times.append(time.perf_counter() - started)
    return min(times)


def in_process_child(url: str, runs: int) -> None:
    """Runs in a fresh interpreter: jobs through the handler, then the peak RSS growth."""
    from worker.config import Settings
    from worker.handler import handle

    host, port = url.split("//")[1].rsplit(":", 1)
    settings = Settings.from_env(
        {
            "COMFY_HOST": host,
            "COMFY_PORT": port,
            "VOLUME_ROOT": tempfile.gettempdir(),
            "INLINE_OUTPUT_MAX_MB": "200",
        }
    )
    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    asyncio.run(handle({"id": "warm", "input": JOB}, settings))
    overheads, size = [], 0
    for i in range(runs):
        started = time.perf_counter()
        result = asyncio.run(handle({"id": f"b{i}", "input": JOB}, settings))
        wall = time.perf_counter() - started
        assert "error" not in result, result
        size = result["size_bytes"]
        overheads.append(wall - result["timings"]["sampling"])
        del result
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "overhead_s": statistics.median(overheads),
                "size": size,
                "rss_growth": (peak_kb - baseline_kb) * 1024,
            }
        )
    )


def in_process(url: str, runs: int) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", url, "--runs", str(runs)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def local_api(url: str, runs: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        api = LocalApi(
            worker_env(url, Path(tmp), INLINE_OUTPUT_MAX_MB="200"),
            cwd=Path(tmp),
            log_path=Path(tmp) / "w.log",
        )
        try:
            api.runsync(JOB, timeout=120)
            overheads = []
            for _ in range(runs):
                started = time.perf_counter()
                body = api.runsync(JOB, timeout=120)
                wall = time.perf_counter() - started
                overheads.append(wall - body["output"]["timings"]["sampling"])
            return statistics.median(overheads)
        finally:
            api.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        in_process_child(args.child, args.runs)
        return 0
    print(
        f"{'output':>8} {'base64 pass':>12} {'in-process':>11} {'ratio':>6} {'local API':>10} {'ratio':>6} {'peak RSS':>9}"
    )
    ok = True
    for mb in (2, 50):
        with EmulatorProcess(faults={"output_padding_mb": mb}) as emu:
            inproc = in_process(emu.url, args.runs)
            api_s = local_api(emu.url, max(1, args.runs // 2))
        b64 = base64_pass_s(inproc["size"])
        budget = 0.050 + 1.5 * b64
        rss_ratio = inproc["rss_growth"] / inproc["size"]
        print(
            f"{inproc['size'] / 1e6:7.1f}M {b64 * 1e3:10.1f}ms {inproc['overhead_s'] * 1e3:9.1f}ms "
            f"{inproc['overhead_s'] / budget:5.2f}x {api_s * 1e3:8.1f}ms {api_s / budget:5.2f}x {rss_ratio:8.2f}x"
        )
        ok &= inproc["overhead_s"] <= budget and rss_ratio <= 3.0
    print(
        "ratio = overhead / (50 ms + 1.5 x base64 pass), target <= 1.00; peak RSS growth / output size, target <= 3"
    )
    print("target met" if ok else "target NOT met (in-process)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
