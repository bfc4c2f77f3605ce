"""A small progress bar for the terminal that falls back to plain lines when the stream is not a TTY.

On a TTY the bar redraws one line in place::

    sampling           [##########----------]  2/4   0:41

Elsewhere (a log file, CI) it prints a line only when the stage or the step changes.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from .api import Progress

STAGE_LABELS = {
    "queued": "in queue",
    "running": "running",
    "inputs": "fetching inputs",
    "models": "checking models",
    "comfyui": "waiting for ComfyUI",
    "sampling": "sampling",
    "delivering": "delivering",
    "downloading": "downloading",
}
LABEL_WIDTH = 19


def stage_label(stage: str) -> str:
    return STAGE_LABELS.get(stage, stage.replace("_", " "))


def format_elapsed(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def render_bar(fraction: float | None, width: int) -> str:
    """``[####----]``; an empty bar when the fraction is unknown."""
    filled = 0 if fraction is None else round(max(0.0, min(1.0, fraction)) * width)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


class ProgressBar:
    """Shows a job's :class:`Progress`; ``note()`` prints a line above it; ``close()`` ends the line."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        enabled: bool = True,
        width: int = 20,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.width = width
        self.tty = _isatty(self.stream) if tty is None else tty
        self.clock = clock
        self.started = clock()
        self._drawn = False
        self._last_plain = ""

    def __call__(self, progress: Progress) -> None:
        self.update(progress)

    def update(self, progress: Progress) -> None:
        if not self.enabled:
            return
        if self.tty:
            self._draw(self.render(progress))
        else:
            self._plain(progress)

    def render(self, progress: Progress) -> str:
        """The bar's line, without control characters."""
        count = f"{progress.step}/{progress.steps}" if progress.fraction is not None else ""
        elapsed = format_elapsed(self.clock() - self.started)
        label = stage_label(progress.stage)[:LABEL_WIDTH]
        return f"{label:<{LABEL_WIDTH}} {render_bar(progress.fraction, self.width)} {count:>5}  {elapsed}"

    def note(self, text: str) -> None:
        """A line of its own (the bar, if any, is redrawn by the next update)."""
        if not self.enabled:
            return
        self._clear()
        self._write(text + "\n")

    def close(self) -> None:
        """Leave the terminal on a fresh line."""
        self._clear()

    def _plain(self, progress: Progress) -> None:
        text = stage_label(progress.stage)
        if progress.fraction is not None:
            text += f" {progress.step}/{progress.steps}"
        if text != self._last_plain:
            self._last_plain = text
            self._write(f"{text} ({format_elapsed(self.clock() - self.started)})\n")

    def _draw(self, line: str) -> None:
        self._write("\r" + line + "\x1b[K")
        self._drawn = True

    def _clear(self) -> None:
        if self._drawn:
            self._write("\r\x1b[K")
            self._drawn = False

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            self.enabled = False


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
