"""The Python API of the wan-worker client: :func:`make_input` or :func:`workflow_input` builds a job, a
:class:`Client` runs it on a RunPod endpoint (``/run``, ``/status`` polled with backoff, ``/cancel``) or the
runpod SDK's local API (``/run`` stashes the job, ``/status`` runs it: no progress, no cancel)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import KW_ONLY, dataclass, field, fields
from pathlib import Path
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util import Retry

DEFAULT_RUNPOD_BASE = "https://api.runpod.ai/v2"
"""RunPod's serverless API; ``RUNPOD_API_BASE`` or ``base_url=`` point the client elsewhere."""
CONNECT_TIMEOUT_S, REQUEST_TIMEOUT_S, DOWNLOAD_TIMEOUT_S = 10.0, 30.0, 120.0
RETRY = Retry(5, backoff_factor=0.5, status_forcelist=(429, 500, 502, 503, 504), raise_on_status=False)
"""Polls and downloads (GET): up to 5 more tries, 0, 1, 2, 4, 8 s apart (or as ``Retry-After`` says)."""
RETRY_UNSENT = RETRY.new(status_forcelist=(429, 503), allowed_methods=None, read=False)
"""A POST (submit, cancel, the local API's ``/status`` that runs the job) is sent again only when the server
surely did not take it (no connection, or 429/503), not after a lost answer, lest the job run twice."""
PAYLOAD_LIMITS = {"/run": 10_000_000, "/runsync": 20_000_000}
"""The most bytes of JSON that RunPod takes in a request, per route; the client refuses bigger ones first."""


class ClientError(Exception):
    """Base of every error this client raises."""


class UsageError(ClientError, ValueError):
    """The client was called wrongly: no backend, no API key, an image file that does not exist ..."""


class ApiError(ClientError, ConnectionError):
    """The API could not be reached or answered with an HTTP error (not a failed job)."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class WaitTimeout(ClientError, TimeoutError):
    """The job did not finish within the time the caller was willing to wait."""


class Interrupted(ClientError):
    """Waiting was stopped by the caller (its ``stop`` event was set)."""


@dataclass(eq=False)
class JobFailed(ClientError):
    """The job ended without a video: it failed, was cancelled or timed out on the endpoint."""

    message: str
    _: KW_ONLY
    job_id: str
    status: str
    code: str | None = None
    details: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return f"{self.message} (code {self.code})" if self.code else self.message


@dataclass(frozen=True)
class Progress:
    """Where a job is: ``queued``, ``running``, or the worker's stage (``sampling``: ``step``/``steps`` ...)."""

    stage: str
    step: int | None = None
    steps: int | None = None

    @property
    def fraction(self) -> float | None:
        return None if self.step is None or not self.steps else max(0.0, min(1.0, self.step / self.steps))


@dataclass(frozen=True)
class JobStatus:
    """One answer of ``/status``; while the job runs, ``output`` holds the worker's progress update."""

    id: str
    status: str
    output: Any = None
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.status in ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")

    @property
    def progress(self) -> Progress:
        out = self.output if isinstance(self.output, Mapping) else {}
        if self.status == "IN_QUEUE" or not isinstance(out.get("stage"), str):
            return Progress("queued" if self.status == "IN_QUEUE" else "running")
        return Progress(out["stage"], out.get("step"), out.get("steps"))


@dataclass(frozen=True)
class Adjustment:
    """A value the worker changed to one the model can use."""

    field: str
    requested: Any
    used: Any
    reason: str


@dataclass(frozen=True)
class VideoResult:
    """A finished job; its video is in ``video_base64`` or behind ``video_url`` (:meth:`Client.video_bytes`)."""

    job_id: str
    mode: str = ""
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    length: int | None = None
    fps: float | None = None
    steps: int | None = None
    mime_type: str = "video/mp4"
    size_bytes: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    frames: dict[str, int] = field(default_factory=dict)  # an extension's: given, new, delivered
    outputs: list[dict[str, Any]] = field(default_factory=list, repr=False)  # a workflow job's files
    adjustments: tuple[Adjustment, ...] = ()
    video_base64: str | None = field(default=None, repr=False)
    video_url: str | None = field(default=None, repr=False)

    @classmethod
    def from_output(cls, job_id: str, output: Mapping[str, Any]) -> VideoResult:
        """From the worker's result: the fields it has, the video under ``video``."""
        known = {f.name for f in fields(cls)} - {"job_id", "adjustments", "video_base64"}
        values = {k: v for k, v in output.items() if k in known and v is not None}
        said = [{"field": "", "reason": ""} | a for a in output.get("adjustments") or ()]
        adjustments = tuple(Adjustment(*map(a.get, ("field", "requested", "used", "reason"))) for a in said)
        return cls(job_id, **values, adjustments=adjustments, video_base64=output.get("video"))


