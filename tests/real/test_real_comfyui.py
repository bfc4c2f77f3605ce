"""The real ComfyUI (the version the image ships, on CPU, with tiny models) judges the worker.

In this order, which the tests rely on:
1. the setup: the Dockerfile names the ComfyUI the tests unpack, the cache's rules hold, and ComfyUI runs;
2. validation: every graph shape the binder can produce is accepted by ``POST /prompt``; the graphs name
   zero-byte model files, so that a graph ComfyUI goes on to run fails at once in its first loader;
3. parity: good and broken graphs get the same verdict and the same errors from the emulator;
4. real jobs through the worker's local API, to real MP4s: I2V, FLF2V (reusing the loaded models), LoRA pairs
   with CLIP vision, FILM frame interpolation, a video longer than one context window, a cancel (through a stand-in of RunPod's job
   API, the only way a cancel reaches a worker), workflow jobs (an image-only graph, a built-in job's exported
   graph, hostile graphs), a video extended from its last frames, and twenty jobs in a row;
5. last, a short soak (``bench/soak.py``): jobs of every kind in production mode, with cancels, errors and one
   crash of ComfyUI, which it starts again.

Every real job uses the same prompt and negative prompt: ComfyUI then encodes them once (UMT5-XXL takes about
a minute per 512-token prompt on two CPU cores) and keeps the encoding for the jobs after.
"""

from __future__ import annotations

import base64
import copy
import io
import itertools
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import pytest
import requests
from PIL import Image

from tests.emulator import Emulator
from tests.support.images import data_uri, image_bytes
from tests.support.installed import Installed
from tests.support.video import make_mp4, probe_b64
from tests.support.worker_proc import LocalApi
from worker import graph
from worker.models import roles
from worker.schema import JobInput, parse_job_input

from .comfy_env import (
    MARKER,
    REPO,
    build_once,
    pins_from_dockerfile,
    read_pins,
    source_version,
    without_torch,
)
from .comfyui_server import CACHE_MODE, RealComfyUI, describe_refusal
from .runpod_standin import ProductionWorker, RunpodStandin, production_env
from .tiny_models import default_names, tiny_manifest, validation_lora, validation_name

pytestmark = [pytest.mark.real_comfyui, pytest.mark.timeout(1800)]
"""A test that is the first to need ComfyUI also pays for its setup: the environment's first build (about two
minutes), the tiny models (seconds) and ComfyUI's start (about ten seconds)."""

PROMPT = "a red fox runs through the snow"
START_PNG = image_bytes("PNG", (128, 128), (200, 60, 30))
END_PNG = image_bytes("PNG", (128, 128), (30, 60, 200))
START = data_uri(START_PNG)
END = data_uri(END_PNG)
FIRST_JOB_S = 1500
"""The first job loads the text encoder and encodes the prompts: minutes on CPU, more beside other tests."""
JOB_S = 600


def job(**fields: Any) -> dict[str, Any]:
    return {
        "prompt": PROMPT,
        "image_base64": START,
        "width": 128,
        "height": 128,
        "length": 9,
        "seed": 7,
        "output": "base64",
        **fields,
    }


# --------------------------------------------------------------------------------------------- the pins
def test_dockerfile_pins_the_comfyui_and_torch_the_tests_run(comfy_source: Path) -> None:
    found = read_pins((REPO / "Dockerfile").read_text(encoding="utf-8"))
    assert {"COMFYUI_VERSION", "COMFYUI_COMMIT", "TORCH_VERSION", "TORCHVISION_VERSION"} <= set(found), found
    assert re.fullmatch(r"[0-9a-f]{40}", found["COMFYUI_COMMIT"]), found["COMFYUI_COMMIT"]
    assert re.fullmatch(r"[0-9a-f]{64}", found["COMFYUI_SOURCE_DIGEST"]), found["COMFYUI_SOURCE_DIGEST"]
    assert "v" + source_version(comfy_source) == pins_from_dockerfile().comfyui_version


def test_comfyui_runs_in_the_cache_mode_the_image_uses() -> None:
    start_sh = (REPO / "start.sh").read_text(encoding="utf-8")
    assert f"cache_args=({CACHE_MODE})" in start_sh


def test_comfyui_requirements_lose_only_their_torch_lines() -> None:
    text = (
        "torch\ntorchsde\ntorchvision>=0.20\ntorchaudio ; sys_platform != 'x'\nnumpy>=1.25.0\n#torch note\n"
    )
    assert without_torch(text) == "torchsde\nnumpy>=1.25.0\n#torch note\n"


