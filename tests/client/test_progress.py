"""What wan-video draws: a live rich bar on a terminal, plain lines elsewhere, and the batch table."""

from __future__ import annotations

import io
import re

from worker.client import Progress
from worker.client.progress import ProgressBar, format_elapsed, print_table

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_a_terminal_gets_a_live_bar_that_goes_away() -> None:
    stream = io.StringIO()
    bar = ProgressBar(stream, tty=True)
    bar(Progress("queued"))
    bar(Progress("sampling", 2, 4))
    bar.note("job j-1 on endpoint x")
    bar.close()
    text = ANSI.sub("", stream.getvalue())
    assert "in queue" in text and "sampling" in text and "2/4" in text and "0:00:0" in text
    assert "━" in text and "job j-1 on endpoint x\n" in text
    assert stream.getvalue().rstrip("\n").endswith("\x1b[2K"), "the bar is erased at the end"


def test_other_streams_get_a_plain_line_when_something_changes() -> None:
    stream = io.StringIO()
    bar = ProgressBar(stream, tty=False)
    for update in (Progress("queued"), Progress("queued"), Progress("models"), Progress("sampling", 1, 4)):
        bar(update)
    bar(Progress("sampling", 1, 4))
    bar.note("saved")
    bar.close()
    assert stream.getvalue().splitlines() == [
        "in queue (0:00)",
        "checking models (0:00)",
        "sampling 1/4 (0:00)",
        "saved",
    ]


def test_quiet_prints_nothing() -> None:
    for tty in (True, False):
        stream = io.StringIO()
        bar = ProgressBar(stream, enabled=False, tty=tty)
        bar(Progress("inputs"))
        bar.note("x")
        bar.close()
        assert stream.getvalue() == ""


def test_the_table_has_aligned_columns_and_never_wraps() -> None:
    stream = io.StringIO()
    long_error = "invalid_image: " + "x" * 300
    print_table(
        ("image", "status", "error"),
        [("a.png", "done", "-"), ("long_name.png", "failed", long_error)],
        stream,
    )
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3 and "\x1b" not in stream.getvalue()
    assert [line.index(word) for line, word in zip(lines, ("status", "done", "failed"), strict=True)] == [
        15
    ] * 3
    assert lines[2].rstrip().endswith(long_error) and lines[0].startswith("image ")


def test_format_elapsed() -> None:
    assert (
        format_elapsed(59.9) == "0:59" and format_elapsed(3725) == "1:02:05" and format_elapsed(-1) == "0:00"
    )
