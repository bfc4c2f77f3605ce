"""``POST /prompt`` validation: the rules a worker's graph meets, in ComfyUI v0.33.0's error shapes.

What it judges (each case is compared with the real ComfyUI by the real tier's parity test): an unknown class
or a node without one (top-level ``missing_node_type``), a prompt with no output node (``prompt_no_outputs``),
and per node, under ``prompt_outputs_failed_validation``: ``required_input_missing``, ``bad_linked_input``,
``return_type_mismatch``, ``invalid_input_type`` (INT/FLOAT/STRING/BOOLEAN are converted with Python's
``int``/``float``/``str``/``bool`` and the converted value is written back), ``value_smaller_than_min`` /
``value_bigger_than_max`` (``step`` is not enforced), ``value_not_in_list`` (both COMBO forms, model files
included), LoadImage's ``custom_validation_failed`` for a missing file, and a link to a node or output that does
not exist: an exception that the linking node reports on the linked one as ``exception_during_inner_validation``
(with the linking node's input name).

What it does not: dynamic combos (SaveVideo's ``codec`` and its dotted inputs pass unchecked), tracebacks
(``[]``), and a cycle is one ``dependency_cycle`` error on the node that closes it.
"""

from __future__ import annotations

import os
from typing import Any

from .schema import Definitions, Files

Error = dict[str, Any]


def error(kind: str, message: str, details: str, **extra: Any) -> Error:
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


def missing_node_type(node_id: str, node: dict[str, Any]) -> Error:
    class_type = node.get("class_type")
    title = node.get("_meta", {}).get("title", class_type)
    if class_type is None:
        message = (
            f"Node '{title or f'ID #{node_id}'}' has no class_type. The workflow may be corrupted or a custom "
            "node is missing."
        )
    else:
        message = f"Node '{title}' not found. The custom node may not be installed."
    return error(
        "missing_node_type",
        message,
        f"Node ID '#{node_id}'",
        node_id=node_id,
        class_type=class_type,
        node_title=title,
    )


def types_match(received: Any, wanted: Any) -> bool:
    if received == wanted or "*" in (received, wanted):
        return True
    if not isinstance(received, str) or not isinstance(wanted, str):
        return False
    return bool(set(received.split(",")) & set(wanted.split(",")))


CONVERSIONS = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}


def value_error(name: str, kind: Any, extra: dict[str, Any], value: Any) -> tuple[Error | None, Any]:
    """The error of a constant input, if any, and its converted value."""
    config = [kind, extra]
    if isinstance(kind, str) and kind in CONVERSIONS:
        try:
            value = CONVERSIONS[kind](value)
        except Exception as ex:
            return error(
                "invalid_input_type",
                f"Failed to convert an input value to a {kind} value",
                f"{name}, {value}, {ex}",
                input_name=name,
                input_config=config,
                received_value=value,
                exception_message=str(ex),
            ), value
    if "min" in extra and value < extra["min"]:
        message = f"Value {value} smaller than min of {extra['min']}"
        return error("value_smaller_than_min", message, name, input_name=name, received_value=value), value
    if "max" in extra and value > extra["max"]:
        message = f"Value {value} bigger than max of {extra['max']}"
        return error("value_bigger_than_max", message, name, input_name=name, received_value=value), value
    options = kind if isinstance(kind, list) else extra.get("options") if kind == "COMBO" else None
    if options is not None and value not in options:
        listed = f"(list of length {len(options)})" if len(options) > 20 else str(options)
        details = f"{name}: {value!r} not in {listed}"
        return error(
            "value_not_in_list", "Value not in list", details, input_name=name, received_value=value
        ), value
    return None, value


