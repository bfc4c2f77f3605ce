"""The worker's main path, end to end: runpod's local API -> handler -> ComfyUI emulator -> MP4."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.emulator import Emulator
from tests.support.images import data_uri, image_bytes
from tests.support.video import probe_b64
from tests.support.worker_proc import REPO, LocalApi, worker_env
from worker.config import Settings
from worker.handler import handle_job

pytestmark = pytest.mark.e2e

START = data_uri(image_bytes("PNG", (120, 208), (220, 120, 40)))
END = data_uri(image_bytes("JPEG", (120, 208), (30, 60, 200)), "image/jpeg")


def job(**fields: Any) -> dict[str, Any]:
    return {
        "prompt": "a fox running through snow",
        "image_base64": START,
        "width": 256,
        "height": 448,
        "length": 17,
        **fields,
    }


def last_graph(emulator: Emulator) -> dict[str, Any]:
    graph: dict[str, Any] = emulator.state()["prompts"][-1]
    return graph


def test_readme_example_runsync_i2v(api: LocalApi, emulator: Emulator) -> None:
    test_input = json.loads((REPO / "test_input.json").read_text())
    body = api.runsync(test_input["input"])
    assert body["status"] == "COMPLETED", body
    out = body["output"]
    info = probe_b64(out["video"])
    assert (info.frames, info.width, info.height, info.fps) == (33, 480, 832, 16)
    assert out["mode"] == "i2v" and out["seed"] == 42 and out["mime_type"] == "video/mp4"
    assert (out["width"], out["height"], out["length"], out["fps"], out["steps"]) == (480, 832, 33, 16.0, 4)
    assert set(out["timings"]) >= {"inputs", "models", "upload", "sampling", "deliver", "total"}
    assert last_graph(emulator)["conditioning"]["class_type"] == "WanImageToVideo"


def test_flf2v_through_run_and_status(api: LocalApi, emulator: Emulator) -> None:
    body = api.run_and_status(job(end_image_base64=END, fps=24))
    assert body["status"] == "COMPLETED", body
    out = body["output"]
    info = probe_b64(out["video"])
    assert (info.frames, info.width, info.height, info.fps) == (17, 256, 448, 24)
    assert out["mode"] == "flf2v"
    graph = last_graph(emulator)
    assert graph["conditioning"]["class_type"] == "WanFirstLastFrameToVideo"
    assert graph["end_image"]["inputs"]["image"] != graph["start_image"]["inputs"]["image"]


def test_rounding_is_reported(api: LocalApi) -> None:
    body = api.runsync(job(width=250, length=18))
    out = body["output"]
    assert (out["width"], out["length"]) == (256, 17)
    assert {a["field"] for a in out["adjustments"]} == {"width", "length"}
    info = probe_b64(out["video"])
    assert (info.frames, info.width) == (17, 256)


def test_lora_pairs_are_chained(api: LocalApi, emulator: Emulator) -> None:
    pairs = [
        {
            "high": "style_high.safetensors",
            "low": "style_low.safetensors",
            "high_weight": 0.7,
            "low_weight": 0.5,
        },
        {"high": "motion_high.safetensors"},
    ]
    body = api.runsync(job(lora_pairs=pairs))
    assert body["status"] == "COMPLETED", body
    graph = last_graph(emulator)
    assert graph["lora_high_1"]["inputs"]["lora_name"] == "style_high.safetensors"
    assert graph["lora_high_1"]["inputs"]["strength_model"] == 0.7
    assert graph["lora_low_1"]["inputs"]["strength_model"] == 0.5
    assert graph["lora_high_2"]["inputs"]["model"] == ["lora_high_1", 0]
    assert graph["shift_high"]["inputs"]["model"] == ["lora_high_2", 0]
    assert graph["shift_low"]["inputs"]["model"] == ["lora_low_1", 0]


def test_long_video_uses_context_windows(api: LocalApi, emulator: Emulator) -> None:
    body = api.runsync(job(width=128, height=128, length=161, context_overlap=16))
    assert body["status"] == "COMPLETED", body
    assert probe_b64(body["output"]["video"]).frames == 161
    graph = last_graph(emulator)
    assert graph["context_high"]["inputs"]["context_overlap"] == 16
    assert graph["sampler_low"]["inputs"]["model"] == ["context_low", 0]


def test_lightning_off(api: LocalApi, emulator: Emulator) -> None:
    body = api.runsync(job(lightning=False))
    assert body["status"] == "COMPLETED", body
    assert (body["output"]["steps"], body["output"]["cfg"]) == (20, 3.5)
    graph = last_graph(emulator)
    assert "lightning_high" not in graph and "lightning_low" not in graph
    assert graph["sampler_high"]["inputs"]["end_at_step"] == 10


def test_bad_input_is_a_clear_error_and_the_worker_stays_up(api: LocalApi) -> None:
    before = len(api.runsync(job())["output"]["video"]) > 0
    body = api.runsync({"prompt": "x", "image_base64": START, "width": 100000, "colour": "red"})
    assert body["status"] == "FAILED"
    assert body["error"].startswith("invalid_input: ")
    assert "width" in body["error"] and "colour" in body["error"]
    assert before and api.runsync(job())["status"] == "COMPLETED"


def test_missing_model_names_the_file_and_folder(api: LocalApi, emulator: Emulator) -> None:
    prompts_before = len(emulator.state()["prompts"])
    body = api.runsync(job(lora_pairs=[{"high": "absent_high.safetensors"}]))
    assert body["status"] == "FAILED"
    assert body["error"].startswith("model_missing: ")
    assert "absent_high.safetensors" in body["error"] and "loras/" in body["error"]
    assert len(emulator.state()["prompts"]) == prompts_before, "nothing may be queued"


def test_execution_error_names_the_node(api: LocalApi, emulator: Emulator) -> None:
    emulator.set_faults(exec_error_node="sampler_low")
    body = api.runsync(job())
    assert body["status"] == "FAILED"
    assert body["error"].startswith("comfyui_execution: ")
    assert "'sampler_low'" in body["error"] and "KSamplerAdvanced" in body["error"]
    emulator.set_faults()
    assert api.runsync(job())["status"] == "COMPLETED"


@pytest.mark.parametrize(
    ("node", "change", "fragment"),
    [
        ("sampler_high", {"sampler_name": "no_such_sampler"}, "sampler_name"),
        ("decode", {"samples": ["no_such_node", 0]}, "decode"),
        ("video", {"images": ["vae", 0]}, "video"),
        ("positive", {"clip": None}, "clip"),
        ("extra", {"__new__": "NoSuchNode"}, "NoSuchNode"),
    ],
)
def test_a_wrong_graph_is_refused_by_comfyui_with_the_node_named(
    emulator: Emulator, tmp_path: Path, node: str, change: dict[str, Any], fragment: str
) -> None:
    workflows = tmp_path / "workflows"
    shutil.copytree(REPO / "workflows", workflows)
    for name in ("wan22_i2v.json", "wan22_flf2v.json"):
        path = workflows / name
        graph = json.loads(path.read_text())
        for key, value in change.items():
            if key == "__new__":
                graph[node] = {"class_type": value, "inputs": {"x": ["vae", 0]}}
            elif value is None:
                del graph[node]["inputs"][key]
            else:
                graph[node]["inputs"][key] = value
        path.write_text(json.dumps(graph))
    settings = Settings.from_env(worker_env(emulator.url, tmp_path, WORKFLOWS_DIR=str(workflows)))
    result = asyncio.run(handle_job({"id": "wrong-graph", "input": job()}, settings))
    assert result["error_code"] == "comfyui_validation", result
    assert result["error"].startswith("comfyui_validation: ComfyUI refused the graph")
    assert node in result["error"] and fragment in result["error"]


def test_a_wrong_graph_through_the_local_test_run(emulator: Emulator, tmp_path: Path) -> None:
    """The same refusal seen as a user of `python -m worker` sees it: exit 1 and the node named in the log."""
    workflows = tmp_path / "workflows"
    shutil.copytree(REPO / "workflows", workflows)
    path = workflows / "wan22_i2v.json"
    graph = json.loads(path.read_text())
    graph["sampler_high"]["inputs"]["sampler_name"] = "no_such_sampler"
    path.write_text(json.dumps(graph))
    env = worker_env(emulator.url, tmp_path, WORKFLOWS_DIR=str(workflows))
    (tmp_path / "test_input.json").write_text(json.dumps({"input": job()}))
    done = subprocess.run(
        [sys.executable, "-m", "worker"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1, done.stdout + done.stderr
    log = done.stdout + done.stderr
    assert "comfyui_validation: ComfyUI refused the graph: node 'sampler_high' (KSamplerAdvanced)" in log


def test_local_test_run_exits_0_with_test_input_json(emulator: Emulator, tmp_path: Path) -> None:
    shutil.copy(REPO / "test_input.json", tmp_path / "test_input.json")
    done = subprocess.run(
        [sys.executable, "-m", "worker"],
        cwd=tmp_path,
        env=worker_env(emulator.url, tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "job local_test: done in" in done.stderr
    assert "data:image/png;base64,iVBOR" not in done.stdout + done.stderr, "payloads must not be logged"


def test_a_landscape_image_without_a_size_gives_a_landscape_video(api: LocalApi) -> None:
    landscape = data_uri(image_bytes("PNG", (640, 360), (40, 160, 90)))
    body = api.runsync({"prompt": "a slow pan", "image_base64": landscape, "length": 9})
    assert body["status"] == "COMPLETED", body
    out = body["output"]
    info = probe_b64(out["video"])
    assert (info.width, info.height, out["width"], out["height"]) == (848, 480, 848, 480)
    chosen = {a["field"]: a for a in out["adjustments"]}
    assert chosen["width"]["used"] == 848 and "640x360" in chosen["width"]["reason"]
    body = api.runsync({"prompt": "a slow pan", "image_base64": landscape, "length": 9, "resolution": "720p"})
    assert (body["output"]["width"], body["output"]["height"]) == (1280, 720)


def test_the_crf_reaches_save_video(api: LocalApi, emulator: Emulator) -> None:
    body = api.runsync(job(crf=30))
    assert body["status"] == "COMPLETED", body
    assert body["output"]["crf"] == 30
    inputs = last_graph(emulator)["save_video"]["inputs"]
    assert (inputs["codec"], inputs["codec.encoding"], inputs["codec.encoding.crf"]) == (
        "h264",
        "re-encode",
        30.0,
    )


def test_interpolation_doubles_the_frames_and_the_fps(api: LocalApi, emulator: Emulator) -> None:
    body = api.runsync(job(length=9, fps=16, interpolate=2))
    assert body["status"] == "COMPLETED", body
    out = body["output"]
    info = probe_b64(out["video"])
    assert (info.frames, info.fps) == (17, 32)
    assert (out["length"], out["fps"], out["output_length"], out["output_fps"]) == (9, 16.0, 17, 32.0)
    assert last_graph(emulator)["video"]["inputs"]["images"] == ["interpolate", 0]


def test_interpolation_with_flf2v_and_context_windows(api: LocalApi) -> None:
    body = api.runsync(job(width=128, height=128, length=85, end_image_base64=END, interpolate=2))
    assert body["status"] == "COMPLETED", body
    assert probe_b64(body["output"]["video"]).frames == 169
