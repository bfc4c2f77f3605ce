"""The GPU benchmark: the worker's real pipeline at full size with random weights, nothing downloaded.

It writes the default models at full size with random weights (``gpu_models.py``, on the GPU), starts ComfyUI
once per configuration (attention, ``--fast`` options, memory limits), runs the worker's own jobs through its
handler, and prints, per configuration and job: the load time, seconds per step of each expert, the VAE decode,
the interpolation, the total, the peak GPU memory, the ratio to the FLOP floor (with its arithmetic) and the
output's PSNR against the reference (SDPA) run at the same seed.

    python bench/gpu.py                          # on a GPU: every configuration, the image's ComfyUI
    python bench/gpu.py --configs sdpa,ck,fast-fp8_matrix_mult --jobs i2v   # the shortest useful run
    python bench/gpu.py --tiny                   # the same path on CPU with tiny models (about 8 min)
    python bench/gpu.py --tiny --comfy-url URL --volume DIR   # against a running ComfyUI, as one configuration

See bench/README.md for what each column means and how to run it on a GPU machine.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

import gpu_report  # noqa: E402
import gpu_shapes  # noqa: E402
import requests  # noqa: E402
from gpu_configs import (  # noqa: E402
    ALL_JOBS,
    FULL_JOBS,
    TINY_JOBS,
    Config,
    Job,
    catalogue,
    fast_options,
    gpu_memory_gb,
    job_input,
    plan,
    probe,
)
from gpu_observe import MemorySampler, Tap  # noqa: E402
from gpu_volume import full_volume, layout_check  # noqa: E402
from tests.real import make_tiny_models  # noqa: E402
from tests.real.comfy_env import ComfyEnv, SetupError, ensure_env, pins_from_dockerfile  # noqa: E402
from tests.real.comfyui_server import RealComfyUI  # noqa: E402
from tests.real.tiny_models import ensure_volume  # noqa: E402
from tests.support.worker_proc import free_port  # noqa: E402

from worker.config import Settings  # noqa: E402
from worker.handler import handle_job  # noqa: E402

PROMPT = "a red fox runs through the snow"
PEAK_TFLOPS = 989.0
"""H100 and H200 (SXM): dense bf16 tensor-core peak, TFLOP/s."""
PEAK_TFLOPS_FP8 = 1979.0
"""The same GPUs' dense fp8 peak."""
START_TIMEOUT_S = 900.0
FLAT = 1.0
"""Frames whose pixel values spread less than this (standard deviation, 0-255) are flat: no use for a PSNR."""


# ------------------------------------------------------------------------------------------- ComfyUI
class BenchComfyUI(RealComfyUI):
    """The real tier's ComfyUI process (the image's options, its own folders), with a configuration's options
    added; on a GPU without ``--cpu``."""

    def __init__(
        self, env: ComfyEnv, volume: Path, workdir: Path, options: tuple[str, ...], cpu: bool
    ) -> None:
        super().__init__(env, volume, workdir)
        self.options = options
        self.cpu = cpu

    def command(self) -> list[str]:
        command = super().command()
        if not self.cpu:
            command.remove("--cpu")
        return [*command, *self.options]


@dataclass
class Server:
    """A ComfyUI to run jobs against, and the folders the worker cleans up after each job."""

    url: str
    input_dir: str | None = None
    output_dir: str | None = None


