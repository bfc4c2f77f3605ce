"""Progress for people: a log line every interval with bytes, rate and time left, never one per chunk."""

from __future__ import annotations

import logging

import pytest

from worker.models.progress import ProgressLog, human_bytes, human_seconds


def test_lines_are_rate_limited_and_say_bytes_rate_and_time_left(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [100.0]
    monkeypatch.setattr("worker.models.progress.time.monotonic", lambda: now[0])
    caplog.set_level(logging.INFO, logger="worker.models")
    calls: list[tuple[int, int | None]] = []
    progress = ProgressLog(
        logging.getLogger("worker.models"),
        "x.safetensors",
        interval_s=15,
        callback=lambda d, t: calls.append((d, t)),
    )
    total = 10_000_000_000
    for step in range(1, 312):  # 31 s of updates, ten a second, at 100 MB/s
        now[0] = 100.0 + step / 10
        progress(step * 10_000_000, total)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0] == "downloading x.safetensors: 1.5 GB of 10.0 GB (15%), 100.0 MB/s, about 1 min 25 s left"
    assert 28 <= len(calls) <= 32  # about once a second
    assert progress.summary(3_110_000_000) == "3.1 GB in 31 s (100.0 MB/s)"


def test_human_units() -> None:
    assert human_bytes(999) == "999 B"
    assert human_bytes(14_294_742_832) == "14.3 GB"
    assert human_seconds(59.6) == "1 min 00 s"
    assert human_seconds(7322) == "2 h 02 min"
