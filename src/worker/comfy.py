"""A client for ComfyUI's HTTP and WebSocket protocol: one method per protocol step.

It knows nothing of Wan, models or volumes; every network call has a timeout. The calls are blocking: the
async handler runs them in threads, and cancels a watch by closing its socket (:meth:`Watch.abort`).

The protocol facts (recorded from ComfyUI v0.33.0): a prompt is queued with ``POST /prompt`` (400 with
``node_errors`` when the graph is refused); the WebSocket ``/ws?clientId=`` carries ``execution_start``,
``execution_cached``, ``executing``, ``progress``, ``executed`` (with each output node's files) and ends a
prompt with ``execution_success``, ``execution_error`` or ``execution_interrupted``, then ``status``, then
``executing`` with ``node: null``. ``execution_success`` is sent *before* ComfyUI writes the prompt to
``/history``; only ``executing`` with ``node: null`` comes after the entry exists. So a prompt's end is that
message, and its outputs are the history entry's, or else those its ``executed`` messages named. Files leave
through ``GET /view``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote

import requests
import urllib3
import websocket

from .errors import (
    ComfyExecutionError,
    ComfyUnavailable,
    ComfyValidationError,
    JobCancelled,
    JobTimeout,
    NoOutput,
)

log = logging.getLogger("worker.comfy")

ProgressCallback = Callable[[str, int, int], None]
"""Called with (node id, value, max) for every ``progress`` message of the watched prompt."""

READ_CHUNK = 768 * 1024
"""Bytes handed to an :class:`OutputSink` at a time: a multiple of 3, so that base64 needs no carry, and
small enough that a chunk and its encoding stay in the CPU's cache while they are worked on."""


class OutputSink(Protocol):
    """Where :meth:`ComfyClient.read_output` puts a file's bytes as they arrive."""

    def expect(self, size: int | None) -> None:
        """Called once before any bytes, with the announced size (None when the server announced none)."""

    def write(self, chunk: memoryview) -> None:
        """The next bytes; ``chunk`` is only valid during the call."""


@dataclass(frozen=True)
class OutputFile:
    """A file a node wrote, as ``/history`` names it."""

    node_id: str
    filename: str
    subfolder: str
    type: str


@dataclass
class Outcome:
    """How a watched prompt ended, and what it wrote."""

    prompt_id: str
    outputs: list[OutputFile] = field(default_factory=list)
    cached_nodes: list[str] = field(default_factory=list)
    reconnected: bool = False
    executed: dict[str, Any] = field(default_factory=dict)
    """Each output node's ``output`` as its ``executed`` message gave it."""


