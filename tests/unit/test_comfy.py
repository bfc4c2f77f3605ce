"""The ComfyUI client against the emulator: every protocol step, and the ways a run can end."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.emulator import Emulator
from tests.support.images import image_bytes
from tests.support.video import probe
from worker.comfy import ComfyClient, OutputFile
from worker.errors import (
    ComfyExecutionError,
    ComfyUnavailable,
    ComfyValidationError,
    JobCancelled,
    JobTimeout,
    NoOutput,
)
from worker.graph import Images, ModelFiles, bind, load_template
from worker.models.manifest import default_names
from worker.schema import parse_job_input

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
_DEFAULTS = default_names()
FILES = ModelFiles(
    **{
        role: _DEFAULTS[role]
        for role in ("high_model", "low_model", "text_encoder", "vae", "lightning_high", "lightning_low")
    }
)


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with Emulator() as emu:
        yield emu


@pytest.fixture
def client(emulator: Emulator) -> ComfyClient:
    emulator.set_faults()
    emulator.configure(step_delay=0.0)
    return ComfyClient(emulator.url, timeout_s=5)


def graph_for(client: ComfyClient, **fields: object) -> dict:
    job = parse_job_input(
        {"prompt": "p", "image_base64": "eA==", "width": 128, "height": 128, "length": 9, **fields}
    )
    start = client.upload_image(image_bytes(), f"start_{time.monotonic_ns()}.png")
    end = (
        client.upload_image(image_bytes(color=(0, 0, 255)), f"end_{time.monotonic_ns()}.png")
        if job.mode == "flf2v"
        else None
    )
    return bind(
        load_template(WORKFLOWS, job.mode), job, FILES, Images(start, end), filename_prefix="video/test"
    )


def run(client: ComfyClient, graph: dict, **wait: object):  # type: ignore[no-untyped-def]
    with client.open_watch() as watch:
        prompt_id = client.queue_prompt(graph, client_id=watch.client_id)
        kwargs = {"idle_timeout_s": 5.0, "deadline": time.monotonic() + 30, **wait}
        return prompt_id, watch.wait(prompt_id, **kwargs)  # type: ignore[arg-type]


def test_ready_and_model_listing(client: ComfyClient) -> None:
    assert client.wait_ready(5) < 5
    assert FILES.get("high_model") in (client.list_models("diffusion_models") or [])
    assert FILES.get("lightning_low") in (client.list_models("loras") or [])


def test_wait_ready_gives_up_at_its_deadline() -> None:
    dead = ComfyClient("http://127.0.0.1:9", timeout_s=1)
    started = time.monotonic()
    with pytest.raises(ComfyUnavailable, match="did not become ready within"):
        dead.wait_ready(0.5)
    assert time.monotonic() - started < 3


def test_full_run_with_progress_and_video(client: ComfyClient) -> None:
    seen: list[tuple[str, int, int]] = []
    _, outcome = run(
        client, graph_for(client, steps=6, high_noise_steps=2), on_progress=lambda *a: seen.append(a)
    )
    assert [s for s in seen if s[0] == "sampler_high"] == [("sampler_high", 1, 2), ("sampler_high", 2, 2)]
    assert [s[1] for s in seen if s[0] == "sampler_low"] == [1, 2, 3, 4]
    videos = [o for o in outcome.outputs if o.node_id == "save_video"]
    assert len(videos) == 1 and videos[0].filename.endswith(".mp4") and videos[0].subfolder == "video"
    info = probe(client.fetch_output(videos[0]))
    assert (info.frames, info.width, info.height) == (9, 128, 128)


def test_the_end_is_taken_after_comfyui_writes_the_history(client: ComfyClient, emulator: Emulator) -> None:
    """ComfyUI v0.33.0 sends execution_success before it writes /history: a client that ended there found no
    entry. With the history written half a second after execution_success, the run still finds its video."""
    emulator.configure(history_delay=0.5)
    try:
        for _ in range(3):
            _, outcome = run(client, graph_for(client))
            videos = [o for o in outcome.outputs if o.node_id == "save_video"]
            assert len(videos) == 1 and probe(client.fetch_output(videos[0])).frames == 9
    finally:
        emulator.configure(history_delay=0.0)


def test_flf2v_graph_runs(client: ComfyClient) -> None:
    _, outcome = run(client, graph_for(client, end_image_base64="eA=="))
    assert outcome.outputs


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"lightning": False, "steps": 4},
        {"length": 85, "context_overlap": 8},
        {"end_image_base64": "eA==", "length": 85},
    ],
)
def test_every_graph_variant_passes_comfyui_validation(
    client: ComfyClient, fields: dict[str, object]
) -> None:
    _, outcome = run(client, graph_for(client, **fields))
    assert outcome.outputs


def test_refused_graph_names_node_and_input(client: ComfyClient) -> None:
    graph = graph_for(client)
    graph["high_model"]["inputs"]["unet_name"] = "absent.safetensors"
    del graph["sampler_low"]["inputs"]["cfg"]
    with pytest.raises(ComfyValidationError) as info:
        client.queue_prompt(graph, client_id="c")
    err = info.value
    assert "node 'high_model' (UNETLoader)" in err.message and "node 'sampler_low'" in err.message
    by_node = {d["node_id"]: d for d in err.details}
    assert by_node["high_model"]["type"] == "value_not_in_list"
    assert by_node["high_model"]["input_name"] == "unet_name"
    assert by_node["sampler_low"]["type"] == "required_input_missing"


def test_execution_error(client: ComfyClient, emulator: Emulator) -> None:
    emulator.set_faults(exec_error_node="decode")
    with pytest.raises(ComfyExecutionError, match=r"node 'decode' \(VAEDecode\) failed") as info:
        run(client, graph_for(client))
    assert info.value.details[0]["node_id"] == "decode"


def test_idle_timeout_on_a_hang(client: ComfyClient, emulator: Emulator) -> None:
    emulator.set_faults(hang=True)
    started = time.monotonic()
    with pytest.raises(JobTimeout, match="sent nothing for"):
        run(client, graph_for(client), idle_timeout_s=0.5)
    assert time.monotonic() - started < 5
    client.interrupt()


def test_overall_deadline(client: ComfyClient, emulator: Emulator) -> None:
    emulator.configure(step_delay=0.2)
    with pytest.raises(JobTimeout, match="deadline"):
        run(client, graph_for(client, steps=20), deadline=time.monotonic() + 1.0)
    client.interrupt()


def test_abort_from_another_thread_cancels_promptly(client: ComfyClient, emulator: Emulator) -> None:
    emulator.set_faults(hang=True)
    graph = graph_for(client)
    with client.open_watch() as watch:
        prompt_id = client.queue_prompt(graph, client_id=watch.client_id)
        timer = threading.Timer(0.3, watch.abort)
        timer.start()
        started = time.monotonic()
        with pytest.raises(JobCancelled):
            watch.wait(prompt_id, idle_timeout_s=30, deadline=time.monotonic() + 30)
        assert time.monotonic() - started < 2
    client.interrupt(prompt_id)
    client.delete_from_queue(prompt_id)


def test_dropped_socket_reconnects_and_completes(client: ComfyClient, emulator: Emulator) -> None:
    emulator.configure(step_delay=0.05)
    emulator.set_faults(drop_ws_after_steps=1)
    _, outcome = run(client, graph_for(client, steps=6))
    assert outcome.reconnected
    assert any(o.node_id == "save_video" for o in outcome.outputs)


def test_view_404_is_no_output(client: ComfyClient, emulator: Emulator) -> None:
    emulator.set_faults(view_404=True)
    _, outcome = run(client, graph_for(client))
    with pytest.raises(NoOutput, match="no such file"):
        client.fetch_output(outcome.outputs[0])
    with pytest.raises(NoOutput):
        client.fetch_output(OutputFile("x", "missing.mp4", "video", "output"))


def test_cached_loaders_are_reported(client: ComfyClient) -> None:
    run(client, graph_for(client))
    _, outcome = run(client, graph_for(client, end_image_base64="eA=="))
    assert {"high_model", "low_model", "text_encoder", "vae"} <= set(outcome.cached_nodes)


def test_history_cleanup(client: ComfyClient) -> None:
    prompt_id, _ = run(client, graph_for(client))
    assert client.history(prompt_id) is not None
    client.delete_history(prompt_id)
    assert client.history(prompt_id) is None
    assert client.history("no-such-prompt") is None
