#!/usr/bin/env python
"""Model download throughput: one plain stream, the worker's engine, and aria2c, on a local server that
throttles each connection (as CDNs effectively do), so that the result measures parallelism, not the disk.

    python bench/download.py                      # 1 GB at 20 MB/s per connection
    python bench/download.py --size-mb 256 --rate-mb 10

Prints the time and rate of each client and the ratios against the targets: the engine at least 8 times one
stream, and at least 0.9 times ``aria2c -x16`` (skipped when aria2c is not installed: Debian package aria2).
Also compares both at 16 connections (``aria2c -x16`` alone opens 5: its ``--split`` default).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests" / "models")]

import requests  # noqa: E402
from fileserver import write_model_file  # noqa: E402

from worker.config import Settings  # noqa: E402
from worker.models import policy  # noqa: E402
from worker.models.download import Tuning, download  # noqa: E402
from worker.netsafe import make_session  # noqa: E402

MB = 1_000_000


@dataclass(frozen=True)
class Run:
    name: str
    seconds: float
    size: int

    @property
    def rate(self) -> float:
        return self.size / self.seconds


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(8 << 20):
            digest.update(block)
    return digest.hexdigest()


def one_stream(url: str, out: Path) -> float:
    started = time.monotonic()
    with requests.get(url, stream=True, timeout=(10, 60)) as response, out.open("wb") as fh:
        response.raise_for_status()
        for chunk in response.iter_content(1 << 20):
            fh.write(chunk)
    return time.monotonic() - started


def engine(url: str, out: Path, connections: int, sha256: str) -> float:
    settings = Settings(
        volume_root=out.parent,
        allowed_model_hosts=("127.0.0.1",),
        allow_http_model_urls=True,
        allow_private_urls=True,
        download_connections=connections,
    )
    started = time.monotonic()
    with make_session(allow_private=True, pool_size=connections + 2) as session:
        opener = policy.make_opener(url, field="bench_url", settings=settings, session=session)
        download(
            opener,
            out,
            label="bench",
            source="bench",
            expected_sha256=sha256,
            max_bytes=policy.max_bytes(settings),
            tuning=Tuning(connections=connections),
        )
    return time.monotonic() - started


def aria2c(url: str, out: Path, options: list[str]) -> float:
    command = ["aria2c", *options, "--allow-overwrite=true", "--file-allocation=none", "--console-log-level=warn",
               "--summary-interval=0", "--download-result=hide", "-d", str(out.parent), "-o", out.name, url]  # fmt: skip
    started = time.monotonic()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - started


def start_server(path: Path, rate: float) -> tuple[subprocess.Popen[str], str]:
    server = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests" / "models" / "fileserver.py"),
            str(path),
            "--throttle",
            str(rate),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    return server, server.stdout.readline().strip()


def measure(name: str, run: object, out: Path, size: int, sha256: str) -> Run:
    seconds = run(out)  # type: ignore[operator]
    if sha256_of(out) != sha256:
        raise SystemExit(f"{name}: the downloaded file differs from the source")
    out.unlink()
    result = Run(name, seconds, size)
    print(f"  {name:<28} {seconds:7.1f} s {result.rate / MB:8.1f} MB/s", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1000, help="file size in MB (default 1000)")
    parser.add_argument("--rate-mb", type=float, default=20.0, help="MB/s per connection (default 20)")
    parser.add_argument("--connections", type=int, default=8, help="engine connections (default 8)")
    parser.add_argument(
        "--tmp", type=Path, default=None, help="where to put the files (default: system temp)"
    )
    args = parser.parse_args()
    size = args.size_mb * MB
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        source = write_model_file(Path(tmp) / "bench.safetensors", size)
        sha256 = sha256_of(source)
        out = Path(tmp) / "out" / "bench.part"
        out.parent.mkdir()
        server, url = start_server(source, args.rate_mb * MB)
        print(f"{args.size_mb} MB, {args.rate_mb:g} MB/s per connection, server {url}")
        try:
            single = measure("one stream", lambda o: one_stream(url, o), out, size, sha256)
            ours = measure(
                f"engine, {args.connections} connections",
                lambda o: engine(url, o, args.connections, sha256), out, size, sha256,
            )  # fmt: skip
            aria = aria16 = ours16 = None
            if shutil.which("aria2c"):
                aria = measure("aria2c -x16", lambda o: aria2c(url, o, ["-x16"]), out, size, sha256)
                ours16 = measure(
                    "engine, 16 connections", lambda o: engine(url, o, 16, sha256), out, size, sha256
                )
                aria16 = measure(
                    "aria2c -x16 -s16 -k1M",
                    lambda o: aria2c(url, o, ["-x16", "-s16", "-k1M"]),
                    out,
                    size,
                    sha256,
                )
            else:
                print("  aria2c not installed (apt-get install aria2): skipped")
        finally:
            server.terminate()
            server.wait()
    ok = report(single, ours, aria, ours16, aria16)
    return 0 if ok else 1


def report(single: Run, ours: Run, aria: Run | None, ours16: Run | None, aria16: Run | None) -> bool:
    checks = [(f"{ours.name} / one stream", ours.rate / single.rate, 8.0)]
    if aria is not None:
        checks.append((f"{ours.name} / aria2c -x16", ours.rate / aria.rate, 0.9))
    if ours16 is not None and aria16 is not None:
        checks.append(("engine, 16 / aria2c -x16 -s16", ours16.rate / aria16.rate, 0.9))
    print("ratios (target):")
    for name, ratio, target in checks:
        print(f"  {name:<40} {ratio:5.2f}  (>= {target:g}) {'ok' if ratio >= target else 'BELOW TARGET'}")
    return all(ratio >= target for _, ratio, target in checks)


if __name__ == "__main__":
    raise SystemExit(main())