def test_a_cache_entry_is_built_once_and_never_seen_half_built(tmp_path: Path) -> None:
    calls: list[Path] = []

    def failing(work: Path) -> None:
        (work / "half").write_text("x")
        raise RuntimeError("pip failed")

    def good(work: Path) -> None:
        calls.append(work)
        (work / "venv").mkdir()

    final = tmp_path / "entry"
    with pytest.raises(RuntimeError):
        build_once(final, {"v": 1}, failing, what="a test entry")
    assert not final.exists() and [p.name for p in tmp_path.iterdir()] == [".entry.lock"]
    (tmp_path / ".entry.building-killed").mkdir()
    assert build_once(final, {"v": 1}, good, what="a test entry") == final
    assert (final / "venv").is_dir() and (final / MARKER).is_file()
    assert not list(tmp_path.glob(".entry.building-*"))
    build_once(final, {"v": 1}, good, what="a test entry")
    assert len(calls) == 1, "a complete entry is reused"
    build_once(final, {"v": 2}, good, what="a test entry")
    assert len(calls) == 2, "another key builds again"


def test_the_pinned_comfyui_runs_with_the_tiny_models(comfyui: RealComfyUI) -> None:
    stats = comfyui.system_stats()
    assert "v" + stats["system"]["comfyui_version"] == pins_from_dockerfile().comfyui_version
    names = default_names()
    for role in ("high_model", "low_model", "text_encoder", "vae", "lightning_high", "lightning_low"):
        kind = roles.BY_NAME[role].kind
        assert names[role] in comfyui.models(kind), f"{role}: {names[role]} not in ComfyUI's {kind}"


# --------------------------------------------------------------------------------------------- validation
LORA_LAYOUTS: dict[str, tuple[tuple[bool, bool], ...]] = {
    "0": (),
    "1": ((True, True),),
    "2_high_only": ((True, True), (True, False)),
    "3_low_only": ((True, True), (False, True), (True, True)),
    "4_mixed": ((True, True), (True, False), (False, True), (True, True)),
}
"""LoRA pairs as (on the high expert, on the low expert): chains of 0 to 4 nodes on each expert."""
CONTEXT_OPTIONS = list(itertools.product((True, False), (False, True), (48, 0, 80, 16)))
"""(context_freenoise, context_retain_first_frame, context_overlap), cycled through the windowed shapes."""


@dataclass(frozen=True)
class Shape:
    mode: str
    lightning: bool
    loras: str
    clip_vision: bool
    windows: bool
    interpolate: int
    context: tuple[bool, bool, int] = (True, False, 48)

    @property
    def id(self) -> str:
        parts = [self.mode, "lightning" if self.lightning else "plain", f"loras{self.loras}"]
        parts.append("clipvision" if self.clip_vision else "noclip")
        if self.windows:
            freenoise, retain, overlap = self.context
            parts.append(f"windows-fn{int(freenoise)}-rf{int(retain)}-ov{overlap}")
        else:
            parts.append("onewindow")
        parts.append(f"x{self.interpolate}")
        return "-".join(parts)

    def job(self) -> JobInput:
        fields = job(
            length=85 if self.windows else 9,
            lightning=self.lightning,
            interpolate=self.interpolate,
            context_freenoise=self.context[0],
            context_retain_first_frame=self.context[1],
            context_overlap=self.context[2],
        )
        if self.mode == "flf2v":
            fields["end_image_base64"] = END
        return parse_job_input(fields)

    def files(self) -> graph.ModelFiles:
        """Zero-byte files for every role the shape loads; CLIP vision only when the shape has it."""
        loras = [
            graph.LoraFiles(
                high=validation_lora(index, "high") if high else None,
                low=validation_lora(index, "low") if low else None,
                high_weight=0.5 + index / 10,
                low_weight=1.0 - index / 10,
            )
            for index, (high, low) in enumerate(LORA_LAYOUTS[self.loras], start=1)
        ]
        names = {role.name: validation_name(role.name) for role in roles.ROLES}
        if not self.clip_vision:
            names.pop("clip_vision", None)
        return graph.ModelFiles(loras=loras, **names)


def all_shapes() -> list[Shape]:
    shapes = []
    cycle = itertools.cycle(CONTEXT_OPTIONS)
    for mode, lightning, loras, clip_vision, windows, interpolate in itertools.product(
        ("i2v", "flf2v"), (True, False), LORA_LAYOUTS, (False, True), (False, True), (1, 2)
    ):
        context = next(cycle) if windows else (True, False, 48)
        shapes.append(Shape(mode, lightning, loras, clip_vision, windows, interpolate, context))
    return shapes


SHAPES = all_shapes()


@pytest.fixture(scope="module")
def uploaded(comfyui: RealComfyUI) -> graph.Images:
    """The start and end images, uploaded once for every validated graph."""
    return graph.Images(
        start=comfyui.upload_image(START_PNG, "validate_start.png"),
        end=comfyui.upload_image(END_PNG, "validate_end.png"),
    )


def bound(shape: Shape, images: graph.Images) -> graph.Graph:
    workflows = REPO / "workflows"
    template = graph.load_template(workflows, shape.mode)
    return graph.bind(template, shape.job(), shape.files(), images, filename_prefix=f"validate/{shape.id}")


