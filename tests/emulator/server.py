"""The emulated ComfyUI server: HTTP routes, WebSocket, prompt queue, history and the control API."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import copy
import hashlib
import heapq
import json
import logging
import mimetypes
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import WSMsgType, web

from .execute import NODES, SENSITIVE_EXTRA_DATA_KEYS, Executor, ServerCrashed
from .schema import (
    MODEL_COMBOS,
    MODEL_FOLDERS,
    ClassInputs,
    ModelFiles,
    NodeSchemas,
    canonical_folder,
    list_input_images,
)
from .validate import ValidationContext, annotated_filepath, validate_prompt

log = logging.getLogger("comfy_emulator")

COMFYUI_VERSION = "0.33.0"
MAX_UPLOAD_SIZE = 100 * 1024 * 1024
MAXIMUM_HISTORY_SIZE = 10000
SERVER_FEATURES = {
    "supports_preview_metadata": True,
    "supports_model_type_tags": True,
    "max_upload_size": MAX_UPLOAD_SIZE,
    "extension": {"manager": {"supports_v4": True}},
    "node_replacements": True,
    "assets": False,
}
# What /system_stats reports besides the version (trace http_misc).
FRONTEND_VERSION = "1.48.7"
TEMPLATES_VERSION = "0.11.41"
COMFY_PACKAGE_VERSIONS = [
    {"name": "comfyui-frontend-package", "installed": FRONTEND_VERSION, "required": FRONTEND_VERSION},
    {"name": "comfyui-workflow-templates", "installed": TEMPLATES_VERSION, "required": TEMPLATES_VERSION},
    {"name": "comfyui-embedded-docs", "installed": "0.5.9", "required": "0.5.9"},
    {"name": "comfy-kitchen", "installed": "0.2.31", "required": "0.2.31"},
    {"name": "comfy-aimdo", "installed": "0.4.13", "required": "0.4.13"},
]
INTERNAL_ERROR_TEXT = "500 Internal Server Error\n\nServer got itself in trouble"

FAULT_TYPES: dict[str, type] = {
    "exec_error_node": str,
    "exec_error_message": str,
    "exec_error_type": str,
    "hang": bool,
    "crash_after_steps": int,
    "drop_ws_after_steps": int,
    "no_output": bool,
    "view_404": bool,
    "output_padding_mb": float,
}
CONFIG_TYPES: dict[str, type] = {
    "step_delay": float,
    "node_delay": float,
    "history_delay": float,
    "startup_delay": float,
    "device": str,
}

INDEX_HTML = (
    '<!doctype html><html lang="en"><head><meta charset="UTF-8"><title>ComfyUI</title>'
    '<meta name="viewport" content="width=device-width, initial-scale=1.0"></head>'
    '<body><div id="vue-app"></div></body></html>\n'
)


def _coerce(kind: str, name: str, value: Any, types: Mapping[str, type]) -> Any:
    if name not in types:
        raise ValueError(f"unknown {kind} {name!r}; known: {', '.join(sorted(types))}")
    want = types[name]
    if want is bool:
        if isinstance(value, str):
            return value.strip().lower() in ("1", "true", "yes", "on")
        return bool(value)
    if want is float and not isinstance(value, (int, float, str)):
        raise ValueError(f"{kind} {name!r} must be a number")
    return want(value)


def is_canonical_uuid(value: Any) -> bool:
    """Whether a client's ``prompt_id`` is a UUID in canonical lowercase hyphenated form (ComfyUI v0.33.0
    answers 400 ``invalid_prompt_id`` otherwise)."""
    if not isinstance(value, str):
        return False
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


def check_faults(faults: Mapping[str, Any]) -> dict[str, Any]:
    """Validated fault settings (``None`` values are dropped)."""
    return {k: _coerce("fault", k, v, FAULT_TYPES) for k, v in faults.items() if v is not None}


class _Command:
    def __init__(self, kind: str, arg: Any = None, future: asyncio.Future[None] | None = None) -> None:
        self.kind = kind
        self.arg = arg
        self.future = future


class PromptQueue:
    """ComfyUI's PromptQueue: a heap ordered by (number, prompt_id), the running items and the history."""

    def __init__(self, core: EmulatorCore) -> None:
        self.core = core
        self.heap: list[tuple[Any, str, int, list[Any]]] = []
        self.running: dict[int, list[Any]] = {}
        self.task_counter = 0
        self.history: dict[str, dict[str, Any]] = {}
        self._seq = 0
        self._wakeup = asyncio.Event()

    def put(self, item: list[Any]) -> None:
        self._seq += 1
        heapq.heappush(self.heap, (item[0], item[1], self._seq, item))
        self.core.queue_updated()
        self._wakeup.set()

    async def get(self) -> tuple[list[Any], int]:
        while not self.heap:
            self._wakeup.clear()
            await self._wakeup.wait()
        item = heapq.heappop(self.heap)[3]
        i = self.task_counter
        self.running[i] = copy.deepcopy(item)
        self.task_counter += 1
        self.core.queue_updated()
        return item, i

    def task_done(self, item_id: int, history_result: dict[str, Any], status: dict[str, Any] | None) -> None:
        prompt = self.running.pop(item_id)[:5]  # without the sensitive extra data
        if len(self.history) > MAXIMUM_HISTORY_SIZE:
            self.history.pop(next(iter(self.history)))
        entry: dict[str, Any] = {"prompt": prompt, "outputs": {}, "status": copy.deepcopy(status)}
        entry.update(history_result)
        self.history[prompt[1]] = entry
        self.core.queue_updated()

    def tasks_remaining(self) -> int:
        return len(self.heap) + len(self.running)

    def current(self) -> tuple[list[list[Any]], list[list[Any]]]:
        """Running and pending items as ``GET /queue`` shows them: without the sensitive extra data."""
        return [item[:5] for item in self.running.values()], [entry[3][:5] for entry in self.heap]

    def wipe(self) -> None:
        self.heap = []
        self.core.queue_updated()

    def delete(self, prompt_id: Any) -> bool:
        for i, entry in enumerate(self.heap):
            if entry[1] == prompt_id:
                if len(self.heap) == 1:
                    self.wipe()
                else:
                    self.heap.pop(i)
                    heapq.heapify(self.heap)
                self.core.queue_updated()
                return True
        return False

    def get_history(
        self, prompt_id: str | None = None, max_items: int | None = None, offset: int = -1
    ) -> dict[str, Any]:
        if prompt_id is None:
            out: dict[str, Any] = {}
            if offset < 0 and max_items is not None:
                offset = len(self.history) - max_items
            for i, (k, v) in enumerate(self.history.items()):
                if i >= offset:
                    out[k] = v
                    if max_items is not None and len(out) >= max_items:
                        break
            return out
        if prompt_id in self.history:
            return {prompt_id: copy.deepcopy(self.history[prompt_id])}
        return {}


