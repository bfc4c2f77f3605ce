"""``POST /prompt`` validation with ComfyUI v0.33.0's rules and error shapes.

Behaviour worth knowing (all observed on the real server, see ``shared/comfyui/v0.33.0/traces``):

* a node without ``class_type``, or of a class it does not have, is a top-level ``missing_node_type`` error
  (``extra_info``: ``node_id``, ``class_type``, ``node_title`` from ``_meta.title``); a node that is not an
  object at all makes the server answer 500;
* inputs are checked against the node's inputs; INT/FLOAT/STRING/BOOLEAN values are converted with Python's
  ``int``/``float``/``str``/``bool`` (so ``"1.0"`` for a FLOAT and ``832.0`` for an INT pass) and the converted
  value is written back into the prompt;
* ``min``/``max`` are enforced, ``step`` is not (width 838, length 80 pass);
* both COMBO forms are checked: old-style (a list as type) and the newer ``"COMBO"`` with ``options``
  (SaveVideo ``format``, WanContextWindowsManual ``context_schedule``, FrameInterpolationModelLoader's files);
* dynamic combos (SaveVideo ``codec``) are not checked themselves: a value that names no option drops the combo
  and everything under it, so the prompt is accepted and the node fails when it runs (``TypeError``, missing
  argument); the inputs of a chosen option are checked under dotted names (``codec.encoding.crf``) and a
  missing one is reported with its last name part as ``details``;
* LoadImage has its own check: a missing file is ``custom_validation_failed`` (``image - Invalid image file: x``);
* a link to a node that does not exist, or to an output index that does not exist, raises inside the recursive
  check and is reported on the linked node as ``exception_during_inner_validation`` (``KeyError`` /
  ``IndexError``), with the input name and link of the node that reached it; a link that is not a 2-list is
  ``bad_linked_input``; a cycle is ``dependency_cycle`` on every node of it.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .schema import ClassInputs, NodeSchemas

Files = Mapping[tuple[str, str], list[str]]

COMFY_ROOT = "/opt/ComfyUI"
"""Where the recorded server ran; the emulator's tracebacks name the real files and lines there."""


def _tb_frame(path: str, line: int, func: str, code: str, marks: tuple[int, int, int] | None = None) -> str:
    """One traceback entry as Python 3.11 formats it; ``marks``: (column, ``~`` count, ``^`` count) under the
    code line."""
    text = f'  File "{COMFY_ROOT}/{path}", line {line}, in {func}\n    {code}\n'
    if marks is not None:
        column, tildes, carets = marks
        text += " " * (4 + column) + "~" * tildes + "^" * carets + "\n"
    return text


_RECURSE = _tb_frame(
    "execution.py",
    955,
    "validate_inputs",
    "r = await validate_inputs(prompt_id, prompt, o_id, validated, visiting)",
    (4, 0, 67),
)
_TOP = _tb_frame(
    "execution.py",
    1184,
    "validate_prompt",
    "m = await validate_inputs(prompt_id, prompt, o, validated)",
    (4, 0, 54),
)
VALIDATION_TRACEBACKS: dict[str, list[str]] = {
    "node": [
        _RECURSE,
        _tb_frame(
            "execution.py", 933, "validate_inputs", "o_class_type = prompt[o_id]['class_type']", (15, 6, 6)
        ),
    ],
    "output": [
        _RECURSE,
        _tb_frame("execution.py", 935, "validate_inputs", "received_type = r[val[1]]", (16, 1, 8)),
    ],
    "inputs": [
        _RECURSE,
        _tb_frame(
            "execution.py", 870, "validate_inputs", "inputs = prompt[unique_id]['inputs']", (9, 17, 10)
        ),
    ],
    "load_image": [
        _RECURSE,
        _tb_frame(
            "execution.py",
            1091,
            "validate_inputs",
            "ret = await _async_map_node_over_list(prompt_id, unique_id, obj_class, input_filtered, "
            "validate_function_name, v3_data=v3_data)",
            (6, 0, 121),
        ),
        _tb_frame("execution.py", 318, "_async_map_node_over_list", "await process_inputs(input_dict, i)"),
        _tb_frame("execution.py", 306, "process_inputs", "result = f(**inputs)", (9, 0, 11)),
        _tb_frame(
            "nodes.py",
            1808,
            "VALIDATE_INPUTS",
            "if not folder_paths.exists_annotated_filepath(image):",
            (7, 0, 45),
        ),
        _tb_frame(
            "folder_paths.py",
            361,
            "exists_annotated_filepath",
            "name, base_dir = annotated_filepath(name)",
            (17, 0, 24),
        ),
        _tb_frame("folder_paths.py", 258, "annotated_filepath", 'if name.endswith("[output]"):', (3, 0, 13)),
    ],
}
"""Tracebacks of the exceptions validation can meet, as the real server reports them (keyed by where they
are raised); the first entry is the recursive call of the node that linked to the failing one."""