class Checker:
    """One prompt's node checks, each node checked once; ``errors`` holds what each failed node reported."""

    def __init__(self, defs: Definitions, files: Files, input_dir: str, prompt: dict[str, Any]) -> None:
        self.defs, self.files, self.input_dir, self.prompt = defs, files, input_dir, prompt
        self.valid: dict[str, bool] = {}
        self.errors: dict[str, list[Error]] = {}

    def check(self, node_id: str, visiting: tuple[str, ...] = ()) -> bool:
        if node_id in self.valid:
            return self.valid[node_id]
        if node_id in visiting:
            details = " -> ".join((*visiting[visiting.index(node_id) :], node_id))
            self.errors[node_id] = [error("dependency_cycle", "Dependency cycle detected", details)]
            self.valid[node_id] = False
            return False
        node = self.prompt[node_id]
        inputs = node["inputs"]
        class_type = node["class_type"]
        errors: list[Error] = []
        ok = True
        for name, (kind, extra, required) in self.defs.inputs(class_type, self.files).items():
            if name not in inputs:
                if required:
                    errors.append(
                        error("required_input_missing", "Required input is missing", name, input_name=name)
                    )
                continue
            value = inputs[name]
            if isinstance(value, list):
                ok = self._check_link(node_id, name, kind, value, errors, visiting) and ok
            elif (class_type, name) in (("LoadImage", "image"), ("LoadVideo", "file")):
                if not os.path.isfile(os.path.join(self.input_dir, os.path.basename(str(value)))):
                    details = f"{name} - Invalid {name if name == 'image' else 'video'} file: {value}"
                    errors.append(
                        error(
                            "custom_validation_failed",
                            "Custom validation failed for node",
                            details,
                            input_name=name,
                        )
                    )
            else:
                problem, inputs[name] = value_error(name, kind, extra, value)
                if problem is not None:
                    errors.append(problem)
        self.errors[node_id] = self.errors.get(node_id, []) + errors
        self.valid[node_id] = self.valid.get(node_id, True) and ok and not errors
        return self.valid[node_id]

    def _check_link(
        self,
        node_id: str,
        name: str,
        kind: Any,
        link: list[Any],
        errors: list[Error],
        visiting: tuple[str, ...],
    ) -> bool:
        if len(link) != 2:
            message = "Bad linked input, must be a length-2 list of [node_id, slot_index]"
            errors.append(error("bad_linked_input", message, name, input_name=name, received_value=link))
            return True
        # A link to a node or an output that does not exist raises here: the node that linked to this one reports it.
        received = self.defs.outputs(self.prompt[link[0]]["class_type"])[link[1]]
        if not types_match(received, kind):
            details = f"{name}, received_type({received}) mismatch input_type({kind})"
            message = "Return type mismatch between linked nodes"
            errors.append(
                error(
                    "return_type_mismatch",
                    message,
                    details,
                    input_name=name,
                    received_type=received,
                    linked_node=link,
                )
            )
            return True
        try:
            return self.check(link[0], (*visiting, node_id))
        except Exception as ex:
            self.errors[link[0]] = [
                error(
                    "exception_during_inner_validation",
                    "Exception when validating inner node",
                    str(ex),
                    input_name=name,
                    exception_message=str(ex),
                    exception_type=type(ex).__name__,
                    traceback=[],
                    linked_node=link,
                )
            ]
            self.valid[link[0]] = False
            return False


def validate_prompt(
    defs: Definitions, files: Files, input_dir: str, prompt: dict[str, Any]
) -> tuple[Error | None, list[str], dict[str, Any]]:
    """(top-level error or None, the outputs to run, node_errors). A prompt of the wrong shape (a node that is
    not an object) raises: the server answers 500, as ComfyUI does."""
    outputs: list[str] = []
    for node_id, node in prompt.items():
        if node.get("class_type") not in defs:
            return missing_node_type(node_id, node), [], {}
        if defs.is_output(node["class_type"]):
            outputs.append(node_id)
    if not outputs:
        return error("prompt_no_outputs", "Prompt has no outputs", ""), [], {}

    checker = Checker(defs, files, input_dir, prompt)
    good: list[str] = []
    node_errors: dict[str, Any] = {}
    lines: list[str] = []
    for output in outputs:
        try:
            valid = checker.check(output)
        except Exception as ex:
            valid = False
            checker.errors[output] = [
                error("exception_during_validation", "Exception when validating node", str(ex), traceback=[])
            ]
        if valid:
            good.append(output)
            continue
        lines += [f"{e['message']}: {e['details']}" for e in checker.errors.get(output, [])]
        for node_id, errors in checker.errors.items():
            if errors:
                entry = {
                    "errors": errors,
                    "dependent_outputs": [],
                    "class_type": prompt[node_id]["class_type"],
                }
                node_errors.setdefault(node_id, entry)["dependent_outputs"].append(output)
    if not good:
        message = "Prompt outputs failed validation"
        return error("prompt_outputs_failed_validation", message, "\n".join(lines)), [], node_errors
    return None, good, node_errors
