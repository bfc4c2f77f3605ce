"""The ComfyUI emulator, driven as a client drives ComfyUI: plain requests + websocket-client.

It is for speed and faults; the real ComfyUI (tests/real) judges graphs. These tests hold it to what the worker
relies on: the protocol as recorded from ComfyUI v0.33.0 (``tests/fixtures/traces``: the messages of each
recorded prompt in order, the history, the videos' frames, size and fps, the recorded refusals), and the fault
modes the real server cannot be made to show.
"""

from __future__ import annotations

import copy
import io
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import av
import pytest
import requests
import websocket
from PIL import Image

from tests.emulator import Emulator, EmulatorProcess

TRACES = Path(__file__).resolve().parent / "fixtures" / "traces"
TRACE_MODELS = {
    "diffusion_models": ["tiny_wan_i2v_high.safetensors", "tiny_wan_i2v_low.safetensors"],
    "loras": ["tiny_lora.safetensors"],
    "text_encoders": ["tiny_umt5_xxl_zero_fp8.safetensors"],
    "vae": ["broken.safetensors", "tiny_wan_2.1_vae_random.safetensors"],
    "frame_interpolation": ["tiny_film.safetensors"],
}
"""The files the recording server had."""
RED, BLUE = (220, 30, 30), (30, 30, 220)


def trace(name: str) -> dict[str, Any]:
    return json.loads((TRACES / f"{name}.json").read_text(encoding="utf-8"))


def graph() -> dict[str, Any]:
    """The recorded I2V graph (9 frames of 128x128, 2 + 2 steps, start image ``rec_start.png``), with a seed of
    its own: its samplers and what follows them run, never cached."""
    prompt = copy.deepcopy(trace("tiny_wan22_i2v_e2e_success")["request"]["prompt"])
    seed = uuid.uuid4().int % 2**32
    for sampler in ("sampler_high", "sampler_low"):
        prompt[sampler]["inputs"]["noise_seed"] = seed
    return prompt


