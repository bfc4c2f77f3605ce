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
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


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
    answered = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path not in ("/", "/system_stats"):
                self.send_error(404)
                return
            body = json.dumps({"system": {"comfyui_version": "stand-in"}, "devices": []}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not answered.is_set():
                answered.set()
                record("answered")
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((args.listen, args.port), Handler)
    server.daemon_threads = True
    record("listening", port=server.server_address[1])
    if args.mode == "die":

        def die() -> None:
            answered.wait()
            while args.die_when_exists and not os.path.exists(args.die_when_exists):
                time.sleep(0.02)
            time.sleep(args.die_after)
            record("exit", code=args.exit_code)
            os._exit(args.exit_code)

        threading.Thread(target=die, daemon=True).start()
    server.serve_forever(poll_interval=0.05)


def hang(args: argparse.Namespace, record: Recorder) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.listen, args.port))
    sock.listen(64)
    record("listening", port=sock.getsockname()[1])
    held = []
    while True:  # accept and hold every connection, never answering
        conn, _ = sock.accept()
        held.append(conn)


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
    if args.mode == "hang":
        hang(args, record)
    else:
        serve(args, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
