"""The Python API of the wan-worker client: submit a job, follow it, get the video.

One :class:`Client` talks to either backend:

- a RunPod serverless endpoint (``Client(endpoint="abc123", api_key=...)``): ``POST /run``, ``GET /status``
  polled with backoff (the worker's progress updates arrive in ``output`` while the job runs), and
  ``POST /cancel``;
- the runpod SDK's local API (``Client(url="http://localhost:8000")``): ``POST /run`` only stashes the job,
  ``POST /status`` runs it and answers when it is done. There is no progress and no cancel there.

This module uses the standard library and ``requests`` only; it imports nothing of the worker itself.
"""

from __future__ import annotations

import base64
import json
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

DEFAULT_RUNPOD_BASE = "https://api.runpod.ai/v2"
"""RunPod's serverless API; ``RUNPOD_API_BASE`` or ``base_url=`` point the client elsewhere."""

TERMINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})
CONNECT_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 30.0
DOWNLOAD_TIMEOUT_S = 120.0
MAX_TRANSIENT_FAILURES = 5
"""Polls in a row that may fail (network error, HTTP 429 or 5xx) before :meth:`Client.wait` gives up."""

ProgressCallback = Callable[["Progress"], None]


# --------------------------------------------------------------------------------------------- errors


class ClientError(Exception):
    """Base of every error this client raises."""


class UsageError(ClientError, ValueError):
    """The client was called wrongly: no backend, no API key, an image file that does not exist ..."""


class ApiError(ClientError, ConnectionError):
    """The API could not be reached or answered with an HTTP error (not a failed job)."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code

    @property
    def transient(self) -> bool:
        """Worth retrying: no answer at all, rate limited, or a server-side error."""
        code = self.status_code
        return code is None or code == 429 or code >= 500


class JobFailed(ClientError):
    """The job ended without a video: it failed, was cancelled or timed out on the endpoint."""

    def __init__(
        self,
        message: str,
        *,
        job_id: str,
        status: str,
        code: str | None = None,
        details: list[Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.job_id = job_id
        self.status = status
        self.code = code
        self.details: list[Any] = list(details or [])

    def __str__(self) -> str:
        return f"{self.message} (code {self.code})" if self.code else self.message


class WaitTimeout(ClientError, TimeoutError):
    """The job did not finish within the time the caller was willing to wait."""


class Interrupted(ClientError):
    """Waiting was stopped by the caller (its ``stop`` event was set)."""


# ---------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Progress:
    """Where a job is: ``queued``, ``running``, or the worker's stage (``inputs``, ``models``, ``comfyui``,
    ``sampling`` with ``step``/``steps``, ``delivering``)."""

    stage: str
    step: int | None = None
    steps: int | None = None

    @property
    def fraction(self) -> float | None:
        if self.step is None or not self.steps:
            return None
        return max(0.0, min(1.0, self.step / self.steps))


@dataclass(frozen=True)
class JobStatus:
    """One answer of ``/status``."""

    id: str
    status: str
    output: Any = None
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.status in TERMINAL_STATES

    @property
    def progress(self) -> Progress:
        if self.status == "IN_QUEUE":
            return Progress("queued")
        return progress_from_output(self.output) or Progress("running")


@dataclass(frozen=True)
class Adjustment:
    """A value the worker changed to one the model can use."""

    field: str
    requested: Any
    used: Any
    reason: str


@dataclass(frozen=True)
class VideoResult:
    """A finished job. The video itself is in ``video_base64`` or behind ``video_url``: see
    :meth:`Client.video_bytes` and :meth:`Client.save_video`."""

    job_id: str
    mode: str
    seed: int | None
    width: int | None
    height: int | None
    length: int | None
    fps: float | None
    steps: int | None
    mime_type: str = "video/mp4"
    size_bytes: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    adjustments: tuple[Adjustment, ...] = ()
    video_base64: str | None = field(default=None, repr=False)
    video_url: str | None = field(default=None, repr=False)

    @classmethod
    def from_output(cls, job_id: str, output: Mapping[str, Any]) -> VideoResult:
        return cls(
            job_id=job_id,
            mode=str(output.get("mode", "")),
            seed=_int_or_none(output.get("seed")),
            width=_int_or_none(output.get("width")),
            height=_int_or_none(output.get("height")),
            length=_int_or_none(output.get("length")),
            fps=_float_or_none(output.get("fps")),
            steps=_int_or_none(output.get("steps")),
            mime_type=str(output.get("mime_type") or "video/mp4"),
            size_bytes=_int_or_none(output.get("size_bytes")),
            timings=_timings(output.get("timings")),
            adjustments=_adjustments(output.get("adjustments")),
            video_base64=_str_or_none(output.get("video")),
            video_url=_str_or_none(output.get("video_url")),
        )


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _float_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _timings(value: Any) -> dict[str, float]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): float(v) for k, v in value.items() if _float_or_none(v) is not None}


def _adjustments(value: Any) -> tuple[Adjustment, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(
        Adjustment(str(a.get("field", "")), a.get("requested"), a.get("used"), str(a.get("reason", "")))
        for a in value
        if isinstance(a, Mapping)
    )


def progress_from_output(output: Any) -> Progress | None:
    """The worker's progress update (``{"stage", "step"?, "steps"?}``) from an IN_PROGRESS ``output``."""
    if not isinstance(output, Mapping) or not isinstance(output.get("stage"), str):
        return None
    return Progress(str(output["stage"]), _int_or_none(output.get("step")), _int_or_none(output.get("steps")))


