"""A stand-in for RunPod's job API on 127.0.0.1, for a worker running as it does in production.

The runpod SDK's local API (``--rp_serve_api``) has no ``/cancel``: ``/run`` only stores the job, and
``/status`` runs it inside the request. A cancel reaches a worker only in production, through the job API:
the SDK long-polls ``job-take`` for jobs and ``job-stop`` for the ids to stop (it then cancels the job's task),
posts results to ``job-done`` and pings. This server plays those four endpoints, so that a test can submit a
job, see it taken, cancel it and read what the worker posted.
"""

from __future__ import annotations

import os
import queue
import subprocess
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.support.httpserver import HttpServer, Request, Route, json_route
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
        self.unhealthy: list[dict[str, list[str]]] = []
        """The query of each ping that reported a failed start check (``status=unhealthy``, ``check``, ``reason``)."""
        self.take_polls = 0
        self._done = threading.Condition()
        self._server = HttpServer()
        self._server.routes.update(
            {
                "/job-take/*": self._take,
                "/job-stop/*": self._stop,
                "/ping/*": self._ping,
                "/job-done/*": self._job_done,
            }
        )
        self.url = self._server.url()

    def __enter__(self) -> RunpodStandin:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.close()

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
    def submit(self, job_input: Mapping[str, Any], **beside: Any) -> str:
        """Queue a job; ``beside`` holds what RunPod sends next to ``input`` (``s3Config``, ``webhook``)."""
        job_id = f"standin-{uuid.uuid4()}"
        self.jobs.put({"id": job_id, "input": dict(job_input), **beside})
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
    def _take(self, request: Request) -> Route:
        """A long poll for the next job."""
        self.take_polls += 1
        try:
            job = self.jobs.get(timeout=LONG_POLL_S)
        except queue.Empty:
            return Route(204)
        self.taken[job["id"]] = time.monotonic()
        return json_route(job)

    def _stop(self, request: Request) -> Route:
        """A long poll for the ids of jobs to stop."""
        try:
            return json_route({"jobsToStop": [self.stops.get(timeout=LONG_POLL_S)]})
        except queue.Empty:
            return Route(204)

    def _ping(self, request: Request) -> Route:
        self.pings += 1
        if request.query.get("status") == ["unhealthy"]:
            self.unhealthy.append(request.query)
        return json_route({})

    def _job_done(self, request: Request) -> Route:
        """``/job-done/<worker>/<job id>``: a result, or (``IN_PROGRESS``) a progress update."""
        parts = request.path.strip("/").split("/")
        if request.method != "POST" or len(parts) != 3:
            return json_route({"error": f"no route {request.method} {request.path}"}, 404)
        try:
            body = request.json()
        except ValueError:
            body = {"unparsed": request.body.decode(errors="replace")}
        with self._done:
            if isinstance(body, dict) and body.get("status") == "IN_PROGRESS":
                self.progress.setdefault(parts[2], []).append(body)
            else:
                self.results[parts[2]] = body
            self._done.notify_all()
        return json_route({})


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

    def wait_refused(self, timeout_s: float = 60.0) -> str:
        """Until the worker exits, as it does when a start check fails; returns its log."""
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the worker still runs after {timeout_s:.0f} s:\n{self.log()}") from None
        assert code != 0, f"the worker exited with code 0:\n{self.log()}"
        return self.log()


def production_env(base: Mapping[str, str], standin: RunpodStandin) -> dict[str, str]:
    """``base`` (from :func:`tests.support.worker_proc.worker_env`) plus the stand-in's job API."""
    return {**base, **standin.worker_env(), "PATH": os.environ.get("PATH", "")}
