"""POST /prompt's validation, following ComfyUI 0.3.64's ``validate_prompt``/``validate_inputs``.

Checks run against ``object_info`` entries, so every one of the 477 recorded node types
validates (links, types, ranges, combo lists) even where the stand-in cannot execute it. The
quirks are ComfyUI's: a node downstream of a broken one is invalid without errors of its
own, the top-level ``details`` lists only the output nodes' own errors, a converted value
(``"64"`` for an INT) is written back into the prompt, and an exception while validating
(a link to a missing node) becomes ``exception_during_validation`` for the whole output.
"""

from __future__ import annotations

import traceback
from typing import Any, Callable

Error = dict[str, Any]
NodeInfo = Callable[[str], "dict | None"]  # class_type -> object_info entry (None: unknown)
# class_type -> (the inputs its VALIDATE_INPUTS takes, that function) or None; it answers True or a message
CustomCheck = Callable[[str], "tuple[tuple[str, ...], Callable[..., Any]] | None"]


def _error(type_: str, message: str, details: str, extra: dict | None = None) -> Error:
    return {"type": type_, "message": message, "details": details, "extra_info": extra or {}}


def full_type_name(cls: type) -> str:
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def input_info(info: dict, name: str) -> tuple[Any, str | None, dict]:
    inputs = info.get("input") or {}
    for category in ("required", "optional", "hidden"):
        spec = (inputs.get(category) or {}).get(name)
        if spec is not None:
            if isinstance(spec, str):  # hidden inputs of legacy nodes: "PROMPT"
                return spec, category, {}
            return spec[0], category, (spec[1] if len(spec) > 1 else {})
    return None, None, {}


def node_input_ok(received: Any, expected: Any) -> bool:
    if not received != expected:
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    got = {t.strip() for t in received.split(",")}
    want = {t.strip() for t in expected.split(",")}
    return "*" in got or "*" in want or bool(got & want)


def is_link(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], (int, float)) and not isinstance(value[1], bool))


def _validate_inputs(prompt: dict, node_id: Any, validated: dict, node_info: NodeInfo,
                     custom: CustomCheck) -> tuple:
    if node_id in validated:
        return validated[node_id]
    inputs = prompt[node_id]["inputs"]
    class_type = prompt[node_id]["class_type"]
    info = node_info(class_type)
    assert info is not None
    declared = info.get("input") or {}
    names = list(declared.get("required") or {}) + list(declared.get("optional") or {})
    check = custom(class_type)
    custom_names = set(check[0]) if check else set()
    errors: list[Error] = []
    valid = True
    for x in names:
        input_type, category, extra = input_info(info, x)
        spec = [input_type, extra]
        if x not in inputs:
            if category == "required":
                errors.append(_error("required_input_missing", "Required input is missing", x, {"input_name": x}))
            continue
        val = inputs[x]
        if isinstance(val, list):
            if len(val) != 2:
                errors.append(_error("bad_linked_input",
                                     "Bad linked input, must be a length-2 list of [node_id, slot_index]", x,
                                     {"input_name": x, "input_config": spec, "received_value": val}))
                continue
            o_id = val[0]
            o_info = node_info(prompt[o_id]["class_type"])  # KeyError for a missing node, as in ComfyUI
            if o_info is None:
                raise KeyError(prompt[o_id]["class_type"])
            received = o_info["output"][val[1]]
            if not node_input_ok(received, input_type):
                errors.append(_error(
                    "return_type_mismatch", "Return type mismatch between linked nodes",
                    f"{x}, received_type({received}) mismatch input_type({input_type})",
                    {"input_name": x, "input_config": spec, "received_type": received, "linked_node": val}))
                continue
            try:
                r = _validate_inputs(prompt, o_id, validated, node_info, custom)
                if r[0] is False:
                    valid = False
                    continue
            except Exception as ex:
                valid = False
                validated[o_id] = (False, [_error(
                    "exception_during_inner_validation", "Exception when validating inner node", str(ex),
                    {"input_name": x, "input_config": spec, "exception_message": str(ex),
                     "exception_type": full_type_name(type(ex)), "traceback": traceback.format_tb(ex.__traceback__),
                     "linked_node": val})], o_id)
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
                errors.append(_error("invalid_input_type", f"Failed to convert an input value to a {input_type} value",
                                     f"{x}, {val}, {ex}", {"input_name": x, "input_config": spec,
                                                           "received_value": val, "exception_message": str(ex)}))
                continue
            if x in custom_names:
                continue  # the node checks this input itself (LoadImage's image)
            if "min" in extra and val < extra["min"]:
                errors.append(_error("value_smaller_than_min", f"Value {val} smaller than min of {extra['min']}", x,
                                     {"input_name": x, "input_config": spec, "received_value": val}))
                continue
            if "max" in extra and val > extra["max"]:
                errors.append(_error("value_bigger_than_max", f"Value {val} bigger than max of {extra['max']}", x,
                                     {"input_name": x, "input_config": spec, "received_value": val}))
                continue
            if isinstance(input_type, list) or input_type == "COMBO":
                options = input_type if isinstance(input_type, list) else extra.get("options", [])
                if val not in options:
                    config: Any = spec
                    if len(options) > 20:  # ComfyUI doesn't echo long lists (model folders)
                        listing, config = f"(list of length {len(options)})", None
                    else:
                        listing = str(options)
                    errors.append(_error("value_not_in_list", "Value not in list", f"{x}: '{val}' not in {listing}",
                                         {"input_name": x, "input_config": config, "received_value": val}))
                    continue
    if check:
        args = {x: inputs[x] for x in check[0] if x in inputs and not isinstance(inputs[x], list)}
        result = check[1](**args)
        if result is not True:
            for x in args:  # ComfyUI reports the verdict once per input the check received
                details = x if result is False else f"{x} - {result}"
                errors.append(_error("custom_validation_failed", "Custom validation failed for node", details,
                                     {"input_name": x}))
    ret = (False, errors, node_id) if errors or valid is not True else (True, [], node_id)
    validated[node_id] = ret
    return ret


