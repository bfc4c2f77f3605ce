"""Hand the video to the client: inline as base64, or uploaded to the user's S3-compatible bucket.

``output`` decides: ``base64``, ``url`` (a bucket must be configured), or ``auto`` (url when a bucket is
configured). RunPod refuses large results, so an inline video larger than ``INLINE_OUTPUT_MAX_MB`` (counted as
the base64 text that travels) is refused with advice instead of being lost.
"""

from __future__ import annotations

import binascii
import datetime as dt
import logging
import re
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from .config import Settings
from .errors import InvalidInput, OutputTooLarge, UploadFailed

log = logging.getLogger("worker.deliver")
MIME_TYPE = "video/mp4"


class ObjectStore(Protocol):
    """The part of an S3 client that delivery uses (boto3's client fits)."""

    def put_object(self, **kwargs: Any) -> Any: ...

    def generate_presigned_url(self, ClientMethod: str, Params: dict[str, Any], ExpiresIn: int) -> str: ...


@dataclass(frozen=True)
class BucketTarget:
    endpoint_url: str
    bucket: str


def resolve_output_mode(requested: str, settings: Settings) -> str:
    """``base64`` or ``url``; ``url`` without a bucket is an input error, found before any work is done."""
    if requested == "auto":
        return "url" if settings.bucket_configured else "base64"
    if requested == "url" and not settings.bucket_configured:
        raise InvalidInput(
            "output is 'url' but this worker has no bucket configured (BUCKET_ENDPOINT_URL, "
            "BUCKET_ACCESS_KEY_ID, BUCKET_SECRET_ACCESS_KEY); use output 'base64' or 'auto'",
            details=[{"field": "output"}],
        )
    return requested


def bucket_target(settings: Settings) -> BucketTarget:
    """The service endpoint and bucket: ``BUCKET_NAME`` if set, else RunPod's convention of a
    virtual-hosted endpoint whose first host label is the bucket (``https://bucket.s3.region.host``)."""
    if settings.bucket_name:
        return BucketTarget(settings.bucket_endpoint_url.rstrip("/"), settings.bucket_name)
    parts = urlsplit(settings.bucket_endpoint_url)
    host = parts.hostname or ""
    path_bucket = parts.path.strip("/").split("/", 1)[0]
    if path_bucket:
        return BucketTarget(urlunsplit((parts.scheme, parts.netloc, "", "", "")), path_bucket)
    bucket, _, rest = host.partition(".")
    if not rest:
        raise UploadFailed(
            "BUCKET_ENDPOINT_URL names no bucket: set BUCKET_NAME, or use https://<bucket>.<s3 endpoint>"
        )
    netloc = rest if parts.port is None else f"{rest}:{parts.port}"
    return BucketTarget(urlunsplit((parts.scheme, netloc, "", "", "")), bucket)


def _region(endpoint_url: str) -> str:
    match = re.search(r"s3[.-]([a-z0-9-]+)\.amazonaws\.com", endpoint_url)
    return match.group(1) if match else "us-east-1"


def make_store(settings: Settings, target: BucketTarget) -> ObjectStore:
    import boto3
    from botocore.config import Config

    client: ObjectStore = boto3.client(
        "s3",
        endpoint_url=target.endpoint_url,
        aws_access_key_id=settings.bucket_access_key_id,
        aws_secret_access_key=settings.bucket_secret_access_key,
        region_name=_region(target.endpoint_url),
        config=Config(
            signature_version="s3v4",
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=10,
            read_timeout=60,
        ),
    )
    return client


def object_key(name: str) -> str:
    """``wan-worker/<day>/<name>.mp4``; ``name`` is the job's id made safe for names."""
    day = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    return f"wan-worker/{day}/{name}.mp4"


