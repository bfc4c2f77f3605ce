"""What the GPU benchmark runs: the worker's jobs at full and tiny size, and the configurations ComfyUI is started
in, in priority order, with the jobs each runs by default."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tests.support.images import data_uri, image_bytes

LEAVE_GB = (24, 48)
"""The memory-limit configurations: --reserve-vram so that about this much GPU memory is left to ComfyUI."""


# ------------------------------------------------------------------------------------------- jobs
@dataclass(frozen=True)
class Job:
    name: str
    width: int
    height: int
    length: int
    flf2v: bool = False
    interpolate: int = 1
    tiny_size: tuple[int, int] = (128, 128)
    """Its width and height on CPU with the tiny models (9 frames)."""

    @property
    def video(self) -> str:
        return f"{self.width}x{self.height}x{self.length}"

    def tiny(self) -> Job:
        return replace(self, width=self.tiny_size[0], height=self.tiny_size[1], length=9)


FULL_JOBS = (
    Job("i2v", 480, 832, 81),
    Job("i2v-720p", 1280, 720, 81, tiny_size=(224, 128)),
    Job("flf2v", 480, 832, 81, flf2v=True),
    Job("interpolate", 480, 832, 81, interpolate=2),
)
"""In priority order: 4-step Lightning (the worker's defaults) at 480p and 720p, FLF2V, FILM x2."""
TINY_JOBS = tuple(job.tiny() for job in FULL_JOBS)
ALL_JOBS = tuple(job.name for job in FULL_JOBS)
SPEED_JOBS = ALL_JOBS[:2]
"""What the speed configurations run by default: I2V at 480p and 720p."""
MEMORY_JOBS = ALL_JOBS[:1]
"""What the memory configurations run by default: I2V at 480p."""


def job_input(job: Job, *, prompt: str, seed: int, film: str | None) -> dict[str, Any]:
    size = (job.width, job.height)
    fields: dict[str, Any] = {
        "prompt": prompt,
        "image_base64": data_uri(image_bytes("PNG", size, (200, 60, 30))),
        "width": job.width,
        "height": job.height,
        "length": job.length,
        "seed": seed,
        "output": "base64",
    }
    if job.flf2v:
        fields["end_image_base64"] = data_uri(image_bytes("PNG", size, (30, 60, 200)))
    if job.interpolate > 1:
        fields["interpolate"] = job.interpolate
        if film:
            fields["interpolation_model"] = film
    return fields


# ------------------------------------------------------------------------------------------- configurations
@dataclass(frozen=True)
class Config:
    name: str
    options: tuple[str, ...]
    what: str
    jobs: tuple[str, ...]
    """The jobs it runs unless --jobs says otherwise."""


def fast_options(source: Path) -> list[str]:
    """The ``--fast`` options this ComfyUI defines (its ``PerformanceFeature`` values)."""
    text = (source / "comfy" / "cli_args.py").read_text(encoding="utf-8")
    block = re.search(r"class PerformanceFeature\(enum\.Enum\):\n((?:[ \t]+\w+ = \"[^\"]+\"\n)+)", text)
    return re.findall(r'= "([^"]+)"', block.group(1)) if block else []


def catalogue(fast: list[str], sage: bool, vram_gb: float | None) -> tuple[list[Config], dict[str, str]]:
    """Every configuration, in priority order, and those left out with the reason."""
    first_fast = [o for o in ("fp8_matrix_mult",) if o in fast]
    configs = [
        Config("sdpa", (), "PyTorch SDPA, ComfyUI's default (the image's today)", ALL_JOBS),
        Config("ck", ("--use-ck-attention",), "comfy-kitchen INT8 attention", SPEED_JOBS),
        *(Config(f"fast-{o}", ("--fast", o), f"--fast {o}", SPEED_JOBS) for o in first_fast),
    ]
    skipped: dict[str, str] = {}
    for leave in LEAVE_GB:
        name = f"reserve-{leave}gb"
        if vram_gb is None:
            skipped[name] = "no GPU"
        elif vram_gb <= leave:
            skipped[name] = f"the GPU has {vram_gb:.0f} GB"
        else:
            reserve = f"{vram_gb - leave:.1f}"
            what = f"--reserve-vram {reserve}: about {leave} GB left to ComfyUI"
            configs.append(Config(name, ("--reserve-vram", reserve), what, MEMORY_JOBS))
    configs.append(Config("highvram", ("--highvram",), "both experts kept on the GPU", MEMORY_JOBS))
    if sage:
        configs.append(Config("sage", ("--use-sage-attention",), "SageAttention", SPEED_JOBS))
    else:
        skipped["sage"] = "sageattention is not importable"
    configs += [
        Config(f"fast-{o}", ("--fast", o), f"--fast {o}", SPEED_JOBS) for o in fast if o not in first_fast
    ]
    configs.append(Config("fast", ("--fast",), "every --fast option", SPEED_JOBS))
    return configs, skipped


def probe(python: Path, code: str) -> str | None:
    """What ``code`` prints in ComfyUI's Python, or None if it fails."""
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=300, check=False)
    return done.stdout.strip() if done.returncode == 0 else None


def gpu_memory_gb(python: Path) -> float | None:
    code = "import torch; print(torch.cuda.mem_get_info()[1] if torch.cuda.is_available() else 0)"
    total = probe(python, code)
    return int(total) / 2**30 if total and int(total) else None


def plan(
    configs: list[Config], skipped: dict[str, str], only: list[str], jobs: list[str]
) -> list[tuple[Config, list[str]]]:
    by_name = {c.name: c for c in configs}
    unknown = [n for n in only if n not in by_name]
    if unknown:
        reasons = [f"{n} ({skipped[n]})" if n in skipped else n for n in unknown]
        raise SystemExit(f"not available here: {', '.join(reasons)}; available: {', '.join(by_name)}")
    chosen = [by_name[n] for n in only] if only else configs
    return [(c, jobs or list(c.jobs)) for c in chosen]
