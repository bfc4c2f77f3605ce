"""Download and hashing progress for people: a log line a few times a minute, never one per chunk."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

Callback = Callable[[int, int | None], None]


def human_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(count) < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} GB"


def human_seconds(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class ProgressLog:
    """Turns (bytes done, total) updates into a log line every ``interval_s`` and a callback every second."""

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        interval_s: float = 15.0,
        callback: Callback | None = None,
        callback_interval_s: float = 1.0,
        verb: str = "downloading",
    ) -> None:
        self.logger = logger
        self.what = what
        self.interval_s = interval_s
        self.callback = callback
        self.callback_interval_s = callback_interval_s
        self.verb = verb
        self.started = time.monotonic()
        self.first_done: int | None = None
        self._last_log = (self.started, 0)
        self._last_callback = 0.0

    def __call__(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        if self.first_done is None:
            self.first_done = done
            self._last_log = (now, done)
        complete = total is not None and done >= total
        if self.callback is not None and (complete or now - self._last_callback >= self.callback_interval_s):
            self._last_callback = now
            try:
                self.callback(done, total)
            except Exception:  # a failing progress report must not stop the download
                self.logger.debug("the progress callback failed", exc_info=True)
        last_time, last_done = self._last_log
        if now - last_time >= self.interval_s:
            self._last_log = (now, done)
            self.logger.info("%s", self.line(done, total, (done - last_done) / max(now - last_time, 1e-9)))

    def line(self, done: int, total: int | None, rate: float) -> str:
        text = f"{self.verb} {self.what}: {human_bytes(done)}"
        if total:
            text += f" of {human_bytes(total)} ({100 * done / total:.0f}%)"
        text += f", {human_bytes(rate)}/s"
        if total and rate > 0:
            text += f", about {human_seconds((total - done) / rate)} left"
        return text

    def summary(self, moved: int) -> str:
        """``14.3 GB in 1 min 35 s (150.2 MB/s)``: what this run moved, and how fast."""
        elapsed = time.monotonic() - self.started
        return (
            f"{human_bytes(moved)} in {human_seconds(elapsed)} ({human_bytes(moved / max(elapsed, 1e-9))}/s)"
        )
