"""The video a job extends: fetched and checked like an input image, and measured from its MP4 index (``moov``:
the video track's sample description, sizes and durations), so no decoder runs before ComfyUI's own."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from . import media, schema
from .config import Settings
from .errors import InvalidImage, InvalidInput

CODECS = (b"avc1", b"avc3", b"hvc1", b"hev1", b"vp09", b"av01")
"""The MP4 sample entries of the video ComfyUI's LoadVideo decodes: H.264, H.265, VP9, AV1."""


@dataclass(frozen=True)
class GivenVideo:
    data: bytes
    width: int
    height: int
    frames: int
    fps: float
    extension = "mp4"
    mime = "video/mp4"


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    while start + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, start)
        head = 16 if size == 1 else 8
        size = struct.unpack_from(">Q", data, start + 8)[0] if size == 1 else size or end - start
        if size < head or start + size > end:
            raise ValueError(f"is cut short (its {kind.decode(errors='replace')!r} box)")
        yield kind, start + head, start + size
        start += size


def _find(data: bytes, start: int, end: int, *path: bytes) -> tuple[int, int]:
    """(payload start, end) of the first box along ``path``."""
    for kind, begin, stop in _boxes(data, start, end):
        if kind == path[0]:
            return (begin, stop) if len(path) == 1 else _find(data, begin, stop, *path[1:])
    raise ValueError(f"has no {path[0].decode(errors='replace')!r} box")


def probe_mp4(data: bytes) -> GivenVideo:
    """The first video track's coded size, frame count and mean frame rate; ValueError says what is wrong."""
    if data[4:8] != b"ftyp":
        raise ValueError("is not an MP4 video (recognised by content)")
    for kind, begin, end in _boxes(data, *_find(data, 0, len(data), b"moov")):
        hdlr = _find(data, begin, end, b"mdia", b"hdlr")[0] if kind == b"trak" else 0
        if not hdlr or data[hdlr + 8 : hdlr + 12] != b"vide":
            continue
        mdhd = _find(data, begin, end, b"mdia", b"mdhd")[0]
        stbl = _find(data, begin, end, b"mdia", b"minf", b"stbl")
        stsd, stsz, stts = (_find(data, *stbl, box)[0] for box in (b"stsd", b"stsz", b"stts"))
        if data[stsd + 12 : stsd + 16] not in CODECS:
            raise ValueError(f"is {data[stsd + 12 : stsd + 16]!r} video; send H.264, H.265, VP9 or AV1")
        (timescale,) = struct.unpack_from(">I", data, mdhd + (20 if data[mdhd] == 1 else 12))
        (frames,) = struct.unpack_from(">I", data, stsz + 8)
        (runs,) = struct.unpack_from(">I", data, stts + 4)
        ticks = sum(n * d for n, d in struct.iter_unpack(">II", data[stts + 8 : stts + 8 + 8 * runs]))
        width, height = struct.unpack_from(">HH", data, stsd + 40)
        return GivenVideo(data, width, height, frames, frames * timescale / ticks if ticks else 0.0)
    raise ValueError("has no video track")


def load(job: schema.JobInput, settings: Settings) -> GivenVideo:
    """The job's video, checked; the job takes its size and fps (blocking: runs in a thread)."""
    field = next(f for f in schema.EXTEND_SOURCES if getattr(job, f))
    value = getattr(job, field)

    def bad(problem: object) -> InvalidImage:
        return InvalidImage(f"{field} {problem}", details=[{"field": field}])

    limits = media.ImageLimits.from_settings(settings)
    data = media.read_source(field, value, limits, settings.volume_root, accepted=frozenset({"video/mp4"}))
    try:
        video = probe_mp4(data)
    except struct.error:
        raise bad("is a damaged MP4") from None
    except ValueError as exc:
        raise bad(exc) from None
    sides = [schema.round_to_multiple(side, 16) for side in (video.width, video.height)]
    most_frames = schema.MAX_OUTPUT_FRAMES - job.length + job.extend_frames
    if not job.extend_frames <= video.frames <= most_frames:
        raise bad(f"has {video.frames} frames; {job.extend_frames} (extend_frames) to {most_frames} fit")
    if video.width * video.height > settings.max_input_image_pixels or min(sides) < 128 or max(sides) > 1920:
        raise bad(f"is {video.width}x{video.height}; sides of 128 to 1920 and MAX_INPUT_IMAGE_PIXELS fit")
    if not 1.0 <= video.fps <= schema.MAX_OUTPUT_FPS:
        raise bad(f"is {video.fps:g} fps; 1 to {schema.MAX_OUTPUT_FPS:g} fps fit")
    kept = {"width": (video.width, sides[0]), "height": (video.height, sides[1]), "fps": (video.fps,) * 2}
    for name, (used, fits) in kept.items():
        if name in job.model_fields_set and abs(getattr(job, name) - fits) > 0.01:
            message = f"must be the video's ({used:g}) or left out, not {getattr(job, name):g}"
            raise InvalidInput(f"{name} {message}", details=[{"field": name, "message": message}])
        setattr(job, name, used)
    job.adjustments = [a for a in job.adjustments if a.field not in ("width", "height")]
    return video


def report(video: GivenVideo, job: schema.JobInput) -> dict[str, Any]:
    """The result's frame counts: the given video's, the new ones after the overlap, and the delivered."""
    delivered = video.frames + job.length - job.extend_frames
    counts = {"given": video.frames, "new": delivered - video.frames, "delivered": delivered}
    return {"frames": counts, "output_length": delivered}
