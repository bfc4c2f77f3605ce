"""The README repeats two lists the code declares: the error codes and the fields a result reports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from worker import errors
from worker.schema import REPORTED

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    start = README.index(f"\n{title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end]


def codes(cls: type[errors.WorkerError]) -> set[str]:
    return {cls.code}.union(*(codes(sub) for sub in cls.__subclasses__()))


def test_the_readme_lists_every_error_code() -> None:
    listed = set(re.findall(r"^\| `([a-z_]+)` \|", section("## Errors"), flags=re.MULTILINE))
    assert listed == codes(errors.WorkerError)


def test_the_readme_result_shows_what_a_result_reports() -> None:
    example = section("### Result").split("```json", 1)[1].split("```", 1)[0]
    shown = json.loads(example.replace('"<base64 MP4>"', '""'))
    assert {*REPORTED, "adjustments"} <= set(shown)