class InlineEncoder:
    """An output sink that encodes the video to base64 as it arrives, chunk by chunk, into one buffer of the
    encoded size, so that the raw video is never held whole: that buffer and the final text are the only big
    blocks (peak about 2.7 x the video), the same two sizes job after job. A video larger than
    ``INLINE_OUTPUT_MAX_MB`` (counted as base64) is refused as soon as its size is known."""

    def __init__(self, settings: Settings):
        self.limit_mb = settings.inline_output_max_mb
        self.size = 0
        self._text = bytearray()
        self._filled = 0
        self._carry = b""

    def expect(self, size: int | None) -> None:
        if size is not None:
            self._check(size)
            self._text = bytearray(encoded_length(size))

    def write(self, chunk: memoryview) -> None:
        self.size += len(chunk)
        self._check(self.size)
        if self._carry:  # complete the previous chunk's last group of 3 bytes
            need = 3 - len(self._carry)
            head, chunk = self._carry + bytes(chunk[:need]), chunk[need:]
            if len(head) < 3:
                self._carry = head
                return
            self._put(head)
        whole = len(chunk) - len(chunk) % 3
        if whole:
            self._put(chunk[:whole])
        self._carry = bytes(chunk[whole:])

    def result(self) -> dict[str, Any]:
        """``{"video": <base64 text>}``; the encoding buffer is released once the text is made."""
        if self._carry:
            self._put(self._carry)
            self._carry = b""
        text, self._text = self._text, bytearray()
        if len(text) != self._filled:
            del text[self._filled :]
        return {"video": text.decode("ascii")}

    def _put(self, data: bytes | memoryview) -> None:
        encoded = binascii.b2a_base64(data, newline=False)
        end = self._filled + len(encoded)
        self._text[self._filled : end] = encoded
        self._filled = end

    def _check(self, size: int) -> None:
        encoded_size = encoded_length(size)
        if encoded_size > int(self.limit_mb * 1024 * 1024):
            raise OutputTooLarge(
                f"the video is {size / 1e6:.1f} MB ({encoded_size / 1e6:.1f} MB as base64), more than the "
                f"inline limit of {self.limit_mb:g} MB (INLINE_OUTPUT_MAX_MB); configure a bucket "
                "(BUCKET_ENDPOINT_URL, BUCKET_ACCESS_KEY_ID, BUCKET_SECRET_ACCESS_KEY) and use output 'url', "
                "or ask for a shorter or smaller video",
                details=[{"size_bytes": size, "limit_mb": self.limit_mb}],
            )


def encoded_length(size: int) -> int:
    return 4 * ((size + 2) // 3)


class JobResult(dict[str, Any]):
    """A job's result. Its repr shows an inline video as its length: the runpod SDK formats the whole result
    into DEBUG log lines at every log level, and a repr of the payload would copy it twice per job (70 MB for a
    50 MB video) and put it in the log whenever DEBUG is on."""

    def __repr__(self) -> str:
        video = self.get("video")
        if not isinstance(video, str):
            return super().__repr__()
        return repr({**self, "video": f"<{len(video)} base64 characters>"})

    __str__ = __repr__


def upload(
    video: bytes | bytearray, *, name: str, settings: Settings, store: ObjectStore | None = None
) -> dict[str, Any]:
    """Upload to the bucket as :func:`object_key` of ``name``; returns a presigned GET URL valid for
    ``BUCKET_URL_EXPIRY_S``."""
    target = bucket_target(settings)
    key = object_key(name)
    try:
        client = store or make_store(settings, target)
        client.put_object(Bucket=target.bucket, Key=key, Body=video, ContentType=MIME_TYPE)
        url = client.generate_presigned_url(
            "get_object",
            Params={"Bucket": target.bucket, "Key": key},
            ExpiresIn=min(settings.bucket_url_expiry_s, 7 * 24 * 3600),
        )
    except UploadFailed:
        raise
    except Exception as exc:
        raise UploadFailed(
            f"the upload to bucket {target.bucket!r} failed ({exc.__class__.__name__}); check the bucket "
            "settings and credentials"
        ) from exc
    log.info("job %s: video uploaded to bucket %s as %s", name, target.bucket, key)
    return {"video_url": url, "bucket_key": key}
