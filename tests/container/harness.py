"""Runs start.sh with stand-ins for ComfyUI and the worker, in its own process group, and reads what they saw."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
START_SH = REPO / "start.sh"
DOCKERFILE = REPO / "Dockerfile"
HERE = Path(__file__).resolve().parent
STANDIN_COMFY = HERE / "standin_comfy.py"
FAKE_WORKER = HERE / "fake_worker.py"
# The stand-ins use the standard library only: isolated mode without site-packages starts them several times faster.
FAST = ("-I", "-S")


def shared_comfyui() -> Path:
    """The shared folder's comfyui/ part: the source of the ComfyUI the tests run, and its README."""
    base = os.environ.get("WAN_WORKER_SHARED")
    return (Path(base) if base else REPO.parent / "shared") / "comfyui"


def comfyui_version() -> str:
    """The Dockerfile's ``ARG COMFYUI_VERSION``: the ComfyUI the image ships."""
    match = re.search(r"^ARG COMFYUI_VERSION=(\S+)$", DOCKERFILE.read_text(encoding="utf-8"), re.MULTILINE)
    assert match, "the Dockerfile declares ARG COMFYUI_VERSION"
    return match.group(1)


def comfyui_source_text(relative: str) -> str:
    """A file of the shipped ComfyUI's source (e.g. ``comfy/cli_args.py``), from the source the real tier runs:
    the shared copy, or GitHub's archive of the pinned commit, checked against the pinned digest."""
    from tests.real.comfy_env import SetupError, ensure_source

    try:
        source = ensure_source()
    except SetupError as exc:
        pytest.fail(f"getting ComfyUI's source: {exc}", pytrace=False)
    path = source / relative
    assert path.is_file(), f"ComfyUI's source {source} has no {relative}"
    return path.read_text(encoding="utf-8")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def first(events: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    return next((e for e in events if e["event"] == name), None)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it has exited all the same.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str
    elapsed: float
    comfy: list[dict[str, Any]]
    worker: list[dict[str, Any]]


@dataclass
class Harness:
    """One start.sh run: a temporary volume, records for the stand-ins, and an environment built from scratch."""

    tmp: Path
    port: int = field(default_factory=free_port)
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.volume = self.tmp / "volume"
        self.volume.mkdir()
        self.comfy_record = self.tmp / "comfy.jsonl"
        self.worker_record = self.tmp / "worker.jsonl"
        self.extra_model_paths = self.tmp / "extra_model_paths.yaml"
        self.extra_model_paths.write_text("wan:\n  base_path: ${VOLUME_ROOT}\n  vae: vae\n", encoding="utf-8")

    def comfy_cmd(self, mode: str = "ready", *extra: str) -> str:
        return " ".join(
            [
                sys.executable,
                *FAST,
                str(STANDIN_COMFY),
                "--mode",
                mode,
                "--record",
                str(self.comfy_record),
                *extra,
            ]
        )

    def worker_cmd(self, *extra: str) -> str:
        return " ".join(
            [sys.executable, *FAST, str(FAKE_WORKER), "--record", str(self.worker_record), *extra]
        )

    def env(self, **overrides: str) -> dict[str, str]:
        env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
        env.update(
            PYTHON=sys.executable,
            COMFY_CMD=self.comfy_cmd(),
            WORKER_CMD=self.worker_cmd(),
            COMFY_PORT=str(self.port),
            COMFY_START_TIMEOUT_S="60",
            VOLUME_ROOT=str(self.volume),
            EXTRA_MODEL_PATHS=str(self.extra_model_paths),
            STOP_TIMEOUT_S="3",
            # Each step costs a Python start: the tests that are about them turn them on.
            SKIP_MODEL_DOWNLOAD="true",
        )
        env.update(overrides)
        return env

    def start(self, env: dict[str, str], cwd: Path | None = None) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            ["bash", str(START_SH)],
            env=env,
            cwd=str(cwd or self.tmp),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def finish(self, proc: subprocess.Popen[str], started: float, timeout: float) -> Result:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_all()
            out, err = proc.communicate()
            raise AssertionError(f"start.sh still running after {timeout}s\nstderr:\n{err}") from None
        return Result(
            code=proc.returncode,
            stdout=out,
            stderr=err,
            elapsed=time.monotonic() - started,
            comfy=read_events(self.comfy_record),
            worker=read_events(self.worker_record),
        )

    def run(self, timeout: float = 40.0, cwd: Path | None = None, **overrides: str) -> Result:
        started = time.monotonic()
        proc = self.start(self.env(**overrides), cwd=cwd)
        return self.finish(proc, started, timeout)

    def wait_for_event(self, record: Path, name: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = first(read_events(record), name)
            if found is not None:
                return found
            time.sleep(0.02)
        raise AssertionError(f"no {name!r} event in {record.name} within {timeout}s")

    def kill_all(self) -> None:
        """Kills what is left of every run's process group (start.sh and anything it started)."""
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)


def iter_pids(events: list[dict[str, Any]]) -> Iterator[int]:
    yield from {int(e["pid"]) for e in events}
