"""Video extension and the last frame: the contract's rules, the MP4 index probe, the graph binding (pure), and
whole jobs through the handler against the emulator."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image
from pydantic import ValidationError

from tests.emulator import Emulator
from tests.support.httpserver import HttpServer, Route
from tests.support.images import data_uri, image_bytes
from tests.support.video import make_mp4, probe_b64
from worker import graph
from worker.config import Settings
from worker.deliver import JobResult
from worker.extend import probe_mp4
from worker.handler import handle_job
from worker.schema import describe_errors, parse_job_input

GIVEN = make_mp4(17, (160, 128), 24)
GIVEN_B64 = base64.b64encode(GIVEN).decode()
WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"


def fields(**extra: Any) -> dict[str, Any]:
    return {"prompt": "p", "extend_video_base64": GIVEN_B64, "length": 9, "extend_frames": 5, **extra}


def refused(data: dict[str, Any]) -> list[dict[str, str]]:
    with pytest.raises(ValidationError) as caught:
        parse_job_input(data)
    return describe_errors(caught.value)


# --------------------------------------------------------------------------------------------- the contract
@pytest.mark.parametrize(
    ("extra", "field", "words"),
    [
        ({"image_base64": "abc"}, "extend_video_base64", "no start image"),
        ({"extend_video_url": "https://example.com/a.mp4"}, "extend_video_url", "give one video"),
        ({"extend_frames": 4}, "extend_frames", "4n+1"),
        ({"extend_frames": 9}, "length", "more than 9"),
        ({"interpolate": 2}, "interpolate", "extending a video"),
    ],
)
def test_the_contract_refuses_what_an_extension_cannot_do(
    extra: dict[str, Any], field: str, words: str
) -> None:
    problems = refused(fields(**extra))
    assert [p["field"] for p in problems] == [field] and words in problems[0]["message"], problems


def test_extend_frames_needs_a_video_and_the_default_is_five() -> None:
    problems = refused({"prompt": "p", "image_base64": "abc", "extend_frames": 9})
    assert problems[0]["field"] == "extend_frames" and "needs a video" in problems[0]["message"]
    job = parse_job_input({"prompt": "p", "extend_video_path": "a.mp4"})
    assert job.extends and job.extend_frames == 5 and not job.return_last_frame


def test_an_end_image_combines_with_an_extension() -> None:
    assert parse_job_input(fields(end_image_base64="abc")).mode == "flf2v"


# --------------------------------------------------------------------------------------------- the probe
def test_the_mp4_index_gives_size_frames_and_fps() -> None:
    video = probe_mp4(GIVEN)
    assert (video.width, video.height, video.frames, video.fps) == (160, 128, 17, 24.0)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (image_bytes(), "not an MP4"),
        (GIVEN[: len(GIVEN) // 2], "cut short"),
        (GIVEN[:32], "no 'moov' box"),
        (make_mp4(3, codec="mpeg4"), "send H.264"),
    ],
    ids=["png", "truncated", "no-index", "mpeg4"],
)
def test_what_is_not_a_usable_mp4_is_named(data: bytes, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        probe_mp4(data)


# --------------------------------------------------------------------------------------------- the graph
def bind(mode: str = "i2v", **extra: Any) -> graph.Graph:
    job = parse_job_input(fields(**extra))
    job.width, job.height = 160, 120  # as the given video's size sets them
    files = graph.ModelFiles(
        high_model="h", low_model="l", text_encoder="t", vae="v", lightning_high="a", lightning_low="b"
    )
    if "clip_vision" in extra:
        files = files.replace(clip_vision="c.safetensors")
    images = graph.Images(start=None, end="end.png" if mode == "flf2v" else None, video="given.mp4")
    return graph.bind(graph.load_template(WORKFLOWS, mode), job, files, images, filename_prefix="video/x")


def test_the_last_frames_start_the_clip_and_the_new_frames_follow_the_video() -> None:
    g = bind()
    assert g["given_video"] == {
        "class_type": "LoadVideo",
        "inputs": {"file": "given.mp4"},
        "_meta": {"title": "Video to extend"},
    }
    assert g["given_frames"]["inputs"] == {"video": ["given_video", 0]}
    assert g["start_image"]["class_type"] == "ImageFromBatch"
    assert g["start_image"]["inputs"] == {"image": ["given_frames", 0], "batch_index": -5, "length": 5}
    assert g["conditioning"]["inputs"]["start_image"] == ["start_image", 0]
    assert (g["conditioning"]["inputs"]["width"], g["conditioning"]["inputs"]["height"]) == (160, 128)
    assert g["new_frames"]["inputs"] == {"image": ["decode", 0], "batch_index": 5, "length": 4}
    assert g["joined"]["class_type"] == "ImageBatch"
    assert g["joined"]["inputs"] == {"image1": ["given_frames", 0], "image2": ["new_frames", 0]}
    assert g["video"]["inputs"]["images"] == ["joined", 0]
    assert "last_frame" not in g and graph.LAST_FRAME not in g


def test_flf2v_and_clip_vision_take_an_extension() -> None:
    g = bind("flf2v", end_image_base64="abc", clip_vision="c.safetensors")
    assert g["conditioning"]["class_type"] == "WanFirstLastFrameToVideo"
    assert g["conditioning"]["inputs"]["start_image"] == ["start_image", 0]
    assert g["end_image"]["inputs"]["image"] == "end.png"
    assert g["clip_vision_start"]["inputs"]["image"] == ["given_last", 0]
    assert g["given_last"]["inputs"] == {"image": ["given_frames", 0], "batch_index": -1, "length": 1}


def test_the_last_frame_is_saved_from_what_the_video_shows() -> None:
    g = bind(return_last_frame=True)
    assert g["last_frame"]["inputs"] == {"image": ["joined", 0], "batch_index": -1, "length": 1}
    saver = g[graph.LAST_FRAME]
    assert saver["class_type"] == "SaveImage"
    assert saver["inputs"] == {"images": ["last_frame", 0], "filename_prefix": "video/x"}


def test_a_result_repr_hides_the_last_frame() -> None:
    shown = repr(JobResult({"video": "A" * 100, "last_frame": "B" * 50, "seed": 1}))
    assert "<50 base64 characters>" in shown and "BBBB" not in shown and "AAAA" not in shown


# --------------------------------------------------------------------------------------------- whole jobs
def run(settings: Settings, **extra: Any) -> dict[str, Any]:
    return asyncio.run(handle_job({"id": "job-1", "input": fields(**extra)}, settings))


def test_extending_17_frames_by_9_with_5_shared_delivers_21(emulator: Emulator, settings: Settings) -> None:
    result = run(settings, return_last_frame=True, output="base64")
    assert "error" not in result, result
    info = probe_b64(result["video"])
    assert (info.frames, info.width, info.height, float(info.fps)) == (21, 160, 128, 24.0), info
    assert result["frames"] == {"given": 17, "new": 4, "delivered": 21}
    assert (result["width"], result["height"], result["fps"], result["output_length"]) == (160, 128, 24.0, 21)
    assert result["adjustments"] == []
    prompt = emulator.state()["prompts"][-1]
    assert prompt["conditioning"]["inputs"]["width"] == 160 and prompt["video"]["inputs"]["fps"] == 24.0
    assert prompt["save_video"]["inputs"]["codec.encoding.crf"] == 19.0
    last = Image.open(io.BytesIO(base64.b64decode(result["last_frame"])))
    assert (last.format, last.size) == ("PNG", (160, 128))
    leftovers = [
        p for d in (emulator.input_dir, emulator.output_dir) for p in Path(d).rglob("*") if p.is_file()
    ]
    assert leftovers == [], "the uploaded video and the saved frame are removed after the job"


def test_a_video_by_url(emulator: Emulator, settings: Settings) -> None:
    with HttpServer() as server:
        server.routes["/clip.mp4"] = Route(body=GIVEN, headers={"Content-Type": "video/mp4"})
        allowed = settings.model_copy(update={"allow_private_urls": True})
        result = run(
            allowed, extend_video_base64=None, extend_video_url=server.url("/clip.mp4"), output="base64"
        )
        assert result.get("frames") == {"given": 17, "new": 4, "delivered": 21}, result
        assert run(settings, extend_video_base64=None, extend_video_url=server.url("/clip.mp4"))[
            "error_code"
        ] == ("url_not_allowed")


def test_a_different_size_or_fps_is_refused_by_name(emulator: Emulator, settings: Settings) -> None:
    prompts = len(emulator.state()["prompts"])
    for field, value in (("width", 480), ("height", 832), ("fps", 16)):
        result = run(settings, **{field: value})
        assert result["error_code"] == "invalid_input", result
        assert result["details"][0]["field"] == field and "must be the video's" in result["error"]
    assert run(settings, width=160, height=128, fps=24).get("error") is None
    assert len(emulator.state()["prompts"]) == prompts + 1


def test_the_video_is_checked_like_an_image(emulator: Emulator, settings: Settings) -> None:
    result = run(settings, extend_video_base64=data_uri(image_bytes()))
    assert result["error_code"] == "invalid_image" and "video/mp4" in result["error"], result
    result = run(settings, extend_frames=21, length=25)
    assert result["error_code"] == "invalid_image" and "has 17 frames" in result["error"], result
    small = settings.model_copy(update={"max_input_image_pixels": 100 * 100})
    result = run(small)
    assert result["error_code"] == "invalid_image" and "160x128" in result["error"], result
    tiny = settings.model_copy(update={"max_input_image_mb": 0.001})
    assert run(tiny)["error_code"] == "invalid_image"
    (settings.volume_root / "clip.mp4").write_bytes(GIVEN)
    by_path = run(settings, extend_video_base64=None, extend_video_path="clip.mp4", output="base64")
    assert by_path.get("frames") == {"given": 17, "new": 4, "delivered": 21}, by_path


def test_an_extension_to_an_end_image(emulator: Emulator, settings: Settings) -> None:
    result = run(settings, end_image_base64=data_uri(image_bytes()), output="base64")
    assert "error" not in result and result["mode"] == "flf2v", result
    assert probe_b64(result["video"]).frames == 21


def test_the_last_frame_of_any_job_goes_to_the_bucket_beside_the_video(
    emulator: Emulator, settings: Settings, s3_endpoint: str
) -> None:
    body = {
        "id": "job-1",
        "input": {
            "prompt": "p",
            "image_base64": data_uri(image_bytes()),
            "length": 9,
            "return_last_frame": True,
        },
        "s3Config": {
            "accessId": "k",
            "accessSecret": "s",
            "bucketName": "videos",
            "endpointUrl": s3_endpoint,
        },
    }
    result = asyncio.run(handle_job(body, settings))
    assert "last_frame" not in result and "video" not in result, result
    png = requests.get(result["last_frame_url"], timeout=10).content
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(io.BytesIO(png)).size == (result["width"], result["height"])
    assert "frames" not in result and json.dumps(result)
