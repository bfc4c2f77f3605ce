"""Input images: fetch from a URL, decode from base64, or read from the volume; then check what they are.

Every check happens before the bytes go anywhere: URLs are fetched through :mod:`worker.netsafe` (public
addresses only, every redirect checked) with a size cap and an overall deadline; base64 is measured before it
is decoded; paths must resolve inside the volume. The bytes must be a still PNG, JPEG or WebP, recognised by
content, whose header-declared dimensions stay within the pixel cap (so a decompression bomb never reaches
ComfyUI's decoder).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import requests
import urllib3

from . import netsafe
from .errors import ImageFetchFailed, InvalidImage, InvalidInput, UrlNotAllowed

ImageFormat = Literal["png", "jpeg", "webp"]
_EXTENSIONS: dict[ImageFormat, str] = {"png": "png", "jpeg": "jpg", "webp": "webp"}
_DATA_URI = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,", re.I
)
_ACCEPTED_MIME = {"image/png", "image/jpeg", "image/jpg", "image/webp"}
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


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int
    allow_private_urls: bool = False
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0
    deadline_s: float = FETCH_DEADLINE_S


# --------------------------------------------------------------------------------------------- sources


def decode_base64(value: str, *, field: str, max_bytes: int) -> bytes:
    """Raw base64 or a ``data:image/...;base64,`` URI; the size is checked before anything is decoded."""
    text = value.strip()
    match = _DATA_URI.match(text)
    if match:
        mime = (match.group("mime") or "").lower()
        if mime not in _ACCEPTED_MIME:
            raise InvalidImage(
                f"{field} is a data URI of type {mime or 'none'!r}; only image/png, image/jpeg and "
                "image/webp are accepted",
                details=[{"field": field}],
            )
        if not match.group("b64"):
            raise InvalidImage(f"{field} is a data URI without ';base64'", details=[{"field": field}])
        text = text[match.end() :]
    elif text[:5].lower() == "data:":
        raise InvalidImage(f"{field} is not a valid data URI", details=[{"field": field}])
    # Every 4 base64 characters carry 3 bytes; whitespace only makes the estimate larger, never smaller.
    estimated = (len(text) * 3) // 4
    if estimated > max_bytes + 3:
        raise InvalidImage(
            f"{field} is too large: about {estimated / 1e6:.1f} MB decoded, the limit is "
            f"{max_bytes / 1e6:.1f} MB (MAX_INPUT_IMAGE_MB); send a URL or a smaller image",
            details=[{"field": field}],
        )
    compact = re.sub(r"\s+", "", text)
    compact = compact.replace("-", "+").replace("_", "/")
    compact += "=" * (-len(compact) % 4)
    try:
        data = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage(f"{field} is not valid base64", details=[{"field": field}]) from None
    if len(data) > max_bytes:
        raise InvalidImage(f"{field} is larger than {max_bytes / 1e6:.1f} MB", details=[{"field": field}])
    return data


def read_volume_path(value: str, *, field: str, volume_root: Path, max_bytes: int) -> bytes:
    """A file inside the volume: relative to its root or absolute, symlinks resolved before the check."""
    if "\x00" in value:
        raise InvalidInput(f"{field} must not contain NUL bytes", details=[{"field": field}])
    root = volume_root.resolve()
    candidate = Path(value)
    if not candidate.is_absolute():
        candidate = root / candidate
    try:
        resolved = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        raise InvalidInput(
            f"{field}: no file at {value!r} on the volume ({root})", details=[{"field": field}]
        ) from None
    if not resolved.is_relative_to(root):
        raise InvalidInput(
            f"{field} must point inside the volume ({root}); {value!r} leads outside it",
            details=[{"field": field}],
        )
    if not resolved.is_file():
        raise InvalidInput(f"{field}: {value!r} is not a regular file", details=[{"field": field}])
    size = resolved.stat().st_size
    if size > max_bytes:
        raise InvalidImage(
            f"{field} is {size / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.1f} MB (MAX_INPUT_IMAGE_MB)",
            details=[{"field": field}],
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
                raise ImageFetchFailed(
                    f"{field}: {shown} answered HTTP {response.status_code}", details=[{"field": field}]
                )
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > limits.max_bytes:
                raise InvalidImage(
                    f"{field}: {shown} is {int(declared) / 1e6:.1f} MB; the limit is "
                    f"{limits.max_bytes / 1e6:.1f} MB (MAX_INPUT_IMAGE_MB)",
                    details=[{"field": field}],
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
                    raise InvalidImage(
                        f"{field}: {shown} is larger than {limits.max_bytes / 1e6:.1f} MB (MAX_INPUT_IMAGE_MB)",
                        details=[{"field": field}],
                    )
                if time.monotonic() - started > limits.deadline_s:
                    raise ImageFetchFailed(
                        f"{field}: {shown} took longer than {limits.deadline_s:.0f} s to download",
                        details=[{"field": field}],
                    )
                chunks.append(chunk)
            return b"".join(chunks)
    except (ImageFetchFailed, InvalidImage, UrlNotAllowed):
        raise
    except (requests.Timeout, urllib3.exceptions.TimeoutError):
        raise ImageFetchFailed(f"{field}: {shown} timed out", details=[{"field": field}]) from None
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise ImageFetchFailed(
            f"{field}: could not fetch {shown} ({exc.__class__.__name__})", details=[{"field": field}]
        ) from None
    finally:
        if own:
            sess.close()


# --------------------------------------------------------------------------------------------- content


def sniff(data: bytes) -> str:
    """The format named by the magic bytes: png, jpeg, webp, gif, or unknown."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    return "unknown"


