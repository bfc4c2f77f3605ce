"""``wan-video workflow``, ``extend``, ``--segments`` and ``--webhook`` against a fake RunPod endpoint: the
request bodies the API sees, segments chained by URL and by base64, RunPod's payload limit, the files saved."""

from __future__ import annotations

import argparse
import base64
import json
from pathlib import Path

import pytest

from tests.client.fake_runpod import Body, FakeRunPod, completed, progress, queued
from worker.client import (
    PAYLOAD_LIMITS,
    Client,
    UsageError,
    make_input,
    workflow_input,
)
from worker.client.cli import main
from worker.client.options import add_job_options, job_fields
from worker.schema import input_json_schema

GRAPH = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "start.png"}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "out"}},
}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def clip(n: int) -> bytes:
    return f"\x00\x00\x00\x18ftypmp42 segment {n}".encode()


def extension(n: int, given: int, **video: str) -> Body:
    """Segment ``n``'s result: 49 new frames with a 5-frame overlap, the video inline or by URL."""
    frames = {"given": given, "new": 49, "delivered": given + 44} if given else {}
    return completed(
        {"mode": "i2v", "seed": 7, "width": 480, "height": 832, "length": 49, "fps": 16.0, "steps": 4}
        | ({"frames": frames} if frames else {})
        | (video or {"video": b64(clip(n))})
    )


def cli(runpod: FakeRunPod, *args: str | Path) -> int:
    return main([str(a) for a in (*args, "--endpoint", runpod.endpoint, "--poll-interval", "0.01")])