# ------------------------------------------------------------------------------------------- running
@dataclass
class Bench:
    expert: gpu_report.Expert
    peak: gpu_report.Peak
    jobs: dict[str, Job]
    prompt: str
    seed: int
    film: str | None
    volume: Path
    reference: str | None = None
    """The configuration whose outputs the others are compared with."""
    ref_frames: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    floors: dict[str, gpu_report.Floor] = field(default_factory=dict)
    systems: dict[str, str] = field(default_factory=dict)

    def run(self, config: Config, server: Server, job_names: list[str]) -> None:
        self.systems[config.name] = describe_system(server.url)
        env = dict(os.environ)
        env.update(
            VOLUME_ROOT=str(self.volume),
            INLINE_OUTPUT_MAX_MB="4096",
            PROGRESS_UPDATES="false",
            COMFY_INPUT_DIR=server.input_dir or env.get("COMFY_INPUT_DIR", ""),
            COMFY_OUTPUT_DIR=server.output_dir or env.get("COMFY_OUTPUT_DIR", ""),
        )
        with Tap(server.url, free_port()) as tap, MemorySampler(server.url) as memory:
            settings = Settings.from_env({**env, "COMFY_HOST": "127.0.0.1", "COMFY_PORT": str(tap.port)})
            for name in job_names:
                self.rows.append(self.one(config, self.jobs[name], settings, tap, memory))

    def one(
        self, config: Config, job: Job, settings: Settings, tap: Tap, memory: MemorySampler
    ) -> dict[str, Any]:
        row: dict[str, Any] = {"config": config.name, "job": job.name, "video": job.video}
        tap.take()
        memory.reset()
        fields = job_input(job, prompt=self.prompt, seed=self.seed, film=self.film)
        started = time.monotonic()
        result = asyncio.run(handle_job({"id": f"bench-{config.name}-{job.name}", "input": fields}, settings))
        wall = time.monotonic() - started
        stages = gpu_report.stages(tap.take())
        print(f"[gpu-bench] {config.name} / {job.name}: {wall:.1f} s", file=sys.stderr, flush=True)
        if "error" in result:
            row["error"] = str(result["error"])[:300]
            return row
        steps, high_steps, cfg = result["steps"], result["high_noise_steps"], result["cfg"]
        floor = gpu_report.floor(
            self.expert, self.peak, job.width, job.height, job.length, steps * (1 if cfg == 1 else 2)
        )
        self.floors.setdefault(job.video, floor)
        per_step = stages.step
        sampling = None
        if per_step.get("high") is not None and per_step.get("low") is not None:
            sampling = high_steps * per_step["high"] + (steps - high_steps) * per_step["low"]
        frames = gpu_report.frames(result["video"])
        if self.reference is None:
            self.reference = config.name
        if config.name == self.reference:
            self.ref_frames[job.name] = frames
            deviation: Any = "ref"
        else:
            ref = self.ref_frames.get(job.name)
            deviation = None if ref is None else gpu_report.psnr(ref, frames)
        row.update(
            {
                "load s": stages.load,
                "high s/step": per_step.get("high"),
                "low s/step": per_step.get("low"),
                "swap s": stages.swap,
                "decode s": stages.nodes.get(gpu_report.DECODE_NODE),
                "interp s": stages.nodes.get(gpu_report.graph.INTERPOLATE_NODE),
                "total s": result["timings"]["total"],
                "VRAM GB": memory.peak_gb(),
                "x floor": None if sampling is None else sampling / floor.seconds(self.peak),
                "PSNR dB": deviation,
                "frames": int(frames.shape[0]),
                "frame std": round(float(frames.std()), 2),
                "nodes": {k: round(v, 3) for k, v in stages.nodes.items()},
                "comfyui s": stages.comfyui,
                "worker timings": result["timings"],
            }
        )
        return row


def describe_system(url: str) -> str:
    try:
        stats = requests.get(f"{url}/system_stats", timeout=10).json()
    except (requests.RequestException, ValueError):
        return "unknown"
    system, device = stats.get("system", {}), (stats.get("devices") or [{}])[0]
    return (
        f"ComfyUI {system.get('comfyui_version')}, torch {system.get('pytorch_version')}, "
        f"{device.get('name')} ({device.get('vram_total', 0) / 2**30:.0f} GB)"
    )


@contextmanager
def started(env: ComfyEnv, volume: Path, workdir: Path, config: Config, cpu: bool) -> Iterator[Server]:
    workdir.mkdir(parents=True, exist_ok=True)
    server = BenchComfyUI(env, volume, workdir, config.options, cpu)
    print(
        f"[gpu-bench] {config.name}: starting ComfyUI ({config.what}); log {server.log_path}", file=sys.stderr
    )
    try:
        server.start(timeout_s=START_TIMEOUT_S)
        yield Server(server.url, str(server.input_dir), str(server.output_dir))
    finally:
        server.stop()


