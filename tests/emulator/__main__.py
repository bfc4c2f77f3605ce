"""``python -m tests.emulator``: the emulated ComfyUI as a process (also a stand-in for ComfyUI's main.py)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from typing import Any

from .schema import DEFAULT_MODELS, canonical_folder
from .server import EmulatorCore, connect_host

log = logging.getLogger("comfy_emulator")


def process_age() -> float:
    """Seconds since this process started (the start-up delay counts from launch, as ComfyUI's does)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as fh:
            start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as fh:
            uptime = float(fh.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def _pair(value: str) -> tuple[str, str]:
    if "=" not in value:
        raise argparse.ArgumentTypeError(f"expected KIND=VALUE, got {value!r}")
    kind, _, rest = value.partition("=")
    return kind.strip(), rest


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tests.emulator",
        description="Emulated ComfyUI v0.33.0 server (HTTP + WebSocket) for tests.",
    )
    p.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    p.add_argument(
        "--listen",
        nargs="?",
        const="0.0.0.0,::",
        default=None,
        metavar="IP",
        help="ComfyUI's flag: address(es) to listen on, comma separated; alone: 0.0.0.0,::",
    )
    p.add_argument("--port", type=int, default=8188, help="port (0: any free port; default 8188)")
    p.add_argument(
        "--startup-delay", type=float, default=0.0, help="bind the port this many seconds after launch"
    )
    p.add_argument("--step-delay", type=float, default=0.0, help="seconds per sampler step")
    p.add_argument("--node-delay", type=float, default=0.0, help="seconds per executed non-sampler node")
    p.add_argument(
        "--history-delay",
        type=float,
        default=0.0,
        help="seconds between execution_success and the history entry (then status, executing null)",
    )
    p.add_argument(
        "--model-dir",
        type=_pair,
        action="append",
        default=[],
        metavar="KIND=DIR",
        help="scan DIR for model files of KIND (diffusion_models, loras, text_encoders, vae, clip_vision, ...)",
    )
    p.add_argument(
        "--model", type=_pair, action="append", default=[], metavar="KIND=NAME", help="a model file it has"
    )
    p.add_argument("--no-default-models", action="store_true", help="start without the six default files")
    p.add_argument(
        "--extra-model-paths-config",
        nargs="+",
        action="append",
        default=[],
        metavar="PATH",
        help="ComfyUI extra_model_paths.yaml: its folders are scanned for model files",
    )
    p.add_argument("--base-directory", default=None, help="folder for input/, output/ and temp/")
    p.add_argument("--output-dir", default=None, help="output folder")
    p.add_argument("--input-dir", default=None, help="input (upload) folder")
    p.add_argument("--temp-dir", default=None, help="temp folder")
    p.add_argument("--port-file", default=None, help="write the port number here once listening")
    p.add_argument("--faults", default=None, metavar="JSON", help="initial fault settings")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="device /system_stats reports")
    p.add_argument("--cpu", action="store_true", help="ComfyUI's flag: report a CPU device")
    # ComfyUI flags the container's start.sh passes; accepted and ignored.
    p.add_argument("--disable-auto-launch", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--use-sage-attention", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--fast", nargs="*", default=None, help=argparse.SUPPRESS)
    p.add_argument("--verbose", nargs="?", const="DEBUG", default=None, help=argparse.SUPPRESS)
    p.add_argument("--log-stdout", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--preview-method", default=None, help=argparse.SUPPRESS)
    return p


def load_extra_model_paths(path: str) -> dict[str, list[str]]:
    """Folders from a ComfyUI extra_model_paths.yaml (same path rules as ComfyUI)."""
    import yaml

    with open(path, encoding="utf-8") as fh:
        config = yaml.safe_load(fh) or {}
    yaml_dir = os.path.dirname(os.path.abspath(path))
    out: dict[str, list[str]] = {}
    for section in config.values():
        if not isinstance(section, dict):
            continue
        conf = dict(section)
        base_path = conf.pop("base_path", None)
        if base_path:
            base_path = os.path.expandvars(os.path.expanduser(base_path))
            if not os.path.isabs(base_path):
                base_path = os.path.abspath(os.path.join(yaml_dir, base_path))
        conf.pop("is_default", None)
        for kind, value in conf.items():
            for line in str(value).split("\n"):
                if not line:
                    continue
                full = os.path.join(base_path, line) if base_path else line
                if not base_path and not os.path.isabs(full):
                    full = os.path.abspath(os.path.join(yaml_dir, line))
                out.setdefault(canonical_folder(kind), []).append(os.path.normpath(full))
    return out


async def serve(
    args: argparse.Namespace, models: dict[str, list[str]], model_dirs: dict[str, list[str]]
) -> int:
    faults: dict[str, Any] = json.loads(args.faults) if args.faults else {}
    core = EmulatorCore(
        models=models,
        model_dirs=model_dirs,
        step_delay=args.step_delay,
        node_delay=args.node_delay,
        history_delay=args.history_delay,
        startup_delay=args.startup_delay,
        device="cpu" if args.cpu else args.device,
        faults=faults,
        base_dir=args.base_directory,
        input_dir=args.input_dir,
        output_dir=args.output_dir,
        temp_dir=args.temp_dir,
        subprocess_mode=True,
        argv=sys.argv,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    host = args.listen or args.host or "127.0.0.1"
    starting = asyncio.create_task(core.start(host, args.port, elapsed=process_age()))
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            port = starting.result()
            url = f"http://{connect_host(host)}:{port}"
            if args.port_file:
                tmp = args.port_file + ".tmp"
                with open(tmp, "w", encoding="utf-8") as fh:
                    fh.write(f"{port}\n")
                os.replace(tmp, args.port_file)
            print(f"EMULATOR_READY {url}", flush=True)
            await stopping
        else:
            starting.cancel()
        log.info("stopping")
        return 0
    finally:
        stopping.cancel()
        await core.stop()
        core.cleanup_files()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    level = logging.DEBUG if args.verbose == "DEBUG" else logging.INFO
    logging.basicConfig(stream=sys.stderr, level=level, format="%(asctime)s [comfy-emulator] %(message)s")
    if unknown:
        log.warning("ignoring arguments: %s", " ".join(unknown))

    models: dict[str, list[str]] = (
        {} if args.no_default_models else {k: list(v) for k, v in DEFAULT_MODELS.items()}
    )
    for kind, name in args.model:
        models.setdefault(canonical_folder(kind), []).append(name)
    model_dirs: dict[str, list[str]] = {}
    for kind, directory in args.model_dir:
        model_dirs.setdefault(canonical_folder(kind), []).append(directory)
    for group in args.extra_model_paths_config:
        for path in group:
            for kind, dirs in load_extra_model_paths(path).items():
                model_dirs.setdefault(kind, []).extend(dirs)
    try:
        return asyncio.run(serve(args, models, model_dirs))
    except OSError as ex:
        log.error("cannot start: %s", ex)
        return 1


if __name__ == "__main__":
    sys.exit(main())
