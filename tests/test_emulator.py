"""The ComfyUI emulator, driven as a client drives ComfyUI: plain requests + websocket-client.

Expected shapes and message orders are those of ComfyUI v0.33.0: the recorded traces in ``tests/fixtures/traces``
(copies of ``shared/comfyui/v0.33.0/traces``) are replayed and compared message by message, and the other
expectations were checked against a v0.33.0 server.
"""

from __future__ import annotations

import copy
import io
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import pytest
import requests
import websocket
from PIL import Image

from tests.emulator import DEFAULT_MODELS, Emulator, EmulatorProcess

HIGH, LOW = DEFAULT_MODELS["diffusion_models"]
LORA_HIGH, LORA_LOW = DEFAULT_MODELS["loras"]
TEXT_ENCODER = DEFAULT_MODELS["text_encoders"][0]
VAE = DEFAULT_MODELS["vae"][0]

# --------------------------------------------------------------------------------------------- helpers


def png_bytes(color: tuple[int, int, int], size: tuple[int, int] = (96, 64)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def upload(url: str, name: str, data: bytes, **fields: str) -> requests.Response:
    return requests.post(
        url + "/upload/image", files={"image": (name, data, "image/png")}, data=fields, timeout=10
    )


def wan_graph(
    *,
    flf2v: bool = False,
    width: int = 64,
    height: int = 48,
    length: int = 9,
    steps: int = 4,
    split: int = 2,
    seed: int = 42,
    start: str = "start.png",
    end: str = "end.png",
    prefix: str = "video/wan_test",
    fps: float = 16.0,
) -> dict[str, Any]:
    """The native Wan2.2 graph of the recorded traces, with the default model files."""
    cond = "flf2v" if flf2v else "i2v"
    g: dict[str, Any] = {
        "unet_high": {"class_type": "UNETLoader", "inputs": {"unet_name": HIGH, "weight_dtype": "default"}},
        "unet_low": {"class_type": "UNETLoader", "inputs": {"unet_name": LOW, "weight_dtype": "default"}},
        "shift_high": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["lora_high", 0], "shift": 8.0}},
        "shift_low": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["lora_low", 0], "shift": 8.0}},
        "text_encoder": {
            "class_type": "CLIPLoader",
            "inputs": {"clip_name": TEXT_ENCODER, "type": "wan", "device": "default"},
        },
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": VAE}},
        "positive": {
            "class_type": "CLIPTextEncode",
            "inputs": {"text": "a cat walking", "clip": ["text_encoder", 0]},
        },
        "negative": {
            "class_type": "CLIPTextEncode",
            "inputs": {"text": "blurry", "clip": ["text_encoder", 0]},
        },
        "start_image": {"class_type": "LoadImage", "inputs": {"image": start}},
        cond: {
            "class_type": "WanFirstLastFrameToVideo" if flf2v else "WanImageToVideo",
            "inputs": {
                "positive": ["positive", 0],
                "negative": ["negative", 0],
                "vae": ["vae", 0],
                "width": width,
                "height": height,
                "length": length,
                "batch_size": 1,
                "start_image": ["start_image", 0],
            },
        },
        "sampler_high": {
            "class_type": "KSamplerAdvanced",
            "inputs": {
                "model": ["shift_high", 0],
                "add_noise": "enable",
                "noise_seed": seed,
                "steps": steps,
                "cfg": 1.0,
                "sampler_name": "euler",
                "scheduler": "simple",
                "positive": [cond, 0],
                "negative": [cond, 1],
                "latent_image": [cond, 2],
                "start_at_step": 0,
                "end_at_step": split,
                "return_with_leftover_noise": "enable",
            },
        },
        "sampler_low": {
            "class_type": "KSamplerAdvanced",
            "inputs": {
                "model": ["shift_low", 0],
                "add_noise": "disable",
                "noise_seed": seed,
                "steps": steps,
                "cfg": 1.0,
                "sampler_name": "euler",
                "scheduler": "simple",
                "positive": [cond, 0],
                "negative": [cond, 1],
                "latent_image": ["sampler_high", 0],
                "start_at_step": split,
                "end_at_step": 10000,
                "return_with_leftover_noise": "disable",
            },
        },
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sampler_low", 0], "vae": ["vae", 0]}},
        "video": {"class_type": "CreateVideo", "inputs": {"images": ["decode", 0], "fps": fps}},
        "save_video": {
            "class_type": "SaveVideo",
            "inputs": {"video": ["video", 0], "filename_prefix": prefix, "format": "auto", "codec": "auto"},
        },
        "lora_high": {
            "class_type": "LoraLoaderModelOnly",
            "inputs": {"model": ["unet_high", 0], "lora_name": LORA_HIGH, "strength_model": 1.0},
        },
        "lora_low": {
            "class_type": "LoraLoaderModelOnly",
            "inputs": {"model": ["unet_low", 0], "lora_name": LORA_LOW, "strength_model": 1.0},
        },
    }
    if flf2v:
        g["end_image"] = {"class_type": "LoadImage", "inputs": {"image": end}}
        g[cond]["inputs"]["end_image"] = ["end_image", 0]
    return g


def summarize(msg: dict[str, Any]) -> str:
    """One message as the traces' ``ws_types`` list writes it."""
    t, d = msg["type"], msg["data"]
    if t == "status":
        return f"status(q={d['status']['exec_info']['queue_remaining']})"
    if t == "progress_state":
        return "progress_state(" + ",".join(f"{k}:{v['state']}" for k, v in d["nodes"].items()) + ")"
    if t in ("executing", "executed"):
        return f"{t}(node={d['node']!r})"
    if t == "progress":
        return f"progress({d['value']}/{d['max']} node={d['node']})"
    return t


def expected_run(order: list[str], steps: dict[str, int], outputs: set[str]) -> list[str]:
    """Message sequence ComfyUI sends for a prompt executing ``order`` with nothing cached."""
    out = ["status(q=1)", "status(q=1)", "execution_start", "execution_cached"]
    done: list[str] = []

    def ps(extra: str | None = None) -> str:
        items = [f"{n}:finished" for n in done] + ([extra] if extra else [])
        return "progress_state(" + ",".join(items) + ")"

    for node in order:
        out += [ps(f"{node}:running"), f"executing(node={node!r})"]
        for i in range(1, steps.get(node, 0) + 1):
            out += [ps(f"{node}:running"), f"progress({i}/{steps[node]} node={node})"]
        if node in outputs:
            out.append(f"executed(node={node!r})")
        done.append(node)
        out.append(ps())
    return [*out, "execution_success", "status(q=0)", "executing(node=None)"]


I2V_ORDER = [
    "vae",
    "start_image",
    "text_encoder",
    "negative",
    "positive",
    "i2v",
    "unet_high",
    "lora_high",
    "shift_high",
    "sampler_high",
    "unet_low",
    "lora_low",
    "shift_low",
    "sampler_low",
    "decode",
    "video",
    "save_video",
]


class Conn:
    """A WebSocket client of /ws."""

    def __init__(self, base_url: str, client_id: str | None = None) -> None:
        self.client_id = client_id or f"test-{uuid.uuid4().hex[:8]}"
        ws_url = base_url.replace("http://", "ws://") + f"/ws?clientId={self.client_id}"
        self.ws = websocket.create_connection(ws_url, timeout=10)
        self.hello = self.recv()

    def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        self.ws.settimeout(timeout)
        while True:
            opcode, data = self.ws.recv_data()
            if opcode == websocket.ABNF.OPCODE_TEXT:
                return json.loads(data)

    def until_done(self, prompt_id: str, timeout: float = 20.0) -> list[dict[str, Any]]:
        msgs: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while True:
            msg = self.recv(max(0.1, deadline - time.monotonic()))
            msgs.append(msg)
            d = msg["data"]
            if msg["type"] == "executing" and d.get("node") is None and d.get("prompt_id") == prompt_id:
                return msgs

    def close(self) -> None:
        self.ws.close()


def post_prompt(
    url: str, graph: dict[str, Any], client_id: str | None = None, **extra: Any
) -> requests.Response:
    body: dict[str, Any] = {"prompt": graph, **extra}
    if client_id is not None:
        body["client_id"] = client_id
    return requests.post(url + "/prompt", json=body, timeout=10)


def run(url: str, graph: dict[str, Any], **extra: Any) -> tuple[str, list[dict[str, Any]]]:
    conn = Conn(url)
    try:
        resp = post_prompt(url, graph, conn.client_id, **extra)
        assert resp.status_code == 200, resp.text
        prompt_id = resp.json()["prompt_id"]
        return prompt_id, conn.until_done(prompt_id)
    finally:
        conn.close()


def history(url: str, prompt_id: str) -> dict[str, Any]:
    return requests.get(f"{url}/history/{prompt_id}", timeout=10).json()[prompt_id]


