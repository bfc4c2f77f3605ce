"""A client for wan-worker: RunPod serverless endpoints and the runpod SDK's local API.

>>> from worker.client import Client, make_input
>>> client = Client(endpoint="abc123")  # RUNPOD_API_KEY from the environment
>>> result = client.generate(make_input("a fox running through snow", "start.png", length=49))
>>> client.save_video(result, "fox.mp4"), result.seed

The ``wan-video`` command (``python -m worker.client``) is built on it; see ``docs/client.md``.
"""

from .api import (
    Adjustment,
    ApiError,
    Client,
    ClientError,
    Interrupted,
    JobFailed,
    JobStatus,
    Progress,
    UsageError,
    VideoResult,
    WaitTimeout,
    encode_image,
    image_fields,
    job_failure,
    make_input,
    sniff_mime,
)

__all__ = [
    "Adjustment",
    "ApiError",
    "Client",
    "ClientError",
    "Interrupted",
    "JobFailed",
    "JobStatus",
    "Progress",
    "UsageError",
    "VideoResult",
    "WaitTimeout",
    "encode_image",
    "image_fields",
    "job_failure",
    "make_input",
    "sniff_mime",
]