def png(color: tuple[int, int, int], size: tuple[int, int] = (128, 128)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def upload(url: str, name: str, data: bytes, **fields: str) -> requests.Response:
    return requests.post(
        f"{url}/upload/image", files={"image": (name, data, "image/png")}, data=fields, timeout=10
    )


class Conn:
    """A client of /ws."""

    def __init__(self, url: str, client_id: str | None = None) -> None:
        self.client_id = client_id or uuid.uuid4().hex
        self.ws = websocket.create_connection(f"ws{url[4:]}/ws?clientId={self.client_id}", timeout=10)
        self.messages = [self.recv()]

    def recv(self) -> dict[str, Any]:
        message: dict[str, Any] = json.loads(self.ws.recv())
        return message

    def until(self, done: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        while not done(self.messages[-1]):
            self.messages.append(self.recv())
        return self.messages

    def until_end(self, prompt_id: str) -> list[dict[str, Any]]:
        return self.until(
            lambda m: m["type"] == "executing" and m["data"] == {"node": None, "prompt_id": prompt_id}
        )

    def queue(self, url: str, prompt: dict[str, Any]) -> str:
        response = requests.post(
            f"{url}/prompt", json={"prompt": prompt, "client_id": self.client_id}, timeout=10
        )
        assert response.status_code == 200, response.text
        prompt_id: str = response.json()["prompt_id"]
        return prompt_id

    def close(self) -> None:
        self.ws.close()


def run(url: str, prompt: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    conn = Conn(url)
    try:
        prompt_id = conn.queue(url, prompt)
        return prompt_id, conn.until_end(prompt_id)
    finally:
        conn.close()


def history(url: str, prompt_id: str) -> dict[str, Any]:
    entry: dict[str, Any] = requests.get(f"{url}/history/{prompt_id}", timeout=10).json()[prompt_id]
    return entry


def video(url: str, entry: dict[str, Any]) -> tuple[int, int, int, float, list[Image.Image]]:
    """(frames, width, height, fps, [first, last frame]) of the history entry's video, read through /view."""
    response = requests.get(f"{url}/view", params=entry["outputs"]["save_video"]["images"][0], timeout=10)
    assert response.status_code == 200 and response.headers["Content-Type"] == "video/mp4"
    with av.open(io.BytesIO(response.content)) as container:
        stream = container.streams.video[0]
        frames = [f.to_image() for f in container.decode(video=0)]
        return len(frames), stream.width, stream.height, float(stream.average_rate), [frames[0], frames[-1]]


def summary(message: dict[str, Any]) -> str:
    """A message as the traces' ``ws_types`` list names it, with what the worker reads of it."""
    kind, data = message["type"], message["data"]
    if kind == "status":
        return f"status({data['status']['exec_info']['queue_remaining']})"
    if kind == "progress_state":
        return "progress_state(" + ",".join(f"{k}:{v['state']}" for k, v in data["nodes"].items()) + ")"
    if kind in ("executing", "executed"):
        return f"{kind}({data['node']})"
    if kind == "progress":
        return f"progress({data['node']} {data['value']}/{data['max']})"
    if kind == "execution_cached":
        return f"execution_cached({','.join(data['nodes'])})"
    if kind in ("execution_error", "execution_interrupted"):
        return f"{kind}({data['node_id']} {data['node_type']})"
    return str(kind)


# ------------------------------------------------------------------------------------- the recorded traces

SESSION = {
    "tiny_wan22_i2v_e2e_success": (9, 128, 128, 16.0),
    "tiny_wan22_flf2v_e2e_success": (9, 128, 128, 16.0),
    "cached_resubmit": (9, 128, 128, 16.0),
    "tiny_wan22_i2v_context_windows": (33, 128, 128, 16.0),
    "tiny_wan22_i2v_interpolate_x2": (17, 128, 128, 32.0),
    "wan22_i2v_exec_fail": None,
    "interrupt": None,
}
"""The traces of one server session, in the order they were recorded, and their videos."""


@pytest.fixture(scope="module")
def session() -> Iterator[dict[str, tuple[list[dict[str, Any]], dict[str, Any], Any]]]:
    """Each recorded prompt sent again, in order: its messages, history entry and video. The recording server
    had run a prompt before (its loaders and text encodes were cached): one with another image stands in."""
    out = {}
    with Emulator(models=TRACE_MODELS) as emu:
        for name, color in (("rec_start.png", RED), ("rec_end.png", BLUE), ("warm.png", (9, 9, 9))):
            upload(emu.url, name, png(color)).raise_for_status()
        warm = graph()
        warm["start_image"]["inputs"]["image"] = "warm.png"
        run(emu.url, warm)
        for name, frames in SESSION.items():
            if name == "wan22_i2v_exec_fail":
                emu.set_faults(exec_error_node="vae")  # the recorded VAE file was broken
            if name == "interrupt":
                emu.configure(node_delay=1.0)
            conn = Conn(emu.url)
            prompt_id = conn.queue(emu.url, trace(name)["request"]["prompt"])
            if name == "interrupt":  # as recorded: while the conditioning runs
                conn.until(lambda m: m["type"] == "executing" and m["data"]["node"] == "conditioning")
                requests.post(f"{emu.url}/interrupt", json={"prompt_id": prompt_id}, timeout=10)
            messages = conn.until_end(prompt_id)
            conn.close()
            emu.reset(cache=False)
            entry = history(emu.url, prompt_id)
            out[name] = messages, entry, video(emu.url, entry)[:4] if frames else None
        yield out


@pytest.mark.parametrize("name", SESSION)
def test_the_recorded_prompts_get_the_recorded_messages(session: dict[str, Any], name: str) -> None:
    messages, _, _ = session[name]
    want = [summary(m) for m in trace(name)["ws_messages"]]
    if name == "interrupt":
        # Recorded under ComfyUI's default cache, which kept the good VAE through the failed prompt before. The
        # emulator caches as the image's --cache-classic does: that prompt (another VAE file) dropped it at its
        # start, so it runs here again before the conditioning.
        cached = want.index(
            "execution_cached(high_model,low_model,lora_high_1,lora_low_1,shift_high,shift_low,text_encoder,vae,positive,negative,start_image)"
        )
        want[cached] = want[cached].replace(",vae", "")
        want[cached + 1 : cached + 2] = [
            "progress_state(vae:running)",
            "executing(vae)",
            "progress_state(vae:finished)",
            "progress_state(vae:finished,conditioning:running)",
        ]
    assert [summary(m) for m in messages] == want


@pytest.mark.parametrize("name", SESSION)
def test_the_recorded_prompts_get_the_recorded_history_and_video(session: dict[str, Any], name: str) -> None:
    _, entry, got = session[name]
    [want] = trace(name)["history"].values()
    assert entry["status"]["status_str"] == want["status"]["status_str"]
    assert [m[0] for m in entry["status"]["messages"]] == [m[0] for m in want["status"]["messages"]]
    assert entry["outputs"].keys() == want["outputs"].keys()
    for node, ui in entry["outputs"].items():
        assert [i["subfolder"] for i in ui["images"]] == [
            i["subfolder"] for i in want["outputs"][node]["images"]
        ]
    assert (entry["prompt"][2], entry["prompt"][4]) == (want["prompt"][2], want["prompt"][4])
    assert got == SESSION[name]


def test_the_video_shows_the_start_image_then_fades_to_the_end_image(tmp_path: Path) -> None:
    with Emulator(models=TRACE_MODELS) as emu:
        for name, color in (("rec_start.png", RED), ("rec_end.png", BLUE)):
            upload(emu.url, name, png(color, (200, 100))).raise_for_status()  # cropped to the centre
        for name, last in (("tiny_wan22_i2v_e2e_success", RED), ("tiny_wan22_flf2v_e2e_success", BLUE)):
            prompt_id, _ = run(emu.url, trace(name)["request"]["prompt"])
            *_, (first_frame, last_frame) = video(emu.url, history(emu.url, prompt_id))
            for frame, color in ((first_frame, RED), (last_frame, last)):
                pixel = frame.getpixel((64, 64))
                assert all(abs(a - b) < 30 for a, b in zip(pixel, color, strict=True)), (name, pixel)


def verdict(status: int, body: dict[str, Any]) -> tuple[Any, ...]:
    """What a client relies on in a refusal (the real tier's parity test compares the same)."""
    errors = sorted(
        (node, e["type"], e["extra_info"].get("input_name"), entry["class_type"])
        for node, entry in body["node_errors"].items()
        for e in entry["errors"]
    )
    return status, body["error"]["type"], body["error"]["extra_info"].get("node_id"), errors


def with_context_windows(prompt: dict[str, Any]) -> dict[str, Any]:
    windows = trace("tiny_wan22_i2v_context_windows")["request"]["prompt"]
    prompt.update({n: windows[n] for n in ("context_high", "context_low", "shift_high", "shift_low")})
    return prompt


REFUSALS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "value_smaller_than_min": lambda g: g["sampler_high"]["inputs"].update(steps=0),
    "missing_model": lambda g: g["high_model"]["inputs"].update(unet_name="missing.safetensors"),
    "required_input_missing": lambda g: g["conditioning"]["inputs"].pop("width"),
    "unknown_class": lambda g: g["decode"].update(class_type="NoSuchNode"),
    "context_without_freenoise": lambda g: with_context_windows(g)["context_high"]["inputs"].pop("freenoise"),
    "missing_image": lambda g: g["start_image"]["inputs"].update(image="not_uploaded.png"),
    "bad_link": lambda g: g["decode"]["inputs"].update(samples=["nope", 0]),
}


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with Emulator(models=TRACE_MODELS) as emu:
        recorded = trace("upload_image")["start"]
        response = upload(emu.url, "rec_start.png", png(RED))
        assert (response.status_code, response.json()) == (recorded["status"], recorded["body"])
        yield emu


@pytest.fixture
def url(emu: Emulator) -> str:
    emu.reset()
    return emu.url


@pytest.mark.parametrize("case", REFUSALS)
def test_the_recorded_refusals(url: str, case: str) -> None:
    recorded = trace("validation_failures")[case]
    prompt = graph()
    REFUSALS[case](prompt)
    response = requests.post(f"{url}/prompt", json={"prompt": prompt}, timeout=10)
    assert verdict(response.status_code, response.json()) == verdict(recorded["status"], recorded["body"])


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (lambda g: g.pop("save_video"), "prompt_no_outputs"),
        (lambda g: g["sampler_high"]["inputs"].update(latent_image=["decode", 0]), "return_type_mismatch"),
        (lambda g: g["sampler_high"]["inputs"].update(cfg="plenty"), "invalid_input_type"),
        (lambda g: g["decode"]["inputs"].update(samples=["sampler_low", 0, 1]), "bad_linked_input"),
        (lambda g: g["conditioning"]["inputs"].update(width=100_000), "value_bigger_than_max"),
        (
            lambda g: g["high_model"]["inputs"].update(model=["shift_high", 0]),
            None,
        ),  # an input it does not have
    ],
)
def test_other_refusals(url: str, change: Callable[[dict[str, Any]], Any], error: str | None) -> None:
    prompt = graph()
    change(prompt)
    response = requests.post(f"{url}/prompt", json={"prompt": prompt}, timeout=10)
    if error is None:
        assert response.status_code == 200, response.text
    else:
        assert response.status_code == 400 and error in response.text, response.text


