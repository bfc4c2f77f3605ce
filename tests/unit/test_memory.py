"""Freed memory is kept for the next job: the second job's big buffers fault in no new pages."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from worker.memory import retain_freed_memory

# A job's big buffers, allocated and freed in a fresh worker thread, as asyncio.to_thread does; the minor page
# faults of each round are counted (the heap settles at its working size in the first two rounds).
PROBE = """
import json, resource, sys, threading
from worker.memory import retain_freed_memory
applied = retain_freed_memory(int(sys.argv[1]))

def job():
    pieces = [bytes(4 << 20) for _ in range(12)]
    text = b"".join(pieces)
    del pieces, text

faults = []
for _ in range(4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    worker = threading.Thread(target=job)
    worker.start()
    worker.join()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": faults}))
"""

PAGES_PER_ROUND = (2 * 48 << 20) // 4096  # 96 MB of buffers in 4 KiB pages


def probe(limit_bytes: int) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(limit_bytes)], capture_output=True, text=True, check=True
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_the_next_round_reuses_the_pages_of_the_last() -> None:
    kept = probe(512 << 20)
    assert kept["applied"] is True
    assert all(f < PAGES_PER_ROUND // 20 for f in kept["faults"][2:]), kept  # type: ignore[index]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_without_it_every_round_faults_its_pages_in_again() -> None:
    plain = probe(0)
    assert plain["applied"] is False
    assert all(f > PAGES_PER_ROUND // 4 for f in plain["faults"][1:]), plain  # type: ignore[index]


def test_a_limit_of_zero_changes_nothing() -> None:
    assert retain_freed_memory(0) is False
