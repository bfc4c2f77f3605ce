"""Load a workflow template and bind a validated job into it: pure functions over plain dicts.

The templates in ``workflows/`` are ComfyUI API-format graphs with meaningful node ids; ``workflows/README.md``
tables which job field lands in which node and input. The binder copies the template, fills the inputs, drops
the Lightning LoRA nodes when ``lightning`` is off, chains the user's LoRA pairs on each expert, inserts
context windows for videos longer than one window, adds CLIP vision nodes when a CLIP vision model is named
and frame interpolation between decode and the video when the job interpolates, and sets SaveVideo's H.264
quality; an extension starts from a video's last frames. Which node loads which model file comes from
:mod:`worker.roles`. Node ids of shared nodes never depend on the job, so ComfyUI's cache keeps the experts.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .models import roles
from .schema import CONTEXT_WINDOW, JobInput, round_to_multiple

Graph = dict[str, dict[str, Any]]

TEMPLATES = {"i2v": "wan22_i2v.json", "flf2v": "wan22_flf2v.json"}
CONDITIONING_CLASS = {"i2v": "WanImageToVideo", "flf2v": "WanFirstLastFrameToVideo"}

TEMPLATE_NODES: dict[str, str] = {
    **{role.name: role.loader for role in roles.ROLES if role.in_template},
    "shift_high": "ModelSamplingSD3",
    "shift_low": "ModelSamplingSD3",
    "positive": "CLIPTextEncode",
    "negative": "CLIPTextEncode",
    "start_image": "LoadImage",
    "sampler_high": "KSamplerAdvanced",
    "sampler_low": "KSamplerAdvanced",
    "decode": "VAEDecode",
    "video": "CreateVideo",
    "save_video": "SaveVideo",
}
"""The nodes both templates must have: each model role's loader (its id is the role), and the rest."""
OUTPUT_NODE = "save_video"
LAST_FRAME = "save_last_frame"
INTERPOLATE_NODE = "interpolate"
EXPERTS = ("high", "low")


class TemplateError(ValueError):
    """A workflow template lacks a node the binder needs, or has it with another class."""


@dataclass(frozen=True)
class LoraFiles:
    """The file names of one LoRA pair as ComfyUI knows them (None: no LoRA on that expert)."""

    high: str | None
    low: str | None
    high_weight: float = 1.0
    low_weight: float = 1.0


class ModelFiles:
    """The model file names the graph loads, by role (:mod:`worker.roles`), defaults already applied and
    downloads already done."""

    __slots__ = ("loras", "names")

    def __init__(self, *, loras: Iterable[LoraFiles] = (), **names: str | None) -> None:
        if unknown := set(names) - set(roles.BY_NAME):
            raise TypeError(f"unknown model roles: {', '.join(sorted(unknown))}")
        self.names: dict[str, str] = {role: name for role, name in names.items() if name}
        self.loras: tuple[LoraFiles, ...] = tuple(loras)

    def get(self, role: str) -> str | None:
        return self.names.get(role)

    def replace(self, *, loras: Iterable[LoraFiles] | None = None, **names: str | None) -> ModelFiles:
        return ModelFiles(loras=self.loras if loras is None else loras, **{**self.names, **names})

    def __repr__(self) -> str:
        return f"ModelFiles({self.names!r}, loras={self.loras!r})"


@dataclass(frozen=True)
class Images:
    """The names under which the input images (or the video to extend) were uploaded to ComfyUI."""

    start: str | None
    end: str | None = None
    video: str | None = None


def load_template(workflows_dir: Path, mode: str) -> Graph:
    """Read and check the template for ``mode`` (``i2v`` or ``flf2v``)."""
    graph: Graph = json.loads((workflows_dir / TEMPLATES[mode]).read_text(encoding="utf-8"))
    check_template(graph, mode)
    return graph