def validate_prompt(prompt: dict, node_info: NodeInfo, custom: CustomCheck,
                    partial_targets: list | None = None) -> tuple[bool, Error | None, list, dict]:
    """(ok, error, outputs to execute, node_errors), as ComfyUI's validate_prompt returns them."""
    outputs = []
    for x in prompt:
        node = prompt[x]
        if not isinstance(node, dict) or "class_type" not in node:
            return False, _error("invalid_prompt", "Cannot execute because a node is missing the class_type property.",
                                 f"Node ID '#{x}'"), [], {}
        class_type = node["class_type"]
        info = node_info(class_type) if isinstance(class_type, str) else None
        if info is None:
            return False, _error("invalid_prompt", f"Cannot execute because node {class_type} does not exist.",
                                 f"Node ID '#{x}'"), [], {}
        if info.get("output_node") is True and (partial_targets is None or x in partial_targets):
            outputs.append(x)
    if not outputs:
        return False, _error("prompt_no_outputs", "Prompt has no outputs", ""), [], {}

    good: list = []
    failed: list[tuple[Any, list[Error]]] = []
    node_errors: dict = {}
    validated: dict = {}
    for o in outputs:
        try:
            valid, reasons, _ = _validate_inputs(prompt, o, validated, node_info, custom)
        except Exception as ex:
            valid = False
            reasons = [_error("exception_during_validation", "Exception when validating node", str(ex),
                              {"exception_type": full_type_name(type(ex)),
                               "traceback": traceback.format_tb(ex.__traceback__)})]
            validated[o] = (False, reasons, o)
        if valid is True:
            good.append(o)
            continue
        failed.append((o, reasons))
        for node_id, (ok, node_reasons, _) in validated.items():
            # Nodes downstream of a broken one are invalid with no errors of their own: not reported.
            if ok is not True and node_reasons:
                if node_id not in node_errors:
                    node_errors[node_id] = {"errors": node_reasons, "dependent_outputs": [],
                                            "class_type": prompt[node_id]["class_type"]}
                node_errors[node_id]["dependent_outputs"].append(o)
    if not good:
        details = "\n".join(f"{e['message']}: {e['details']}" for _, reasons in failed for e in reasons)
        return False, _error("prompt_outputs_failed_validation", "Prompt outputs failed validation", details), \
            good, node_errors
    return True, None, good, node_errors