def job_failure(status: JobStatus) -> JobFailed:
    """Why a job ended without a video: from RunPod's ``error`` and ``output``, or the local API's ``error``."""
    output = status.output if isinstance(status.output, Mapping) else {}
    code, details = output.get("error_code") or None, output.get("details") or []
    endings = {"FAILED": "failed", "CANCELLED": "was cancelled", "TIMED_OUT": "timed out on the endpoint"}
    message = _plain_error(status.error or output.get("error"))
    message = message or f"the job {endings.get(status.status, f'ended as {status.status}')}"
    named = re.match(r"([a-z][a-z0-9_]*): (.*)$", message, re.DOTALL)
    if named and code in (None, named.group(1)):
        code, message = named.groups()
    if code is None and status.status in ("CANCELLED", "TIMED_OUT"):
        code = status.status.lower()
    return JobFailed(message, job_id=status.id, status=status.status, code=code, details=details)


def _plain_error(error: str | None) -> str | None:  # the runpod SDK reports an exception as JSON text
    text, parsed = (error or "").strip(), None
    with contextlib.suppress(ValueError):
        parsed = json.loads(text) if text.startswith("{") else None
    if not isinstance(parsed, Mapping):
        return text or None
    message = parsed.get("error_message") or parsed.get("error") or "unexpected error in the worker"
    kind = re.search(r"'([\w.]+)'", str(parsed.get("error_type") or ""))
    return f"{kind.group(1).rsplit('.', 1)[-1]}: {message}" if kind else str(message)


def is_url(text: str) -> bool:
    return re.match(r"https?://", text, flags=re.IGNORECASE) is not None


def file_base64(path: str | os.PathLike[str], what: str = "image") -> str:  # the worker sniffs the format
    try:
        return base64.b64encode(Path(path).expanduser().read_bytes()).decode("ascii")
    except (FileNotFoundError, IsADirectoryError):
        raise UsageError(f"{os.fspath(path)}: no such {what} file") from None
    except OSError as exc:
        raise UsageError(f"{os.fspath(path)}: cannot read the {what} ({exc.strerror or exc})") from exc


def make_input(
    prompt: str, image: Any = None, *, end_image: Any = None, video: Any = None, **fields: Any
) -> Any:
    """A job ``input``: prompt, start image or ``video`` to extend, end image, other fields (None: left out). A
    file goes by its form: ``http(s)://`` in ``*_url``, ``volume:PATH`` in ``*_path``, else in ``*_base64``."""
    job, sources = {"prompt": prompt}, {"image": image, "end_image": end_image, "extend_video": video}
    for prefix, text in ((k, os.fspath(v)) for k, v in sources.items() if v is not None):
        kind = "url" if is_url(text) else "path" if text.startswith("volume:") else "base64"
        value = file_base64(text, prefix[-5:]) if kind == "base64" else text.removeprefix("volume:")
        job[f"{prefix}_{kind}"] = value
    return job | {k: v for k, v in fields.items() if v is not None}


def workflow_input(graph: Any, images: Mapping[str, Any] | None = None, **fields: Any) -> Any:
    """A ``workflow`` job: an API-format graph (or its JSON file) and the ``{name: file or URL}`` it loads."""
    if not isinstance(graph, Mapping):
        try:
            graph = json.loads(Path(graph).expanduser().read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"{os.fspath(graph)}: not a readable JSON graph ({exc})") from exc
    files = [{"name": n, "image": f if is_url(str(f)) else file_base64(f)} for n, f in (images or {}).items()]
    return {k: v for k, v in ({"workflow": graph, "images": files or None} | fields).items() if v is not None}


def _session(retry: Retry, headers: Mapping[str, str]) -> requests.Session:
    session = requests.Session()
    session.headers.update(headers)
    session.mount("http://", HTTPAdapter(max_retries=retry))
    session.mount("https://", HTTPAdapter(max_retries=retry))
    return session


