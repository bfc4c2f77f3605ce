"""Make model files present on the volume: the defaults at start, a job's overrides and the manifest's
on-demand files when a job first needs them.

:func:`fetch_model` is the one way a file gets onto the volume, in named steps: early return when the file is
there (one stat), lock, look again, download into this writer's own temporary file (taking over a dead
writer's one when there is one), verify, rename into place, record the hash, clean up.

A file whose sha256 the manifest does not give (a job's URL, an on-demand entry with ``sha256`` null) is checked
against the sha256 the server announces, when it announces one (Hugging Face does for LFS files).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path

from .. import modelnames
from ..config import Settings
from ..errors import InvalidInput, ModelDownloadFailed, WorkerError
from ..netsafe import Resolver, make_session, redact_url, system_resolver
from . import policy
from .download import BadContent, Remote, Tuning, download, part_info, probe
from .lock import LockTuning, ModelLock
from .manifest import Manifest, ManifestEntry, at_start, find_by_name, find_by_url, load_manifest
from .progress import ProgressLog, human_bytes
from .volume import (
    FOLDER_KINDS,
    IndexEntry,
    State,
    file_status,
    locate,
    lock_path,
    new_part_path,
    part_paths,
    read_index,
    read_record,
    state_path,
    target_path,
    verify_file,
    write_index,
    write_record,
)

log = logging.getLogger("worker.models")

ProgressCallback = Callable[[str, int, int | None], None]


@dataclass(frozen=True)
class ModelRef:
    """A model file a job gives a URL for, to be downloaded on demand (under ``name`` when the job gives one),
    or a manifest's on-demand file (``url`` and ``name`` of its :func:`~worker.models.on_demand_entry`).

    Files a job names without a URL need no download: the handler checks them against ComfyUI's listing."""

    field: str
    """The job field, for messages: ``high_model_url``, ``lora_pairs[1].low_url`` ..."""
    kind: str
    """One of :data:`FOLDER_KINDS`."""
    url: str
    name: str | None


@dataclass(frozen=True)
class Options:
    """How downloads behave; tests shorten the waits."""

    tuning: Tuning = field(default_factory=Tuning)
    lock: LockTuning = field(default_factory=LockTuning)
    resolver: Resolver = system_resolver
    log_interval_s: float = 15.0
    parallel_files: int = 4

    @classmethod
    def from_settings(cls, settings: Settings) -> Options:
        return cls(tuning=Tuning(connections=settings.download_connections))


@dataclass(frozen=True)
class Target:
    """One file to make present: where it goes and what it must be."""

    field: str
    kind: str
    url: str
    name: str
    path: Path
    size: int | None
    sha256: str | None

    @property
    def source(self) -> str:
        """What a temporary file holds, so that only a matching one is resumed."""
        if self.sha256:
            return f"sha256:{self.sha256}"
        return "url:" + hashlib.sha256(self.url.encode()).hexdigest()


class Action(StrEnum):
    PRESENT = "present"
    VERIFIED = "verified"
    DOWNLOADED = "downloaded"


@dataclass
class _Context:
    settings: Settings
    options: Options
    manifest: Manifest
    job_id: str = ""
    on_progress: ProgressCallback | None = None
    cancel: threading.Event | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    claimed: dict[tuple[str, str], str] = field(default_factory=dict)
    claimed_lock: threading.Lock = field(default_factory=threading.Lock)

    def should_stop(self) -> bool:
        return self.stop.is_set() or (self.cancel is not None and self.cancel.is_set())

    def say(self, message: str, *args: object, level: int = logging.INFO) -> None:
        prefix = f"[job {self.job_id}] " if self.job_id else ""
        log.log(level, prefix + message, *args)


# -- one file ----------------------------------------------------------------------------------------------