def fetch_video(url: str, image: dict[str, str], tmp_path: Any) -> tuple[str, dict[str, Any]]:
    """Download an output through /view and decode it: codec, size, fps, frame count, some frames."""
    resp = requests.get(url + "/view", params=image, timeout=10)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "video/mp4"
    path = os.path.join(tmp_path, image["filename"])
    with open(path, "wb") as fh:
        fh.write(resp.content)
    with av.open(path) as container:
        stream = container.streams.video[0]
        decoded = list(container.decode(video=0))
        info = {
            "codec": stream.codec_context.name,
            "width": stream.codec_context.width,
            "height": stream.codec_context.height,
            "fps": float(stream.average_rate),
            "count": len(decoded),
            "first": decoded[0].to_image(),
            "middle": decoded[len(decoded) // 2].to_image(),
            "last": decoded[-1].to_image(),
        }
    return path, info


def close_to(pixel: tuple[int, ...], color: tuple[int, int, int], tol: int = 40) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(pixel[:3], color, strict=True))


# -------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with Emulator() as e:
        assert upload(e.url, "start.png", png_bytes((220, 30, 30))).status_code == 200
        assert upload(e.url, "end.png", png_bytes((30, 30, 220))).status_code == 200
        yield e


@pytest.fixture
def url(emu: Emulator) -> Iterator[str]:
    """The shared emulator with no faults, no delays and an empty cache; idle again after the test."""
    emu.reset()
    yield emu.url
    emu.reset()


# ---------------------------------------------------------------------------------------------- success


def test_i2v_success_messages_history_and_mp4(url: str, tmp_path: Any) -> None:
    graph = wan_graph(width=480, height=832, length=81)
    prompt_id, msgs = run(url, graph)

    got = [summarize(m) for m in msgs[:]]
    expected = expected_run(I2V_ORDER, {"sampler_high": 2, "sampler_low": 2}, {"save_video"})
    assert got == expected

    by_type = {m["type"]: m["data"] for m in msgs}
    assert by_type["execution_cached"]["nodes"] == []
    assert set(by_type["execution_start"]) == {"prompt_id", "timestamp"}
    executing = next(m["data"] for m in msgs if m["type"] == "executing" and m["data"]["node"] == "vae")
    assert executing == {"node": "vae", "display_node": "vae", "prompt_id": prompt_id}
    progress = [m["data"] for m in msgs if m["type"] == "progress"]
    assert progress[0] == {"value": 1, "max": 2, "prompt_id": prompt_id, "node": "sampler_high"}
    assert [(p["node"], p["value"], p["max"]) for p in progress] == [
        ("sampler_high", 1, 2),
        ("sampler_high", 2, 2),
        ("sampler_low", 1, 2),
        ("sampler_low", 2, 2),
    ]
    last_ps = [m["data"] for m in msgs if m["type"] == "progress_state"][-1]
    assert last_ps["nodes"]["vae"] == {
        "value": 1.0,
        "max": 1.0,
        "state": "finished",
        "node_id": "vae",
        "prompt_id": prompt_id,
        "display_node_id": "vae",
        "parent_node_id": None,
        "real_node_id": "vae",
    }
    assert (last_ps["nodes"]["sampler_high"]["value"], last_ps["nodes"]["sampler_high"]["max"]) == (2, 2)

    output = {
        "images": [{"filename": "wan_test_00001_.mp4", "subfolder": "video", "type": "output"}],
        "animated": [True],
    }
    assert by_type["executed"] == {
        "node": "save_video",
        "display_node": "save_video",
        "output": output,
        "prompt_id": prompt_id,
    }
    assert msgs[-1]["data"] == {"node": None, "prompt_id": prompt_id}

    entry = history(url, prompt_id)
    assert list(entry) == ["prompt", "outputs", "status", "meta"]
    number, pid, prompt, extra, outputs = entry["prompt"]
    assert (pid, prompt, outputs) == (prompt_id, graph, ["save_video"])
    assert isinstance(number, int)
    assert set(extra) == {"client_id", "create_time"}
    assert isinstance(extra["create_time"], int)
    assert entry["outputs"] == {"save_video": output}
    assert entry["meta"] == {
        "save_video": {
            "node_id": "save_video",
            "display_node": "save_video",
            "parent_node": None,
            "real_node_id": "save_video",
        }
    }
    assert entry["status"]["status_str"] == "success"
    assert entry["status"]["completed"] is True
    assert [m[0] for m in entry["status"]["messages"]] == [
        "execution_start",
        "execution_cached",
        "execution_success",
    ]

    _, info = fetch_video(url, output["images"][0], tmp_path)
    assert info["codec"] in ("h264", "mpeg4")
    assert (info["count"], info["width"], info["height"], info["fps"]) == (81, 480, 832, 16.0)
    assert close_to(info["first"].getpixel((240, 416)), (220, 30, 30))
    assert close_to(info["last"].getpixel((240, 416)), (220, 30, 30))


def test_flf2v_cross_fade(url: str, tmp_path: Any) -> None:
    graph = wan_graph(flf2v=True, width=64, height=48, length=17, fps=8.0, prefix="video/flf")
    prompt_id, msgs = run(url, graph)
    types = [m["type"] for m in msgs]
    assert "execution_success" in types
    assert "execution_error" not in types
    executed = [m["data"]["node"] for m in msgs if m["type"] == "executing" and m["data"]["node"]]
    assert executed[0] == "vae"
    assert set(executed[1:3]) == {"start_image", "end_image"}
    assert executed[-3:] == ["decode", "video", "save_video"]
    image = history(url, prompt_id)["outputs"]["save_video"]["images"][0]
    assert image == {"filename": "flf_00001_.mp4", "subfolder": "video", "type": "output"}
    _, info = fetch_video(url, image, tmp_path)
    assert (info["count"], info["width"], info["height"], info["fps"]) == (17, 64, 48, 8.0)
    assert close_to(info["first"].getpixel((32, 24)), (220, 30, 30))
    assert close_to(info["last"].getpixel((32, 24)), (30, 30, 220))
    assert close_to(info["middle"].getpixel((32, 24)), (125, 30, 125))


def test_second_run_gets_next_file_number(url: str) -> None:
    graph = wan_graph(prefix="video/numbered")
    first, _ = run(url, graph)
    graph["sampler_high"]["inputs"]["noise_seed"] = 7
    second, _ = run(url, graph)
    names = [history(url, p)["outputs"]["save_video"]["images"][0]["filename"] for p in (first, second)]
    assert names == ["numbered_00001_.mp4", "numbered_00002_.mp4"]


def test_wan_output_size_and_length_follow_the_latent(url: str, tmp_path: Any) -> None:
    # ComfyUI accepts width 838 and length 80; the Wan latent makes that 832 wide and 77 frames.
    graph = wan_graph(width=838, height=48, length=80)
    graph["sampler_high"]["inputs"]["cfg"] = "1.0"
    prompt_id, _ = run(url, graph)
    entry = history(url, prompt_id)
    assert entry["prompt"][2]["sampler_high"]["inputs"]["cfg"] == 1.0  # converted, as ComfyUI stores it
    _, info = fetch_video(url, entry["outputs"]["save_video"]["images"][0], tmp_path)
    assert (info["count"], info["width"], info["height"]) == (77, 832, 48)


def test_caching_between_prompts(url: str, emu: Emulator) -> None:
    first, _ = run(url, wan_graph(prefix="video/cache"))
    graph = wan_graph(prefix="video/cache", seed=1234)
    second, msgs = run(url, graph)
    cached = next(m["data"]["nodes"] for m in msgs if m["type"] == "execution_cached")
    assert cached == [
        "unet_high",
        "unet_low",
        "shift_high",
        "shift_low",
        "text_encoder",
        "vae",
        "positive",
        "negative",
        "start_image",
        "i2v",
        "lora_high",
        "lora_low",
    ]
    ran = [m["data"]["node"] for m in msgs if m["type"] == "executing" and m["data"]["node"]]
    assert ran == ["sampler_high", "sampler_low", "decode", "video", "save_video"]
    assert emu.state()["cached"][second] == cached

    # The very same prompt again: everything cached, the saver re-reports its file (as a v0.33.0 server does).
    third, msgs = run(url, graph)
    assert [summarize(m) for m in msgs] == [
        "status(q=1)",
        "status(q=1)",
        "execution_start",
        "execution_cached",
        "executed(node='save_video')",
        "progress_state(save_video:finished)",
        "execution_success",
        "status(q=0)",
        "executing(node=None)",
    ]
    ps = next(m["data"] for m in msgs if m["type"] == "progress_state")
    assert (ps["nodes"]["save_video"]["value"], ps["nodes"]["save_video"]["max"]) == (1, 1)
    assert history(url, third)["outputs"] == history(url, second)["outputs"]
    assert history(url, first)["outputs"] != history(url, second)["outputs"]


def test_client_prompt_id_and_number(url: str) -> None:
    my_id = str(uuid.uuid4())
    resp = post_prompt(url, wan_graph(), prompt_id=my_id, number=5)
    assert resp.status_code == 200
    assert resp.json() == {"prompt_id": my_id, "number": 5.0, "node_errors": {}}
    deadline = time.monotonic() + 10
    while my_id not in requests.get(url + "/history", timeout=10).json():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert history(url, my_id)["prompt"][:2] == [5.0, my_id]