def expected_nodes(shape: Shape) -> set[str]:
    """Node ids the binder must have added for ``shape``: proof that the matrix covers what it claims."""
    nodes = set()
    if shape.lightning:
        nodes |= {"lightning_high", "lightning_low"}
    for index, (high, low) in enumerate(LORA_LAYOUTS[shape.loras], start=1):
        nodes |= {f"lora_high_{index}"} if high else set()
        nodes |= {f"lora_low_{index}"} if low else set()
    if shape.clip_vision:
        nodes |= {"clip_vision", "clip_vision_start"} | (
            {"clip_vision_end"} if shape.mode == "flf2v" else set()
        )
    if shape.windows:
        nodes |= {"context_high", "context_low"}
    if shape.interpolate > 1:
        nodes.add(graph.INTERPOLATE_NODE)
    return nodes


@pytest.mark.parametrize("shape", SHAPES, ids=[s.id for s in SHAPES])
def test_every_graph_shape_is_accepted(comfyui: RealComfyUI, uploaded: graph.Images, shape: Shape) -> None:
    prompt = bound(shape, uploaded)
    missing = expected_nodes(shape) - set(prompt)
    assert not missing, f"the binder did not add {missing}"
    if shape.windows:
        context = prompt["context_high"]["inputs"]
        assert (
            context["freenoise"],
            context["retain_first_frame"],
            context["context_overlap"],
        ) == shape.context
    status, body = comfyui.post_prompt(prompt)
    assert status == 200, f"ComfyUI refused the {shape.id} graph:\n{describe_refusal(body)}"
    assert body.get("node_errors") == {}, (
        f"ComfyUI accepted {shape.id} with errors:\n{describe_refusal(body)}"
    )


# --------------------------------------------------------------------------------------------- parity
def parity_base(images: graph.Images) -> graph.Graph:
    """A rich graph: I2V, Lightning, two LoRA pairs (one one-sided), context windows, CLIP vision."""
    shape = Shape("i2v", True, "2_high_only", True, True, 1)
    return bound(shape, images)


def broken(base: graph.Graph, change: str) -> graph.Graph:
    prompt = copy.deepcopy(base)
    if change == "unknown_class":
        prompt["mystery"] = {"class_type": "NoSuchNode", "inputs": {"image": ["start_image", 0]}}
    elif change == "missing_required_input":
        del prompt["sampler_high"]["inputs"]["cfg"]
    elif change == "bad_combo_value":
        prompt["sampler_high"]["inputs"]["sampler_name"] = "no_such_sampler"
    elif change == "int_below_min":
        prompt["sampler_low"]["inputs"]["steps"] = 0
    elif change == "int_above_max":
        prompt["conditioning"]["inputs"]["width"] = 100_000
    elif change == "wrong_link_type":
        prompt["video"]["inputs"]["images"] = ["vae", 0]
    elif change == "link_to_missing_node":
        prompt["decode"]["inputs"]["samples"] = ["no_such_node", 0]
    elif change == "missing_model_file":
        prompt["high_model"]["inputs"]["unet_name"] = "absent_high.safetensors"
    elif change == "missing_lora_file":
        prompt["lora_high_1"]["inputs"]["lora_name"] = "absent_lora.safetensors"
    elif change == "missing_image":
        prompt["start_image"]["inputs"]["image"] = "absent.png"
    elif change == "not_a_number":
        prompt["sampler_high"]["inputs"]["cfg"] = "plenty"
    elif change == "no_output_node":
        del prompt["save_video"]
    elif change == "context_option_missing":
        del prompt["context_low"]["inputs"]["retain_first_frame"]
    elif change != "good":
        raise ValueError(change)
    return prompt


# Each broken case is one the emulator still judges (tests/emulator/validate.py); beyond these, the real ComfyUI
# alone judges graphs.
PARITY_CASES = (
    "good",
    "unknown_class",
    "missing_required_input",
    "bad_combo_value",
    "int_below_min",
    "int_above_max",
    "wrong_link_type",
    "link_to_missing_node",
    "missing_model_file",
    "missing_lora_file",
    "missing_image",
    "not_a_number",
    "no_output_node",
    "context_option_missing",
)


def verdict(status: int, body: dict[str, Any]) -> dict[str, Any]:
    """What a client can rely on: accepted or not, the top-level error type, and each node's errors."""
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    node_errors = body.get("node_errors") or {}
    return {
        "status": status,
        "error_type": error.get("type"),
        "error_node": (error.get("extra_info") or {}).get("node_id"),
        "node_errors": sorted(
            (node_id, e.get("type"), (e.get("extra_info") or {}).get("input_name"))
            for node_id, entry in node_errors.items()
            for e in entry.get("errors", [])
        ),
        "node_classes": {node_id: entry.get("class_type") for node_id, entry in node_errors.items()},
    }


