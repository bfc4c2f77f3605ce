"""Delivery: inline base64 within the limit, or an upload to an S3-compatible bucket (a local moto server)."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import boto3
import pytest
import requests
from moto.server import ThreadedMotoServer

from worker.config import Settings
from worker.deliver import bucket_target, deliver, inline, resolve_output_mode, upload
from worker.errors import InvalidInput, OutputTooLarge, UploadFailed

VIDEO = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id="k", aws_secret_access_key="s", region_name="us-east-1"
    )
    client.create_bucket(Bucket="videos")
    yield endpoint
    server.stop()


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
    plain = Settings.from_env({})
    assert resolve_output_mode("auto", plain) == "base64"
    assert resolve_output_mode("base64", plain) == "base64"
    with pytest.raises(InvalidInput, match=r"no bucket is configured|no bucket configured"):
        resolve_output_mode("url", plain)
    configured = bucket_settings("https://s3.example.com")
    assert resolve_output_mode("auto", configured) == "url"
    assert resolve_output_mode("base64", configured) == "base64"


def test_inline_within_the_limit_round_trips() -> None:
    out = inline(VIDEO, Settings.from_env({}))
    assert base64.b64decode(out["video"]) == VIDEO


def test_inline_over_the_limit_is_refused_with_advice() -> None:
    settings = Settings.from_env({"INLINE_OUTPUT_MAX_MB": "0.01"})
    with pytest.raises(OutputTooLarge, match=r"INLINE_OUTPUT_MAX_MB.*bucket") as info:
        inline(VIDEO, settings)
    assert info.value.to_result()["error"].startswith("output_too_large: ")


def test_upload_to_the_bucket_returns_a_working_url(s3_endpoint: str) -> None:
    settings = bucket_settings(s3_endpoint)
    out = deliver(VIDEO, mode="url", job_id="job/1 2", settings=settings)
    assert out["bucket_key"].startswith("wan-worker/") and out["bucket_key"].endswith("job_1_2.mp4")
    response = requests.get(out["video_url"], timeout=10)
    assert response.status_code == 200 and response.content == VIDEO
    head = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id="k",
        aws_secret_access_key="s",
        region_name="us-east-1",
    ).head_object(Bucket="videos", Key=out["bucket_key"])
    assert head["ContentType"] == "video/mp4"


def test_upload_failure_is_typed(s3_endpoint: str) -> None:
    settings = bucket_settings(s3_endpoint, BUCKET_NAME="no-such-bucket")
    with pytest.raises(UploadFailed, match="no-such-bucket"):
        upload(VIDEO, job_id="j", settings=settings)


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
    target = bucket_target(Settings.from_env(env))
    assert (target.endpoint_url, target.bucket) == expected


def test_chunked_encoding_matches_one_pass_and_releases_the_buffer() -> None:
    import os

    from worker.deliver import ENCODE_CHUNK, encode_releasing

    for size in (0, 1, 2, 3, ENCODE_CHUNK - 1, ENCODE_CHUNK, ENCODE_CHUNK + 1, 2 * ENCODE_CHUNK + 2):
        data = os.urandom(size)
        buffer = bytearray(data)
        assert encode_releasing(buffer) == base64.b64encode(data).decode("ascii"), size
        assert len(buffer) == 0
    assert encode_releasing(b"abc") == "YWJj"
