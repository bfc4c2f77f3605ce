from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
if str(SRC) not in sys.path:  # when the package is not installed
    sys.path.insert(0, str(SRC))

from worker.config import Settings  # noqa: E402
from worker.models.fetch import Context, ModelRef, ensure_refs  # noqa: E402
from worker.models.sources import Retry  # noqa: E402

from .fileserver import FakeHub, FileServer  # noqa: E402

FAST = Retry(attempts=3, backoff_s=0.01)


def run(refs: list[ModelRef], settings: Settings, **context: Any) -> dict[str, str]:
    """A job's model refs fetched with short retries."""
    return ensure_refs(refs, Context(settings, job_id="job-1", retry=FAST, **context))


@pytest.fixture
def server() -> Iterator[FileServer]:
    with FileServer() as srv:
        yield srv


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A fake of the Hub, reached through HF_ENDPOINT."""
    with FakeHub() as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        yield fake


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    root = tmp_path / "volume"
    root.mkdir()
    return root


@pytest.fixture
def settings(volume: Path) -> Settings:
    """Settings that let downloads reach the local test servers."""
    return Settings(
        volume_root=volume,
        allowed_model_hosts=("127.0.0.1", "huggingface.co"),
        allow_http_model_urls=True,
        allow_private_urls=True,
        model_read_timeout_s=5.0,
        model_lock_timeout_s=20.0,
    )