def test_a_prompt_of_the_wrong_shape_is_a_server_error(url: str) -> None:
    response = requests.post(f"{url}/prompt", json={"prompt": {"a": 5}}, timeout=10)
    assert response.status_code == 500
    response = requests.post(f"{url}/prompt", json={"prompt": graph(), "prompt_id": "abc"}, timeout=10)
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_prompt_id"


# ----------------------------------------------------------------------------------------------- faults


def test_history_delay_opens_the_race_after_execution_success(emu: Emulator, url: str) -> None:
    emu.configure(history_delay=0.5)
    conn = Conn(url)
    prompt_id = conn.queue(url, graph())
    conn.until(lambda m: m["type"] == "execution_success")
    assert requests.get(f"{url}/history/{prompt_id}", timeout=10).json() == {}
    conn.until_end(prompt_id)
    conn.close()
    assert history(url, prompt_id)["status"]["completed"] is True


def test_hang_until_interrupt_then_interrupted_at_the_first_node(emu: Emulator, url: str) -> None:
    emu.set_faults(hang=True)
    conn = Conn(url)
    prompt_id = conn.queue(url, graph())
    conn.until(lambda m: m["type"] == "execution_start")
    with pytest.raises(websocket.WebSocketTimeoutException):
        conn.ws.settimeout(0.5)
        conn.recv()
    conn.ws.settimeout(10)
    assert emu.state()["running"] == prompt_id
    requests.post(f"{url}/interrupt", json={}, timeout=10)
    kinds = [m["type"] for m in conn.until_end(prompt_id)]
    conn.close()
    assert kinds[-5:] == ["progress_state", "executing", "execution_interrupted", "status", "executing"]
    assert history(url, prompt_id)["status"]["status_str"] == "error"