def _bind_socket(host: str, port: int) -> socket.socket:
    family, socktype, proto, _, addr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, socktype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr)
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def pick_free_port(host: str = "127.0.0.1") -> int:
    """A port that is free right now (for binding later, e.g. after a start-up delay)."""
    sock = _bind_socket(host.split(",")[0], 0)
    try:
        return int(sock.getsockname()[1])
    finally:
        sock.close()


def connect_host(host: str) -> str:
    """The address a client on this machine uses to reach a server listening on ``host``."""
    first = host.split(",")[0].strip()
    if first in ("", "0.0.0.0"):
        return "127.0.0.1"
    if first == "::":
        return "[::1]"
    if ":" in first:
        return f"[{first}]"
    return first


class EmulatorCore:
    """All state of one emulated ComfyUI; lives on one asyncio event loop."""

    def __init__(
        self,
        *,
        models: Mapping[str, Iterable[str]] | None = None,
        model_dirs: Mapping[str, Iterable[str | os.PathLike[str]]] | None = None,
        step_delay: float = 0.0,
        node_delay: float = 0.0,
        history_delay: float = 0.0,
        startup_delay: float = 0.0,
        device: str = "cuda",
        faults: Mapping[str, Any] | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        input_dir: str | os.PathLike[str] | None = None,
        output_dir: str | os.PathLike[str] | None = None,
        temp_dir: str | os.PathLike[str] | None = None,
        subprocess_mode: bool = False,
        argv: list[str] | None = None,
    ) -> None:
        self.schemas = NodeSchemas(classes=NODES)
        self.model_files = ModelFiles(models, model_dirs)
        self.config: dict[str, Any] = {
            "step_delay": float(step_delay),
            "node_delay": float(node_delay),
            "history_delay": float(history_delay),
            "startup_delay": float(startup_delay),
            "device": device,
        }
        self.faults: dict[str, Any] = check_faults(faults or {})
        self.subprocess_mode = subprocess_mode
        self.argv = list(sys.argv if argv is None else argv)

        self._own_base = base_dir is None
        base = (
            os.path.abspath(base_dir) if base_dir is not None else tempfile.mkdtemp(prefix="comfy-emulator-")
        )
        self.base_dir = base
        self.dirs = {
            "input": os.path.abspath(input_dir) if input_dir else os.path.join(base, "input"),
            "output": os.path.abspath(output_dir) if output_dir else os.path.join(base, "output"),
            "temp": os.path.abspath(temp_dir) if temp_dir else os.path.join(base, "temp"),
        }
        for d in self.dirs.values():
            os.makedirs(d, exist_ok=True)

        self.queue = PromptQueue(self)
        self.executor = Executor(self)
        self.messages: asyncio.Queue[tuple[str, Any, str | None] | _Command] = asyncio.Queue()
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.transports: dict[str, Any] = {}
        self.sockets_metadata: dict[str, dict[str, Any]] = {}
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.interrupt_flag = False
        self.interrupt_event = asyncio.Event()
        self.number = 0
        self.flags: dict[str, Any] = {}
        self.crashed = False
        self.running_prompt: str | None = None
        self.host = "127.0.0.1"
        self.port = 0
        self.listening = asyncio.Event()

        self.stats: dict[str, Any] = {
            "prompts": [],
            "prompt_requests": [],
            "prompt_ids": [],
            "interrupts": 0,
            "queue_deletes": [],
            "queue_clears": 0,
            "history_deletes": [],
            "history_clears": 0,
            "uploads": [],
            "outputs": [],
            "ws_connects": [],
            "ws_drops": [],
            "free_calls": [],
        }
        self.prompt_records: dict[str, dict[str, Any]] = {}

        self.app = web.Application(client_max_size=MAX_UPLOAD_SIZE)
        self._add_routes()
        self.runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[Any]] = []

    # ------------------------------------------------------------------------------------------ lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0, elapsed: float = 0.0) -> int:
        """Listen once ``startup_delay`` seconds have passed (``elapsed`` of them already); returns the port."""
        self._tasks = [
            asyncio.create_task(self._publish_loop(), name="emulator-publish"),
            asyncio.create_task(self._worker_loop(), name="emulator-worker"),
        ]
        delay = float(self.config["startup_delay"]) - elapsed
        if delay > 0:
            log.info("start-up delay %.1f s before listening", delay)
            await asyncio.sleep(delay)
        self.runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        await self.runner.setup()
        hosts = [h.strip() for h in host.split(",") if h.strip()] or ["0.0.0.0"]
        bound = port
        for i, h in enumerate(hosts):
            try:
                sock = _bind_socket(h, bound)
            except OSError:
                if i == 0:
                    raise
                log.warning("could not listen on %s:%s", h, bound)
                continue
            if bound == 0:
                bound = int(sock.getsockname()[1])
            await web.SockSite(self.runner, sock).start()
        self.host = hosts[0]
        self.port = bound
        self.listening.set()
        log.info("To see the GUI go to: http://%s:%s", connect_host(self.host).strip("[]"), bound)
        return bound

    async def stop(self) -> None:
        sockets = list(self.sockets.values())
        if sockets:
            await asyncio.wait([asyncio.ensure_future(ws.close()) for ws in sockets], timeout=0.5)
        for transport in list(self.transports.values()):
            if transport is not None and not transport.is_closing():
                transport.abort()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def cleanup_files(self) -> None:
        if self._own_base:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    async def crash(self) -> None:
        """Die abruptly after the messages already queued have gone out."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.messages.put_nowait(_Command("crash", future=fut))
        await fut

    async def _do_crash(self) -> None:
        log.error("crash_after_steps reached: the server dies now")
        self.crashed = True
        if self.subprocess_mode:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)
        for transport in list(self.transports.values()):
            if transport is not None:
                transport.abort()
        self.sockets.clear()
        self.transports.clear()
        if self.runner is not None:
            runner, self.runner = self.runner, None
            await runner.cleanup()

    # ------------------------------------------------------------------------------------------ messages

    def send_sync(self, event: str, data: Any, sid: str | None = None) -> None:
        self.messages.put_nowait((event, data, sid))

    def queue_updated(self) -> None:
        self.send_sync("status", {"status": self.queue_info()})

    def queue_info(self) -> dict[str, Any]:
        return {"exec_info": {"queue_remaining": self.queue.tasks_remaining()}}

    def drop_client(self, sid: str) -> None:
        self.messages.put_nowait(_Command("drop", sid))

    async def send(self, event: str, data: Any, sid: str | None = None) -> None:
        message = {"type": event, "data": data}
        if sid is None:
            targets = list(self.sockets.values())
        elif sid in self.sockets:
            targets = [self.sockets[sid]]
        else:
            return
        for ws in targets:
            try:
                await ws.send_json(message)
            except Exception as ex:  # the client went away
                log.warning("send to WebSocket failed: %r", ex)

    async def _publish_loop(self) -> None:
        while True:
            msg = await self.messages.get()
            if isinstance(msg, _Command):
                if msg.kind == "drop":
                    self._drop(msg.arg)
                elif msg.kind == "crash":
                    await self._do_crash()
                if msg.future is not None and not msg.future.done():
                    msg.future.set_result(None)
                continue
            await self.send(*msg)

    def _drop(self, sid: str) -> None:
        ws = self.sockets.pop(sid, None)
        transport = self.transports.pop(sid, None)
        if ws is None:
            return
        self.stats["ws_drops"].append(sid)
        log.info("dropping the WebSocket of client %s", sid)
        if transport is not None:
            transport.abort()

    # -------------------------------------------------------------------------------------------- worker

    async def _worker_loop(self) -> None:
        while True:
            item, item_id = await self.queue.get()
            prompt_id = item[1]
            self.running_prompt = prompt_id
            try:
                result = await self.executor.execute(item)
            except ServerCrashed:
                return
            except Exception:
                log.exception("emulator failure while running prompt %s", prompt_id)
                self.executor.success = False
                result = {"outputs": {}, "meta": {}}
            success = self.executor.success
            status = {
                "status_str": "success" if success else "error",
                "completed": success,
                "messages": [list(m) for m in self.executor.status_messages],
            }
            # ComfyUI sends execution_success (or the error) from inside the executor and only then writes the
            # history entry (status follows it, then executing null): history_delay widens that gap.
            history_delay = float(self.config["history_delay"])
            if history_delay > 0:
                await asyncio.sleep(history_delay)
            self.running_prompt = None
            self.queue.task_done(item_id, result, status)
            if self.client_id is not None:
                self.send_sync("executing", {"node": None, "prompt_id": prompt_id}, self.client_id)
            self._apply_flags()

    def _apply_flags(self) -> None:
        flags, self.flags = self.flags, {}
        if flags.get("free_memory"):
            self.executor.reset()

    # ---------------------------------------------------------------------------------------- file lists

    def files(self) -> dict[tuple[str, str], list[str]]:
        out = {key: self.model_files.list(folder) for key, folder in MODEL_COMBOS.items()}
        out[("VAELoader", "vae_name")] = [*out[("VAELoader", "vae_name")], "pixel_space"]
        out[("LoadImage", "image")] = list_input_images(self.dirs["input"])
        return out

    def class_inputs(self, class_type: str, live_inputs: Mapping[str, Any]) -> ClassInputs:
        return self.schemas.class_inputs(class_type, self.files(), live_inputs)

    def record_output(self, path: str) -> None:
        self.stats["outputs"].append(os.path.relpath(path, self.dirs["output"]))

    def state_record(self, prompt_id: str) -> dict[str, Any]:
        return self.prompt_records.setdefault(prompt_id, {})

    def dir_by_type(self, kind: str | None) -> str | None:
        return self.dirs.get("input" if kind is None else kind)

    # -------------------------------------------------------------------------------------- control API

    def interrupt(self) -> None:
        """What ``POST /interrupt`` does: the running prompt stops at its next check."""
        self.interrupt_flag = True
        self.interrupt_event.set()

    def reset(self, cache: bool = True) -> None:
        self.faults = {}
        self.config.update(step_delay=0.0, node_delay=0.0, history_delay=0.0)
        if self.queue.heap:
            self.queue.wipe()
        if cache:
            self.executor.reset()
        if self.running_prompt is not None:
            self.interrupt()

    def set_faults(self, faults: Mapping[str, Any]) -> dict[str, Any]:
        self.faults = check_faults(faults)
        log.info("faults: %s", self.faults)
        return dict(self.faults)

    def set_config(self, config: Mapping[str, Any]) -> dict[str, Any]:
        config = dict(config)
        if "models" in config:
            self.model_files.set_models(config.pop("models") or {})
        if "model_dirs" in config:
            self.model_files.set_model_dirs(config.pop("model_dirs") or {})
        for key, value in config.items():
            self.config[key] = _coerce("config setting", key, value, CONFIG_TYPES)
        return self.describe_config()

    def describe_config(self) -> dict[str, Any]:
        return {**self.config, **self.model_files.describe()}

    def state(self) -> dict[str, Any]:
        _, pending = self.queue.current()
        return {
            "url": f"http://{connect_host(self.host)}:{self.port}",
            "listening": self.listening.is_set() and not self.crashed,
            "crashed": self.crashed,
            "running": self.running_prompt,
            "queue_pending": [item[1] for item in pending],
            "prompts": copy.deepcopy(self.stats["prompts"]),
            "prompt_requests": copy.deepcopy(self.stats["prompt_requests"]),
            "prompt_ids": list(self.stats["prompt_ids"]),
            "interrupts": self.stats["interrupts"],
            "queue_deletes": list(self.stats["queue_deletes"]),
            "queue_clears": self.stats["queue_clears"],
            "history_deletes": list(self.stats["history_deletes"]),
            "history_clears": self.stats["history_clears"],
            "history_ids": list(self.queue.history),
            "uploads": list(self.stats["uploads"]),
            "outputs": list(self.stats["outputs"]),
            "cached": {pid: list(r.get("cached", [])) for pid, r in self.prompt_records.items()},
            "executed": {pid: list(r.get("executed", [])) for pid, r in self.prompt_records.items()},
            "ws_clients": list(self.sockets),
            "ws_connects": list(self.stats["ws_connects"]),
            "ws_drops": list(self.stats["ws_drops"]),
            "free_calls": list(self.stats["free_calls"]),
            "faults": dict(self.faults),
            "config": self.describe_config(),
            "models": {folder: self.model_files.list(folder) for folder in MODEL_FOLDERS},
            "dirs": dict(self.dirs),
        }

    # ---------------------------------------------------------------------------------------------- HTTP

    def _add_routes(self) -> None:
        comfy = [
            ("GET", "/ws", self.h_ws),
            ("GET", "/", self.h_root),
            ("GET", "/embeddings", self.h_embeddings),
            ("GET", "/extensions", self.h_extensions),
            ("GET", "/models", self.h_models),
            ("GET", "/models/{folder}", self.h_models_folder),
            ("POST", "/upload/image", self.h_upload_image),
            ("GET", "/view", self.h_view),
            ("GET", "/system_stats", self.h_system_stats),
            ("GET", "/features", self.h_features),
            ("GET", "/prompt", self.h_get_prompt),
            ("POST", "/prompt", self.h_post_prompt),
            ("GET", "/object_info", self.h_object_info),
            ("GET", "/object_info/{node_class}", self.h_object_info_node),
            ("GET", "/history", self.h_history),
            ("GET", "/history/{prompt_id}", self.h_history_id),
            ("POST", "/history", self.h_post_history),
            ("GET", "/queue", self.h_queue),
            ("POST", "/queue", self.h_post_queue),
            ("POST", "/interrupt", self.h_interrupt),
            ("POST", "/free", self.h_free),
        ]
        routes = []
        for method, path, handler in comfy:
            routes.append(web.route(method, path, handler))
            routes.append(web.route(method, "/api" + (path if path != "/" else ""), handler))
        routes += [
            web.get("/emulator/state", self.h_emu_state),
            web.post("/emulator/faults", self.h_emu_faults),
            web.get("/emulator/faults", self.h_emu_get_faults),
            web.post("/emulator/config", self.h_emu_config),
            web.get("/emulator/config", self.h_emu_get_config),
            web.post("/emulator/reset", self.h_emu_reset),
        ]
        self.app.add_routes(routes)

    async def h_ws(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.rel_url.query.get("clientId", "")
        if sid:
            self.sockets.pop(sid, None)
        else:
            sid = uuid.uuid4().hex
        self.sockets[sid] = ws
        self.transports[sid] = request.transport
        self.sockets_metadata[sid] = {"feature_flags": {}}
        self.stats["ws_connects"].append(sid)
        try:
            await self.send("status", {"status": self.queue_info(), "sid": sid}, sid)
            if self.client_id == sid and self.last_node_id is not None:
                await self.send("executing", {"node": self.last_node_id}, sid)
            first_message = True
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    try:
                        data = json.loads(msg.data)
                        if first_message and isinstance(data, dict) and data.get("type") == "feature_flags":
                            self.sockets_metadata[sid]["feature_flags"] = data.get("data", {})
                            await self.send("feature_flags", SERVER_FEATURES, sid)
                        first_message = False
                    except json.JSONDecodeError:
                        log.warning("Invalid JSON received from client %s", sid)
        finally:
            if self.sockets.get(sid) is ws:
                self.sockets.pop(sid, None)
                self.transports.pop(sid, None)
                self.sockets_metadata.pop(sid, None)
        return ws

    async def h_root(self, request: web.Request) -> web.Response:
        return web.Response(
            text=INDEX_HTML,
            content_type="text/html",
            headers={"Cache-Control": "no-cache", "Pragma": "no-cache", "Expires": "0"},
        )

    async def h_embeddings(self, request: web.Request) -> web.Response:
        return web.json_response([])

    async def h_extensions(self, request: web.Request) -> web.Response:
        return web.json_response([])

    async def h_models(self, request: web.Request) -> web.Response:
        return web.json_response(list(MODEL_FOLDERS))

    async def h_models_folder(self, request: web.Request) -> web.Response:
        folder = request.match_info["folder"]
        if folder not in MODEL_FOLDERS:  # like ComfyUI: the legacy names unet/clip are not folders here
            return web.Response(status=404)
        return web.json_response(self.model_files.list(canonical_folder(folder)))

    async def h_upload_image(self, request: web.Request) -> web.Response:
        post = await request.post()
        image = post.get("image")
        overwrite = post.get("overwrite")
        upload_type = post.get("type")
        upload_dir = self.dir_by_type(upload_type if isinstance(upload_type, str) else None)
        if upload_dir is None:
            raise web.HTTPInternalServerError(text=f"unknown upload type {upload_type!r}")
        upload_type = upload_type or "input"
        if image and not hasattr(image, "file"):
            # A part without a file name arrives as plain text; ComfyUI then fails on ``image.file``.
            return web.Response(status=500, text=INTERNAL_ERROR_TEXT)
        if not image or not image.file:
            return web.Response(status=400)
        filename = image.filename
        if not filename:
            return web.Response(status=400)
        subfolder = str(post.get("subfolder", ""))
        full_folder = os.path.join(upload_dir, os.path.normpath(subfolder))
        filepath = os.path.abspath(os.path.join(full_folder, filename))
        if os.path.commonpath((upload_dir, filepath)) != upload_dir:
            return web.Response(status=400)
        os.makedirs(full_folder, exist_ok=True)
        data = image.file.read()
        stem, ext = os.path.splitext(filename)
        duplicate = False
        if overwrite not in ("true", "1"):
            i = 1
            while os.path.exists(filepath):
                with open(filepath, "rb") as fh:
                    if hashlib.sha256(fh.read()).digest() == hashlib.sha256(data).digest():
                        duplicate = True
                        break
                filename = f"{stem} ({i}){ext}"
                filepath = os.path.join(full_folder, filename)
                i += 1
        if not duplicate:
            with open(filepath, "wb") as fh:
                fh.write(data)
        self.stats["uploads"].append(f"{subfolder}/{filename}" if subfolder else filename)
        return web.json_response({"name": filename, "subfolder": subfolder, "type": upload_type})

    async def h_view(self, request: web.Request) -> web.StreamResponse:
        query = request.rel_url.query
        if "filename" in query:
            filename, output_dir = annotated_filepath(query["filename"], self.dirs)
            if not filename:
                return web.Response(status=400)
            if filename[0] == "/" or ".." in filename:
                return web.Response(status=400)
            kind = next((k for k, d in self.dirs.items() if d == output_dir), "output")
            if output_dir is None:
                kind = query.get("type", "output")
                output_dir = self.dirs.get(kind)
            if output_dir is None:
                return web.Response(status=400)
            if "subfolder" in query:
                full_output_dir = os.path.join(output_dir, query["subfolder"])
                if os.path.commonpath((os.path.abspath(full_output_dir), output_dir)) != output_dir:
                    return web.Response(status=403)
                output_dir = full_output_dir
            filename = os.path.basename(filename)
            file = os.path.join(output_dir, filename)
            if self.faults.get("view_404") and kind == "output":
                return web.Response(status=404)
            if os.path.isfile(file):
                content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
                if content_type in {
                    "text/html",
                    "text/html-sandboxed",
                    "application/xhtml+xml",
                    "text/javascript",
                }:
                    content_type = "application/octet-stream"
                return web.FileResponse(
                    file,
                    headers={"Content-Disposition": f'filename="{filename}"', "Content-Type": content_type},
                )
        return web.Response(status=404)

    async def h_system_stats(self, request: web.Request) -> web.Response:
        try:
            ram_total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            ram_free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            ram_total = ram_free = 0
        if self.config.get("device") == "cpu":
            device = {
                "name": "cpu",
                "type": "cpu",
                "index": None,
                "vram_total": ram_total,
                "vram_free": ram_free,
                "torch_vram_total": ram_total,
                "torch_vram_free": ram_free,
            }
        else:
            vram = 47_697_362_944
            device = {
                "name": "cuda:0 NVIDIA L40S : cudaMallocAsync",
                "type": "cuda",
                "index": 0,
                "vram_total": vram,
                "vram_free": vram - 1_073_741_824,
                "torch_vram_total": 0,
                "torch_vram_free": 0,
            }
        stats = {
            "system": {
                "os": sys.platform,
                "ram_total": ram_total,
                "ram_free": ram_free,
                "comfyui_version": COMFYUI_VERSION,
                "required_frontend_version": FRONTEND_VERSION,
                "installed_templates_version": TEMPLATES_VERSION,
                "required_templates_version": TEMPLATES_VERSION,
                "comfy_package_versions": copy.deepcopy(COMFY_PACKAGE_VERSIONS),
                "python_version": sys.version,
                "pytorch_version": "2.14.1+cu130",
                "embedded_python": False,
                "deploy_environment": "local-git",
                "argv": self.argv,
            },
            "devices": [device],
        }
        return web.json_response(stats)

    async def h_features(self, request: web.Request) -> web.Response:
        return web.json_response(SERVER_FEATURES)

    async def h_get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response(self.queue_info())

    async def h_post_prompt(self, request: web.Request) -> web.Response:
        json_data = await request.json()
        if "number" in json_data:
            number: Any = float(json_data["number"])
        else:
            number = self.number
            if json_data.get("front"):
                number = -number
            self.number += 1

        if "prompt" not in json_data:
            error = {"type": "no_prompt", "message": "No prompt provided", "details": "No prompt provided"}
            error["extra_info"] = {}
            self.stats["prompt_requests"].append({"status": 400, "error": "no_prompt"})
            return web.json_response({"error": error, "node_errors": {}}, status=400)

        prompt = json_data["prompt"]
        self.stats["prompts"].append(copy.deepcopy(prompt))
        client_prompt_id = json_data.get("prompt_id")
        if client_prompt_id is None:
            prompt_id = str(uuid.uuid4())
        elif not is_canonical_uuid(client_prompt_id):
            error = {
                "type": "invalid_prompt_id",
                "message": "prompt_id must be a valid UUID",
                "details": "prompt_id must be a UUID string in canonical lowercase hyphenated form; omit it to let "
                "the server generate one",
                "extra_info": {},
            }
            self.stats["prompt_requests"].append({"status": 400, "error": "invalid_prompt_id"})
            return web.json_response({"error": error, "node_errors": {}}, status=400)
        else:
            prompt_id = client_prompt_id
        partial = json_data.get("partial_execution_targets")
        ctx = ValidationContext(self.schemas, self.files, self.dirs)
        try:
            valid = validate_prompt(ctx, prompt, partial)
        except Exception:
            # A prompt of the wrong shape (e.g. a node that is not an object) breaks ComfyUI's validator too.
            log.exception("validation failed")
            self.stats["prompt_requests"].append({"status": 500, "prompt_id": prompt_id})
            return web.Response(status=500, text=INTERNAL_ERROR_TEXT)
        extra_data = json_data.get("extra_data", {})
        if "client_id" in json_data:
            extra_data["client_id"] = json_data["client_id"]
        if "comfy_usage_source" not in extra_data and request.headers.get("Comfy-Usage-Source"):
            extra_data["comfy_usage_source"] = request.headers["Comfy-Usage-Source"]
        request_record: dict[str, Any] = {"prompt_id": prompt_id, "client_id": json_data.get("client_id")}
        self.stats["prompt_requests"].append(request_record)
        if valid[0]:
            sensitive = {k: extra_data.pop(k) for k in SENSITIVE_EXTRA_DATA_KEYS if k in extra_data}
            extra_data["create_time"] = int(time.time() * 1000)
            self.queue.put([number, prompt_id, prompt, extra_data, valid[2], sensitive])
            self.stats["prompt_ids"].append(prompt_id)
            request_record["status"] = 200
            return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": valid[3]})
        log.warning("invalid prompt: %s", valid[1])
        request_record.update(status=400, error=(valid[1] or {}).get("type"), node_errors=sorted(valid[3]))
        return web.json_response({"error": valid[1], "node_errors": valid[3]}, status=400)

    async def h_object_info(self, request: web.Request) -> web.Response:
        files = self.files()
        return web.json_response({cls: self.schemas.node_info(cls, files) for cls in self.schemas.classes()})

    async def h_object_info_node(self, request: web.Request) -> web.Response:
        node_class = request.match_info["node_class"]
        out = {}
        if node_class in self.schemas:
            out[node_class] = self.schemas.node_info(node_class, self.files())
        return web.json_response(out)

    async def h_history(self, request: web.Request) -> web.Response:
        max_items = request.rel_url.query.get("max_items")
        offset = request.rel_url.query.get("offset")
        return web.json_response(
            self.queue.get_history(
                max_items=int(max_items) if max_items is not None else None,
                offset=int(offset) if offset is not None else -1,
            )
        )

    async def h_history_id(self, request: web.Request) -> web.Response:
        return web.json_response(self.queue.get_history(prompt_id=request.match_info["prompt_id"]))

    async def h_post_history(self, request: web.Request) -> web.Response:
        json_data = await request.json()
        if json_data.get("clear"):
            self.queue.history = {}
            self.stats["history_clears"] += 1
        for prompt_id in json_data.get("delete", []):
            self.queue.history.pop(prompt_id, None)
            self.stats["history_deletes"].append(prompt_id)
        return web.Response(status=200)

    async def h_queue(self, request: web.Request) -> web.Response:
        running, pending = self.queue.current()
        return web.json_response({"queue_running": running, "queue_pending": pending})

    async def h_post_queue(self, request: web.Request) -> web.Response:
        json_data = await request.json()
        if json_data.get("clear"):
            self.queue.wipe()
            self.stats["queue_clears"] += 1
        for prompt_id in json_data.get("delete", []):
            self.queue.delete(prompt_id)
            self.stats["queue_deletes"].append(prompt_id)
        return web.Response(status=200)

    async def h_interrupt(self, request: web.Request) -> web.Response:
        try:
            json_data = await request.json()
        except (json.JSONDecodeError, ValueError):
            json_data = {}
        self.stats["interrupts"] += 1
        prompt_id = json_data.get("prompt_id") if isinstance(json_data, dict) else None
        running, _ = self.queue.current()
        if not prompt_id or any(item[1] == prompt_id for item in running):
            self.interrupt()
        return web.Response(status=200)

    async def h_free(self, request: web.Request) -> web.Response:
        json_data = await request.json()
        self.stats["free_calls"].append(json_data)
        if json_data.get("unload_models"):
            self.flags["unload_models"] = json_data["unload_models"]
        if json_data.get("free_memory"):
            self.flags["free_memory"] = json_data["free_memory"]
        if self.running_prompt is None:
            self._apply_flags()
        return web.Response(status=200)

    # -- control API

    async def h_emu_state(self, request: web.Request) -> web.Response:
        return web.json_response(self.state())

    async def h_emu_get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(self.faults)

    async def h_emu_faults(self, request: web.Request) -> web.Response:
        try:
            body = await request.json() if request.can_read_body else {}
            return web.json_response(self.set_faults(body or {}))
        except (ValueError, TypeError) as ex:
            return web.json_response({"error": str(ex)}, status=400)

    async def h_emu_reset(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else {}
        self.reset(cache=bool((body or {}).get("cache", True)))
        return web.json_response({"faults": self.faults, "config": self.describe_config()})

    async def h_emu_get_config(self, request: web.Request) -> web.Response:
        return web.json_response(self.describe_config())

    async def h_emu_config(self, request: web.Request) -> web.Response:
        try:
            body = await request.json() if request.can_read_body else {}
            return web.json_response(self.set_config(body or {}))
        except (ValueError, TypeError) as ex:
            return web.json_response({"error": str(ex)}, status=400)


class Emulator:
    """An emulated ComfyUI running on a background thread of this process.

    >>> with Emulator(step_delay=0.01) as emu:
    ...     requests.get(emu.url + "/system_stats")
    """

    def __init__(
        self,
        models: Mapping[str, Iterable[str]] | None = None,
        model_dirs: Mapping[str, Iterable[str | os.PathLike[str]]] | None = None,
        step_delay: float = 0.0,
        *,
        node_delay: float = 0.0,
        history_delay: float = 0.0,
        startup_delay: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: Mapping[str, Any] | None = None,
        device: str = "cuda",
        base_dir: str | os.PathLike[str] | None = None,
        input_dir: str | os.PathLike[str] | None = None,
        output_dir: str | os.PathLike[str] | None = None,
        wait: bool = True,
        ready_timeout: float = 30.0,
    ) -> None:
        self._kwargs: dict[str, Any] = {
            "models": models,
            "model_dirs": model_dirs,
            "step_delay": step_delay,
            "node_delay": node_delay,
            "history_delay": history_delay,
            "startup_delay": startup_delay,
            "faults": faults,
            "device": device,
            "base_dir": base_dir,
            "input_dir": input_dir,
            "output_dir": output_dir,
        }
        self.host = host
        self._bind_host = host
        self.port = port
        self._wait = wait
        self._ready_timeout = ready_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._core: EmulatorCore | None = None
        self._created = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None

    # -- lifecycle

    def start(self) -> Emulator:
        if self.port == 0 and self._kwargs["startup_delay"] > 0:
            self.port = pick_free_port(self._bind_host)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="comfy-emulator", daemon=True)
        self._thread.start()
        self._created.wait(self._ready_timeout)
        atexit.register(self.stop)
        if self._wait:
            self.wait_ready(self._ready_timeout)
        elif self._error is not None:
            raise self._error
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the server listens (after ``startup_delay``)."""
        if not self._ready.wait(timeout):
            raise TimeoutError("emulator did not start listening")
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        try:
            self._core = EmulatorCore(**self._kwargs)
        except BaseException as ex:
            self._error = ex
            self._created.set()
            self._ready.set()
            return
        self._created.set()
        try:
            self.port = await self._core.start(self._bind_host, self.port)
        except BaseException as ex:
            self._error = ex
            self._ready.set()
            await self._core.stop()
            self._core.cleanup_files()
            return
        self._ready.set()
        await self._stop.wait()
        await self._core.stop()

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        if self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)
        if self._core is not None:
            self._core.cleanup_files()
        self._loop = None
        self._thread = None
        atexit.unregister(self.stop)

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses

    @property
    def url(self) -> str:
        return f"http://{connect_host(self.host)}:{self.port}"

    def ws_url(self, client_id: str) -> str:
        return f"ws://{connect_host(self.host)}:{self.port}/ws?clientId={client_id}"

    @property
    def core(self) -> EmulatorCore:
        assert self._core is not None, "emulator not started"
        return self._core

    @property
    def input_dir(self) -> str:
        return self.core.dirs["input"]

    @property
    def output_dir(self) -> str:
        return self.core.dirs["output"]

    @property
    def crashed(self) -> bool:
        return self._core is not None and self._core.crashed

    # -- control API

    def _call(self, fn: Any, *args: Any) -> Any:
        assert self._loop is not None, "emulator not running"

        async def run() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def set_faults(self, **faults: Any) -> dict[str, Any]:
        """Replace the fault settings (``set_faults()`` resets them); same as ``POST /emulator/faults``."""
        return self._call(self.core.set_faults, faults)

    def reset_faults(self) -> dict[str, Any]:
        return self.set_faults()

    def configure(self, **config: Any) -> dict[str, Any]:
        """Change ``step_delay``, ``node_delay``, ``history_delay``, ``models``, ``model_dirs`` ...; same as
        ``POST /emulator/config``."""
        return self._call(self.core.set_config, config)

    def state(self) -> dict[str, Any]:
        """Same as ``GET /emulator/state``."""
        return self._call(self.core.state)

    def reset(self, *, cache: bool = True, timeout: float = 10.0) -> None:
        """Back to a quiet server between tests: no faults, no delays, empty queue, nothing running,
        and (``cache=True``) no cached node outputs. History and files stay."""
        self._call(self.core.reset, cache)
        deadline = time.monotonic() + timeout
        while self._call(lambda: self.core.running_prompt) is not None:
            if time.monotonic() > deadline:
                raise TimeoutError("emulator still running a prompt")
            self._call(self.core.interrupt)
            time.sleep(0.01)