@pytest.fixture(scope="module")
def emulator(comfyui: RealComfyUI) -> Iterator[Emulator]:
    """The emulator, given the same model files the real ComfyUI lists, and the same uploaded images."""
    folders = {role.kind for role in roles.ROLES} | {roles.LORA_KIND}
    models = {folder: comfyui.models(folder) for folder in sorted(folders)}
    with Emulator(models=models) as emu:
        for name, data in (("validate_start.png", START_PNG), ("validate_end.png", END_PNG)):
            files = {"image": (name, data, "image/png")}
            response = requests.post(
                f"{emu.url}/upload/image", files=files, data={"overwrite": "true"}, timeout=10
            )
            response.raise_for_status()
        yield emu


@pytest.mark.parametrize("change", PARITY_CASES)
def test_the_emulator_judges_graphs_as_comfyui_does(
    comfyui: RealComfyUI, emulator: Emulator, uploaded: graph.Images, change: str
) -> None:
    prompt = broken(parity_base(uploaded), change)
    real = verdict(*comfyui.post_prompt(prompt))
    response = requests.post(
        f"{emulator.url}/prompt", json={"prompt": prompt, "client_id": "parity"}, timeout=30
    )
    emulated = verdict(response.status_code, response.json())
    if change == "good":
        assert real["status"] == 200 and not real["node_errors"], real
    else:
        assert real["status"] == 400, f"the real ComfyUI accepted the {change} graph: {real}"
    assert emulated == real, f"{change}: the emulator says {emulated}, the real ComfyUI says {real}"


# --------------------------------------------------------------------------------------------- real jobs
def test_validated_graphs_have_left_the_queue(comfyui: RealComfyUI) -> None:
    """The graphs above ran only as far as their zero-byte loaders; none may hold up the real jobs."""
    comfyui.wait_queue_empty(timeout_s=540)


def check_video(out: dict[str, Any], *, frames: int, fps: float = 16.0) -> None:
    info = probe_b64(out["video"])
    assert (info.frames, info.width, info.height, float(info.fps)) == (frames, 128, 128, fps), info
    assert info.codec == "h264"
    assert out["mime_type"] == "video/mp4" and out.get("output_length", out["length"]) == frames


def test_i2v_job_makes_an_mp4(local_api: LocalApi) -> None:
    body = local_api.runsync(job(), timeout=FIRST_JOB_S)
    assert body["status"] == "COMPLETED", body
    out = body["output"]
    check_video(out, frames=9)
    assert (out["mode"], out["seed"], out["width"], out["height"], out["fps"]) == ("i2v", 7, 128, 128, 16.0)


def test_flf2v_job_reuses_the_loaded_models(local_api: LocalApi) -> None:
    body = local_api.runsync(job(end_image_base64=END, seed=8), timeout=JOB_S)
    assert body["status"] == "COMPLETED", body
    out = body["output"]
    check_video(out, frames=9)
    assert out["mode"] == "flf2v"
    cached = set(out["cached_nodes"])
    assert {"high_model", "low_model", "text_encoder", "vae"} <= cached, cached


def test_a_video_longer_than_one_window(local_api: LocalApi) -> None:
    body = local_api.runsync(job(length=85, seed=9), timeout=JOB_S)
    assert body["status"] == "COMPLETED", body
    check_video(body["output"], frames=85)


def test_lora_pairs_and_clip_vision_run(comfyui: RealComfyUI, local_api: LocalApi) -> None:
    since = len(comfyui.log_text())
    pairs = [
        {
            "high": "style_high.safetensors",
            "low": "style_low.safetensors",
            "high_weight": 0.7,
            "low_weight": 0.5,
        },
        {"high": "motion_high.safetensors"},
        {"low": "detail_low.safetensors", "low_weight": 1.5},
    ]
    clip_vision = "tiny_clip_vision_vitl.safetensors"
    body = local_api.runsync(job(lora_pairs=pairs, clip_vision=clip_vision, seed=12), timeout=JOB_S)
    assert body["status"] == "COMPLETED", body
    check_video(body["output"], frames=9)
    log = comfyui.log_text()[since:]
    assert "lora key not loaded" not in log, "ComfyUI ignored part of a tiny LoRA"
    assert "Requested to load CLIPVisionModelProjection" in log, "the CLIP vision model was not loaded"


def test_frame_interpolation_doubles_the_frames_and_the_fps(local_api: LocalApi) -> None:
    body = local_api.runsync(
        job(interpolate=2, interpolation_model="tiny_film.safetensors", seed=13), timeout=JOB_S
    )
    assert body["status"] == "COMPLETED", body
    out = body["output"]
    check_video(out, frames=17, fps=32.0)
    assert (out["length"], out["fps"], out["output_length"], out["output_fps"]) == (9, 16.0, 17, 32.0)


