"""Binding a job into the workflow templates, node by node."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from worker.graph import (
    TEMPLATE_NODES,
    Images,
    LoraFiles,
    ModelFiles,
    TemplateError,
    bind,
    check_template,
    load_template,
    step_offsets,
)
from worker.schema import parse_job_input

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
FILES = ModelFiles(
    high_model="high.safetensors",
    low_model="low.safetensors",
    text_encoder="te.safetensors",
    vae="vae.safetensors",
    lightning_high="lh.safetensors",
    lightning_low="ll.safetensors",
)
BASE = {"prompt": "a cat", "image_base64": "aGVsbG8=", "seed": 7}


def make(mode: str = "i2v", files: ModelFiles = FILES, **fields: object) -> dict:
    data = {**BASE, **fields}
    if mode == "flf2v":
        data["end_image_base64"] = "aGVsbG8="
    job = parse_job_input(data)
    images = Images(start="s.png", end="e.png" if mode == "flf2v" else None)
    return bind(load_template(WORKFLOWS, mode), job, files, images, filename_prefix="video/wan_test")


def upstream(graph: dict, node_id: str, input_name: str = "model") -> list[str]:
    """The chain of node ids feeding ``input_name``, nearest first."""
    chain = []
    link = graph[node_id]["inputs"].get(input_name)
    while isinstance(link, list):
        chain.append(link[0])
        link = graph[link[0]]["inputs"].get("model")
    return chain


@pytest.mark.parametrize("mode", ["i2v", "flf2v"])
def test_templates_are_checked_and_share_node_ids(mode: str) -> None:
    graph = load_template(WORKFLOWS, mode)
    for node_id, class_type in TEMPLATE_NODES.items():
        assert graph[node_id]["class_type"] == class_type
    other = load_template(WORKFLOWS, "flf2v" if mode == "i2v" else "i2v")
    loaders = ("high_model", "low_model", "text_encoder", "vae", "lightning_high", "lightning_low")
    for node_id in loaders:
        assert graph[node_id] == other[node_id], node_id


def test_template_check_names_the_problem() -> None:
    graph = load_template(WORKFLOWS, "i2v")
    del graph["sampler_low"]
    with pytest.raises(TemplateError, match="sampler_low"):
        check_template(graph, "i2v")
    graph = load_template(WORKFLOWS, "i2v")
    graph["vae"]["class_type"] = "CLIPLoader"
    with pytest.raises(TemplateError, match=r"'vae'.*expected 'VAELoader'"):
        check_template(graph, "i2v")


def test_i2v_binding_node_by_node() -> None:
    g = make(width=838, height=480, length=49, fps=24, shift=8.0, cfg=1.5, steps=6)
    assert g["high_model"]["inputs"]["unet_name"] == "high.safetensors"
    assert g["low_model"]["inputs"]["unet_name"] == "low.safetensors"
    assert g["text_encoder"]["inputs"] == {"clip_name": "te.safetensors", "type": "wan", "device": "default"}
    assert g["vae"]["inputs"]["vae_name"] == "vae.safetensors"
    assert g["positive"]["inputs"]["text"] == "a cat"
    assert g["negative"]["inputs"]["text"].startswith("色调艳丽")
    assert g["start_image"]["inputs"]["image"] == "s.png"
    assert "end_image" not in g
    cond = g["conditioning"]
    assert cond["class_type"] == "WanImageToVideo"
    assert (cond["inputs"]["width"], cond["inputs"]["height"], cond["inputs"]["length"]) == (832, 480, 49)
    assert cond["inputs"]["start_image"] == ["start_image", 0]
    high, low = g["sampler_high"]["inputs"], g["sampler_low"]["inputs"]
    assert (high["steps"], high["start_at_step"], high["end_at_step"]) == (6, 0, 3)
    assert (low["steps"], low["start_at_step"], low["end_at_step"]) == (6, 3, 10000)
    assert high["noise_seed"] == low["noise_seed"] == 7
    assert high["cfg"] == low["cfg"] == 1.5
    assert high["add_noise"] == "enable" and high["return_with_leftover_noise"] == "enable"
    assert low["add_noise"] == "disable" and low["return_with_leftover_noise"] == "disable"
    assert low["latent_image"] == ["sampler_high", 0]
    assert g["shift_high"]["inputs"]["shift"] == g["shift_low"]["inputs"]["shift"] == 8.0
    assert g["video"]["inputs"]["fps"] == 24.0
    assert g["save_video"]["inputs"]["filename_prefix"] == "video/wan_test"
    assert upstream(g, "sampler_high") == ["shift_high", "lightning_high", "high_model"]
    assert upstream(g, "sampler_low") == ["shift_low", "lightning_low", "low_model"]
    assert g["lightning_high"]["inputs"]["lora_name"] == "lh.safetensors"
    assert g["lightning_low"]["inputs"]["lora_name"] == "ll.safetensors"


def test_flf2v_binding() -> None:
    g = make("flf2v")
    assert g["conditioning"]["class_type"] == "WanFirstLastFrameToVideo"
    assert g["conditioning"]["inputs"]["end_image"] == ["end_image", 0]
    assert g["end_image"]["inputs"]["image"] == "e.png"


def test_bind_does_not_modify_the_template() -> None:
    template = load_template(WORKFLOWS, "i2v")
    before = json.dumps(template, sort_keys=True)
    bind(template, parse_job_input(BASE), FILES, Images(start="s.png"), filename_prefix="p")
    assert json.dumps(template, sort_keys=True) == before


def test_lightning_off_drops_its_nodes() -> None:
    g = make(lightning=False)
    assert "lightning_high" not in g and "lightning_low" not in g
    assert upstream(g, "sampler_high") == ["shift_high", "high_model"]
    assert g["sampler_high"]["inputs"]["steps"] == 20 and g["sampler_high"]["inputs"]["end_at_step"] == 10
    assert g["sampler_high"]["inputs"]["cfg"] == 3.5


def test_lora_pairs_chain_on_each_expert() -> None:
    files = FILES.replace(
        loras=(
            LoraFiles("a_h.safetensors", "a_l.safetensors", 0.8, 0.6),
            LoraFiles("b_h.safetensors", None, 1.2, 1.0),
        )
    )
    g = make(
        files=files,
        lora_pairs=[{"high": "a_h.safetensors", "low": "a_l.safetensors"}, {"high": "b_h.safetensors"}],
    )
    assert upstream(g, "sampler_high") == [
        "shift_high",
        "lora_high_2",
        "lora_high_1",
        "lightning_high",
        "high_model",
    ]
    assert upstream(g, "sampler_low") == ["shift_low", "lora_low_1", "lightning_low", "low_model"]
    assert g["lora_high_1"]["inputs"]["lora_name"] == "a_h.safetensors"
    assert g["lora_high_1"]["inputs"]["strength_model"] == 0.8
    assert g["lora_low_1"]["inputs"]["strength_model"] == 0.6
    assert g["lora_high_2"]["inputs"]["strength_model"] == 1.2
    assert "lora_low_2" not in g


def test_long_video_adds_context_windows() -> None:
    g = make(length=161, context_overlap=32)
    for expert in ("high", "low"):
        node = g[f"context_{expert}"]
        assert node["class_type"] == "WanContextWindowsManual"
        assert node["inputs"]["context_length"] == 81 and node["inputs"]["context_overlap"] == 32
        assert node["inputs"]["freenoise"] is True and node["inputs"]["retain_first_frame"] is False
        assert node["inputs"]["split_conds_to_windows"] is False
        assert upstream(g, f"sampler_{expert}")[:2] == [f"context_{expert}", f"shift_{expert}"]
    assert "context_high" not in make(length=81)


def test_save_video_re_encodes_at_the_jobs_crf() -> None:
    inputs = make(crf=12)["save_video"]["inputs"]
    assert (inputs["format"], inputs["codec"], inputs["codec.encoding"]) == ("mp4", "h264", "re-encode")
    assert inputs["codec.encoding.crf"] == 12.0
    assert make()["save_video"]["inputs"]["codec.encoding.crf"] == 19.0


def test_context_window_options_reach_both_windows() -> None:
    g = make(length=85, context_freenoise=False, context_retain_first_frame=True)
    for expert in ("high", "low"):
        inputs = g[f"context_{expert}"]["inputs"]
        assert (inputs["freenoise"], inputs["retain_first_frame"]) == (False, True)


def test_clip_vision_nodes_only_when_named() -> None:
    files = FILES.replace(clip_vision="cv.safetensors")
    g = make(files=files)
    assert g["clip_vision"]["inputs"]["clip_name"] == "cv.safetensors"
    assert g["conditioning"]["inputs"]["clip_vision_output"] == ["clip_vision_start", 0]
    g = make("flf2v", files=files)
    assert g["conditioning"]["inputs"]["clip_vision_start_image"] == ["clip_vision_start", 0]
    assert g["conditioning"]["inputs"]["clip_vision_end_image"] == ["clip_vision_end", 0]
    assert g["clip_vision_end"]["inputs"]["image"] == ["end_image", 0]
    assert "clip_vision" not in make()


def test_step_offsets_follow_the_split() -> None:
    job = parse_job_input({**BASE, "steps": 10, "high_noise_steps": 4})
    assert step_offsets(job) == {"sampler_high": 0, "sampler_low": 4}


def test_every_link_points_at_an_existing_node() -> None:
    files = FILES.replace(clip_vision="cv.safetensors", loras=(LoraFiles("a.safetensors", "b.safetensors"),))
    for mode in ("i2v", "flf2v"):
        g = make(
            mode, files=files, length=161, lora_pairs=[{"high": "a.safetensors", "low": "b.safetensors"}]
        )
        for node_id, node in g.items():
            for name, value in node["inputs"].items():
                if isinstance(value, list):
                    assert value[0] in g, f"{node_id}.{name} -> {value}"


def test_interpolation_goes_between_decode_and_the_video() -> None:
    files = FILES.replace(interpolation_model="film.safetensors")
    g = make(files=files, interpolate=3, fps=16, length=9)
    assert g["interpolation_model"] == {
        "class_type": "FrameInterpolationModelLoader",
        "inputs": {"model_name": "film.safetensors"},
        "_meta": {"title": "the frame interpolation model (FILM or RIFE)"},
    }
    assert g["interpolate"]["inputs"] == {
        "interp_model": ["interpolation_model", 0],
        "images": ["decode", 0],
        "multiplier": 3,
    }
    assert g["video"]["inputs"]["images"] == ["interpolate", 0] and g["video"]["inputs"]["fps"] == 48.0
    assert "interpolate" not in make(files=files) and "interpolation_model" not in make(files=files)


@pytest.mark.parametrize("mode", ["i2v", "flf2v"])
def test_interpolation_with_context_windows_and_both_modes(mode: str) -> None:
    g = make(mode, files=FILES.replace(interpolation_model="f.safetensors"), interpolate=2, length=85)
    assert "context_high" in g and g["video"]["inputs"]["images"] == ["interpolate", 0]