def _ready(target: Target, ctx: _Context, *, verify: bool, locked: bool) -> Action | None:
    """The action that made the file usable, or None when it must be downloaded.

    With ``verify`` a file of the right size that was never hashed is hashed (only while holding the lock).
    """
    status = file_status(target.path, target.size, target.sha256)
    if status.state is State.VERIFIED:
        return Action.PRESENT
    if status.state is State.UNVERIFIED and not (verify and target.sha256):
        return Action.PRESENT
    if status.state is State.UNVERIFIED and locked:
        ctx.say(
            "hashing %s once (%s); later starts only compare its size and date",
            target.name,
            human_bytes(status.size or 0),
        )
        progress = ProgressLog(log, target.name, interval_s=ctx.options.log_interval_s, verb="hashing")
        record = verify_file(target.path, progress=lambda done: progress(done, status.size))
        if record.sha256 == target.sha256:
            return Action.VERIFIED
        ctx.say(
            "%s does not have the expected sha256; downloading it again", target.path, level=logging.WARNING
        )
    elif status.state is State.WRONG_SIZE and locked:
        ctx.say(
            "%s has %d bytes instead of %d; downloading it again",
            target.path,
            status.size or 0,
            target.size or 0,
            level=logging.WARNING,
        )
    elif status.state is State.CORRUPT and locked:
        ctx.say("%s failed its hash check; downloading it again", target.path, level=logging.WARNING)
    return None


def _adopt_part(target: Target, ctx: _Context) -> Path | None:
    """Take over the most complete temporary file a stopped or dead writer left, by renaming it to our name."""
    stale_after = ctx.options.lock.stale_after_s
    candidates = []
    for part in part_paths(target.path):
        info = part_info(part, target.source)
        if info is None or info.on_disk == 0:
            continue
        try:
            age = time.time() - state_path(part).stat().st_mtime
        except OSError:
            continue
        if not info.active or age >= stale_after:
            candidates.append((info.on_disk, part))
    for on_disk, part in sorted(candidates, key=lambda c: c[0], reverse=True):
        mine = new_part_path(target.path)
        try:
            os.rename(part, mine)
        except FileNotFoundError:
            continue
        with contextlib.suppress(FileNotFoundError):
            os.rename(state_path(part), state_path(mine))
        ctx.say("resuming %s: %s already on the volume", target.name, human_bytes(on_disk))
        return mine
    return None


def _remove_leftovers(target: Target, ctx: _Context) -> None:
    """Once the file is in place, temporary files of stopped or dead writers are of no use."""
    for part in part_paths(target.path):
        info = part_info(part, target.source)
        try:
            age = time.time() - part.stat().st_mtime
        except OSError:
            continue
        if (info is not None and not info.active) or age >= ctx.options.lock.stale_after_s:
            part.unlink(missing_ok=True)
            state_path(part).unlink(missing_ok=True)


def _check_safetensors(part: Path, label: str) -> None:
    """Refuse a file that does not start like a safetensors file (an HTML error page saved as a model)."""
    with part.open("rb") as fh:
        head = fh.read(9)
    size = part.stat().st_size
    length = int.from_bytes(head[:8], "little") if len(head) >= 8 else 0
    if len(head) < 9 or length <= 0 or 8 + length > size or head[8:9] != b"{":
        shown = head[:9].decode("ascii", "replace").encode("unicode_escape").decode()
        raise BadContent(
            f"{label}: the downloaded file is not a safetensors file (it begins with {shown!r}); check the URL, "
            "or whether the site needs a token (HF_TOKEN, CIVITAI_TOKEN)"
        )


def _transfer(target: Target, part: Path, ctx: _Context) -> None:
    settings, tuning = ctx.settings, ctx.options.tuning
    label = f"{target.field} ({redact_url(target.url)})"
    session = make_session(allow_private=settings.allow_private_urls, pool_size=tuning.connections + 2)
    callback = None
    if ctx.on_progress is not None:
        report, name = ctx.on_progress, target.field

        def callback(done: int, total: int | None) -> None:
            report(name, done, total)

    progress = ProgressLog(log, target.name, interval_s=ctx.options.log_interval_s, callback=callback)
    ctx.say(
        "downloading %s (%s) from %s into %s",
        target.name,
        human_bytes(target.size) if target.size else "size unknown",
        redact_url(target.url),
        target.path.parent,
    )
    with session:
        opener = policy.make_opener(
            target.url, field=target.field, settings=settings, session=session, resolver=ctx.options.resolver
        )
        result = download(
            opener,
            part,
            label=label,
            source=target.source,
            expected_size=target.size,
            expected_sha256=target.sha256,
            max_bytes=policy.max_bytes(settings),
            tuning=tuning,
            progress=progress,
            should_stop=ctx.should_stop,
        )
    if target.sha256 is None and target.name.lower().endswith(modelnames.SAFE_EXTENSIONS):
        _check_safetensors(part, label)
    os.replace(part, target.path)
    write_record(target.path, result.sha256)
    ctx.say("downloaded %s: %s, sha256 %s", target.name, progress.summary(result.fetched), result.sha256)


