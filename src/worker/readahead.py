"""``python -m worker readahead``: read the first job's models into the page cache while ComfyUI starts.

ComfyUI's loaders read a model through mmap page faults: one stream of small requests, each paying the network
volume's latency. Read in large parallel reads while ComfyUI imports (the text encoder and VAE first, then each
expert and its LoRA, as a job loads them), they arrive at the volume's full bandwidth. Bounded by MemAvailable less
a margin; a file mostly cached already (util-linux's ``fincore``, mincore(2): no byte read) is skipped."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .config import Settings
from .models.manifest import load_manifest
from .models.volume import target_path

CHUNK, BUFFER, THREADS = 64 << 20, 8 << 20, 16
ORDER = ("text_encoder", "vae", "high_model", "lightning_high", "low_model", "lightning_low")
log, _local = logging.getLogger("worker.readahead"), threading.local()


def meminfo(key: str) -> int:
    with open("/proc/meminfo", encoding="ascii") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(f"{key}:"))


def cached_bytes(path: Path) -> int:
    """Bytes of ``path`` in the page cache, by ``fincore``; 0 when it cannot tell."""
    command = [shutil.which("fincore") or "/bin/true", "-bnr", "-o", "RES", str(path)]
    out = subprocess.run(command, capture_output=True, text=True, check=False).stdout.strip()
    return int(out) if out.isdigit() else 0


def plan(paths: list[Path], budget: int) -> list[tuple[Path, int, int]]:
    """The (file, offset, length) chunks to read: uncached files in order, up to ``budget`` bytes in all."""
    chunks = []
    for path in paths:
        if budget <= 0 or cached_bytes(path) >= (size := path.stat().st_size) * 0.9:
            continue
        take, budget = min(size, budget), budget - size
        chunks += [(path, offset, min(CHUNK, take - offset)) for offset in range(0, take, CHUNK)]
    return chunks


def read_chunk(path: Path, offset: int, length: int) -> int:
    """Read one chunk through its own file descriptor (a stream of its own) into the thread's buffer."""
    view = getattr(_local, "view", None) or _local.__dict__.setdefault("view", memoryview(bytearray(BUFFER)))
    fd, end = os.open(path, os.O_RDONLY), offset + length
    try:
        while offset < end and (got := os.preadv(fd, [view[: min(BUFFER, end - offset)]], offset)) > 0:
            offset += got
    finally:
        os.close(fd)
    return length


def readahead(paths: list[Path], budget: int, threads: int = THREADS) -> int:
    """Read ``paths`` into the page cache (see :func:`plan`); returns the bytes read."""
    chunks = plan(paths, budget)
    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(lambda chunk: read_chunk(*chunk), chunks))


def main(settings: Settings) -> int:
    if not settings.readahead:
        log.info("model read-ahead is off (READAHEAD=false)")
        return 0
    entries = [e for e in load_manifest(settings.models_manifest) if not e.on_demand]
    entries.sort(key=lambda e: ORDER.index(e.role) if e.role in ORDER else len(ORDER))  # as a job loads them
    paths = [p for e in entries if (p := target_path(settings.volume_root, e.kind, e.name)).is_file()]
    started, budget = time.monotonic(), meminfo("MemAvailable") - max(2 << 30, meminfo("MemTotal") // 10)
    try:
        done = readahead(paths, budget)
    except OSError as exc:  # a file replaced or unreadable: ComfyUI will say so when it loads it
        log.warning("model read-ahead stopped: %s", exc)
        return 1
    log.info("read %.2f GB of models ahead in %.1f s", done / 1e9, time.monotonic() - started)
    return 0
