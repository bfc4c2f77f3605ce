"""Decode an MP4 and report what it holds."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from fractions import Fraction

import av
from PIL import Image


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    width: int
    height: int
    fps: Fraction
    codec: str


def probe(data: bytes) -> VideoInfo:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        rate = stream.average_rate or stream.guessed_rate or Fraction(0)
        return VideoInfo(
            frames,
            stream.codec_context.width,
            stream.codec_context.height,
            Fraction(rate),
            stream.codec_context.name,
        )


def probe_b64(text: str) -> VideoInfo:
    return probe(base64.b64decode(text))


def make_mp4(
    frames: int, size: tuple[int, int] = (160, 128), fps: int = 16, *, codec: str = "libx264"
) -> bytes:
    """An MP4 of ``frames`` frames, each a different shade, at ``size`` and ``fps``."""
    out = io.BytesIO()
    with av.open(out, mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps, options={"preset": "ultrafast"})
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for index in range(frames):
            picture = Image.new("RGB", size, (index * 12 % 256, 90, 160))
            container.mux(stream.encode(av.VideoFrame.from_image(picture)))
        container.mux(stream.encode(None))
    return out.getvalue()