def test_a_landscape_image_without_a_size_gives_a_landscape_video(local_api: LocalApi) -> None:
    landscape = data_uri(image_bytes("PNG", (640, 360), (40, 160, 90)))
    fields = {"image_base64": landscape, "resolution": "480p", "length": 5, "seed": 14}
    request = {k: v for k, v in job(**fields).items() if k not in ("width", "height")}
    body = local_api.runsync(request, timeout=JOB_S)
    assert body["status"] == "COMPLETED", body
    out = body["output"]
    info = probe_b64(out["video"])
    assert (info.width, info.height, info.frames) == (848, 480, 5), info
    assert (out["width"], out["height"]) == (848, 480)
    assert {a["field"] for a in out["adjustments"]} == {"width", "height"}


def test_a_lower_crf_gives_a_larger_file_of_the_same_frames(local_api: LocalApi) -> None:
    sizes = {}
    for crf in (8, 40):
        body = local_api.runsync(job(crf=crf, seed=15), timeout=JOB_S)
        assert body["status"] == "COMPLETED", body
        check_video(body["output"], frames=9)
        sizes[crf] = body["output"]["size_bytes"]
    assert sizes[8] > sizes[40], sizes


def fit_env(comfyui: RealComfyUI, folder: Path) -> dict[str, str]:
    """What lets a worker pass its start check here: CPU allowed, the tiny models' sizes as the manifest's."""
    return {
        **comfyui.worker_env(),
        "ALLOW_CPU": "true",
        "MODELS_MANIFEST": str(tiny_manifest(comfyui.volume, folder)),
    }


@pytest.fixture(scope="module")
def production_worker(
    comfyui: RealComfyUI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunpodStandin, ProductionWorker]]:
    """``python -m worker`` as on RunPod, taking its jobs from a stand-in of RunPod's job API."""
    logs = tmp_path_factory.mktemp("production_worker")
    with RunpodStandin() as standin:
        env = production_env(fit_env(comfyui, logs), standin)
        worker = ProductionWorker(env, cwd=logs, log_path=logs / "worker.log")
        try:
            worker.wait_polling(standin)
            yield standin, worker
        finally:
            worker.stop()


def test_the_start_check_refuses_this_cpu_comfyui_unless_cpu_is_allowed(
    comfyui: RealComfyUI, production_worker: tuple[RunpodStandin, ProductionWorker], tmp_path: Path
) -> None:
    _, accepted = production_worker
    assert "Running 4 fitness check(s)" in accepted.log()
    assert "All fitness checks passed" in accepted.log()
    with RunpodStandin() as standin:
        env = production_env({**fit_env(comfyui, tmp_path), "ALLOW_CPU": "false"}, standin)
        refused = ProductionWorker(env, cwd=tmp_path, log_path=tmp_path / "worker.log")
        try:
            log = refused.wait_refused()
        finally:
            refused.stop()
    assert "Fitness check failed: cuda_device | RuntimeError: ComfyUI reports no CUDA device" in log
    assert "(devices: ['cpu'])" in log
    assert standin.take_polls == 0
    assert standin.unhealthy[0]["check"] == ["cuda_device"]


def wait_for_sampling(comfyui: RealComfyUI, since: int, total: int, timeout_s: float) -> None:
    """Until ComfyUI's log shows a sampler step of ``total`` after offset ``since``: the job is sampling."""
    pattern = re.compile(rf"\|\s*[1-9]\d*/{total} \[")
    deadline = time.monotonic() + timeout_s
    while not pattern.search(comfyui.log_text()[since:]):
        assert time.monotonic() < deadline, f"no sampling step /{total} within {timeout_s:.0f} s"
        time.sleep(0.1)


def test_cancel_interrupts_comfyui_and_the_next_job_runs(
    comfyui: RealComfyUI, production_worker: tuple[RunpodStandin, ProductionWorker]
) -> None:
    standin, worker = production_worker
    since = len(comfyui.log_text())
    history_before = set(comfyui.http.get(f"{comfyui.url}/history", timeout=10).json())
    job_id = standin.submit(job(steps=100, lightning=False, seed=10))
    standin.wait_taken(job_id, timeout_s=30)
    wait_for_sampling(comfyui, since, total=50, timeout_s=JOB_S)
    running, _ = comfyui.queue_ids()
    assert running, "the job is sampling, so ComfyUI must report it running"

    cancelled_at = time.monotonic()
    standin.cancel(job_id)
    emptied_in = comfyui.wait_queue_empty(timeout_s=30)
    assert time.monotonic() - cancelled_at < 8, f"ComfyUI's queue emptied {emptied_in:.1f} s after the cancel"
    deadline = time.monotonic() + 10
    while "Processing interrupted" not in comfyui.log_text()[since:]:
        assert time.monotonic() < deadline, "ComfyUI's log does not say 'Processing interrupted'"
        time.sleep(0.1)
    assert "cancelled; interrupting ComfyUI" in worker.log()
    time.sleep(1)
    assert job_id not in standin.results, f"a cancelled job posts no result: {standin.results[job_id]}"
    assert standin.progress.get(job_id), "the job sent progress updates while it ran"

    next_id = standin.submit(job(seed=11))
    result = standin.wait_result(next_id, timeout_s=JOB_S)
    assert "error" not in result, result
    check_video(result["output"], frames=9)
    left = set(comfyui.http.get(f"{comfyui.url}/history", timeout=10).json()) - history_before
    assert not left, f"the cancelled job's or the next job's prompt stayed in ComfyUI's history: {left}"


