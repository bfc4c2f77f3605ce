"""200 sequential jobs through the local API: file descriptors, temporary files and memory stay flat."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.emulator import Emulator
from tests.support.images import data_uri, image_bytes
from tests.support.worker_proc import LocalApi, worker_env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]  # 200 real jobs: minutes on a slow 2-core machine
JOBS = 200
START = data_uri(image_bytes())


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Emulator, LocalApi, Path]]:
    with Emulator() as emu:
        logs = tmp_path_factory.mktemp("load")
        worker_tmp = tmp_path_factory.mktemp("load-tmp")  # the worker's own temporary folder (TMPDIR)
        env = worker_env(
            emu.url,
            logs,
            COMFY_INPUT_DIR=emu.input_dir,
            COMFY_OUTPUT_DIR=emu.output_dir,
            TMPDIR=str(worker_tmp),
        )
        api = LocalApi(env, cwd=logs, log_path=logs / "worker.log")
        try:
            yield emu, api, worker_tmp
        finally:
            api.stop()


def test_two_hundred_jobs_leak_nothing(setup: tuple[Emulator, LocalApi, Path]) -> None:
    emu, api, worker_tmp = setup

    def temp_files() -> set[str]:
        return set(os.listdir(worker_tmp))

    job = {"prompt": "p", "image_base64": START, "width": 128, "height": 128, "length": 5}
    for _ in range(20):  # warm up: imports, pools, caches
        assert api.runsync(job)["status"] == "COMPLETED"
    pid = api.proc.pid
    fds_before, rss_before, tmp_before = open_fds(pid), rss_mb(pid), temp_files()
    for index in range(JOBS - 20):
        body = api.runsync(job)
        assert body["status"] == "COMPLETED", (index, body)
    fds_after, rss_after, tmp_after = open_fds(pid), rss_mb(pid), temp_files()
    new_tmp = tmp_after - tmp_before
    print(
        f"\n{JOBS} jobs: open fds {fds_before} -> {fds_after}, RSS {rss_before:.1f} -> {rss_after:.1f} MB, "
        f"new temporary files {len(new_tmp)}"
    )
    assert fds_after <= fds_before + 2
    assert rss_after <= rss_before + 25
    assert not new_tmp
    state = emu.state()
    assert state["running"] is None and state["queue_pending"] == []
    assert len(state["history_ids"]) == 0
    assert [p for p in Path(emu.input_dir).rglob("*") if p.is_file()] == []
    assert [p for p in Path(emu.output_dir).rglob("*") if p.is_file()] == []
