from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
if str(SRC) not in sys.path:  # when the package is not installed
    sys.path.insert(0, str(SRC))

from worker.config import Settings  # noqa: E402
from worker.models.download import Tuning  # noqa: E402
from worker.models.ensure import Options  # noqa: E402
from worker.models.lock import LockTuning  # noqa: E402

from .fileserver import FileServer  # noqa: E402

FAST_TUNING = Tuning(
    connections=4,
    chunk_bytes=64 << 10,
    block_bytes=256 << 10,
    window_blocks=4,
    min_piece_bytes=32 << 10,
    max_attempts=3,
    backoff_s=0.01,
    checkpoint_s=0.1,
    tick_s=0.02,
)
FAST_LOCK = LockTuning(heartbeat_s=0.05, stale_after_s=0.6, poll_s=0.02)


def fast_options(**tuning: object) -> Options:
    return Options(tuning=replace(FAST_TUNING, **tuning), lock=FAST_LOCK, log_interval_s=0.1)  # type: ignore[arg-type]


@pytest.fixture
def server() -> Iterator[FileServer]:
    with FileServer() as srv:
        yield srv


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    root = tmp_path / "volume"
    root.mkdir()
    return root


@pytest.fixture
def settings(volume: Path) -> Settings:
    """Settings that let downloads reach the local test server."""
    return Settings(
        volume_root=volume,
        allowed_model_hosts=("127.0.0.1",),
        allow_http_model_urls=True,
        allow_private_urls=True,
        model_read_timeout_s=5.0,
        model_lock_timeout_s=20.0,
    )