class ComfyClient:
    """Talks to one ComfyUI server at ``base_url`` (``http://host:port``)."""

    def __init__(self, base_url: str, *, timeout_s: float = 30.0, session: requests.Session | None = None):
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.session = session or requests.Session()
        self.session.trust_env = False
        self.ws_base = "ws" + self.base_url.removeprefix("http")  # http: ws, https: wss

    # ------------------------------------------------------------------------------------------ HTTP

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout_s)
        try:
            return self.session.request(method, f"{self.base_url}{path}", **kwargs)
        except requests.RequestException as exc:
            raise ComfyUnavailable(
                f"ComfyUI at {self.base_url} did not answer {method} {path.split('?')[0]} "
                f"({exc.__class__.__name__})"
            ) from exc

    def is_ready(self) -> bool:
        try:
            return self._request("GET", "/system_stats", timeout=min(self.timeout_s, 5.0)).status_code == 200
        except ComfyUnavailable:
            return False

    def wait_ready(self, timeout_s: float, *, cancel: threading.Event | None = None) -> float:
        """Wait until ComfyUI answers; returns the seconds waited. Polls with a short, growing interval."""
        started, delay, cancel = time.monotonic(), 0.02, cancel or threading.Event()
        while not self.is_ready():
            waited = time.monotonic() - started
            if waited >= timeout_s:
                raise ComfyUnavailable(
                    f"ComfyUI at {self.base_url} did not become ready within {timeout_s:.0f} s "
                    "(COMFY_START_TIMEOUT_S)"
                )
            if cancel.wait(min(delay, timeout_s - waited)):
                raise JobCancelled("the job was cancelled while waiting for ComfyUI")
            delay = min(delay * 2, 0.05)
        return time.monotonic() - started

    def system_stats(self) -> dict[str, Any]:
        """``GET /system_stats``: ComfyUI's version and its ``devices`` (each with a ``type``: cuda, cpu ...)."""
        return _json_or_empty(self._request("GET", "/system_stats"))

    def list_models(self, folder: str) -> list[str] | None:
        """The files ComfyUI sees in a model folder (``GET /models/<folder>``); None if it cannot say."""
        response = self._request("GET", f"/models/{quote(folder)}")
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise ComfyUnavailable(f"ComfyUI answered HTTP {response.status_code} to GET /models/{folder}")
        names = response.json()
        return [str(n) for n in names] if isinstance(names, list) else None

    def upload_image(self, data: bytes, name: str, *, mime: str = "image/png", subfolder: str = "") -> str:
        """Upload an input image; returns the name a LoadImage node must use."""
        files = {"image": (name, data, mime)}
        form = {"overwrite": "true", "type": "input", "subfolder": subfolder}
        response = self._request("POST", "/upload/image", files=files, data=form)
        if response.status_code != 200:
            raise ComfyUnavailable(f"ComfyUI refused the image upload (HTTP {response.status_code})")
        body = response.json()
        stored = str(body.get("name", name))
        folder = str(body.get("subfolder") or "")
        return f"{folder}/{stored}" if folder else stored

    def queue_prompt(self, graph: dict[str, Any], *, client_id: str) -> str:
        """Queue a graph; a refused graph raises :class:`ComfyValidationError` with ComfyUI's node errors."""
        response = self._request("POST", "/prompt", json={"prompt": graph, "client_id": client_id})
        if response.status_code == 400:
            raise validation_error(_json_or_empty(response))
        if response.status_code != 200:
            raise ComfyUnavailable(f"ComfyUI answered HTTP {response.status_code} to POST /prompt")
        body = _json_or_empty(response)
        if body.get("node_errors"):
            raise validation_error(body)
        queued = body.get("prompt_id")
        if not isinstance(queued, str) or not queued:
            raise ComfyUnavailable("ComfyUI accepted the prompt without a prompt_id")
        return queued

    def history(self, prompt_id: str) -> dict[str, Any] | None:
        response = self._request("GET", f"/history/{quote(prompt_id)}")
        if response.status_code != 200:
            raise ComfyUnavailable(f"ComfyUI answered HTTP {response.status_code} to GET /history")
        entry = _json_or_empty(response).get(prompt_id)
        return entry if isinstance(entry, dict) else None

    def read_output(self, output: OutputFile, sink: OutputSink, *, chunk_size: int = READ_CHUNK) -> int:
        """Stream one output file through ``GET /view`` into ``sink``, ``chunk_size`` bytes at a time (the
        last chunk shorter), through one reused buffer; returns the number of bytes read."""
        params = {"filename": output.filename, "subfolder": output.subfolder, "type": output.type}
        response = self._request(
            "GET", "/view", params=params, stream=True, headers={"Accept-Encoding": "identity"}
        )
        with response:
            if response.status_code == 404:
                raise NoOutput(f"ComfyUI reported {output.filename!r} but /view has no such file")
            if response.status_code != 200:
                raise NoOutput(
                    f"ComfyUI answered HTTP {response.status_code} to /view for {output.filename!r}"
                )
            declared, encoded = (
                response.headers.get("content-length", ""),
                response.headers.get("content-encoding"),
            )
            size = int(declared) if declared.isdigit() and not encoded else None
            sink.expect(size)
            response.raw.decode_content = True  # a server that compressed anyway: hand on the file's bytes
            buffer_size = chunk_size if size is None else max(1, min(chunk_size, size))
            total = _stream_into(response, sink, buffer_size, output.filename)
        if size is not None and total != size:
            raise NoOutput(f"ComfyUI sent {total} of the {size} bytes of {output.filename!r}")
        return total

    def fetch_output(self, output: OutputFile) -> bytearray:
        self.read_output(output, collected := _Collect())
        return collected

    def interrupt(self, prompt_id: str | None = None) -> None:
        """Stop the running prompt (only ``prompt_id`` where ComfyUI supports targeting it)."""
        body = {"prompt_id": prompt_id} if prompt_id else {}
        self._request("POST", "/interrupt", json=body, timeout=min(self.timeout_s, 5.0))

    def active_prompts(self) -> set[str]:
        """The ids of the prompts ComfyUI is running or has queued (``GET /queue``)."""
        response = self._request("GET", "/queue")
        if response.status_code != 200:
            raise ComfyUnavailable(f"ComfyUI answered HTTP {response.status_code} to GET /queue")
        body = _json_or_empty(response)
        items = [*(body.get("queue_running") or []), *(body.get("queue_pending") or [])]
        return {str(item[1]) for item in items if isinstance(item, list) and len(item) > 1}

    def delete_from_queue(self, prompt_id: str) -> None:
        self._request("POST", "/queue", json={"delete": [prompt_id]}, timeout=min(self.timeout_s, 5.0))

    def delete_history(self, prompt_id: str) -> None:
        self._request("POST", "/history", json={"delete": [prompt_id]}, timeout=min(self.timeout_s, 5.0))

    # ------------------------------------------------------------------------------------- WebSocket

    def open_watch(self, client_id: str | None = None) -> Watch:
        """Connect the WebSocket before queueing, so that no message of the prompt is missed."""
        return Watch(self, client_id or uuid.uuid4().hex)


