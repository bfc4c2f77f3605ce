"""``python -m worker models ensure|status|verify``: the default model files on the volume.

``ensure [NAME ...]`` makes every file fetched at start present (a verified one costs a stat, a missing or
wrong one is fetched, one never hashed is hashed once); ``status`` shows what is there; ``verify [NAME ...]``
hashes the files again. Exit code 0 when every file fetched at start is present (and, for ``verify``, matches
its sha256), 1 otherwise, 2 for a usage or configuration error. ``MODELS_MANIFEST`` may replace the manifest.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from ..config import Settings, SettingsError
from ..errors import WorkerError
from . import volume
from .fetch import Context, Target, fetch, human_bytes, log
from .manifest import Manifest, ManifestError, at_start, manifest_from_env
from .volume import State, file_status

STATES = {State.UNVERIFIED: "present, not yet hashed", State.CORRUPT: "corrupt (sha256 mismatch)"}
STATES[State.WRONG_SIZE] = "wrong size ({size} bytes)"


def status(manifest: Manifest, settings: Settings) -> bool:
    """Print what the volume holds; True when every file fetched at start is usable."""
    print(f"volume: {settings.volume_root}")
    usable = {}
    for entry in manifest:
        path = volume.target_path(settings.volume_root, entry.kind, entry.name)
        state, size, _ = file_status(path, entry.size, entry.sha256)
        usable[entry.name] = state.usable
        text = STATES.get(state, state).format(size=size)
        folder = os.path.relpath(path.parent, settings.volume_root)
        total = human_bytes(entry.size) if entry.size else "size unknown"
        print(f"{entry.name}: {'on demand, ' * entry.on_demand}{text} ({folder}/, {total})")
    missing, later = sum(not usable[e.name] for e in at_start(manifest)), [e for e in manifest if e.on_demand]
    print(f"{missing} files missing: run `python -m worker models ensure`" if missing else "all present")
    if later:
        print(f"{len(later)} more fetched on demand ({sum(usable[e.name] for e in later)} present)")
    return not missing


def ensure(manifest: Manifest, settings: Settings) -> bool:
    """Fetch every file fetched at start; True when all are there (a failure is reported, not raised)."""
    ctx, ok = Context(settings, manifest=manifest), True
    for entry in manifest:
        path = volume.target_path(settings.volume_root, entry.kind, entry.name)
        try:
            target = Target(entry.role or entry.name, entry.url, path, entry.size, entry.sha256)
            print(
                f"{entry.name}: "
                + ("on demand, for the jobs" if entry.on_demand else fetch(target, ctx, True))
            )
        except WorkerError as exc:
            log.error("%s: %s", entry.name, exc.message)
            print(f"{entry.name}: FAILED: {exc.message}")
            ok = False
    return status(manifest, settings) and ok


def verify(manifest: Manifest, settings: Settings) -> bool:
    """Hash every file present again; True when each matches its sha256 (its manifest's, or the one it had)."""
    ok = True
    for entry in manifest:
        path = volume.target_path(settings.volume_root, entry.kind, entry.name)
        state, size, recorded = file_status(path, entry.size, entry.sha256)
        if state in (State.MISSING, State.WRONG_SIZE):
            ok = ok and entry.on_demand and state is State.MISSING
            print(f"{entry.name}: {state}, not hashed")
            continue
        log.info("hashing %s (%s)", path, human_bytes(size or 0))
        sha256, expected = volume.verify_file(path), entry.sha256 or recorded
        ok = ok and sha256 == (expected or sha256)
        print(f"{entry.name}: " + ("verified" if sha256 == expected else f"sha256 {sha256}, not {expected}"))
        if expected not in (None, sha256) and entry.sha256 is None:  # the record must no longer vouch for it
            volume.record_path(path).unlink(missing_ok=True)
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m worker models", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for command in ("ensure", "status", "verify"):
        sub = commands.add_parser(command)
        if command != "status":
            sub.add_argument("names", nargs="*", metavar="NAME", help="only these files (names or roles)")
    try:
        args = parser.parse_args(argv)
        settings, manifest, only = Settings.from_env(), manifest_from_env(os.environ), vars(args).get("names")
        if unknown := set(only or ()) - {e.name for e in manifest} - {e.role for e in manifest}:
            raise ManifestError(f"not in the manifest: {', '.join(sorted(unknown))}")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    except (SettingsError, ManifestError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    manifest = tuple(e for e in manifest if not only or e.name in only or e.role in only)
    run = {"ensure": ensure, "verify": verify, "status": status}[args.command]
    return 0 if run(manifest, settings) else 1
