"""``python -m tests.emulator``: the emulated ComfyUI as a process, also a stand-in for ComfyUI's ``main.py``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys

from .schema import DEFAULT_MODELS, canonical_folder
from .server import EmulatorCore

log = logging.getLogger("comfy_emulator")
READY_PREFIX = "EMULATOR_READY "


def _pair(value: str) -> tuple[str, str]:
    kind, sep, rest = value.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KIND=VALUE, got {value!r}")
    return canonical_folder(kind.strip()), rest


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tests.emulator",
        description="Emulated ComfyUI v0.33.0 (HTTP + WebSocket) for tests; ComfyUI's other flags are ignored.",
        allow_abbrev=False,
    )
    p.add_argument("--listen", nargs="?", const="0.0.0.0", default="127.0.0.1", metavar="IP")
    p.add_argument("--port", type=int, default=8188, help="0: any free port")
    p.add_argument("--startup-delay", type=float, default=0.0, help="listen this many seconds after starting")
    p.add_argument("--step-delay", type=float, default=0.0, help="seconds per sampler step")
    p.add_argument("--node-delay", type=float, default=0.0, help="seconds per other node run")
    p.add_argument(
        "--history-delay", type=float, default=0.0, help="seconds from execution_success to history"
    )
    p.add_argument("--model", type=_pair, action="append", default=[], metavar="KIND=NAME")
    p.add_argument("--model-dir", type=_pair, action="append", default=[], metavar="KIND=DIR")
    p.add_argument("--no-default-models", action="store_true", help="without the six default files")
    p.add_argument("--extra-model-paths-config", nargs="+", action="extend", default=[], metavar="PATH")
    p.add_argument("--base-directory", default=None, help="folder for input/ and output/")
    p.add_argument("--input-directory", default=None)
    p.add_argument("--output-directory", default=None)
    p.add_argument("--faults", type=json.loads, default={}, metavar="JSON", help="fault settings at start")
    p.add_argument("--cpu", action="store_true", help="report a CPU device")
    return p


def extra_model_paths(path: str) -> dict[str, list[str]]:
    """Folders from a ComfyUI extra_model_paths.yaml, by ComfyUI's rules."""
    import yaml

    with open(path, encoding="utf-8") as fh:
        config = yaml.safe_load(fh) or {}
    here = os.path.dirname(os.path.abspath(path))
    out: dict[str, list[str]] = {}
    for section in config.values():
        if not isinstance(section, dict):
            continue
        base = os.path.expandvars(os.path.expanduser(str(section.get("base_path", ""))))
        base = os.path.join(here, base) if base else here
        for kind, value in section.items():
            if kind in ("base_path", "is_default"):
                continue
            for line in filter(None, str(value).split("\n")):
                out.setdefault(canonical_folder(kind), []).append(os.path.normpath(os.path.join(base, line)))
    return out


async def serve(args: argparse.Namespace) -> int:
    models: dict[str, list[str]] = (
        {} if args.no_default_models else {k: list(v) for k, v in DEFAULT_MODELS.items()}
    )
    for kind, name in args.model:
        models.setdefault(kind, []).append(name)
    model_dirs: dict[str, list[str]] = {}
    for kind, directory in args.model_dir:
        model_dirs.setdefault(kind, []).append(directory)
    for path in args.extra_model_paths_config:
        for kind, dirs in extra_model_paths(path).items():
            model_dirs.setdefault(kind, []).extend(dirs)

    def die() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)

    core = EmulatorCore(
        models=models,
        model_dirs=model_dirs,
        step_delay=args.step_delay,
        node_delay=args.node_delay,
        history_delay=args.history_delay,
        faults=args.faults,
        base_dir=args.base_directory,
        input_dir=args.input_directory,
        output_dir=args.output_directory,
        cpu=args.cpu,
        on_crash=die,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), args.startup_delay)
        if not stop.is_set():
            await core.start(args.listen, args.port)
            print(f"{READY_PREFIX}{core.url}", flush=True)
            await stop.wait()
        return 0
    finally:
        await core.stop()
        core.cleanup_files()


def main(argv: list[str] | None = None) -> int:
    args, unknown = build_parser().parse_known_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s [comfy-emulator] %(message)s"
    )
    if unknown:
        log.info("ignoring ComfyUI arguments: %s", " ".join(unknown))
    try:
        return asyncio.run(serve(args))
    except OSError as ex:
        log.error("cannot start: %s", ex)
        return 1


if __name__ == "__main__":
    sys.exit(main())
