"""Workflow jobs (the user's own ComfyUI graph) in-process against the emulator: results, bounds, hostile
graphs, progress, cancel, the size cap, ALLOW_WORKFLOW, the ``graph`` command."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.emulator import Emulator
from tests.models.fileserver import FileServer, model_bytes
from tests.support.images import data_uri, image_bytes
from tests.support.settings import settings_for
from tests.support.video import probe_b64
from worker import passthrough
from worker.__main__ import main
from worker.comfy import validation_error
from worker.config import Settings
from worker.deliver import JobResult
from worker.handler import handle_job

from .test_handler import cancel_while_running

PNG = image_bytes("PNG", (32, 16), (200, 60, 30))
MP4 = b"\x00\x00\x00\x18ftypisom" + bytes(64)
IMAGE_GRAPH = {
    "load": {"class_type": "LoadImage", "inputs": {"image": "input.png"}},
    "invert": {"class_type": "ImageInvert", "inputs": {"image": ["load", 0]}},
    "save": {"class_type": "SaveImage", "inputs": {"images": ["invert", 0], "filename_prefix": "inverted"}},
}


def job(**fields: Any) -> dict[str, Any]:
    """A worker-comfyui style job: the image-only graph, and its image."""
    base = {"workflow": IMAGE_GRAPH, "images": [{"name": "input.png", "image": data_uri(PNG)}]}
    return {"id": "wf-1", "input": {**base, **fields}}


def run(job_: dict[str, Any], settings: Settings, **kw: Any) -> dict[str, Any]:
    return asyncio.run(handle_job(job_, settings, **kw))


def files_in(folder: str) -> list[Path]:
    return [p for p in Path(folder).rglob("*") if p.is_file()]


def test_an_image_graph_returns_its_png_and_leaves_nothing_behind(
    emulator: Emulator, settings: Settings
) -> None:
    result = run(job(output="base64"), settings)
    assert "error" not in result, result
    [out] = result["outputs"]
    assert (out["node_id"], out["mime_type"]) == ("save", "image/png")
    assert out["filename"].startswith("inverted_") and out["filename"].endswith("_.png")
    png = base64.b64decode(out["data"])
    assert out["size_bytes"] == result["size_bytes"] == len(png)
    with Image.open(io.BytesIO(png)) as img:
        assert img.size == (32, 16) and img.convert("RGB").getpixel((0, 0)) == (55, 195, 225)
    assert "video" not in result and "video_url" not in result
    assert files_in(emulator.input_dir) == [] and files_in(emulator.output_dir) == []
    state = emulator.state()
    assert state["prompt_ids"][-1] in state["history_deletes"]


def test_the_same_graph_twice_gets_its_file_both_times(emulator: Emulator, settings: Settings) -> None:
    """ComfyUI's cache reports an unchanged saver's earlier file, which the first job's cleanup deleted."""
    first, second = run(job(), settings), run(job(), settings)
    assert "error" not in first and "error" not in second, second
    assert first["outputs"][0]["data"] == second["outputs"][0]["data"]


def export(tmp_path: Path, built_in: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"input": built_in}))
    assert main(["graph", str(path)]) == 0
    exported: dict[str, Any] = json.loads(capsys.readouterr().out)
    return exported


def test_an_exported_built_in_graph_makes_the_built_in_video_with_progress(
    emulator: Emulator, settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    start = data_uri(image_bytes("PNG", (64, 96)))
    built_in = {"prompt": "p", "image_base64": start, "width": 128, "height": 128, "length": 9, "seed": 5}
    graph = export(tmp_path, built_in, capsys)
    assert graph["start_image"]["inputs"]["image"] == "start.png"
    assert graph["sampler_high"]["inputs"]["noise_seed"] == 5
    updates: list[dict[str, Any]] = []
    progress = settings.model_copy(update={"progress_updates": True})
    images = [{"name": "start.png", "image": start}]
    emulator.configure(step_delay=0.4)
    result = run(job(workflow=graph, images=images), progress, sender=lambda _, u: updates.append(u))
    assert "error" not in result, result
    reference = run({"id": "b", "input": {**built_in, "output": "base64"}}, settings)
    [out] = result["outputs"]
    assert out["node_id"] == "save_video" and out["mime_type"] == result["mime_type"] == "video/mp4"
    assert result["video"] == out["data"]
    assert base64.b64decode(result["video"])[-4096:] == base64.b64decode(reference["video"])[-4096:]
    assert probe_b64(result["video"]).frames == 9
    steps = [(u["step"], u["steps"]) for u in updates if u["stage"] == "sampling" and "step" in u]
    assert steps and all(0 < step <= total == 2 for step, total in steps), updates


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        (
            {"prompt": "a fox", "width": 480},
            "width",
            "unknown field 'width'; allowed fields are: workflow, images, models, output",
        ),
        ({"workflow": {}}, "workflow", "1 to 1000 nodes"),
        (
            {"workflow": {str(i): {"class_type": "X", "inputs": {}} for i in range(1001)}},
            "workflow",
            "got 1001",
        ),
        ({"workflow": {"1": {"class_type": "X", "inputs": {"t": "x" * 3_000_000}}}}, "workflow", "as JSON"),
        ({"workflow": {"1": {"inputs": {}}}}, "workflow", "node '1' must be an object with class_type"),
        ({"workflow": {"1": ["LoadImage"]}}, "workflow", "node '1' must be an object"),
        ({"images": [{"name": "../../etc/x.png", "image": "AAAA"}]}, "images[0].name", "no folders"),
        ({"images": [{"name": "/abs.png", "image": "AAAA"}]}, "images[0].name", "file name"),
        ({"images": [{"name": ".hidden.png", "image": "AAAA"}]}, "images[0].name", "leading '.'"),
        ({"images": [{"name": "a\\b.png", "image": "AAAA"}]}, "images[0].name", "file name"),
        ({"images": [{"name": "a\x00.png", "image": "AAAA"}]}, "images[0].name", "control characters"),
        ({"images": [{"name": "a.png", "image": "AAAA", "type": "x"}]}, "images[0].type", "name, image"),
        (
            {"models": [{"url": "https://huggingface.co/a/b.safetensors", "folder": "checkpoints"}]},
            "models[0].folder",
            "diffusion_models",
        ),
        ({"models": [{"url": "ftp://host/a.safetensors", "folder": "loras"}]}, "models[0].url", "http"),
    ],
)
def test_bad_workflow_input_is_refused_by_field(
    emulator: Emulator, settings: Settings, fields: dict[str, Any], field: str, words: str
) -> None:
    before = len(emulator.state()["prompt_ids"])
    result = run(job(**fields), settings)
    assert result["error_code"] == "invalid_input", result
    assert any(d["field"] == field and words in d["message"] for d in result["details"]), result
    assert len(emulator.state()["prompt_ids"]) == before, "nothing reaches ComfyUI"