# ---------------------------------------------------------------------------------------------- errors


_CODE_PREFIX = re.compile(r"^(?P<code>[a-z][a-z0-9_]*): (?P<message>.*)$", re.DOTALL)
_STATUS_CODES = {"CANCELLED": "cancelled", "TIMED_OUT": "timed_out"}
_STATUS_MESSAGES = {
    "FAILED": "the job failed",
    "CANCELLED": "the job was cancelled",
    "TIMED_OUT": "the job timed out on the endpoint",
}


def job_failure(status: JobStatus) -> JobFailed:
    """The :class:`JobFailed` for a job that ended without a video, its message and code in plain words.

    RunPod gives ``error`` plus ``output: {"error_code", "details"}``; the local API only ``error``, whose
    text begins with the code (``"invalid_input: width must be ..."``).
    """
    output = status.output if isinstance(status.output, Mapping) else {}
    code = _str_or_none(output.get("error_code"))
    details = output.get("details") if isinstance(output.get("details"), list) else []
    message = _plain_error(status.error or _str_or_none(output.get("error")))
    message = message or _STATUS_MESSAGES.get(status.status, f"the job ended as {status.status}")
    named = _CODE_PREFIX.match(message)
    if named and (code is None or named.group("code") == code):
        code, message = named.group("code"), named.group("message")
    code = code or _STATUS_CODES.get(status.status)
    return JobFailed(message, job_id=status.id, status=status.status, code=code, details=details)


def _plain_error(error: str | None) -> str | None:
    """An error text fit to show: the runpod SDK reports an escaped exception as a JSON string."""
    if not error:
        return None
    text = error.strip()
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except ValueError:
            return text
        if isinstance(parsed, Mapping):
            message = parsed.get("error_message") or parsed.get("error") or "unexpected error in the worker"
            kind = re.search(r"'([\w.]+)'", str(parsed.get("error_type") or ""))
            return f"{kind.group(1).rsplit('.', 1)[-1]}: {message}" if kind else str(message)
    return text


# ---------------------------------------------------------------------------------------------- inputs


_IMAGE_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"),
    (b"BM", 0, "image/bmp"),
)


def sniff_mime(data: bytes) -> str | None:
    """The image MIME type named by the magic bytes, or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    for magic, offset, mime in _IMAGE_MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return mime
    return None


def encode_image(data: bytes) -> str:
    """A ``data:`` URI for an image (raw base64 when the type is unknown: the worker then explains)."""
    encoded = base64.b64encode(data).decode("ascii")
    mime = sniff_mime(data)
    return f"data:{mime};base64,{encoded}" if mime else encoded


def image_fields(source: str | os.PathLike[str], *, end: bool = False) -> dict[str, str]:
    """The job fields for one image: ``http(s)://`` -> ``*_url``, ``volume:PATH`` -> ``*_path`` (a file on the
    worker's volume), anything else is a local file sent as a ``data:`` URI in ``*_base64``."""
    prefix = "end_image" if end else "image"
    text = os.fspath(source)
    if re.match(r"^https?://", text, flags=re.IGNORECASE):
        return {f"{prefix}_url": text}
    if text.startswith("volume:"):
        return {f"{prefix}_path": text[len("volume:") :]}
    path = Path(text).expanduser()
    if not path.is_file():
        raise UsageError(f"{text}: no such image file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{text}: cannot read the image ({exc.strerror or exc})") from exc
    return {f"{prefix}_base64": encode_image(data)}


