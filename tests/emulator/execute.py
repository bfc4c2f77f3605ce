"""Running a validated prompt: ComfyUI v0.33.0's order, cache and WebSocket messages, without a model.

* Order: ComfyUI's: among the nodes whose inputs are ready it runs an output node first, then a node that feeds
  one, then one two links from one, else the first in the order a depth-first walk from the outputs found them.
* Cache: what the image runs (``--cache-classic``): a node's key is its class, its constant inputs and the keys
  of what it links to (LoadImage's also its file's bytes); at the start of a prompt the entries it does not use
  are dropped, the nodes whose key is cached are listed in ``execution_cached`` and do not run, and a cached
  output node sends its ``executed`` again.
* Messages: ``execution_start``, ``execution_cached``, then per node ``progress_state`` (running),
  ``executing``, per step ``progress_state`` + ``progress`` (sampler steps; pairs of frames for
  FrameInterpolate), ``executed`` (savers), ``progress_state`` (finished); then ``execution_success``, or
  ``execution_error`` / ``execution_interrupted``. The server then writes the history entry, sends ``status`` and
  ``executing {"node": null}``.
* Nodes: the loaders, LoRAs, text encoders and the like pass placeholders on; what reaches the video is real:
  the start (and end) image, the latent's size and frame count (``(w // 8) * 8``, ``((length - 1) // 4) * 4 + 1``),
  the sampler steps (``min(end_at_step, steps) - start_at_step``), interpolation, fps and SaveVideo's ``crf``; for
  an image-only workflow job, ImageInvert inverts and SaveImage writes a PNG.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageOps

from . import media

if TYPE_CHECKING:
    from .server import EmulatorCore

SAMPLERS = {"KSamplerAdvanced"}


class Interrupted(Exception):
    """The prompt was interrupted (ComfyUI's InterruptProcessingException)."""


class Crashed(BaseException):
    """The server died (``crash_after_steps``): nothing more is sent."""


class InjectedError(Exception):
    """The ``exec_error_node`` fault."""


@dataclass
class Latent:
    width: int
    height: int
    frames: int
    start: Image.Image | None = None
    end: Image.Image | None = None


@dataclass
class Video:
    frames: media.Frames
    fps: float


@dataclass
class Prompt:
    """A queue item: ``[number, prompt_id, prompt, extra_data, outputs]`` in ``GET /queue`` and history."""

    number: int
    prompt_id: str
    graph: dict[str, Any]
    extra_data: dict[str, Any]
    outputs: list[str]
    record: dict[str, Any] = field(default_factory=dict)

    def item(self) -> list[Any]:
        return [self.number, self.prompt_id, self.graph, self.extra_data, self.outputs]


def is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)


def cache_keys(graph: dict[str, Any], input_dir: str) -> dict[str, str]:
    keys: dict[str, str] = {}

    def key(node_id: str) -> str:
        if node_id not in keys:
            node = graph[node_id]
            parts: list[Any] = [node["class_type"]]
            for name, value in sorted(node["inputs"].items()):
                parts.append([name, [key(value[0]), value[1]] if is_link(value) else value])
            if node["class_type"] in ("LoadImage", "LoadVideo"):
                with contextlib.suppress(OSError), open(_input_path(input_dir, node), "rb") as fh:
                    parts.append(hashlib.sha256(fh.read()).hexdigest())
            keys[node_id] = hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()
        return keys[node_id]

    for node_id in graph:
        key(node_id)
    return keys


def _input_path(input_dir: str, node: dict[str, Any]) -> str:
    name = node["inputs"]["image" if node["class_type"] == "LoadImage" else "file"]
    return os.path.join(input_dir, os.path.basename(str(name)))