def test_a_model_url_the_policy_refuses_is_refused_before_any_work(settings: Settings) -> None:
    models = [{"url": "https://example.com/x.safetensors", "folder": "loras"}]
    result = run(job(models=models), settings)
    assert result["error_code"] == "url_not_allowed" and "models[0].url" in result["error"], result


@pytest.mark.parametrize(
    ("graph", "words"),
    [
        (
            {**IMAGE_GRAPH, "odd": {"class_type": "NoSuchNode", "inputs": {}}},
            "node 'odd' has the class 'NoSuchNode'",
        ),
        ({k: v for k, v in IMAGE_GRAPH.items() if k != "save"}, "no output node"),
    ],
)
def test_a_hostile_graph_gets_a_clear_error_and_the_next_job_runs(
    emulator: Emulator, settings: Settings, graph: dict[str, Any], words: str
) -> None:
    result = run(job(workflow=graph), settings)
    assert result["error_code"] == "comfyui_validation" and words in result["error"], result
    assert files_in(emulator.input_dir) == [], "the upload is removed"
    assert "error" not in run(job(), settings)


def test_a_node_failure_names_node_and_class(emulator: Emulator, settings: Settings) -> None:
    emulator.reset()  # an earlier job's inverted image is cached: the node would not run
    emulator.set_faults(exec_error_node="invert", exec_error_message="bad pixels")
    result = run(job(), settings)
    assert result["error_code"] == "comfyui_execution", result
    assert "'invert' (ImageInvert)" in result["error"] and "bad pixels" in result["error"]


def test_previews_alone_are_no_output(emulator: Emulator, settings: Settings) -> None:
    emulator.set_faults(no_output=True)
    result = run(job(), settings)
    assert result["error_code"] == "no_output" and "saved no file" in result["error"], result


def test_the_inline_cap_applies_to_the_whole_result(emulator: Emulator, settings: Settings) -> None:
    graph = {
        **IMAGE_GRAPH,
        "save2": {"class_type": "SaveImage", "inputs": {"images": ["load", 0], "filename_prefix": "b"}},
    }
    one = run(job(), settings)["outputs"][0]["size_bytes"]
    cap = settings.model_copy(update={"inline_output_max_mb": 1.5 * one * 4 / 3 / 2**20})
    assert "error" not in run(job(), cap), "one file fits"
    result = run(job(workflow=graph), cap)
    assert result["error_code"] == "output_too_large" and "INLINE_OUTPUT_MAX_MB" in result["error"], result


def test_outputs_go_to_the_bucket(emulator: Emulator, tmp_path: Path, s3_endpoint: str) -> None:
    env = {"BUCKET_ENDPOINT_URL": s3_endpoint, "BUCKET_ACCESS_KEY_ID": "k", "BUCKET_SECRET_ACCESS_KEY": "s"}
    settings = settings_for(emulator.url, tmp_path, BUCKET_NAME="videos", ALLOW_PRIVATE_URLS="true", **env)
    result = run(job(), settings)
    [out] = result["outputs"]
    assert "data" not in out and out["url"].startswith(s3_endpoint), result
    import requests

    assert requests.get(out["url"], timeout=10).content[:8] == b"\x89PNG\r\n\x1a\n"


