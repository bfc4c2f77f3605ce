"""Progress updates to RunPod: the stage, step/steps while sampling, bytes while downloading a model.

``runpod.serverless.progress_update`` is fire-and-forget on its own thread and connection, so updates sent
back to back can arrive out of order, even after the result. One background thread per job sends them: a new
stage ``stage_interval_s`` after the last update, so that even a job of a second shows every stage, and more
of the same stage (steps, bytes) at most one per ``min_interval_s``. An update that comes sooner waits for its
turn, and is never dropped: while it waits, a newer update of the same stage takes its place (the latest step or
byte count wins), and an update of another stage queues behind it, so that every stage is sent, in order.
``close()`` discards whatever still waits: the result is on its way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

log = logging.getLogger("worker.progress")

Sender = Callable[[dict[str, Any], dict[str, Any]], None]


def runpod_sender(job: dict[str, Any], update: dict[str, Any]) -> None:
    from runpod.serverless import progress_update

    progress_update(job, update)


@dataclass(eq=False)
class ProgressReporter:
    """Throttled progress for one job; a no-op when ``enabled`` is false (the local API has no channel)."""

    job: dict[str, Any]
    _: KW_ONLY
    enabled: bool
    min_interval_s: float = 0.5
    stage_interval_s: float = 0.1  # at most ``min_interval_s``
    sender: Sender = runpod_sender
    clock: Callable[[], float] = time.monotonic
    close_timeout_s: float = 0.5
    stage_name: str = field(default="", init=False)
    _wake: threading.Condition = field(default_factory=threading.Condition, init=False)
    _pending: list[dict[str, Any]] = field(default_factory=list, init=False)
    _last_sent: float = field(default=float("-inf"), init=False)
    _last_stage: str | None = field(default=None, init=False)
    _closed: bool = field(default=False, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.stage_interval_s = min(self.stage_interval_s, self.min_interval_s)

    def stage(self, name: str, **extra: Any) -> None:
        self.stage_name = name
        self._post({"stage": name, **extra})

    def step(self, value: int, total: int) -> None:
        self._post({"stage": self.stage_name, "step": value, "steps": total})

    def download(self, field: str, done: int, total: int | None) -> None:
        """Bytes of one model download (``field`` names the job's URL field); total and percent when known."""
        update: dict[str, Any] = {"stage": self.stage_name, "field": field, "bytes": done}
        if total:
            update.update(total=total, percent=round(min(100.0, 100 * done / total), 1))
        self._post(update)

    def close(self) -> None:
        """No update after this: the result is on its way. Waits for an update being sent, briefly."""
        with self._wake:
            self._closed = True
            self._pending.clear()
            self._wake.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.close_timeout_s)

    def _post(self, update: dict[str, Any]) -> None:
        with self._wake:
            if self._closed or not self.enabled:
                return
            if self._pending and self._pending[-1]["stage"] == update["stage"]:
                self._pending[-1] = update
            else:
                self._pending.append(update)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
                self._thread.start()
            self._wake.notify()

    def _run(self) -> None:
        while (update := self._next()) is not None:
            try:
                self.sender(self.job, update)
            except Exception:
                log.debug("progress update failed", exc_info=True)

    def _next(self) -> dict[str, Any] | None:
        """The next update, once its turn has come; None once closed."""
        with self._wake:
            while not self._closed:
                if not self._pending:
                    self._wake.wait()
                    continue
                new_stage = self._pending[0]["stage"] != self._last_stage
                interval = self.stage_interval_s if new_stage else self.min_interval_s
                wait = self._last_sent + interval - self.clock()
                if wait > 0:
                    self._wake.wait(wait)
                    continue
                self._last_sent = self.clock()
                update = self._pending.pop(0)
                self._last_stage = update["stage"]
                return update
            return None