def test_workflow_sends_the_graph_and_its_files_and_saves_every_output(
    runpod: FakeRunPod, png: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = tmp_path / "graph.json"
    graph.write_text(json.dumps(GRAPH))
    runpod.files["clip.mp4"] = clip(1)
    outputs = [
        {"node_id": "2", "filename": "out_00001_.png", "mime_type": "image/png", "data": b64(b"png one")},
        {"node_id": "9", "filename": "out_00001_.png", "mime_type": "image/png", "data": b64(b"png two")},
        {
            "node_id": "7",
            "filename": "../../clip.mp4",
            "mime_type": "video/mp4",
            "url": runpod.file_url("clip.mp4"),
        },
    ]
    runpod.scripts.append(
        [progress("sampling", 1, 2), completed({"outputs": outputs, "video_url": outputs[2]["url"]})]
    )
    out = tmp_path / "out"
    code = cli(
        runpod, "workflow", graph, "--image", f"start.png={png}", "--image", "mask.png=https://example.com/m.png",
        "--output-dir", out, "--output-mode", "base64", "--webhook", "https://hooks.example.com/done",
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    job = runpod.jobs["job-1"]
    assert job.input == {
        "workflow": GRAPH,
        "images": [
            {"name": "start.png", "image": b64(png.read_bytes())},
            {"name": "mask.png", "image": "https://example.com/m.png"},
        ],
        "output": "base64",
    }
    assert job.webhook == "https://hooks.example.com/done"
    assert sorted(p.name for p in out.iterdir()) == ["9_out_00001_.png", "clip.mp4", "out_00001_.png"]
    assert (out / "out_00001_.png").read_bytes() == b"png one" and (
        out / "9_out_00001_.png"
    ).read_bytes() == b"png two"
    assert (out / "clip.mp4").read_bytes() == clip(1) and not (tmp_path / "clip.mp4").exists()
    assert f"saved {out / 'clip.mp4'} (" in captured.out


def test_workflow_usage_errors(
    runpod: FakeRunPod, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = tmp_path / "graph.json"
    graph.write_text(json.dumps(GRAPH))
    out = tmp_path / "out"
    assert cli(runpod, "workflow", tmp_path / "none.json", "--output-dir", out) == 2
    assert "none.json: not a readable JSON graph" in capsys.readouterr().err
    assert cli(runpod, "workflow", graph, "--image", "no-equals-sign", "--output-dir", out) == 2
    assert (
        cli(runpod, "workflow", graph, "--image", f"a.png={tmp_path / 'gone.png'}", "--output-dir", out) == 2
    )
    assert "gone.png: no such image file" in capsys.readouterr().err
    assert (
        cli(
            runpod, "workflow", graph, "--prompt", "built-in fields are not options here", "--output-dir", out
        )
        == 2
    )
    assert runpod.jobs == {}


def test_extend_sends_the_video_and_says_the_frames(
    runpod: FakeRunPod, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    given = tmp_path / "clip.mp4"
    given.write_bytes(clip(0))
    runpod.scripts.append([queued(), extension(1, given=81)])
    out = tmp_path / "longer.mp4"
    code = cli(
        runpod, "extend", "--video", given, "--prompt", "on it goes", "--set", "extend_frames=5", "-o", out
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert runpod.jobs["job-1"].input == {
        "prompt": "on it goes",
        "extend_video_base64": b64(clip(0)),
        "extend_frames": 5,
    }
    assert out.read_bytes() == clip(1)
    assert "480x832, 125 frames at 16 fps" in captured.out

    runpod.scripts.append([extension(2, given=81)])
    url = "https://example.com/clip.mp4"
    assert cli(runpod, "extend", "--video-url", url, "--prompt", "p", "-o", out) == 0
    assert runpod.jobs["job-2"].input == {"prompt": "p", "extend_video_url": url}
    assert cli(runpod, "extend", "--video", tmp_path / "gone.mp4", "--prompt", "p", "-o", out) == 2
    assert "gone.mp4: no such video file" in capsys.readouterr().err


def test_segments_chain_by_url(
    runpod: FakeRunPod, png: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bucket: each segment extends the last one's ``video_url``; the last video is the whole one."""
    for n in (1, 2, 3):
        runpod.files[f"seg{n}.mp4"] = clip(n)
        runpod.scripts.append(
            [
                progress("sampling", 2, 4),
                extension(n, 49 + 44 * (n - 2) if n > 1 else 0, video_url=runpod.file_url(f"seg{n}.mp4")),
            ]
        )
    out = tmp_path / "long.mp4"
    args = (
        "generate",
        "--image",
        png,
        "--end-image",
        png,
        "--prompt",
        "a fox",
        "--seed",
        "7",
        "--length",
        "49",
    )
    code = cli(runpod, *args, "--segments", "3", "-o", out, "--webhook", "https://hooks.example.com/x")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    first, second, third = (runpod.jobs[f"job-{n}"].input for n in (1, 2, 3))
    assert {"image_base64", "end_image_base64"} <= set(first) and first["prompt"] == "a fox"
    common = {"prompt": "a fox", "seed": 7, "length": 49}
    assert second == common | {"extend_video_url": runpod.file_url("seg1.mp4")}
    assert third == common | {"extend_video_url": runpod.file_url("seg2.mp4")}
    assert {job.webhook for job in runpod.jobs.values()} == {"https://hooks.example.com/x"}
    assert out.read_bytes() == clip(3)
    assert "(segment 3 of 3)" in captured.err
    assert "480x832, 137 frames at 16 fps" in captured.out
    assert [hit.path for hit in runpod.hits() if hit.path.startswith("/files/")] == ["/files/seg3.mp4"]


def test_segments_chain_by_base64(runpod: FakeRunPod, tmp_path: Path) -> None:
    runpod.scripts.extend([[extension(1, 0)], [extension(2, 49)]])
    given = tmp_path / "clip.mp4"
    given.write_bytes(clip(0))
    code = cli(
        runpod, "extend", "--video", given, "--prompt", "p", "--segments", "2", "-o", tmp_path / "o.mp4"
    )
    assert code == 0
    assert runpod.jobs["job-1"].input["extend_video_base64"] == b64(clip(0))
    assert runpod.jobs["job-2"].input == {"prompt": "p", "extend_video_base64": b64(clip(1))}
    assert (tmp_path / "o.mp4").read_bytes() == clip(2)
    assert (
        cli(runpod, "extend", "--video", given, "--prompt", "p", "--segments", "0", "-o", tmp_path / "o.mp4")
        == 2
    )


def test_a_segment_over_runpods_limit_is_refused_before_it_is_sent(
    runpod: FakeRunPod, png: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    big = b"\x00" * (PAYLOAD_LIMITS["/run"] * 3 // 4 + 100_000)  # its base64 is a little over 10 MB
    runpod.scripts.append([completed({"video": b64(big), "length": 49})])
    out = tmp_path / "o.mp4"
    code = cli(runpod, "generate", "--image", png, "--prompt", "p", "--segments", "3", "-o", out)
    err = capsys.readouterr().err
    assert code == 1 and not out.exists()
    assert len(runpod.jobs) == 1 and runpod.calls("run") == 1
    assert "error: segment 2 of 3: the request is 10.1 MB, over the 10 MB RunPod takes at /run" in err
    assert "use a bucket (output=url)" in err


def test_the_python_api(runpod: FakeRunPod, png: Path, tmp_path: Path) -> None:
    client = Client(endpoint=runpod.endpoint, poll_interval=(0.01, 0.05))
    runpod.scripts.extend([[extension(1, 0)], [extension(2, 49, video_url="https://b.example.com/2.mp4")]])
    seen: list[str] = []
    result = client.generate(
        make_input("p", png), segments=2, webhook="https://h.example.com", on_submit=seen.append
    )
    assert seen == ["job-1", "job-2"] and result.video_url == "https://b.example.com/2.mp4"
    assert result.frames == {"given": 49, "new": 49, "delivered": 93}
    assert runpod.jobs["job-2"].input == {"prompt": "p", "extend_video_base64": b64(clip(1))}
    assert runpod.jobs["job-2"].webhook == "https://h.example.com"
    assert make_input("p", video="volume:clips/a.mp4") == {"prompt": "p", "extend_video_path": "clips/a.mp4"}
    job = workflow_input(GRAPH, {"start.png": png}, output="url", models=None)
    assert job == {
        "workflow": GRAPH,
        "images": [{"name": "start.png", "image": b64(png.read_bytes())}],
        "output": "url",
    }
    with pytest.raises(UsageError, match="over the 10 MB RunPod takes at /run"):
        client.submit({"prompt": "p", "image_base64": "A" * PAYLOAD_LIMITS["/run"]})
    assert runpod.calls("run") == 2


def test_the_new_contract_fields_get_their_options() -> None:
    """The contract's extension fields become options by themselves (``--extend-frames``, ``--return-last-frame``), the
    video fields are set by ``--video`` / ``--video-url``, and ``workflow`` offers only what goes beside a graph."""
    parser = argparse.ArgumentParser()
    add_job_options(parser)
    sent = job_fields(parser.parse_args(["--prompt", "p", "--extend-frames", "9", "--return-last-frame"]))
    assert (sent["extend_frames"], sent["return_last_frame"]) == (9, True)
    assert not {"extend_video_url", "extend_video_base64", "workflow", "images"} & set(sent)
    graph = argparse.ArgumentParser()
    add_job_options(graph, input_json_schema(workflow=True))
    models = '[{"url": "u", "folder": "loras"}]'
    sent = job_fields(graph.parse_args(["--output-mode", "url", "--models", models]))
    assert sent == {"output": "url", "models": [{"url": "u", "folder": "loras"}]}
    with pytest.raises(SystemExit):
        graph.parse_args(["--prompt", "p"])