class Client:
    """A client for one backend: a RunPod endpoint (``endpoint=``) or the local API (``url=``)."""

    def __init__(
        self,
        *,
        endpoint: str | None = None,
        url: str | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        poll_interval: tuple[float, float] = (0.5, 5.0),
        request_timeout: float = REQUEST_TIMEOUT_S,
    ) -> None:
        if bool(endpoint) == bool(url):
            raise UsageError("give either a RunPod endpoint id or the URL of a local API, not both")
        self.local, headers = bool(url), {}
        if url:
            self.base = url.rstrip("/")
        else:
            if not (key := api_key or os.environ.get("RUNPOD_API_KEY", "")):
                raise UsageError("a RunPod endpoint needs an API key: set RUNPOD_API_KEY")
            root = base_url or os.environ.get("RUNPOD_API_BASE") or DEFAULT_RUNPOD_BASE
            self.base, headers = f"{root.rstrip('/')}/{endpoint}", {"Authorization": f"Bearer {key}"}
        self.poll_interval, self.request_timeout, self.can_cancel = poll_interval, request_timeout, not url
        self.where = f"local API {self.base}" if url else f"endpoint {self.base}"  # for messages: no API key
        self._gets, self._posts = _session(RETRY, headers), _session(RETRY_UNSENT, headers)
        self._downloads = _session(RETRY, {})  # a presigned URL carries its own credentials: no API key there

    def __repr__(self) -> str:
        return f"Client({self.where!r})"

    def submit(self, job_input: Mapping[str, Any], *, webhook: str | None = None) -> str:
        """``POST /run`` (``webhook``: posted the result too): the job's id; refused if over RunPod's limit."""
        body = {"input": dict(job_input)} | ({"webhook": webhook} if webhook else {})
        if not self.local and (size := len(json.dumps(body))) > (limit := PAYLOAD_LIMITS["/run"]):
            over = f"the request is {size / 1e6:.1f} MB, over the {limit / 1e6:g} MB RunPod takes at /run"
            raise UsageError(f"{over}: send files by URL; use a bucket (output=url) so that videos go by URL")
        job_id = self._call("POST", "/run", body).get("id")
        if not isinstance(job_id, str) or not job_id:
            raise ApiError(f"{self.where} accepted the job but returned no job id")
        return job_id

    def status(self, job_id: str) -> JobStatus:
        """``GET /status``; on the local API a POST that runs the job, answered at its end (no read timeout)."""
        body = self._call("POST" if self.local else "GET", f"/status/{job_id}", forever=self.local)
        error, state = body.get("error"), str(body.get("status") or "UNKNOWN").upper()
        error = error if isinstance(error, str) else (json.dumps(error) if error else None)
        return JobStatus(str(body.get("id") or job_id), state, body.get("output"), error)

    def cancel(self, job_id: str) -> bool:
        """``POST /cancel``; False when the backend cannot cancel (the local API)."""
        if self.can_cancel:
            self._call("POST", f"/cancel/{job_id}")
        return self.can_cancel

    def wait(
        self,
        job_id: str,
        *,
        on_progress: Callable[[Progress], None] | None = None,
        timeout: float | None = None,
        stop: threading.Event | None = None,
    ) -> VideoResult:
        """Follow a job to its end (:class:`JobFailed` unless it completed), telling ``on_progress``: ``/status``
        is polled every ``poll_interval[0]`` s while the progress changes, up to ``poll_interval[1]`` s while not.
        ``timeout`` (s): :class:`WaitTimeout`; ``stop`` set: :class:`Interrupted` (the job is not cancelled)."""
        deadline = float("inf") if timeout is None else time.monotonic() + timeout
        stop = stop or threading.Event()
        fetch = self._background(job_id) if self.local and not stop.is_set() else lambda: self.status(job_id)
        (first, longest), interval, last = self.poll_interval, 0.0, None
        while not stop.is_set():
            current = fetch()
            if current is not None and current.done:
                if current.status != "COMPLETED" or not isinstance(current.output, Mapping):
                    raise job_failure(current)
                return VideoResult.from_output(job_id, current.output)
            progress = current.progress if current else Progress("running")
            if on_progress:
                on_progress(progress)
            interval = first if progress != last or self.local else min(longest, interval * 1.5)
            last, left = progress, deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(f"job {job_id} did not finish in time")
            stop.wait(min(interval, left))
        raise Interrupted(f"stopped waiting for job {job_id}")

    def generate(
        self, job_input: Mapping[str, Any], *, segments: int = 1, webhook: str | None = None, **wait: Any
    ) -> VideoResult:
        """Submit and wait (as :meth:`wait`; ``on_submit`` is told each job id). ``segments``: so many jobs, each
        extending the last one's video by its URL, else by its base64 (the images go to the first)."""
        on_submit, last, job = wait.pop("on_submit", None) or (lambda job_id: None), None, dict(job_input)
        for n in range(1, segments + 1):
            try:
                job_id = self.submit(job, webhook=webhook)
            except UsageError as exc:
                raise UsageError(f"segment {n} of {segments}: {exc}" if segments > 1 else str(exc)) from None
            on_submit(job_id)
            last = self.wait(job_id, **wait)
            job = {k: v for k, v in job.items() if not re.fullmatch(r"(end_image|image|extend_video)_\w+", k)}
            kind = "url" if last.video_url else "base64"
            job[f"extend_video_{kind}"] = last.video_url or last.video_base64
        if last is None:
            raise UsageError("segments must be at least 1")
        return last

    def video_bytes(self, result: VideoResult) -> bytes:
        """The MP4: decoded from the result, or downloaded from ``video_url``."""
        if result.video_base64:
            try:
                return base64.b64decode(result.video_base64, validate=True)
            except ValueError as exc:
                raise ApiError("the result's video is not valid base64") from exc
        if not result.video_url:
            raise ApiError("the result has neither a video nor a video_url")
        try:
            response = self._downloads.get(result.video_url, timeout=(CONNECT_TIMEOUT_S, DOWNLOAD_TIMEOUT_S))
        except requests.RequestException as exc:
            raise ApiError(f"cannot download the video ({type(exc).__name__})") from exc
        if (code := response.status_code) >= 400:
            raise ApiError(f"cannot download the video: HTTP {code}", status_code=code)
        return response.content

    def save_video(self, result: VideoResult, path: str | os.PathLike[str]) -> Path:
        """Write the MP4 to ``path`` (atomically: a partial file never takes the final name)."""
        target, data = Path(path), self.video_bytes(result)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.part")
        try:
            partial.write_bytes(data)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        return target

    def save_outputs(self, result: VideoResult, folder: str | os.PathLike[str]) -> list[Path]:
        """A workflow job's files as ``folder/<filename>`` (``<node id>_<filename>`` for a name seen before)."""
        paths: list[Path] = []
        for entry in result.outputs:
            name = Path(str(entry.get("filename") or "")).name.lstrip(".") or "output"
            path = Path(folder, f"{entry.get('node_id')}_{name}" if Path(folder, name) in paths else name)
            file = VideoResult(result.job_id, video_base64=entry.get("data"), video_url=entry.get("url"))
            paths.append(self.save_video(file, path))
        return paths

    def _background(self, job_id: str) -> Callable[[], JobStatus | None]:  # status() on a daemon thread
        future: Future[JobStatus] = Future()

        def call() -> None:
            try:
                future.set_result(self.status(job_id))
            except Exception as exc:
                future.set_exception(exc)

        threading.Thread(target=call, name=f"status-{job_id}", daemon=True).start()
        return lambda: future.result() if future.done() else None

    def _call(self, method: str, path: str, payload: Any = None, forever: bool = False) -> Any:
        """One API call (``forever``: no read timeout), its JSON object back or a useful :class:`ApiError`."""
        timeout = (CONNECT_TIMEOUT_S, None if forever else self.request_timeout)
        try:
            session = self._gets if method == "GET" else self._posts
            response = session.request(method, self.base + path, json=payload, timeout=timeout)
        except requests.Timeout as exc:
            raise ApiError(f"{self.where} did not answer in time") from exc
        except requests.RequestException as exc:
            raise ApiError(f"cannot reach {self.where} ({type(exc).__name__})") from exc
        body = None
        with contextlib.suppress(ValueError):
            body = response.json()
        if (code := response.status_code) >= 400:
            said = body if isinstance(body, dict) else {}
            hint = said.get("error") or said.get("message") or said.get("detail")
            problem = f"answered HTTP {code}" + (f": {str(hint)[:200]}" if hint else "")
            if code in (401, 403) and not self.local:
                problem = f"refused the API key (HTTP {code}): check RUNPOD_API_KEY"
            elif code == 404:
                problem = f"has no {path} (HTTP 404): check the endpoint id or URL"
            raise ApiError(f"{self.where} {problem}", status_code=code)
        if not isinstance(body, dict):
            raise ApiError(f"{self.where} answered with something that is not a JSON object")
        return body
