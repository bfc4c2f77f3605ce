"""The job contract: defaults, bounds, rounding, messages."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pydantic import ValidationError

from worker.schema import (
    FIELD_NAMES,
    WAN_NEGATIVE_PROMPT,
    JobInput,
    LoraPair,
    describe_errors,
    parse_job_input,
    round_to_4n1,
    round_to_multiple,
)

BASE = {"prompt": "a cat", "image_base64": "aGVsbG8="}


def problems(data: object, **kwargs: bool) -> list[dict[str, str]]:
    with pytest.raises(ValidationError) as info:
        parse_job_input(data, **kwargs)
    return describe_errors(info.value)


def test_defaults_with_lightning() -> None:
    job = parse_job_input(BASE)
    assert (job.width, job.height, job.length, job.fps) == (480, 832, 81, 16.0)
    assert (job.steps, job.cfg, job.high_noise_steps, job.shift) == (4, 1.0, 2, 5.0)
    assert job.negative_prompt == WAN_NEGATIVE_PROMPT
    assert job.lightning is True and job.lora_pairs == [] and job.output == "auto"
    assert job.mode == "i2v" and not job.uses_context_windows
    assert job.adjustments == []
    assert isinstance(job.seed, int) and 0 <= job.seed < 2**53


def test_defaults_without_lightning() -> None:
    job = parse_job_input({**BASE, "lightning": False})
    assert (job.steps, job.cfg, job.high_noise_steps) == (20, 3.5, 10)


@pytest.mark.parametrize("seed", [None, -1])
def test_random_seed_is_drawn(seed: int | None) -> None:
    seeds = {parse_job_input({**BASE, "seed": seed}).seed for _ in range(5)}
    assert len(seeds) > 1


def test_explicit_seed_kept_up_to_64_bits() -> None:
    assert parse_job_input({**BASE, "seed": 2**64 - 1}).seed == 2**64 - 1
    assert problems({**BASE, "seed": 2**64})[0]["field"] == "seed"


@pytest.mark.parametrize(
    ("value", "expected"), [(480, 480), (838, 832), (840, 848), (471, 464), (472, 480), (1920, 1920)]
)
def test_width_rounds_to_multiple_of_16(value: int, expected: int) -> None:
    job = parse_job_input({**BASE, "width": value, "height": value})
    assert job.width == expected and job.height == expected
    if value != expected:
        assert {a.field for a in job.adjustments} == {"width", "height"}
        assert job.adjustments[0].requested == value and job.adjustments[0].used == expected


@pytest.mark.parametrize(
    ("value", "expected"), [(81, 81), (80, 81), (79, 81), (78, 77), (82, 81), (83, 85), (5, 5), (161, 161)]
)
def test_length_rounds_to_4n_plus_1(value: int, expected: int) -> None:
    job = parse_job_input({**BASE, "length": value})
    assert job.length == expected
    assert round_to_4n1(value) == expected


def test_rounding_helpers() -> None:
    assert round_to_multiple(8, 16) == 16 and round_to_multiple(7, 16) == 0


def test_long_video_uses_context_windows() -> None:
    assert parse_job_input({**BASE, "length": 161}).uses_context_windows


@pytest.mark.parametrize(
    ("patch", "field", "fragment"),
    [
        ({"width": 100000}, "width", "between 128 and 1920"),
        ({"width": 64}, "width", "between 128 and 1920"),
        ({"length": 0}, "length", "between 5 and 801"),
        ({"width": -(2**70)}, "width", "between 128 and 1920"),
        ({"length": 2000}, "length", "between 5 and 801"),
        ({"fps": 0}, "fps", "greater than or equal to 1"),
        ({"steps": 1}, "steps", "greater than or equal to 2"),
        ({"steps": 6, "high_noise_steps": 6}, "high_noise_steps", "less than steps (6)"),
        ({"cfg": -1}, "cfg", "greater than or equal to 0"),
        ({"context_overlap": 81}, "context_overlap", "less than or equal to 80"),
        ({"output": "s3"}, "output", "'auto', 'base64' or 'url'"),
        ({"prompt": "   "}, "prompt", "must not be empty"),
        ({"lightning": "maybe"}, "lightning", "valid boolean"),
        ({"width": "wide"}, "width", "valid integer"),
        ({"fps": float("nan")}, "fps", "finite number"),
    ],
)
def test_bounds_name_the_field(patch: dict[str, object], field: str, fragment: str) -> None:
    found = problems({**BASE, **patch})
    assert any(p["field"] == field and fragment in p["message"] for p in found), found


def test_prompt_required() -> None:
    assert problems({"image_base64": "aGVsbG8="}) == [{"field": "prompt", "message": "is required"}]


def test_unknown_field_lists_allowed_ones() -> None:
    found = problems({**BASE, "num_frames": 81})
    assert found[0]["field"] == "num_frames"
    assert "unknown field 'num_frames'" in found[0]["message"]
    for name in ("prompt", "image_url", "lora_pairs", "output"):
        assert name in found[0]["message"]
    assert "adjustments" not in FIELD_NAMES


def test_unknown_lora_field_lists_lora_fields() -> None:
    found = problems({**BASE, "lora_pairs": [{"high": "a.safetensors", "strength": 1}]})
    assert found[0]["field"] == "lora_pairs[0].strength"
    assert "high_weight" in found[0]["message"] and "prompt" not in found[0]["message"]


@pytest.mark.parametrize(
    "images",
    [
        {},
        {"image_url": "https://example.com/a.png", "image_base64": "aGVsbG8="},
        {"image_url": "https://example.com/a.png", "image_path": "a.png", "image_base64": "aGVsbG8="},
    ],
)
def test_exactly_one_start_image(images: dict[str, str]) -> None:
    found = problems({"prompt": "x", **images})
    assert found[0]["field"] == "image_url" and "exactly one of" in found[0]["message"]


def test_end_image_makes_flf2v_and_at_most_one() -> None:
    assert parse_job_input({**BASE, "end_image_base64": "aGVsbG8="}).mode == "flf2v"
    found = problems({**BASE, "end_image_base64": "aGVsbG8=", "end_image_path": "x.png"})
    assert found[0]["field"] == "end_image_url" and "at most one" in found[0]["message"]


@pytest.mark.parametrize(
    "url", ["ftp://host/a.png", "file:///etc/passwd", "gopher://x", "//host/a.png", "not a url"]
)
def test_url_fields_need_http(url: str) -> None:
    found = problems({"prompt": "x", "image_url": url})
    assert found[0]["field"] == "image_url" and "http" in found[0]["message"]


@pytest.mark.parametrize("field", ["image_url", "high_model_url"])
def test_url_fields_need_a_valid_port(field: str) -> None:
    found = problems(
        {"prompt": "x", "image_url": "https://example.com/a.png", field: "https://example.com:99999/a"}
    )
    assert found[0]["field"] == field and "not a valid URL" in found[0]["message"], found


def test_lora_pairs_at_most_four_and_weights_bounded() -> None:
    pair = {"high": "a.safetensors", "low": "b.safetensors"}
    assert len(parse_job_input({**BASE, "lora_pairs": [pair] * 4}).lora_pairs) == 4
    assert problems({**BASE, "lora_pairs": [pair] * 5})[0]["field"] == "lora_pairs"
    found = problems({**BASE, "lora_pairs": [{**pair, "high_weight": 6}]})
    assert found[0]["field"] == "lora_pairs[0].high_weight"
    found = problems({**BASE, "lora_pairs": [{}]})
    assert "at least one of" in found[0]["message"]


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("../evil.safetensors", "without folders"),
        ("sub/evil.safetensors", "without folders"),
        ("/abs/evil.safetensors", "without folders"),
        ("C:\\evil.safetensors", "without folders"),
        ("evil.ckpt", "ALLOW_PICKLE_MODELS"),
        ("evil.pt", "must end in"),
        (".hidden.safetensors", "must not start with '.'"),
        ("..", "must not start with '.'"),
        ("nul\x00.safetensors", "control characters"),
        ("tab\t.safetensors", "control characters"),
        ("x" * 300 + ".safetensors", "at most 200"),
    ],
)
def test_model_names_are_single_safe_file_names(name: str, fragment: str) -> None:
    for data, field in (
        ({**BASE, "high_model": name}, "high_model"),
        ({**BASE, "lora_pairs": [{"high": name}]}, "lora_pairs[0].high"),
    ):
        found = problems(data)
        assert found[0]["field"] == field and fragment in found[0]["message"], found


@pytest.mark.parametrize(
    "name",
    [
        "my lora (v2).safetensors",
        "model.sft",
        "a..b.safetensors",
        "Wan [fp8] +x.safetensors",
        "ÿüé.safetensors",
    ],
)
def test_model_names_comfyui_loads_are_accepted(name: str) -> None:
    job = parse_job_input({**BASE, "high_model": name, "lora_pairs": [{"high": name}]})
    assert job.model_name("high_model") == name and job.lora_pairs[0].high == name


def test_pickle_models_only_when_allowed() -> None:
    assert (
        parse_job_input({**BASE, "high_model": "old.ckpt"}, allow_pickle_models=True).high_model == "old.ckpt"
    )


@pytest.mark.parametrize("data", [None, [], "prompt", 42, {"input": {}}])
def test_non_object_input(data: object) -> None:
    assert problems(data)


def test_adjustments_are_not_input() -> None:
    assert problems({**BASE, "adjustments": []})[0]["field"] == "adjustments"


def test_schema_command_prints_the_json_schema() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "worker", "schema"], capture_output=True, text=True, check=True
    )
    schema = json.loads(out.stdout)
    assert set(schema["properties"]) == set(FIELD_NAMES)
    assert schema["required"] == ["prompt"]
    assert schema["additionalProperties"] is False


def test_job_input_round_trips_through_json() -> None:
    job = parse_job_input({**BASE, "width": 838, "seed": 7})
    again = JobInput.model_validate_json(job.model_dump_json())
    assert again.width == 832 and again.seed == 7


def test_published_schema_file_is_current() -> None:
    """docs/job_input.schema.json, linked from the README, is what `python -m worker schema` prints."""
    from pathlib import Path

    from worker.schema import input_json_schema

    published = Path(__file__).resolve().parents[2] / "docs" / "job_input.schema.json"
    assert json.loads(published.read_text(encoding="utf-8")) == input_json_schema(), (
        "regenerate it: python -m worker schema > docs/job_input.schema.json"
    )


def test_readme_input_tables_are_generated_from_the_contract() -> None:
    from pathlib import Path

    from worker.inputdoc import input_tables, readme_section

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    assert readme_section(readme) == input_tables(), (
        "regenerate the README's input tables: python -m worker schema --markdown"
    )


def test_every_field_is_in_the_readme_tables() -> None:
    from worker.inputdoc import input_tables

    tables = input_tables()
    for name in (*FIELD_NAMES, *LoraPair.model_fields):
        assert f"| `{name}` |" in tables, name


def test_each_job_model_role_has_a_name_and_a_url_field() -> None:
    from worker.models import roles

    for role in roles.ROLES:
        assert (role.name in FIELD_NAMES) == role.job_field
        assert (f"{role.name}_url" in FIELD_NAMES) == role.job_field


def test_interpolation_multiplies_frames_and_fps_within_bounds() -> None:
    job = parse_job_input({**BASE, "length": 81, "fps": 16, "interpolate": 2})
    assert (job.output_length, job.output_fps, job.interpolates) == (161, 32.0, True)
    off = parse_job_input(BASE)
    assert (off.interpolate, off.output_length, off.interpolates) == (1, 81, False)
    assert "more than 120" in problems({**BASE, "fps": 16, "interpolate": 8})[0]["message"]
    too_long = problems({**BASE, "length": 801, "interpolate": 3})[0]
    assert too_long["field"] == "interpolate" and "2401 frames, more than 1601" in too_long["message"]
    assert problems({**BASE, "interpolate": 17})[0]["field"] == "interpolate"
    assert problems({**BASE, "interpolate": 0})[0]["field"] == "interpolate"


def test_crf_is_bounded() -> None:
    assert parse_job_input(BASE).crf == 19
    assert parse_job_input({**BASE, "crf": 0}).crf == 0
    assert problems({**BASE, "crf": 52})[0]["field"] == "crf"