def _at(site: str, ex: BaseException) -> BaseException:
    """Mark where ``ex`` was raised, so that its traceback can be the real server's."""
    ex.comfy_site = site  # type: ignore[attr-defined]
    return ex


def full_type_name(klass: type) -> str:
    module = klass.__module__
    if module == "builtins":
        return klass.__qualname__
    return module + "." + klass.__qualname__


def annotated_filepath(name: str, dirs: Mapping[str, str]) -> tuple[str, str | None]:
    """Split ``"x.png [output]"`` style names into name and folder (same string operations as ComfyUI)."""
    if name.endswith("[output]"):
        return name[:-9], dirs["output"]
    if name.endswith("[input]"):
        return name[:-8], dirs["input"]
    if name.endswith("[temp]"):
        return name[:-7], dirs["temp"]
    return name, None


def exists_annotated_filepath(name: str, dirs: Mapping[str, str]) -> bool:
    name, base_dir = annotated_filepath(name, dirs)
    if base_dir is None:
        base_dir = dirs["input"]
    return os.path.exists(os.path.join(base_dir, name))


def validate_node_input(received_type: Any, input_type: Any) -> bool:
    """Whether an output type may feed an input type (``"A,B"`` unions overlap, ``*`` takes anything)."""
    if received_type == input_type:
        return True
    if not isinstance(received_type, str) or not isinstance(input_type, str):
        return False
    if received_type == "*" or input_type == "*":
        return True
    received = {t.strip() for t in received_type.split(",")}
    wanted = {t.strip() for t in input_type.split(",")}
    return len(received & wanted) > 0


@dataclass
class ValidationContext:
    schemas: NodeSchemas
    files: Callable[[], Files]
    dirs: Mapping[str, str]

    def __post_init__(self) -> None:
        self._files: Files | None = None

    def class_inputs(self, class_type: str, live_inputs: Mapping[str, Any]) -> ClassInputs:
        if self._files is None:
            self._files = self.files()
        return self.schemas.class_inputs(class_type, self._files, live_inputs)


def _load_image_validate(ctx: ValidationContext, **kwargs: Any) -> bool | str:
    """LoadImage.VALIDATE_INPUTS(image)."""
    if "image" not in kwargs:
        raise TypeError("LoadImage.VALIDATE_INPUTS() missing 1 required positional argument: 'image'")
    image = kwargs["image"]
    if not isinstance(image, str):
        raise _at(
            "load_image", AttributeError(f"'{type(image).__name__}' object has no attribute 'endswith'")
        )
    if not exists_annotated_filepath(image, ctx.dirs):
        return f"Invalid image file: {image}"
    return True


def _exception_details(ex: BaseException, top: bool = False) -> tuple[str, list[str]]:
    """Exception type and traceback; ``top``: raised in an output node's own check (called from
    ``validate_prompt``, not from a linking node)."""
    site = getattr(ex, "comfy_site", None)
    if site in VALIDATION_TRACEBACKS:
        frames = list(VALIDATION_TRACEBACKS[site])
        if top:
            frames[0] = _TOP
        return full_type_name(type(ex)), frames
    return full_type_name(type(ex)), traceback.format_tb(sys.exc_info()[2])


def _node(prompt: dict[str, Any], node_id: Any) -> dict[str, Any]:
    try:
        return prompt[node_id]
    except KeyError as ex:
        raise _at("node", ex) from None