def test_other_savers(url: str, tmp_path: Any) -> None:
    graph = {
        "start_image": {"class_type": "LoadImage", "inputs": {"image": "start.png"}},
        "repeat": {"class_type": "RepeatImageBatch", "inputs": {"image": ["start_image", 0], "amount": 4}},
        "webm": {
            "class_type": "SaveWEBM",
            "inputs": {
                "images": ["repeat", 0],
                "filename_prefix": "w",
                "codec": "vp9",
                "fps": 8.0,
                "crf": 32.0,
            },
        },
        "webp": {
            "class_type": "SaveAnimatedWEBP",
            "inputs": {
                "images": ["repeat", 0],
                "filename_prefix": "p",
                "fps": 8.0,
                "lossless": False,
                "quality": 80,
                "method": "default",
            },
        },
    }
    prompt_id, _ = run(url, graph)
    outputs = history(url, prompt_id)["outputs"]
    assert outputs == {
        "webm": {
            "images": [{"filename": "w_00001_.webm", "subfolder": "", "type": "output"}],
            "animated": [True],
        },
        "webp": {
            "images": [{"filename": "p_00001_.webp", "subfolder": "", "type": "output"}],
            "animated": [True],
        },
    }
    resp = requests.get(url + "/view", params=outputs["webp"]["images"][0], timeout=10)
    assert resp.status_code == 200
    assert Image.open(io.BytesIO(resp.content)).format == "WEBP"


# ---------------------------------------------------------------------------------- the recorded traces

TRACES = Path(__file__).resolve().parent / "fixtures" / "traces"

TRACE_MODELS = {
    "diffusion_models": ["tiny_wan_i2v_high.safetensors", "tiny_wan_i2v_low.safetensors"],
    "loras": ["tiny_lora.safetensors"],
    "text_encoders": ["tiny_umt5_xxl_zero_fp8.safetensors"],
    "vae": ["broken.safetensors", "tiny_wan_2.1_vae_random.safetensors"],
    "frame_interpolation": ["tiny_film.safetensors"],
}
"""The files the recording server had (its object_info's COMBOs)."""

SESSION = [
    "tiny_wan22_i2v_e2e_success",
    "tiny_wan22_flf2v_e2e_success",
    "cached_resubmit",
    "tiny_wan22_i2v_context_windows",
    "tiny_wan22_i2v_interpolate_x2",
    "wan22_i2v_exec_fail",
    "interrupt",
]
"""The traces of one server session, in the order they were recorded (prompt numbers 10 to 16)."""

# (frames, width, height, fps) of each session trace's video: the recorded server's files.
SESSION_VIDEOS = {
    "tiny_wan22_i2v_e2e_success": (9, 128, 128, 16.0),
    "tiny_wan22_flf2v_e2e_success": (9, 128, 128, 16.0),
    "cached_resubmit": (9, 128, 128, 16.0),
    "tiny_wan22_i2v_context_windows": (33, 128, 128, 16.0),
    "tiny_wan22_i2v_interpolate_x2": (17, 128, 128, 32.0),
}


def trace(name: str) -> dict[str, Any]:
    return json.loads((TRACES / f"{name}.json").read_text(encoding="utf-8"))


def normalized(obj: Any, ids: dict[str, str]) -> Any:
    """A message or history entry without what differs between runs: timestamps, the prompt and client ids
    (replaced by placeholders) and the order of ``current_outputs`` (a set in ComfyUI)."""
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if key in ("timestamp", "create_time"):
                continue
            value = normalized(value, ids)
            out[key] = sorted(value) if key == "current_outputs" else value
        return out
    if isinstance(obj, list):
        return [normalized(v, ids) for v in obj]
    if isinstance(obj, str):
        return ids.get(obj, obj)
    return obj


@dataclass
class Replayed:
    body: dict[str, Any]
    messages: list[dict[str, Any]]
    history: dict[str, Any]
    ids: dict[str, str]
    video: dict[str, Any] | None


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Replayed]:
    """The session's prompts sent again, in order, to an emulator with the recording server's files.

    The server had run prompts before the first trace (its loaders and text encodes were cached, its start
    image not): one prompt with another start image stands in for them. The broken VAE file fails through the
    ``exec_error_node`` fault; the interrupt arrives while ``conditioning`` runs, as recorded."""
    out: dict[str, Replayed] = {}
    tmp = tmp_path_factory.mktemp("replay")
    with Emulator(models=TRACE_MODELS) as emu:
        for name, color in (
            ("rec_start.png", (220, 30, 30)),
            ("rec_end.png", (30, 30, 220)),
            ("warm.png", (9, 9, 9)),
        ):
            assert upload(emu.url, name, png_bytes(color, (128, 128))).status_code == 200
        warm = copy.deepcopy(trace(SESSION[0])["request"]["prompt"])
        warm["start_image"]["inputs"]["image"] = "warm.png"
        warm["save_video"]["inputs"]["filename_prefix"] = "video/warm"
        run(emu.url, warm)
        for name in SESSION:
            recorded = trace(name)
            if name == "wan22_i2v_exec_fail":
                emu.set_faults(exec_error_node="vae")
            if name == "interrupt":
                emu.configure(node_delay=5.0)
            conn = Conn(emu.url)
            try:
                resp = post_prompt(emu.url, recorded["request"]["prompt"], conn.client_id)
                assert resp.status_code == 200, resp.text
                prompt_id = resp.json()["prompt_id"]
                messages = [conn.hello]
                if name == "interrupt":
                    while not (
                        messages[-1]["type"] == "executing" and messages[-1]["data"]["node"] == "conditioning"
                    ):
                        messages.append(conn.recv())
                    requests.post(emu.url + "/interrupt", json={"prompt_id": prompt_id}, timeout=10)
                messages += conn.until_done(prompt_id)
            finally:
                conn.close()
            emu.reset(cache=False)
            entry = history(emu.url, prompt_id)
            video = None
            if entry["outputs"]:
                _, video = fetch_video(emu.url, entry["outputs"]["save_video"]["images"][0], tmp)
            ids = {prompt_id: "<prompt_id>", conn.client_id: "<client_id>"}
            out[name] = Replayed(resp.json(), messages, entry, ids, video)
    return out


def recorded_ids(recorded: dict[str, Any]) -> dict[str, str]:
    return {recorded["body"]["prompt_id"]: "<prompt_id>", recorded["request"]["client_id"]: "<client_id>"}


@pytest.mark.parametrize("name", SESSION)
def test_replayed_messages_match_the_trace(session: dict[str, Replayed], name: str) -> None:
    recorded = trace(name)
    got = session[name]
    assert [summarize(m) for m in got.messages] == [summarize(m) for m in recorded["ws_messages"]]
    assert [summarize(m) for m in got.messages] == [
        summarize({"type": t, "data": m["data"]})
        for t, m in zip(recorded["ws_types"], recorded["ws_messages"], strict=True)
    ]
    want = [
        normalized({"type": m["type"], "data": m["data"]}, recorded_ids(recorded))
        for m in recorded["ws_messages"]
    ]
    assert [normalized(m, got.ids) for m in got.messages] == want


@pytest.mark.parametrize("name", SESSION)
def test_replayed_history_matches_the_trace(session: dict[str, Replayed], name: str) -> None:
    recorded = trace(name)
    got = session[name]
    [want] = recorded["history"].values()
    entry = normalized(got.history, got.ids)
    want = normalized(want, recorded_ids(recorded))
    assert isinstance(entry["prompt"][0], int)
    entry["prompt"][0] = want["prompt"][0]  # the queue number: the recording server had run more prompts
    assert entry == want
    assert set(got.history["prompt"][3]) == {"client_id", "create_time"}
    body = normalized(got.body, got.ids)
    assert body == {**normalized(recorded["body"], recorded_ids(recorded)), "number": body["number"]}


@pytest.mark.parametrize("name", sorted(SESSION_VIDEOS))
def test_replayed_videos_have_the_recorded_frames(session: dict[str, Replayed], name: str) -> None:
    video = session[name].video
    assert video is not None
    assert (video["count"], video["width"], video["height"], video["fps"]) == SESSION_VIDEOS[name]


def test_cache_survives_a_prompt_that_fails_at_its_first_node(session: dict[str, Replayed]) -> None:
    # The broken-VAE prompt failed before any node completed, so the good VAE's entry (last used by the
    # interpolation prompt) was still cached for the interrupted one, as recorded.
    cached = next(
        m["data"]["nodes"] for m in session["interrupt"].messages if m["type"] == "execution_cached"
    )
    assert "vae" in cached
    assert "vae" not in next(
        m["data"]["nodes"] for m in session["wan22_i2v_exec_fail"].messages if m["type"] == "execution_cached"
    )


def _trace_graph() -> dict[str, Any]:
    return copy.deepcopy(trace(SESSION[0])["request"]["prompt"])


def _with_context_windows(graph: dict[str, Any]) -> dict[str, Any]:
    windows = trace("tiny_wan22_i2v_context_windows")["request"]["prompt"]
    for node in ("context_high", "context_low", "shift_high", "shift_low"):
        graph[node] = copy.deepcopy(windows[node])
    return graph