def execution_order(
    graph: dict[str, Any], outputs: list[str], cached: Callable[[str], bool], is_output: Callable[[str], bool]
) -> list[str]:
    waits: dict[str, set[str]] = {}  # node -> the nodes it still waits for
    for output in outputs:
        stack = [output]
        while stack:
            node_id = stack.pop()
            if node_id in waits:
                continue
            links = [v[0] for v in graph[node_id]["inputs"].values() if is_link(v) and not cached(v[0])]
            waits[node_id] = set(links)
            stack += links
    order: list[str] = []
    while waits:

        def users(node_id: str) -> list[str]:
            return [n for n, deps in waits.items() if node_id in deps]

        def rank(
            node_id: str,
        ) -> int:  # an output node first, then one that feeds one, then one two links away
            if is_output(node_id):
                return 0
            if any(map(is_output, users(node_id))):
                return 1
            return 2 if any(is_output(u2) for u in users(node_id) for u2 in users(u)) else 3

        node_id = min((n for n, deps in waits.items() if not deps), key=rank)  # the first of the best
        order.append(node_id)
        del waits[node_id]
        for deps in waits.values():
            deps.discard(node_id)
    return order


class Executor:
    """Runs one prompt at a time; keeps the output cache between prompts."""

    def __init__(self, core: EmulatorCore) -> None:
        self.core = core
        self.cache: dict[str, tuple[tuple[Any, ...], dict[str, Any] | None]] = {}
        self.faults: dict[str, Any] = {}
        self.prompt: Prompt | None = None
        self.client_id: str | None = None
        self.steps_done = 0
        self.states: dict[str, dict[str, Any]] = {}
        self.messages: list[list[Any]] = []

    async def send(self, event: str, data: dict[str, Any]) -> None:
        if self.client_id is not None:
            await self.core.send(event, data, self.client_id)

    async def add_message(self, event: str, data: dict[str, Any], broadcast: bool = False) -> None:
        """A message that the history's ``status.messages`` keeps too."""
        data = {**data, "timestamp": int(time.time() * 1000)}
        self.messages.append([event, data])
        if self.client_id is not None or broadcast:
            await self.core.send(event, data, self.client_id)

    async def progress_state(
        self, node_id: str, state: str, value: float = 0.0, maximum: float = 1.0
    ) -> None:
        assert self.prompt is not None
        pid = self.prompt.prompt_id
        self.states[node_id] = {"value": value, "max": maximum, "state": state, "node_id": node_id}
        self.states[node_id].update(
            prompt_id=pid, display_node_id=node_id, parent_node_id=None, real_node_id=node_id
        )
        await self.send("progress_state", {"prompt_id": pid, "nodes": dict(self.states)})

    async def pause(self, seconds: float) -> None:
        """Sleep up to ``seconds``; an interrupt ends it at once and raises."""
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.core.interrupted.wait(), seconds)
        if self.core.interrupted.is_set():
            raise Interrupted()

    async def step(self, node_id: str, value: int, total: int, sampler: bool = True) -> None:
        assert self.prompt is not None
        await self.pause(float(self.core.config["step_delay"]))
        await self.progress_state(node_id, "running", value, total)
        await self.send(
            "progress", {"value": value, "max": total, "prompt_id": self.prompt.prompt_id, "node": node_id}
        )
        if sampler:
            self.steps_done += 1
            await self.step_faults()

    async def step_faults(self) -> None:
        """Faults counted in sampler steps: checked when a sampler starts and after each of its steps."""
        drop = self.faults.get("drop_ws_after_steps")
        if drop is not None and self.steps_done >= drop and self.client_id is not None:
            self.faults.pop("drop_ws_after_steps")
            self.core.drop_client(self.client_id)
        crash = self.faults.get("crash_after_steps")
        if crash is not None and self.steps_done >= crash:
            await self.core.crash()
            raise Crashed()

    async def execute(self, prompt: Prompt) -> tuple[bool, dict[str, Any]]:
        """Run ``prompt``; (success, its outputs' UI by node id)."""
        core = self.core
        self.prompt, self.client_id = prompt, prompt.extra_data.get("client_id")
        self.faults, self.steps_done, self.states, self.messages = dict(core.faults), 0, {}, []
        graph, pid = prompt.graph, prompt.prompt_id
        await self.add_message("execution_start", {"prompt_id": pid})
        if self.faults.get("hang"):
            await core.interrupted.wait()

        keys = cache_keys(graph, core.dirs["input"])
        self.cache = {k: v for k, v in self.cache.items() if k in keys.values()}
        cached = [n for n in graph if keys[n] in self.cache]
        prompt.record["cached"] = cached
        await self.add_message("execution_cached", {"nodes": cached, "prompt_id": pid})
        order = execution_order(
            graph,
            prompt.outputs,
            lambda n: keys[n] in self.cache,
            lambda n: core.defs.is_output(graph[n]["class_type"]),
        )
        ui: dict[str, Any] = {}
        executed: list[str] = prompt.record.setdefault("executed", [])
        for node_id in order:
            class_type = graph[node_id]["class_type"]
            try:
                if keys[node_id] not in self.cache:
                    await self.progress_state(node_id, "running")
                    core.running_node = node_id
                    await self.send("executing", {"node": node_id, "display_node": node_id, "prompt_id": pid})
                    if core.interrupted.is_set():
                        raise Interrupted()
                    self.cache[keys[node_id]] = await self.run_node(node_id, class_type, keys)
                    executed.append(node_id)
                node_ui = self.cache[keys[node_id]][1]
                if node_ui is not None or node_id in cached:
                    if node_ui is not None:
                        ui[node_id] = node_ui
                    await self.send(
                        "executed",
                        {"node": node_id, "display_node": node_id, "output": node_ui, "prompt_id": pid},
                    )
                done = self.states.get(node_id, {}).get("max", 1.0)
                await self.progress_state(node_id, "finished", done, done)
            except Interrupted:
                data = {
                    "prompt_id": pid,
                    "node_id": node_id,
                    "node_type": class_type,
                    "executed": list(executed),
                }
                await self.add_message("execution_interrupted", data, broadcast=True)
                return False, ui
            except Exception as ex:
                data = {
                    "prompt_id": pid,
                    "node_id": node_id,
                    "node_type": class_type,
                    "executed": list(executed),
                    "exception_message": str(ex),
                    "exception_type": self.faults.get("exec_error_type", "RuntimeError")
                    if isinstance(ex, InjectedError)
                    else type(ex).__name__,
                    "traceback": [],
                    "current_inputs": {},
                    "current_outputs": list(cached),
                }
                await self.add_message("execution_error", data)
                return False, ui
        await self.add_message("execution_success", {"prompt_id": pid})
        return True, ui

    async def run_node(
        self, node_id: str, class_type: str, keys: dict[str, str]
    ) -> tuple[tuple[Any, ...], dict[str, Any] | None]:
        """What the node puts out, and the UI it reports (savers only)."""
        if self.faults.get("exec_error_node") == node_id:
            raise InjectedError(
                self.faults.get("exec_error_message", f"{class_type} failed (injected fault)")
            )
        assert self.prompt is not None
        node = self.prompt.graph[node_id]
        args = {  # links resolved to what the linked node put out
            name: self.cache[keys[value[0]]][0][value[1]] if is_link(value) else value
            for name, value in node["inputs"].items()
        }
        core = self.core
        if class_type not in SAMPLERS:
            await self.pause(float(core.config["node_delay"]))
        if class_type == "LoadImage":
            path = _input_path(core.dirs["input"], node)
            return (await asyncio.to_thread(media.load_image, path), None), None
        if class_type == "LoadVideo":
            path = _input_path(core.dirs["input"], node)
            return (Video(*await asyncio.to_thread(media.read_mp4, path)),), None
        if class_type == "GetVideoComponents":
            video = args["video"]
            return (video.frames, None, video.fps, 8), None
        if class_type == "ImageFromBatch":
            frames = media.as_frames(args["image"])
            index = int(args["batch_index"]) + (len(frames) if int(args["batch_index"]) < 0 else 0)
            index = max(0, min(len(frames) - 1, index))
            return (frames[index : index + int(args["length"])],), None
        if class_type == "ImageBatch":
            first, second = media.as_frames(args["image1"]), media.as_frames(args["image2"])
            return (first + [media.fit(f, *first[0].size) for f in second],), None
        if class_type == "SaveImage":
            return (args["images"],), await self.save_images(args)
        if class_type in ("WanImageToVideo", "WanFirstLastFrameToVideo"):
            count = ((int(args["length"]) - 1) // 4) * 4 + 1
            size = (int(args["width"]) // 8) * 8, (int(args["height"]) // 8) * 8
            latent = Latent(*size, count, args.get("start_image"), args.get("end_image"))
            return (args["positive"], args["negative"], latent), None
        if class_type in SAMPLERS:
            total = max(0, min(int(args["end_at_step"]), int(args["steps"])) - int(args["start_at_step"]))
            await self.step_faults()
            for value in range(1, total + 1):
                await self.step(node_id, value, total)
            return (args["latent_image"],), None
        if class_type == "VAEDecode":
            latent = args["samples"]
            frames = media.video_frames(latent.width, latent.height, latent.frames, latent.start, latent.end)
            return (frames,), None
        if class_type == "FrameInterpolate":
            images, multiplier = args["images"], int(args["multiplier"])
            per_pair = multiplier - 1
            for pair in range(1, len(images)):
                await self.step(node_id, pair * per_pair, (len(images) - 1) * per_pair, sampler=False)
            return (media.interpolate(images, multiplier),), None
        if class_type == "CreateVideo":
            return (Video(args["images"], float(args["fps"])),), None
        if class_type == "SaveVideo":
            return (args["video"],), await self.save_video(args)
        if class_type == "ImageInvert":
            return (ImageOps.invert(args["image"]),), None
        return tuple(f"<{kind} of {node_id}>" for kind in core.defs.outputs(class_type)), None

    def output_name(self, prefix: str, extension: str) -> tuple[str, str, str]:
        """(folder, subfolder, name) of the next file of ``prefix``: ComfyUI's ``<stem>_<counter>_.<ext>``."""
        subfolder, stem = os.path.split(os.path.normpath(prefix))
        folder = os.path.join(self.core.dirs["output"], subfolder)
        os.makedirs(folder, exist_ok=True)
        taken = [n[len(stem) + 1 :].split("_")[0] for n in os.listdir(folder) if n.startswith(f"{stem}_")]
        return (
            folder,
            subfolder,
            f"{stem}_{max((int(n) for n in taken if n.isdigit()), default=0) + 1:05}_.{extension}",
        )

    async def save_images(self, args: dict[str, Any]) -> dict[str, Any] | None:
        """SaveImage: one PNG per frame, each under ComfyUI's next free ``<stem>_<counter>_.png``."""
        if self.faults.get("no_output"):
            return None
        saved = []
        for frame in media.as_frames(args["images"]):
            folder, subfolder, name = self.output_name(str(args["filename_prefix"]), "png")
            await asyncio.to_thread(frame.save, os.path.join(folder, name), "PNG")
            self.core.stats["outputs"].append(os.path.join(subfolder, name))
            saved.append({"filename": name, "subfolder": subfolder, "type": "output"})
        return {"images": saved}

    async def save_video(self, args: dict[str, Any]) -> dict[str, Any] | None:
        if self.faults.get("no_output"):
            return None
        video: Video = args["video"]
        folder, subfolder, name = self.output_name(str(args["filename_prefix"]), "mp4")
        crf = args.get("codec.encoding.crf") if args.get("codec.encoding") == "re-encode" else None
        padding = float(self.faults.get("output_padding_mb", 0.0))
        await asyncio.to_thread(
            media.write_mp4, os.path.join(folder, name), video.frames, video.fps, crf, padding
        )
        self.core.stats["outputs"].append(os.path.join(subfolder, name))
        return {"images": [{"filename": name, "subfolder": subfolder, "type": "output"}], "animated": [True]}
