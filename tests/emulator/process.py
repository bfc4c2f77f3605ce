"""Run the emulator as a separate process (``python -m tests.emulator``), e.g. for crash tests."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from .server import check_faults, connect_host, pick_free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_PREFIX = "EMULATOR_READY "


class EmulatorProcess:
    """``python -m tests.emulator`` in a child process; a context manager that kills it on exit.

    The chosen port is read from the first stdout line ``EMULATOR_READY http://127.0.0.1:PORT``.
    With ``wait=False`` (or a ``startup_delay``) the port is picked up front and passed with ``--port``.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        step_delay: float = 0.0,
        node_delay: float = 0.0,
        history_delay: float = 0.0,
        startup_delay: float = 0.0,
        models: Mapping[str, Iterable[str]] | None = None,
        model_dirs: Mapping[str, Iterable[str | os.PathLike[str]]] | None = None,
        faults: Mapping[str, Any] | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        output_dir: str | os.PathLike[str] | None = None,
        port_file: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        wait: bool = True,
        ready_timeout: float = 30.0,
    ) -> None:
        self.host = host
        self.port = port
        self.step_delay = step_delay
        self.node_delay = node_delay
        self.history_delay = history_delay
        self.startup_delay = startup_delay
        self.models = models
        self.model_dirs = model_dirs
        self.faults = check_faults(faults or {})
        self.base_dir = os.fspath(base_dir) if base_dir is not None else None
        self.output_dir = os.fspath(output_dir) if output_dir is not None else None
        self.port_file = os.fspath(port_file) if port_file is not None else None
        self.extra_args = list(extra_args)
        self.env = env
        self.wait = wait
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[str] | None = None
        self._own_base = False
        self._log_path: str | None = None
        self._log: IO[str] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "tests.emulator", "--host", self.host, "--port", str(self.port)]
        if self.step_delay:
            cmd += ["--step-delay", str(self.step_delay)]
        if self.node_delay:
            cmd += ["--node-delay", str(self.node_delay)]
        if self.history_delay:
            cmd += ["--history-delay", str(self.history_delay)]
        if self.startup_delay:
            cmd += ["--startup-delay", str(self.startup_delay)]
        if self.models is not None:
            cmd.append("--no-default-models")
            for folder, names in self.models.items():
                cmd += [arg for name in names for arg in ("--model", f"{folder}={name}")]
        for folder, dirs in (self.model_dirs or {}).items():
            if isinstance(dirs, (str, os.PathLike)):
                dirs = [dirs]
            cmd += [arg for d in dirs for arg in ("--model-dir", f"{folder}={os.fspath(d)}")]
        if self.faults:
            cmd += ["--faults", json.dumps(self.faults)]
        if self.base_dir:
            cmd += ["--base-directory", self.base_dir]
        if self.output_dir:
            cmd += ["--output-dir", self.output_dir]
        if self.port_file:
            cmd += ["--port-file", self.port_file]
        return cmd + self.extra_args

    def start(self) -> EmulatorProcess:
        if self.port == 0 and (self.startup_delay > 0 or not self.wait):
            self.port = pick_free_port(self.host)
        if self.base_dir is None:
            self.base_dir = tempfile.mkdtemp(prefix="comfy-emulator-proc-")
            self._own_base = True
        self._log_path = os.path.join(self.base_dir, "emulator.log")
        self._log = open(self._log_path, "w", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.proc = subprocess.Popen(
            self.command(),
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=self._log,
            stdin=subprocess.DEVNULL,
            env=env,
            text=True,
        )
        threading.Thread(target=self._read_stdout, daemon=True).start()
        if self.wait:
            self.wait_ready(self.ready_timeout)
        return self

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def wait_ready(self, timeout: float = 30.0) -> str:
        """Wait for the ``EMULATOR_READY`` line; returns the URL."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"emulator did not become ready; log:\n{self.log_text()}")
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                code = self.proc.wait(5) if self.proc else None
                raise RuntimeError(f"emulator exited ({code}) before it was ready; log:\n{self.log_text()}")
            if line.startswith(READY_PREFIX):
                url = line[len(READY_PREFIX) :].strip()
                self.port = int(url.rsplit(":", 1)[1])
                return url

    # -- addresses

    @property
    def url(self) -> str:
        return f"http://{connect_host(self.host)}:{self.port}"

    def ws_url(self, client_id: str) -> str:
        return f"ws://{connect_host(self.host)}:{self.port}/ws?clientId={client_id}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    # -- process control

    def poll(self) -> int | None:
        return self.proc.poll() if self.proc else None

    @property
    def returncode(self) -> int | None:
        return self.poll()

    def wait_exit(self, timeout: float | None = None) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def terminate(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit within ``timeout``."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def stop(self) -> None:
        self.terminate()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._own_base and self.base_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def log_text(self) -> str:
        if self._log is not None:
            self._log.flush()
        if self._log_path and os.path.exists(self._log_path):
            with open(self._log_path, encoding="utf-8", errors="replace") as fh:
                return fh.read()
        return ""

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- control API over HTTP

    def _control(self, method: str, path: str, body: Any = None) -> Any:
        import requests

        resp = requests.request(method, self.url + path, json=body, timeout=10)
        resp.raise_for_status()
        return resp.json()

    def set_faults(self, **faults: Any) -> dict[str, Any]:
        return self._control("POST", "/emulator/faults", faults)

    def reset_faults(self) -> dict[str, Any]:
        return self.set_faults()

    def configure(self, **config: Any) -> dict[str, Any]:
        return self._control("POST", "/emulator/config", config)

    def state(self) -> dict[str, Any]:
        return self._control("GET", "/emulator/state")

    def reset(self, *, cache: bool = True, timeout: float = 10.0) -> None:
        """No faults or delays, queue cleared, running prompt interrupted (``cache``: cache emptied)."""
        self._control("POST", "/emulator/reset", {"cache": cache})
        deadline = time.monotonic() + timeout
        while self.state()["running"] is not None:
            if time.monotonic() > deadline:
                raise TimeoutError("emulator still running a prompt")
            time.sleep(0.02)
