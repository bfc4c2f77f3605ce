"""Input images: fetch from a URL, decode from base64, or read from the volume; then check what they are.

Every check happens before the bytes go anywhere: URLs are fetched through :mod:`worker.netsafe` (public
addresses only, every redirect checked) with a size cap and an overall deadline; base64 is measured before it
is decoded; paths must resolve inside the volume. The bytes must be a still PNG, JPEG or WebP, recognised by
content (Pillow reads the header), whose declared dimensions stay within the pixel cap (so a decompression bomb
is never decoded), and which decodes whole.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import requests
import urllib3
from PIL import Image, UnidentifiedImageError

from . import netsafe
from .config import Settings
from .errors import ImageFetchFailed, InvalidImage, InvalidInput, UrlNotAllowed, WorkerError

ImageFormat = Literal["png", "jpeg", "webp"]
_EXTENSIONS: dict[ImageFormat, str] = {"png": "png", "jpeg": "jpg", "webp": "webp"}
_FORMATS: dict[str, ImageFormat] = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}
"""Pillow's format names of the images a job may send."""
_DATA_URI = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,", re.I
)
IMAGE_MIME = frozenset({"image/png", "image/jpeg", "image/jpg", "image/webp"})
MEDIA_MIME = IMAGE_MIME | {"video/mp4", "video/webm"}
"""Data URI types of a file a workflow job uploads: an image, or a video for LoadVideo."""
FETCH_DEADLINE_S = 60.0
CHUNK = 64 * 1024


@dataclass(frozen=True)
class ImageData:
    """A checked input image."""

    data: bytes
    format: ImageFormat
    width: int
    height: int

    @property
    def extension(self) -> str:
        return _EXTENSIONS[self.format]

    @property
    def mime(self) -> str:
        return f"image/{self.format}"


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int
    allow_private_urls: bool = False
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0
    deadline_s: float = FETCH_DEADLINE_S

    @classmethod
    def from_settings(cls, s: Settings) -> ImageLimits:
        return cls(int(s.max_input_image_mb * 1024 * 1024), s.max_input_image_pixels, s.allow_private_urls)


# --------------------------------------------------------------------------------------------- sources


def decode_base64(value: str, *, field: str, max_bytes: int, accepted: frozenset[str] = IMAGE_MIME) -> bytes:
    """Raw base64 or a ``data:<accepted type>;base64,`` URI; the size is checked before anything is decoded."""
    text, bad = value.strip(), _image_problem(field)
    match = _DATA_URI.match(text)
    if match:
        mime = (match.group("mime") or "").lower()
        if mime not in accepted:
            raise bad(f"is a data URI of type {mime or 'none'!r}; only {', '.join(sorted(accepted))} fit")
        if not match.group("b64"):
            raise bad("is a data URI without ';base64'")
        text = text[match.end() :]
    elif text[:5].lower() == "data:":
        raise bad("is not a valid data URI")
    # Every 4 base64 characters carry 3 bytes; whitespace only makes the estimate larger, never smaller.
    estimated = (len(text) * 3) // 4
    if estimated > max_bytes + 3:
        raise bad(
            f"is too large: about {estimated / 1e6:.1f} MB decoded, the limit is "
            f"{max_bytes / 1e6:.1f} MB (MAX_INPUT_IMAGE_MB); send a URL or a smaller image"
        )
    compact = re.sub(r"\s+", "", text)
    compact = compact.replace("-", "+").replace("_", "/")
    compact += "=" * (-len(compact) % 4)
    try:
        data = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise bad("is not valid base64") from None
    if len(data) > max_bytes:
        raise bad(f"is larger than {max_bytes / 1e6:.1f} MB")
    return data


def read_volume_path(value: str, *, field: str, volume_root: Path, max_bytes: int) -> bytes:
    """A file inside the volume: relative to its root or absolute, symlinks resolved before the check."""

    def refuse(message: str) -> InvalidInput:
        return InvalidInput(message, details=[{"field": field}])

    if "\x00" in value:
        raise refuse(f"{field} must not contain NUL bytes")
    root = volume_root.resolve()
    candidate = Path(value)
    if not candidate.is_absolute():
        candidate = root / candidate
    try:
        resolved = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        raise refuse(f"{field}: no file at {value!r} on the volume ({root})") from None
    if not resolved.is_relative_to(root):
        raise refuse(f"{field} must point inside the volume ({root}); {value!r} leads outside it")
    if not resolved.is_file():
        raise refuse(f"{field}: {value!r} is not a regular file")
    size = resolved.stat().st_size
    if size > max_bytes:
        raise _image_problem(field)(
            f"is {size / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.1f} MB (MAX_INPUT_IMAGE_MB)"
        )
    with open(resolved, "rb") as handle:
        return handle.read(max_bytes + 1)