def fetch_model(target: Target, ctx: _Context, *, verify: bool = False) -> Action:
    """Make ``target`` present on the volume (see the module's docstring for the steps)."""
    try:
        return _fetch_model(target, ctx, verify=verify)
    except WorkerError:
        raise
    except OSError as exc:  # the volume itself: read-only, full, gone
        raise ModelDownloadFailed(
            f"{target.field}: cannot write {target.name} into {target.path.parent}: {exc.strerror or exc}",
            details=[{"field": target.field, "folder": str(target.path.parent)}],
        ) from exc


def _fetch_model(target: Target, ctx: _Context, *, verify: bool) -> Action:
    done = _ready(target, ctx, verify=verify, locked=False)
    if done is not None:
        return done
    policy.check_model_url(
        target.url, field=target.field, settings=ctx.settings, resolver=ctx.options.resolver
    )
    target.path.parent.mkdir(parents=True, exist_ok=True)
    lock = ModelLock(
        lock_path(target.path),
        timeout_s=ctx.settings.model_lock_timeout_s,
        tuning=ctx.options.lock,
        what=target.name,
        should_stop=ctx.should_stop,
    )
    with lock:
        if lock.waited_s > 1:
            ctx.say("waited %.0f s for another worker busy with %s", lock.waited_s, target.name)
        done = _ready(target, ctx, verify=verify, locked=True)
        if done is not None:
            return done
        part = _adopt_part(target, ctx) or new_part_path(target.path)
        bad = False
        try:
            _transfer(target, part, ctx)
            return Action.DOWNLOADED
        except BadContent:
            bad = True
            raise
        finally:
            if part.exists() and (bad or part_info(part, target.source) is None):  # nothing worth resuming
                part.unlink(missing_ok=True)
                state_path(part).unlink(missing_ok=True)
            if target.path.exists():
                _remove_leftovers(target, ctx)


# -- a job's models ----------------------------------------------------------------------------------------


def _validate(ref: ModelRef, ctx: _Context) -> None:
    """The rules checked before any download: kind, URL policy, file name, no clash with a default file's name.

    A manifest's own URL is not resolved here (a file already present costs a stat, no request): the full check
    is made before it is downloaded."""
    if ref.kind not in FOLDER_KINDS:
        raise InvalidInput(f"{ref.field}: unknown model kind {ref.kind!r}; known: {', '.join(FOLDER_KINDS)}")
    if find_by_url(ctx.manifest, ref.kind, ref.url) is not None:
        policy.check_url_rules(ref.url, field=ref.field, settings=ctx.settings)
    else:
        policy.check_model_url(ref.url, field=ref.field, settings=ctx.settings, resolver=ctx.options.resolver)
    if ref.name is not None:
        policy.check_name(ref.name, field=ref.field, settings=ctx.settings)
        entry = find_by_name(ctx.manifest, ref.kind, ref.name)
        if entry is not None and entry.url != ref.url:
            raise InvalidInput(
                f"{ref.field}: {ref.name!r} is the name of a default model file; give the file from "
                f"{redact_url(ref.url)} another name",
                details=[{"field": ref.field, "name": ref.name}],
            )


def _from_index(ref: ModelRef, ctx: _Context) -> str | None:
    """The name an earlier job saved the same URL under, if that file is still there and whole."""
    root = ctx.settings.volume_root
    entry = read_index(root, ref.kind, ref.url)
    if entry is None or (ref.name is not None and ref.name != entry.name):
        return None
    path = locate(root, ref.kind, entry.name)
    if path is None or not file_status(path, entry.size, entry.sha256).state.usable:
        return None
    return entry.name


