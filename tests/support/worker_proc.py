"""Run ``python -m worker --rp_serve_api`` as a subprocess, the way a user runs the local API."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def worker_env(comfy_url: str, volume: Path, **extra: str) -> dict[str, str]:
    host_port = comfy_url.split("//", 1)[1]
    host, port = host_port.rsplit(":", 1)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNPOD_", "BUCKET_"))}
    env.update(
        COMFY_HOST=host,
        COMFY_PORT=port,
        VOLUME_ROOT=str(volume),
        ALLOW_PRIVATE_URLS="true",
        COMFY_START_TIMEOUT_S="20",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


class WorkerProcess:
    """``python -m worker`` with ``args``, its output in ``log_path``; ``preexec_fn`` runs in the child;
    ``python``: another interpreter (an installed worker's virtualenv) instead of this one."""

    stop_timeout_s = 10.0

    def __init__(
        self,
        args: list[str],
        env: Mapping[str, str],
        *,
        cwd: Path,
        log_path: Path,
        preexec_fn: Callable[[], Any] | None = None,
        python: str | Path = sys.executable,
    ) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(python), "-m", "worker", *args],
            env=dict(env),
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec_fn,
        )

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()


class LocalApi(WorkerProcess):
    """The runpod SDK's local API server running our worker."""

    def __init__(
        self, env: Mapping[str, str], *, cwd: Path, log_path: Path, python: str | Path = sys.executable
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = ["--rp_serve_api", "--rp_api_port", str(self.port)]
        super().__init__(args, env, cwd=cwd, log_path=log_path, python=python)
        self._wait_ready()

    def _wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the worker exited early:\n{self.log()}")
            try:
                requests.get(f"{self.url}/docs", timeout=1)
                return
            except requests.RequestException:
                time.sleep(0.05)
        raise RuntimeError(f"the worker's local API did not start:\n{self.log()}")

    def runsync(self, job_input: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
        response = requests.post(f"{self.url}/runsync", json={"input": job_input}, timeout=timeout)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def run_and_status(self, job_input: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
        response = requests.post(f"{self.url}/run", json={"input": job_input}, timeout=10)
        response.raise_for_status()
        job = response.json()
        assert job["status"] == "IN_PROGRESS"
        status = requests.post(f"{self.url}/status/{job['id']}", timeout=timeout)
        status.raise_for_status()
        body: dict[str, Any] = status.json()
        return body