VALIDATION_TRACE_CASES: dict[str, Callable[[dict[str, Any]], Any]] = {
    "value_smaller_than_min": lambda g: g["sampler_high"]["inputs"].__setitem__("steps", 0),
    "missing_model": lambda g: g["high_model"]["inputs"].__setitem__("unet_name", "missing.safetensors"),
    "required_input_missing": lambda g: g["conditioning"]["inputs"].pop("width"),
    "unknown_class": lambda g: g["decode"].__setitem__("class_type", "NoSuchNode"),
    "context_without_freenoise": lambda g: _with_context_windows(g)["context_high"]["inputs"].pop(
        "freenoise"
    ),
    "missing_image": lambda g: g["start_image"]["inputs"].__setitem__("image", "not_uploaded.png"),
    "bad_link": lambda g: g["decode"]["inputs"].__setitem__("samples", ["nope", 0]),
}


@pytest.fixture(scope="module")
def trace_emu() -> Iterator[Emulator]:
    """An emulator with the recording server's files and uploads."""
    with Emulator(models=TRACE_MODELS) as e:
        for name, color in (("rec_start.png", (220, 30, 30)), ("rec_end.png", (30, 30, 220))):
            assert upload(e.url, name, png_bytes(color, (128, 128))).status_code == 200
        e.set_faults(hang=True)  # accepted prompts need not run
        yield e
        e.reset()


@pytest.mark.parametrize("case", sorted(VALIDATION_TRACE_CASES))
def test_validation_failures_match_the_trace(trace_emu: Emulator, case: str) -> None:
    recorded = trace("validation_failures")[case]
    graph = _trace_graph()
    VALIDATION_TRACE_CASES[case](graph)
    resp = post_prompt(trace_emu.url, graph)
    assert (resp.status_code, resp.json()) == (recorded["status"], recorded["body"])


def test_http_misc_matches_the_trace(trace_emu: Emulator) -> None:
    recorded = trace("http_misc")
    url = trace_emu.url
    assert requests.get(url + "/models", timeout=10).json() == recorded["models"]
    assert (
        requests.get(url + "/models/diffusion_models", timeout=10).json()
        == recorded["models_diffusion_models"]
    )
    assert requests.get(url + "/models/loras", timeout=10).json() == recorded["models_loras"]
    assert requests.get(url + "/models/frame_interpolation", timeout=10).json() == ["tiny_film.safetensors"]
    for folder in ("unknown", "unet", "clip"):
        assert requests.get(url + f"/models/{folder}", timeout=10).status_code == recorded["models_unknown"]
    assert requests.get(url + "/history/not-a-prompt", timeout=10).json() == recorded["history_unknown"]
    assert requests.get(url + "/", timeout=10).status_code == recorded["root_status"]
    trace_emu.reset()
    assert requests.get(url + "/queue", timeout=10).json() == recorded["queue"]
    trace_emu.set_faults(hang=True)
    stats = requests.get(url + "/system_stats", timeout=10).json()
    want = recorded["system_stats"]
    assert set(stats) == set(want)
    assert list(stats["system"]) == list(want["system"])
    for key in ("comfyui_version", "required_frontend_version", "comfy_package_versions", "os"):
        assert stats["system"][key] == want["system"][key]
    assert [set(d) for d in stats["devices"]] == [set(d) for d in want["devices"]]


def test_upload_matches_the_trace(trace_emu: Emulator) -> None:
    recorded = trace("upload_image")
    for name, color in (("start", (220, 30, 30)), ("end", (30, 30, 220))):
        resp = upload(trace_emu.url, f"rec_{name}.png", png_bytes(color, (128, 128)))
        assert (resp.status_code, resp.json()) == (recorded[name]["status"], recorded[name]["body"])


def test_emulated_classes_have_the_recorded_definitions(trace_emu: Emulator) -> None:
    recorded = json.loads((TRACES.parent / "object_info.json").read_text(encoding="utf-8"))
    info = requests.get(trace_emu.url + "/object_info", timeout=10).json()
    assert set(info) == set(recorded) - {"LoadVideo"}
    for name, entry in info.items():
        if name != "LoadImage":  # its COMBO lists the uploads, which differ
            assert entry == recorded[name], name


# ------------------------------------------------------------------------------------------- validation

PROMPT_FAILED = {
    "type": "prompt_outputs_failed_validation",
    "message": "Prompt outputs failed validation",
    "details": "",
    "extra_info": {},
}


def _set(node: str, name: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda g: g[node]["inputs"].__setitem__(name, value)


def _del(node: str, name: str) -> Callable[[dict[str, Any]], None]:
    return lambda g: g[node]["inputs"].pop(name)


NODE_ERROR_CASES = [
    (
        "unknown_model_file",
        _set("unet_high", "unet_name", "missing_model.safetensors"),
        "unet_high",
        "UNETLoader",
        {
            "type": "value_not_in_list",
            "message": "Value not in list",
            "details": f"unet_name: 'missing_model.safetensors' not in ['{HIGH}', '{LOW}']",
            "extra_info": {
                "input_name": "unet_name",
                "input_config": [[HIGH, LOW], {}],
                "received_value": "missing_model.safetensors",
            },
        },
    ),
    (
        "bad_combo_long_list",
        _set("sampler_high", "sampler_name", "euler_bogus"),
        "sampler_high",
        "KSamplerAdvanced",
        {
            "type": "value_not_in_list",
            "message": "Value not in list",
            "details": "sampler_name: 'euler_bogus' not in (list of length 44)",
            "extra_info": {
                "input_name": "sampler_name",
                "input_config": None,
                "received_value": "euler_bogus",
            },
        },
    ),
    (
        "below_min",
        _set("i2v", "width", 8),
        "i2v",
        "WanImageToVideo",
        {
            "type": "value_smaller_than_min",
            "message": "Value 8 smaller than min of 16",
            "details": "width",
            "extra_info": {
                "input_name": "width",
                "input_config": ["INT", {"default": 832, "min": 16, "max": 16384, "step": 16}],
                "received_value": 8,
            },
        },
    ),
    (
        "above_max",
        _set("sampler_high", "steps", 20000),
        "sampler_high",
        "KSamplerAdvanced",
        {
            "type": "value_bigger_than_max",
            "message": "Value 20000 bigger than max of 10000",
            "details": "steps",
            "extra_info": {
                "input_name": "steps",
                "input_config": ["INT", {"default": 20, "min": 1, "max": 10000}],
                "received_value": 20000,
            },
        },
    ),
    (
        "not_convertible",
        _set("sampler_high", "steps", "abc"),
        "sampler_high",
        "KSamplerAdvanced",
        {
            "type": "invalid_input_type",
            "message": "Failed to convert an input value to a INT value",
            "details": "steps, abc, invalid literal for int() with base 10: 'abc'",
            "extra_info": {
                "input_name": "steps",
                "input_config": ["INT", {"default": 20, "min": 1, "max": 10000}],
                "received_value": "abc",
                "exception_message": "invalid literal for int() with base 10: 'abc'",
            },
        },
    ),
    (
        "required_input_missing",
        _del("i2v", "vae"),
        "i2v",
        "WanImageToVideo",
        {
            "type": "required_input_missing",
            "message": "Required input is missing",
            "details": "vae",
            "extra_info": {"input_name": "vae"},
        },
    ),
    (
        "return_type_mismatch",
        _set("i2v", "vae", ["text_encoder", 0]),
        "i2v",
        "WanImageToVideo",
        {
            "type": "return_type_mismatch",
            "message": "Return type mismatch between linked nodes",
            "details": "vae, received_type(CLIP) mismatch input_type(VAE)",
            "extra_info": {
                "input_name": "vae",
                "input_config": ["VAE", {}],
                "received_type": "CLIP",
                "linked_node": ["text_encoder", 0],
            },
        },
    ),
    (
        "bad_linked_input",
        _set("shift_high", "model", ["lora_high"]),
        "shift_high",
        "ModelSamplingSD3",
        {
            "type": "bad_linked_input",
            "message": "Bad linked input, must be a length-2 list of [node_id, slot_index]",
            "details": "model",
            "extra_info": {
                "input_name": "model",
                "input_config": ["MODEL", {}],
                "received_value": ["lora_high"],
            },
        },
    ),
    (
        "load_image_file_missing",
        _set("start_image", "image", "nope.png"),
        "start_image",
        "LoadImage",
        {
            "type": "custom_validation_failed",
            "message": "Custom validation failed for node",
            "details": "image - Invalid image file: nope.png",
            "extra_info": {"input_name": "image"},
        },
    ),
]


@pytest.mark.parametrize(("case", "mutate", "node", "class_type", "error"), NODE_ERROR_CASES)
def test_node_validation_errors(
    url: str,
    case: str,
    mutate: Callable[[dict[str, Any]], None],
    node: str,
    class_type: str,
    error: dict[str, Any],
) -> None:
    graph = wan_graph()
    mutate(graph)
    resp = post_prompt(url, graph)
    assert resp.status_code == 400
    assert resp.json() == {
        "error": PROMPT_FAILED,
        "node_errors": {
            node: {"errors": [error], "dependent_outputs": ["save_video"], "class_type": class_type}
        },
    }


def test_link_to_missing_node_is_an_inner_validation_exception(url: str) -> None:
    # ComfyUI raises KeyError while validating sampler_high and reports it on sampler_high, with the input
    # name and link of the node that reached it (sampler_low.latent_image), as recorded.
    graph = wan_graph()
    graph["sampler_high"]["inputs"]["latent_image"] = ["no_such_node", 0]
    resp = post_prompt(url, graph)
    assert resp.status_code == 400
    body = resp.json()
    assert body["error"] == PROMPT_FAILED
    assert list(body["node_errors"]) == ["sampler_high"]
    entry = body["node_errors"]["sampler_high"]
    assert entry["class_type"] == "KSamplerAdvanced"
    assert entry["dependent_outputs"] == ["save_video"]
    [err] = entry["errors"]
    assert err["type"] == "exception_during_inner_validation"
    assert err["message"] == "Exception when validating inner node"
    assert err["details"] == "'no_such_node'"
    extra = err["extra_info"]
    assert extra["exception_type"] == "KeyError"
    assert extra["exception_message"] == "'no_such_node'"
    assert (extra["input_name"], extra["input_config"], extra["linked_node"]) == (
        "latent_image",
        ["LATENT", {}],
        ["sampler_high", 0],
    )
    assert isinstance(extra["traceback"], list)
    assert extra["traceback"]
    assert all(isinstance(line, str) for line in extra["traceback"])


def test_multiple_node_errors(url: str) -> None:
    graph = wan_graph()
    graph["i2v"]["inputs"]["width"] = 8
    graph["sampler_high"]["inputs"]["sampler_name"] = "euler_bogus"
    graph["unet_low"]["inputs"]["unet_name"] = "nope.safetensors"
    body = post_prompt(url, graph).json()
    assert sorted(body["node_errors"]) == ["i2v", "sampler_high", "unet_low"]
    assert [e["type"] for e in body["node_errors"]["unet_low"]["errors"]] == ["value_not_in_list"]


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (
            lambda g: g.__setitem__("bogus", {"class_type": "FooNode", "inputs": {}}),
            {
                "type": "missing_node_type",
                "message": "Node 'FooNode' not found. The custom node may not be installed.",
                "details": "Node ID '#bogus'",
                "extra_info": {"node_id": "bogus", "class_type": "FooNode", "node_title": "FooNode"},
            },
        ),
        (
            lambda g: g.__setitem__(
                "bogus", {"class_type": "FooNode", "inputs": {}, "_meta": {"title": "My Foo"}}
            ),
            {
                "type": "missing_node_type",
                "message": "Node 'My Foo' not found. The custom node may not be installed.",
                "details": "Node ID '#bogus'",
                "extra_info": {"node_id": "bogus", "class_type": "FooNode", "node_title": "My Foo"},
            },
        ),
        (
            lambda g: g.pop("save_video"),
            {
                "type": "prompt_no_outputs",
                "message": "Prompt has no outputs",
                "details": "",
                "extra_info": {},
            },
        ),
        (
            lambda g: g["vae"].pop("class_type"),
            {
                "type": "missing_node_type",
                "message": "Node 'ID #vae' has no class_type. The workflow may be corrupted or a custom node is "
                "missing.",
                "details": "Node ID '#vae'",
                "extra_info": {"node_id": "vae", "class_type": None, "node_title": None},
            },
        ),
    ],
)
def test_prompt_level_errors(
    url: str, mutate: Callable[[dict[str, Any]], None], error: dict[str, Any]
) -> None:
    graph = wan_graph()
    mutate(graph)
    resp = post_prompt(url, graph)
    assert resp.status_code == 400
    assert resp.json() == {"error": error, "node_errors": {}}


