"""Running a validated prompt the way ComfyUI v0.33.0 does, minus the GPU.

* Order: ComfyUI's "topological dissolve": output nodes are added first, their inputs depth-first; among the
  nodes ready to run it prefers an output node, then a node feeding an output node, then one two steps from an
  output node, else the first ready node in insertion order.
* Caching: a node's cache key is its class, its constant inputs and, recursively, the keys of everything
  upstream (LoadImage also hashes its file). ComfyUI v0.33.0's default "RAM pressure" cache keeps every entry
  the current prompt uses and drops the others once its first node has completed, so "cached" means
  "unchanged since the previous prompt": loaders, LoRAs, text encodes and LoadImage stay cached when a job
  changes only its seed or size; the same prompt sent twice in a row runs nothing the second time, and a
  prompt sent again after a different one (trace ``cached_resubmit``: I2V after FLF2V) runs everything
  downstream of what changed in between. Cached nodes are listed in ``execution_cached`` and not run; a cached
  output node re-sends its ``executed`` message.
* Messages: ``execution_start``, ``execution_cached``, then per node ``progress_state`` (running),
  ``executing``, per progress step (sampler steps, frame interpolation pairs) ``progress_state`` + ``progress``,
  ``executed`` for nodes with UI output, ``progress_state`` (finished); then ``execution_success`` or
  ``execution_error`` / ``execution_interrupted``. The server writes the history entry after that, then sends
  ``status`` and ``executing {"node": null}`` (see ``server.py``).
* Dynamic inputs (SaveVideo's ``codec``) reach the node function nested, as in ComfyUI.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import os
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from . import media
from .media import Frame, ImageBatch
from .schema import build_nested
from .validate import _tb_frame, annotated_filepath, full_type_name

if TYPE_CHECKING:
    from .server import EmulatorCore

log = logging.getLogger("comfy_emulator")

SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")


class InterruptProcessing(Exception):
    """The prompt was interrupted (ComfyUI's InterruptProcessingException)."""


class ServerCrashed(BaseException):
    """The emulated server died (``crash_after_steps``); the worker loop stops."""


class EmulatedError(Exception):
    """A failure injected with the ``exec_error_node`` fault."""

    def __init__(self, message: str, type_name: str, tb: list[str]) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.tb = tb


def is_link(obj: Any) -> bool:
    return (
        isinstance(obj, list)
        and len(obj) == 2
        and isinstance(obj[0], str)
        and isinstance(obj[1], (int, float))
        and not isinstance(obj[1], bool)
    )


def format_value(x: Any) -> Any:
    if x is None:
        return None
    if isinstance(x, (int, float, bool, str)):
        return x
    return str(x)


def now_ms() -> int:
    return int(time.time() * 1000)


# --------------------------------------------------------------------------------------------------- values


class Opaque:
    """A value that stands for a model, CLIP, VAE, conditioning ...; printed like the Python object it mimics."""

    def __init__(self, pyclass: str, **attrs: Any) -> None:
        self.pyclass = pyclass
        self.attrs = attrs

    def __str__(self) -> str:
        return f"<{self.pyclass} object at 0x{id(self):012x}>"


class Conditioning(Opaque):
    def __init__(self, **attrs: Any) -> None:
        super().__init__("list", **attrs)

    def __str__(self) -> str:
        return "[[tensor(<conditioning>), {'pooled_output': None}]]"


class Latent:
    """A LATENT; for Wan video latents also what the decoded video will show."""

    def __init__(
        self,
        width: int,
        height: int,
        frames: int,
        batch: int = 1,
        start: ImageBatch | None = None,
        end: ImageBatch | None = None,
    ) -> None:
        self.width = width
        self.height = height
        self.frames = frames
        self.batch = batch
        self.start = start
        self.end = end

    def __str__(self) -> str:
        t = (self.frames - 1) // 4 + 1
        return f"{{'samples': tensor(<{self.batch}x16x{t}x{self.height // 8}x{self.width // 8}>)}}"


class Video:
    def __init__(self, images: ImageBatch, fps: float, audio: Any = None, bit_depth: int = 8) -> None:
        self.images = images
        self.fps = fps
        self.audio = audio
        self.bit_depth = bit_depth

    def __str__(self) -> str:
        return f"<comfy_api.latest._input_impl.video_types.VideoFromComponents object at 0x{id(self):012x}>"


def _need(value: Any, kind: type | tuple[type, ...], attr: str) -> Any:
    if not isinstance(value, kind):
        raise AttributeError(f"'{type(value).__name__}' object has no attribute '{attr}'")
    return value


# ------------------------------------------------------------------------------------------------- caching


class _Never:
    """Part of a cache key that never equals anything (like ComfyUI's NaN)."""

    def __eq__(self, other: object) -> bool:
        return False

    def __hash__(self) -> int:
        return id(self)


def _hashable(obj: Any) -> Any:
    if isinstance(obj, (int, float, str, bool, type(None))):
        return obj
    if isinstance(obj, Mapping):
        try:
            items = sorted(obj.items())
        except TypeError:
            return _Never()
        return ("__map__", tuple((_hashable(k), _hashable(v)) for k, v in items))
    if isinstance(obj, (list, tuple)):
        return ("__seq__", tuple(_hashable(i) for i in obj))
    return _Never()


class SignatureCache:
    """Values keyed by input signature; entries the current prompt does not use are dropped."""

    def __init__(self) -> None:
        self.store: dict[Any, Any] = {}
        self.keys: dict[str, Any] = {}

    def set_prompt(self, keys: dict[str, Any]) -> None:
        self.keys = keys

    def clean_unused(self) -> None:
        used = set(self.keys.values())
        for key in [k for k in self.store if k not in used]:
            del self.store[key]

    def get(self, node_id: str) -> Any:
        key = self.keys.get(node_id)
        if key is None:
            return None
        return self.store.get(key)

    def set(self, node_id: str, value: Any) -> None:
        self.store[self.keys[node_id]] = value

    def all_node_ids(self) -> list[str]:
        return list(self.keys)

    def clear(self) -> None:
        self.store.clear()


def compute_signatures(prompt: dict[str, Any], is_changed: Callable[[str], Any]) -> dict[str, Any]:
    def immediate(node_id: str, order: dict[str, int]) -> Any:
        if node_id not in prompt:
            return (_Never(),)
        node = prompt[node_id]
        sig: list[Any] = [node["class_type"], is_changed(node_id)]
        inputs = node["inputs"]
        for key in sorted(inputs):
            value = inputs[key]
            if is_link(value):
                sig.append((key, ("ANCESTOR", order[value[0]], value[1])))
            else:
                sig.append((key, _hashable(value)))
        return tuple(sig)

    def ancestry(node_id: str, ancestors: list[str], order: dict[str, int]) -> None:
        if node_id not in prompt:
            return
        inputs = prompt[node_id]["inputs"]
        for key in sorted(inputs):
            value = inputs[key]
            if is_link(value) and value[0] not in order:
                ancestors.append(value[0])
                order[value[0]] = len(ancestors) - 1
                ancestry(value[0], ancestors, order)

    keys: dict[str, Any] = {}
    for node_id in prompt:
        ancestors: list[str] = []
        order: dict[str, int] = {}
        ancestry(node_id, ancestors, order)
        keys[node_id] = (immediate(node_id, order), *(immediate(a, order) for a in ancestors))
    return keys


# ---------------------------------------------------------------------------------------- execution order


class DependencyCycleError(Exception):
    pass


class ExecutionList:
    def __init__(
        self, prompt: dict[str, Any], is_cached: Callable[[str], bool], is_output: Callable[[str], bool]
    ):
        self.prompt = prompt
        self.is_cached = is_cached
        self.is_output = is_output
        self.pending: dict[str, bool] = {}
        self.block_count: dict[str, int] = {}
        self.blocking: dict[str, dict[str, dict[Any, bool]]] = {}

    def add_node(self, node_id: str) -> None:
        stack = [node_id]
        links: list[tuple[str, Any, str]] = []
        while stack:
            uid = stack.pop()
            if uid in self.pending:
                continue
            self.pending[uid] = True
            self.block_count[uid] = 0
            self.blocking[uid] = {}
            for value in self.prompt[uid]["inputs"].values():
                if is_link(value) and not self.is_cached(value[0]):
                    stack.append(value[0])
                    links.append((value[0], value[1], uid))
        for src, socket, dst in links:
            self.add_strong_link(src, socket, dst)

    def add_strong_link(self, src: str, socket: Any, dst: str) -> None:
        if self.is_cached(src):
            return
        self.add_node(src)
        if dst not in self.blocking[src]:
            self.blocking[src][dst] = {}
            self.block_count[dst] += 1
        self.blocking[src][dst][socket] = True

    def is_empty(self) -> bool:
        return not self.pending

    def stage(self) -> str:
        available = [n for n in self.pending if self.block_count[n] == 0]
        if not available:
            raise DependencyCycleError("Dependency cycle detected")
        for n in available:
            if self.is_output(n):
                return n
        for n in available:
            if any(self.is_output(b) for b in self.blocking[n]):
                return n
        for n in available:
            if any(self.is_output(b1) for b in self.blocking[n] for b1 in self.blocking[b]):
                return n
        return available[0]

    def nodes_in_cycle(self) -> list[str]:
        blocked_by: dict[str, set[str]] = {n: set() for n in self.pending}
        for src, targets in self.blocking.items():
            for dst in targets:
                blocked_by.setdefault(dst, set()).add(src)
        while True:
            free = [n for n, deps in blocked_by.items() if not deps]
            if not free:
                return list(blocked_by)
            for n in free:
                del blocked_by[n]
                for deps in blocked_by.values():
                    deps.discard(n)

    def complete(self, node_id: str) -> None:
        del self.pending[node_id]
        for blocked in self.blocking[node_id]:
            self.block_count[blocked] -= 1
        del self.blocking[node_id]


# ------------------------------------------------------------------------------------------------ progress


class ProgressRegistry:
    """Per-prompt node states, sent as ``progress_state`` on every change."""

    def __init__(self, executor: Executor, prompt_id: str) -> None:
        self.executor = executor
        self.prompt_id = prompt_id
        self.nodes: dict[str, dict[str, Any]] = {}

    def _entry(self, node_id: str) -> dict[str, Any]:
        if node_id not in self.nodes:
            self.nodes[node_id] = {"state": "pending", "value": 0, "max": 1}
        return self.nodes[node_id]

    def _send(self) -> None:
        active = {
            node_id: {
                "value": st["value"],
                "max": st["max"],
                "state": st["state"],
                "node_id": node_id,
                "prompt_id": self.prompt_id,
                "display_node_id": node_id,
                "parent_node_id": None,
                "real_node_id": node_id,
            }
            for node_id, st in self.nodes.items()
            if st["state"] != "pending"
        }
        self.executor.send("progress_state", {"prompt_id": self.prompt_id, "nodes": active})

    def start(self, node_id: str) -> None:
        entry = self._entry(node_id)
        entry.update(state="running", value=0.0, max=1.0)
        self._send()

    def update(self, node_id: str, value: int, maximum: int) -> None:
        entry = self._entry(node_id)
        entry.update(state="running", value=value, max=maximum)
        self._send()

    def finish(self, node_id: str) -> None:
        entry = self._entry(node_id)
        entry["state"] = "finished"
        entry["value"] = entry["max"]
        self._send()


# -------------------------------------------------------------------------------------------------- nodes

LOADER_CLASSES = {
    "UNETLoader",
    "CLIPLoader",
    "VAELoader",
    "LoraLoaderModelOnly",
    "CLIPVisionLoader",
    "FrameInterpolationModelLoader",
}
SAMPLER_CLASSES = {"KSampler", "KSamplerAdvanced"}

_COMMON_TB = [
    _tb_frame(
        "execution.py",
        545,
        "execute",
        "output_data, output_ui, has_subgraph, has_pending_tasks = await get_output_data(prompt_id, unique_id, "
        "obj, input_data_all, execution_block_cb=execution_block_cb, pre_execute_cb=pre_execute_cb, "
        "v3_data=v3_data)",
        (58, 0, 151),
    ),
    _tb_frame(
        "execution.py",
        344,
        "get_output_data",
        "return_values = await _async_map_node_over_list(prompt_id, unique_id, obj, input_data_all, "
        "obj.FUNCTION, allow_interrupt=True, execution_block_cb=execution_block_cb, "
        "pre_execute_cb=pre_execute_cb, v3_data=v3_data)",
        (16, 0, 197),
    ),
    _tb_frame("execution.py", 318, "_async_map_node_over_list", "await process_inputs(input_dict, i)"),
    _tb_frame("execution.py", 306, "process_inputs", "result = f(**inputs)", (9, 0, 11)),
]
_LOAD_TORCH_FILE_TB = [
    _tb_frame("comfy/utils.py", 149, "load_torch_file", "raise e"),
    _tb_frame(
        "comfy/utils.py",
        133,
        "load_torch_file",
        'with safetensors.safe_open(ckpt, framework="pt", device=device.type) as f:',
        (5, 0, 63),
    ),
]
_LOADER_TB = {
    "VAELoader": _tb_frame(
        "nodes.py",
        847,
        "load_vae",
        "sd, metadata = comfy.utils.load_torch_file(vae_path, return_metadata=True)",
        (15, 0, 59),
    ),
}

OOM_TIPS = (
    "This error means you ran out of memory on your GPU.\n\nTIPS: If the workflow worked before you might have "
    "accidentally set the batch_size to a large number."
)


def injected_error(class_type: str, message: str | None, type_name: str | None) -> EmulatedError:
    """The error ``exec_error_node`` raises, shaped like what that node class really raises.

    Loaders fail like a broken model file (trace ``wan22_i2v_exec_fail``), samplers run out of memory.
    """
    if class_type in LOADER_CLASSES:
        default_msg = "Error while deserializing header: header too large"
        default_type = "safetensors._safetensors_rust.SafetensorError"
        frames = [_LOADER_TB.get(class_type, _LOADER_TB["VAELoader"]), *_LOAD_TORCH_FILE_TB]
    elif class_type in SAMPLER_CLASSES:
        default_msg = "Allocation on device "
        default_type = "torch.OutOfMemoryError"
        frames = [
            _tb_frame(
                "comfy/ldm/modules/attention.py",
                624,
                "attention_pytorch",
                "out = comfy.ops.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, "
                "is_causal=False)",
            )
        ]
    else:
        default_msg = f"{class_type} failed"
        default_type = "RuntimeError"
        frames = [_tb_frame("nodes.py", 1, class_type, "raise RuntimeError()")]
    msg = default_msg if message is None else message
    typ = default_type if type_name is None else type_name
    return EmulatedError(msg, typ, [*_COMMON_TB, *frames])


class NodeContext:
    """What a node function may use: the executor, its node id and the prompt."""

    def __init__(self, executor: Executor, node_id: str, class_type: str) -> None:
        self.executor = executor
        self.node_id = node_id
        self.class_type = class_type


NodeResult = tuple[tuple[Any, ...], dict[str, Any] | None]
NodeFn = Callable[..., Awaitable[NodeResult]]
NODES: dict[str, NodeFn] = {}


def node(name: str) -> Callable[[NodeFn], NodeFn]:
    def register(fn: NodeFn) -> NodeFn:
        NODES[name] = fn
        return fn

    return register


@node("LoadImage")
async def _load_image(ctx: NodeContext, image: Any) -> NodeResult:
    dirs = ctx.executor.core.dirs
    name, base = annotated_filepath(image, dirs)
    path = os.path.join(base or dirs["input"], name)
    batch = await asyncio.get_running_loop().run_in_executor(None, media.load_image_frames, path)
    return (batch, Opaque("torch.Tensor", kind="mask")), None


@node("UNETLoader")
async def _unet_loader(ctx: NodeContext, unet_name: Any, weight_dtype: Any) -> NodeResult:
    return (Opaque("comfy.model_patcher.ModelPatcher", file=unet_name, dtype=weight_dtype),), None


@node("CLIPLoader")
async def _clip_loader(ctx: NodeContext, clip_name: Any, type: Any, device: Any = "default") -> NodeResult:
    return (Opaque("comfy.sd.CLIP", file=clip_name, type=type),), None


@node("VAELoader")
async def _vae_loader(ctx: NodeContext, vae_name: Any) -> NodeResult:
    return (Opaque("comfy.sd.VAE", file=vae_name),), None


@node("CLIPVisionLoader")
async def _clip_vision_loader(ctx: NodeContext, clip_name: Any) -> NodeResult:
    return (Opaque("comfy.clip_vision.ClipVisionModel", file=clip_name),), None


@node("FrameInterpolationModelLoader")
async def _interp_loader(ctx: NodeContext, model_name: Any) -> NodeResult:
    return (Opaque("comfy.model_patcher.ModelPatcher", file=model_name, kind="frame_interpolation"),), None


@node("CLIPVisionEncode")
async def _clip_vision_encode(ctx: NodeContext, clip_vision: Any, image: Any, crop: Any) -> NodeResult:
    _need(clip_vision, Opaque, "encode_image")
    _need(image, ImageBatch, "movedim")
    return (Opaque("comfy.clip_vision.Output"),), None


@node("LoraLoaderModelOnly")
async def _lora(ctx: NodeContext, model: Any, lora_name: Any, strength_model: Any) -> NodeResult:
    _need(model, Opaque, "clone")
    return (Opaque("comfy.model_patcher.ModelPatcher", base=model, lora=lora_name),), None


@node("ModelSamplingSD3")
async def _model_sampling(ctx: NodeContext, model: Any, shift: Any) -> NodeResult:
    _need(model, Opaque, "clone")
    return (Opaque("comfy.model_patcher.ModelPatcher", base=model, shift=shift),), None


@node("WanContextWindowsManual")
@node("ContextWindowsManual")
async def _context_windows(ctx: NodeContext, model: Any, **kwargs: Any) -> NodeResult:
    _need(model, Opaque, "clone")
    return (Opaque("comfy.model_patcher.ModelPatcher", base=model, context=kwargs),), None


@node("CLIPTextEncode")
async def _text_encode(ctx: NodeContext, text: Any, clip: Any) -> NodeResult:
    if clip is None:
        raise RuntimeError(
            "ERROR: clip input is invalid: None\n\nIf the clip is from a checkpoint loader node your checkpoint "
            "does not contain a valid clip or text encoder model."
        )
    _need(clip, Opaque, "tokenize")
    return (Conditioning(text=text),), None


def _wan_latent(
    width: int, height: int, length: int, batch_size: int, start: Any, end: Any, vae: Any
) -> tuple[Any, ...]:
    _need(vae, Opaque, "encode")
    if start is not None:
        _need(start, ImageBatch, "movedim")
    if end is not None:
        _need(end, ImageBatch, "movedim")
    latent = Latent(
        width=(width // 8) * 8,
        height=(height // 8) * 8,
        frames=((length - 1) // 4) * 4 + 1,
        batch=batch_size,
        start=start,
        end=end,
    )
    return (Conditioning(), Conditioning(), latent)


@node("WanImageToVideo")
async def _wan_i2v(
    ctx: NodeContext,
    positive: Any,
    negative: Any,
    vae: Any,
    width: int,
    height: int,
    length: int,
    batch_size: int,
    start_image: Any = None,
    clip_vision_output: Any = None,
) -> NodeResult:
    return _wan_latent(width, height, length, batch_size, start_image, None, vae), None


@node("WanFirstLastFrameToVideo")
async def _wan_flf2v(
    ctx: NodeContext,
    positive: Any,
    negative: Any,
    vae: Any,
    width: int,
    height: int,
    length: int,
    batch_size: int,
    start_image: Any = None,
    end_image: Any = None,
    clip_vision_start_image: Any = None,
    clip_vision_end_image: Any = None,
) -> NodeResult:
    return _wan_latent(width, height, length, batch_size, start_image, end_image, vae), None


async def _sample(ctx: NodeContext, model: Any, latent: Any, total: int) -> NodeResult:
    _need(model, Opaque, "get_model_object")
    _need(latent, Latent, "copy")
    await ctx.executor.step_faults()
    for step in range(1, total + 1):
        await ctx.executor.sampler_step(ctx.node_id, step, total)
    return (latent,), None


@node("KSamplerAdvanced")
async def _ksampler_advanced(
    ctx: NodeContext,
    model: Any,
    add_noise: Any,
    noise_seed: Any,
    steps: int,
    cfg: Any,
    sampler_name: Any,
    scheduler: Any,
    positive: Any,
    negative: Any,
    latent_image: Any,
    start_at_step: int,
    end_at_step: int,
    return_with_leftover_noise: Any,
) -> NodeResult:
    # ComfyUI cuts the sigma schedule to [start_at_step, min(end_at_step, steps)]: that many progress steps.
    total = max(0, min(end_at_step, steps) - start_at_step)
    return await _sample(ctx, model, latent_image, total)


@node("KSampler")
async def _ksampler(
    ctx: NodeContext,
    model: Any,
    seed: Any,
    steps: int,
    cfg: Any,
    sampler_name: Any,
    scheduler: Any,
    positive: Any,
    negative: Any,
    latent_image: Any,
    denoise: float = 1.0,
) -> NodeResult:
    return await _sample(ctx, model, latent_image, steps if denoise > 0 else 0)


def _decode_frames(latent: Latent) -> ImageBatch:
    w, h = latent.width, latent.height
    if w <= 0 or h <= 0:
        raise RuntimeError(f"Given input size: ({h}x{w}). Calculated output size is too small")
    start = center_crop_first(latent.start, w, h) if latent.start is not None else None
    end = center_crop_first(latent.end, w, h, last=True) if latent.end is not None else None
    n = latent.frames
    if start is None and end is None:
        frames = [Frame(media.solid(w, h, 0x808080))] * n
    elif end is None:
        assert start is not None
        frames = [Frame(start)] * n
    else:
        a = start if start is not None else media.solid(w, h, 0x808080)
        frames = [Frame(a, end, i / (n - 1) if n > 1 else 1.0) for i in range(n)]
    return ImageBatch(frames * max(1, latent.batch))


def center_crop_first(batch: ImageBatch, width: int, height: int, last: bool = False) -> Any:
    img = batch.last() if last else batch.first()
    return media.center_crop_resize(img, width, height, "bilinear")


@node("VAEDecode")
async def _vae_decode(ctx: NodeContext, samples: Any, vae: Any) -> NodeResult:
    _need(vae, Opaque, "decode")
    _need(samples, Latent, "__getitem__")
    return (_decode_frames(samples),), None


@node("VAEDecodeTiled")
async def _vae_decode_tiled(
    ctx: NodeContext,
    samples: Any,
    vae: Any,
    tile_size: int,
    overlap: int,
    temporal_size: int = 64,
    temporal_overlap: int = 8,
) -> NodeResult:
    _need(vae, Opaque, "decode_tiled")
    _need(samples, Latent, "__getitem__")
    return (_decode_frames(samples),), None


@node("CreateVideo")
async def _create_video(
    ctx: NodeContext, images: Any, fps: float, audio: Any = None, bit_depth: int = 8
) -> NodeResult:
    _need(images, ImageBatch, "shape")
    return (Video(images, fps, audio, bit_depth),), None


@node("GetVideoComponents")
async def _video_components(ctx: NodeContext, video: Any) -> NodeResult:
    _need(video, Video, "get_components")
    return (video.images, video.audio, float(video.fps), int(video.bit_depth)), None


def interpolate_frames(images: ImageBatch, multiplier: int) -> ImageBatch:
    """``(n - 1) * multiplier + 1`` frames: each input frame, and between two neighbours the frames at
    ``t = k / multiplier``. Two frames that blend the same pair of images interpolate exactly; otherwise the
    nearer one stands in (good enough for a still image or a cross-fade)."""
    frames = images.frames
    out = [frames[0]]
    for a, b in itertools.pairwise(frames):
        for k in range(1, multiplier):
            t = k / multiplier
            if a is b:
                out.append(a)
            elif a.a is b.a and a.b is b.b:
                out.append(Frame(a.a, a.b, a.t + (b.t - a.t) * t))
            elif a.b is None and b.b is None:
                out.append(Frame(a.a, b.a, t))
            else:
                out.append(a if t < 0.5 else b)
        out.append(b)
    return ImageBatch(out)


@node("FrameInterpolate")
async def _frame_interpolate(ctx: NodeContext, interp_model: Any, images: Any, multiplier: int) -> NodeResult:
    _need(interp_model, Opaque, "load_device")
    _need(images, ImageBatch, "shape")
    if len(images) < 2 or multiplier < 2:
        return (images,), None
    # One progress update per pair of input frames, by the frames made between them (as the real node).
    per_pair = multiplier - 1
    total = (len(images) - 1) * per_pair
    for pair in range(1, len(images)):
        await ctx.executor.progress_step(ctx.node_id, pair * per_pair, total)
    return (interpolate_frames(images, multiplier),), None


@node("ImageScale")
async def _image_scale(
    ctx: NodeContext, image: Any, upscale_method: str, width: int, height: int, crop: str
) -> NodeResult:
    _need(image, ImageBatch, "movedim")
    if width == 0 and height == 0:
        return (image,), None
    w, h = image.width, image.height
    if width == 0:
        width = max(1, round(w * height / h))
    elif height == 0:
        height = max(1, round(h * width / w))
    if crop == "center":
        return (
            image.map_images(lambda im: media.center_crop_resize(im, width, height, upscale_method)),
        ), None
    resample = media.RESAMPLE.get(upscale_method)
    return (image.map_images(lambda im: im.resize((width, height), resample)),), None


@node("RepeatImageBatch")
async def _repeat(ctx: NodeContext, image: Any, amount: int) -> NodeResult:
    _need(image, ImageBatch, "repeat")
    return (image.repeat(amount),), None


@node("EmptyImage")
async def _empty_image(ctx: NodeContext, width: int, height: int, batch_size: int, color: int) -> NodeResult:
    return (ImageBatch.single(media.solid(width, height, color), batch_size),), None


def save_path(prefix: str, output_dir: str, width: int, height: int) -> tuple[str, str, int, str]:
    """(folder, file name stem, counter, subfolder) as ComfyUI's ``get_save_image_path``."""
    if "%" in prefix:
        now = time.localtime()
        for key, value in (
            ("%width%", str(width)),
            ("%height%", str(height)),
            ("%year%", str(now.tm_year)),
            ("%month%", str(now.tm_mon).zfill(2)),
            ("%day%", str(now.tm_mday).zfill(2)),
            ("%hour%", str(now.tm_hour).zfill(2)),
            ("%minute%", str(now.tm_min).zfill(2)),
            ("%second%", str(now.tm_sec).zfill(2)),
        ):
            prefix = prefix.replace(key, value)
    subfolder = os.path.dirname(os.path.normpath(prefix))
    filename = os.path.basename(os.path.normpath(prefix))
    folder = os.path.join(output_dir, subfolder)
    if os.path.commonpath((output_dir, os.path.abspath(folder))) != output_dir:
        raise Exception(
            "**** ERROR: Saving image outside the output folder is not allowed."
            + "\n full_output_folder: "
            + os.path.abspath(folder)
            + "\n         output_dir: "
            + output_dir
            + "\n         commonpath: "
            + os.path.commonpath((output_dir, os.path.abspath(folder)))
        )
    counter = 1
    try:
        existing = os.listdir(folder)
    except FileNotFoundError:
        os.makedirs(folder, exist_ok=True)
        existing = []
    best = 0
    for name in existing:
        stem = name[: len(filename) + 1]
        if os.path.normcase(stem[:-1]) != os.path.normcase(filename) or stem[-1:] != "_":
            continue
        try:
            digits = int(name[len(filename) + 1 :].split("_")[0])
        except ValueError:
            digits = 0
        best = max(best, digits)
        counter = best + 1
    return folder, filename, counter, subfolder


async def _write(fn: Callable[..., None], *args: Any) -> None:
    await asyncio.get_running_loop().run_in_executor(None, fn, *args)


_MISSING: Any = object()


@node("SaveVideo")
async def _save_video(
    ctx: NodeContext, video: Any, filename_prefix: str, format: Any, codec: Any = _MISSING
) -> NodeResult:
    if codec is _MISSING:
        # ``codec`` absent, or naming no option: ComfyUI drops the dynamic combo and the call fails.
        raise TypeError("SaveVideo.execute() missing 1 required positional argument: 'codec'")
    _need(video, Video, "get_dimensions")
    encoding = codec.get("encoding") or {}
    crf = encoding.get("crf")
    ex = ctx.executor
    if ex.faults.get("no_output"):
        return (video,), None
    folder, stem, counter, subfolder = save_path(
        filename_prefix, ex.core.dirs["output"], video.images.width, video.images.height
    )
    file = f"{stem}_{counter:05}_.mp4"
    path = os.path.join(folder, file)
    metadata = {}
    extra = ex.extra_data.get("extra_pnginfo")
    if isinstance(extra, dict):
        metadata.update(extra)
    metadata["prompt"] = ex.prompt
    padding = float(ex.faults.get("output_padding_mb") or 0.0)
    await _write(media.write_mp4, path, video.images, float(video.fps), metadata, padding, crf)
    ex.core.record_output(path)
    ui = {"images": [{"filename": file, "subfolder": subfolder, "type": "output"}], "animated": [True]}
    return (video,), ui


@node("SaveWEBM")
async def _save_webm(
    ctx: NodeContext, images: Any, filename_prefix: str, codec: Any, fps: float, crf: float
) -> NodeResult:
    _need(images, ImageBatch, "shape")
    ex = ctx.executor
    if ex.faults.get("no_output"):
        return (images,), None
    folder, stem, counter, subfolder = save_path(
        filename_prefix, ex.core.dirs["output"], images.width, images.height
    )
    file = f"{stem}_{counter:05}_.webm"
    path = os.path.join(folder, file)
    await _write(media.write_webm, path, images, float(fps), str(codec), float(crf))
    ex.core.record_output(path)
    return (images,), {
        "images": [{"filename": file, "subfolder": subfolder, "type": "output"}],
        "animated": [True],
    }


@node("SaveAnimatedWEBP")
async def _save_webp(
    ctx: NodeContext,
    images: Any,
    filename_prefix: str,
    fps: float,
    lossless: bool,
    quality: int,
    method: str,
) -> NodeResult:
    _need(images, ImageBatch, "shape")
    ex = ctx.executor
    if ex.faults.get("no_output"):
        return (images,), None
    folder, stem, counter, subfolder = save_path(
        filename_prefix, ex.core.dirs["output"], images.width, images.height
    )
    file = f"{stem}_{counter:05}_.webp"
    path = os.path.join(folder, file)
    await _write(media.write_webp, path, images, float(fps), bool(lossless), int(quality), str(method))
    ex.core.record_output(path)
    animated = len(images) != 1
    return (images,), {
        "images": [{"filename": file, "subfolder": subfolder, "type": "output"}],
        "animated": [animated],
    }


# ----------------------------------------------------------------------------------------------- executor


class Executor:
    """Runs one prompt at a time; keeps the output cache between prompts."""

    def __init__(self, core: EmulatorCore) -> None:
        self.core = core
        self.outputs = SignatureCache()
        self.ui = SignatureCache()
        self.client_id: str | None = None
        self.prompt_id = ""
        self.prompt: dict[str, Any] = {}
        self.extra_data: dict[str, Any] = {}
        self.faults: dict[str, Any] = {}
        self.status_messages: list[tuple[str, dict[str, Any]]] = []
        self.success = True
        self.steps_done = 0
        self.fired: set[str] = set()
        self.progress: ProgressRegistry | None = None
        self.ui_outputs: dict[str, dict[str, Any]] = {}

    def reset(self) -> None:
        """``POST /free {"free_memory": true}``: forget all cached outputs."""
        self.outputs.clear()
        self.ui.clear()

    # -- messages

    def send(self, event: str, data: dict[str, Any]) -> None:
        self.core.send_sync(event, data, self.client_id)

    def add_message(self, event: str, data: dict[str, Any], broadcast: bool) -> None:
        data = {**data, "timestamp": now_ms()}
        self.status_messages.append((event, data))
        if self.client_id is not None or broadcast:
            self.core.send_sync(event, data, self.client_id)

    # -- interruption and faults

    def check_interrupt(self) -> None:
        if self.core.interrupt_flag:
            raise InterruptProcessing()

    async def pause(self, seconds: float) -> None:
        """Sleep up to ``seconds``, waking early on an interrupt."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.core.interrupt_event.wait(), seconds)

    async def step_faults(self) -> None:
        """Step-counted faults, checked when a sampler starts and after each step (each fires once)."""
        drop = self.faults.get("drop_ws_after_steps")
        if drop is not None and self.steps_done >= int(drop) and "drop" not in self.fired:
            self.fired.add("drop")
            if self.client_id is not None:
                self.core.drop_client(self.client_id)
        crash = self.faults.get("crash_after_steps")
        if crash is not None and self.steps_done >= int(crash):
            await self.core.crash()
            raise ServerCrashed()

    async def progress_step(self, node_id: str, value: int, total: int) -> None:
        """One unit of a node's progress bar: ``step_delay``, then ``progress_state`` + ``progress``."""
        await self.pause(float(self.core.config["step_delay"]))
        self.check_interrupt()
        assert self.progress is not None
        self.progress.update(node_id, value, total)
        self.send("progress", {"value": value, "max": total, "prompt_id": self.prompt_id, "node": node_id})

    async def sampler_step(self, node_id: str, value: int, total: int) -> None:
        await self.progress_step(node_id, value, total)
        self.steps_done += 1
        await self.step_faults()

    # -- running

    def _is_changed(self, prompt: dict[str, Any]) -> Callable[[str], Any]:
        memo: dict[str, Any] = {}
        dirs = self.core.dirs

        def get(node_id: str) -> Any:
            if node_id in memo:
                return memo[node_id]
            node = prompt[node_id]
            value: Any = False
            if node["class_type"] == "LoadImage":
                if "is_changed" in node:
                    value = _hashable(node["is_changed"])
                else:
                    try:
                        name, base = annotated_filepath(node["inputs"]["image"], dirs)
                        with open(os.path.join(base or dirs["input"], name), "rb") as fh:
                            value = hashlib.sha256(fh.read()).hexdigest()
                    except Exception:
                        value = _Never()
            memo[node_id] = value
            return value

        return get

    def _input_data(self, node_id: str) -> tuple[dict[str, Any], dict[str, str]]:
        """The node's input values by (flat) input name, and the dynamic paths to nest them with."""
        node = self.prompt[node_id]
        known = self.core.class_inputs(node["class_type"], node["inputs"])
        data: dict[str, Any] = {}
        for name, value in node["inputs"].items():
            if is_link(value):
                cached = self.outputs.get(value[0])
                index = int(value[1])
                data[name] = None if cached is None or index >= len(cached) else cached[index]
            elif name in known:
                data[name] = value
        return data, known.dynamic_paths

    async def execute(self, item: list[Any]) -> dict[str, Any]:
        """Run a queue item ``[number, prompt_id, prompt, extra_data, outputs, sensitive]``; returns the history
        result."""
        _, prompt_id, prompt, extra_data, execute_outputs = item[:5]
        extra_data = {**extra_data, **(item[5] if len(item) > 5 else {})}
        core = self.core
        core.interrupt_flag = False
        core.interrupt_event.clear()
        self.faults = dict(core.faults)
        self.prompt_id = prompt_id
        self.prompt = prompt
        self.extra_data = extra_data
        self.client_id = extra_data.get("client_id")
        core.client_id = self.client_id
        self.status_messages = []
        self.steps_done = 0
        self.fired = set()
        self.success = True
        record = core.state_record(prompt_id)

        self.add_message("execution_start", {"prompt_id": prompt_id}, broadcast=False)

        if self.faults.get("hang"):
            record["hung"] = True
            await core.interrupt_event.wait()

        self.progress = ProgressRegistry(self, prompt_id)
        keys = compute_signatures(prompt, self._is_changed(prompt))
        for cache in (self.outputs, self.ui):
            cache.set_prompt(keys)
        # ComfyUI's RAM-pressure cache drops the entries this prompt does not use once a node has completed
        # (not before: a prompt that fails at its first node keeps them).
        evict = True
        self.ui_outputs = {}
        cached_nodes = [node_id for node_id in prompt if self.outputs.get(node_id) is not None]
        record["cached"] = cached_nodes
        self.add_message("execution_cached", {"nodes": cached_nodes, "prompt_id": prompt_id}, broadcast=False)

        executed: list[str] = []
        current_outputs = self.outputs.all_node_ids()
        execution_list = ExecutionList(
            prompt,
            is_cached=lambda n: self.outputs.get(n) is not None,
            is_output=lambda n: core.schemas.is_output(prompt[n]["class_type"]),
        )
        for node_id in execute_outputs:
            execution_list.add_node(node_id)

        failed = False
        while not execution_list.is_empty():
            try:
                node_id = execution_list.stage()
            except DependencyCycleError as ex:
                cycle = execution_list.nodes_in_cycle()
                error = {
                    "node_id": cycle[0],
                    "exception_message": str(ex),
                    "exception_type": "graph.DependencyCycleError",
                    "traceback": [],
                    "current_inputs": [],
                }
                self._report_error(prompt, current_outputs, executed, error, ex)
                failed = True
                break
            ok, error, ex = await self._execute_node(node_id, executed)
            self.success = ok
            if not ok:
                self._report_error(prompt, current_outputs, executed, error, ex)
                failed = True
                break
            execution_list.complete(node_id)
            if evict:
                for cache in (self.outputs, self.ui):
                    cache.clean_unused()
                evict = False
        if not failed:
            self.add_message("execution_success", {"prompt_id": prompt_id}, broadcast=False)
        record["executed"] = list(executed)
        record["success"] = self.success

        # History lists the UI of the nodes this prompt ran or re-reported from the cache.
        ui_outputs = {node_id: info["output"] for node_id, info in self.ui_outputs.items()}
        meta_outputs = {node_id: info["meta"] for node_id, info in self.ui_outputs.items()}
        core.last_node_id = None
        return {"outputs": ui_outputs, "meta": meta_outputs}

    async def _execute_node(
        self, node_id: str, executed: list[str]
    ) -> tuple[bool, dict[str, Any] | None, BaseException | None]:
        core = self.core
        assert self.progress is not None
        node = self.prompt[node_id]
        class_type = node["class_type"]
        if self.outputs.get(node_id) is not None:
            cached_ui = self.ui.get(node_id)
            if cached_ui is not None:
                self.ui_outputs[node_id] = cached_ui
            if self.client_id is not None:
                cached_ui = cached_ui or {}
                self.send(
                    "executed",
                    {
                        "node": node_id,
                        "display_node": node_id,
                        "output": cached_ui.get("output", None),
                        "prompt_id": self.prompt_id,
                    },
                )
            self.progress.finish(node_id)
            return True, None, None

        input_data: dict[str, Any] | None = None
        try:
            self.progress.start(node_id)
            input_data, dynamic_paths = self._input_data(node_id)
            if self.client_id is not None:
                core.last_node_id = node_id
                self.send(
                    "executing", {"node": node_id, "display_node": node_id, "prompt_id": self.prompt_id}
                )
            self.check_interrupt()
            if self.faults.get("exec_error_node") == node_id:
                raise injected_error(
                    class_type, self.faults.get("exec_error_message"), self.faults.get("exec_error_type")
                )
            node_delay = float(core.config["node_delay"])
            if node_delay > 0 and class_type not in SAMPLER_CLASSES:
                await self.pause(node_delay)
                self.check_interrupt()  # a slow node stops where it is (trace interrupt: during conditioning)
            fn = NODES[class_type]
            arguments = build_nested(input_data, dynamic_paths)
            outputs, ui = await fn(NodeContext(self, node_id, class_type), **arguments)
            if ui:
                entry = {
                    "meta": {
                        "node_id": node_id,
                        "display_node": node_id,
                        "parent_node": None,
                        "real_node_id": node_id,
                    },
                    "output": ui,
                }
                self.ui.set(node_id, entry)
                self.ui_outputs[node_id] = entry
                if self.client_id is not None:
                    self.send(
                        "executed",
                        {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": self.prompt_id},
                    )
            self.outputs.set(node_id, outputs)
        except InterruptProcessing as iex:
            log.info("Processing interrupted")
            return False, {"node_id": node_id}, iex
        except ServerCrashed:
            raise
        except Exception as ex:
            if isinstance(ex, EmulatedError):
                exception_type, tb = ex.type_name, ex.tb
            else:
                exception_type = full_type_name(type(ex))
                tb = traceback.format_tb(sys.exc_info()[2])
            tips = OOM_TIPS if exception_type == "torch.OutOfMemoryError" else ""
            formatted = {}
            if input_data is not None:
                formatted = {name: [format_value(v)] for name, v in input_data.items()}
            log.error("!!! Exception during processing !!! %s", ex)
            error = {
                "node_id": node_id,
                "exception_message": f"{ex}\n{tips}",
                "exception_type": exception_type,
                "traceback": tb,
                "current_inputs": formatted,
            }
            return False, error, ex

        self.progress.finish(node_id)
        executed.append(node_id)
        return True, None, None

    def _report_error(
        self,
        prompt: dict[str, Any],
        current_outputs: list[str],
        executed: list[str],
        error: dict[str, Any] | None,
        ex: BaseException | None,
    ) -> None:
        assert error is not None
        node_id = error["node_id"]
        class_type = prompt[node_id]["class_type"]
        self.success = False
        if isinstance(ex, InterruptProcessing):
            mes = {
                "prompt_id": self.prompt_id,
                "node_id": node_id,
                "node_type": class_type,
                "executed": list(executed),
            }
            self.add_message("execution_interrupted", mes, broadcast=True)
        else:
            mes = {
                "prompt_id": self.prompt_id,
                "node_id": node_id,
                "node_type": class_type,
                "executed": list(executed),
                "exception_message": error["exception_message"],
                "exception_type": error["exception_type"],
                "traceback": error["traceback"],
                "current_inputs": error["current_inputs"],
                "current_outputs": list(current_outputs),
            }
            self.add_message("execution_error", mes, broadcast=False)
