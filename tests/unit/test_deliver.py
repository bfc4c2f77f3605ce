"""Delivery: inline base64 within the limit, or an upload to an S3-compatible bucket (a local moto server)."""

from __future__ import annotations

import asyncio
import base64
import json
import os

import boto3
import pytest
import requests

from worker.config import Settings
from worker.deliver import (
    Bucket,
    InlineEncoder,
    JobResult,
    job_bucket,
    object_key,
    resolve_output_mode,
    upload,
)
from worker.errors import InvalidInput, OutputTooLarge, UploadFailed

VIDEO = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40


def bucket_settings(endpoint: str, **extra: str) -> Settings:
    env = {
        "BUCKET_ENDPOINT_URL": endpoint,
        "BUCKET_ACCESS_KEY_ID": "k",
        "BUCKET_SECRET_ACCESS_KEY": "s",
        "BUCKET_NAME": "videos",
        **extra,
    }
    return Settings.from_env(env)


def test_output_mode_resolution() -> None:
    plain = Bucket.from_settings(Settings.from_env({}))
    assert plain is None
    assert resolve_output_mode("auto", plain) == "base64"
    assert resolve_output_mode("base64", plain) == "base64"
    with pytest.raises(InvalidInput, match=r"no bucket configured"):
        resolve_output_mode("url", plain)
    configured = Bucket.from_settings(bucket_settings("https://s3.example.com"))
    assert resolve_output_mode("auto", configured) == "url"
    assert resolve_output_mode("base64", configured) == "base64"


def encode(data: bytes, chunks: list[int], *, announced: bool = True) -> str:
    encoder = InlineEncoder(Settings.from_env({}))
    encoder.expect(len(data) if announced else None)
    view, at = memoryview(data), 0
    for size in chunks:
        encoder.write(view[at : at + size])
        at += size
    encoder.write(view[at:])
    assert encoder.size == len(data)
    return str(encoder.result()["video"])


def test_inline_within_the_limit_round_trips() -> None:
    assert base64.b64decode(encode(VIDEO, [])) == VIDEO


@pytest.mark.parametrize("chunks", [[], [3, 3, 3], [1], [2, 1], [1, 1, 1, 1], [5, 7, 11, 2], [4096, 1]])
def test_streamed_encoding_matches_one_pass_whatever_the_chunk_sizes(chunks: list[int]) -> None:
    data = os.urandom(10_000)
    assert encode(data, chunks) == base64.b64encode(data).decode("ascii")
    assert encode(data, chunks, announced=False) == base64.b64encode(data).decode("ascii")
    for size in (0, 1, 2, 3, 4):
        assert encode(data[:size], [1] * size) == base64.b64encode(data[:size]).decode("ascii")


def test_inline_over_the_limit_is_refused_with_advice_before_reading() -> None:
    settings = Settings.from_env({"INLINE_OUTPUT_MAX_MB": "0.01"})
    with pytest.raises(OutputTooLarge, match=r"INLINE_OUTPUT_MAX_MB.*bucket") as info:
        InlineEncoder(settings).expect(len(VIDEO))
    assert info.value.to_result()["error"].startswith("output_too_large: ")


def test_inline_over_the_limit_is_refused_while_streaming_when_no_size_was_announced() -> None:
    encoder = InlineEncoder(Settings.from_env({"INLINE_OUTPUT_MAX_MB": "0.01"}))
    encoder.expect(None)
    encoder.write(memoryview(VIDEO[:6000]))
    with pytest.raises(OutputTooLarge):
        encoder.write(memoryview(VIDEO[6000:]))


def test_result_repr_stands_in_for_the_video() -> None:
    video = base64.b64encode(os.urandom(30_000)).decode("ascii")
    result = JobResult({"video": video, "seed": 7})
    for text in (repr(result), str(result), f"{result}", f"{ {'output': result} }"):
        assert video[:40] not in text and "<40000 base64 characters>" in text and "'seed': 7" in text
    assert json.loads(json.dumps(result)) == {"video": video, "seed": 7}
    assert repr(JobResult({"video_url": "u"})) == repr({"video_url": "u"})


