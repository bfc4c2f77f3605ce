"""The job options of ``wan-video``, generated from the job contract: one per field of
:class:`worker.schema.JobInput`, with the type, help, default, choices and bounds of its JSON schema."""

import argparse
import json
import re
from collections.abc import Mapping
from typing import Any

from ..schema import input_json_schema
from . import is_url

OPTION_NAMES = {"context_freenoise": "--no-freenoise", "context_retain_first_frame": "--retain-first-frame"}
OPTION_NAMES |= {"output": "--output-mode", "lora_pairs": "--lora"}
"""Options not named ``--field-name`` (``--no-field-name`` for a field true by default). ``--output`` is the file."""
IMAGE_FIELD = re.compile(r"((end_)?image|extend_video)_(url|base64|path)|workflow|images")
"""Set by ``--image`` / ``--end-image`` / ``--video`` (file, URL or ``volume:PATH``), or by ``workflow``."""
DEST, TYPES = "job:", {"integer": (int, "N"), "number": (float, "X"), "string": (str, "TEXT")}


def parse_lora(text: str) -> dict[str, Any]:  # HIGH,LOW[,HW[,LW]] -> a lora_pairs entry; a side may be empty
    parts = [p.strip() for p in text.split(",")]
    if not 2 <= len(parts) <= 4 or not (parts[0] or parts[1]):
        raise argparse.ArgumentTypeError("expected HIGH,LOW or HIGH,LOW,WEIGHT or HIGH,LOW,HIGH_W,LOW_W")
    sides = zip(("high", "low"), parts[:2], strict=True)
    pair = {f"{side}_url" if is_url(name) else side: name for side, name in sides if name}
    try:
        weights = [float(w) for w in parts[2:]] * (3 - len(parts[2:]))
    except ValueError:
        raise argparse.ArgumentTypeError("LoRA weights must be numbers") from None
    return pair | dict(zip(("high_weight", "low_weight"), weights, strict=False))


def parse_assignment(text: str) -> tuple[str, Any]:  # FIELD=VALUE, VALUE as JSON when it parses, else as text
    name, sep, raw = text.partition("=")
    if not sep or not re.fullmatch(r"[a-z][a-z0-9_]*", name := name.strip()):
        raise argparse.ArgumentTypeError("expected FIELD=VALUE with a field name such as high_model")
    try:
        return name, json.loads(raw)
    except ValueError:
        return name, raw


def add_job_options(parser: argparse.ArgumentParser, schema: Mapping[str, Any] | None = None) -> None:
    """One option per field of the job contract (``schema``, by default :func:`input_json_schema`)."""
    schema = schema if schema is not None else input_json_schema()
    group = parser.add_argument_group("job (see the README's API reference)")
    for name, spec in sorted(schema["properties"].items(), key=lambda kv: "anyOf" in kv[1]):  # models last
        if IMAGE_FIELD.fullmatch(name):
            continue
        kind = next((s.get("type") for s in spec.get("anyOf", [spec]) if s.get("type") != "null"), None)
        flag, notes = name.replace("_", "-"), _notes(spec)
        extra: dict[str, Any] = {"help": " ".join(spec.get("description", "").split())}
        if name == "lora_pairs":
            extra = {"action": "append", "type": parse_lora, "metavar": "HIGH,LOW[,HW[,LW]]"}
            extra["help"] = "a LoRA pair: files on the volume or URLs, optional weights; repeat for more"
        elif kind == "boolean":
            on = not spec.get("default", False)
            flag, extra["action"] = (flag, "store_true") if on else (f"no-{flag}", "store_false")
            notes = ["off by default" if on else "on by default; turns it off"]
        elif "enum" in spec:
            extra["choices"] = tuple(spec["enum"])
        else:
            extra["type"], extra["metavar"] = TYPES.get(kind or "", (json.loads, "JSON"))
        text = f"{extra['help']} ({'; '.join(notes)})" if notes else extra["help"]
        extra["help"] = text.replace("%", "%%")
        option, required = OPTION_NAMES.get(name, f"--{flag}"), name in schema.get("required", ())
        group.add_argument(option, dest=DEST + name, required=required, default=None, **extra)
    any_field = "any job field, e.g. high_model=my.safetensors (VALUE is JSON or text); repeatable"
    group.add_argument("--set", action="append", type=parse_assignment, metavar="FIELD=VALUE", help=any_field)


def _notes(spec: Mapping[str, Any]) -> list[str]:  # "default: X" and the bounds, as the help shows them
    shown = {k: f"{v:g}" if isinstance(v, float) else str(v) for k, v in spec.items() if v not in (None, [])}
    default = shown.get("x-default", shown.get("default"))
    low, high = shown.get("minimum"), shown.get("maximum", shown.get("maxItems"))
    bounds = f"{low} to {high}" if low and high else f"at most {high}" if high else ""
    bounds = bounds or (f"at least {low}" if low else "")
    return [text for text in (default and f"default: {default}", bounds) if text]


def job_fields(args: argparse.Namespace) -> dict[str, Any]:  # None: the worker's default; --set ones last
    fields = {key[len(DEST) :]: value for key, value in vars(args).items() if key.startswith(DEST)}
    return fields | dict(getattr(args, "set", None) or ())
