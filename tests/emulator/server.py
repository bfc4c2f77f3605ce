"""The emulated ComfyUI server: the HTTP endpoints the worker uses, the WebSocket, the queue, the history and
the control API; ``Emulator`` runs it on a background thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import hashlib
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
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from aiohttp import web

from .execute import Crashed, Executor, Prompt
from .schema import MODEL_COMBOS, MODEL_FOLDERS, Definitions, Files, ModelFiles, canonical_folder
from .validate import validate_prompt

log = logging.getLogger("comfy_emulator")
T = TypeVar("T")

COMFYUI_VERSION = "0.33.0"
MAX_UPLOAD_SIZE = 100 * 1024 * 1024
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
CONFIG_TYPES: dict[str, type] = {"step_delay": float, "node_delay": float, "history_delay": float}
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")


def _coerce(kind: str, values: Mapping[str, Any], types: Mapping[str, type]) -> dict[str, Any]:
    out = {}
    for name, value in values.items():
        if name not in types:
            raise ValueError(f"unknown {kind} {name!r}; known: {', '.join(sorted(types))}")
        if value is not None:
            out[name] = (
                value.strip().lower() in ("1", "true")
                if types[name] is bool and isinstance(value, str)
                else types[name](value)
            )
    return out


def check_faults(faults: Mapping[str, Any]) -> dict[str, Any]:
    """Fault settings with their types checked (``None`` values are dropped)."""
    return _coerce("fault", faults, FAULT_TYPES)


def pick_free_port(host: str = "127.0.0.1") -> int:
    """A port that is free right now (for binding later, e.g. after a start-up delay)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def connect_host(host: str) -> str:
    """The address a client on this machine uses to reach a server listening on ``host``."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def is_canonical_uuid(value: Any) -> bool:
    try:
        return isinstance(value, str) and str(uuid.UUID(value)) == value
    except ValueError:
        return False


class EmulatorCore:
    """All state of one emulated ComfyUI; lives on one asyncio event loop."""

    def __init__(
        self,
        *,
        models: Mapping[str, Iterable[str]] | None = None,
        model_dirs: Mapping[str, Any] | None = None,
        step_delay: float = 0.0,
        node_delay: float = 0.0,
        history_delay: float = 0.0,
        faults: Mapping[str, Any] | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        input_dir: str | os.PathLike[str] | None = None,
        output_dir: str | os.PathLike[str] | None = None,
        cpu: bool = False,
        on_crash: Callable[[], None] | None = None,
    ) -> None:
        self.defs = Definitions()
        self.model_files = ModelFiles(models, model_dirs)
        self.config: dict[str, Any] = {
            "step_delay": step_delay,
            "node_delay": node_delay,
            "history_delay": history_delay,
        }
        self.faults = check_faults(faults or {})
        self.cpu = cpu
        self.on_crash = on_crash
        self._own_base = base_dir is None
        self.base_dir = os.path.abspath(base_dir or tempfile.mkdtemp(prefix="comfy-emulator-"))
        self.dirs = {
            "input": os.path.abspath(input_dir or os.path.join(self.base_dir, "input")),
            "output": os.path.abspath(output_dir or os.path.join(self.base_dir, "output")),
        }
        for d in self.dirs.values():
            os.makedirs(d, exist_ok=True)

        self.pending: list[Prompt] = []
        self.wakeup = asyncio.Event()
        self.running: Prompt | None = None
        self.running_node: str | None = None
        self.history: dict[str, dict[str, Any]] = {}
        self.number = 0
        self.interrupted = asyncio.Event()
        self.executor = Executor(self)
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.transports: dict[str, asyncio.Transport | None] = {}
        self.crashed = False
        self.url = ""
        self.stats: dict[str, Any] = {
            key: []
            for key in (
                "prompts",
                "prompt_requests",
                "prompt_ids",
                "queue_deletes",
                "history_deletes",
                "uploads",
                "outputs",
                "ws_connects",
                "ws_drops",
            )
        }
        self.stats.update(interrupts=0, queue_clears=0, history_clears=0)
        self.records: dict[str, dict[str, Any]] = {}
        self.app = web.Application(client_max_size=MAX_UPLOAD_SIZE)
        self.app.add_routes(
            [
                web.get("/ws", self.h_ws),
                web.get("/", self.h_root),
                web.get("/system_stats", self.h_system_stats),
                web.get("/models", self.h_models),
                web.get("/models/{folder}", self.h_models_folder),
                web.post("/upload/image", self.h_upload_image),
                web.get("/view", self.h_view),
                web.get("/prompt", self.h_get_prompt),
                web.post("/prompt", self.h_post_prompt),
                web.get("/queue", self.h_queue),
                web.post("/queue", self.h_post_queue),
                web.get("/history", self.h_history),
                web.get("/history/{prompt_id}", self.h_history),
                web.post("/history", self.h_post_history),
                web.post("/interrupt", self.h_interrupt),
                web.get("/emulator/state", self.h_state),
                web.get("/emulator/faults", self.h_faults),
                web.post("/emulator/faults", self.h_faults),
                web.get("/emulator/config", self.h_config),
                web.post("/emulator/config", self.h_config),
                web.post("/emulator/reset", self.h_reset),
            ]
        )
        self.runner: web.AppRunner | None = None
        self.worker: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------------------------------ lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on ``host:port`` (0: any free port) and start running prompts; returns the port."""
        self.worker = asyncio.create_task(self._work())
        self.runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        await self.runner.setup()
        sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setblocking(False)
        await web.SockSite(self.runner, sock).start()
        port = int(sock.getsockname()[1])
        self.url = f"http://{connect_host(host)}:{port}"
        log.info("To see the GUI go to: %s", self.url)
        return port

    async def stop(self) -> None:
        for ws in list(self.sockets.values()):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 0.5)
        if self.worker is not None:
            self.worker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.worker
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def cleanup_files(self) -> None:
        if self._own_base:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    async def crash(self) -> None:
        """``crash_after_steps``: the connections are cut and the port closes (a process exits at once)."""
        log.error("crash_after_steps reached: the server dies now")
        self.crashed = True
        if self.on_crash is not None:
            self.on_crash()
        for transport in self.transports.values():
            if transport is not None:
                transport.abort()
        self.sockets.clear()
        self.transports.clear()
        if self.runner is not None:
            runner, self.runner = self.runner, None
            await runner.cleanup()

    # ------------------------------------------------------------------------------------------ messages

    async def send(self, event: str, data: Any, sid: str | None = None) -> None:
        targets = (
            list(self.sockets.values()) if sid is None else [self.sockets[sid]] if sid in self.sockets else []
        )
        for ws in targets:
            try:
                await ws.send_json({"type": event, "data": data})
            except Exception as ex:  # the client went away
                log.warning("send to WebSocket failed: %r", ex)

    async def send_status(self) -> None:
        remaining = len(self.pending) + (self.running is not None)
        await self.send("status", {"status": {"exec_info": {"queue_remaining": remaining}}})

    def drop_client(self, sid: str) -> None:
        """``drop_ws_after_steps``: the client's socket is cut, without a close frame."""
        transport = self.transports.pop(sid, None)
        if self.sockets.pop(sid, None) is not None:
            self.stats["ws_drops"].append(sid)
            log.info("dropping the WebSocket of client %s", sid)
            if transport is not None:
                transport.abort()

    # ---------------------------------------------------------------------------------------------- queue

    async def _work(self) -> None:
        while True:
            while not self.pending:
                self.wakeup.clear()
                await self.wakeup.wait()
            prompt = self.running = self.pending.pop(0)
            self.interrupted.clear()
            await self.send_status()
            try:
                success, outputs = await self.executor.execute(prompt)
            except Crashed:
                return
            except Exception:
                log.exception("emulator failure while running prompt %s", prompt.prompt_id)
                success, outputs = False, {}
            prompt.record["success"] = success
            # ComfyUI sends execution_success (or the error) from inside the executor and only then writes the
            # history entry (status follows it, then executing null): history_delay widens that gap.
            await asyncio.sleep(float(self.config["history_delay"]))
            self.running = self.running_node = None
            self.history[prompt.prompt_id] = {
                "prompt": prompt.item(),
                "outputs": outputs,
                "status": {
                    "status_str": "success" if success else "error",
                    "completed": success,
                    "messages": self.executor.messages,
                },
                "meta": {
                    n: {"node_id": n, "display_node": n, "parent_node": None, "real_node_id": n}
                    for n in outputs
                },
            }
            await self.send_status()
            sid = prompt.extra_data.get("client_id")
            if sid is not None:
                await self.send("executing", {"node": None, "prompt_id": prompt.prompt_id}, sid)

    def interrupt(self) -> None:
        self.interrupted.set()

    def reset(self, cache: bool = True) -> None:
        """No faults or delays, nothing pending, the running prompt interrupted (``cache``: cache emptied)."""
        self.faults = {}
        self.config.update(dict.fromkeys(CONFIG_TYPES, 0.0))
        self.pending.clear()
        if cache:
            self.executor.cache.clear()
        if self.running is not None:
            self.interrupt()

    def set_faults(self, faults: Mapping[str, Any]) -> dict[str, Any]:
        self.faults = check_faults(faults)
        log.info("faults: %s", self.faults)
        return dict(self.faults)

    def set_config(self, config: Mapping[str, Any]) -> dict[str, Any]:
        config = dict(config)
        self.model_files.set(config.pop("models", None), config.pop("model_dirs", None))
        self.config.update(_coerce("config setting", config, CONFIG_TYPES))
        return self.describe_config()

    def describe_config(self) -> dict[str, Any]:
        return copy.deepcopy({**self.config, **self.model_files.describe()})

    def files(self) -> Files:
        out = {key: self.model_files.list(folder) for key, folder in MODEL_COMBOS.items()}
        out[("VAELoader", "vae_name")].append("pixel_space")
        return out

    def state(self) -> dict[str, Any]:
        return copy.deepcopy(
            {
                **self.stats,
                "url": self.url,
                "crashed": self.crashed,
                "running": self.running.prompt_id if self.running else None,
                "queue_pending": [p.prompt_id for p in self.pending],
                "history_ids": list(self.history),
                "cached": {pid: r.get("cached", []) for pid, r in self.records.items()},
                "executed": {pid: r.get("executed", []) for pid, r in self.records.items()},
                "ws_clients": list(self.sockets),
                "faults": self.faults,
                "config": self.describe_config(),
                "dirs": self.dirs,
            }
        )

    # ----------------------------------------------------------------------------------------------- HTTP

    async def h_ws(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.rel_url.query.get("clientId") or uuid.uuid4().hex
        self.sockets[sid], self.transports[sid] = ws, request.transport
        self.stats["ws_connects"].append(sid)
        try:
            remaining = len(self.pending) + (self.running is not None)
            await self.send(
                "status", {"status": {"exec_info": {"queue_remaining": remaining}}, "sid": sid}, sid
            )
            if (
                self.running is not None
                and self.running.extra_data.get("client_id") == sid
                and self.running_node
            ):
                await self.send("executing", {"node": self.running_node}, sid)  # a reconnect mid-prompt
            async for _ in ws:
                pass  # what clients send (feature flags) changes nothing here
        finally:
            if self.sockets.get(sid) is ws:
                del self.sockets[sid], self.transports[sid]
        return ws

    async def h_root(self, request: web.Request) -> web.Response:
        return web.Response(text="<!doctype html><title>ComfyUI</title>", content_type="text/html")

    async def h_system_stats(self, request: web.Request) -> web.Response:
        device = {"name": "cpu", "type": "cpu"} if self.cpu else {"name": "cuda:0 (emulated)", "type": "cuda"}
        system = {"os": sys.platform, "comfyui_version": COMFYUI_VERSION, "python_version": sys.version}
        return web.json_response(
            {"system": system, "devices": [{**device, "index": None if self.cpu else 0}]}
        )

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
        if not isinstance(image, web.FileField) or not image.filename:
            return web.Response(status=400)
        kind = str(post.get("type") or "input")
        subfolder = str(post.get("subfolder", ""))
        base = self.dirs.get(kind)
        folder = os.path.abspath(os.path.join(base or "", os.path.normpath(subfolder)))
        if base is None or os.path.commonpath((base, folder)) != base:
            return web.Response(status=400)
        os.makedirs(folder, exist_ok=True)
        data = image.file.read()
        name = os.path.basename(image.filename)
        stem, ext = os.path.splitext(name)
        i = 1
        while post.get("overwrite") not in ("true", "1") and os.path.exists(os.path.join(folder, name)):
            with open(os.path.join(folder, name), "rb") as fh:
                if hashlib.sha256(fh.read()).digest() == hashlib.sha256(data).digest():
                    break  # the same file again: ComfyUI keeps the one it has
            name, i = f"{stem} ({i}){ext}", i + 1
        with open(os.path.join(folder, name), "wb") as fh:
            fh.write(data)
        self.stats["uploads"].append(f"{subfolder}/{name}" if subfolder else name)
        return web.json_response({"name": name, "subfolder": subfolder, "type": kind})

    async def h_view(self, request: web.Request) -> web.StreamResponse:
        query = request.rel_url.query
        name = query.get("filename", "")
        kind = query.get("type", "output")
        base = self.dirs.get(kind)
        if not name or name.startswith("/") or ".." in name or base is None:
            return web.Response(status=400)
        folder = os.path.abspath(os.path.join(base, query.get("subfolder", "")))
        if os.path.commonpath((folder, base)) != base:
            return web.Response(status=403)
        path = os.path.join(folder, os.path.basename(name))
        if (self.faults.get("view_404") and kind == "output") or not os.path.isfile(path):
            return web.Response(status=404)
        content_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
        headers = {
            "Content-Disposition": f'filename="{os.path.basename(name)}"',
            "Content-Type": content_type,
        }
        return web.FileResponse(path, headers=headers)

    async def h_get_prompt(self, request: web.Request) -> web.Response:
        remaining = len(self.pending) + (self.running is not None)
        return web.json_response({"exec_info": {"queue_remaining": remaining}})

    async def h_post_prompt(self, request: web.Request) -> web.Response:
        body = await request.json()
        record: dict[str, Any] = {"client_id": body.get("client_id")}
        self.stats["prompt_requests"].append(record)
        if "prompt" not in body:
            return self._refused(record, {"type": "no_prompt", "message": "No prompt provided"}, {})
        graph = body["prompt"]
        self.stats["prompts"].append(copy.deepcopy(graph))
        prompt_id = body.get("prompt_id")
        prompt_id = str(uuid.uuid4()) if prompt_id is None else prompt_id
        if not is_canonical_uuid(prompt_id):
            message = "prompt_id must be a valid UUID"
            return self._refused(record, {"type": "invalid_prompt_id", "message": message}, {})
        record["prompt_id"] = prompt_id
        try:
            error, outputs, node_errors = validate_prompt(self.defs, self.files(), self.dirs["input"], graph)
        except Exception:  # a prompt of the wrong shape (a node that is not an object) breaks ComfyUI's too
            log.exception("validation failed")
            record["status"] = 500
            return web.Response(status=500, text="500 Internal Server Error\n\nServer got itself in trouble")
        if error is not None:
            return self._refused(record, error, node_errors)
        extra_data = {
            k: v for k, v in body.get("extra_data", {}).items() if k not in SENSITIVE_EXTRA_DATA_KEYS
        }
        if "client_id" in body:
            extra_data["client_id"] = body["client_id"]
        extra_data["create_time"] = int(time.time() * 1000)
        self.number += 1
        prompt = Prompt(
            self.number, prompt_id, graph, extra_data, outputs, self.records.setdefault(prompt_id, {})
        )
        self.pending.append(prompt)
        self.wakeup.set()
        self.stats["prompt_ids"].append(prompt_id)
        record["status"] = 200
        await self.send_status()
        return web.json_response(
            {"prompt_id": prompt_id, "number": prompt.number, "node_errors": node_errors}
        )

    def _refused(
        self, record: dict[str, Any], error: dict[str, Any], node_errors: dict[str, Any]
    ) -> web.Response:
        error = {"details": error["message"], "extra_info": {}, **error}
        record.update(status=400, error=error["type"], node_errors=sorted(node_errors))
        log.warning("invalid prompt: %s", error)
        return web.json_response({"error": error, "node_errors": node_errors}, status=400)

    async def h_queue(self, request: web.Request) -> web.Response:
        running = [self.running.item()] if self.running else []
        return web.json_response(
            {"queue_running": running, "queue_pending": [p.item() for p in self.pending]}
        )

    async def h_post_queue(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("clear"):
            self.pending.clear()
            self.stats["queue_clears"] += 1
        for prompt_id in body.get("delete", []):
            self.pending = [p for p in self.pending if p.prompt_id != prompt_id]
            self.stats["queue_deletes"].append(prompt_id)
        await self.send_status()
        return web.Response()

    async def h_history(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info.get("prompt_id")
        if prompt_id is None:
            return web.json_response(self.history)
        return web.json_response({prompt_id: self.history[prompt_id]} if prompt_id in self.history else {})

    async def h_post_history(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("clear"):
            self.history.clear()
            self.stats["history_clears"] += 1
        for prompt_id in body.get("delete", []):
            self.history.pop(prompt_id, None)
            self.stats["history_deletes"].append(prompt_id)
        return web.Response()

    async def h_interrupt(self, request: web.Request) -> web.Response:
        """Stops the running prompt, or with ``{"prompt_id"}`` only that one if it is the running one."""
        try:
            body = await request.json()
        except ValueError:
            body = {}
        self.stats["interrupts"] += 1
        prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
        if not prompt_id or (self.running is not None and self.running.prompt_id == prompt_id):
            self.interrupt()
        return web.Response()

    # -- control API (not part of ComfyUI)

    async def h_state(self, request: web.Request) -> web.Response:
        return web.json_response(self.state())

    async def h_faults(self, request: web.Request) -> web.Response:
        try:
            if request.method == "POST":
                self.set_faults(await request.json() if request.can_read_body else {})
            return web.json_response(self.faults)
        except (ValueError, TypeError) as ex:
            return web.json_response({"error": str(ex)}, status=400)

    async def h_config(self, request: web.Request) -> web.Response:
        try:
            if request.method == "POST":
                self.set_config(await request.json() if request.can_read_body else {})
            return web.json_response(self.describe_config())
        except (ValueError, TypeError) as ex:
            return web.json_response({"error": str(ex)}, status=400)

    async def h_reset(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else {}
        self.reset(cache=bool(body.get("cache", True)))
        return web.json_response({"faults": self.faults, "config": self.describe_config()})


class Emulator:
    """An emulated ComfyUI on a background thread of this process.

    >>> with Emulator(step_delay=0.01) as emu:
    ...     requests.get(emu.url + "/system_stats")
    """

    def __init__(
        self,
        models: Mapping[str, Iterable[str]] | None = None,
        model_dirs: Mapping[str, Any] | None = None,
        step_delay: float = 0.0,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        **options: Any,
    ) -> None:
        self.options = {"models": models, "model_dirs": model_dirs, "step_delay": step_delay, **options}
        self.host, self.port = host, port
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._core: EmulatorCore | None = None

    def start(self) -> Emulator:
        self._loop = asyncio.new_event_loop()
        started: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(started,), name="comfy-emulator", daemon=True)
        self._thread.start()
        try:
            self.port = started.result(30)
        except BaseException:
            self._thread.join(5)
            self._loop = self._thread = None
            raise
        self.url = self.core.url
        return self

    def _run(self, started: concurrent.futures.Future[int]) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            self._core = EmulatorCore(**self.options)
            started.set_result(loop.run_until_complete(self._core.start(self.host, self.port)))
        except Exception as ex:
            started.set_exception(ex)
        else:
            loop.run_forever()
        loop.close()

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        if self._core is not None:
            asyncio.run_coroutine_threadsafe(self._core.stop(), self._loop).result(15)
            self._core.cleanup_files()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(15)
        self._loop = self._thread = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

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

    def ws_url(self, client_id: str) -> str:
        return f"ws{self.url[4:]}/ws?clientId={client_id}"

    def _call(self, fn: Callable[[], T]) -> T:
        assert self._loop is not None, "emulator not running"

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def set_faults(self, **faults: Any) -> dict[str, Any]:
        """Replace the fault settings (``set_faults()`` clears them); as ``POST /emulator/faults``."""
        return self._call(lambda: self.core.set_faults(faults))

    def configure(self, **config: Any) -> dict[str, Any]:
        """Change ``step_delay``, ``node_delay``, ``history_delay``, ``models``, ``model_dirs``; as
        ``POST /emulator/config``."""
        return self._call(lambda: self.core.set_config(config))

    def state(self) -> dict[str, Any]:
        """As ``GET /emulator/state``."""
        return self._call(self.core.state)

    def reset(self, *, cache: bool = True, timeout: float = 10.0) -> None:
        """No faults or delays, nothing queued, nothing running (``cache``: no cached node outputs). History
        and files stay."""
        self._call(lambda: self.core.reset(cache))
        deadline = time.monotonic() + timeout
        while self._call(lambda: self.core.running) is not None:
            if time.monotonic() > deadline:
                raise TimeoutError("emulator still running a prompt")
            time.sleep(0.01)
