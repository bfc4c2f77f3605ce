"""start.sh with stand-ins for ComfyUI and the worker: order of the steps, flags, deadlines, failures, signals."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from .harness import (
    START_SH,
    Harness,
    Result,
    comfyui_source_text,
    comfyui_version,
    first,
    iter_pids,
    pid_alive,
)

pytestmark = pytest.mark.timeout(60)


def test_shellcheck_is_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        if os.environ.get("CI"):
            pytest.fail("shellcheck is not installed (apt-get install shellcheck)")
        pytest.skip("shellcheck is not installed")
    result = subprocess.run([shellcheck, str(START_SH)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_start_sh_is_executable_bash_with_strict_mode() -> None:
    assert os.access(START_SH, os.X_OK)
    text = START_SH.read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text


def test_steps_run_in_order_and_the_worker_status_is_the_exit_status(harness: Harness) -> None:
    result = harness.run(WORKER_CMD=harness.worker_cmd("--exit", "0"), SKIP_MODEL_DOWNLOAD="false")

    assert result.code == 0, result.stderr
    models = first(result.worker, "models")
    comfy_start = first(result.comfy, "start")
    answered = first(result.comfy, "answered")
    worker_start = first(result.worker, "start")
    worker_exit = first(result.worker, "exit")
    comfy_term = first(result.comfy, "sigterm")
    assert models and comfy_start and answered and worker_start and worker_exit and comfy_term, (
        result.comfy,
        result.worker,
    )
    assert models["argv"] == ["models", "ensure"]
    assert models["volume_root"] == str(harness.volume)
    readahead = first(result.worker, "readahead")
    assert readahead and readahead["argv"] == ["readahead"], result.worker
    assert readahead["volume_root"] == str(harness.volume)
    assert models["t"] <= readahead["t"]
    # ensure -> ComfyUI -> ComfyUI answers -> worker -> worker ends -> ComfyUI is stopped.
    assert models["t"] <= comfy_start["t"] <= answered["t"] <= worker_start["t"]
    assert worker_exit["t"] <= comfy_term["t"]
    assert worker_start["argv"] == []
    assert worker_start["env"] == {"VOLUME_ROOT": str(harness.volume), "COMFY_PORT": str(harness.port)}
    assert "ComfyUI is ready after" in result.stderr
    for pid in iter_pids(result.comfy):
        assert not pid_alive(pid)


def test_a_read_ahead_still_running_is_stopped_with_the_container(harness: Harness) -> None:
    started = time.monotonic()
    proc = harness.start(harness.env(WORKER_CMD=harness.worker_cmd("--readahead-hang")))
    harness.wait_for_event(harness.worker_record, "readahead")
    harness.wait_for_event(harness.worker_record, "start")
    proc.send_signal(signal.SIGTERM)
    result = harness.finish(proc, started, timeout=30)

    assert result.code == 0, result.stderr
    assert first(result.worker, "readahead-sigterm") is not None, result.worker
    assert "stopping the model read-ahead" in result.stderr
    for pid in iter_pids(result.worker):
        assert not pid_alive(pid)


def test_a_failing_worker_fails_the_container_with_its_status(harness: Harness) -> None:
    result = harness.run(WORKER_CMD=harness.worker_cmd("--exit", "7"))
    assert result.code == 7, result.stderr
    assert first(result.comfy, "sigterm") is not None


def test_comfy_gets_the_design_flags_and_the_extra_args(harness: Harness) -> None:
    result = harness.run(
        WORKER_CMD=harness.worker_cmd("--exit", "0"),
        COMFY_EXTRA_ARGS="--fast fp16_accumulation --reserve-vram 1",
        COMFY_INPUT_DIR=str(harness.tmp / "in"),
        COMFY_OUTPUT_DIR=str(harness.tmp / "out"),
    )
    assert result.code == 0, result.stderr
    start = first(result.comfy, "start")
    assert start is not None
    argv = start["argv"][start["argv"].index("--listen") :]
    assert argv == [
        "--listen",
        "127.0.0.1",
        "--port",
        str(harness.port),
        "--disable-auto-launch",
        "--cache-classic",
        "--extra-model-paths-config",
        str(harness.extra_model_paths),
        "--input-directory",
        str(harness.tmp / "in"),
        "--output-directory",
        str(harness.tmp / "out"),
        "--fast",
        "fp16_accumulation",
        "--reserve-vram",
        "1",
    ]


def comfy_argv(result: Result) -> list[str]:
    start = first(result.comfy, "start")
    assert start is not None, result.stderr
    argv: list[str] = start["argv"]
    return argv[argv.index("--listen") :]


def comfyui_flags() -> set[str]:
    """Every option the shipped ComfyUI's command line defines (comfy/cli_args.py of the shared source)."""
    return set(re.findall(r'\.add_argument\(\s*"(--[a-z0-9-]+)"', comfyui_source_text("comfy/cli_args.py")))