def _validate_inputs(
    ctx: ValidationContext,
    prompt: dict[str, Any],
    unique_id: Any,
    validated: dict[Any, tuple[bool, list, Any]],
    visiting: list[Any] | None = None,
) -> tuple[bool, list, Any]:
    if visiting is None:
        visiting = []
    if unique_id in validated:
        return validated[unique_id]

    if unique_id in visiting:
        path = [*visiting[visiting.index(unique_id) :], unique_id]
        cycle_nodes = list(dict.fromkeys(path))
        details = " -> ".join(f"{n} ({prompt[n]['class_type']})" for n in path)
        for node_id in cycle_nodes:
            error = {
                "type": "dependency_cycle",
                "message": "Dependency cycle detected",
                "details": details,
                "extra_info": {"node_id": node_id, "cycle_nodes": cycle_nodes},
            }
            validated[node_id] = (False, [error], node_id)
        return validated[unique_id]

    try:
        inputs = prompt[unique_id]["inputs"]
    except KeyError as ex:
        raise _at("inputs", ex) from None
    class_type = prompt[unique_id]["class_type"]
    class_inputs = ctx.class_inputs(class_type, inputs)
    dynamic = bool(class_inputs.dynamic_paths)

    errors: list[dict[str, Any]] = []
    valid = True
    custom_inputs = ["image"] if ctx.schemas.has_custom_validation(class_type) else []

    for x in class_inputs.names():
        input_type, extra_info = class_inputs.spec(x)
        if x not in inputs:
            if class_inputs.category(x) == "required":
                errors.append(
                    {
                        "type": "required_input_missing",
                        "message": "Required input is missing",
                        "details": x.split(".")[-1] if dynamic else f"{x}",
                        "extra_info": {"input_name": x},
                    }
                )
            continue

        val = inputs[x]
        info = [input_type, extra_info]
        if isinstance(val, list):
            if len(val) != 2:
                errors.append(
                    {
                        "type": "bad_linked_input",
                        "message": "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                        "details": f"{x}",
                        "extra_info": {"input_name": x, "input_config": info, "received_value": val},
                    }
                )
                continue
            o_id = val[0]
            # A failing lookup here escapes this node's check: the node that linked to it reports it.
            o_class_type = _node(prompt, o_id)["class_type"]
            try:
                received_type = ctx.schemas.return_types(o_class_type)[val[1]]
            except Exception as ex:
                raise _at("output", ex) from None
            if not validate_node_input(received_type, input_type):
                errors.append(
                    {
                        "type": "return_type_mismatch",
                        "message": "Return type mismatch between linked nodes",
                        "details": f"{x}, received_type({received_type}) mismatch input_type({input_type})",
                        "extra_info": {
                            "input_name": x,
                            "input_config": info,
                            "received_type": received_type,
                            "linked_node": val,
                        },
                    }
                )
                continue
            try:
                visiting.append(unique_id)
                try:
                    r = _validate_inputs(ctx, prompt, o_id, validated, visiting)
                finally:
                    visiting.pop()
                if r[0] is False:
                    valid = False
                    continue
            except Exception as ex:
                valid = False
                exception_type, tb = _exception_details(ex)
                reasons = [
                    {
                        "type": "exception_during_inner_validation",
                        "message": "Exception when validating inner node",
                        "details": str(ex),
                        "extra_info": {
                            "input_name": x,
                            "input_config": info,
                            "exception_message": str(ex),
                            "exception_type": exception_type,
                            "traceback": tb,
                            "linked_node": val,
                        },
                    }
                ]
                validated[o_id] = (False, reasons, o_id)
                continue
        else:
            try:
                if isinstance(val, dict) and "__value__" in val:
                    val = val["__value__"]
                    inputs[x] = val
                if input_type == "INT":
                    val = int(val)
                    inputs[x] = val
                if input_type == "FLOAT":
                    val = float(val)
                    inputs[x] = val
                if input_type == "STRING":
                    val = str(val)
                    inputs[x] = val
                if input_type == "BOOLEAN":
                    val = bool(val)
                    inputs[x] = val
            except Exception as ex:
                errors.append(
                    {
                        "type": "invalid_input_type",
                        "message": f"Failed to convert an input value to a {input_type} value",
                        "details": f"{x}, {val}, {ex}",
                        "extra_info": {
                            "input_name": x,
                            "input_config": info,
                            "received_value": val,
                            "exception_message": str(ex),
                        },
                    }
                )
                continue

            if x in custom_inputs:
                continue
            if "min" in extra_info and val < extra_info["min"]:
                errors.append(
                    {
                        "type": "value_smaller_than_min",
                        "message": "Value {} smaller than min of {}".format(val, extra_info["min"]),
                        "details": f"{x}",
                        "extra_info": {"input_name": x, "input_config": info, "received_value": val},
                    }
                )
                continue
            if "max" in extra_info and val > extra_info["max"]:
                errors.append(
                    {
                        "type": "value_bigger_than_max",
                        "message": "Value {} bigger than max of {}".format(val, extra_info["max"]),
                        "details": f"{x}",
                        "extra_info": {"input_name": x, "input_config": info, "received_value": val},
                    }
                )
                continue
            if isinstance(input_type, list) or input_type == "COMBO":
                options = extra_info.get("options", []) if input_type == "COMBO" else input_type
                if extra_info.get("multiselect", False) and isinstance(val, list):
                    invalid = [v for v in val if v not in options]
                else:
                    invalid = [val] if val not in options else []
                if invalid:
                    input_config: Any = info
                    if len(options) > 20:
                        list_info = f"(list of length {len(options)})"
                        input_config = None
                    else:
                        list_info = str(options)
                    errors.append(
                        {
                            "type": "value_not_in_list",
                            "message": "Value not in list",
                            "details": f"{x}: {', '.join(repr(v) for v in invalid)} not in {list_info}",
                            "extra_info": {
                                "input_name": x,
                                "input_config": input_config,
                                "received_value": val,
                            },
                        }
                    )
                    continue

    if custom_inputs:
        # The validation function gets the inputs it names; a link counts as missing (None).
        kwargs: dict[str, Any] = {}
        for x in custom_inputs:
            if x in inputs:
                kwargs[x] = None if isinstance(inputs[x], list) else inputs[x]
        result = _load_image_validate(ctx, **kwargs)
        if result is not True:
            for x in kwargs:
                details = f"{x}"
                if result is not False:
                    details += f" - {result}"
                errors.append(
                    {
                        "type": "custom_validation_failed",
                        "message": "Custom validation failed for node",
                        "details": details,
                        "extra_info": {"input_name": x},
                    }
                )

    ret = validated.get(unique_id, (True, [], unique_id))
    # A cycle found deeper down may already have put an error on this node: join it.
    ret = (
        ret[0] and valid is True and not errors,
        ret[1] + [e for e in errors if e not in ret[1]],
        unique_id,
    )
    validated[unique_id] = ret
    return ret