def _claim(ctx: _Context, ref: ModelRef, name: str) -> None:
    """Two different URLs of one job must not be saved under one name."""
    with ctx.claimed_lock:
        other = ctx.claimed.setdefault((ref.kind, name), ref.url)
    if other != ref.url:
        raise InvalidInput(
            f"{ref.field}: two different URLs of this job would both be saved as {name!r}; give each a file name",
            details=[{"field": ref.field, "name": name}],
        )


def _probe(ref: ModelRef, ctx: _Context) -> Remote:
    with make_session(allow_private=ctx.settings.allow_private_urls, pool_size=2) as session:
        opener = policy.make_opener(
            ref.url, field=ref.field, settings=ctx.settings, session=session, resolver=ctx.options.resolver
        )
        return probe(opener, label=f"{ref.field} ({redact_url(ref.url)})", tuning=ctx.options.tuning)


def _target_for_manifest(ref: ModelRef, entry: ManifestEntry, ctx: _Context) -> Target:
    name = ref.name or entry.name
    path = target_path(ctx.settings.volume_root, ref.kind, name)
    return Target(ref.field, ref.kind, entry.url, name, path, entry.size, entry.sha256)


def _announced(ref: ModelRef, remote: Remote, ctx: _Context) -> None:
    if remote.sha256 is not None:
        ctx.say(
            "%s: the server announces sha256 %s; the download is checked against it", ref.field, remote.sha256
        )


def _complete(target: Target, ref: ModelRef, ctx: _Context) -> Target:
    """A target whose size or sha256 the manifest leaves open, with what the server announces filled in."""
    remote = _probe(ref, ctx)
    policy.check_size(remote.total, field=ref.field, url=ref.url, settings=ctx.settings)
    if target.sha256 is None:
        _announced(ref, remote, ctx)
    return replace(target, size=target.size or remote.total, sha256=target.sha256 or remote.sha256)


def _ensure_url(ref: ModelRef, ctx: _Context) -> str:
    """Download ``ref.url`` unless the same URL (or a whole file of the wanted name) is already there."""
    root = ctx.settings.volume_root
    entry = find_by_url(ctx.manifest, ref.kind, ref.url)
    if entry is not None:
        target = _target_for_manifest(ref, entry, ctx)
        _claim(ctx, ref, target.name)
        unknown = target.size is None or target.sha256 is None
        if unknown and _ready(target, ctx, verify=False, locked=False) is None:
            target = _complete(target, ref, ctx)
        fetch_model(target, ctx)
        return target.name
    known = _from_index(ref, ctx)
    if known is not None:
        _claim(ctx, ref, known)
        ctx.say("%s: %s was fetched before; reusing it", ref.field, known)
        return known
    remote = _probe(ref, ctx)
    name = ref.name or policy.derive_name(
        field=ref.field,
        url=ref.url,
        final_url=remote.final_url,
        content_disposition=remote.content_disposition,
        settings=ctx.settings,
    )
    policy.check_size(remote.total, field=ref.field, url=ref.url, settings=ctx.settings)
    _claim(ctx, ref, name)
    _announced(ref, remote, ctx)
    path = target_path(root, ref.kind, name)
    fetch_model(Target(ref.field, ref.kind, ref.url, name, path, remote.total, remote.sha256), ctx)
    record = read_record(path)
    size = record.size if record else path.stat().st_size
    write_index(
        root,
        ref.kind,
        ref.url,
        IndexEntry(name, size, record.sha256 if record else None),
        display_url=redact_url(ref.url),
    )
    return name


def _ensure_urls(refs: Sequence[ModelRef], ctx: _Context) -> dict[str, str]:
    """Fetch the URL refs, several files at once; the first failure stops the others."""
    groups: dict[tuple[str, str, str | None], list[ModelRef]] = {}
    for ref in refs:
        assert ref.url is not None
        groups.setdefault((ref.kind, ref.url, ref.name), []).append(ref)
    firsts = [group[0] for group in groups.values()]
    names: dict[str, str] = {}
    if len(firsts) <= 1:
        names.update({ref.field: _ensure_url(ref, ctx) for ref in firsts})
    else:
        with ThreadPoolExecutor(max_workers=min(ctx.options.parallel_files, len(firsts))) as pool:
            futures: dict[Future[str], ModelRef] = {pool.submit(_ensure_url, ref, ctx): ref for ref in firsts}
            try:
                for future in as_completed(futures):
                    names[futures[future].field] = future.result()
            except BaseException:
                ctx.stop.set()
                raise
    for group in groups.values():
        for ref in group[1:]:
            names[ref.field] = names[group[0].field]
    return names


