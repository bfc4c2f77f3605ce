"""A stand-in for RunPod's serverless API on the suite's HTTP server: ``/v2/{endpoint}/run``, ``/status/{id}``,
``/cancel/{id}``.

Every job plays a script: one ``/status`` body per poll, the last one repeated. A cancelled job answers
CANCELLED from then on. Requests need ``Authorization: Bearer <api_key>``. Files put in ``files`` are served
at ``/files/<name>`` without auth (a presigned bucket URL stand-in). ``faults`` makes the next requests of a
route (``run``, ``status``, ``cancel``, ``files``) fail: an HTTP status with headers, or ``DROP`` (the
connection is closed without an answer).

    with FakeRunPod() as rp:
        rp.scripts.append([queued(), progress("sampling", 1, 4), completed({...})])
        Client(endpoint=rp.endpoint, api_key=rp.api_key, base_url=rp.base_url)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.support.httpserver import HttpServer, Request, Route, json_route

Body = dict[str, Any]
Fault = tuple[int, dict[str, str]]
DROP: Fault = (0, {})


def queued() -> Body:
    return {"status": "IN_QUEUE"}


def progress(stage: str, step: int | None = None, steps: int | None = None) -> Body:
    output: Body = {"stage": stage}
    if step is not None:
        output.update(step=step, steps=steps)
    return {"status": "IN_PROGRESS", "output": output}


def completed(output: Body) -> Body:
    return {"status": "COMPLETED", "output": output}


def failed(error: str, output: Body | None = None) -> Body:
    body: Body = {"status": "FAILED", "error": error}
    if output is not None:
        body["output"] = output
    return body


@dataclass
class FakeJob:
    id: str
    input: Body
    script: list[Body]
    polls: int = 0
    cancelled: bool = False
    webhook: str | None = None

    def next_status(self) -> Body:
        if self.cancelled:
            return {"status": "CANCELLED"}
        body = self.script[min(self.polls, len(self.script) - 1)]
        self.polls += 1
        return body


class FakeRunPod(HttpServer):
    endpoint = "abc123"
    api_key = "test-key-9f3c"

    def __init__(self) -> None:
        super().__init__()
        self.scripts: deque[list[Body]] = deque()
        """Scripts for the next jobs, in order; when empty, jobs play ``default_script``."""
        self.default_script = [queued()]
        self.script_for: Callable[[Body], list[Body]] | None = None
        """Picks a job's script from its input (takes precedence over ``scripts``)."""
        self.files: dict[str, bytes] = {}
        self.faults: dict[str, list[Fault]] = {}
        """Per route, answers to give before the real ones (each used once, in order)."""
        self.jobs: dict[str, FakeJob] = {}
        self.cancelled: list[str] = []
        self.routes["/*"] = self.answer

    @property
    def base_url(self) -> str:
        return self.url("/v2")

    def file_url(self, name: str) -> str:
        return self.url(f"/files/{name}")

    def calls(self, route: str) -> int:
        """Requests received for a route (``run``, ``status``, ``cancel``, ``files``), faults included."""
        return sum(1 for hit in self.hits() if _route(hit.path) == route)

    def status_polls(self) -> int:
        return self.calls("status")

    def answer(self, request: Request) -> Route:
        with self.lock:
            if faults := self.faults.get(_route(request.path)):
                status, headers = faults.pop(0)
                return Route(status, b"{}", headers, drop=not status)
            if request.path.startswith("/files/") and request.method == "GET":
                data = self.files.get(request.path.removeprefix("/files/"))
                if data is None:
                    return json_route({"error": "no such file"}, 404)
                return Route(body=data, headers={"Content-Type": "application/octet-stream"})
            if not request.path.startswith(f"/v2/{self.endpoint}/"):
                return json_route({"error": "endpoint not found"}, 404)
            action, _, job_id = request.path.removeprefix(f"/v2/{self.endpoint}/").partition("/")
            if request.headers.get("Authorization") != f"Bearer {self.api_key}":
                return json_route({"error": "Unauthorized"}, 401)
            if request.method == "POST" and action == "run":
                return json_route(self._run(request.json() or {}))
            job = self.jobs.get(job_id)
            if job is None:
                return json_route({"error": "job not found"}, 404)
            if request.method == "GET" and action == "status":
                return json_route({"id": job.id, **job.next_status()})
            if request.method == "POST" and action == "cancel":
                job.cancelled = True
                self.cancelled.append(job.id)
                return json_route({"id": job.id, "status": "CANCELLED"})
            return json_route({"error": "method not allowed"}, 405)

    def _run(self, body: Body) -> Body:
        job_id = f"job-{len(self.jobs) + 1}"
        job_input = body.get("input", {})
        if self.script_for is not None:
            script = self.script_for(job_input)
        else:
            script = self.scripts.popleft() if self.scripts else list(self.default_script)
        self.jobs[job_id] = FakeJob(job_id, job_input, script, webhook=body.get("webhook"))
        return {"id": job_id, "status": "IN_QUEUE"}


def _route(path: str) -> str:
    """``/v2/{endpoint}/status/{id}`` -> ``status``; ``/files/{name}`` -> ``files``."""
    parts = path.split("/")
    return parts[1] if parts[1] == "files" else (parts[3] if len(parts) > 3 else "")
