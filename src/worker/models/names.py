"""The one rule for a model file name (:data:`RULE`), on the volume or about to be downloaded. A name is not
hidden because the worker's own files beside each model are; pickle formats only on request because they can
run code when loaded. Spaces, brackets and non-ASCII letters are fine. Imports nothing of the worker."""

from __future__ import annotations

import re
import unicodedata

SAFE_EXTENSIONS = (".safetensors", ".sft")
PICKLE_EXTENSIONS = (".ckpt", ".pt", ".pt2", ".pth", ".bin", ".pkl")
MAX_NAME_BYTES = 200

RULE = (
    "a file name without folders, not starting with '.', at most 200 bytes, ending in .safetensors or .sft"
    " (pickle formats .ckpt .pt .pt2 .pth .bin .pkl only with ALLOW_PICKLE_MODELS=true on the worker)"
)

_SEPARATORS = re.compile(r"[/\\]")


def allowed_extensions(allow_pickle: bool) -> tuple[str, ...]:
    return (*SAFE_EXTENSIONS, *PICKLE_EXTENSIONS) if allow_pickle else SAFE_EXTENSIONS


def name_problem(name: str, *, allow_pickle: bool) -> str | None:
    """What is wrong with ``name`` as a model file name, worded for the user; None when it is fine."""
    if not name.strip():
        return "must not be empty"
    if _SEPARATORS.search(name):
        return "must be a file name, without folders or path separators"
    if any(unicodedata.category(c) == "Cc" for c in name):
        return "must not contain control characters"
    if name.startswith("."):
        return "must not start with '.'"
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        return f"must be at most {MAX_NAME_BYTES} bytes long"
    extensions = allowed_extensions(allow_pickle)
    if not name.lower().endswith(extensions):
        hint = "" if allow_pickle else " (pickle formats need ALLOW_PICKLE_MODELS=true on the worker)"
        return f"must end in {' or '.join(extensions)}{hint}"
    return None


def sanitize(raw: str) -> str:
    """A name that passes the rule's character part, made from a server's or a URL's file name: its last path
    part, control characters replaced, leading dots and spaces dropped, cut to the length limit."""
    base = _SEPARATORS.split(raw.strip())[-1]
    base = "".join("_" if unicodedata.category(c) == "Cc" else c for c in base).strip().lstrip(".").strip()
    stem, dot, suffix = base.rpartition(".")
    if not dot or len(suffix) > 16:  # no extension: the whole name is kept, nothing added to it
        stem, dot, suffix = base, "", ""
    room = MAX_NAME_BYTES - len(suffix.encode("utf-8")) - len(dot)
    cut = stem.encode("utf-8")[: max(room, 0)].decode("utf-8", errors="ignore").rstrip()
    return f"{cut}{dot}{suffix}" if cut else ""