def _context(
    settings: Settings,
    *,
    job_id: str,
    on_progress: ProgressCallback | None,
    cancel: threading.Event | None,
    options: Options | None,
    manifest: Manifest | None,
) -> _Context:
    return _Context(
        settings=settings,
        options=options or Options.from_settings(settings),
        manifest=manifest if manifest is not None else load_manifest(),
        job_id=job_id,
        on_progress=on_progress,
        cancel=cancel,
    )


def ensure_refs(
    refs: Sequence[ModelRef],
    settings: Settings,
    *,
    job_id: str = "",
    on_progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    options: Options | None = None,
    manifest: Manifest | None = None,
) -> dict[str, str]:
    """:func:`ensure_job_models` with its knobs exposed (download tuning, resolver, manifest)."""
    ctx = _context(
        settings, job_id=job_id, on_progress=on_progress, cancel=cancel, options=options, manifest=manifest
    )
    for ref in refs:
        _validate(ref, ctx)
    names = _ensure_urls(refs, ctx)
    return {ref.field: names[ref.field] for ref in refs}


def ensure_job_models(
    refs: Sequence[ModelRef],
    settings: Settings,
    *,
    job_id: str,
    on_progress: Callable[[str, int, int | None], None] | None = None,
    cancel: threading.Event | None = None,
) -> dict[str, str]:
    """Return field -> the file name ComfyUI knows the file by, after making every file present.

    Each ref's URL is downloaded into its volume folder unless already there (the same URL fetched before, or
    a whole file of the wanted name); the URL of a manifest entry (an on-demand one: see
    :func:`~worker.models.on_demand_entry`) costs one stat when its file is present. Policy violations raise
    :class:`UrlNotAllowed` before any request to the model's host; transfer or verification failures raise
    :class:`ModelDownloadFailed`; a set ``cancel`` raises :class:`JobCancelled` (the download resumes later).
    ``on_progress(field, bytes_done, total_or_None)`` is called about once a second per download.
    Downloads of different refs run concurrently.
    """
    return ensure_refs(refs, settings, job_id=job_id, on_progress=on_progress, cancel=cancel)


# -- the defaults ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    entry: ManifestEntry
    path: Path
    action: Action | None
    error: str | None = None


def default_target(entry: ManifestEntry, root: Path) -> Target:
    path = target_path(root, entry.kind, entry.name)
    return Target(entry.role or entry.name, entry.kind, entry.url, entry.name, path, entry.size, entry.sha256)


def selected(manifest: Manifest, only: Collection[str]) -> Manifest:
    """The entries named (by file name or role) in ``only``; all when it is empty."""
    if not only:
        return manifest
    unknown = set(only) - {e.name for e in manifest} - {e.role for e in manifest}
    if unknown:
        raise InvalidInput(
            f"not in the manifest: {', '.join(sorted(unknown))}; known: {', '.join(e.name for e in manifest)}"
        )
    return tuple(e for e in manifest if e.name in only or e.role in only)


def ensure_defaults(
    settings: Settings,
    manifest: Manifest,
    *,
    options: Options | None = None,
    cancel: threading.Event | None = None,
) -> list[Outcome]:
    """Make every manifest file fetched at start present and verified: a verified one costs a stat, a missing or
    wrong one is downloaded, one of the right size never hashed is hashed once. Failures are reported, not
    raised. On-demand entries are left to the first job that needs them."""
    ctx = _context(settings, job_id="", on_progress=None, cancel=cancel, options=options, manifest=manifest)
    outcomes = []
    for entry in at_start(manifest):
        target = default_target(entry, settings.volume_root)
        try:
            action = fetch_model(target, ctx, verify=True)
        except (WorkerError, OSError) as exc:
            message = exc.message if isinstance(exc, WorkerError) else f"{exc.__class__.__name__}: {exc}"
            log.error("%s: %s", entry.name, message)
            outcomes.append(Outcome(entry, target.path, None, message))
            continue
        outcomes.append(Outcome(entry, target.path, action))
    return outcomes
