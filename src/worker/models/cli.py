"""``python -m worker models ensure|status|verify``: the default model files on the volume.

- ``ensure [NAME ...]``: make every default file present: a verified one costs a stat, a missing one or one of
  the wrong size is downloaded, one of the right size that was never hashed is hashed once. Start-up runs it.
  Files the manifest marks ``"fetch": "on_demand"`` are left to the first job that needs them.
- ``status``: a table of what is verified, present but not yet hashed, missing, of the wrong size or corrupt;
  on-demand files are listed as such, present or not.
- ``verify [NAME ...]``: hash the files present again and record the result.

Exit code: 0 when every default file fetched at start is present (and, for ``verify``, every file present
matches its sha256), 1 otherwise,
2 for a usage or configuration error. Settings come from the environment (``VOLUME_ROOT``, ``HF_TOKEN``,
``DOWNLOAD_CONNECTIONS`` ...); ``MODELS_MANIFEST`` may name a manifest file that replaces the packaged one.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from ..config import Settings, SettingsError
from ..errors import InvalidInput
from .download import part_info
from .ensure import Action, Options, default_target, ensure_defaults, selected
from .manifest import Manifest, ManifestEntry, ManifestError, at_start, manifest_from_env
from .progress import ProgressLog, human_bytes
from .volume import State, file_status, part_paths, read_record, record_path, verify_file

log = logging.getLogger("worker.models.cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m worker models",
        description="Default model files on the volume (VOLUME_ROOT). MODELS_MANIFEST=/path.json replaces the "
        "packaged manifest.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{ensure,status,verify}")
    ensure = commands.add_parser(
        "ensure", help="download what is missing or wrong; hash what was never hashed"
    )
    ensure.add_argument("names", nargs="*", metavar="NAME", help="only these files (file names or roles)")
    commands.add_parser("status", help="show what is verified, present, missing or wrong")
    verify = commands.add_parser("verify", help="hash the files present again")
    verify.add_argument("names", nargs="*", metavar="NAME", help="only these files (file names or roles)")
    return parser


def _state_text(entry: ManifestEntry, settings: Settings) -> tuple[str, str, bool]:
    """(folder shown, state shown, usable) for one default file."""
    target = default_target(entry, settings.volume_root)
    status = file_status(target.path, entry.size, entry.sha256)
    folder = os.path.relpath(target.path.parent, settings.volume_root) + "/"
    text = status.state.value
    if status.state is State.WRONG_SIZE:
        text = f"wrong size ({status.size} of {entry.size} bytes)"
    elif status.state is State.CORRUPT:
        text = "corrupt (sha256 mismatch)"
    elif status.state is State.UNVERIFIED:
        text = "present, not yet hashed"
    elif status.state is State.MISSING:
        infos = [part_info(p, target.source) for p in part_paths(target.path)]
        on_disk = max((i.on_disk for i in infos if i is not None), default=0)
        if on_disk:
            done = f"{100 * on_disk / entry.size:.0f}%" if entry.size else human_bytes(on_disk)
            text = f"missing ({done} downloaded, resumable)"
    if entry.on_demand:
        text = f"on demand, {text}"
    return folder, text, status.state.usable


def _size_text(entry: ManifestEntry) -> str:
    return human_bytes(entry.size) if entry.size is not None else "unknown"


def print_table(manifest: Manifest, settings: Settings, out: TextIO) -> bool:
    """Print the status table; True when every file fetched at start is usable."""
    states = {e.name: _state_text(e, settings) for e in manifest}
    rows = [(e.name, *states[e.name][:2], _size_text(e)) for e in manifest]
    usable = [states[e.name][2] for e in at_start(manifest)]
    header = ("FILE", "FOLDER", "STATE", "SIZE")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(4)]
    out.write(f"volume: {settings.volume_root}\n")
    for row in [header, *rows]:
        out.write("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        out.write("\n")
    missing = len(usable) - sum(usable)
    if missing:
        out.write(
            f"{missing} of {len(usable)} files missing or unusable: run `python -m worker models ensure`\n"
        )
    else:
        out.write(f"all {len(usable)} files present\n")
    on_demand = [states[e.name][2] for e in manifest if e.on_demand]
    if on_demand:
        out.write(
            f"{len(on_demand)} more fetched on demand by the first job that needs them ({sum(on_demand)} present)\n"
        )
    return not missing


def _ensure(manifest: Manifest, settings: Settings, out: TextIO) -> int:
    outcomes = ensure_defaults(settings, manifest, options=Options.from_settings(settings))
    for outcome in outcomes:
        what = outcome.action.value if outcome.action else f"FAILED: {outcome.error}"
        out.write(f"{outcome.entry.name}: {what}\n")
    for entry in manifest:
        if entry.on_demand:
            out.write(f"{entry.name}: on demand, left to the first job that needs it\n")
    ok = all(o.action is not None for o in outcomes)
    print_table(manifest, settings, out)
    return 0 if ok else 1


def _hash_progress(name: str, size: int | None) -> Callable[[int], None]:
    progress = ProgressLog(log, name, verb="hashing")
    return lambda done: progress(done, size)


def _verify(manifest: Manifest, settings: Settings, out: TextIO) -> int:
    ok = True
    for entry in manifest:
        target = default_target(entry, settings.volume_root)
        status = file_status(target.path, entry.size, entry.sha256)
        if status.state is State.MISSING and entry.on_demand:
            out.write(f"{entry.name}: on demand, not fetched yet\n")
            continue
        if status.state in (State.MISSING, State.WRONG_SIZE):
            out.write(f"{entry.name}: {status.state.value}, not hashed\n")
            ok = False
            continue
        known = read_record(target.path)  # on demand: the hash verified when it was downloaded
        expected = entry.sha256 or (known.sha256 if known else None)
        record = verify_file(target.path, progress=_hash_progress(entry.name, status.size))
        if expected is None:
            out.write(f"{entry.name}: sha256 {record.sha256} (no known sha256 to compare with)\n")
            continue
        good = record.sha256 == expected
        ok = ok and good
        if good:
            out.write(f"{entry.name}: verified\n")
            continue
        out.write(f"{entry.name}: CORRUPT: sha256 {record.sha256}\n")
        if entry.sha256 is None:  # the record was the only reference: it must not vouch for the file now
            record_path(target.path).unlink(missing_ok=True)
            out.write(f"  delete {target.path}: the next job that needs it fetches it again\n")
    return 0 if ok else 1


def _setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code."""
    try:
        args = _parser().parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    _setup_logging()
    try:
        settings = Settings.from_env()
        manifest = selected(manifest_from_env(os.environ), getattr(args, "names", ()))
    except (SettingsError, ManifestError, InvalidInput) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    out = sys.stdout
    if args.command == "ensure":
        return _ensure(manifest, settings, out)
    if args.command == "verify":
        return _verify(manifest, settings, out)
    return 0 if print_table(manifest, settings, out) else 1


__all__ = ["Action", "main"]
