"""Make model files present on the volume, in named steps (:func:`fetch`): a stat when the file is there; RunPod's
model cache; the size and sha256 the source announces; the lock (best effort: as each writer renames only a file
it verified, a lock that lies costs a second download); look again; download into a staging folder of its own
(:mod:`.sources`); check the sha256; rename; record it. A job waits for its downloads (threads of their own) or
for its cancel event: a cancelled job leaves them to finish for the next one, which waits on the lock."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, wait
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

from filelock import FileLock, Timeout

from ..config import Settings
from ..errors import InvalidInput, JobCancelled, ModelDownloadFailed, WorkerError
from ..netsafe import Resolver, redact_url, system_resolver
from . import policy, sources, volume
from .manifest import Manifest, find, load_manifest
from .names import SAFE_EXTENSIONS
from .volume import FOLDER_KINDS, State, file_status

log = logging.getLogger("worker.models")
Action = Literal["present", "verified", "linked from the model cache", "downloaded"]


def human_bytes(count: float | None) -> str:
    if count is None:
        return "size unknown"
    return f"{count / 1e9:.1f} GB" if count >= 1e9 else f"{count / 1e6:.1f} MB"


@contextmanager
def file_lock(path: Path, timeout: float) -> Iterator[bool]:
    try:
        held = FileLock(path).acquire(timeout=timeout)  # released when its ``with`` ends
    except (Timeout, OSError, NotImplementedError):  # held too long, or a file system without locks
        yield False
        return
    with held:
        yield True


class Target(NamedTuple):  # a file to make present: the field it is for, its source, where, what it must be
    field: str
    url: str
    path: Path
    size: int | None = None
    sha256: str | None = None

    @property
    def label(self) -> str:
        return f"{self.field} ({redact_url(self.url)})"


class ModelRef(NamedTuple):  # a model file a job gives a URL for, or a manifest's on-demand file
    field: str
    kind: str
    url: str
    name: str | None = None


@dataclass
class Context:  # one job's (or ``models ensure``'s) fetching; tests shorten the retries or replace the lock
    settings: Settings
    manifest: Manifest = field(default_factory=load_manifest)
    job_id: str = ""
    on_progress: Callable[[str, int, int | None], None] | None = None
    cancel: threading.Event | None = None
    resolver: Resolver = system_resolver
    lock: Callable[[Path, float], AbstractContextManager[bool]] = file_lock
    retry: sources.Retry = sources.Retry()  # noqa: RUF009 - frozen
    claimed: dict[tuple[str, str], str] = field(default_factory=dict)

    def say(self, message: str, *args: object, level: int = logging.INFO) -> None:
        log.log(level, (f"[job {self.job_id}] " if self.job_id else "") + message, *args)


def _ready(target: Target, ctx: Context, verify: bool, locked: bool) -> Action | None:
    """How the file is usable already, or None. With ``verify``, and the lock, a file never hashed is hashed."""
    state, size, _ = file_status(target.path, target.size, target.sha256)
    if state is State.VERIFIED or (state is State.UNVERIFIED and not (verify and target.sha256)):
        return "present"
    if locked and state is State.UNVERIFIED:
        ctx.say("hashing %s once (%s); later its size and date count", target.path, human_bytes(size or 0))
        if volume.verify_file(target.path) == target.sha256:
            return "verified"
    if locked and state is not State.MISSING:
        state = State.CORRUPT if state is State.UNVERIFIED else state
        ctx.say("%s is %s; fetching it again", target.path, state, level=logging.WARNING)
    return None


def _link(target: Target, blob: Path, sha256: str | None, ctx: Context) -> Action:
    link = target.path.with_name(f".{target.path.name}.{uuid.uuid4().hex}.link")
    try:
        os.symlink(os.path.relpath(blob, target.path.parent), link)
        os.replace(link, target.path)
    finally:
        link.unlink(missing_ok=True)
    if sha256 is not None:
        volume.write_record(target.path, sha256)
    ctx.say("%s: %s is in RunPod's model cache: linked in place", target.field, target.path.name)
    return "linked from the model cache"


def _remote(url: str, field: str, ctx: Context) -> sources.Remote:
    """What the source announces: a Hub file's metadata (one HEAD request), another host's answer for byte 0."""
    label = f"{field} ({redact_url(url)})"
    if (source := sources.hub_file(url)) is not None:
        return sources.hub_metadata(source, ctx.settings, label)
    with policy.opener(url, field, ctx.settings, ctx.resolver) as opener:
        return sources.probe(opener, label, ctx.retry)


def _complete(target: Target, ctx: Context, remote: sources.Remote | None = None) -> Target:
    """``target`` with the size and sha256 its source announces (``remote``: already asked), within the limit."""
    remote = remote or _remote(target.url, target.field, ctx)
    policy.check_size(remote.size, field=target.field, url=target.url, settings=ctx.settings)
    if remote.sha256 and not target.sha256:
        ctx.say("%s: the source announces sha256 %s; the download must match it", target.field, remote.sha256)
    return target._replace(size=target.size or remote.size, sha256=target.sha256 or remote.sha256)


def _download(target: Target, staging: Path, ctx: Context) -> tuple[Path, str]:
    """Fetch into ``staging``, then check the sha256 (or, when none is known, a safetensors file's header)."""
    settings, source, name = ctx.settings, sources.hub_file(target.url), target.path.name
    reported = logged = time.monotonic()
    ctx.say("downloading %s from %s into %s", name, redact_url(target.url), target.path.parent)

    def meter(done: int, total: int | None) -> None:  # to the job about once a second, to the log every 15 s
        nonlocal reported, logged
        policy.check_size(max(done, total or 0), field=target.field, url=target.url, settings=settings)
        if ctx.on_progress and (done == total or time.monotonic() - reported >= 1):
            reported = time.monotonic()
            ctx.on_progress(target.field, done, total)
        if time.monotonic() - logged >= 15:
            logged = time.monotonic()
            ctx.say("downloading %s: %s of %s", name, human_bytes(done), human_bytes(total))

    if source is not None:
        part = sources.from_hub(source, staging, meter, settings, target.label)
        sha256 = volume.verify_file(part, record=False)  # huggingface_hub does not check what HTTP brought
    else:
        with policy.opener(target.url, target.field, ctx.settings, ctx.resolver) as opener:
            part = staging / name
            sha256 = sources.from_host(opener, part, meter, target.label, target.size, ctx.retry)
    if target.sha256 not in (None, sha256):
        message = f"{target.label}: the sha256 of the bytes did not match (expected {target.sha256}, got"
        details = [{"field": target.field, "expected_sha256": target.sha256, "sha256": sha256}]
        raise ModelDownloadFailed(f"{message} {sha256}); the file was discarded", details=details)
    with part.open("rb") as fh:
        os.fsync(fh.fileno())
        head = fh.read(9)
    length, size = int.from_bytes(head[:8], "little"), part.stat().st_size
    header = len(head) == 9 and 0 < length <= size - 8 and head[8:] == b"{"
    if target.sha256 is None and name.lower().endswith(SAFE_EXTENSIONS) and not header:
        message = f"{target.label}: the downloaded file is not a safetensors file (it begins with {head!r}); "
        raise ModelDownloadFailed(message + "check the URL, or whether the site needs a token")
    return part, sha256


def fetch(target: Target, ctx: Context, verify: bool = False) -> Action:
    """Make ``target`` present on the volume, in the steps the module's docstring names."""
    try:
        if (done := _ready(target, ctx, verify, locked=False)) is not None:
            return done
        target.path.parent.mkdir(parents=True, exist_ok=True)
        source, cache = sources.hub_file(target.url), ctx.settings.volume_root / volume.HF_CACHE
        unusable = not file_status(target.path, target.size, target.sha256).state.usable
        if source and unusable and (found := sources.cached(source, cache, target.size, target.sha256)):
            with suppress(OSError):  # a volume without symbolic links: the file is downloaded
                return _link(target, *found, ctx)
        target = target if target.size is not None else _complete(target, ctx)
        lock = target.path.with_name(f".{target.path.name}.lock")
        with ctx.lock(lock, ctx.settings.model_lock_timeout_s) as held:
            if not held:
                ctx.say("%s: not locked (held too long, or no locks here); fetching it anyway", lock)
            if (done := _ready(target, ctx, verify, locked=True)) is not None:
                return done
            staging, started = volume.new_staging(ctx.settings.volume_root), time.monotonic()
            try:
                part, sha256 = _download(target, staging, ctx)
                os.replace(part, target.path)
                volume.write_record(target.path, sha256)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        ctx.say("downloaded %s in %.0f s, sha256 %s", target.path.name, time.monotonic() - started, sha256)
        return "downloaded"
    except WorkerError:
        raise
    except OSError as exc:  # the volume itself: read-only, full, gone
        folder = target.path.parent
        message = f"{target.field}: cannot write {target.path.name} into {folder}: {exc.strerror or exc}"
        raise ModelDownloadFailed(message, details=[{"field": target.field, "folder": str(folder)}]) from exc


def check_ref(ref: ModelRef, settings: Settings, manifest: Manifest | None = None) -> None:
    """Refuse, before any request, what the rules forbid: an unknown kind, a URL's scheme or host, a file name,
    the name of a default model file for another URL."""
    if ref.kind not in FOLDER_KINDS:
        raise InvalidInput(f"{ref.field}: unknown model kind {ref.kind!r}; known: {', '.join(FOLDER_KINDS)}")
    policy.check_url_rules(ref.url, field=ref.field, settings=settings)
    if ref.name is not None:
        policy.check_name(ref.name, field=ref.field, settings=settings)
        if (entry := find(manifest or load_manifest(), ref.kind, ref.name)) and entry.url != ref.url:
            message = f"{ref.field}: {ref.name!r} is the name of a default model file; give the file from "
            message += f"{redact_url(ref.url)} another name"
            raise InvalidInput(message, details=[{"field": ref.field, "name": ref.name}])


def _claim(ctx: Context, ref: ModelRef, name: str) -> str:
    """Two different URLs of one job must not be saved under one name."""
    if ctx.claimed.setdefault((ref.kind, name), ref.url) != ref.url:
        message = f"{ref.field}: two different URLs of this job would both be saved as {name!r}; name them"
        raise InvalidInput(message, details=[{"field": ref.field, "name": name}])
    return name


def _ensure_url(ref: ModelRef, ctx: Context) -> str:
    """Fetch ``ref.url`` unless the same URL (or a whole file of the wanted name) is there; returns the name."""
    root = ctx.settings.volume_root
    if entry := find(ctx.manifest, ref.kind, url=ref.url):
        name = _claim(ctx, ref, ref.name or entry.name)
        path = volume.target_path(root, ref.kind, name)
        fetch(Target(ref.field, ref.url, path, entry.size, entry.sha256), ctx)
        return name
    known = volume.read_json(volume.index_path(root, ref.kind, ref.url))  # what an earlier job saved it as
    if known.get("name") and ref.name in (None, known["name"]):
        path = volume.target_path(root, ref.kind, known["name"])
        if file_status(path, known.get("size"), known.get("sha256")).state.usable:
            ctx.say("%s: %s was fetched before; reusing it", ref.field, path.name)
            return _claim(ctx, ref, path.name)
    remote = None if sources.hub_file(ref.url) else _remote(ref.url, ref.field, ctx)
    said = remote or sources.Remote()
    name = ref.name or policy.derive_name(ref.field, ref.url, said.final_url, said.disposition, ctx.settings)
    name = _claim(ctx, ref, name)
    target = Target(ref.field, ref.url, volume.target_path(root, ref.kind, name))
    if remote or target.path.exists():  # a file of that name may be another: compare its size and hash
        target = _complete(target, ctx, remote)
    fetch(target, ctx)
    _, size, sha256 = file_status(target.path)
    index = {"url": redact_url(ref.url), "name": name, "size": size, "sha256": sha256}
    volume.write_json(volume.index_path(root, ref.kind, ref.url), index)
    return name


def _spawn(ref: ModelRef, ctx: Context) -> Future[str]:
    """``_ensure_url`` in a daemon thread: a download never holds the process up at its exit."""
    future: Future[str] = Future()

    def run() -> None:
        try:
            future.set_result(_ensure_url(ref, ctx))
        except BaseException as exc:  # handed to whoever waits for the future
            future.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return future


def ensure_refs(refs: Sequence[ModelRef], ctx: Context) -> dict[str, str]:
    """Field -> the file name ComfyUI knows the file by, once every ref's file is present. :class:`UrlNotAllowed`
    comes before any request; a failed transfer or check raises :class:`ModelDownloadFailed`; a set
    ``ctx.cancel``, :class:`JobCancelled` at once. A URL given twice is fetched once, different ones side by side;
    their bytes go to ``ctx.on_progress`` about once a second."""
    for ref in refs:  # the rules, and the address unless the file comes from the manifest or from HF_ENDPOINT
        check_ref(ref, ctx.settings, ctx.manifest)
        if not (find(ctx.manifest, ref.kind, url=ref.url) or sources.hub_file(ref.url)):
            policy.check_model_url(ref.url, field=ref.field, settings=ctx.settings, resolver=ctx.resolver)
    firsts = {(ref.kind, ref.url, ref.name): ref for ref in reversed(refs)}
    futures = {ref.field: _spawn(ref, ctx) for ref in firsts.values()}
    while True:
        done, pending = wait(futures.values(), timeout=0.1, return_when=FIRST_EXCEPTION)
        if failed := next((f.exception() for f in done if f.exception() is not None), None):
            raise failed
        if not pending:
            return {ref.field: futures[firsts[(ref.kind, ref.url, ref.name)].field].result() for ref in refs}
        if ctx.cancel is not None and ctx.cancel.is_set():
            raise JobCancelled("the job was cancelled while its models downloaded (they go on for others)")
