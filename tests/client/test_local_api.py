"""The client end to end: runpod's local API running the worker, the ComfyUI emulator behind it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.emulator import Emulator
from tests.support.images import image_bytes
from tests.support.video import probe
from tests.support.worker_proc import REPO, LocalApi
from worker.client import Client, JobFailed, make_input
from worker.client.cli import main

pytestmark = pytest.mark.e2e

SIZE = ["--width", "256", "--height", "448", "--length", "17"]


def write_image(path: Path, fmt: str = "PNG", color: tuple[int, int, int] = (220, 120, 40)) -> Path:
    path.write_bytes(image_bytes(fmt, (120, 208), color))
    return path


def configure(emulator: Emulator, **config: float) -> None:
    """The emulator's control API (``POST /emulator/config``)."""
    requests.post(f"{emulator.url}/emulator/config", json=config, timeout=10).raise_for_status()


def test_python_api_generate(local_api: LocalApi, tmp_path: Path) -> None:
    client = Client(url=local_api.url)
    job = make_input("a fox", write_image(tmp_path / "a.png"), width=250, height=448, length=17, seed=3)
    result = client.generate(job)
    assert (result.mode, result.seed, result.width, result.length) == ("i2v", 3, 256, 17)
    assert [(a.field, a.requested, a.used) for a in result.adjustments] == [("width", 250, 256)]
    info = probe(client.video_bytes(result))
    assert (info.frames, info.width, info.height) == (17, 256, 448)


def test_generate_flf2v(local_api: LocalApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    start = write_image(tmp_path / "start.png")
    end = write_image(tmp_path / "end.jpg", "JPEG", (30, 60, 200))
    out = tmp_path / "videos" / "fox.mp4"
    args = ["generate", "--url", local_api.url, "--image", str(start), "--end-image", str(end)]
    code = main([*args, "--prompt", "a fox", *SIZE, "--fps", "24", "--seed", "11", "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    info = probe(out.read_bytes())
    assert (info.frames, info.width, info.height, float(info.fps)) == (17, 256, 448, 24.0)
    assert "seed: 11" in captured.out and "flf2v 256x448" in captured.out
    assert "timings: " in captured.out and "total " in captured.out
    assert "base64" not in captured.out + captured.err


def test_generate_failure_is_message_and_code(
    local_api: LocalApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = write_image(tmp_path / "a.png")
    out = tmp_path / "o.mp4"
    code = main(
        [
            "generate",
            "--url",
            local_api.url,
            "--image",
            str(image),
            "--prompt",
            "p",
            "--width",
            "4000",
            "-o",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip().endswith("(code invalid_input)") and "error: width" in err
    assert "{" not in err and not out.exists()


def test_batch_with_one_bad_image(
    local_api: LocalApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, outdir = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    write_image(folder / "one.png")
    write_image(folder / "two.jpg", "JPEG", (10, 200, 90))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but the rest is missing")
    args = [
        "batch",
        "--url",
        local_api.url,
        "--images",
        str(folder),
        "--prompt",
        "p",
        *SIZE,
        "-o",
        str(outdir),
    ]
    code = main([*args, "--concurrency", "2"])
    captured = capsys.readouterr()
    assert code == 1, captured.err
    assert sorted(p.name for p in outdir.iterdir()) == ["one.mp4", "two.mp4"]
    for name in ("one.mp4", "two.mp4"):
        assert probe((outdir / name).read_bytes()).frames == 17
    rows = {line.split()[0]: line for line in captured.out.splitlines()[1:-1]}
    assert " failed " in rows["broken.png"] and "invalid_image: " in rows["broken.png"]
    assert captured.out.splitlines()[-1] == "3 image(s): 2 done, 1 failed"

    assert main(args) == 1
    assert capsys.readouterr().out.splitlines()[-1] == "3 image(s): 2 skipped, 1 failed"


def test_python_api_failure(local_api: LocalApi) -> None:
    client = Client(url=local_api.url)
    with pytest.raises(JobFailed) as caught:
        client.generate({"prompt": "p", "image_base64": "bm90IGFuIGltYWdl", "length": 17})
    assert caught.value.code == "invalid_image" and caught.value.status == "FAILED"


def test_ctrl_c_stops_waiting_on_the_local_api(
    local_api: LocalApi, emulator: Emulator, tmp_path: Path
) -> None:
    configure(emulator, step_delay=0.3)
    try:
        image = write_image(tmp_path / "a.png")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        cmd = [
            sys.executable,
            "-m",
            "worker.client",
            "generate",
            "--url",
            local_api.url,
            "--image",
            str(image),
        ]
        proc = subprocess.Popen(
            [*cmd, "--prompt", "p", *SIZE, "-o", str(tmp_path / "o.mp4")],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 20
        while not emulator.state()["running"]:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 130, err
        assert "the local API cannot cancel jobs" in err and "Traceback" not in err
        assert not (tmp_path / "o.mp4").exists()
        while emulator.state()["running"] and time.monotonic() < deadline + 10:
            time.sleep(0.05)
    finally:
        configure(emulator, step_delay=0.0)
