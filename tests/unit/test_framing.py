"""The video's size from the start image: the aspect ratio at a preset, rounded to multiples of 16."""

from __future__ import annotations

import pytest

from worker.framing import frame, preset_size
from worker.schema import JobInput, parse_job_input

BASE = {"prompt": "p", "image_base64": "eA=="}


def framed(image: tuple[int, int], **fields: object) -> JobInput:
    job = parse_job_input({**BASE, **fields})
    frame(job, *image)
    return job


@pytest.mark.parametrize(
    ("preset", "image", "size"),
    [
        ("480p", (640, 360), (848, 480)),
        ("480p", (360, 640), (480, 848)),
        ("480p", (1024, 1024), (480, 480)),
        ("720p", (1920, 1080), (1280, 720)),
        ("720p", (1080, 1350), (720, 896)),
        ("480p", (4000, 400), (1920, 192)),
    ],
)
def test_preset_keeps_the_image_aspect_on_multiples_of_16(
    preset: str, image: tuple[int, int], size: tuple[int, int]
) -> None:
    assert preset_size(preset, *image) == size
    assert all(side % 16 == 0 for side in size)


def test_a_landscape_image_gives_a_landscape_video_and_says_why() -> None:
    job = framed((640, 360))
    assert (job.width, job.height) == (848, 480)
    reasons = {a.field: a for a in job.adjustments}
    assert reasons["width"].used == 848 and reasons["width"].requested is None
    assert "640x360" in reasons["height"].reason and "480p" in reasons["height"].reason


def test_one_given_side_takes_the_other_from_the_image() -> None:
    job = framed((640, 360), width=1280)
    assert (job.width, job.height) == (1280, 720)
    assert [a.field for a in job.adjustments] == ["height"]
    job = framed((640, 360), height=480, resolution="720p")
    assert (job.width, job.height) == (848, 480)


def test_explicit_width_and_height_are_kept() -> None:
    job = framed((640, 360), width=480, height=832)
    assert (job.width, job.height) == (480, 832) and job.adjustments == []


def test_an_unknown_preset_is_refused_with_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="480p"):
        parse_job_input({**BASE, "resolution": "1080p"})