def test_sdk_debug_logging_never_writes_the_video(capsys: pytest.CaptureFixture[str]) -> None:
    """runpod's run_job formats the handler's output into DEBUG lines; with DEBUG on, no payload is logged."""
    from runpod.serverless.modules import rp_job

    video = base64.b64encode(os.urandom(30_000)).decode("ascii")

    async def handler(job: dict[str, object]) -> dict[str, object]:
        return JobResult({"video": video, "size_bytes": 30_000})

    level = rp_job.log.level
    rp_job.log.set_level("DEBUG")
    try:
        result = asyncio.run(rp_job.run_job(handler, {"id": "j1", "input": {}}))
    finally:
        rp_job.log.set_level(level)
    logged = capsys.readouterr()
    assert "<40000 base64 characters>" in logged.out + logged.err
    assert video[:40] not in logged.out + logged.err
    assert result["output"]["video"] == video


def test_upload_to_the_bucket_returns_a_working_url(s3_endpoint: str) -> None:
    bucket = Bucket.from_settings(bucket_settings(s3_endpoint))
    assert bucket is not None
    key = object_key("job_1_2")
    url = upload(VIDEO, key=key, bucket=bucket)
    assert key.startswith("wan-worker/") and key.endswith("job_1_2.mp4")
    response = requests.get(url, timeout=10)
    assert response.status_code == 200 and response.content == VIDEO
    head = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id="k",
        aws_secret_access_key="s",
        region_name="us-east-1",
    ).head_object(Bucket="videos", Key=key)
    assert head["ContentType"] == "video/mp4"


def test_upload_failure_is_typed(s3_endpoint: str) -> None:
    bucket = Bucket.from_settings(bucket_settings(s3_endpoint, BUCKET_NAME="no-such-bucket"))
    assert bucket is not None
    with pytest.raises(UploadFailed, match="no-such-bucket"):
        upload(VIDEO, key="j.mp4", bucket=bucket)


@pytest.mark.parametrize(
    ("endpoint", "name", "expected"),
    [
        (
            "https://my-bucket.s3.us-east-1.amazonaws.com",
            "",
            ("https://s3.us-east-1.amazonaws.com", "my-bucket"),
        ),
        ("https://s3.example.com/my-bucket", "", ("https://s3.example.com", "my-bucket")),
        ("https://s3.example.com", "named", ("https://s3.example.com", "named")),
    ],
)
def test_bucket_target_conventions(endpoint: str, name: str, expected: tuple[str, str]) -> None:
    env = {"BUCKET_ENDPOINT_URL": endpoint, "BUCKET_ACCESS_KEY_ID": "k", "BUCKET_SECRET_ACCESS_KEY": "s"}
    if name:
        env["BUCKET_NAME"] = name
    bucket = Bucket.from_settings(Settings.from_env(env))
    assert bucket is not None and (bucket.endpoint_url, bucket.bucket) == expected
    assert "access_key" not in repr(bucket), "the keys stay out of its repr"


SECRET = "very-secret-value-0123456789"


def s3_config(endpoint: str, **changes: object) -> dict[str, object]:
    return {
        "accessId": "k",
        "accessSecret": SECRET,
        "bucketName": "videos",
        "endpointUrl": endpoint,
        **changes,
    }


def test_a_jobs_s3config_replaces_the_workers_bucket(s3_endpoint: str) -> None:
    own = job_bucket({"input": {}, "s3Config": s3_config(s3_endpoint)}, bucket_settings("https://elsewhere"))
    assert own is not None and (own.endpoint_url, own.bucket) == (s3_endpoint, "videos")
    assert SECRET not in repr(own)
    url = upload(VIDEO, key=object_key("mine"), bucket=own)
    assert requests.get(url, timeout=10).content == VIDEO
    assert job_bucket({"input": {}}, Settings.from_env({})) is None


@pytest.mark.parametrize(
    ("config", "fields"),
    [
        ("not an object", ["s3Config"]),
        (s3_config("https://s3.example.com", accessSecret=""), ["s3Config.accessSecret"]),
        (s3_config("ftp://s3.example.com", bucketName=None), ["s3Config.bucketName", "s3Config.endpointUrl"]),
    ],
)
def test_a_bad_s3config_is_refused_naming_its_keys_never_its_secrets(
    config: object, fields: list[str]
) -> None:
    with pytest.raises(InvalidInput) as info:
        job_bucket({"input": {}, "s3Config": config}, Settings.from_env({}))
    assert [d["field"] for d in info.value.details] == fields
    assert SECRET not in str(info.value) + repr(info.value.details)
