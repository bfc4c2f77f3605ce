"""A stand-in for RunPod's job API on 127.0.0.1, for a worker running as it does in production.

The runpod SDK's local API (``--rp_serve_api``) has no ``/cancel``: ``/run`` only stores the job, and
``/status`` runs it inside the request. A cancel reaches a worker only in production, through the job API:
the SDK long-polls ``job-take`` for jobs and ``job-stop`` for the ids to stop (it then cancels the job's task),
posts results to ``job-done`` and pings. This server plays those four endpoints, so that a test can submit a
job, see it taken, cancel it and read what the worker posted.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
import uuid
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.support.worker_proc import WorkerProcess

from .comfyui_server import die_with_parent

LONG_POLL_S = 1.0
WORKER_ID = "real-tier-worker"


class RunpodStandin:
    def __init__(self) -> None:
        self.jobs: queue.Queue[dict[str, Any]] = queue.Queue()
        self.stops: queue.Queue[str] = queue.Queue()
        self.taken: dict[str, float] = {}
        self.results: dict[str, dict[str, Any]] = {}
        self.progress: dict[str, list[dict[str, Any]]] = {}
        self.pings = 0
        self.take_polls = 0
        self._done = threading.Condition()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="runpod-standin", daemon=True)

    def __enter__(self) -> RunpodStandin:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def worker_env(self) -> dict[str, str]:
        """The environment a worker on RunPod gets, pointed at this server."""
        return {
            "RUNPOD_WEBHOOK_GET_JOB": f"{self.url}/job-take/$ID?gpu=cpu",
            "RUNPOD_WEBHOOK_POST_OUTPUT": f"{self.url}/job-done/$RUNPOD_POD_ID/$ID?gpu=cpu",
            "RUNPOD_WEBHOOK_PING": f"{self.url}/ping/$RUNPOD_POD_ID?gpu=cpu",
            "RUNPOD_POD_ID": WORKER_ID,
            "RUNPOD_AI_API_KEY": "stand-in-key",
            "RUNPOD_SKIP_GPU_CHECK": "true",
            "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
        }

    # ------------------------------------------------------------------ test side
    def submit(self, job_input: Mapping[str, Any]) -> str:
        job_id = f"standin-{uuid.uuid4()}"
        self.jobs.put({"id": job_id, "input": dict(job_input)})
        return job_id

    def cancel(self, job_id: str) -> None:
        """Tell the worker to stop ``job_id`` (what RunPod does on ``POST /cancel/{id}``)."""
        self.stops.put(job_id)

    def wait_taken(self, job_id: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while job_id not in self.taken:
            if time.monotonic() > deadline:
                raise AssertionError(f"the worker did not take job {job_id} within {timeout_s:.0f} s")
            time.sleep(0.05)

    def wait_result(self, job_id: str, timeout_s: float) -> dict[str, Any]:
        with self._done:
            if not self._done.wait_for(lambda: job_id in self.results, timeout=timeout_s):
                raise AssertionError(f"the worker posted no result for job {job_id} within {timeout_s:.0f} s")
            return self.results[job_id]

    # ------------------------------------------------------------------ server side
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: Any = None) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                if body is not None:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                kind = urlsplit(self.path).path.strip("/").split("/", 1)[0]
                if kind == "job-take":
                    standin.take_polls += 1
                    try:
                        job = standin.jobs.get(timeout=LONG_POLL_S)
                    except queue.Empty:
                        self._reply(204)
                        return
                    standin.taken[job["id"]] = time.monotonic()
                    self._reply(200, job)
                elif kind == "job-stop":
                    try:
                        ids = [standin.stops.get(timeout=LONG_POLL_S)]
                    except queue.Empty:
                        self._reply(204)
                        return
                    self._reply(200, {"jobsToStop": ids})
                elif kind == "ping":
                    standin.pings += 1
                    self._reply(200, {})
                else:
                    self._reply(404, {"error": f"no route {self.path}"})

            def do_POST(self) -> None:
                parts = urlsplit(self.path).path.strip("/").split("/")
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if parts[0] == "job-done" and len(parts) == 3:
                    try:
                        body = json.loads(raw or b"{}")
                    except ValueError:
                        body = {"unparsed": raw.decode(errors="replace")}
                    with standin._done:
                        if isinstance(body, dict) and body.get("status") == "IN_PROGRESS":
                            standin.progress.setdefault(parts[2], []).append(body)  # progress_update
                        else:
                            standin.results[parts[2]] = body
                        standin._done.notify_all()
                    self._reply(200, {})
                else:
                    self._reply(404, {"error": f"no route {self.path}"})

        return Handler


class ProductionWorker(WorkerProcess):
    """``python -m worker`` as RunPod starts it (no local API): it takes jobs from the stand-in."""

    stop_timeout_s = 15.0

    def __init__(self, env: Mapping[str, str], *, cwd: Path, log_path: Path) -> None:
        super().__init__([], env, cwd=cwd, log_path=log_path, preexec_fn=die_with_parent)

    def wait_polling(self, standin: RunpodStandin, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while standin.take_polls == 0:
            if self.proc.poll() is not None:
                raise AssertionError(f"the worker exited with code {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the worker did not ask for a job within {timeout_s:.0f} s:\n{self.log()}"
                )
            time.sleep(0.1)


def production_env(base: Mapping[str, str], standin: RunpodStandin) -> dict[str, str]:
    """``base`` (from :func:`tests.support.worker_proc.worker_env`) plus the stand-in's job API."""
    return {**base, **standin.worker_env(), "PATH": os.environ.get("PATH", "")}