def test_no_prompt(url: str) -> None:
    resp = requests.post(url + "/prompt", json={"client_id": "x"}, timeout=10)
    assert resp.status_code == 400
    assert resp.json() == {
        "error": {
            "type": "no_prompt",
            "message": "No prompt provided",
            "details": "No prompt provided",
            "extra_info": {},
        },
        "node_errors": {},
    }


@pytest.mark.parametrize(
    "mutate",
    [
        _set("i2v", "width", 838),
        _set("i2v", "length", 80),
        _set("sampler_high", "cfg", "1.0"),
        _set("i2v", "width", 832.0),
        _set("video", "bit_depth", 9),  # step is not enforced
        _set("vae", "unknown_input", 1),  # inputs a node does not have are ignored
        # A dynamic combo is not checked: an unknown or missing choice drops it, and the node fails when it runs.
        _set("save_video", "codec", "vp9"),
        _del("save_video", "codec"),
        _set("save_video", "codec.encoding", "bogus"),
        lambda g: g["save_video"]["inputs"].update(
            {"format": "mp4", "codec": "h264", "codec.encoding": "re-encode", "codec.encoding.crf": 18}
        ),
    ],
)
def test_accepts_what_comfyui_accepts(
    url: str, emu: Emulator, mutate: Callable[[dict[str, Any]], None]
) -> None:
    emu.set_faults(hang=True)  # accepted is enough; keep them from running
    graph = wan_graph()
    mutate(graph)
    resp = post_prompt(url, graph)
    assert resp.status_code == 200, resp.text
    assert resp.json()["node_errors"] == {}


# ---------------------------------------------------------------------------- v0.33.0's new input forms


def _failed(details: str) -> dict[str, Any]:
    return {**PROMPT_FAILED, "details": details}


CRF_CONFIG = [
    "FLOAT",
    {
        "tooltip": "Lower values produce higher quality and larger files.",
        "default": 23.0,
        "min": 0.0,
        "max": 51.0,
        "step": 1.0,
    },
]

# Errors on the output node itself also appear in the top-level details (observed on a v0.33.0 server).
OUTPUT_NODE_ERROR_CASES = [
    (
        {"codec": "h264", "codec.encoding": "re-encode", "codec.encoding.crf": 60},
        {
            "type": "value_bigger_than_max",
            "message": "Value 60.0 bigger than max of 51.0",
            "details": "codec.encoding.crf",
            "extra_info": {
                "input_name": "codec.encoding.crf",
                "input_config": CRF_CONFIG,
                "received_value": 60.0,
            },
        },
    ),
    (
        {"codec": "h264", "codec.encoding": "re-encode"},
        {
            "type": "required_input_missing",
            "message": "Required input is missing",
            "details": "crf",
            "extra_info": {"input_name": "codec.encoding.crf"},
        },
    ),
    (
        {"codec": "h264", "codec.encoding": "re-encode", "codec.encoding.crf": "abc"},
        {
            "type": "invalid_input_type",
            "message": "Failed to convert an input value to a FLOAT value",
            "details": "codec.encoding.crf, abc, could not convert string to float: 'abc'",
            "extra_info": {
                "input_name": "codec.encoding.crf",
                "input_config": CRF_CONFIG,
                "received_value": "abc",
                "exception_message": "could not convert string to float: 'abc'",
            },
        },
    ),
    (
        {"format": "anything"},
        {
            "type": "value_not_in_list",
            "message": "Value not in list",
            "details": "format: 'anything' not in ['auto', 'mp4']",
            "extra_info": {
                "input_name": "format",
                "input_config": [
                    "COMBO",
                    {
                        "tooltip": "The format to save the video as.",
                        "default": "auto",
                        "multiselect": False,
                        "options": ["auto", "mp4"],
                    },
                ],
                "received_value": "anything",
            },
        },
    ),
]


@pytest.mark.parametrize(("inputs", "error"), OUTPUT_NODE_ERROR_CASES)
def test_save_video_inputs_are_checked(url: str, inputs: dict[str, Any], error: dict[str, Any]) -> None:
    graph = wan_graph()
    graph["save_video"]["inputs"].update(inputs)
    resp = post_prompt(url, graph)
    assert resp.status_code == 400
    assert resp.json() == {
        "error": _failed(f"{error['message']}: {error['details']}"),
        "node_errors": {
            "save_video": {"errors": [error], "dependent_outputs": ["save_video"], "class_type": "SaveVideo"}
        },
    }


def test_context_windows_require_the_new_inputs(url: str) -> None:
    graph = wan_graph()
    graph["context_high"] = {
        "class_type": "WanContextWindowsManual",
        "inputs": {
            "model": ["lora_high", 0],
            "context_length": 81,
            "context_overlap": 30,
            "context_schedule": "standard_static",
            "context_stride": 1,
            "closed_loop": False,
            "fuse_method": "pyramid",
        },
    }
    graph["shift_high"]["inputs"]["model"] = ["context_high", 0]
    resp = post_prompt(url, graph)
    assert resp.status_code == 400
    entry = resp.json()["node_errors"]["context_high"]
    assert entry["class_type"] == "WanContextWindowsManual"
    # ComfyUI checks a node's inputs in set order: the order of the three errors varies between its runs.
    assert sorted(entry["errors"], key=lambda e: e["details"]) == [
        {
            "type": "required_input_missing",
            "message": "Required input is missing",
            "details": name,
            "extra_info": {"input_name": name},
        }
        for name in ("freenoise", "retain_first_frame", "split_conds_to_windows")
    ]
    graph["context_high"]["inputs"].update(
        freenoise=True, retain_first_frame=False, split_conds_to_windows=False
    )
    graph["context_high"]["inputs"]["context_schedule"] = "bogus"
    [error] = post_prompt(url, graph).json()["node_errors"]["context_high"]["errors"]
    assert error["details"] == (
        "context_schedule: 'bogus' not in ['standard_static', 'standard_uniform', 'looped_uniform', 'batched']"
    )


