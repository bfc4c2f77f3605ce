"""The models the GPU benchmark runs: the full-size random-weight volume, written once by ``gpu_models.py`` with
ComfyUI's Python, and the check of that layout which ``--tiny`` runs on CPU."""

from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import gpu_shapes
from tests.real import make_tiny_models
from tests.real.comfy_env import ComfyEnv, SetupError, build_once
from tests.real.tiny_models import MANIFEST

from worker.models.volume import FOLDER_KINDS

MAKER = Path(__file__).resolve().with_name("gpu_models.py")


def maker_command(env: ComfyEnv, volume: Path, *extra: str) -> list[str]:
    return [
        str(env.python),
        str(MAKER),
        "--comfyui",
        str(env.source),
        "--manifest",
        str(MANIFEST),
        "--folders",
        json.dumps(FOLDER_KINDS),
        "--volume",
        str(volume),
        *extra,
    ]


def run_maker(command: list[str], log: Path) -> dict[str, Any]:
    with open(log, "ab") as err:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=err, timeout=7200, check=False)
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise SetupError(f"writing the models failed (exit {done.returncode}); the end of {log}:\n{tail}")
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def full_volume(env: ComfyEnv, cache: Path, device: str | None) -> Path:
    """The full-size random-weight volume in ``cache``, written once (about 31 GB) and reused."""
    sources = [MAKER, Path(gpu_shapes.__file__), Path(make_tiny_models.__file__), MANIFEST]
    key: dict[str, object] = {
        "sources": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sources},
        "folders": FOLDER_KINDS,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]

    def build(work: Path) -> None:
        started = time.monotonic()
        extra = ["--check", *(["--device", device] if device else [])]
        log = work / "gpu_models.log"
        print(f"writing the full-size models with random weights into {work}; progress in {log}", flush=True)
        report = run_maker(maker_command(env, work, *extra), log)
        (work / "report.json").write_text(json.dumps(report, indent=1))
        print_models(report, time.monotonic() - started)

    volume = build_once(cache / f"volume-{digest}", key, build, what="the full-size random-weight models")
    print(f"models: {volume} (written by gpu_models.py; {volume / 'report.json'} lists them)")
    return volume


def print_models(report: dict[str, Any], seconds: float) -> None:
    total = sum(item["bytes"] for item in report.values())
    print(f"wrote {total / 1e9:.1f} GB of models in {seconds:.0f} s ({total / 1e9 / seconds:.2f} GB/s):")
    for item in report.values():
        published = item.get("published_bytes")
        versus = f"published {published:,}" if published else "published size not recorded"
        print(f"  {item['file']}: {item['bytes']:,} bytes ({versus}), {item['seconds']} s")


def layout_check(env: ComfyEnv) -> bool:
    """The full-size layout, without the weights: the experts, a LoRA and the text encoder written as sparse
    files of zeros, their sizes set against the published ones, and ComfyUI's detection of the expert."""
    with tempfile.TemporaryDirectory(prefix="gpu-bench-layout-") as tmp:
        extra = (
            "--values",
            "zeros",
            "--check",
            "--device",
            "cpu",
            "--only",
            "high_model,lightning_high,text_encoder",
        )
        report = run_maker(maker_command(env, Path(tmp), *extra), Path(tmp) / "gpu_models.log")
    print("full-size layout (sparse files of zeros; what a GPU run writes with random values):")
    ok = True
    for role, item in report.items():
        published = item.get("published_bytes")
        difference = item["bytes"] - published if published else None
        note = "equal" if difference == 0 else f"{difference:+,} bytes"
        print(f"  {role}: {item['bytes']:,} bytes, published {published:,} ({note})")
        detected = item.get("comfyui")
        if detected:
            config = detected.get("unet_config") or {}
            print(
                f"    ComfyUI detects {detected['detected']}: dim {config.get('dim')}, "
                f"{config.get('num_layers')} blocks, in_dim {config.get('in_dim')}, "
                f"{detected['fp8_layers']} fp8 layers"
            )
            expected = {k: gpu_shapes.WAN22_A14B[k] for k in ("dim", "num_layers", "in_dim", "ffn_dim")}
            ok &= all(config.get(k) == v for k, v in expected.items()) and detected["mixed_precision"]
        if role == "high_model":
            ok &= difference == 0
    return ok
