"""Hand the video to the client: inline as base64, or uploaded to the user's S3-compatible bucket.

The bucket is the job's own when it carries RunPod's ``s3Config`` (whose secrets never reach a log, a result or
an error), else the worker's (``BUCKET_*``). ``output`` decides: ``base64``, ``url`` (a bucket must be
known), or ``auto`` (url when there is a bucket). RunPod refuses large results, so an inline video larger than ``INLINE_OUTPUT_MAX_MB`` (counted as
the base64 text that travels) is refused with advice instead of being lost.
"""

from __future__ import annotations

import binascii
import datetime as dt
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from .config import Settings
from .errors import InvalidInput, OutputTooLarge, UploadFailed

log = logging.getLogger("worker.deliver")
MIME_TYPE = "video/mp4"
INLINE = ("video", "last_frame")


class ObjectStore(Protocol):
    """The part of an S3 client that delivery uses (boto3's client fits)."""

    def put_object(self, **kwargs: Any) -> Any: ...

    def generate_presigned_url(self, ClientMethod: str, Params: dict[str, Any], ExpiresIn: int) -> str: ...


MAX_URL_EXPIRY_S = 7 * 24 * 3600
"""The longest validity S3 allows a presigned URL."""
S3_CONFIG_KEYS = ("accessId", "accessSecret", "bucketName", "endpointUrl")


@dataclass(frozen=True)
class Bucket:
    """Where videos go by URL: the worker's bucket (``BUCKET_*`` settings) or a job's own (``s3Config``)."""

    endpoint_url: str
    bucket: str
    access_key_id: str = field(repr=False)
    secret_access_key: str = field(repr=False)
    url_expiry_s: int = MAX_URL_EXPIRY_S

    @classmethod
    def from_settings(cls, settings: Settings) -> Bucket | None:
        """The worker's bucket, or None when ``BUCKET_*`` do not configure one."""
        if not settings.bucket_configured:
            return None
        endpoint, bucket = split_endpoint(settings.bucket_endpoint_url, settings.bucket_name)
        expiry = min(settings.bucket_url_expiry_s, MAX_URL_EXPIRY_S)
        return cls(endpoint, bucket, settings.bucket_access_key_id, settings.bucket_secret_access_key, expiry)

    @classmethod
    def from_job(cls, config: Any, settings: Settings) -> Bucket:
        """A job's ``s3Config`` (RunPod's ``accessId``, ``accessSecret``, ``bucketName``, ``endpointUrl``);
        the errors name the keys, never their values."""
        if not isinstance(config, dict):
            raise InvalidInput("s3Config must be an object", details=[{"field": "s3Config"}])
        problems = [
            {"field": f"s3Config.{key}", "message": "is required (a non-empty string)"}
            for key in S3_CONFIG_KEYS
            if not isinstance(config.get(key), str) or not config[key].strip()
        ]
        endpoint = str(config.get("endpointUrl") or "")
        if endpoint and not re.match(r"^https?://[^\s/]", endpoint, flags=re.IGNORECASE):
            problems.append(
                {"field": "s3Config.endpointUrl", "message": "must be an http:// or https:// URL"}
            )
        if problems:
            summary = "; ".join(f"{p['field']} {p['message']}" for p in problems)
            raise InvalidInput(f"the job's s3Config is incomplete: {summary}", details=problems)
        endpoint, bucket = split_endpoint(endpoint.strip(), config["bucketName"].strip())
        expiry = min(settings.bucket_url_expiry_s, MAX_URL_EXPIRY_S)
        return cls(endpoint, bucket, config["accessId"].strip(), config["accessSecret"].strip(), expiry)


def job_bucket(job: Mapping[str, Any], settings: Settings) -> Bucket | None:
    """The bucket of this job: its own ``s3Config`` when it has one, else the worker's, else None."""
    config = job.get("s3Config")
    return Bucket.from_job(config, settings) if config is not None else Bucket.from_settings(settings)