def test_codec_that_names_no_option_fails_when_the_node_runs(url: str) -> None:
    for inputs in ({"codec": "vp9"}, {"codec": None}, {"codec": {"codec": "h264"}}):
        graph = wan_graph(prefix="video/codec")
        graph["save_video"]["inputs"].update(inputs)
        if inputs["codec"] is None:
            del graph["save_video"]["inputs"]["codec"]
        _, msgs = run(url, graph)
        assert [summarize(m) for m in msgs][-3:] == ["execution_error", "status(q=0)", "executing(node=None)"]
        err = msgs[-3]["data"]
        assert (err["node_id"], err["exception_type"]) == ("save_video", "TypeError")
        assert (
            err["exception_message"]
            == "SaveVideo.execute() missing 1 required positional argument: 'codec'\n"
        )
        assert sorted(err["current_inputs"]) == ["filename_prefix", "format", "video"]
        assert err["current_inputs"]["video"][0].startswith(
            "<comfy_api.latest._input_impl.video_types.VideoFromComponents object at 0x"
        )


def test_reencode_crf_sets_the_quality(url: str, tmp_path: Any) -> None:
    noise = io.BytesIO()
    Image.effect_noise((128, 96), 60).convert("RGB").save(noise, "PNG")
    assert upload(url, "noise.png", noise.getvalue()).status_code == 200
    sizes = {}
    for crf in (10, 40):
        graph = {
            "img": {"class_type": "LoadImage", "inputs": {"image": "noise.png"}},
            "rep": {"class_type": "RepeatImageBatch", "inputs": {"image": ["img", 0], "amount": 9}},
            "video": {"class_type": "CreateVideo", "inputs": {"images": ["rep", 0], "fps": 16.0}},
            "save": {
                "class_type": "SaveVideo",
                "inputs": {
                    "video": ["video", 0],
                    "filename_prefix": f"crf/{crf}",
                    "format": "mp4",
                    "codec": "h264",
                    "codec.encoding": "re-encode",
                    "codec.encoding.crf": crf,
                },
            },
        }
        prompt_id, _ = run(url, graph)
        path, info = fetch_video(url, history(url, prompt_id)["outputs"]["save"]["images"][0], tmp_path)
        assert info["count"] == 9
        sizes[crf] = os.path.getsize(path)
    assert sizes[10] > sizes[40] * 1.5


def test_save_video_passes_its_video_on(url: str, tmp_path: Any) -> None:
    # SaveVideo now has an output; GetVideoComponents takes a video apart.
    graph = wan_graph(prefix="video/first")
    graph["parts"] = {"class_type": "GetVideoComponents", "inputs": {"video": ["save_video", 0]}}
    graph["again"] = {"class_type": "CreateVideo", "inputs": {"images": ["parts", 0], "fps": ["parts", 2]}}
    graph["save_again"] = {
        "class_type": "SaveVideo",
        "inputs": {
            "video": ["again", 0],
            "filename_prefix": "video/second",
            "format": "auto",
            "codec": "auto",
        },
    }
    prompt_id, _ = run(url, graph)
    outputs = history(url, prompt_id)["outputs"]
    _, info = fetch_video(url, outputs["save_again"]["images"][0], tmp_path)
    assert (info["count"], info["fps"]) == (9, 16.0)


@pytest.fixture
def with_interpolation_model(emu: Emulator) -> Iterator[None]:
    emu.configure(models={**DEFAULT_MODELS, "frame_interpolation": ["film_net_fp16.safetensors"]})
    yield
    emu.configure(models=DEFAULT_MODELS)


@pytest.mark.usefixtures("with_interpolation_model")
def test_frame_interpolation_of_a_cross_fade(url: str, tmp_path: Any) -> None:
    graph = wan_graph(flf2v=True, length=9, prefix="video/interp")
    graph["interp_model"] = {
        "class_type": "FrameInterpolationModelLoader",
        "inputs": {"model_name": "film_net_fp16.safetensors"},
    }
    graph["interpolate"] = {
        "class_type": "FrameInterpolate",
        "inputs": {"interp_model": ["interp_model", 0], "images": ["decode", 0], "multiplier": 3},
    }
    graph["video"]["inputs"].update(images=["interpolate", 0], fps=48.0)
    prompt_id, msgs = run(url, graph)
    # One progress update per pair of input frames, counting the frames made between them.
    progress = [(m["data"]["value"], m["data"]["max"]) for m in msgs if m["type"] == "progress"]
    assert progress[-8:] == [(2 * i, 16) for i in range(1, 9)]
    _, info = fetch_video(url, history(url, prompt_id)["outputs"]["save_video"]["images"][0], tmp_path)
    assert (info["count"], info["fps"]) == ((9 - 1) * 3 + 1, 48.0)
    assert close_to(info["first"].getpixel((32, 24)), (220, 30, 30))
    assert close_to(info["middle"].getpixel((32, 24)), (125, 30, 125))
    assert close_to(info["last"].getpixel((32, 24)), (30, 30, 220))
    graph["interp_model"]["inputs"]["model_name"] = "rife.safetensors"
    [error] = post_prompt(url, graph).json()["node_errors"]["interp_model"]["errors"]
    assert error["details"] == "model_name: 'rife.safetensors' not in ['film_net_fp16.safetensors']"


def test_dependency_cycle_is_a_validation_error(url: str) -> None:
    graph = wan_graph()
    graph["lora_high"]["inputs"]["model"] = ["shift_high", 0]
    body = post_prompt(url, graph).json()
    assert body["error"] == PROMPT_FAILED
    details = (
        "shift_high (ModelSamplingSD3) -> lora_high (LoraLoaderModelOnly) -> shift_high (ModelSamplingSD3)"
    )
    assert body["node_errors"] == {
        node: {
            "errors": [
                {
                    "type": "dependency_cycle",
                    "message": "Dependency cycle detected",
                    "details": details,
                    "extra_info": {"node_id": node, "cycle_nodes": ["shift_high", "lora_high"]},
                }
            ],
            "dependent_outputs": ["save_video"],
            "class_type": class_type,
        }
        for node, class_type in (("shift_high", "ModelSamplingSD3"), ("lora_high", "LoraLoaderModelOnly"))
    }


def test_prompt_of_the_wrong_shape_is_a_server_error(url: str) -> None:
    graph = wan_graph()
    graph["vae"] = "not a node"
    resp = post_prompt(url, graph)
    assert (resp.status_code, resp.text) == (500, "500 Internal Server Error\n\nServer got itself in trouble")


@pytest.mark.parametrize("prompt_id", ["abc", "6F9619FF-8B86-D011-B42D-00C04FC964FF", "", 5])
def test_client_prompt_id_must_be_a_canonical_uuid(url: str, prompt_id: Any) -> None:
    resp = post_prompt(url, wan_graph(), prompt_id=prompt_id)
    assert resp.status_code == 400
    assert resp.json() == {
        "error": {
            "type": "invalid_prompt_id",
            "message": "prompt_id must be a valid UUID",
            "details": "prompt_id must be a UUID string in canonical lowercase hyphenated form; omit it to let the "
            "server generate one",
            "extra_info": {},
        },
        "node_errors": {},
    }


def test_history_delay_opens_the_race_after_execution_success(url: str, emu: Emulator) -> None:
    # ComfyUI sends execution_success before it writes the history entry; history_delay widens that window so
    # that a client reading /history on execution_success reliably finds nothing.
    emu.configure(history_delay=0.5)
    conn = Conn(url)
    try:
        prompt_id = post_prompt(url, wan_graph(prefix="video/race"), conn.client_id).json()["prompt_id"]
        while conn.recv()["type"] != "execution_success":
            pass
        assert requests.get(f"{url}/history/{prompt_id}", timeout=10).json() == {}
        started = time.monotonic()
        rest = [conn.recv(timeout=5), conn.recv(timeout=5)]
        assert time.monotonic() - started > 0.3
        # status (sent once the entry is written), then executing null: now the entry is there.
        assert [summarize(m) for m in rest] == ["status(q=0)", "executing(node=None)"]
        assert history(url, prompt_id)["status"]["status_str"] == "success"
    finally:
        conn.close()
    emu.reset()
    assert emu.state()["config"]["history_delay"] == 0.0


# ------------------------------------------------------------------------------------------ failures


def test_execution_error_fault(url: str, emu: Emulator) -> None:
    emu.set_faults(exec_error_node="sampler_high")
    prompt_id, msgs = run(url, wan_graph())
    types = [summarize(m) for m in msgs]
    assert types[-4:] == [
        "executing(node='sampler_high')",
        "execution_error",
        "status(q=0)",
        "executing(node=None)",
    ]
    assert "execution_success" not in types
    err = msgs[-3]["data"]
    assert list(err) == [
        "prompt_id",
        "node_id",
        "node_type",
        "executed",
        "exception_message",
        "exception_type",
        "traceback",
        "current_inputs",
        "current_outputs",
        "timestamp",
    ]
    assert (err["prompt_id"], err["node_id"], err["node_type"]) == (
        prompt_id,
        "sampler_high",
        "KSamplerAdvanced",
    )
    assert err["executed"] == I2V_ORDER[: I2V_ORDER.index("sampler_high")]
    assert err["exception_type"] == "torch.OutOfMemoryError"
    assert err["exception_message"].startswith("Allocation on device \n")
    assert all(isinstance(line, str) for line in err["traceback"])
    assert err["current_inputs"]["noise_seed"] == [42]
    assert err["current_inputs"]["model"][0].startswith("<comfy.model_patcher.ModelPatcher object at 0x")
    assert sorted(err["current_outputs"]) == sorted(wan_graph())
    entry = history(url, prompt_id)
    assert entry["outputs"] == {}
    assert entry["meta"] == {}
    assert (entry["status"]["status_str"], entry["status"]["completed"]) == ("error", False)
    assert [m[0] for m in entry["status"]["messages"]] == [
        "execution_start",
        "execution_cached",
        "execution_error",
    ]