def test_cancel_interrupts_comfyui(emulator: Emulator, settings: Settings) -> None:
    emulator.set_faults(hang=True)
    before = emulator.state()["interrupts"]
    cancel_while_running(settings, emulator, job())
    assert emulator.state()["interrupts"] > before
    assert files_in(emulator.input_dir) == []


def test_the_job_deadline_applies(emulator: Emulator, settings: Settings) -> None:
    emulator.set_faults(hang=True)
    result = run(job(), settings.model_copy(update={"job_timeout_s": 1.0}))
    assert result["error_code"] == "timeout", result


def test_allow_workflow_false_refuses_workflows(settings: Settings) -> None:
    result = run(job(), settings.model_copy(update={"allow_workflow": False}))
    assert result["error_code"] == "invalid_input" and "ALLOW_WORKFLOW" in result["error"], result


def test_a_video_entry_is_taken_by_content_and_an_image_is_checked(settings: Settings) -> None:
    assert passthrough.load_file(data_uri(MP4, "video/mp4"), 0, settings) == (MP4, "video/mp4")
    webm = b"\x1a\x45\xdf\xa3" + bytes(32)
    assert passthrough.load_file(base64.b64encode(webm).decode(), 0, settings) == (webm, "video/webm")
    assert passthrough.load_file(data_uri(PNG), 0, settings) == (PNG, "image/png")
    with pytest.raises(Exception, match=r"images\[1\].image is not a PNG, JPEG or WebP"):
        passthrough.load_file(base64.b64encode(b"plain text, not a picture").decode(), 1, settings)


def test_comfyuis_unknown_class_error_names_node_and_class() -> None:
    trace = Path(__file__).resolve().parents[1] / "fixtures" / "traces" / "validation_failures.json"
    body = json.loads(trace.read_text())["unknown_class"]["body"]
    err = validation_error(body)
    assert "node 'decode' has the class 'NoSuchNode'" in err.message, err.message
    assert err.details[0] | {"node_id": "decode", "class_type": "NoSuchNode"} == err.details[0]


def test_the_result_repr_shows_no_file_data() -> None:
    result = JobResult({"outputs": [{"node_id": "9", "data": "QUFB" * 1000}], "video": "QUFB" * 1000})
    assert "QUFB" not in repr(result) and "<4000 base64 characters>" in repr(result)


def test_the_graph_command_refuses_a_bad_job(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"input": {"prompt": "p"}}))
    assert main(["graph", str(path)]) == 2
    assert "image_url" in capsys.readouterr().err
    assert main(["graph", str(tmp_path / "missing.json")]) == 2


def test_the_workflow_docs_are_generated_from_the_contract() -> None:
    from worker.inputdoc import input_tables, readme_section
    from worker.schema import input_json_schema

    repo = Path(__file__).resolve().parents[2]
    readme = (repo / "README.md").read_text(encoding="utf-8")
    assert readme_section(readme, workflow=True) == input_tables(workflow=True), (
        "regenerate the README's workflow tables: python -m worker schema --workflow --markdown"
    )
    published = json.loads((repo / "docs" / "workflow_input.schema.json").read_text(encoding="utf-8"))
    assert published == input_json_schema(workflow=True), (
        "regenerate it: python -m worker schema --workflow > docs/workflow_input.schema.json"
    )


def test_models_are_fetched_into_the_volume_and_images_by_url(emulator: Emulator, settings: Settings) -> None:
    """A LoRA the graph loads is downloaded through the guarded path first; the image comes by URL."""
    env = {"ALLOW_HTTP_MODEL_URLS": "true", "ALLOW_PRIVATE_URLS": "true", "ALLOWED_MODEL_HOSTS": "127.0.0.1"}
    local = settings_for(emulator.url, settings.volume_root, COMFY_INPUT_DIR=emulator.input_dir, **env)
    loras = settings.volume_root / "loras"
    emulator.configure(model_dirs={"loras": [str(loras)]})
    graph = {
        **IMAGE_GRAPH,
        "unet": {
            "class_type": "UNETLoader",
            "inputs": {
                "unet_name": "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors",
                "weight_dtype": "default",
            },
        },
        "lora": {
            "class_type": "LoraLoaderModelOnly",
            "inputs": {"model": ["unet", 0], "lora_name": "mine.safetensors", "strength_model": 1.0},
        },
    }
    try:
        with FileServer() as server:
            model = server.add("/style.safetensors", model_bytes(4096))
            image = server.add("/input.png", PNG)
            bad = server.add("/bad.safetensors", b"<html>sign in first</html>")
            models = [{"url": model, "folder": "loras", "name": "mine.safetensors"}]
            images = [{"name": "input.png", "image": image}]
            result = run(job(workflow=graph, models=models, images=images), local)
            refused = run(job(models=[{"url": bad, "folder": "vae"}]), local)
    finally:
        emulator.configure(model_dirs={})
    assert "error" not in result, result
    assert (loras / "mine.safetensors").read_bytes() == model_bytes(4096)
    assert refused["error_code"] == "model_download_failed" and "models[0].url" in refused["error"], refused
    assert not (settings.volume_root / "vae" / "bad.safetensors").exists()
