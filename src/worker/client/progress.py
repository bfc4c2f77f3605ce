"""What ``wan-video`` shows, drawn by rich: a live progress bar on a terminal, else (a log, CI) a plain line
whenever the stage or the step changes; and tables."""

import time
from collections.abc import Sequence
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as LiveBar
from rich.table import Table

from . import Progress

LABELS = dict(
    queued="in queue", inputs="fetching inputs", models="checking models", comfyui="waiting for ComfyUI"
)
"""The worker's stages in words; the others (sampling, delivering ...) are their own."""


def format_elapsed(seconds: float) -> str:
    minutes, secs = divmod(max(0, int(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"


def make_console(stream: TextIO, tty: bool | None = None) -> Console:  # off a terminal: no colours, no wraps
    tty = stream.isatty() if tty is None else tty
    return Console(file=stream, force_terminal=tty, width=None if tty else 100_000, highlight=False)


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]], stream: TextIO) -> None:
    table = Table(*header, box=None, pad_edge=False, header_style="bold")
    for row in rows:
        table.add_row(*row)
    make_console(stream).print(table)


class ProgressBar:
    """Shows a job's :class:`Progress` when called; ``note()`` prints a line above it; ``close()`` removes it."""

    def __init__(self, stream: TextIO, *, enabled: bool = True, tty: bool | None = None) -> None:
        self.console, self.enabled = make_console(stream, tty), enabled
        self.started, self.last = time.monotonic(), ""
        columns = (TextColumn("{task.description:<19}"), BarColumn(), TextColumn("{task.fields[count]:>5}"))
        self.bar = LiveBar(*columns, TimeElapsedColumn(), console=self.console, transient=True)
        self.task = self.bar.add_task("", total=None, count="")

    def __call__(self, progress: Progress) -> None:
        label = LABELS.get(progress.stage, progress.stage.replace("_", " "))
        count = f"{progress.step}/{progress.steps}" if progress.fraction is not None else ""
        if self.enabled and self.console.is_terminal:
            total, done = (progress.steps, progress.step) if count else (None, 0)
            self.bar.update(self.task, description=label, total=total, completed=done, count=count)
            self.bar.start()
        elif (line := f"{label} {count}".rstrip()) != self.last:
            self.last = line
            self.note(f"{line} ({format_elapsed(time.monotonic() - self.started)})")

    def note(self, text: str) -> None:
        if self.enabled:
            self.console.print(text, markup=False, soft_wrap=True)

    def close(self) -> None:
        if self.console.is_terminal:
            self.bar.stop()