def comfyui_cache_flags() -> list[str]:
    """The options of ComfyUI's cache group, which argparse lets a command line name only one of."""
    source = comfyui_source_text("comfy/cli_args.py")
    flags = re.findall(r'^cache_group\.add_argument\("(--[a-z0-9-]+)"', source, re.MULTILINE)
    assert "--cache-classic" in flags and "--cache-ram" in flags, flags
    return flags


def test_comfyui_knows_every_flag_start_sh_passes(harness: Harness) -> None:
    result = harness.run(
        WORKER_CMD=harness.worker_cmd("--exit", "0"),
        COMFY_INPUT_DIR=str(harness.tmp / "in"),
        COMFY_OUTPUT_DIR=str(harness.tmp / "out"),
    )
    assert result.code == 0, result.stderr
    passed = {a for a in comfy_argv(result) if a.startswith("--")}
    assert "--cache-classic" in passed
    assert passed - comfyui_flags() == set(), f"ComfyUI {comfyui_version()} has no such option"


def test_classic_cache_is_the_default_once(harness: Harness) -> None:
    result = harness.run(WORKER_CMD=harness.worker_cmd("--exit", "0"), COMFY_EXTRA_ARGS="--reserve-vram 1")
    assert result.code == 0, result.stderr
    argv = comfy_argv(result)
    assert argv.count("--cache-classic") == 1
    assert [a for a in argv if a.startswith("--cache-") or a == "--high-ram"] == ["--cache-classic"]


@pytest.mark.parametrize(
    "extra",
    ["--cache-classic", "--cache-ram", "--cache-ram 4 32", "--cache-lru 16", "--cache-none", "--high-ram"],
)
def test_a_cache_mode_in_the_extra_args_replaces_the_default(harness: Harness, extra: str) -> None:
    result = harness.run(WORKER_CMD=harness.worker_cmd("--exit", "0"), COMFY_EXTRA_ARGS=f"--fast {extra}")
    assert result.code == 0, result.stderr
    argv = comfy_argv(result)
    # ComfyUI's cache options are mutually exclusive: only the one the deployment asked for is passed.
    assert argv[-len(extra.split()) - 1 :] == ["--fast", *extra.split()]
    assert argv.count("--cache-classic") == (1 if extra == "--cache-classic" else 0)
    assert "not adding --cache-classic" in result.stderr


def test_every_cache_option_of_comfyui_is_recognised_as_one(harness: Harness) -> None:
    """start.sh steps aside for each option of ComfyUI's cache group, so that ComfyUI never gets two."""
    text = START_SH.read_text(encoding="utf-8")
    pattern = re.search(r"^\t(--cache-\* \| --high-ram)\)$", text, re.MULTILINE)
    assert pattern, "start.sh recognises the cache options by the patterns --cache-* and --high-ram"
    for flag in comfyui_cache_flags():
        assert flag.startswith("--cache-") or flag == "--high-ram", flag


def test_no_sage_attention_and_an_old_setting_is_named(harness: Harness) -> None:
    result = harness.run(WORKER_CMD=harness.worker_cmd("--exit", "0"), USE_SAGE_ATTENTION="true")
    assert result.code == 0, result.stderr
    assert "--use-sage-attention" not in comfy_argv(result)
    assert "USE_SAGE_ATTENTION is no longer read" in result.stderr
    assert "--use-sage-attention" not in START_SH.read_text(encoding="utf-8")


def test_no_extra_model_paths_flag_when_the_setting_is_empty(harness: Harness) -> None:
    result = harness.run(WORKER_CMD=harness.worker_cmd("--exit", "0"), EXTRA_MODEL_PATHS="")
    assert result.code == 0, result.stderr
    start = first(result.comfy, "start")
    assert start is not None and "--extra-model-paths-config" not in start["argv"]


def test_serve_api_locally_passes_runpod_api_flags(harness: Harness) -> None:
    result = harness.run(
        WORKER_CMD=harness.worker_cmd("--exit", "0"),
        SERVE_API_LOCALLY="true",
        LOCAL_API_PORT="8123",
        WORKER_EXTRA_ARGS="--rp_log_level DEBUG",
    )
    assert result.code == 0, result.stderr
    start = first(result.worker, "start")
    assert start is not None
    assert start["argv"] == [
        "--rp_serve_api",
        "--rp_api_host",
        "0.0.0.0",
        "--rp_api_port",
        "8123",
        "--rp_log_level",
        "DEBUG",
    ]


def test_skip_model_download(harness: Harness) -> None:
    result = harness.run(WORKER_CMD=harness.worker_cmd("--exit", "0"), SKIP_MODEL_DOWNLOAD="true")
    assert result.code == 0, result.stderr
    assert first(result.worker, "models") is None
    assert first(result.worker, "start") is not None


def test_a_failed_model_ensure_stops_before_comfy(harness: Harness) -> None:
    result = harness.run(WORKER_CMD=harness.worker_cmd("--models-exit", "2"), SKIP_MODEL_DOWNLOAD="false")
    assert result.code != 0
    assert "models ensure' failed (exit 2)" in result.stderr
    assert result.comfy == []
    assert first(result.worker, "start") is None
    assert first(result.worker, "readahead") is None


