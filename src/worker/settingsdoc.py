"""The README's environment table and .runpod/hub.json's worker entries, generated from :class:`Settings`.

``python -m worker settings`` prints the table; ``python -m worker settings --write`` rewrites the README's table
(between its ``settings`` markers) and hub.json's entries for the worker's settings, in place, leaving the
Hub's other entries (start.sh's variables) as they are. A test fails when either file is out of date.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import AliasChoices
from pydantic.fields import FieldInfo

from .config import REPO, Settings

README = REPO / "README.md"
HUB = REPO / ".runpod" / "hub.json"
REGENERATE = "python -m worker settings --write"
_TABLE = re.compile(r"(<!-- settings:start -->\n)(.*?)(<!-- settings:end -->)", re.S)


def env_name(field: FieldInfo) -> str:
    alias = field.validation_alias
    return str(alias.choices[0] if isinstance(alias, AliasChoices) else alias)


def _extra(field: FieldInfo) -> dict[str, Any]:
    assert isinstance(field.json_schema_extra, dict)
    return field.json_schema_extra


def _description(field: FieldInfo) -> str:
    return " ".join((field.description or "").split())


def _readme_default(field: FieldInfo) -> str:
    extra, value = _extra(field), field.default
    if "shown" in extra:
        text = extra["shown"]
    elif value in (None, ""):
        text = "unset"
    elif isinstance(value, Path) and value.is_relative_to(REPO):
        text = f"`{value.relative_to(REPO)}/` of the repository"
    else:
        text = f"`{_plain(value)}`"
    return f"{text} (`{extra['image']}` in the image)" if "image" in extra else text


def _plain(value: Any) -> Any:
    """``value`` as hub.json holds it: true/false, a whole number when it is one, else text."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value if isinstance(value, int | float) else str(value)


def settings_table() -> str:
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for field in Settings.model_fields.values():
        rows.append(f"| `{env_name(field)}` | {_readme_default(field)} | {_description(field)} |")
    return "\n".join(rows) + "\n"


def hub_entry(field: FieldInfo) -> dict[str, Any]:
    """A Hub form field. A boolean whose default is computed (``shown``) is a choice of automatic, on, off."""
    extra, kind = _extra(field), field.annotation
    choices: tuple[tuple[str, str], ...] = ()
    if get_origin(kind) is Literal:
        choices = tuple((value, value) for value in get_args(kind))
    elif kind is bool and "shown" in extra:
        choices = (("Automatic", ""), ("On", "true"), ("Off", "false"))
    spec: dict[str, Any] = {
        "name": extra["label"],
        "type": "boolean" if kind is bool and not choices else "number" if kind in (int, float) else "string",
        "description": _description(field).replace("`", "")
        + (f" Empty: {extra['shown']}." if "shown" in extra else ""),
    }
    if "image" in extra or "shown" in extra or field.default is None:
        spec["default"] = extra.get("image", "")
    else:
        spec["default"] = field.default if spec["type"] == "boolean" else _plain(field.default)
    if spec["type"] == "boolean":
        spec |= {"trueValue": "true", "falseValue": "false"}
    if choices:
        spec["options"] = [{"label": label, "value": value} for label, value in choices]
    spec["advanced"] = not extra.get("basic", False)
    if bounds := [m.ge for m in field.metadata if hasattr(m, "ge")]:
        spec["min"] = _plain(bounds[0])
    return {"key": env_name(field), "input": spec}


def hub_env(hub: dict[str, Any]) -> list[dict[str, Any]]:
    """hub.json's ``env`` with each worker setting's entry generated: in its place, new ones at the end."""
    generated = {entry["key"]: entry for entry in map(hub_entry, Settings.model_fields.values())}
    env = [generated.pop(entry["key"], entry) for entry in hub["config"]["env"]]
    return env + list(generated.values())


def readme_table(readme: str) -> str:
    found = _TABLE.search(readme)
    if found is None:
        raise ValueError("README.md has no <!-- settings:start --> ... <!-- settings:end --> markers")
    return found.group(2)


def write() -> list[Path]:
    """Regenerate both files; returns those that changed."""
    readme = README.read_text(encoding="utf-8")
    readme_table(readme)  # the markers are there
    hub = json.loads(HUB.read_text(encoding="utf-8"))
    hub["config"]["env"] = hub_env(hub)
    texts = {
        README: _TABLE.sub(lambda m: m.group(1) + settings_table() + m.group(3), readme),
        HUB: json.dumps(hub, indent=2, ensure_ascii=False) + "\n",
    }
    changed = [path for path, text in texts.items() if path.read_text(encoding="utf-8") != text]
    for path in changed:
        path.write_text(texts[path], encoding="utf-8")
    return changed


def main(args: list[str]) -> int:
    if args == ["--write"]:
        for path in write():
            print(f"rewrote {path.relative_to(REPO)}")
        return 0
    if args:
        print(f"usage: python -m worker settings [--write]\n{__doc__}", file=sys.stderr)
        return 2
    print(settings_table(), end="")
    return 0
