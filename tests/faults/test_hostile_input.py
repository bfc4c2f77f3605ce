"""Hostile or broken input: refused with an error that names the field, before any network call or file write."""

from __future__ import annotations

import asyncio
import base64
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tests.emulator import Emulator
from tests.support.images import animated_gif, data_uri, image_bytes, png_claiming
from worker.config import Settings
from worker.graph import Images, ModelFiles, bind, load_template
from worker.handler import handle_job
from worker.schema import FIELD_NAMES, LORA_FIELD_NAMES, describe_errors, parse_job_input

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
FILES = ModelFiles(
    high_model="h.safetensors",
    low_model="l.safetensors",
    text_encoder="t.safetensors",
    vae="v.safetensors",
    lightning_high="lh.safetensors",
    lightning_low="ll.safetensors",
)
TEMPLATES = {mode: load_template(WORKFLOWS, mode) for mode in ("i2v", "flf2v")}
FIELD = re.compile(r"^(input|[a-z0-9_]+)(\[\d+\](\.[a-z0-9_]+)?)?$")

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=-10, max_value=5000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(
        ["", " ", "../x.safetensors", "a.safetensors", "https://example.com/a.png", "aGVsbG8=", "\x00"]
    ),
)
lora_pair = st.dictionaries(st.sampled_from([*LORA_FIELD_NAMES, "strength"]), scalars, max_size=5)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.lists(lora_pair, max_size=6),
    st.dictionaries(st.text(max_size=5), scalars, max_size=3),
)
keys = st.sampled_from([*FIELD_NAMES, "bogus", "Prompt", "", "lora_pairs"])
valid_base = {"prompt": "a cat", "image_base64": "aGVsbG8="}
inputs = st.one_of(
    st.dictionaries(keys, values, max_size=8),
    st.dictionaries(keys, values, max_size=4).map(lambda extra: {**valid_base, **extra}),
    values,
)


BATCH = 50
"""Inputs per generated example: 100 examples x 50 inputs = 5,000 inputs, at a fraction of the engine's cost."""


@settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(inputs, min_size=BATCH, max_size=BATCH))
def test_any_input_gives_a_graph_or_an_error_naming_the_field(batch: list[Any]) -> None:
    for data in batch:
        check_one(data)


def check_one(data: Any) -> None:
    try:
        job = parse_job_input(data)
    except ValidationError as exc:
        problems = describe_errors(exc)
        assert problems
        for problem in problems:
            assert problem["message"]
            if problem["message"].startswith("unknown field"):
                nested = re.match(r"^lora_pairs\[\d+\]\.(.*)$", problem["field"], flags=re.S)
                name = nested.group(1) if nested else problem["field"]
                assert isinstance(data, dict) and name in _all_keys(data), problem
            else:
                assert FIELD.match(problem["field"]), problem
        return
    images = Images(start="s.png", end="e.png" if job.mode == "flf2v" else None)
    graph = bind(TEMPLATES[job.mode], job, FILES, images, filename_prefix="video/x")
    for node in graph.values():
        for value in node["inputs"].values():
            if isinstance(value, list):
                assert value[0] in graph


def _all_keys(data: dict[str, Any]) -> set[str]:
    keys = set(data)
    pairs = data.get("lora_pairs")
    for pair in pairs if isinstance(pairs, list) else []:
        if isinstance(pair, dict):
            keys |= set(pair)
    return keys


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with Emulator() as emu:
        yield emu


@pytest.fixture
def worker_settings(emulator: Emulator, tmp_path: Path) -> Settings:
    host, port = emulator.url.split("//")[1].rsplit(":", 1)
    volume = tmp_path / "volume"
    volume.mkdir()
    (tmp_path / "outside.png").write_bytes(image_bytes())
    os.symlink(tmp_path / "outside.png", volume / "escape.png")
    return Settings.from_env(
        {"COMFY_HOST": host, "COMFY_PORT": port, "VOLUME_ROOT": str(volume), "MAX_INPUT_IMAGE_MB": "1"}
    )


