#!/usr/bin/env python
"""Model download throughput of the worker's two paths against one plain stream, from a local server (in its own
process) that can throttle each connection:

    python bench/download.py                      # 500 MB at 50 MB/s per connection
    python bench/download.py --size-mb 200 --rate-mb 0    # no throttle: what the machine can do

1. one plain stream (``requests``, no hash, no checks): the baseline;
2. a Hub file: huggingface_hub through a fake of the Hub (``HF_ENDPOINT``, its redirect to a CDN on another
   origin), then the worker's sha256 check, the rename and the record (``worker.models.fetch``);
3. a file on another host: the worker's one checked, streamed GET, hashed while written, renamed and recorded.

Every result is checked against the source's sha256. Targets: each path at least 0.8 times the rate of one stream
(what the worker adds, the hash and the checks, costs little). The exit code is 0 when both are met.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

import huggingface_hub  # noqa: E402, F401 - imported once per worker, not once per download: not timed
import requests  # noqa: E402
from tests.models.fileserver import write_model_file  # noqa: E402

from worker.config import Settings  # noqa: E402
from worker.models.fetch import Context, Target, fetch  # noqa: E402

MB = 1_000_000
TARGET = 0.8


def sha256_of(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def one_stream(url: str, out: Path) -> None:
    with requests.get(url, stream=True, timeout=(10, 60)) as response, out.open("wb") as fh:
        response.raise_for_status()
        for chunk in response.iter_content(1 << 20):
            fh.write(chunk)


def worker(url: str, out: Path, size: int, sha256: str) -> None:
    settings = Settings(volume_root=out.parent, allowed_model_hosts=("127.0.0.1",), allow_http_model_urls=True,
                        allow_private_urls=True)  # fmt: skip
    assert fetch(Target("bench_url", url, out, size, sha256), Context(settings)) == "downloaded"


def measure(name: str, run: Callable[[Path], None], out: Path, size: int, sha256: str) -> float:
    started = time.monotonic()
    run(out)
    seconds = time.monotonic() - started
    if sha256_of(out) != sha256:
        raise SystemExit(f"{name}: the downloaded file differs from the source")
    out.unlink()
    print(f"  {name:<40} {seconds:7.2f} s {size / seconds / MB:8.1f} MB/s", flush=True)
    return size / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=500, help="file size in MB (default 500)")
    parser.add_argument(
        "--rate-mb", type=float, default=50, help="MB/s per connection; 0: no limit (default 50)"
    )
    parser.add_argument(
        "--tmp", type=Path, default=None, help="where to put the files (default: system temp)"
    )
    args = parser.parse_args()
    size = args.size_mb * MB
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        source = write_model_file(Path(tmp) / "bench.safetensors", size)
        sha256 = sha256_of(source)
        out = Path(tmp) / "volume" / "loras" / "bench.safetensors"
        out.parent.mkdir(parents=True)
        command = [sys.executable, "-m", "tests.models.fileserver", str(source)]
        server = subprocess.Popen(command + ["--throttle", str(args.rate_mb * MB)] * bool(args.rate_mb),
                                  stdout=subprocess.PIPE, text=True, cwd=ROOT)  # fmt: skip
        assert server.stdout is not None
        urls = json.loads(server.stdout.readline())
        os.environ["HF_ENDPOINT"] = urls["endpoint"]
        print(
            f"{args.size_mb} MB, {f'{args.rate_mb:g} MB/s per connection' if args.rate_mb else 'no throttle'}"
        )
        try:
            single = measure(
                "one plain stream (no checks)", lambda o: one_stream(urls["url"], o), out, size, sha256
            )
            rates = {
                "the Hub, huggingface_hub + sha256 check": measure(
                    "the Hub: huggingface_hub, then sha256", lambda o: worker(urls["hub_url"], o, size, sha256),
                    out, size, sha256),
                "another host, hashed while written": measure(
                    "another host: one GET, hashed", lambda o: worker(urls["url"], o, size, sha256),
                    out, size, sha256),
            }  # fmt: skip
        finally:
            server.terminate()
            server.wait()
    print(f"ratios to one plain stream (target >= {TARGET:g}):")
    for name, rate in rates.items():
        print(f"  {name:<40} {rate / single:5.2f}  {'ok' if rate / single >= TARGET else 'BELOW TARGET'}")
    return 0 if all(rate / single >= TARGET for rate in rates.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
