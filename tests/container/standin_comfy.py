"""A stand-in for ComfyUI that start.sh can launch in place of ``python main.py``.

It takes ComfyUI's command line (``--listen``, ``--port`` and any other flag, ignored) plus its own options,
records what happens to it as JSON lines in ``--record`` (its argv, when it listens, SIGTERM, its exit), and
behaves according to ``--mode``:

- ``ready``: answers ``GET /system_stats`` (and ``GET /``) with 200 until stopped;
- ``hang``: listens but never answers a request;
- ``exit``: exits with ``--exit-code`` at once, without listening;
- ``die``: answers like ``ready``, then exits with ``--exit-code`` ``--die-after`` seconds after its first answer.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script, in an isolated interpreter
from tests.support.httpserver import HttpServer, Request, Route, json_route


class Recorder:
    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None
        self.lock = threading.Lock()

    def __call__(self, event: str, **fields: Any) -> None:
        if self.path is None:
            return
        line = json.dumps({"event": event, "t": time.time(), "pid": os.getpid(), **fields})
        with self.lock, self.path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mode", choices=("ready", "hang", "exit", "die"), default="ready")
    parser.add_argument("--exit-code", type=int, default=3)
    parser.add_argument("--die-after", type=float, default=1.0)
    parser.add_argument(
        "--die-when-exists", default=None, help="count --die-after from when this file appears"
    )
    parser.add_argument("--record", default=None)
    parser.add_argument("--listen", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8188)
    return parser.parse_known_args(argv)


def serve(args: argparse.Namespace, record: Recorder) -> None:
    server = HttpServer(args.listen, args.port)
    answered = threading.Event()

    def system_stats(request: Request) -> Route:
        if not answered.is_set():
            answered.set()
            record("answered")
        return json_route({"system": {"comfyui_version": "stand-in"}, "devices": []})

    def never(request: Request) -> Route:
        server.stopped.wait()
        return Route(503)

    if args.mode == "hang":
        server.routes["/*"] = never
    else:
        server.routes["/"] = server.routes["/system_stats"] = system_stats
    record("listening", port=server.port)
    if args.mode == "die":

        def die() -> None:
            answered.wait()
            while args.die_when_exists and not os.path.exists(args.die_when_exists):
                time.sleep(0.02)
            time.sleep(args.die_after)
            record("exit", code=args.exit_code)
            os._exit(args.exit_code)

        threading.Thread(target=die, daemon=True).start()
    server.start()
    server.stopped.wait()


def process_start_time() -> float | None:
    """When this process was created (epoch seconds, to about 10 ms), from /proc; None without /proc."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))


def main(argv: list[str] | None = None) -> int:
    args, ignored = parse(sys.argv[1:] if argv is None else argv)
    record = Recorder(args.record)
    record("start", argv=sys.argv[1:] if argv is None else argv, ignored=ignored, exec_t=process_start_time())

    def on_term(signum: int, frame: object) -> None:
        record("sigterm")
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    if args.mode == "exit":
        record("exit", code=args.exit_code)
        return args.exit_code
    serve(args, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