def test_a_job_s3config_puts_its_video_in_that_bucket(
    production_worker: tuple[RunpodStandin, ProductionWorker], s3_endpoint: str
) -> None:
    """RunPod hands a job's ``s3Config`` to the worker beside ``input``, in production only (the local API
    drops it): ``auto`` output then means a URL in that bucket, and its secret is nowhere to be seen."""
    standin, worker = production_worker
    secret = "per-request-secret-7f3a"
    s3_config = {"accessId": "k", "accessSecret": secret, "bucketName": "videos", "endpointUrl": s3_endpoint}
    job_id = standin.submit({**job(seed=12), "output": "auto"}, s3Config=s3_config)
    posted = standin.wait_result(job_id, timeout_s=JOB_S)
    out = posted["output"]
    assert "error" not in posted and "video" not in out, posted
    assert out["video_url"].startswith(s3_endpoint), out
    assert out["bucket_key"].endswith(".mp4"), out
    video = requests.get(out["video_url"], timeout=10).content
    check_video({**out, "video": base64.b64encode(video).decode()}, frames=9)
    assert secret not in json.dumps(posted) + worker.log()


# --------------------------------------------------------------------------------------------- workflow jobs
IMAGE_GRAPH = {
    "load": {"class_type": "LoadImage", "inputs": {"image": "wf_input.png"}},
    "invert": {"class_type": "ImageInvert", "inputs": {"image": ["load", 0]}},
    "save": {
        "class_type": "SaveImage",
        "inputs": {"images": ["invert", 0], "filename_prefix": "wf/inverted"},
    },
}


def workflow_job(graph: dict[str, Any] = IMAGE_GRAPH, **fields: Any) -> dict[str, Any]:
    """A job as worker-comfyui's clients send it: an API-format graph, and the image its LoadImage names."""
    images = [{"name": "wf_input.png", "image": START}]
    return {"workflow": graph, "images": images, "output": "base64", **fields}


def decoded_frames(video_b64: str) -> list[Any]:
    import base64
    import io

    import av

    with av.open(io.BytesIO(base64.b64decode(video_b64))) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def test_a_worker_comfyui_style_image_graph_returns_the_png(local_api: LocalApi) -> None:
    import base64
    import io

    from PIL import Image

    body = local_api.runsync(workflow_job(), timeout=JOB_S)
    assert body["status"] == "COMPLETED", body
    [out] = body["output"]["outputs"]
    assert (out["node_id"], out["mime_type"]) == ("save", "image/png") and "video" not in body["output"]
    with Image.open(io.BytesIO(base64.b64decode(out["data"]))) as png:
        assert png.format == "PNG" and png.size == (128, 128)
        pixel = png.convert("RGB").getpixel((0, 0))
        assert isinstance(pixel, tuple), pixel
        # 1 - x in floats, then 8 bits again: within one level of 255 - (200, 60, 30)
        assert all(abs(a - b) <= 1 for a, b in zip(pixel, (55, 195, 225), strict=True)), pixel


def test_the_exported_built_in_graph_makes_the_built_in_frames(
    local_api: LocalApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from worker.__main__ import main

    built_in = job(seed=31)
    body = local_api.runsync(built_in, timeout=FIRST_JOB_S)
    assert body["status"] == "COMPLETED", body
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"input": built_in}))
    assert main(["graph", str(path)]) == 0
    exported = json.loads(capsys.readouterr().out)
    images = [{"name": "start.png", "image": START}]
    again = local_api.runsync({"workflow": exported, "images": images, "output": "base64"}, timeout=JOB_S)
    assert again["status"] == "COMPLETED", again
    out = again["output"]
    assert out["outputs"][0]["node_id"] == "save_video" and out["mime_type"] == "video/mp4"
    reference, frames = decoded_frames(body["output"]["video"]), decoded_frames(out["video"])
    assert len(frames) == len(reference) == 9
    assert all((a == b).all() for a, b in zip(frames, reference, strict=True)), "the frames differ"