def _missing_node_type(node_id: str, node: dict[str, Any], class_type: Any) -> dict[str, Any]:
    meta = node.get("_meta", {})
    if class_type is None:
        title = meta.get("title")
        message = (
            f"Node '{title or f'ID #{node_id}'}' has no class_type. The workflow may be corrupted or a custom "
            "node is missing."
        )
    else:
        title = meta.get("title", class_type)
        message = f"Node '{title}' not found. The custom node may not be installed."
    return {
        "type": "missing_node_type",
        "message": message,
        "details": f"Node ID '#{node_id}'",
        "extra_info": {"node_id": node_id, "class_type": class_type, "node_title": title},
    }


def validate_prompt(
    ctx: ValidationContext, prompt: dict[str, Any], partial_execution_list: list[str] | None = None
) -> tuple[bool, dict[str, Any] | None, list[str], dict[str, Any]]:
    """Returns (valid, error, outputs to execute, node_errors), like ComfyUI's ``validate_prompt``.

    A prompt of the wrong shape (a node that is not an object) raises, and the server answers 500, as
    ComfyUI does.
    """
    outputs: list[str] = []
    for x in prompt:
        node = prompt[x]
        if "class_type" not in node:
            return False, _missing_node_type(x, node, None), [], {}
        class_type = node["class_type"]
        if class_type not in ctx.schemas:
            return False, _missing_node_type(x, node, class_type), [], {}
        if ctx.schemas.is_output(class_type) and (
            partial_execution_list is None or x in partial_execution_list
        ):
            outputs.append(x)

    if not outputs:
        error = {
            "type": "prompt_no_outputs",
            "message": "Prompt has no outputs",
            "details": "",
            "extra_info": {},
        }
        return False, error, [], {}

    good_outputs: list[str] = []
    failed: list[tuple[str, list[dict[str, Any]]]] = []
    node_errors: dict[str, Any] = {}
    validated: dict[Any, tuple[bool, list, Any]] = {}
    for o in outputs:
        try:
            m = _validate_inputs(ctx, prompt, o, validated)
            valid, reasons = m[0], m[1]
        except Exception as ex:
            valid = False
            exception_type, tb = _exception_details(ex, top=True)
            reasons = [
                {
                    "type": "exception_during_validation",
                    "message": "Exception when validating node",
                    "details": str(ex),
                    "extra_info": {"exception_type": exception_type, "traceback": tb},
                }
            ]
            validated[o] = (False, reasons, o)

        if valid is True:
            good_outputs.append(o)
            continue
        failed.append((o, reasons))
        for node_id, result in validated.items():
            if result[0] is not True and len(result[1]) > 0:
                if node_id not in node_errors:
                    node_errors[node_id] = {
                        "errors": result[1],
                        "dependent_outputs": [],
                        "class_type": prompt[node_id]["class_type"],
                    }
                node_errors[node_id]["dependent_outputs"].append(o)

    if not good_outputs:
        lines = [f"{e['message']}: {e['details']}" for _, errs in failed for e in errs]
        error = {
            "type": "prompt_outputs_failed_validation",
            "message": "Prompt outputs failed validation",
            "details": "\n".join(lines),
            "extra_info": {},
        }
        return False, error, good_outputs, node_errors
    return True, None, good_outputs, node_errors