def test_execution_error_at_a_loader_matches_the_record(url: str, emu: Emulator) -> None:
    emu.set_faults(exec_error_node="vae")
    _, msgs = run(url, wan_graph())
    assert [summarize(m) for m in msgs] == [
        "status(q=1)",
        "status(q=1)",
        "execution_start",
        "execution_cached",
        "progress_state(vae:running)",
        "executing(node='vae')",
        "execution_error",
        "status(q=0)",
        "executing(node=None)",
    ]
    err = msgs[6]["data"]
    assert err["exception_message"] == "Error while deserializing header: header too large\n"
    assert err["exception_type"] == "safetensors._safetensors_rust.SafetensorError"
    assert err["current_inputs"] == {"vae_name": [VAE]}
    assert err["executed"] == []


def test_hang_until_interrupt(url: str, emu: Emulator) -> None:
    emu.set_faults(hang=True)
    conn = Conn(url)
    try:
        prompt_id = post_prompt(url, wan_graph(), conn.client_id).json()["prompt_id"]
        assert [summarize(conn.recv()) for _ in range(3)] == ["status(q=1)", "status(q=1)", "execution_start"]
        with pytest.raises(websocket.WebSocketTimeoutException):
            conn.recv(timeout=0.3)
        queue = requests.get(url + "/queue", timeout=10).json()
        assert [item[1] for item in queue["queue_running"]] == [prompt_id]
        started = time.monotonic()
        assert requests.post(url + "/interrupt", timeout=10).status_code == 200
        msgs = conn.until_done(prompt_id)
        assert time.monotonic() - started < 2.0
    finally:
        conn.close()
    assert [summarize(m) for m in msgs] == [
        "execution_cached",
        "progress_state(vae:running)",
        "executing(node='vae')",
        "execution_interrupted",
        "status(q=0)",
        "executing(node=None)",
    ]
    data = msgs[3]["data"]
    assert list(data) == ["prompt_id", "node_id", "node_type", "executed", "timestamp"]
    assert (data["node_id"], data["node_type"], data["executed"]) == ("vae", "VAELoader", [])
    status = history(url, prompt_id)["status"]
    assert (status["status_str"], status["completed"]) == ("error", False)
    assert emu.state()["interrupts"] >= 1


def test_interrupt_during_a_sampler_step(url: str, emu: Emulator) -> None:
    emu.configure(step_delay=5.0)
    conn = Conn(url)
    try:
        prompt_id = post_prompt(url, wan_graph(), conn.client_id).json()["prompt_id"]
        while conn.recv()["data"].get("node") != "sampler_high":
            pass
        # A targeted interrupt for a prompt that is not running is ignored.
        requests.post(url + "/interrupt", json={"prompt_id": "not-running"}, timeout=10)
        started = time.monotonic()
        requests.post(url + "/interrupt", json={"prompt_id": prompt_id}, timeout=10)
        msgs = conn.until_done(prompt_id)
        assert time.monotonic() - started < 2.0  # the step takes 5 s
    finally:
        conn.close()
    assert [summarize(m) for m in msgs] == ["execution_interrupted", "status(q=0)", "executing(node=None)"]
    assert msgs[0]["data"]["node_id"] == "sampler_high"
    assert msgs[0]["data"]["executed"] == I2V_ORDER[: I2V_ORDER.index("sampler_high")]


def test_queue_listing_delete_and_clear(url: str, emu: Emulator) -> None:
    emu.set_faults(hang=True)
    secret = {"api_key_comfy_org": "secret-key"}  # kept out of /queue and /history
    ids = [
        post_prompt(url, wan_graph(), "q-client", extra_data=dict(secret)).json()["prompt_id"]
        for _ in range(3)
    ]
    queue = requests.get(url + "/queue", timeout=10).json()
    assert [item[1] for item in queue["queue_running"]] == ids[:1]
    assert [item[1] for item in queue["queue_pending"]] == ids[1:]
    assert all(len(item) == 5 for item in queue["queue_running"] + queue["queue_pending"])
    _, pid, _, extra, outputs = queue["queue_pending"][0]
    assert (pid, set(extra), outputs) == (ids[1], {"client_id", "create_time"}, ["save_video"])
    assert requests.post(url + "/queue", json={"delete": [ids[2]]}, timeout=10).status_code == 200
    assert [i[1] for i in requests.get(url + "/queue", timeout=10).json()["queue_pending"]] == [ids[1]]
    requests.post(url + "/interrupt", timeout=10)
    deadline = time.monotonic() + 5
    while requests.get(url + "/queue", timeout=10).json()["queue_running"][:1] != [] and (
        requests.get(url + "/queue", timeout=10).json()["queue_running"][0][1] == ids[0]
    ):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    requests.post(url + "/interrupt", timeout=10)
    while requests.get(url + "/queue", timeout=10).json()["queue_running"]:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert requests.get(f"{url}/history/{ids[2]}", timeout=10).json() == {}
    for pid in ids[:2]:
        entry = history(url, pid)
        assert entry["status"]["messages"][-1][0] == "execution_interrupted"
        assert "secret-key" not in json.dumps(entry)
    assert ids[2] in emu.state()["queue_deletes"]


def test_drop_ws_then_reconnect(url: str, emu: Emulator) -> None:
    emu.configure(step_delay=0.2)
    emu.set_faults(drop_ws_after_steps=1)
    conn = Conn(url)
    prompt_id = post_prompt(url, wan_graph(), conn.client_id).json()["prompt_id"]
    before: list[dict[str, Any]] = []
    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError, OSError)):
        while True:
            before.append(conn.recv(timeout=5))
    conn.ws.close()
    assert summarize(before[-1]) == "progress(1/2 node=sampler_high)"

    again = Conn(url, conn.client_id)
    try:
        assert again.hello["data"]["sid"] == conn.client_id
        assert again.hello["data"]["status"]["exec_info"]["queue_remaining"] == 1
        resumed = again.recv()
        # "executing" with only the node the job is at (sampler_high unless this machine is very slow)
        assert resumed["type"] == "executing"
        assert list(resumed["data"]) == ["node"]
        assert resumed["data"]["node"] in I2V_ORDER
        rest = again.until_done(prompt_id)
    finally:
        again.close()
    assert [summarize(m) for m in rest][-3:] == ["execution_success", "status(q=0)", "executing(node=None)"]
    assert history(url, prompt_id)["status"]["status_str"] == "success"
    assert conn.client_id in emu.state()["ws_drops"]

    # After the job, a reconnect gets only the status message.
    late = Conn(url, conn.client_id)
    try:
        assert summarize(late.hello) == "status(q=0)"
        with pytest.raises(websocket.WebSocketTimeoutException):
            late.recv(timeout=0.2)
    finally:
        late.close()


def test_no_output_fault(url: str, emu: Emulator) -> None:
    emu.set_faults(no_output=True)
    prompt_id, msgs = run(url, wan_graph(prefix="video/none"))
    assert "executed" not in [m["type"] for m in msgs]
    assert "execution_success" in [m["type"] for m in msgs]
    entry = history(url, prompt_id)
    assert (entry["outputs"], entry["meta"]) == ({}, {})


def test_output_padding_and_view_404(url: str, emu: Emulator, tmp_path: Any) -> None:
    emu.set_faults(output_padding_mb=2)
    prompt_id, _ = run(url, wan_graph(prefix="video/padded"))
    image = history(url, prompt_id)["outputs"]["save_video"]["images"][0]
    path, info = fetch_video(url, image, tmp_path)
    assert os.path.getsize(path) > 2 * 1024 * 1024
    assert info["count"] == 9

    emu.set_faults(view_404=True)
    assert requests.get(url + "/view", params=image, timeout=10).status_code == 404
    emu.set_faults()
    assert requests.get(url + "/view", params=image, timeout=10).status_code == 200


def test_crash_in_thread_mode() -> None:
    with Emulator() as emu:
        upload(emu.url, "start.png", png_bytes((200, 0, 0)))
        emu.set_faults(crash_after_steps=3)
        conn = Conn(emu.url)
        post_prompt(emu.url, wan_graph(), conn.client_id)
        seen: list[str] = []
        with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError, OSError)):
            while True:
                seen.append(summarize(conn.recv(timeout=5)))
        conn.ws.close()
        assert seen[-1] == "progress(1/2 node=sampler_low)"
        with pytest.raises(requests.ConnectionError):
            requests.get(emu.url + "/queue", timeout=2)
        assert emu.crashed


# -------------------------------------------------------------------------------------- HTTP surface