def test_an_interrupt_stops_a_sampler_between_steps(emu: Emulator, url: str) -> None:
    emu.configure(step_delay=0.2)
    conn = Conn(url)
    prompt_id = conn.queue(url, graph())
    conn.until(lambda m: m["type"] == "progress")
    other = str(uuid.uuid4())  # not the running prompt: nothing stops
    requests.post(f"{url}/interrupt", json={"prompt_id": other}, timeout=10)
    conn.messages.append(conn.recv())
    conn.until(lambda m: m["type"] == "progress")
    requests.post(f"{url}/interrupt", json={"prompt_id": prompt_id}, timeout=10)
    messages = conn.until_end(prompt_id)
    conn.close()
    assert [m["data"]["value"] for m in messages if m["type"] == "progress"] == [1, 2]
    stopped = [m["data"]["node_id"] for m in messages if m["type"] == "execution_interrupted"]
    assert stopped == ["sampler_low"]


def test_a_dropped_socket_can_reconnect_and_sees_the_rest(emu: Emulator, url: str) -> None:
    emu.configure(step_delay=0.05)
    emu.set_faults(drop_ws_after_steps=1)
    conn = Conn(url)
    prompt_id = conn.queue(url, graph())
    with pytest.raises((websocket.WebSocketException, OSError)):
        conn.until(lambda m: False)
    again = Conn(url, conn.client_id)
    assert [m["type"] for m in again.until(lambda m: m["type"] == "executing")] == ["status", "executing"]
    assert "prompt_id" not in again.messages[-1]["data"]  # the node now running, as ComfyUI tells a reconnect
    again.until_end(prompt_id)
    again.close()
    assert emu.state()["ws_drops"] == [conn.client_id]


def test_queue_delete_and_clear(emu: Emulator, url: str) -> None:
    emu.set_faults(hang=True)
    conn = Conn(url)
    ids = [conn.queue(url, graph()) for _ in range(3)]
    queue = requests.get(f"{url}/queue", timeout=10).json()
    assert [i[1] for i in queue["queue_running"]] == ids[:1] and [
        i[1] for i in queue["queue_pending"]
    ] == ids[1:]
    requests.post(f"{url}/queue", json={"delete": [ids[1]]}, timeout=10)
    assert emu.state()["queue_pending"] == ids[2:]
    requests.post(f"{url}/queue", json={"clear": True}, timeout=10)
    assert emu.state()["queue_pending"] == []
    requests.post(f"{url}/interrupt", timeout=10)
    conn.until_end(ids[0])
    conn.close()
    requests.post(f"{url}/history", json={"delete": [ids[0]]}, timeout=10)
    assert requests.get(f"{url}/history/{ids[0]}", timeout=10).json() == {}


