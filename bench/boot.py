"""The boot check: ``models ensure`` with the six default files present and verified (sparse files of their real
sizes, 38 GB that take no disk). Run: ``python bench/boot.py [--runs 20]``. Target: at most 100 ms.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path

from worker.config import Settings
from worker.models.cli import main as models_main
from worker.models.manifest import load_manifest
from worker.models.volume import FOLDER_KINDS, write_record

TARGET_S = 0.100


def lay_out_defaults(root: Path) -> None:
    for entry in (e for e in load_manifest() if not e.on_demand):
        path = root / FOLDER_KINDS[entry.kind] / entry.name
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as handle:
            handle.truncate(entry.size)
        write_record(path, entry.sha256)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        lay_out_defaults(root)
        os.environ["VOLUME_ROOT"] = str(root)
        times = []
        for _ in range(args.runs):
            started = time.perf_counter()
            with redirect_stdout(io.StringIO()):
                code = models_main(["ensure"], Settings.from_env())
            times.append(time.perf_counter() - started)
            assert code == 0
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "worker", "models", "ensure"], check=True, capture_output=True)
        whole = time.perf_counter() - started
    median = statistics.median(times)
    print(
        f"models ensure, six defaults verified (38 GB sparse): median {median * 1e3:.1f} ms, "
        f"max {max(times) * 1e3:.1f} ms over {args.runs} runs; {median / TARGET_S:.2f}x the 100 ms target"
    )
    print(
        f"the same as a command (python -m worker models ensure, interpreter start included): {whole * 1e3:.0f} ms"
    )
    return 0 if median <= TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