def test_upload_rename_overwrite_and_subfolder(url: str, emu: Emulator) -> None:
    first = png_bytes((1, 2, 3))
    assert upload(url, "up.png", first).json() == {"name": "up.png", "subfolder": "", "type": "input"}
    assert upload(url, "up.png", first).json() == {"name": "up.png", "subfolder": "", "type": "input"}
    other = png_bytes((4, 5, 6))
    assert upload(url, "up.png", other).json() == {"name": "up (1).png", "subfolder": "", "type": "input"}
    assert upload(url, "up.png", other, overwrite="true").json()["name"] == "up.png"
    sub = upload(url, "up.png", first, subfolder="sub", type="input")
    assert sub.json() == {"name": "up.png", "subfolder": "sub", "type": "input"}
    assert upload(url, "up.png", first, type="temp").json() == {
        "name": "up.png",
        "subfolder": "",
        "type": "temp",
    }
    assert upload(url, "../evil.png", first).status_code == 400
    assert upload(url, "", first).status_code == 500  # a part without a file name breaks ComfyUI's handler
    wrong = requests.post(url + "/upload/image", files={"file": ("x.png", first, "image/png")}, timeout=10)
    assert wrong.status_code == 400
    combo = requests.get(url + "/object_info/LoadImage", timeout=10).json()["LoadImage"]["input"]["required"]
    assert combo["image"][0] == sorted(combo["image"][0])
    assert {"up.png", "up (1).png", "start.png", "end.png"} <= set(combo["image"][0])
    assert "up (1).png" in emu.state()["uploads"]
    # Files in subfolders and annotated names are valid LoadImage values.
    for name in ("sub/up.png", "up.png [input]"):
        assert post_prompt(url, wan_graph(start=name)).status_code == 200


def test_history_and_view_misses(url: str) -> None:
    assert requests.get(url + "/history/not-a-prompt", timeout=10).json() == {}
    missing = requests.get(
        url + "/view", params={"filename": "nope.mp4", "subfolder": "video", "type": "output"}, timeout=10
    )
    assert missing.status_code == 404
    assert requests.get(url + "/view", params={"filename": "../x.mp4"}, timeout=10).status_code == 400
    prompt_id, _ = run(url, wan_graph(prefix="video/hist"))
    assert prompt_id in requests.get(url + "/history", params={"max_items": 1}, timeout=10).json()
    assert requests.post(url + "/history", json={"delete": [prompt_id]}, timeout=10).status_code == 200
    assert requests.get(f"{url}/history/{prompt_id}", timeout=10).json() == {}
    requests.post(url + "/history", json={"clear": True}, timeout=10)
    assert requests.get(url + "/history", timeout=10).json() == {}


def test_misc_endpoints(url: str) -> None:
    root = requests.get(url + "/", timeout=10)
    assert root.status_code == 200
    assert root.headers["Content-Type"].startswith("text/html")
    stats = requests.get(url + "/system_stats", timeout=10).json()
    assert stats["system"]["comfyui_version"] == "0.33.0"
    assert set(stats["devices"][0]) == {
        "name",
        "type",
        "index",
        "vram_total",
        "vram_free",
        "torch_vram_total",
        "torch_vram_free",
    }
    assert requests.get(url + "/queue", timeout=10).json() == {"queue_running": [], "queue_pending": []}
    assert requests.get(url + "/prompt", timeout=10).json() == {"exec_info": {"queue_remaining": 0}}
    info = requests.get(url + "/object_info", timeout=10).json()
    assert len(info) == 27  # the recorded Wan classes but LoadVideo
    assert info["UNETLoader"]["input"]["required"]["unet_name"] == [[HIGH, LOW]]
    assert info["VAELoader"]["input"]["required"]["vae_name"] == [[VAE, "pixel_space"]]
    assert info["SaveVideo"]["output_node"] is True
    assert requests.get(url + "/object_info/NoSuchNode", timeout=10).json() == {}
    conn = Conn(url)
    try:
        conn.ws.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": False}}))
        assert conn.recv() == {
            "type": "feature_flags",
            "data": {
                "supports_preview_metadata": True,
                "supports_model_type_tags": True,
                "max_upload_size": 104857600,
                "extension": {"manager": {"supports_v4": True}},
                "node_replacements": True,
                "assets": False,
            },
        }
    finally:
        conn.close()
    assert (
        requests.get(url + "/api/object_info/SaveVideo", timeout=10).json()["SaveVideo"]["name"]
        == "SaveVideo"
    )


def test_models_folders_and_model_dirs(tmp_path: Any) -> None:
    lora_dir = tmp_path / "loras"
    lora_dir.mkdir()
    with Emulator(model_dirs={"loras": [lora_dir], "unet": [tmp_path / "unet"]}) as emu:
        folders = requests.get(emu.url + "/models", timeout=10).json()
        assert {"diffusion_models", "loras", "text_encoders", "vae", "clip_vision"} <= set(folders)
        assert requests.get(emu.url + "/models/diffusion_models", timeout=10).json() == [HIGH, LOW]
        assert requests.get(emu.url + "/models/unet", timeout=10).status_code == 404  # as in ComfyUI
        assert requests.get(emu.url + "/models/clip_vision", timeout=10).json() == []
        assert requests.get(emu.url + "/models/loras", timeout=10).json() == [LORA_HIGH, LORA_LOW]

        (lora_dir / "style.safetensors").write_bytes(b"x")
        (lora_dir / "notes.txt").write_text("not a model")
        (lora_dir / "nested").mkdir()
        (lora_dir / "nested" / "deep.pt").write_bytes(b"x")
        (tmp_path / "unet").mkdir()
        (tmp_path / "unet" / "extra.gguf").write_bytes(b"x")
        assert requests.get(emu.url + "/models/loras", timeout=10).json() == sorted(
            [LORA_HIGH, LORA_LOW, "nested/deep.pt", "style.safetensors"]
        )
        info = requests.get(emu.url + "/object_info/LoraLoaderModelOnly", timeout=10).json()
        assert "style.safetensors" in info["LoraLoaderModelOnly"]["input"]["required"]["lora_name"][0]

        upload(emu.url, "start.png", png_bytes((9, 9, 9)))
        graph = wan_graph()
        graph["lora_high"]["inputs"]["lora_name"] = "style.safetensors"
        assert post_prompt(emu.url, graph).status_code == 200
        emu.configure(models={"diffusion_models": [HIGH]})
        assert post_prompt(emu.url, graph).status_code == 400  # LOW is gone


def test_startup_delay_binds_late() -> None:
    emu = Emulator(startup_delay=0.5, wait=False)
    emu.start()
    try:
        with pytest.raises(requests.ConnectionError):
            requests.get(emu.url + "/", timeout=2)
        emu.wait_ready(5)
        assert requests.get(emu.url + "/", timeout=2).status_code == 200
    finally:
        emu.stop()


# ---------------------------------------------------------------------------------------- subprocess


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("volume")
    (root / "models" / "diffusion_models").mkdir(parents=True)
    (root / "models" / "diffusion_models" / "downloaded.safetensors").write_bytes(b"x")
    (root / "extra_model_paths.yaml").write_text(
        f"runpod:\n  base_path: {root}\n  diffusion_models: models/diffusion_models\n"
    )
    return root


@pytest.fixture(scope="module")
def processes(volume: Any) -> Iterator[dict[str, EmulatorProcess]]:
    """Two emulator processes, started together (process start-up is the slow part)."""
    comfy_args = [
        "--listen",
        "127.0.0.1",
        "--disable-auto-launch",
        "--use-sage-attention",
        "--fast",
        "fp16_accumulation",
        "--extra-model-paths-config",
        str(volume / "extra_model_paths.yaml"),
    ]
    procs = {
        "main": EmulatorProcess(port_file=volume / "port", extra_args=comfy_args, wait=False),
        "crash": EmulatorProcess(faults={"crash_after_steps": 1}, wait=False),
    }
    try:
        for proc in procs.values():
            proc.start()
        for proc in procs.values():
            proc.wait_ready(30)
        yield procs
    finally:
        for proc in procs.values():
            proc.stop()


def test_process_crash_exits_abruptly(processes: dict[str, EmulatorProcess]) -> None:
    proc = processes["crash"]
    upload(proc.url, "start.png", png_bytes((200, 0, 0)))
    conn = Conn(proc.url)
    post_prompt(proc.url, wan_graph(), conn.client_id)
    seen: list[str] = []
    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError, OSError)):
        while True:
            seen.append(summarize(conn.recv(timeout=10)))
    conn.ws.close()
    assert proc.wait_exit(10) == 1
    assert seen[-1] == "progress(1/2 node=sampler_high)"
    with pytest.raises(requests.ConnectionError):
        requests.get(proc.url + "/", timeout=2)


def test_process_stands_in_for_comfyui_main(processes: dict[str, EmulatorProcess], volume: Any) -> None:
    proc = processes["main"]
    assert int((volume / "port").read_text()) == proc.port
    names = requests.get(proc.url + "/models/diffusion_models", timeout=10).json()
    assert names == sorted([HIGH, LOW, "downloaded.safetensors"])
    assert proc.set_faults(hang=True) == {"hang": True}
    assert proc.state()["faults"] == {"hang": True}
    proc.reset()
    assert proc.state()["faults"] == {}
    assert proc.terminate() == 0  # SIGTERM: clean exit