def _png_info(data: bytes) -> tuple[int, int, bool, bool]:
    """(width, height, animated, complete) from the chunk list, without decoding pixels."""
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise ValueError("no IHDR")
    width, height = struct.unpack(">II", data[16:24])
    pos, animated, complete = 8, False, False
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"acTL":
            animated = True
        end = pos + 12 + length
        if end > len(data):
            break
        if kind == b"IEND":
            complete = True
            break
        pos = end
    return width, height, animated, complete


def _jpeg_info(data: bytes) -> tuple[int, int, bool, bool]:
    pos = 2
    size: tuple[int, int] | None = None
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            pos += 1
            continue
        marker = data[pos + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            pos += 1 if marker == 0xFF else 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            if pos + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            size = (width, height)
            break
        pos += 2 + length
    if size is None:
        raise ValueError("no frame header")
    complete = b"\xff\xd9" in data[-4096:]
    return size[0], size[1], False, complete


def _webp_info(data: bytes) -> tuple[int, int, bool, bool]:
    (riff_size,) = struct.unpack("<I", data[4:8])
    complete = len(data) >= riff_size + 8
    kind = data[12:16]
    if kind == b"VP8X":
        flags = data[20]
        width = 1 + int.from_bytes(data[24:27], "little")
        height = 1 + int.from_bytes(data[27:30], "little")
        return width, height, bool(flags & 0x02), complete
    if kind == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            raise ValueError("bad VP8 frame")
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF, False, complete
    if kind == b"VP8L":
        if data[20] != 0x2F:
            raise ValueError("bad VP8L signature")
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, False, complete
    raise ValueError("unknown WebP chunk")


_READERS = {"png": _png_info, "jpeg": _jpeg_info, "webp": _webp_info}


def check_image(data: bytes, *, field: str, max_pixels: int) -> ImageData:
    """Accept a still PNG, JPEG or WebP, complete, with at most ``max_pixels`` declared pixels."""
    kind = sniff(data)
    if kind == "gif":
        raise InvalidImage(
            f"{field} is a GIF; send a PNG, JPEG or WebP still image", details=[{"field": field}]
        )
    if kind not in _READERS:
        raise InvalidImage(
            f"{field} is not a PNG, JPEG or WebP image (recognised by content, not by name)",
            details=[{"field": field}],
        )
    try:
        width, height, animated, complete = _READERS[kind](data)
    except (ValueError, struct.error, IndexError):
        raise InvalidImage(f"{field} is a damaged {kind.upper()} image", details=[{"field": field}]) from None
    if not complete:
        raise InvalidImage(f"{field} is a truncated {kind.upper()} image", details=[{"field": field}])
    if animated:
        raise InvalidImage(f"{field} is animated; send a still image", details=[{"field": field}])
    if width < 1 or height < 1:
        raise InvalidImage(f"{field} declares an empty image ({width}x{height})", details=[{"field": field}])
    if width * height > max_pixels:
        raise InvalidImage(
            f"{field} is {width}x{height} pixels; at most {max_pixels:,} pixels are accepted "
            "(MAX_INPUT_IMAGE_PIXELS)",
            details=[{"field": field}],
        )
    fmt: ImageFormat = kind  # type: ignore[assignment]
    return ImageData(data=data, format=fmt, width=width, height=height)


def load_image(
    *,
    field_prefix: str,
    url: str | None,
    b64: str | None,
    path: str | None,
    limits: ImageLimits,
    volume_root: Path,
    resolver: netsafe.Resolver = netsafe.system_resolver,
) -> ImageData | None:
    """The image named by one of ``<prefix>_url``, ``<prefix>_base64``, ``<prefix>_path``; None if none."""
    if url is not None:
        field = f"{field_prefix}_url"
        data = fetch_url(url, field=field, limits=limits, resolver=resolver)
    elif b64 is not None:
        field = f"{field_prefix}_base64"
        data = decode_base64(b64, field=field, max_bytes=limits.max_bytes)
    elif path is not None:
        field = f"{field_prefix}_path"
        data = read_volume_path(path, field=field, volume_root=volume_root, max_bytes=limits.max_bytes)
    else:
        return None
    return check_image(data, field=field, max_pixels=limits.max_pixels)


def upload_name(job_id: str, role: str, image: ImageData) -> str:
    """A name unique to the job for ComfyUI's input folder: safe characters only."""
    safe_job = re.sub(r"[^A-Za-z0-9_-]", "_", job_id)[:64] or "job"
    return f"wan_{safe_job}_{role}_{os.urandom(4).hex()}.{image.extension}"
