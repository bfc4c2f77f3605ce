"""The progress bar: redrawn in place on a TTY, plain lines elsewhere."""

from __future__ import annotations

import io

from worker.client import Progress
from worker.client.progress import ProgressBar, format_elapsed, render_bar


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_tty_redraws_one_line() -> None:
    stream, clock = io.StringIO(), Clock()
    bar = ProgressBar(stream, tty=True, width=8, clock=clock)
    bar.update(Progress("queued"))
    clock.now += 65
    bar.update(Progress("sampling", 2, 4))
    bar.close()
    text = stream.getvalue()
    assert "\n" not in text
    assert text.count("\r") == 3 and text.endswith("\r\x1b[K")
    assert "in queue" in text and "[--------]" in text
    assert "sampling" in text and "[####----]" in text and "2/4" in text and "1:05" in text


def test_plain_lines_only_when_something_changes() -> None:
    stream, clock = io.StringIO(), Clock()
    bar = ProgressBar(stream, tty=False, clock=clock)
    for update in (Progress("queued"), Progress("queued"), Progress("models"), Progress("sampling", 1, 4)):
        clock.now += 1
        bar.update(update)
    bar.update(Progress("sampling", 1, 4))
    bar.note("saved")
    bar.close()
    assert stream.getvalue().splitlines() == [
        "in queue (0:01)",
        "checking models (0:03)",
        "sampling 1/4 (0:04)",
        "saved",
    ]


def test_note_clears_the_bar_first_and_disabled_prints_nothing() -> None:
    stream = io.StringIO()
    bar = ProgressBar(stream, tty=True)
    bar.update(Progress("inputs"))
    bar.note("job j-1")
    assert stream.getvalue().endswith("\r\x1b[Kjob j-1\n")
    quiet = io.StringIO()
    off = ProgressBar(quiet, enabled=False, tty=True)
    off.update(Progress("inputs"))
    off.note("x")
    off.close()
    assert quiet.getvalue() == ""


def test_helpers() -> None:
    assert render_bar(None, 4) == "[----]" and render_bar(1.5, 4) == "[####]"
    assert format_elapsed(59.9) == "0:59" and format_elapsed(3725) == "1:02:05"
    assert ProgressBar(io.StringIO()).tty is False
