"""``POST /prompt`` validation with ComfyUI v0.3.64's rules and error shapes.

Behaviour worth knowing (all observed on the real server):

* inputs are checked against ``INPUT_TYPES``; INT/FLOAT/STRING/BOOLEAN values are converted with Python's
  ``int``/``float``/``str``/``bool`` (so ``"1.0"`` for a FLOAT and ``832.0`` for an INT pass) and the converted
  value is written back into the prompt;
* ``min``/``max`` are enforced, ``step`` is not (width 838, length 80 pass);
* only old-style COMBOs (a list as type) are checked against their options; newer nodes' ``"COMBO"`` inputs
  (SaveVideo ``format``/``codec``) are not;
* LoadImage has its own check: a missing file is ``custom_validation_failed`` (``image - Invalid image file: x``);
* a link to a node that does not exist, or to an output index that does not exist, raises inside the recursive
  check and is reported on the linking node as ``exception_during_inner_validation`` (``KeyError`` /
  ``IndexError``); a link that is not a 2-list is ``bad_linked_input``.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .schema import NodeSchemas

Files = Mapping[tuple[str, str], list[str]]


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
    """Whether an output type may feed an input type (``"A,B"`` unions overlap)."""
    if received_type == input_type:
        return True
    if not isinstance(received_type, str) or not isinstance(input_type, str):
        return False
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

    def input_types(self, class_type: str) -> dict[str, dict[str, tuple[Any, dict[str, Any]]]]:
        if self._files is None:
            self._files = self.files()
        return self.schemas.input_types(class_type, self._files)


def _load_image_validate(ctx: ValidationContext, **kwargs: Any) -> bool | str:
    """LoadImage.VALIDATE_INPUTS(image)."""
    if "image" not in kwargs:
        raise TypeError("LoadImage.VALIDATE_INPUTS() missing 1 required positional argument: 'image'")
    image = kwargs["image"]
    if not exists_annotated_filepath(image, ctx.dirs):
        return f"Invalid image file: {image}"
    return True


def _exception_details(ex: BaseException) -> tuple[str, list[str]]:
    _, _, tb = sys.exc_info()
    return full_type_name(type(ex)), traceback.format_tb(tb)


def _validate_inputs(
    ctx: ValidationContext,
    prompt: dict[str, Any],
    unique_id: Any,
    validated: dict[Any, tuple[bool, list, Any]],
) -> tuple[bool, list, Any]:
    if unique_id in validated:
        return validated[unique_id]

    inputs = prompt[unique_id]["inputs"]
    class_type = prompt[unique_id]["class_type"]
    class_inputs = ctx.input_types(class_type)
    required = class_inputs.get("required", {})
    optional = class_inputs.get("optional", {})
    names = list(required) + [n for n in optional if n not in required]

    errors: list[dict[str, Any]] = []
    valid = True
    custom_inputs = ["image"] if ctx.schemas.has_custom_validation(class_type) else []

    for x in names:
        category = "required" if x in required else "optional"
        input_type, extra_info = required[x] if category == "required" else optional[x]
        if x not in inputs:
            if category == "required":
                errors.append(
                    {
                        "type": "required_input_missing",
                        "message": "Required input is missing",
                        "details": f"{x}",
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
            o_class_type = prompt[o_id]["class_type"]
            received_type = ctx.schemas.return_types(o_class_type)[val[1]]
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
                r = _validate_inputs(ctx, prompt, o_id, validated)
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

            if x not in custom_inputs:
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
                if isinstance(input_type, list) and val not in input_type:
                    input_config: Any = info
                    if len(input_type) > 20:
                        list_info = f"(list of length {len(input_type)})"
                        input_config = None
                    else:
                        list_info = str(input_type)
                    errors.append(
                        {
                            "type": "value_not_in_list",
                            "message": "Value not in list",
                            "details": f"{x}: '{val}' not in {list_info}",
                            "extra_info": {
                                "input_name": x,
                                "input_config": input_config,
                                "received_value": val,
                            },
                        }
                    )
                    continue

    if custom_inputs:
        # The validation function gets the constant inputs it names; links count as missing (None).
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

    ret = (False, errors, unique_id) if errors or valid is not True else (True, [], unique_id)
    validated[unique_id] = ret
    return ret


def validate_prompt(
    ctx: ValidationContext, prompt: dict[str, Any], partial_execution_list: list[str] | None = None
) -> tuple[bool, dict[str, Any] | None, list[str], dict[str, Any]]:
    """Returns (valid, error, outputs to execute, node_errors), like ComfyUI's ``validate_prompt``."""
    outputs: list[str] = []
    for x in prompt:
        node = prompt[x]
        if not isinstance(node, dict) or "class_type" not in node:
            error = {
                "type": "invalid_prompt",
                "message": "Cannot execute because a node is missing the class_type property.",
                "details": f"Node ID '#{x}'",
                "extra_info": {},
            }
            return False, error, [], {}
        class_type = node["class_type"]
        if class_type not in ctx.schemas:
            error = {
                "type": "invalid_prompt",
                "message": f"Cannot execute because node {class_type} does not exist.",
                "details": f"Node ID '#{x}'",
                "extra_info": {},
            }
            return False, error, [], {}
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
            exception_type, tb = _exception_details(ex)
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