def make_input(
    prompt: str,
    image: str | os.PathLike[str],
    *,
    end_image: str | os.PathLike[str] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A job ``input``: the prompt, the image(s) and any other field of the job contract (None = default)."""
    job: dict[str, Any] = {"prompt": prompt, **image_fields(image)}
    if end_image is not None:
        job.update(image_fields(end_image, end=True))
    job.update({k: v for k, v in fields.items() if v is not None})
    return job


# ---------------------------------------------------------------------------------------------- client


class Client:
    """A client for one backend: a RunPod endpoint (``endpoint=``) or the local API (``url=``).

    >>> client = Client(url="http://localhost:8000")
    >>> result = client.generate(make_input("a fox in the snow", "start.png"))
    >>> client.save_video(result, "out.mp4")
    """

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
        self.local = bool(url)
        if url:
            self.base = url.rstrip("/")
            self._headers: dict[str, str] = {}
        else:
            key = api_key or os.environ.get("RUNPOD_API_KEY", "")
            if not key:
                raise UsageError("a RunPod endpoint needs an API key: set RUNPOD_API_KEY")
            root = base_url or os.environ.get("RUNPOD_API_BASE") or DEFAULT_RUNPOD_BASE
            self.base = f"{root.rstrip('/')}/{endpoint}"
            self._headers = {"Authorization": f"Bearer {key}"}
        self.poll_interval = poll_interval
        self.request_timeout = request_timeout
        self._local_sessions = threading.local()

    def __repr__(self) -> str:
        return f"Client({self.where!r})"

    @property
    def where(self) -> str:
        """The backend, for messages (never the API key)."""
        return f"local API {self.base}" if self.local else f"endpoint {self.base}"

    @property
    def can_cancel(self) -> bool:
        """The local API has no ``/cancel``."""
        return not self.local

    # ------------------------------------------------------------------------------------- operations

    def submit(self, job_input: Mapping[str, Any]) -> str:
        """``POST /run``: the job's id."""
        body = self._call("POST", "/run", payload={"input": dict(job_input)})
        job_id = body.get("id")
        if not isinstance(job_id, str) or not job_id:
            raise ApiError(f"{self.where} accepted the job but returned no job id")
        return job_id

    def status(self, job_id: str) -> JobStatus:
        """``GET /status`` on RunPod. On the local API this is a POST that runs the job and answers at its end
        (no read timeout: jobs take minutes)."""
        if self.local:
            body = self._call("POST", f"/status/{job_id}", wait_forever=True)
        else:
            body = self._call("GET", f"/status/{job_id}")
        error = body.get("error")
        return JobStatus(
            id=str(body.get("id") or job_id),
            status=str(body.get("status") or "UNKNOWN").upper(),
            output=body.get("output"),
            error=error if isinstance(error, str) else (json.dumps(error) if error else None),
        )

    def cancel(self, job_id: str) -> bool:
        """``POST /cancel``; False when the backend cannot cancel (the local API)."""
        if not self.can_cancel:
            return False
        self._call("POST", f"/cancel/{job_id}")
        return True

    def wait(
        self,
        job_id: str,
        *,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
        stop: threading.Event | None = None,
    ) -> VideoResult:
        """Follow a job to its end; :class:`JobFailed` unless it completed.

        ``on_progress`` is called after every poll; ``timeout`` (seconds) raises :class:`WaitTimeout`;
        setting ``stop`` raises :class:`Interrupted` at the next poll (the job is not cancelled).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        stop = stop or threading.Event()
        if stop.is_set():
            raise Interrupted(f"stopped waiting for job {job_id}")
        if self.local:
            final = self._wait_local(job_id, on_progress, deadline, stop)
        else:
            final = self._poll(job_id, on_progress, deadline, stop)
        if final.status != "COMPLETED":
            raise job_failure(final)
        if not isinstance(final.output, Mapping):
            raise JobFailed("the job completed without a result", job_id=job_id, status=final.status)
        return VideoResult.from_output(job_id, final.output)

    def generate(
        self,
        job_input: Mapping[str, Any],
        *,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
    ) -> VideoResult:
        """Submit and wait."""
        return self.wait(self.submit(job_input), on_progress=on_progress, timeout=timeout)

    def video_bytes(self, result: VideoResult) -> bytes:
        """The MP4: decoded from the result, or downloaded from ``video_url``."""
        if result.video_base64:
            try:
                return base64.b64decode(result.video_base64, validate=True)
            except ValueError as exc:
                raise ApiError("the result's video is not valid base64") from exc
        if result.video_url:
            return self._download(result.video_url)
        raise ApiError("the result has neither a video nor a video_url")

    def save_video(self, result: VideoResult, path: str | os.PathLike[str]) -> Path:
        """Write the MP4 to ``path`` (atomically: a partial file never takes the final name)."""
        target = Path(path)
        data = self.video_bytes(result)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.part")
        try:
            partial.write_bytes(data)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        return target

    # ---------------------------------------------------------------------------------------- waiting

    def _wait_local(
        self,
        job_id: str,
        on_progress: ProgressCallback | None,
        deadline: float | None,
        stop: threading.Event,
    ) -> JobStatus:
        """The local API's ``POST /status`` runs the job and answers at its end: make that call on a helper
        thread and keep reporting ``running`` (so a bar's clock ticks and Ctrl-C, ``stop`` and ``timeout`` are
        honoured while it runs)."""
        answer: list[JobStatus] = []
        failure: list[ClientError] = []

        def call() -> None:
            try:
                answer.append(self.status(job_id))
            except ClientError as exc:
                failure.append(exc)

        helper = threading.Thread(target=call, name=f"status-{job_id}", daemon=True)
        helper.start()
        while True:
            if on_progress:
                on_progress(Progress("running"))
            helper.join(self.poll_interval[0])
            if not helper.is_alive():
                break
            if stop.is_set():
                raise Interrupted(f"stopped waiting for job {job_id}")
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"job {job_id} did not finish in time")
        if failure:
            raise failure[0]
        return answer[0]

    def _poll(
        self,
        job_id: str,
        on_progress: ProgressCallback | None,
        deadline: float | None,
        stop: threading.Event,
    ) -> JobStatus:
        interval, longest = self.poll_interval
        failures = 0
        last: Progress | None = None
        while True:
            if stop.is_set():
                raise Interrupted(f"stopped waiting for job {job_id}")
            try:
                current = self.status(job_id)
            except ApiError as exc:
                failures += 1
                if not exc.transient or failures > MAX_TRANSIENT_FAILURES:
                    raise
                current = None
            if current is not None:
                failures = 0
                if current.done:
                    return current
                progress = current.progress
                if on_progress:
                    on_progress(progress)
                if progress != last:
                    last, interval = progress, self.poll_interval[0]
                else:
                    interval = min(longest, interval * 1.5)
            self._sleep(job_id, interval, deadline, stop)

    @staticmethod
    def _sleep(job_id: str, interval: float, deadline: float | None, stop: threading.Event) -> None:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(f"job {job_id} did not finish in time")
            interval = min(interval, left)
        stop.wait(interval)

    # ------------------------------------------------------------------------------------------- HTTP

    @property
    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local_sessions, "session", None)
        if session is None:
            session = requests.Session()
            session.headers.update(self._headers)
            self._local_sessions.session = session
        return session

    def _call(
        self,
        method: str,
        path: str,
        *,
        payload: Mapping[str, Any] | None = None,
        wait_forever: bool = False,
    ) -> dict[str, Any]:
        """One API call, with ``request_timeout`` to read the answer unless ``wait_forever``."""
        read_timeout = None if wait_forever else self.request_timeout
        try:
            response = self._session.request(
                method, self.base + path, json=payload, timeout=(CONNECT_TIMEOUT_S, read_timeout)
            )
        except requests.Timeout as exc:
            raise ApiError(f"{self.where} did not answer in time") from exc
        except requests.RequestException as exc:
            raise ApiError(f"cannot reach {self.where} ({type(exc).__name__})") from exc
        if response.status_code >= 400:
            raise ApiError(self._http_message(response), status_code=response.status_code)
        try:
            body = response.json()
        except ValueError as exc:
            raise ApiError(f"{self.where} answered with something that is not JSON") from exc
        if not isinstance(body, dict):
            raise ApiError(f"{self.where} answered with an unexpected JSON value")
        return body

    def _http_message(self, response: requests.Response) -> str:
        code = response.status_code
        if code in (401, 403) and not self.local:
            return f"{self.where} refused the API key (HTTP {code}): check RUNPOD_API_KEY"
        if code == 404:
            return f"{self.where} has no {response.request.path_url.split('?')[0]} (HTTP 404): check the endpoint id or URL"
        return f"{self.where} answered HTTP {code}{_short_reason(response)}"

    def _download(self, url: str) -> bytes:
        try:
            # A presigned URL carries its own credentials: the API key is not sent there.
            response = requests.get(url, timeout=(CONNECT_TIMEOUT_S, DOWNLOAD_TIMEOUT_S))
        except requests.RequestException as exc:
            raise ApiError(f"cannot download the video ({type(exc).__name__})") from exc
        if response.status_code >= 400:
            raise ApiError(
                f"cannot download the video: HTTP {response.status_code}", status_code=response.status_code
            )
        return response.content


def _short_reason(response: requests.Response) -> str:
    """A one-line hint from an error body: its ``error``/``message``/``detail``, never a whole dump."""
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip().splitlines()[0] if response.text.strip() else ""
        return f": {text[:200]}" if text and not text.startswith("<") else ""
    if isinstance(body, Mapping):
        for key in ("error", "message", "detail"):
            value = body.get(key)
            if isinstance(value, str) and value:
                return f": {value[:200]}"
    return ""
