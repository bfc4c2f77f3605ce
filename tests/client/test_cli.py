"""``wan-video`` against a fake RunPod endpoint: generate, batch, errors, usage, Ctrl-C."""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import annotated_types
import pytest
from pydantic.fields import FieldInfo

from tests.client.fake_runpod import Body, FakeRunPod, completed, failed, progress, queued
from tests.support.images import image_bytes
from worker.client.cli import build_parser, main
from worker.client.options import OPTION_NAMES, add_job_options, job_fields, parse_lora
from worker.schema import JobInput, input_json_schema

VIDEO = b"\x00\x00\x00\x18ftypmp42 fake"
REPO = Path(__file__).resolve().parents[2]


def result(seed: int = 77) -> Body:
    return completed(
        {
            "video": base64.b64encode(VIDEO).decode(),
            "mime_type": "video/mp4",
            "mode": "i2v",
            "seed": seed,
            "width": 256,
            "height": 448,
            "length": 17,
            "fps": 16.0,
            "steps": 4,
            "adjustments": [],
            "timings": {"total": 2.0, "inputs": 0.25, "sampling": 1.5},
            "size_bytes": len(VIDEO),
        }
    )


def cli(*args: str | Path) -> int:
    return main([str(a) for a in args])


def generate_args(runpod: FakeRunPod, image: Path, out: Path, *extra: str) -> list[str | Path]:
    backend = ["--endpoint", runpod.endpoint, "--poll-interval", "0.01"]
    return ["generate", *backend, "--image", image, "--prompt", "a fox", "-o", out, *extra]


def assert_clean(text: str, runpod: FakeRunPod) -> None:
    """No API key, no base64 payload, no JSON dump."""
    assert runpod.api_key not in text
    assert "base64," not in text and base64.b64encode(VIDEO).decode() not in text
    assert "{" not in text