def fetch_url(
    url: str,
    *,
    field: str,
    limits: ImageLimits,
    session: requests.Session | None = None,
    resolver: netsafe.Resolver = netsafe.system_resolver,
) -> bytes:
    """GET an image: public addresses only, redirects checked, size cap, connect/read timeouts, a deadline."""
    own = session is None
    sess = session or netsafe.make_session(allow_private=limits.allow_private_urls, pool_size=2)
    shown = netsafe.redact_url(url)
    started = time.monotonic()

    def fail(error: type[WorkerError], problem: str) -> WorkerError:
        return error(f"{field}: {shown} {problem}", details=[{"field": field}])

    try:
        response = netsafe.open_checked(
            sess,
            url,
            field=field,
            timeout=(limits.connect_timeout_s, limits.read_timeout_s),
            allow_private=limits.allow_private_urls,
            resolver=resolver,
        )
        with response:
            if response.status_code != 200:
                raise fail(ImageFetchFailed, f"answered HTTP {response.status_code}")
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > limits.max_bytes:
                raise fail(
                    InvalidImage,
                    f"is {int(declared) / 1e6:.1f} MB; the limit is "
                    f"{limits.max_bytes / 1e6:.1f} MB (MAX_INPUT_IMAGE_MB)",
                )
            chunks: list[bytes] = []
            received = 0
            while True:
                # read1 returns what has arrived, so a server that drips bytes meets the deadline
                chunk = response.raw.read1(CHUNK)
                if not chunk:
                    break
                received += len(chunk)
                if received > limits.max_bytes:
                    raise fail(
                        InvalidImage, f"is larger than {limits.max_bytes / 1e6:.1f} MB (MAX_INPUT_IMAGE_MB)"
                    )
                if time.monotonic() - started > limits.deadline_s:
                    raise fail(ImageFetchFailed, f"took longer than {limits.deadline_s:.0f} s to download")
                chunks.append(chunk)
            return b"".join(chunks)
    except (ImageFetchFailed, InvalidImage, UrlNotAllowed):
        raise
    except (requests.Timeout, urllib3.exceptions.TimeoutError):
        raise fail(ImageFetchFailed, "timed out") from None
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise ImageFetchFailed(
            f"{field}: could not fetch {shown} ({exc.__class__.__name__})", details=[{"field": field}]
        ) from None
    finally:
        if own:
            sess.close()


# --------------------------------------------------------------------------------------------- content

Image.MAX_IMAGE_PIXELS = None  # the worker's own cap, MAX_INPUT_IMAGE_PIXELS, is checked before decoding


def check_image(data: bytes, *, field: str, max_pixels: int) -> ImageData:
    """Accept a still PNG, JPEG or WebP, whole, with at most ``max_pixels`` pixels: its header is checked
    before any pixel is decoded (so a decompression bomb is refused there), then one decode finds damage."""
    problem = _image_problem(field)
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise problem("is not a PNG, JPEG or WebP image (recognised by content, not by name)") from None
    except (OSError, ValueError, SyntaxError, EOFError):
        raise problem("is a damaged or truncated image") from None
    kind = _FORMATS.get(image.format or "")
    if kind is None:
        raise problem(f"is a {image.format} image; send a PNG, JPEG or WebP still image")
    if getattr(image, "is_animated", False):
        raise problem("is animated; send a still image")
    width, height = image.size
    if width * height > max_pixels:
        raise problem(
            f"is {width}x{height} pixels; at most {max_pixels:,} pixels are accepted (MAX_INPUT_IMAGE_PIXELS)"
        )
    try:
        image.load()
    except (OSError, ValueError, SyntaxError, EOFError):
        raise problem(f"is a damaged or truncated {image.format} image") from None
    finally:
        image.close()
    return ImageData(data=data, format=kind, width=width, height=height)


def _image_problem(field: str) -> Callable[[str], InvalidImage]:
    return lambda message: InvalidImage(f"{field} {message}", details=[{"field": field}])


def read_source(
    field: str, value: str, limits: ImageLimits, volume_root: Path, accepted: frozenset[str] = IMAGE_MIME
) -> bytes:
    """The bytes a ``*_url``, ``*_base64`` or ``*_path`` field names, within ``limits``."""
    if field.endswith("_url"):
        return fetch_url(value, field=field, limits=limits)
    if field.endswith("_base64"):
        return decode_base64(value, field=field, max_bytes=limits.max_bytes, accepted=accepted)
    return read_volume_path(value, field=field, volume_root=volume_root, max_bytes=limits.max_bytes)
