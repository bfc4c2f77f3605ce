"""Images and videos the emulated nodes pass around and write.

An :class:`ImageBatch` is a list of frames, each a PIL image or a blend of two; nothing is rendered until a
saver writes the file, so an 81-frame cross-fade costs a handful of colour conversions and one encode.
"""

from __future__ import annotations

import functools
import json
import os
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from PIL import Image, ImageSequence

# PyAV and numpy are imported when a video is written: that keeps the emulator's start-up fast.


def _np() -> Any:
    """numpy if installed (blending planes with it is ~20x faster than with Pillow), else None."""
    try:
        import numpy
    except ImportError:  # pragma: no cover - numpy comes with PyAV in practice
        return None
    return numpy


RESAMPLE = {
    "nearest-exact": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "area": Image.Resampling.BOX,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@functools.cache
def h264_encoder() -> str:
    """Encoder SaveVideo uses: libx264 when the bundled FFmpeg has it, otherwise MPEG-4 part 2."""
    import av

    for name in ("libx264", "h264"):
        if name in av.codecs_available:
            try:
                codec = av.codec.Codec(name, "w")
            except Exception:
                continue
            if codec.name in ("libx264", "libopenh264", "h264"):
                return codec.name
    return "mpeg4"


@dataclass(frozen=True, eq=False)
class Frame:
    """One frame: ``a``, or ``a`` blended towards ``b`` by ``t`` (0..1)."""

    a: Image.Image
    b: Image.Image | None = None
    t: float = 0.0

    def render(self) -> Image.Image:
        if self.b is None or self.t <= 0.0:
            return self.a
        if self.t >= 1.0:
            return self.b
        return Image.blend(self.a, self.b, self.t)


class ImageBatch:
    """A ComfyUI IMAGE: a batch of equally sized RGB frames."""

    def __init__(self, frames: list[Frame]) -> None:
        if not frames:
            raise ValueError("empty image batch")
        self.frames = frames

    @classmethod
    def single(cls, image: Image.Image, count: int = 1) -> ImageBatch:
        frame = Frame(image.convert("RGB") if image.mode != "RGB" else image)
        return cls([frame] * count)

    @property
    def width(self) -> int:
        return self.frames[0].a.size[0]

    @property
    def height(self) -> int:
        return self.frames[0].a.size[1]

    def __len__(self) -> int:
        return len(self.frames)

    def __str__(self) -> str:
        return f"tensor(<{len(self)}x{self.height}x{self.width}x3 float32 image batch>)"

    def map_images(self, fn: Callable[[Image.Image], Image.Image]) -> ImageBatch:
        done: dict[int, Image.Image] = {}

        def conv(img: Image.Image) -> Image.Image:
            key = id(img)
            if key not in done:
                done[key] = fn(img)
            return done[key]

        return ImageBatch([Frame(conv(f.a), None if f.b is None else conv(f.b), f.t) for f in self.frames])

    def repeat(self, amount: int) -> ImageBatch:
        return ImageBatch(self.frames * amount)

    def first(self) -> Image.Image:
        return self.frames[0].render()

    def last(self) -> Image.Image:
        return self.frames[-1].render()


def load_image_frames(path: str) -> ImageBatch:
    """Frames of an image file as LoadImage reads them (all frames of the first frame's size)."""
    with Image.open(path) as img:
        frames: list[Image.Image] = []
        size = None
        for page in ImageSequence.Iterator(img):
            rgb = page.convert("RGB")
            if size is None:
                size = rgb.size
            if rgb.size != size:
                continue
            frames.append(rgb.copy())
    return ImageBatch([Frame(f) for f in frames])


def center_crop_resize(img: Image.Image, width: int, height: int, method: str = "bilinear") -> Image.Image:
    """Scale to width x height, cropping the centre to the target aspect first (ComfyUI's "center" crop)."""
    w, h = img.size
    if (w, h) == (width, height):
        return img
    old_aspect = w / h
    new_aspect = width / height
    x = y = 0
    if old_aspect > new_aspect:
        x = round((w - w * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        y = round((h - h * (old_aspect / new_aspect)) / 2)
    if x or y:
        img = img.crop((x, y, w - x, h - y))
    return img.resize((width, height), RESAMPLE.get(method, Image.Resampling.BILINEAR))


def solid(width: int, height: int, color: int) -> Image.Image:
    return Image.new("RGB", (width, height), ((color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF))


class _YuvFrames:
    """Turns frames into encoder-ready video frames, converting each distinct source image once."""

    def __init__(self, width: int, height: int) -> None:
        self.width = width
        self.height = height
        self._planes: dict[int, Any] = {}
        self.np = _np()

    def _yuv(self, img: Image.Image) -> Any:
        import av

        key = id(img)
        if key not in self._planes:
            if img.size != (self.width, self.height):
                img = img.resize((self.width, self.height), Image.Resampling.BILINEAR)
            frame = av.VideoFrame.from_image(img).reformat(format="yuv420p")
            self._planes[key] = frame.to_ndarray().astype(self.np.uint16)
        return self._planes[key]

    def video_frame(self, frame: Frame) -> Any:
        import av

        np = self.np
        if np is None:  # pragma: no cover
            return av.VideoFrame.from_image(frame.render())
        a = self._yuv(frame.a)
        if frame.b is None or frame.t <= 0.0:
            data = a
        else:
            b = self._yuv(frame.b)
            k = min(256, max(0, round(frame.t * 256)))
            data = (a * (256 - k) + b * k) >> 8
        return av.VideoFrame.from_ndarray(data.astype(np.uint8), format="yuv420p")


def _encode(
    path: str,
    batch: ImageBatch,
    fps: float,
    codec: str,
    options: Mapping[str, str],
    metadata: Mapping[str, str] | None = None,
    container_options: Mapping[str, str] | None = None,
) -> None:
    import av

    rate = Fraction(round(fps * 1000), 1000)
    with av.open(path, mode="w", options=dict(container_options or {})) as out:
        for key, value in (metadata or {}).items():
            out.metadata[key] = value
        stream = out.add_stream(codec, rate=rate)
        stream.width = batch.width
        stream.height = batch.height
        stream.pix_fmt = "yuv420p"
        stream.options = dict(options)
        stream.thread_count = 2
        conv = _YuvFrames(batch.width, batch.height)
        for frame in batch.frames:
            for packet in stream.encode(conv.video_frame(frame)):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def write_mp4(
    path: str,
    batch: ImageBatch,
    fps: float,
    metadata: Mapping[str, Any] | None = None,
    padding_mb: float = 0.0,
    crf: float | None = None,
) -> None:
    """SaveVideo: H.264 (yuv420p) in MP4, the prompt stored as a metadata tag, as ComfyUI writes it.

    ``crf`` (SaveVideo's ``codec.encoding.crf`` when ``re-encode`` is chosen) is passed to libx264 as ComfyUI
    passes it (``str(crf)``): lower values make larger files. The MPEG-4 fallback encoder ignores it.
    """
    tags = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    encoder = h264_encoder()
    options = {"preset": "ultrafast"} if encoder == "libx264" else {}
    if crf is not None and encoder == "libx264":
        options["crf"] = str(crf)
    _encode(path, batch, fps, encoder, options, tags, {"movflags": "use_metadata_tags"})
    if padding_mb > 0:
        append_free_box(path, int(padding_mb * 1024 * 1024))


def write_webm(path: str, batch: ImageBatch, fps: float, codec: str, crf: float) -> None:
    """SaveWEBM: VP9 or AV1 in WebM."""
    import av

    if codec == "vp9":
        _encode(
            path, batch, fps, "libvpx-vp9", {"crf": str(int(crf)), "deadline": "realtime", "cpu-used": "8"}
        )
    elif codec == "av1":
        for name in ("libsvtav1", "libaom-av1"):
            if name in av.codecs_available:
                _encode(path, batch, fps, name, {"crf": str(int(crf)), "preset": "12"})
                return
        raise ValueError("no AV1 encoder available")
    else:
        raise ValueError(f"unsupported codec {codec!r}")


def write_webp(path: str, batch: ImageBatch, fps: float, lossless: bool, quality: int, method: str) -> None:
    """SaveAnimatedWEBP."""
    methods = {"default": 4, "fastest": 0, "slowest": 6}
    images = [f.render() for f in batch.frames]
    images[0].save(
        path,
        save_all=True,
        append_images=images[1:],
        duration=int(1000.0 / fps),
        lossless=lossless,
        quality=quality,
        method=methods.get(method, 4),
    )


def append_free_box(path: str, size: int) -> None:
    """Append a top-level ``free`` box of ``size`` bytes: players skip it, the MP4 stays valid."""
    size = max(size, 16)
    with open(path, "ab") as fh:
        if size < 2**32:
            fh.write(struct.pack(">I4s", size, b"free"))
            remaining = size - 8
        else:
            fh.write(struct.pack(">I4sQ", 1, b"free", size))
            remaining = size - 16
        chunk = b"\0" * (1024 * 1024)
        while remaining > 0:
            n = min(remaining, len(chunk))
            fh.write(chunk[:n])
            remaining -= n


def probe(path: str) -> dict[str, Any]:
    """Codec, size, frame count and rate of a video file (for tests and the control API)."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(video=0))
        return {
            "codec": stream.codec_context.name,
            "width": stream.codec_context.width,
            "height": stream.codec_context.height,
            "frames": frames,
            "fps": float(stream.average_rate) if stream.average_rate else None,
            "size": os.path.getsize(path),
        }