HOSTILE_WORKFLOWS: dict[str, tuple[dict[str, Any], str]] = {
    "unknown_class": (
        workflow_job({**IMAGE_GRAPH, "odd": {"class_type": "NoSuchNode", "inputs": {"image": ["load", 0]}}}),
        "node 'odd' has the class 'NoSuchNode'",
    ),
    "no_output": (
        workflow_job({k: v for k, v in IMAGE_GRAPH.items() if k != "save"}),
        "the graph has no output node",
    ),
    "huge": (
        workflow_job(
            {str(i): {"class_type": "ImageInvert", "inputs": {"image": ["load", 0]}} for i in range(5000)}
        ),
        "must have 1 to 1000 nodes, got 5000",
    ),
    "path_trick": (
        {**workflow_job(), "images": [{"name": "../../escape.png", "image": START}]},
        "images[0].name: must be a file name",
    ),
}


@pytest.mark.parametrize("case", HOSTILE_WORKFLOWS)
def test_a_hostile_workflow_gets_a_clear_error_and_the_next_job_runs(
    comfyui: RealComfyUI, local_api: LocalApi, case: str
) -> None:
    request, words = HOSTILE_WORKFLOWS[case]
    body = local_api.runsync(request, timeout=JOB_S)
    assert body["status"] == "FAILED" and words in body.get("error", ""), body
    assert not list(comfyui.input_dir.parent.rglob("escape.png")), "a file escaped ComfyUI's input folder"
    after = local_api.runsync(workflow_job(), timeout=JOB_S)
    assert after["status"] == "COMPLETED", after


# --------------------------------------------------------------------------------------------- video extension
GIVEN_MP4 = make_mp4(17, (128, 128), 16)


def extension(**fields: Any) -> dict[str, Any]:
    """A job extending GIVEN_MP4: no start image and no size (they come from the video)."""
    base = {k: v for k, v in job(**fields).items() if k not in ("image_base64", "width", "height")}
    return {"extend_video_base64": base64.b64encode(GIVEN_MP4).decode(), "extend_frames": 5, **base}


@pytest.mark.parametrize("mode", ["i2v", "flf2v"])
def test_extension_graphs_are_accepted(comfyui: RealComfyUI, mode: str) -> None:
    fields = extension(return_last_frame=True, **({"end_image_base64": END} if mode == "flf2v" else {}))
    names = {role.name: validation_name(role.name) for role in roles.ROLES}
    images = graph.Images(
        start=None,
        end=comfyui.upload_image(END_PNG, "validate_end.png") if mode == "flf2v" else None,
        video=comfyui.upload_image(GIVEN_MP4, "validate_given.mp4"),
    )
    template = graph.load_template(REPO / "workflows", mode)
    job_input = parse_job_input(fields)
    job_input.width = job_input.height = 128
    prompt = graph.bind(
        template, job_input, graph.ModelFiles(**names), images, filename_prefix="validate/ext"
    )
    assert {"given_video", "joined", "given_last", graph.LAST_FRAME} <= set(prompt)
    status, body = comfyui.post_prompt(prompt)
    assert status == 200 and body.get("node_errors") == {}, describe_refusal(body)
    comfyui.wait_queue_empty(timeout_s=300)


def frame_reds(data: bytes) -> list[float]:
    with av.open(io.BytesIO(data)) as container:
        return [float(f.to_ndarray(format="rgb24")[..., 0].mean()) for f in container.decode(video=0)]


def test_extending_17_frames_by_9_with_5_shared_gives_21(local_api: LocalApi) -> None:
    body = local_api.runsync(extension(length=9, seed=16, return_last_frame=True), timeout=JOB_S)
    assert body["status"] == "COMPLETED", body
    out = body["output"]
    check_video(out, frames=21)
    assert out["frames"] == {"given": 17, "new": 4, "delivered": 21}
    assert (out["width"], out["height"], out["fps"]) == (128, 128, 16.0)
    given, delivered = frame_reds(GIVEN_MP4), frame_reds(base64.b64decode(out["video"]))
    assert all(abs(a - b) < 4 for a, b in zip(given, delivered[:17], strict=True)), (given, delivered)
    last = Image.open(io.BytesIO(base64.b64decode(out["last_frame"])))
    assert (last.format, last.size) == ("PNG", (128, 128))
    print(f"extension 17 + 9 - 5 frames: {out['timings']}")


def test_an_extension_longer_than_one_window(local_api: LocalApi) -> None:
    body = local_api.runsync(extension(length=85, seed=17), timeout=JOB_S)
    assert body["status"] == "COMPLETED", body
    check_video(body["output"], frames=97)
    print(f"extension 17 + 85 - 5 frames: {body['output']['timings']}")


@pytest.mark.timeout(20 * JOB_S)
def test_twenty_jobs_in_a_row(local_api: LocalApi) -> None:
    seconds = []
    for index in range(20):
        started = time.monotonic()
        body = local_api.runsync(job(steps=2, seed=100 + index), timeout=JOB_S)
        seconds.append(round(time.monotonic() - started, 1))
        assert body["status"] == "COMPLETED", f"job {index + 1} of 20: {body}"
        check_video(body["output"], frames=9)
    print(f"twenty jobs: {seconds} s")


