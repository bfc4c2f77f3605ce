"""The GPU benchmark: the worker's real pipeline at full size with random weights, nothing downloaded.

It writes the default models at full size with random weights (``gpu_models.py``, on the GPU), starts ComfyUI
once per configuration (attention, ``--fast`` options, memory limits), runs the worker's own jobs through its
handler, and prints, per configuration and job: the load time, seconds per step of each expert, the VAE decode,
the interpolation, the total, the peak GPU memory, the ratio to the FLOP floor (with its arithmetic) and the
output's PSNR against the reference (SDPA) run at the same seed.

    python bench/gpu.py                          # on a GPU: every configuration, the image's ComfyUI
    python bench/gpu.py --configs sdpa,ck,fast-fp8_matrix_mult --jobs i2v   # the shortest useful run
    python bench/gpu.py --tiny                   # the same path on CPU with tiny models, a few minutes
    python bench/gpu.py --tiny --comfy-url URL --volume DIR   # against a running ComfyUI, as one configuration

See bench/README.md for what each column means and how to run it on a GPU machine.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import hashlib
import json
import logging
import os
import re
import shlex
import subprocess
import sys
import tempfile
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
from gpu_observe import MemorySampler, Tap  # noqa: E402
from tests.real import make_tiny_models  # noqa: E402
from tests.real.comfy_env import ComfyEnv, SetupError, build_once, ensure_env, pins_from_dockerfile  # noqa: E402
from tests.real.comfyui_server import RealComfyUI  # noqa: E402
from tests.real.tiny_models import MANIFEST, ensure_volume  # noqa: E402
from tests.support.images import data_uri, image_bytes  # noqa: E402
from tests.support.worker_proc import free_port  # noqa: E402

from worker.config import Settings  # noqa: E402
from worker.handler import handle  # noqa: E402
from worker.models import FOLDER_KINDS  # noqa: E402

MAKER = HERE / "gpu_models.py"
PROMPT = "a red fox runs through the snow"
PEAK_TFLOPS = 989.0
"""H100 and H200 (SXM): dense bf16 tensor-core peak, TFLOP/s."""
PEAK_TFLOPS_FP8 = 1979.0
"""The same GPUs' dense fp8 peak."""
LEAVE_GB = (24, 48)
"""The memory-limit configurations: --reserve-vram so that about this much GPU memory is left to ComfyUI."""
START_TIMEOUT_S = 900.0
FLAT = 1.0
"""Frames whose pixel values spread less than this (standard deviation, 0-255) are flat: no use for a PSNR."""


# ------------------------------------------------------------------------------------------- jobs
@dataclass(frozen=True)
class Job:
    name: str
    width: int
    height: int
    length: int
    flf2v: bool = False
    interpolate: int = 1

    @property
    def video(self) -> str:
        return f"{self.width}x{self.height}x{self.length}"


FULL_JOBS = (
    Job("i2v", 480, 832, 81),
    Job("i2v-720p", 1280, 720, 81),
    Job("flf2v", 480, 832, 81, flf2v=True),
    Job("interpolate", 480, 832, 81, interpolate=2),
)
"""Full size, in priority order: 4-step Lightning (the worker's defaults) at 480p and 720p, FLF2V, FILM x2."""
TINY_JOBS = (
    Job("i2v", 128, 128, 9),
    Job("i2v-720p", 224, 128, 9),
    Job("flf2v", 128, 128, 9, flf2v=True),
    Job("interpolate", 128, 128, 9, interpolate=2),
)
"""The same jobs at tiny sizes, for the tiny models on CPU."""


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


ALL_JOBS = tuple(job.name for job in FULL_JOBS)
SPEED_JOBS = ("i2v", "i2v-720p")
MEMORY_JOBS = ("i2v",)


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
        result = asyncio.run(handle({"id": f"bench-{config.name}-{job.name}", "input": fields}, settings))
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


# ------------------------------------------------------------------------------------------- models
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
    sources = [MAKER, HERE / "gpu_shapes.py", Path(make_tiny_models.__file__), MANIFEST]
    key: dict[str, object] = {
        "sources": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sources},
        "folders": FOLDER_KINDS,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]

    def build(work: Path) -> None:
        started = time.monotonic()
        extra = ["--check", *(["--device", device] if device else [])]
        report = run_maker(maker_command(env, work, *extra), work / "gpu_models.log")
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
