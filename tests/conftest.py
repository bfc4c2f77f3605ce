"""Fixtures shared by the handler-level tests (one emulator per module, settings pointed at it, a local S3
server), and the order in which pytest-xdist hands test files to its processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.emulator import Emulator
from tests.support.settings import settings_for
from worker.config import Settings


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    """A ComfyUI emulator with the default models; modules that need others define their own."""
    with Emulator() as emu:
        yield emu


@pytest.fixture
def settings(emulator: Emulator, tmp_path: Path) -> Settings:
    """Worker settings for the emulator, its faults and delays reset, its folders cleaned by the worker."""
    emulator.set_faults()
    emulator.configure(step_delay=0.0)
    return settings_for(
        emulator.url, tmp_path, COMFY_INPUT_DIR=emulator.input_dir, COMFY_OUTPUT_DIR=emulator.output_dir
    )


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A local S3 server (moto) with a bucket named videos."""
    import boto3
    from moto.server import ThreadedMotoServer

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


LONGEST_FIRST = (
    "tests/real/test_real_comfyui.py",
    "tests/faults/test_load.py",
    "tests/faults/test_hostile_input.py",
    "tests/e2e/",
    "tests/container/test_start_sh_e2e.py",
    "tests/client/test_local_api.py",
    "tests/faults/test_production_cancel.py",
    "tests/faults/test_fitness.py",
)
"""Files that take the longest, started first so that the rest of the suite fills in around them."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0]
        ranks = [i for i, prefix in enumerate(LONGEST_FIRST) if path.startswith(prefix)]
        return ranks[0] if ranks else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within each file is kept