def test_generate_saves_the_video_and_prints_seed_and_timings(
    runpod: FakeRunPod, png: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runpod.scripts.append([queued(), progress("models"), progress("sampling", 2, 4), result()])
    out = tmp_path / "out.mp4"
    code = cli(*generate_args(runpod, png, out, "--width", "256", "--length", "17", "--seed", "77"))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert out.read_bytes() == VIDEO
    assert "seed: 77" in captured.out
    assert "timings: inputs 0.2s, sampling 1.5s, total 2.0s" in captured.out
    assert "256x448, 17 frames at 16 fps" in captured.out
    assert "in queue" in captured.err and "sampling 2/4" in captured.err
    job = runpod.jobs["job-1"].input
    assert base64.b64decode(job["image_base64"]).startswith(b"\x89PNG")
    assert (job["width"], job["length"], job["seed"], job["prompt"]) == (256, 17, 77, "a fox")
    assert_clean(captured.out + captured.err, runpod)


def test_failed_job_shows_message_and_code(
    runpod: FakeRunPod, png: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runpod.scripts.append(
        [
            failed(
                "invalid_input: width must be between 128 and 1920 pixels, got 4000",
                {"error_code": "invalid_input", "details": [{"field": "width"}]},
            )
        ]
    )
    code = cli(*generate_args(runpod, png, tmp_path / "out.mp4", "--width", "4000"))
    captured = capsys.readouterr()
    assert code == 1
    assert "error: width must be between 128 and 1920 pixels, got 4000 (code invalid_input)" in captured.err
    assert not (tmp_path / "out.mp4").exists()
    assert_clean(captured.out + captured.err, runpod)


def test_usage_errors_exit_2(
    runpod: FakeRunPod,
    png: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "o.mp4"
    assert cli("generate", "--image", png, "--prompt", "p", "-o", out) == 2
    assert cli(*generate_args(runpod, tmp_path / "missing.png", out)) == 2
    assert "missing.png: no such image file" in capsys.readouterr().err
    assert cli(*generate_args(runpod, png, out, "--lora", "only-one")) == 2
    assert (
        cli("batch", "--endpoint", "e", "--images", tmp_path / "nope", "--prompt", "p", "-o", tmp_path) == 2
    )
    monkeypatch.delenv("RUNPOD_API_KEY")
    assert cli(*generate_args(runpod, png, out)) == 2
    assert "RUNPOD_API_KEY" in capsys.readouterr().err
    assert runpod.jobs == {}


def test_wrong_key_exits_1_without_showing_it(
    runpod: FakeRunPod,
    png: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("RUNPOD_API_KEY", "not-the-key-5521")
    assert cli(*generate_args(runpod, png, tmp_path / "o.mp4")) == 1
    err = capsys.readouterr().err
    assert "refused the API key (HTTP 401)" in err and "not-the-key-5521" not in err


def test_job_options_map_to_the_contract() -> None:
    from worker.client.cli import build_parser

    args = build_parser().parse_args(
        [
            "generate", "--url", "http://x", "--image", "a.png", "--prompt", "p", "-o", "o.mp4",
            "--no-lightning", "--steps", "20", "--cfg", "3.5", "--shift", "8", "--fps", "24",
            "--negative-prompt", "blur", "--output-mode", "url", "--high-noise-steps", "8",
            "--context-overlap", "16", "--height", "480", "--no-freenoise", "--retain-first-frame",
            "--lora", "style_high.safetensors,style_low.safetensors,0.7,0.5",
            "--lora", "https://example.com/m_high.safetensors,,0.8",
            "--set", "high_model=my high.safetensors", "--set", "seed=-1",
        ]
    )  # fmt: skip
    fields = {k: v for k, v in job_fields(args).items() if v is not None}
    assert fields == {
        "prompt": "p",
        "negative_prompt": "blur",
        "height": 480,
        "fps": 24.0,
        "steps": 20,
        "high_noise_steps": 8,
        "cfg": 3.5,
        "shift": 8.0,
        "context_overlap": 16,
        "context_freenoise": False,
        "context_retain_first_frame": True,
        "lightning": False,
        "lora_pairs": [
            {
                "high": "style_high.safetensors",
                "low": "style_low.safetensors",
                "high_weight": 0.7,
                "low_weight": 0.5,
            },
            {"high_url": "https://example.com/m_high.safetensors", "high_weight": 0.8, "low_weight": 0.8},
        ],
        "output": "url",
        "high_model": "my high.safetensors",
        "seed": -1,
    }
    assert parse_lora(",low.safetensors") == {"low": "low.safetensors"}


def batch_script(job_input: Body) -> list[Body]:
    """Images that are not images fail like the worker says; the others complete."""
    if base64.b64decode(str(job_input.get("image_base64", ""))).startswith(b"this is not"):
        return [progress("inputs"), failed("invalid_image: image_base64 is not a PNG, JPEG or WebP image")]
    return [progress("inputs"), progress("sampling", 4, 4), result(seed=5)]


def test_batch_is_resumable_and_prints_a_summary(
    runpod: FakeRunPod, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images, outdir = tmp_path / "in", tmp_path / "out"
    images.mkdir()
    for name in ("a.png", "b.jpg", "c.webp"):
        (images / name).write_bytes(image_bytes(name.rsplit(".", 1)[1].upper().replace("JPG", "JPEG")))
    (images / "bad.png").write_bytes(b"this is not a picture")
    (images / "notes.txt").write_text("ignored")
    outdir.mkdir()
    (outdir / "c.mp4").write_bytes(b"already made")
    runpod.script_for = batch_script
    args: list[str | Path] = ["batch", "--endpoint", runpod.endpoint, "--images", images, "--prompt", "p"]
    args += ["-o", outdir]
    code = cli(*args, "--concurrency", "2", "--poll-interval", "0.01")
    captured = capsys.readouterr()
    assert code == 1
    assert sorted(p.name for p in outdir.iterdir()) == ["a.mp4", "b.mp4", "c.mp4"]
    assert (outdir / "a.mp4").read_bytes() == VIDEO and (outdir / "c.mp4").read_bytes() == b"already made"
    rows = {line.split()[0]: line for line in captured.out.splitlines()[1:-1]}
    assert set(rows) == {"a.png", "b.jpg", "bad.png", "c.webp"}
    assert " done " in rows["a.png"] and " 5 " in rows["a.png"]
    assert " skipped " in rows["c.webp"]
    assert " failed " in rows["bad.png"] and "invalid_image: image_base64 is not a PNG" in rows["bad.png"]
    assert captured.out.splitlines()[-1] == "4 image(s): 2 done, 1 skipped, 1 failed"
    assert len(runpod.jobs) == 3
    assert_clean(captured.out + captured.err, runpod)

    (outdir / "a.mp4").unlink()
    assert cli(*args, "--poll-interval", "0.01") == 1
    assert len(runpod.jobs) == 5  # a.png and bad.png again; b and c are done


def start_cli(runpod: FakeRunPod, *args: str | Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_")}
    env.update(RUNPOD_API_KEY=runpod.api_key, RUNPOD_API_BASE=runpod.base_url, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "worker.client", *map(str, args)],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def interrupt_after_polls(proc: subprocess.Popen[str], runpod: FakeRunPod, polls: int) -> tuple[str, str]:
    deadline = time.monotonic() + 20
    while runpod.status_polls() < polls:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the client never polled"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    return proc.communicate(timeout=20)


def test_ctrl_c_cancels_the_job(runpod: FakeRunPod, png: Path, tmp_path: Path) -> None:
    runpod.default_script = [queued(), progress("inputs"), progress("sampling", 1, 4)]
    proc = start_cli(runpod, *generate_args(runpod, png, tmp_path / "o.mp4"))
    out, err = interrupt_after_polls(proc, runpod, 4)
    assert proc.returncode == 130, err
    assert runpod.cancelled == ["job-1"]
    assert "interrupted: cancelling job job-1" in err and "cancelled job job-1" in err
    assert "Traceback" not in err
    assert_clean(out + err, runpod)
    assert not (tmp_path / "o.mp4").exists()


def test_ctrl_c_cancels_a_batch(runpod: FakeRunPod, tmp_path: Path) -> None:
    images = tmp_path / "in"
    images.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        (images / name).write_bytes(image_bytes("PNG"))
    runpod.default_script = [progress("sampling", 1, 4)]
    proc = start_cli(
        runpod, "batch", "--endpoint", runpod.endpoint, "--images", images, "--prompt", "p",
        "-o", tmp_path / "out", "--concurrency", "2", "--poll-interval", "0.01",
    )  # fmt: skip
    out, err = interrupt_after_polls(proc, runpod, 6)
    assert proc.returncode == 130, err
    assert sorted(runpod.cancelled) == ["job-1", "job-2"] and len(runpod.jobs) == 2
    assert "Traceback" not in err
    assert out.splitlines()[-1] == "3 image(s): 2 interrupted, 1 not started"


def test_entry_points(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "generate" in capsys.readouterr().out
    assert main([]) == 2


RENAMED = {
    "context_freenoise": "--no-freenoise",
    "context_retain_first_frame": "--retain-first-frame",
    "output": "--output-mode",
    "lora_pairs": "--lora",
}
"""Today's option names that are not ``--field-name`` (``--no-field-name`` for a field true by default)."""
IMAGE_FIELDS = {
    f"{file}_{kind}" for file in ("image", "end_image", "extend_video") for kind in ("url", "base64", "path")
}
IMAGE_FIELDS |= {"workflow", "images"}
"""Set by --image / --end-image / --video, which pick the field from the form of the file, and by ``workflow``."""
INPUT_FIELDS = {name for name, info in JobInput.model_fields.items() if not info.exclude}
GENERATE = ["generate", "--url", "http://x", "--image", "a.png", "--prompt", "p", "-o", "o.mp4"]


def option_and_value(name: str, info: FieldInfo) -> tuple[list[str], Any]:
    """The option that sets a field of the contract, given from the field's type, and the value it sends."""
    option = RENAMED.get(name, "--" + name.replace("_", "-"))
    kinds = [kind for kind in get_args(info.annotation) or (info.annotation,) if kind is not type(None)]
    if name == "lora_pairs":
        return [option, "h.safetensors,l.safetensors"], [{"high": "h.safetensors", "low": "l.safetensors"}]
    if kinds == [bool]:
        option = RENAMED.get(name, ("--no-" if info.default else "--") + name.replace("_", "-"))
        return [option], not info.default
    if get_origin(info.annotation) is Literal:
        return [option, kinds[-1]], kinds[-1]
    value = {int: 7, float: 0.5, str: "text"}[kinds[0]]
    return [option, str(value)], value


def test_every_field_of_the_contract_has_its_option() -> None:
    """One option per job field, of the field's type: a new field in the contract gets its option, and an option
    that sends what the contract does not know fails here."""
    parser = build_parser()
    sent = job_fields(parser.parse_args(GENERATE))
    assert set(sent) == INPUT_FIELDS - IMAGE_FIELDS
    assert {k: v for k, v in sent.items() if v is not None} == {"prompt": "p"}
    for name in INPUT_FIELDS - IMAGE_FIELDS:
        option, value = option_and_value(name, JobInput.model_fields[name])
        assert job_fields(parser.parse_args([*GENERATE, *option]))[name] == value, option


def option_help(parser: argparse.ArgumentParser, option: str) -> str:
    """The help of one option, on one line."""
    found = re.search(rf"^  {re.escape(option)}\b.*?(?=^  -|\Z)", parser.format_help(), re.M | re.S)
    assert found, option
    return " ".join(found.group(0).split())


def shown(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def test_the_help_tells_the_contracts_description_default_and_bounds() -> None:
    parser = argparse.ArgumentParser()
    add_job_options(parser)
    for name in INPUT_FIELDS - IMAGE_FIELDS - {"lora_pairs"}:
        info = JobInput.model_fields[name]
        text = option_help(parser, option_and_value(name, info)[0][0])
        assert " ".join(str(info.description).split()) in text
        low = [m.ge for m in info.metadata if isinstance(m, annotated_types.Ge)]
        high = [m.le for m in info.metadata if isinstance(m, annotated_types.Le)]
        if low and high:
            assert f"{shown(low[0])} to {shown(high[0])}" in text, name
        plain_default = isinstance(info.default, int | float | str) and not isinstance(info.default, bool)
        if plain_default and info.json_schema_extra is None:
            assert f"default: {shown(info.default)}" in text, name
    assert "(at most 4)" in option_help(parser, "--lora")
    assert "{480p,720p}" in option_help(parser, "--resolution")


def test_the_docs_name_the_options_not_named_after_their_field() -> None:
    docs = (REPO / "docs" / "client.md").read_text()
    assert all(f"| `{option}" in docs for option in OPTION_NAMES.values())


def test_a_new_field_in_the_contract_gets_its_option() -> None:
    schema = input_json_schema()
    schema["properties"]["motion"] = {"type": "number", "minimum": 0, "maximum": 2, "default": 1.0}
    schema["properties"]["motion"]["description"] = "how much  moves"
    parser = argparse.ArgumentParser()
    add_job_options(parser, schema)
    assert job_fields(parser.parse_args(["--prompt", "p", "--motion", "1.5"]))["motion"] == 1.5
    assert option_help(parser, "--motion") == "--motion X how much moves (default: 1; 0 to 2)"


FORBIDDEN = {
    "worker.handler",
    "worker.comfy",
    "worker.models.fetch",
    "worker.models.sources",
    "worker.models.job",
    "worker.config",
    "runpod",
    "boto3",
    "websocket",
    "huggingface_hub",
}
"""What the worker needs and the client does not. The job contract reads the model roles and the file-name
rule from ``worker.models``, whose package imports only those tables, the manifest and the volume layout."""


def imported_by(code: str) -> set[str]:
    """The top modules and ``worker.*`` modules a fresh interpreter has loaded after ``code``."""
    script = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)), file=sys.stderr)"
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stderr.strip().splitlines()[-1]))
    return {m for m in loaded if m.startswith("worker.")} | {m.split(".")[0] for m in loaded}


def test_the_client_imports_nothing_of_the_worker_it_does_not_need() -> None:
    api = imported_by("import worker.client")
    assert not api & FORBIDDEN and "rich" not in api and "worker.schema" not in api
    command = imported_by("from worker.client.__main__ import main\nassert main(['generate', '--help']) == 0")
    assert not command & FORBIDDEN, command & FORBIDDEN
    assert {"rich", "worker.schema", "worker.client.cli"} <= command


def test_without_the_extra_the_command_says_what_to_install() -> None:
    script = "import sys, runpy\nsys.modules['rich'] = None\nrunpy.run_module('worker.client', run_name='__main__')"
    done = subprocess.run([sys.executable, "-c", script, "--help"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert (
        done.stderr.startswith("wan-video needs rich") and "pip install 'wan-worker[client]'" in done.stderr
    )