def test_output_faults(emu: Emulator, url: str) -> None:
    emu.set_faults(output_padding_mb=1.5)
    entry = history(url, run(url, graph())[0])
    image = entry["outputs"]["save_video"]["images"][0]
    padded = requests.get(f"{url}/view", params=image, timeout=10)
    assert len(padded.content) > 1.5 * 1024 * 1024 and video(url, entry)[0] == 9  # still a playable MP4
    emu.set_faults(view_404=True)
    assert requests.get(f"{url}/view", params=image, timeout=10).status_code == 404
    emu.set_faults(no_output=True)
    prompt_id, messages = run(url, graph())
    assert history(url, prompt_id)["outputs"] == {} and "executed" not in [m["type"] for m in messages]
    emu.set_faults(
        exec_error_node="decode", exec_error_message="boom", exec_error_type="torch.OutOfMemoryError"
    )
    _, messages = run(url, graph())
    [error] = [m["data"] for m in messages if m["type"] == "execution_error"]
    assert (error["node_id"], error["exception_message"], error["exception_type"]) == (
        "decode",
        "boom",
        "torch.OutOfMemoryError",
    )


def test_a_crash_closes_the_port() -> None:
    with Emulator(faults={"crash_after_steps": 1}, models=TRACE_MODELS) as emu:
        upload(emu.url, "rec_start.png", png(RED)).raise_for_status()
        conn = Conn(emu.url)
        conn.queue(emu.url, graph())
        with pytest.raises((websocket.WebSocketException, OSError)):
            conn.until(lambda m: False)
        assert [m["data"]["value"] for m in conn.messages if m["type"] == "progress"] == [1]
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{emu.url}/system_stats", timeout=5)


def test_uploads_models_and_view(emu: Emulator, url: str, tmp_path: Path) -> None:
    assert upload(url, "a.png", png(RED)).json() == {"name": "a.png", "subfolder": "", "type": "input"}
    assert upload(url, "a.png", png(RED)).json()["name"] == "a.png"  # the same bytes again
    assert upload(url, "a.png", png(BLUE)).json()["name"] == "a (1).png"
    assert upload(url, "a.png", png(BLUE), overwrite="true").json()["name"] == "a.png"
    assert upload(url, "b.png", png(RED), subfolder="x").json() == {
        "name": "b.png",
        "subfolder": "x",
        "type": "input",
    }
    assert requests.get(
        f"{url}/view", params={"filename": "b.png", "subfolder": "x", "type": "input"}, timeout=10
    ).ok
    assert requests.get(f"{url}/view", params={"filename": "../b.png"}, timeout=10).status_code == 400
    assert requests.get(f"{url}/view", params={"filename": "nothing.mp4"}, timeout=10).status_code == 404

    assert requests.get(f"{url}/models", timeout=10).json() == trace("http_misc")["models"]
    for folder in ("unknown", "unet"):
        assert requests.get(f"{url}/models/{folder}", timeout=10).status_code == 404
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.safetensors").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("not a model")
    emu.configure(model_dirs={"loras": [str(tmp_path)]})
    try:
        listed = requests.get(f"{url}/models/loras", timeout=10).json()
        assert listed == ["sub/x.safetensors", "tiny_lora.safetensors"]
    finally:
        emu.configure(model_dirs={})


# ---------------------------------------------------------------------------------------------- process


def test_a_late_start_binds_the_port_late() -> None:
    with EmulatorProcess(startup_delay=1.0, wait=False) as proc:
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{proc.url}/system_stats", timeout=2)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                assert requests.get(f"{proc.url}/system_stats", timeout=2).json()["system"]["comfyui_version"]
                return
            except requests.ConnectionError:
                time.sleep(0.1)
        raise AssertionError(proc.log_text())


def test_the_process_stands_in_for_comfyui_and_a_crash_ends_it(tmp_path: Path) -> None:
    (tmp_path / "volume" / "loras").mkdir(parents=True)
    (tmp_path / "volume" / "loras" / "style.safetensors").write_bytes(b"x")
    paths = tmp_path / "extra_model_paths.yaml"
    paths.write_text("wan:\n  base_path: volume\n  loras: loras\n  unet: models\n", encoding="utf-8")
    comfy_flags = [
        "--listen",
        "127.0.0.1",
        "--disable-auto-launch",
        "--cache-classic",
        "--fast",
        "fp16_accumulation",
    ]
    extra = [*comfy_flags, "--cpu", "--extra-model-paths-config", str(paths)]
    with EmulatorProcess(
        step_delay=0.05, faults={"crash_after_steps": 2}, models=TRACE_MODELS, extra_args=extra
    ) as proc:
        assert requests.get(f"{proc.url}/system_stats", timeout=5).json()["devices"][0]["type"] == "cpu"
        assert "style.safetensors" in requests.get(f"{proc.url}/models/loras", timeout=5).json()
        upload(proc.url, "rec_start.png", png(RED)).raise_for_status()
        requests.post(f"{proc.url}/prompt", json={"prompt": graph()}, timeout=10).raise_for_status()
        assert proc.wait_exit(20) == 1
