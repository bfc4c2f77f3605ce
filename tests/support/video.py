"""Decode an MP4 and report what it holds."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from fractions import Fraction

import av


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
