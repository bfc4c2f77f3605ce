"""The real ComfyUI as a subprocess on 127.0.0.1, on CPU, with the project's ``extra_model_paths.yaml``.

Its output goes to a log file whose tail is attached to every failure. It gets its own input, output, temp and
user folders and an in-memory database, so that several test runs can share one unpacked source.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import requests

from tests.support.worker_proc import free_port, worker_env

from .comfy_env import REPO, ComfyEnv, SetupError

START_TIMEOUT_S = 180.0
WORKER_TIMEOUTS = {"JOB_TIMEOUT_S": "1200", "COMFY_IDLE_TIMEOUT_S": "600"}
"""Generous: the first job loads the 5.7 GB text encoder and encodes two 512-token prompts on CPU."""


PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies, so that no ComfyUI outlives its run."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


CACHE_MODE = "--cache-classic"
"""The cache mode start.sh gives ComfyUI in the image (a test keeps the two equal)."""


class RealComfyUI:
    """A running ComfyUI: its URL, folders and log, and the few HTTP calls the tests make directly."""

    def __init__(self, env: ComfyEnv, volume: Path, workdir: Path) -> None:
        self.env = env
        self.volume = volume
        self.workdir = workdir
        self.input_dir = workdir / "input"
        self.output_dir = workdir / "output"
        self.log_path = workdir / "comfyui.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self.http = requests.Session()

    # ------------------------------------------------------------------ process
    def command(self) -> list[str]:
        for sub in ("input", "output", "temp", "user"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        return [
            str(self.env.python),
            str(self.env.source / "main.py"),
            "--cpu",
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--extra-model-paths-config",
            str(REPO / "extra_model_paths.yaml"),
            "--disable-auto-launch",
            CACHE_MODE,
            "--input-directory",
            str(self.input_dir),
            "--output-directory",
            str(self.output_dir),
            "--temp-directory",
            str(self.workdir / "temp"),
            "--user-directory",
            str(self.workdir / "user"),
            "--database-url",
            "sqlite:///:memory:",
        ]

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        env = dict(os.environ, VOLUME_ROOT=str(self.volume), PYTHONUNBUFFERED="1")
        env.pop("PYTHONPATH", None)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop() or kill()
        self.proc = subprocess.Popen(
            self.command(),
            cwd=self.workdir,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        self.wait_ready(timeout_s)

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise SetupError(
                    f"the real ComfyUI exited with code {self.proc.returncode} before it answered "
                    f"/system_stats.\n{self.log_tail()}"
                )
            with contextlib.suppress(requests.RequestException):
                if self.http.get(f"{self.url}/system_stats", timeout=2).status_code == 200:
                    return
            time.sleep(0.25)
        raise SetupError(
            f"the real ComfyUI did not answer GET /system_stats within {timeout_s:.0f} s.\n{self.log_tail()}"
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, the way a crash ends it; :meth:`start` starts it again on the same port, its log appended."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        if self._log is not None:
            self._log.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
        self.http.close()

    def peak_rss_mb(self) -> float | None:
        """ComfyUI's peak resident memory so far (Linux ``VmHWM``)."""
        if self.proc is None:
            return None
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return None
        match = re.search(r"^VmHWM:\s+(\d+) kB", status, flags=re.MULTILINE)
        return int(match.group(1)) / 1024 if match else None

    def worker_env(self) -> dict[str, str]:
        """The environment of a worker that uses this ComfyUI, its folders and the tiny models' volume."""
        return worker_env(
            self.url,
            self.volume,
            COMFY_INPUT_DIR=str(self.input_dir),
            COMFY_OUTPUT_DIR=str(self.output_dir),
            **WORKER_TIMEOUTS,
        )

    # ------------------------------------------------------------------ log
    def log_text(self) -> str:
        if self._log is not None and not self._log.closed:
            self._log.flush()
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, chars: int = 4000) -> str:
        text = self.log_text()
        return f"--- the end of ComfyUI's log {self.log_path} ---\n{text[-chars:]}"

    # ------------------------------------------------------------------ HTTP
    def post_prompt(
        self, graph: Mapping[str, Any], *, client_id: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        """``POST /prompt``; returns the status and the JSON body (200 queues the graph)."""
        body = {"prompt": graph, "client_id": client_id or uuid.uuid4().hex}
        response = self.http.post(f"{self.url}/prompt", json=body, timeout=30)
        try:
            payload: dict[str, Any] = response.json()
        except ValueError:
            payload = {"raw": response.text}
        return response.status_code, payload

    def upload_image(self, data: bytes, name: str) -> str:
        files = {"image": (name, data, "image/png")}
        response = self.http.post(
            f"{self.url}/upload/image", files=files, data={"overwrite": "true"}, timeout=30
        )
        response.raise_for_status()
        return str(response.json()["name"])

    def queue(self) -> dict[str, list[Any]]:
        response = self.http.get(f"{self.url}/queue", timeout=10)
        response.raise_for_status()
        body: dict[str, list[Any]] = response.json()
        return body

    def queue_ids(self) -> tuple[list[str], list[str]]:
        """Prompt ids running and pending."""
        body = self.queue()
        return [str(item[1]) for item in body["queue_running"]], [
            str(item[1]) for item in body["queue_pending"]
        ]

    def wait_queue_empty(self, timeout_s: float) -> float:
        """Seconds it took for the queue to empty; raises AssertionError with the log tail when it does not."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            running, pending = self.queue_ids()
            if not running and not pending:
                return time.monotonic() - started
            time.sleep(0.1)
        raise AssertionError(
            f"ComfyUI's queue is not empty after {timeout_s:.0f} s: {self.queue()}\n{self.log_tail()}"
        )

    def delete_queued(self, prompt_ids: list[str]) -> None:
        self.http.post(f"{self.url}/queue", json={"delete": prompt_ids}, timeout=10)

    def interrupt(self) -> None:
        self.http.post(f"{self.url}/interrupt", json={}, timeout=10)

    def history(self, prompt_id: str) -> dict[str, Any]:
        response = self.http.get(f"{self.url}/history/{prompt_id}", timeout=10)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def system_stats(self) -> dict[str, Any]:
        response = self.http.get(f"{self.url}/system_stats", timeout=10)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def models(self, folder: str) -> list[str]:
        response = self.http.get(f"{self.url}/models/{folder}", timeout=10)
        response.raise_for_status()
        return list(response.json())


def describe_refusal(body: Mapping[str, Any]) -> str:
    """ComfyUI's 400 body, short: the top-level error and each node's errors."""
    return json.dumps({"error": body.get("error"), "node_errors": body.get("node_errors")}, indent=1)[:4000]