class _Collect(bytearray):
    """A sink that keeps the whole file in one growing buffer."""

    def expect(self, size: int | None) -> None:
        pass

    def write(self, chunk: memoryview) -> None:
        self.extend(chunk)


def _stream_into(response: requests.Response, sink: OutputSink, chunk_size: int, name: str) -> int:
    view = memoryview(bytearray(chunk_size))
    total = 0
    try:
        while True:
            filled = 0
            while filled < chunk_size and (count := response.raw.readinto(view[filled:])):
                filled += count
            if filled:
                sink.write(view[:filled])
                total += filled
            if filled < chunk_size:
                return total
    except (OSError, urllib3.exceptions.HTTPError, requests.RequestException) as exc:
        raise NoOutput(f"reading {name!r} from ComfyUI failed ({exc.__class__.__name__})") from exc
    finally:
        view.release()


def _json_or_empty(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def validation_error(body: dict[str, Any]) -> ComfyValidationError:
    """ComfyUI's 400 body as a typed error: the message names each failing node and input."""
    details: list[dict[str, Any]] = []
    node_errors = body.get("node_errors")
    for node_id, node in node_errors.items() if isinstance(node_errors, dict) else ():
        for err in (node.get("errors") or []) if isinstance(node, dict) else ():
            if isinstance(err, dict):
                extra = err["extra_info"] if isinstance(err.get("extra_info"), dict) else {}
                detail = {"node_id": str(node_id), "class_type": node.get("class_type")}
                detail |= {key: err.get(key) for key in ("type", "message", "details")}
                details.append(detail | {key: extra.get(key) for key in ("input_name", "received_value")})
    raw_top = body.get("error")
    top: dict[str, Any] = raw_top if isinstance(raw_top, dict) else {}
    if details:
        parts = [
            f"node {d['node_id']!r} ({d['class_type']}): {d['message']}"
            + (f": {d['details']}" if d.get("details") else "")
            for d in details
        ]
        message = "ComfyUI refused the graph: " + "; ".join(parts)
    else:
        info: dict[str, Any] = top["extra_info"] if isinstance(top.get("extra_info"), dict) else {}
        text, extra_text = top.get("message") or "the graph was refused", top.get("details")
        if top.get("type") in TOP_MESSAGES:  # in words that name the node and its class, or what is missing
            text, extra_text = TOP_MESSAGES[str(top["type"])].format_map(defaultdict(str, info)), None
        message = f"ComfyUI refused the graph: {text}" + (f": {extra_text}" if extra_text else "")
        details.append({"type": top.get("type"), "message": text, "details": extra_text})
        details[-1] |= {k: info[k] for k in ("node_id", "class_type") if k in info}
    return ComfyValidationError(message, details=details)


TOP_MESSAGES = {
    "missing_node_type": "node {node_id!r} has the class {class_type!r}, which this ComfyUI does not have (it "
    "has ComfyUI's own nodes, no custom ones)",
    "prompt_no_outputs": "the graph has no output node (SaveImage, SaveVideo ...), so it would save nothing",
}


class Watch:
    """The WebSocket side of one prompt: messages, progress, the end, and a reconnect after a drop."""

    def __init__(self, client: ComfyClient, client_id: str):
        self.client = client
        self.client_id = client_id
        self._aborted = threading.Event()
        self._lock = threading.Lock()
        self._ws: websocket.WebSocket | None = self._connect()

    def _connect(self) -> websocket.WebSocket:
        url = f"{self.client.ws_base}/ws?clientId={quote(self.client_id)}"
        try:
            ws = websocket.create_connection(url, timeout=self.client.timeout_s, enable_multithread=True)
        except (OSError, websocket.WebSocketException) as exc:
            raise ComfyUnavailable(
                f"could not open ComfyUI's WebSocket at {self.client.ws_base} ({exc.__class__.__name__})"
            ) from exc
        with self._lock:
            if self._aborted.is_set():
                ws.close()
                raise JobCancelled("the job was cancelled")
        return ws

    def abort(self) -> None:
        """Wake a blocked :meth:`wait` from another thread: it raises :class:`JobCancelled`."""
        with self._lock:
            self._aborted.set()
            ws = self._ws
        if ws is not None:
            try:
                ws.abort()  # type: ignore[no-untyped-call]
            except Exception:
                log.debug("closing the WebSocket failed", exc_info=True)

    def close(self) -> None:
        with self._lock:
            ws, self._ws = self._ws, None
        if ws is not None:
            try:
                ws.close(timeout=1)
            except Exception:
                log.debug("closing the WebSocket failed", exc_info=True)

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait(
        self,
        prompt_id: str,
        *,
        idle_timeout_s: float,
        deadline: float,
        on_progress: ProgressCallback | None = None,
    ) -> Outcome:
        """Follow ``prompt_id`` to its end; ``deadline`` is a ``time.monotonic()`` value."""
        outcome = Outcome(prompt_id=prompt_id)
        while True:
            try:
                if self._follow(prompt_id, outcome, idle_timeout_s, deadline, on_progress):
                    break
            except _SocketDropped as dropped:
                if self._aborted.is_set():
                    raise JobCancelled("the job was cancelled") from None
                if outcome.reconnected:  # once is tolerated
                    raise ComfyUnavailable(
                        "ComfyUI's WebSocket closed twice during the job; ComfyUI may have crashed"
                    ) from dropped.__cause__
                outcome.reconnected = True
                log.warning("ComfyUI's WebSocket dropped during prompt %s; reconnecting", prompt_id)
                self.close()
                self._ws = self._connect()
                if self._settled_from_history(prompt_id):
                    break
        entry = self.client.history(prompt_id)  # its outputs; else those the ``executed`` messages named
        outputs = (entry or {}).get("outputs") or outcome.executed
        if entry is None and not outputs:
            raise NoOutput("ComfyUI finished the prompt but has no history entry for it")
        outcome.outputs = parse_outputs(outputs)
        return outcome

    def _follow(
        self,
        prompt_id: str,
        outcome: Outcome,
        idle_timeout_s: float,
        deadline: float,
        on_progress: ProgressCallback | None,
    ) -> bool:
        """Read messages until the prompt ends (True); a dropped socket raises :class:`_SocketDropped`."""
        ws = self._ws
        if ws is None:
            raise _SocketDropped()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise JobTimeout("the job passed its deadline (JOB_TIMEOUT_S) while ComfyUI was running it")
            ws.settimeout(max(0.01, min(idle_timeout_s, remaining)))
            try:
                opcode, frame = ws.recv_data()
            except websocket.WebSocketTimeoutException:
                if deadline - time.monotonic() <= 0:
                    continue  # the deadline, said above
                raise JobTimeout(
                    f"ComfyUI sent nothing for {idle_timeout_s:.0f} s (COMFY_IDLE_TIMEOUT_S); it may be hung"
                ) from None
            except (OSError, websocket.WebSocketException) as exc:  # :meth:`wait` tells a cancel from a drop
                raise _SocketDropped() from exc
            if opcode == websocket.ABNF.OPCODE_CLOSE or (opcode == websocket.ABNF.OPCODE_TEXT and not frame):
                raise _SocketDropped()
            if opcode != websocket.ABNF.OPCODE_TEXT:
                continue  # binary preview frames
            try:
                message = json.loads(frame)
            except ValueError:
                continue
            data = message.get("data") if isinstance(message, dict) else None
            if not isinstance(data, dict) or data.get("prompt_id") != prompt_id:  # not of the watched prompt
                continue
            kind = message.get("type")
            if kind == "progress" and on_progress is not None:
                on_progress(str(data.get("node")), int(data.get("value", 0)), int(data.get("max", 0)))
            elif kind == "execution_cached":
                outcome.cached_nodes.extend(str(n) for n in data.get("nodes") or [])
            elif kind == "executed" and isinstance(data.get("output"), dict):
                outcome.executed[str(data.get("node"))] = data["output"]
            elif kind == "execution_error":
                raise execution_error(data)
            elif kind == "execution_interrupted":
                if self._aborted.is_set():
                    raise JobCancelled("the job was cancelled")
                raise ComfyExecutionError(
                    f"ComfyUI's run was interrupted at node {data.get('node_id')!r} ({data.get('node_type')})",
                    details=[{"node_id": data.get("node_id"), "node_type": data.get("node_type")}],
                )
            elif kind == "executing" and data.get("node") is None:
                return True  # sent after the history entry is written; execution_success comes before it

    def _settled_from_history(self, prompt_id: str) -> bool:
        """After a reconnect: True when the history already holds the prompt's end."""
        status = (self.client.history(prompt_id) or {}).get("status") or {}
        if not status.get("completed", False) and status.get("status_str") not in ("error", "success"):
            return False
        for name, data in status.get("messages") or []:
            if name == "execution_error" and isinstance(data, dict):
                raise execution_error(data)
            if name == "execution_interrupted" and isinstance(data, dict):
                raise ComfyExecutionError(
                    f"ComfyUI's run was interrupted at node {data.get('node_id')!r}",
                    details=[{"node_id": data.get("node_id"), "node_type": data.get("node_type")}],
                )
        return True


def execution_error(data: dict[str, Any]) -> ComfyExecutionError:
    node_id, node_type = data.get("node_id"), data.get("node_type")
    exception = str(data.get("exception_message") or "").strip()
    kind = data.get("exception_type") or "error"
    details = dict(node_id=node_id, node_type=node_type, exception_type=kind, exception_message=exception)
    return ComfyExecutionError(
        f"node {node_id!r} ({node_type}) failed: {kind}: {exception}", details=[details]
    )


def parse_outputs(outputs: dict[str, Any]) -> list[OutputFile]:
    """Every file named in a history entry's ``outputs`` (SaveVideo files come under ``images``)."""
    return [
        OutputFile(
            str(node_id),
            str(item["filename"]),
            str(item.get("subfolder") or ""),
            str(item.get("type") or "output"),
        )
        for node_id, node_out in outputs.items()
        if isinstance(node_out, dict)
        for key in ("images", "videos", "gifs")
        for item in node_out.get(key) or []
        if isinstance(item, dict) and item.get("filename")
    ]


class _SocketDropped(Exception):
    """The WebSocket closed or broke before the prompt ended."""