def check_template(graph: Mapping[str, Mapping[str, Any]], mode: str) -> None:
    expected = dict(TEMPLATE_NODES, conditioning=CONDITIONING_CLASS[mode])
    if mode == "flf2v":
        expected["end_image"] = "LoadImage"
    for node_id, class_type in expected.items():
        if graph.get(node_id) is None:
            raise TemplateError(f"the {mode} template has no node {node_id!r}")
        if (found := graph[node_id].get("class_type")) != class_type:
            raise TemplateError(
                f"node {node_id!r} of the {mode} template is {found!r}, expected {class_type!r}"
            )


def step_offsets(job: JobInput) -> dict[str, int]:
    """Where each sampler's own steps start in the job's step count (for progress)."""
    return {"sampler_high": 0, "sampler_low": job.high_noise_steps}


def bind(template: Graph, job: JobInput, files: ModelFiles, images: Images, *, filename_prefix: str) -> Graph:
    """A new graph for ``job``: the template is not modified."""
    graph = copy.deepcopy(template)
    mode = job.mode
    check_template(graph, mode)

    for role in roles.ROLES:
        name = files.get(role.name)
        if not role.used_by(job, named=bool(name)):
            continue
        if not name:
            raise ValueError(f"no file for the model role {role.name!r}")
        if role.in_template:
            _set(graph, role.name, **{role.input: name})
        else:
            _add_loader(graph, role, name, job)
    _set(graph, "positive", text=job.prompt)
    _set(graph, "negative", text=job.negative_prompt)
    if images.video is not None:
        _extend(graph, images.video, job.extend_frames, job.length)
    else:
        _set(graph, "start_image", image=images.start)
    if mode == "flf2v":
        if images.end is None:
            raise ValueError("an FLF2V job needs an uploaded end image")
        _set(graph, "end_image", image=images.end)
    sides = {side: round_to_multiple(getattr(job, side), 16) for side in ("width", "height")}
    _set(graph, "conditioning", **sides, length=job.length)

    for expert in EXPERTS:
        tail = _model_chain(graph, job, files, expert)
        tail = _context_windows(graph, job, expert, tail)
        graph[f"sampler_{expert}"]["inputs"]["model"] = [tail, 0]

    steps, split, seed, cfg = job.steps, job.high_noise_steps, job.seed, float(job.cfg)
    _set(graph, "sampler_high", noise_seed=seed, steps=steps, cfg=cfg, start_at_step=0, end_at_step=split)
    _set(graph, "sampler_low", noise_seed=seed, steps=steps, cfg=cfg, start_at_step=split, end_at_step=10000)
    _set(graph, "video", fps=float(job.output_fps))
    _set(graph, "save_video", filename_prefix=filename_prefix, **save_video_encoding(job.crf))
    if job.return_last_frame:
        graph["last_frame"] = _pick("Last frame", graph["video"]["inputs"]["images"], -1, 1)
        graph[LAST_FRAME] = _node("SaveImage", "", images=["last_frame", 0], filename_prefix=filename_prefix)

    return graph


def save_video_encoding(crf: int) -> dict[str, Any]:
    """SaveVideo's ``codec`` input, a dynamic combo: H.264, re-encoded at ``crf``. ComfyUI's API format gives
    a nested choice's inputs as keys joined with dots."""
    return {"codec": "h264", "codec.encoding": "re-encode", "codec.encoding.crf": float(crf)}


def _set(graph: Graph, node_id: str, **inputs: Any) -> None:
    graph[node_id]["inputs"].update(inputs)


def _model_chain(graph: Graph, job: JobInput, files: ModelFiles, expert: str) -> str:
    """Expert -> Lightning LoRA (optional) -> user LoRAs -> shift; returns the id of the shift node."""
    tail = f"{expert}_model"
    lightning = f"lightning_{expert}"
    if job.lightning:
        graph[lightning]["inputs"].update(model=[tail, 0], strength_model=1.0)
        tail = lightning
    else:
        del graph[lightning]
    for index, pair in enumerate(files.loras, start=1):
        name = pair.high if expert == "high" else pair.low
        if not name:
            continue
        weight = pair.high_weight if expert == "high" else pair.low_weight
        node_id = f"lora_{expert}_{index}"
        graph[node_id] = _node(
            "LoraLoaderModelOnly",
            f"LoRA {index} ({expert})",
            model=[tail, 0],
            lora_name=name,
            strength_model=float(weight),
        )
        tail = node_id
    shift = f"shift_{expert}"
    graph[shift]["inputs"].update(model=[tail, 0], shift=float(job.shift))
    return shift


