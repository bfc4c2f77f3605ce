"""A stand-in for ``python -m worker`` that start.sh can run as WORKER_CMD.

``fake_worker.py [--record FILE] [--exit N] [--models-exit N] [--term-delay S] [worker args...]``

- ``... models ensure``: records the call and exits with ``--models-exit`` (0 by default);
- ``... readahead``: records the call and exits 0, or with ``--readahead-hang`` runs until SIGTERM, records it
  and exits 143;
- otherwise records its arguments, then exits with ``--exit`` at once when given, or else runs until SIGTERM,
  records it, waits ``--term-delay`` seconds (a job finishing) and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--record", default=None)
    parser.add_argument("--exit", type=int, default=None)
    parser.add_argument("--models-exit", type=int, default=0)
    parser.add_argument("--term-delay", type=float, default=0.0)
    parser.add_argument("--readahead-hang", action="store_true")
    args, rest = parser.parse_known_args()

    def record(event: str, **fields: Any) -> None:
        if args.record:
            line = json.dumps({"event": event, "t": time.time(), "pid": os.getpid(), **fields})
            with Path(args.record).open("a", encoding="utf-8") as f:
                f.write(line + "\n")

    if rest[:2] == ["models", "ensure"]:
        record("models", argv=rest, volume_root=os.environ.get("VOLUME_ROOT"))
        return args.models_exit
    if rest[:1] == ["readahead"]:
        if args.readahead_hang:
            signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])
        record("readahead", argv=rest, volume_root=os.environ.get("VOLUME_ROOT"))
        if args.readahead_hang:
            signal.sigwait([signal.SIGTERM])
            record("readahead-sigterm")
            return 143
        return 0

    stopping = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    record(
        "start", argv=rest, cwd=os.getcwd(), env={k: os.environ.get(k) for k in ("VOLUME_ROOT", "COMFY_PORT")}
    )
    if args.exit is not None:
        record("exit", code=args.exit)
        return args.exit
    while not stopping:
        time.sleep(0.02)
    record("sigterm")
    time.sleep(args.term_delay)
    record("exit", code=0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
