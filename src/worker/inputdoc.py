"""The README's input tables, generated from the job contract (``python -m worker schema --markdown``).

Each row comes from a field of :class:`~worker.schema.JobInput` or :class:`~worker.schema.LoraPair`: its type,
its default (or the text a resolved default gives), its description and its bounds. A test keeps the README's
copy, between the ``<!-- input:start -->`` and ``<!-- input:end -->`` markers, equal to this output.
"""

from __future__ import annotations

import json
from typing import Any

from .models import names as modelnames
from .models.manifest import default_names
from .schema import FIELD_NAMES, input_json_schema

_MODEL_DEFAULTS = default_names()
START, END = "<!-- input:start -->", "<!-- input:end -->"

_TYPES = {"string": "string", "integer": "integer", "number": "number", "boolean": "boolean", "array": "list"}


def _type(prop: dict[str, Any]) -> str:
    kinds = [prop.get("type")] if "type" in prop else [p.get("type") for p in prop.get("anyOf", [])]
    return " or ".join(_TYPES[k] for k in kinds if k in _TYPES) or "object"


def _default(name: str, prop: dict[str, Any], required: list[str]) -> str:
    if name in required:
        return "required"
    if "x-default" in prop:
        return str(prop["x-default"])
    default = prop.get("default", [] if prop.get("type") == "array" else None)
    if default is None and name in _MODEL_DEFAULTS:
        return f"`{_MODEL_DEFAULTS[name]}`"
    return "none" if default is None else f"`{json.dumps(default, ensure_ascii=False)}`"


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _bounds(prop: dict[str, Any]) -> str:
    parts = []
    if "minimum" in prop and "maximum" in prop:
        parts.append(f"{_number(prop['minimum'])} to {_number(prop['maximum'])}")
    if "maxLength" in prop:
        parts.append(f"at most {prop['maxLength']:,} characters")
    if "maxItems" in prop:
        parts.append(f"at most {prop['maxItems']} entries")
    if "enum" in prop:
        parts.append("one of " + ", ".join(f"`{v}`" for v in prop["enum"]))
    return "; ".join(parts)


def _rows(schema: dict[str, Any], names: list[str], prefix: str = "") -> list[str]:
    props, required = schema["properties"], schema.get("required", [])
    rows = ["| field | type | default | rule |", "| --- | --- | --- | --- |"]
    for name in names:
        prop = props[name]
        rule = "; ".join(p for p in (prop.get("description", ""), _bounds(prop)) if p)
        rows.append(f"| `{prefix}{name}` | {_type(prop)} | {_default(name, prop, required)} | {rule} |")
    return rows


def input_tables(workflow: bool = False) -> str:
    """The markdown between the README's input (or workflow) markers."""
    schema = input_json_schema(workflow)
    if workflow:  # the workflow job's fields, then those of images[] and models[]
        parts = (
            (schema, ""),
            (schema["$defs"]["WorkflowFile"], "images[]."),
            (schema["$defs"]["WorkflowModel"], "models[]."),
        )
        return "\n\n".join("\n".join(_rows(part, list(part["properties"]), p)) for part, p in parts)
    pair = schema["$defs"]["LoraPair"]
    lines = [
        *_rows(schema, list(FIELD_NAMES)),
        "",
        "A LoRA pair (`lora_pairs[]`) puts one LoRA on each expert; either side may be omitted:",
        "",
        *_rows(pair, list(pair["properties"])),
        "",
        f"Model file names (every model field, on the volume or downloaded) are {modelnames.RULE}.",
    ]
    return "\n".join(lines)


def readme_section(readme: str, workflow: bool = False) -> str | None:
    """The README's current copy of the tables, or None when its markers are missing."""
    start, end = (m.replace("input", "workflow") if workflow else m for m in (START, END))
    if start not in readme or end not in readme:
        return None
    return readme.split(start, 1)[1].split(end, 1)[0].strip("\n")
