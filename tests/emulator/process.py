"""The emulator in a child process (``python -m tests.emulator``): for crashes, and for a start that is late."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import requests

from .__main__ import READY_PREFIX
from .server import check_faults, pick_free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


class EmulatorProcess:
    """A context manager that starts the emulator process and kills it on exit.

    The URL is read from its first stdout line, ``EMULATOR_READY http://127.0.0.1:PORT``. With ``wait=False``
    (for a ``startup_delay``) the port is picked up front and the call returns at once.
    """

    def __init__(
        self,
        *,
        step_delay: float = 0.0,
        history_delay: float = 0.0,
        startup_delay: float = 0.0,
        models: Mapping[str, Iterable[str]] | None = None,
        faults: Mapping[str, Any] | None = None,
        extra_args: Sequence[str] = (),
        wait: bool = True,
        ready_timeout: float = 30.0,
    ) -> None:
        self.port = 0 if wait else pick_free_port()
        self.base_dir = tempfile.mkdtemp(prefix="comfy-emulator-proc-")
        self.cmd = [sys.executable, "-m", "tests.emulator", "--port", str(self.port)]
        self.cmd += ["--step-delay", str(step_delay), "--history-delay", str(history_delay)]
        self.cmd += ["--startup-delay", str(startup_delay), "--base-directory", self.base_dir]
        self.cmd += ["--faults", json.dumps(check_faults(faults or {}))]
        if models is not None:
            self.cmd += ["--no-default-models"]
            self.cmd += [f"--model={kind}={name}" for kind, names in models.items() for name in names]
        self.cmd += extra_args
        self.wait = wait
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> EmulatorProcess:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        }
        log = open(os.path.join(self.base_dir, "emulator.log"), "w", encoding="utf-8")  # noqa: SIM115
        with log:
            self.proc = subprocess.Popen(
                self.cmd,
                cwd=REPO_ROOT,
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env=env,
                text=True,
            )
        if self.wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        """Until the ``EMULATOR_READY`` line; a process that exits first is an error."""
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + self.ready_timeout
        line = self.proc.stdout.readline()
        while not line.startswith(READY_PREFIX):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the emulator did not start (exit {self.proc.poll()}):\n{self.log_text()}"
                )
            line = self.proc.stdout.readline()
        self.port = int(line.strip().rsplit(":", 1)[1])

    def log_text(self) -> str:
        return Path(self.base_dir, "emulator.log").read_text(encoding="utf-8", errors="replace")

    def wait_exit(self, timeout: float | None = None) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _control(self, method: str, path: str, body: Any = None) -> Any:
        response = requests.request(method, self.url + path, json=body, timeout=10)
        response.raise_for_status()
        return response.json()

    def set_faults(self, **faults: Any) -> dict[str, Any]:
        return self._control("POST", "/emulator/faults", faults)  # type: ignore[no-any-return]

    def configure(self, **config: Any) -> dict[str, Any]:
        return self._control("POST", "/emulator/config", config)  # type: ignore[no-any-return]

    def state(self) -> dict[str, Any]:
        return self._control("GET", "/emulator/state")  # type: ignore[no-any-return]