def _context_windows(graph: Graph, job: JobInput, expert: str, tail: str) -> str:
    if not job.uses_context_windows:
        return tail
    node_id = f"context_{expert}"
    graph[node_id] = _node(
        "WanContextWindowsManual",
        f"Context windows ({expert})",
        model=[tail, 0],
        context_length=CONTEXT_WINDOW,
        context_overlap=int(job.context_overlap),
        context_schedule="standard_static",
        context_stride=1,
        closed_loop=False,
        fuse_method="pyramid",
        freenoise=bool(job.context_freenoise),
        retain_first_frame=bool(job.context_retain_first_frame),
        split_conds_to_windows=False,
    )
    return node_id


def _add_loader(graph: Graph, role: roles.ModelRole, name: str, job: JobInput) -> None:
    """The loader of a model the templates do not load, and the nodes that use it."""
    graph[role.name] = _node(role.loader, role.title, **{role.input: name})
    if role.name == "clip_vision":
        _clip_vision(graph, job.mode)
    elif role.name == "interpolation_model":
        _interpolate(graph, role.name, job.interpolate)


def _node(class_type: str, title: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": inputs, "_meta": {"title": title or class_type}}


def _pick(title: str, images: Any, index: int, length: int) -> dict[str, Any]:
    return _node("ImageFromBatch", title, image=images, batch_index=index, length=length)


def _extend(graph: Graph, video: str, frames: int, length: int) -> None:
    """The video's last ``frames`` frames start the clip; the clip's frames after them are appended to it."""
    graph["given_video"] = _node("LoadVideo", "Video to extend", file=video)
    graph["given_frames"] = _node("GetVideoComponents", "Its frames", video=["given_video", 0])
    graph["start_image"] = _pick("Its last frames", ["given_frames", 0], -frames, frames)
    graph["new_frames"] = _pick("New frames", graph["video"]["inputs"]["images"], frames, length - frames)
    graph["joined"] = _node("ImageBatch", "", image1=["given_frames", 0], image2=["new_frames", 0])
    graph["video"]["inputs"]["images"] = ["joined", 0]
    if "clip_vision_start" in graph:  # CLIP vision sees the video's last frame
        graph["given_last"] = _pick("Its last frame", ["given_frames", 0], -1, 1)
        graph["clip_vision_start"]["inputs"]["image"] = ["given_last", 0]


def _interpolate(graph: Graph, loader: str, multiplier: int) -> None:
    """Decoded frames -> FrameInterpolate -> the video (whose fps is the job's output fps)."""
    images = graph["video"]["inputs"]["images"]
    title = f"Frame interpolation (x{multiplier})"
    graph[INTERPOLATE_NODE] = _node(
        "FrameInterpolate", title, interp_model=[loader, 0], images=images, multiplier=multiplier
    )
    graph["video"]["inputs"]["images"] = [INTERPOLATE_NODE, 0]


def _clip_vision(graph: Graph, mode: str) -> None:
    roles = [("start", "clip_vision_output" if mode == "i2v" else "clip_vision_start_image")]
    if mode == "flf2v":
        roles.append(("end", "clip_vision_end_image"))
    for role, input_name in roles:
        node_id = f"clip_vision_{role}"
        image, title = [f"{role}_image", 0], f"CLIP vision ({role} image)"
        graph[node_id] = _node(
            "CLIPVisionEncode", title, clip_vision=["clip_vision", 0], image=image, crop="none"
        )
        graph["conditioning"]["inputs"][input_name] = [node_id, 0]
