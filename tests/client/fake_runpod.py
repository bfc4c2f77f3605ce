"""A stand-in for RunPod's serverless API on 127.0.0.1: ``/v2/{endpoint}/run``, ``/status/{id}``, ``/cancel/{id}``.

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

import json
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

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

    def next_status(self) -> Body:
        if self.cancelled:
            return {"status": "CANCELLED"}
        body = self.script[min(self.polls, len(self.script) - 1)]
        self.polls += 1
        return body


@dataclass
class Record:
    method: str
    path: str
    authorization: str | None


@dataclass
class FakeRunPod:
    endpoint: str = "abc123"
    api_key: str = "test-key-9f3c"
    scripts: deque[list[Body]] = field(default_factory=deque)
    """Scripts for the next jobs, in order; when empty, jobs play ``default_script``."""
    default_script: list[Body] = field(default_factory=lambda: [queued()])
    script_for: Callable[[Body], list[Body]] | None = None
    """Picks a job's script from its input (takes precedence over ``scripts``)."""
    files: dict[str, bytes] = field(default_factory=dict)
    faults: dict[str, list[Fault]] = field(default_factory=dict)
    """Per route, answers to give before the real ones (each used once, in order)."""
    jobs: dict[str, FakeJob] = field(default_factory=dict)
    cancelled: list[str] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v2"

    def file_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/files/{name}"

    def status_polls(self) -> int:
        return sum(1 for r in self.records if "/status/" in r.path)

    def calls(self, route: str) -> int:
        """Requests received for a route (``run``, ``status``, ``cancel``, ``files``), faults included."""
        return sum(1 for r in self.records if _route(r.path) == route)

    def __enter__(self) -> FakeRunPod:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    # ------------------------------------------------------------------------------------- behaviour

    def fault(self, path: str) -> Fault | None:
        with self._lock:
            queued = self.faults.get(_route(path))
            if not queued:
                return None
            self.records.append(Record("?", path, None))
            return queued.pop(0)

    def answer(self, method: str, path: str, body: Body | None, auth: str | None) -> tuple[int, Body | bytes]:
        with self._lock:
            self.records.append(Record(method, path, auth))
            if path.startswith("/files/") and method == "GET":
                data = self.files.get(path[len("/files/") :])
                return (200, data) if data is not None else (404, {"error": "no such file"})
            prefix = f"/v2/{self.endpoint}/"
            if not path.startswith(prefix):
                return 404, {"error": "endpoint not found"}
            if auth != f"Bearer {self.api_key}":
                return 401, {"error": "Unauthorized"}
            return self._route(method, path[len(prefix) :], body or {})

    def _route(self, method: str, route: str, body: Body) -> tuple[int, Body]:
        action, _, job_id = route.partition("/")
        if method == "POST" and action == "run":
            return 200, self._run(body)
        job = self.jobs.get(job_id)
        if job is None:
            return 404, {"error": "job not found"}
        if method == "GET" and action == "status":
            return 200, {"id": job.id, **job.next_status()}
        if method == "POST" and action == "cancel":
            job.cancelled = True
            self.cancelled.append(job.id)
            return 200, {"id": job.id, "status": "CANCELLED"}
        return 405, {"error": "method not allowed"}

    def _run(self, body: Body) -> Body:
        job_id = f"job-{len(self.jobs) + 1}"
        job_input = body.get("input", {})
        if self.script_for is not None:
            script = self.script_for(job_input)
        else:
            script = self.scripts.popleft() if self.scripts else list(self.default_script)
        self.jobs[job_id] = FakeJob(job_id, job_input, script)
        return {"id": job_id, "status": "IN_QUEUE"}


def _route(path: str) -> str:
    """``/v2/{endpoint}/status/{id}`` -> ``status``; ``/files/{name}`` -> ``files``."""
    parts = path.split("/")
    return parts[1] if parts[1] == "files" else (parts[3] if len(parts) > 3 else "")


def _handler_for(server: FakeRunPod) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            fault = server.fault(self.path)
            if fault is not None:
                if fault == DROP:
                    self.close_connection = True
                    return
                self.send_response(fault[0])
                for key, value in {**fault[1], "Content-Length": "2"}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(b"{}")
                return
            body = json.loads(raw) if raw else None
            status, answer = server.answer(method, self.path, body, self.headers.get("Authorization"))
            data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
            self.send_response(status)
            kind = "application/octet-stream" if isinstance(answer, bytes) else "application/json"
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler
