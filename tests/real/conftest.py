"""Fixtures of the real-ComfyUI tier: the cached environment and tiny models, one ComfyUI per test run, and
the worker's local API beside it. Setup never skips: when ComfyUI cannot be prepared or started, the tests fail
with the step that went wrong and the end of its log.

All real-tier tests live in one file (``test_real_comfyui.py``): pytest-xdist hands whole files to its
processes (``--dist loadfile``), so one file means one ComfyUI process per run.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.installed import Installed, install, installed_env
from tests.support.worker_proc import LocalApi

from .comfy_env import ComfyEnv, Pins, SetupError, ensure_env, ensure_source, pins_from_dockerfile
from .comfyui_server import RealComfyUI
from .tiny_models import ensure_volume, make_validation_files

_logs: dict[str, Path] = {}
"""Logs whose tails are attached to a failing real-tier test."""
_timings: dict[str, float] = {}


def _setup(step: str, action):  # type: ignore[no-untyped-def]
    started = time.monotonic()
    try:
        result = action()
    except SetupError as exc:
        failure = str(exc)
    else:
        _timings[step] = round(time.monotonic() - started, 1)
        return result
    pytest.fail(f"real ComfyUI setup failed while {step}: {failure}", pytrace=False)


@pytest.fixture(scope="session")
def pins() -> Pins:
    found: Pins = _setup("reading the Dockerfile's pins", pins_from_dockerfile)
    return found


@pytest.fixture(scope="session")
def comfy_source(pins: Pins) -> Path:
    """ComfyUI's source, checked against the pinned digest (from the shared copy, or downloaded)."""
    source: Path = _setup("getting ComfyUI's source", lambda: ensure_source(pins))
    return source


@pytest.fixture(scope="session")
def comfy_env(pins: Pins, comfy_source: Path) -> ComfyEnv:
    env: ComfyEnv = _setup("building ComfyUI's environment", lambda: ensure_env(pins, comfy_source))
    return env


@pytest.fixture(scope="session")
def tiny_volume(comfy_env: ComfyEnv) -> Path:
    volume: Path = _setup("making the tiny models", lambda: ensure_volume(comfy_env))
    make_validation_files(volume)
    return volume


@pytest.fixture(scope="session")
def comfyui(
    comfy_env: ComfyEnv, tiny_volume: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RealComfyUI]:
    server = RealComfyUI(comfy_env, tiny_volume, tmp_path_factory.mktemp("comfyui"))
    _logs["ComfyUI"] = server.log_path
    _setup("starting ComfyUI", server.start)
    yield server
    peak = server.peak_rss_mb()
    server.stop()
    summary = ", ".join(f"{k}: {v} s" for k, v in _timings.items())
    print(f"\n[real-comfyui] {summary}; ComfyUI peak RSS {peak or 0:.0f} MB")


@pytest.fixture(scope="session")
def local_api(comfyui: RealComfyUI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalApi]:
    """``python -m worker --rp_serve_api`` against the real ComfyUI, with the tiny models' volume."""
    logs = tmp_path_factory.mktemp("worker")
    _logs["worker (local API)"] = logs / "worker.log"
    server = LocalApi(comfyui.worker_env(), cwd=logs, log_path=logs / "worker.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def installed_worker(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The worker as ``pip install .`` leaves it: a wheel, installed (not editable) into a fresh virtualenv."""
    return install(tmp_path_factory.mktemp("installed"))


@pytest.fixture(scope="session")
def installed_api(
    comfyui: RealComfyUI, installed_worker: Installed, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalApi]:
    """That install's ``python -m worker --rp_serve_api``, started from a folder outside the checkout with no
    ``PYTHONPATH``, against the real ComfyUI (``cwd``: that folder)."""
    logs = tmp_path_factory.mktemp("installed-worker")
    _logs["installed worker (local API)"] = logs / "worker.log"
    env = installed_env(comfyui.worker_env())
    server = LocalApi(env, cwd=logs, log_path=logs / "worker.log", python=installed_worker.python)
    yield server
    server.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed:
        for name, path in _logs.items():
            try:
                tail = path.read_text(errors="replace")[-6000:]
            except OSError:
                continue
            report.sections.append((f"{name} log, the end ({path})", tail))
