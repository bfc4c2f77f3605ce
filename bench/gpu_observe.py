"""Watching ComfyUI run the worker's jobs, without changing the worker.

- :class:`Tap`: a relay in front of ComfyUI that passes HTTP requests and the WebSocket on both ways and notes
  when each WebSocket message went through. ComfyUI sends a prompt's messages (``executing``, ``progress`` ...)
  only to the client that queued it, so a second listener would hear nothing: the worker is pointed at the relay
  instead (``COMFY_HOST``, ``COMFY_PORT``) and its jobs are observed as it sees them.
- :class:`MemorySampler`: the GPU memory in use, read from ComfyUI's ``/system_stats`` a few times a second; the
  peak over a job.

aiohttp serves the relay (the runpod SDK, which the worker needs, depends on it): about sixty lines, where a
library relay would be another dependency that records nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import requests
from aiohttp import web

HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade"}
KEPT = {"execution_start", "execution_cached", "executing", "progress", "executed", "execution_success"}
KEPT |= {"execution_error", "execution_interrupted"}


@dataclass(frozen=True)
class Message:
    """A WebSocket message ComfyUI sent, and when it went through (``time.monotonic()``)."""

    at: float
    type: str
    data: dict[str, Any]


class Tap:
    """The relay, on 127.0.0.1 at ``port``, in a thread of its own. Use as a context manager."""

    def __init__(self, upstream: str, port: int) -> None:
        self.upstream = upstream.rstrip("/")
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._messages: list[Message] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="comfyui-tap", daemon=True)
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None

    def __enter__(self) -> Tap:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def take(self) -> list[Message]:
        """The messages since the last call."""
        with self._lock:
            taken, self._messages = self._messages, []
        return taken

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(
            auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None)
        )
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._relay)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _relay(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._relay_socket(request, self._session)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        async with self._session.request(
            request.method, self.upstream + request.path_qs, data=await request.read(), headers=headers
        ) as answer:
            body = await answer.read()
            kept = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_HEADERS}
            return web.Response(status=answer.status, body=body, headers=kept)

    async def _relay_socket(
        self, request: web.Request, session: aiohttp.ClientSession
    ) -> web.WebSocketResponse:
        client = web.WebSocketResponse(max_msg_size=0)
        await client.prepare(request)
        url = "ws" + self.upstream.removeprefix("http") + request.path_qs
        async with session.ws_connect(url, max_msg_size=0) as comfyui:

            async def down() -> None:
                async for msg in comfyui:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        self._note(msg.data)
                        await client.send_str(msg.data)
                    elif msg.type == aiohttp.WSMsgType.BINARY:
                        await client.send_bytes(msg.data)

            async def up() -> None:
                async for msg in client:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        await comfyui.send_str(msg.data)
                    elif msg.type == aiohttp.WSMsgType.BINARY:
                        await comfyui.send_bytes(msg.data)

            tasks = [asyncio.ensure_future(down()), asyncio.ensure_future(up())]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                task.cancel()
        await client.close()
        return client

    def _note(self, text: str) -> None:
        at = time.monotonic()
        with contextlib.suppress(ValueError):
            message = json.loads(text)
            if isinstance(message, dict) and message.get("type") in KEPT:
                with self._lock:
                    self._messages.append(Message(at, message["type"], message.get("data") or {}))


class MemorySampler:
    """Polls ``/system_stats`` every ``interval_s`` in a thread; :meth:`peak_gb` is the most GPU memory in use
    (total less free, as ComfyUI reports its first device) since :meth:`reset`, or None without a GPU."""

    def __init__(self, comfy_url: str, interval_s: float = 0.25) -> None:
        self.url = comfy_url.rstrip("/") + "/system_stats"
        self.interval_s = interval_s
        self._peak: float | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vram-sampler", daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def reset(self) -> None:
        with self._lock:
            self._peak = None

    def peak_gb(self) -> float | None:
        self._sample()
        with self._lock:
            return self._peak

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        try:
            device = requests.get(self.url, timeout=5).json()["devices"][0]
        except (requests.RequestException, ValueError, KeyError, IndexError):
            return
        if device.get("type") != "cuda":
            return
        used = (device["vram_total"] - device["vram_free"]) / 2**30
        with self._lock:
            self._peak = used if self._peak is None else max(self._peak, used)