def resolve_output_mode(requested: str, bucket: Bucket | None) -> str:
    """``base64`` or ``url``; ``url`` without a bucket is an input error, found before any work is done."""
    if requested == "auto":
        return "url" if bucket is not None else "base64"
    if requested == "url" and bucket is None:
        raise InvalidInput(
            "output is 'url' but this worker has no bucket configured (BUCKET_ENDPOINT_URL, "
            "BUCKET_ACCESS_KEY_ID, BUCKET_SECRET_ACCESS_KEY) and the job has no s3Config; use output "
            "'base64' or 'auto'",
            details=[{"field": "output"}],
        )
    return requested


def target_bucket(job: Mapping[str, Any], requested: str, settings: Settings) -> Bucket | None:
    """The bucket the job's files go to (:func:`job_bucket`), or None when ``requested`` means inline."""
    bucket = job_bucket(job, settings)
    return bucket if resolve_output_mode(requested, bucket) == "url" else None


def split_endpoint(endpoint_url: str, bucket: str) -> tuple[str, str]:
    """(service endpoint, bucket): ``bucket`` if given, else RunPod's convention of a virtual-hosted endpoint
    whose first host label is the bucket (``https://bucket.s3.region.host``), or a path-style one."""
    if bucket:
        return endpoint_url.rstrip("/"), bucket
    parts = urlsplit(endpoint_url)
    path_bucket = parts.path.strip("/").split("/", 1)[0]
    if path_bucket:
        return urlunsplit((parts.scheme, parts.netloc, "", "", "")), path_bucket
    name, _, rest = (parts.hostname or "").partition(".")
    if not rest:
        raise UploadFailed(
            "BUCKET_ENDPOINT_URL names no bucket: set BUCKET_NAME, or use https://<bucket>.<s3 endpoint>"
        )
    netloc = rest if parts.port is None else f"{rest}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, "", "", "")), name


def _region(endpoint_url: str) -> str:
    match = re.search(r"s3[.-]([a-z0-9-]+)\.amazonaws\.com", endpoint_url)
    return match.group(1) if match else "us-east-1"


def make_store(bucket: Bucket) -> ObjectStore:
    import boto3
    from botocore.config import Config

    client: ObjectStore = boto3.client(
        "s3",
        endpoint_url=bucket.endpoint_url,
        aws_access_key_id=bucket.access_key_id,
        aws_secret_access_key=bucket.secret_access_key,
        region_name=_region(bucket.endpoint_url),
        config=Config(
            signature_version="s3v4",
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=10,
            read_timeout=60,
        ),
    )
    return client


def object_key(name: str, suffix: str = ".mp4") -> str:
    """``wan-worker/<day>/<name><suffix>``; ``name`` is the job's id made safe for names."""
    day = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    return f"wan-worker/{day}/{name}{suffix}"


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
    """A job's result. Its repr shows an inline video or frame (and a workflow's inline files) as its length: the
    runpod SDK formats the whole result into DEBUG log lines at every log level, and a repr of the payload would
    copy it twice per job (70 MB for a 50 MB video) and put it in the log whenever DEBUG is on."""

    def __repr__(self) -> str:
        def brief(v: Any) -> Any:
            return f"<{len(v)} base64 characters>" if isinstance(v, str) else v

        shown = {key: brief(value) if key in INLINE else value for key, value in self.items()}
        if "outputs" in shown:
            shown["outputs"] = [
                {**o, "data": brief(o.get("data"))} if "data" in o else o for o in shown["outputs"]
            ]
        return repr(shown)

    __str__ = __repr__


def upload(
    data: bytes | bytearray,
    *,
    key: str,
    bucket: Bucket,
    content_type: str = MIME_TYPE,
    store: ObjectStore | None = None,
) -> str:
    """Put ``data`` into the bucket under ``key``; returns a presigned GET URL valid for its ``url_expiry_s``."""
    try:
        client = store or make_store(bucket)
        client.put_object(Bucket=bucket.bucket, Key=key, Body=data, ContentType=content_type)
        url = client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket.bucket, "Key": key}, ExpiresIn=bucket.url_expiry_s
        )
    except Exception as exc:
        raise UploadFailed(
            f"the upload to bucket {bucket.bucket!r} failed ({exc.__class__.__name__}); check the bucket "
            "settings and credentials"
        ) from exc
    log.info("uploaded %s to bucket %s", key, bucket.bucket)
    return url