PNG = data_uri(image_bytes())
HOSTILE: list[tuple[dict[str, Any], str, str]] = [
    # URLs
    *[
        ({"image_url": url}, "url_not_allowed", "image_url")
        for url in (
            "http://127.0.0.1/a.png",
            "http://0.0.0.0/a.png",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.0.0.1/a.png",
            "http://172.16.5.4/a.png",
            "http://192.168.0.10/a.png",
            "http://[::1]/a.png",
            "http://[fc00::5]/a.png",
            "http://[::ffff:192.168.0.1]/a.png",
            "http://3232235521/a.png",
            "http://0xc0a80001/a.png",
            "http://localhost:8188/view",
        )
    ],
    *[
        ({"image_url": url}, "invalid_input", "image_url")
        for url in ("file:///etc/passwd", "ftp://example.com/a.png", "gopher://example.com/")
    ],
    # paths
    ({"image_path": "../../etc/passwd"}, "invalid_input", "image_path"),
    ({"image_path": "/etc/passwd"}, "invalid_input", "image_path"),
    ({"image_path": "escape.png"}, "invalid_input", "image_path"),
    ({"image_path": "a\x00.png"}, "invalid_input", "image_path"),
    # model names
    ({"high_model": "../../x.safetensors"}, "invalid_input", "high_model"),
    ({"vae": "/abs/vae.safetensors"}, "invalid_input", "vae"),
    ({"text_encoder": "sub/dir.safetensors"}, "invalid_input", "text_encoder"),
    ({"low_model": "model.ckpt"}, "invalid_input", "low_model"),
    ({"lora_pairs": [{"high": "..\\evil.safetensors"}]}, "invalid_input", "lora_pairs[0].high"),
    ({"lora_pairs": [{"low": "evil.pt"}]}, "invalid_input", "lora_pairs[0].low"),
    # images
    (
        {"image_base64": base64.b64encode(b"definitely not an image").decode()},
        "invalid_image",
        "image_base64",
    ),
    ({"image_base64": data_uri(image_bytes()[:-30])}, "invalid_image", "image_base64"),
    ({"image_base64": data_uri(png_claiming(20000, 20000))}, "invalid_image", "image_base64"),
    ({"image_base64": data_uri(animated_gif(), "image/gif")}, "invalid_image", "image_base64"),
    ({"image_base64": "A" * (3 * 1024 * 1024)}, "invalid_image", "image_base64"),
    ({"image_base64": "data:text/plain;base64,aGVsbG8="}, "invalid_image", "image_base64"),
    ({"end_image_base64": data_uri(b"GIF89a...")}, "invalid_image", "end_image_base64"),
    # bounds
    ({"lora_pairs": [{"high": "a.safetensors"}] * 5}, "invalid_input", "lora_pairs"),
    (
        {"lora_pairs": [{"high": "a.safetensors", "high_weight": 50}]},
        "invalid_input",
        "lora_pairs[0].high_weight",
    ),
    ({"length": 0}, "invalid_input", "length"),
    ({"width": 100000}, "invalid_input", "width"),
    ({"fps": 0}, "invalid_input", "fps"),
]


@pytest.mark.parametrize(("patch", "code", "field"), HOSTILE)
def test_hostile_input_is_refused_before_anything_reaches_comfyui(
    emulator: Emulator, worker_settings: Settings, patch: dict[str, Any], code: str, field: str
) -> None:
    job_input: dict[str, Any] = {"prompt": "p", "image_base64": PNG}
    if any(k.startswith("image_") for k in patch):
        job_input.pop("image_base64")
    job_input.update(patch)
    before = emulator.state()
    result = asyncio.run(handle_job({"id": "hostile", "input": job_input}, worker_settings))
    assert result.get("error_code") == code, result
    assert result["error"].startswith(f"{code}: ") and field in result["error"]
    after = emulator.state()
    assert after["uploads"] == before["uploads"] and after["prompts"] == before["prompts"]
