"""``python -m worker models ensure|status|verify [NAME ...]``: the default model files on the volume. ``ensure``
makes every file fetched at start present, ``status`` shows what is there, ``verify`` hashes the files present
again. Exit code 0 when every file fetched at start is present (and, with ``verify``, matches its sha256), 1
otherwise, 2 for a usage or configuration error. ``MODELS_MANIFEST`` may name a manifest to use instead."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ..config import Settings
from ..errors import WorkerError
from . import volume
from .fetch import Context, Target, fetch, human_bytes, log
from .manifest import Manifest, ManifestError, load_manifest
from .volume import State, file_status


def status(manifest: Manifest, settings: Settings, verify: bool = False) -> bool:
    """Print what the volume holds (with ``verify``, hash it again); True when every file fetched at start is
    usable (and, with ``verify``, matches its sha256: the manifest's, or for an on-demand file the one it had)."""
    print(f"volume: {settings.volume_root}")
    missing, ok, later, present = 0, True, 0, 0
    for entry in manifest:
        path = volume.target_path(settings.volume_root, entry.kind, entry.name)
        state, size, recorded = file_status(path, entry.size, entry.sha256)
        if verify and state.usable:
            log.info("hashing %s (%s)", path, human_bytes(size))
            sha256, expected = volume.verify_file(path), entry.sha256 or recorded
            state = State.VERIFIED if sha256 == (expected or sha256) else State.CORRUPT
            if state is State.CORRUPT and entry.sha256 is None:  # the record must no longer vouch for it
                volume.record_path(path).unlink(missing_ok=True)
        text = f"wrong size ({size} bytes)" if state is State.WRONG_SIZE else state
        folder, total = os.path.relpath(path.parent, settings.volume_root), human_bytes(entry.size)
        print(f"{entry.name}: {'on demand, ' * entry.on_demand}{text} ({folder}/, {total})")
        missing, ok = missing + (not entry.on_demand and not state.usable), ok and state is not State.CORRUPT
        later, present = later + entry.on_demand, present + (entry.on_demand and state.usable)
    print(f"{missing} files missing: run `python -m worker models ensure`" if missing else "all present")
    if later:
        print(f"{later} more fetched on demand by the first job that needs them ({present} present)")
    return not missing and ok


def ensure(manifest: Manifest, settings: Settings) -> bool:
    """Fetch every file fetched at start; True when all are there (a failure is reported, not raised)."""
    ctx, ok = Context(settings, manifest=manifest), True
    for entry in (e for e in manifest if not e.on_demand):
        path = volume.target_path(settings.volume_root, entry.kind, entry.name)
        target = Target(entry.role or entry.name, entry.url, path, entry.size, entry.sha256)
        try:
            print(f"{entry.name}: {fetch(target, ctx, verify=True)}")
        except WorkerError as exc:
            print(f"{entry.name}: FAILED: {exc.message}")
            ok = False
    return status(manifest, settings) and ok


def main(argv: Sequence[str], settings: Settings) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker models", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("ensure", "status", "verify"))
    parser.add_argument("names", nargs="*", metavar="NAME", help="only these files (names or roles)")
    try:
        args, manifest = parser.parse_args(argv), load_manifest(settings.models_manifest)
        if unknown := set(args.names) - {e.name for e in manifest} - {e.role for e in manifest}:
            raise ManifestError(f"not in the manifest: {', '.join(sorted(unknown))}")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    manifest = tuple(e for e in manifest if not args.names or e.name in args.names or e.role in args.names)
    if args.command == "ensure":
        return 0 if ensure(manifest, settings) else 1
    return 0 if status(manifest, settings, verify=args.command == "verify") else 1