def test_fails_at_the_deadline_when_comfy_never_answers(harness: Harness) -> None:
    # The deadline leaves the stand-in (a Python process) time to start listening on a busy machine.
    result = harness.run(COMFY_CMD=harness.comfy_cmd("hang"), COMFY_START_TIMEOUT_S="5")

    assert result.code != 0
    assert first(result.comfy, "listening") is not None
    assert "COMFY_START_TIMEOUT_S" in result.stderr
    # Not before the deadline, and not long after it (one probe is bounded to 1 s; the margin is for busy machines).
    assert 5.0 <= result.elapsed < 15.0, result.elapsed
    assert first(result.worker, "start") is None
    # The read-ahead runs while ComfyUI starts, not after it answers.
    assert first(result.worker, "readahead") is not None
    assert first(result.comfy, "sigterm") is not None
    for pid in iter_pids(result.comfy):
        assert not pid_alive(pid)


def test_fails_at_once_when_comfy_exits_before_answering(harness: Harness) -> None:
    result = harness.run(COMFY_CMD=harness.comfy_cmd("exit", "--exit-code", "3"), COMFY_START_TIMEOUT_S="60")
    assert result.code != 0
    assert "ComfyUI exited (status 3) before it answered" in result.stderr
    assert result.elapsed < 15.0  # not the 60 s deadline
    assert first(result.worker, "start") is None


def test_exits_non_zero_when_comfy_dies_while_the_worker_runs(harness: Harness) -> None:
    comfy = harness.comfy_cmd(
        "die", "--die-after", "0.3", "--exit-code", "0", "--die-when-exists", str(harness.worker_record)
    )
    result = harness.run(COMFY_CMD=comfy)

    assert result.code != 0
    assert first(result.worker, "start") is not None
    # The worker is told to stop, and is gone when the container exits.
    assert first(result.worker, "sigterm") is not None
    for pid in iter_pids(result.worker):
        assert not pid_alive(pid)
    assert "ComfyUI exited" in result.stderr and "while the worker was running" in result.stderr


def test_comfy_exit_status_is_kept_when_it_dies(harness: Harness) -> None:
    result = harness.run(COMFY_CMD=harness.comfy_cmd("die", "--die-after", "0.3", "--exit-code", "9"))
    assert result.code == 9


def test_sigterm_goes_to_the_worker_first_then_to_comfy(harness: Harness) -> None:
    started = time.monotonic()
    proc = harness.start(harness.env(WORKER_CMD=harness.worker_cmd("--term-delay", "0.5")))
    harness.wait_for_event(harness.worker_record, "start")
    proc.send_signal(signal.SIGTERM)
    result = harness.finish(proc, started, timeout=30)

    assert result.code == 0, result.stderr
    worker_term = first(result.worker, "sigterm")
    worker_exit = first(result.worker, "exit")
    comfy_term = first(result.comfy, "sigterm")
    assert worker_term and worker_exit and comfy_term
    # ComfyUI stays up while the worker finishes its job, and is stopped after it.
    assert worker_term["t"] < worker_exit["t"] <= comfy_term["t"]
    assert worker_exit["t"] - worker_term["t"] >= 0.45
    for pid in [*iter_pids(result.comfy), *iter_pids(result.worker)]:
        assert not pid_alive(pid)


def test_sigterm_while_waiting_for_comfy_stops_it(harness: Harness) -> None:
    started = time.monotonic()
    proc = harness.start(harness.env(COMFY_CMD=harness.comfy_cmd("hang"), COMFY_START_TIMEOUT_S="60"))
    harness.wait_for_event(harness.comfy_record, "listening")
    proc.send_signal(signal.SIGTERM)
    result = harness.finish(proc, started, timeout=30)

    assert result.code == 143
    assert first(result.comfy, "sigterm") is not None
    assert first(result.worker, "start") is None
    assert result.elapsed < 15.0  # not the 60 s deadline


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("COMFY_START_TIMEOUT_S", "soon", "COMFY_START_TIMEOUT_S must be a number of seconds"),
        ("COMFY_PORT", "http", "COMFY_PORT must be a port number"),
        ("SKIP_MODEL_DOWNLOAD", "perhaps", "SKIP_MODEL_DOWNLOAD must be true or false"),
        ("SERVE_API_LOCALLY", "perhaps", "SERVE_API_LOCALLY must be true or false"),
    ],
)
def test_invalid_settings_fail_before_anything_starts(
    harness: Harness, name: str, value: str, message: str
) -> None:
    result = harness.run(**{name: value})
    assert result.code != 0
    assert message in result.stderr
    assert result.comfy == []


def test_a_missing_extra_model_paths_file_fails(harness: Harness) -> None:
    result = harness.run(EXTRA_MODEL_PATHS=str(harness.tmp / "nowhere.yaml"))
    assert result.code != 0
    assert "EXTRA_MODEL_PATHS names no file" in result.stderr
    assert result.comfy == []
