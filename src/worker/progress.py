"""Progress updates to RunPod: the stage, and step/steps while sampling.

``runpod.serverless.progress_update`` is fire-and-forget on its own thread and connection, so updates sent
back to back can arrive out of order, even after the result. The reporter sends at most a few per second and
nothing once the job is delivering its result.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("worker.progress")

Sender = Callable[[dict[str, Any], dict[str, Any]], None]


def runpod_sender(job: dict[str, Any], update: dict[str, Any]) -> None:
    from runpod.serverless import progress_update

    progress_update(job, update)


class ProgressReporter:
    """Throttled progress for one job; a no-op when ``enabled`` is false (the local API has no channel)."""

    def __init__(
        self,
        job: dict[str, Any],
        *,
        enabled: bool,
        min_interval_s: float = 0.5,
        sender: Sender = runpod_sender,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.job = job
        self.enabled = enabled
        self.min_interval_s = min_interval_s
        self.sender = sender
        self.clock = clock
        self._lock = threading.Lock()
        self._last_sent = float("-inf")
        self._closed = False
        self.stage_name = ""
        self.sent: list[dict[str, Any]] = []

    def stage(self, name: str, **extra: Any) -> None:
        self.stage_name = name
        self._send({"stage": name, **extra}, force=True)

    def step(self, value: int, total: int) -> None:
        self._send({"stage": self.stage_name, "step": value, "steps": total}, force=value >= total)

    def close(self) -> None:
        """No update after this: the result is on its way."""
        with self._lock:
            self._closed = True

    def _send(self, update: dict[str, Any], *, force: bool) -> None:
        if not self.enabled:
            return
        with self._lock:
            now = self.clock()
            if self._closed or (not force and now - self._last_sent < self.min_interval_s):
                return
            if force and now - self._last_sent < self.min_interval_s / 4:
                return
            self._last_sent = now
            self.sent.append(update)
        try:
            self.sender(self.job, update)
        except Exception:
            log.debug("progress update failed", exc_info=True)