# --------------------------------------------------------------------------------------------- an installed worker
def test_a_non_editable_install_runs_a_real_job(installed_worker: Installed, installed_api: LocalApi) -> None:
    """``pip install .`` (a wheel, not editable) in a fresh virtualenv, run from outside the checkout: the
    install's own copy of the worker binds its own workflows, and the real ComfyUI runs the job to an MP4."""
    site = installed_worker.site_packages()
    worker_cwd = installed_api.log_path.parent
    assert installed_worker.worker_file(worker_cwd) == site / "worker" / "__init__.py", (
        "the install's copy runs"
    )
    body = installed_api.runsync(job(seed=21), timeout=JOB_S)
    assert body["status"] == "COMPLETED", body
    check_video(body["output"], frames=9)


# --------------------------------------------------------------------------------------------- the GPU benchmark
def test_the_gpu_benchmark_runs_tiny_against_this_comfyui(comfyui: RealComfyUI, tmp_path: Path) -> None:
    """``bench/gpu.py --tiny`` keeps working: this ComfyUI as its one configuration, the benchmark's four jobs
    run through the worker's handler, its full-size layout checked, and the table printed with a row of numbers
    per job. On CPU there is no GPU memory to report and no second configuration to compare with."""
    import json
    import subprocess
    import sys

    results = tmp_path / "gpu.json"
    options = {"--comfy-url": comfyui.url, "--volume": str(comfyui.volume), "--label": "sdpa"}
    options |= {"--prompt": PROMPT, "--json": str(results)}
    command = [sys.executable, str(REPO / "bench" / "gpu.py"), "--tiny", *itertools.chain(*options.items())]
    done = subprocess.run(
        command, env=comfyui.worker_env(), capture_output=True, text=True, timeout=2 * JOB_S, check=False
    )
    out = done.stdout
    assert done.returncode == 0, f"exit {done.returncode}\n{out}\n{done.stderr[-4000:]}"
    assert "high_model: 14,294,742,832 bytes, published 14,294,742,832 (equal)" in out, out
    assert "ComfyUI detects WAN21_T2V: dim 5120, 40 blocks, in_dim 36, 406 fp8 layers" in out, out
    assert "128x128x9: 3 x 8 x 8 = 192 tokens, 2 blocks, dim 128, ffn 256, text 512 tokens" in out, out
    n = r"\d+(?:\.\d+)?(?:e[-+]\d+)?"
    # load, high and low s/step, swap, decode, interpolation, total, GPU memory (none on CPU), x floor, PSNR
    for job, video, interp in (
        ("i2v", "128x128x9", "n/a"),
        ("i2v-720p", "224x128x9", "n/a"),
        ("flf2v", "128x128x9", "n/a"),
        ("interpolate", "128x128x9", n),
    ):
        cells = [job, video, n, n, n, n, n, interp, n, "n/a", n, "ref"]
        assert re.search(rf"^sdpa +{' +'.join(cells)}$", out, flags=re.MULTILINE), f"no row for {job}:\n{out}"
    rows = {row["job"]: row for row in json.loads(results.read_text())["rows"]}
    assert {job: row["frames"] for job, row in rows.items()} == {
        "i2v": 9,
        "i2v-720p": 9,
        "flf2v": 9,
        "interpolate": 17,
    }
    assert all(row["high s/step"] > 0 and row["low s/step"] > 0 for row in rows.values()), rows


# --------------------------------------------------------------------------------------------- the soak (last)
SOAK_JOBS = 30


@pytest.mark.timeout(3600)
def test_a_short_soak_loses_no_job_and_leaks_nothing(comfyui: RealComfyUI, tmp_path: Path) -> None:
    """``bench/soak.py`` with 30 jobs of every kind in production mode: cancels, bad inputs, ComfyUI errors and
    one ComfyUI crash (after which ComfyUI and the worker start again). Last: it kills the tier's ComfyUI, and
    leaves it started again on the same port."""
    from bench import soak

    report = soak.run(comfyui, SOAK_JOBS, tmp_path)
    print(report.table())
    total = report.total()
    assert not report.problems, report.table()
    assert (total.jobs, total.lost, total.wrong) == (SOAK_JOBS, 0, 0), report.table()
    kinds = soak.schedule(SOAK_JOBS)
    failing = ("bad_input", "comfy_error", "cancel", "kill")
    assert total.expected == sum(kind in failing for kind in kinds), report.table()
    assert total.done == sum(kind in soak.NORMAL_KINDS for kind in kinds), report.table()
    assert set(kinds) == set(soak.KINDS), "the short soak has a job of every kind"
    assert not report.not_flat(), report.table()
    assert comfyui.alive()