# ------------------------------------------------------------------------------------------- output
def report(bench: Bench, skipped: dict[str, str]) -> None:
    print(f"\nGPU benchmark, {datetime.date.today().isoformat()}; seed {bench.seed}; prompt {bench.prompt!r}")
    for name, system in bench.systems.items():
        print(f"  {name}: {system}")
    for name, why in skipped.items():
        print(f"  {name}: not run ({why})")
    print(
        "\nFLOP floor of the sampling (the 'x floor' column divides the measured steps by the 16-bit floor):"
    )
    for floor in bench.floors.values():
        print("\n".join(floor.lines))
    print(f"\nPSNR: of the decoded frames against the {bench.reference} run of the same job and seed")
    for row in bench.rows:
        if row.get("frame std", FLAT) < FLAT:
            print(f"  warning: {row['config']} / {row['job']} made flat frames: PSNR cannot tell it apart")
    print("\n".join(gpu_report.table(bench.rows)))


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CPU, tiny models and sizes (the real tier's)")
    parser.add_argument(
        "--configs", default="", help="comma-separated configurations (default: all there are)"
    )
    parser.add_argument("--jobs", default="", help="comma-separated jobs for every configuration")
    parser.add_argument("--list", action="store_true", help="print the configurations and jobs, and exit")
    parser.add_argument("--comfyui", type=Path, default=Path(os.environ.get("COMFY_DIR", "/opt/ComfyUI")))
    parser.add_argument("--python", type=Path, default=Path(sys.executable), help="ComfyUI's Python")
    parser.add_argument("--comfy-args", default="", help="more ComfyUI options for every configuration")
    parser.add_argument("--comfy-url", help="run against this ComfyUI, as one configuration (not started)")
    parser.add_argument("--label", default="given", help="the --comfy-url configuration's name")
    parser.add_argument("--volume", type=Path, help="a volume with the models (default: written and cached)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "wan-worker-bench")
    parser.add_argument("--device", help="where gpu_models.py generates the weights (default: cuda)")
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--peak-tflops", type=float, default=PEAK_TFLOPS, help="16-bit dense peak")
    parser.add_argument("--peak-tflops-fp8", type=float, default=PEAK_TFLOPS_FP8, help="fp8 dense peak")
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    return parser.parse_args(argv)


def list_plan(configs: list[Config], skipped: dict[str, str], jobs: dict[str, Job]) -> None:
    for config in configs:
        options = " ".join(config.options)
        print(f"{config.name:<24} {options:<28} {config.what}; jobs {','.join(config.jobs)}")
    for name, why in skipped.items():
        print(f"{name:<24} not available: {why}")
    print(f"jobs: {', '.join(f'{j.name} ({j.video})' for j in jobs.values())}")


def expert_shape(tiny: bool) -> gpu_report.Expert:
    """The expert the FLOP floor counts: the tiny models' or the published Wan2.2 A14B config."""
    shape: dict[str, Any] = dict(make_tiny_models.EXPERT_CONFIG if tiny else gpu_shapes.WAN22_A14B)
    return gpu_report.Expert(
        dim=int(shape["dim"]),
        ffn_dim=int(shape["ffn_dim"]),
        num_layers=int(shape["num_layers"]),
        text_len=gpu_shapes.TEXT_LEN,
        patch=gpu_shapes.PATCH,
        vae_stride=gpu_shapes.VAE_STRIDE,
    )


def write_json(path: Path, bench: Bench, skipped: dict[str, str]) -> None:
    data = {
        "date": datetime.date.today().isoformat(),
        "systems": bench.systems,
        "skipped": skipped,
        "reference": bench.reference,
        "floors": {video: floor.lines for video, floor in bench.floors.items()},
        "rows": bench.rows,
    }
    path.write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    jobs = {job.name: job for job in (TINY_JOBS if args.tiny else FULL_JOBS)}
    job_names = [n for n in args.jobs.split(",") if n]
    unknown = [n for n in job_names if n not in jobs]
    if unknown:
        raise SystemExit(f"unknown jobs {unknown}; known: {', '.join(jobs)}")
    skipped: dict[str, str] = {}
    if args.tiny:
        env = ensure_env()
    else:
        pins = pins_from_dockerfile()
        env = ComfyEnv(
            root=args.comfyui, source=args.comfyui, python=args.python, pins=pins, tarball_sha256=""
        )
    if args.comfy_url:
        config = Config(args.label, (), f"the ComfyUI at {args.comfy_url}", ALL_JOBS)
        todo = [(config, job_names or list(ALL_JOBS))]
    else:
        vram = None if args.tiny else gpu_memory_gb(env.python)
        sage = probe(env.python, "import sageattention") is not None
        configs, skipped = catalogue(fast_options(env.source), sage, vram)
        if args.list:
            list_plan(configs, skipped, jobs)
            return 0
        if not args.tiny and vram is None:
            raise SystemExit(
                f"{env.python} sees no CUDA GPU: the full-size run needs one (--tiny runs on CPU)"
            )
        names = [n for n in args.configs.split(",") if n] or (["sdpa"] if args.tiny else [])
        todo = plan(configs, skipped, names, job_names)
    ok = layout_check(env) if args.tiny else True
    if args.comfy_url:
        volume = args.volume or Path(os.environ.get("VOLUME_ROOT", "/runpod-volume"))
    elif args.tiny:
        volume = ensure_volume(env)
    else:
        volume = args.volume or full_volume(env, args.cache, args.device)

    names_run = [config.name for config, _ in todo]
    bench = Bench(
        expert=expert_shape(args.tiny),
        peak=gpu_report.Peak(bf16=args.peak_tflops, fp8=args.peak_tflops_fp8),
        jobs=jobs,
        prompt=args.prompt,
        seed=args.seed,
        film=make_tiny_models.FILM if args.tiny else None,
        volume=volume,
        reference="sdpa" if "sdpa" in names_run else names_run[0],
    )
    runs = args.cache / "runs" / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    extra = tuple(shlex.split(args.comfy_args))
    for config, wanted in todo:
        if args.comfy_url:
            bench.run(config, Server(args.comfy_url), wanted)
            continue
        config = replace(config, options=(*config.options, *extra))
        try:
            with started(env, volume, runs / config.name, config, cpu=args.tiny) as server:
                bench.run(config, server, wanted)
        except SetupError as exc:
            print(f"[gpu-bench] {config.name}: {exc}", file=sys.stderr)
            for name in wanted:
                bench.rows.append(
                    {"config": config.name, "job": name, "error": f"ComfyUI did not start: {exc}"[:300]}
                )
    report(bench, skipped)
    if args.json:
        write_json(args.json, bench, skipped)
    failed = [row for row in bench.rows if row.get("error")]
    return 0 if ok and bench.rows and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
