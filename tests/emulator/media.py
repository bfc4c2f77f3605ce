"""The pictures the emulated nodes pass around, and the MP4 SaveVideo writes.

Frames are PIL images; a still video repeats one image object, which is converted for the encoder once.
"""

from __future__ import annotations

import functools
import itertools
import struct
from fractions import Fraction
from typing import Any

from PIL import Image

Frames = list[Image.Image]


def load_image(path: str) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


def fit(img: Image.Image, width: int, height: int) -> Image.Image:
    """Scaled to width x height, the centre cropped to that aspect first (as the Wan nodes' "center" crop)."""
    w, h = img.size
    if w * height > h * width:
        cut = round((w - h * width / height) / 2)
        img = img.crop((cut, 0, w - cut, h))
    elif w * height < h * width:
        cut = round((h - w * height / width) / 2)
        img = img.crop((0, cut, w, h - cut))
    return img.resize((width, height), Image.Resampling.BILINEAR)


def as_frames(images: Image.Image | Frames) -> Frames:
    """An IMAGE as a list of frames (LoadImage's is one picture)."""
    return images if isinstance(images, list) else [images]


def video_frames(
    width: int, height: int, count: int, start: Image.Image | Frames | None, end: Image.Image | None
) -> Frames:
    """What a Wan video of a start (and end) image shows here: the start image held, or a cross-fade to the end
    image (grey where there is no start image). Several start frames (an extension) come first, then the last
    of them is held or cross-faded."""
    given = [fit(f, width, height) for f in as_frames(start)[:count]] if start is not None else []
    first = given.pop() if given else Image.new("RGB", (width, height), (128,) * 3)
    if end is None:
        return given + [first] * (count - len(given))
    last = fit(end, width, height)
    rest = count - len(given)
    return given + [Image.blend(first, last, i / (rest - 1)) if rest > 1 else last for i in range(rest)]


def read_mp4(path: str) -> tuple[Frames, float]:
    """The frames and frame rate of an MP4 (LoadVideo with GetVideoComponents)."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        frames = [frame.to_image() for frame in container.decode(stream)]
        return frames, float(stream.average_rate or stream.guessed_rate or 0)


def interpolate(frames: Frames, multiplier: int) -> Frames:
    """``(n - 1) * multiplier + 1`` frames: each frame, and ``multiplier - 1`` blends between two neighbours."""
    out = frames[:1]
    for a, b in itertools.pairwise(frames):
        out += [a if a is b else Image.blend(a, b, k / multiplier) for k in range(1, multiplier)]
        out.append(b)
    return out


@functools.cache
def h264_encoder() -> str:
    """libx264 where the bundled FFmpeg has it (it honours ``crf``), else MPEG-4 part 2."""
    import av

    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def write_mp4(
    path: str, frames: Frames, fps: float, crf: float | None = None, padding_mb: float = 0.0
) -> None:
    import av

    encoder = h264_encoder()
    options = {"preset": "ultrafast"} if encoder == "libx264" else {}
    if crf is not None and encoder == "libx264":
        options["crf"] = str(crf)
    planes: dict[int, Any] = {}
    with av.open(path, mode="w") as out:
        stream: Any = out.add_stream(encoder, rate=Fraction(round(fps * 1000), 1000), options=options)
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = "yuv420p"
        for img in frames:
            if id(img) not in planes:
                planes[id(img)] = av.VideoFrame.from_image(img).reformat(format="yuv420p").to_ndarray()
            out.mux(stream.encode(av.VideoFrame.from_ndarray(planes[id(img)], format="yuv420p")))
        out.mux(stream.encode(None))
    if padding_mb > 0:
        append_free_box(path, int(padding_mb * 1024 * 1024))


def append_free_box(path: str, size: int) -> None:
    """A top-level ``free`` box of ``size`` bytes at the end: players skip it, the MP4 stays valid."""
    size = max(size, 16)
    with open(path, "ab") as fh:
        fh.write(struct.pack(">I4sQ", 1, b"free", size))
        fh.truncate(fh.tell() + size - 16)
