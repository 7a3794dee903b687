"""Llama tool calls: JSON (Llama 3.1-3.3) and pythonic (Llama 3.2 / Llama 4).

- ``"llama3-json"``: the turn is a call ``{"name": "f", "parameters": {...}}``, optionally after
  ``<|python_tag|>``; several calls are separated by ``;``. Text before ``<|python_tag|>`` (or a
  turn that does not start with ``{``) is ordinary content. ``"arguments"`` is accepted for
  ``"parameters"`` (models mix them up).
- ``"pythonic"``: the turn starts with a Python list of calls ``[f(a=1), g(b="x")]``, optionally
  inside Llama 4's ``<|python_start|>...<|python_end|>`` or LFM2's
  ``<|tool_call_start|>...<|tool_call_end|>`` (text may precede the tags). Parsed with Python's ``ast`` and
  ``ast.literal_eval`` — never evaluated — accepting JSON's ``true/false/null`` beside Python's
  literals. A list none of whose items is a call is ordinary text.

Both formats render tools natively (Llama's templates put the schemas in the prompt) and send
results as role ``"tool"`` messages (the templates render them as ``ipython`` turns).

Hand-written on ``json`` / ``ast``: vLLM's ``llama3_json`` and ``pythonic`` parsers do the same
but need vLLM's request objects (torch import) and return no error for a malformed call.
"""

from __future__ import annotations

import ast
import json
from typing import Any

from envs.formats.base import (
    NativeFormat,
    ParsedAction,
    bad_call,
    call_from_object,
    finish,
    register_format,
)
from rl.types import ToolCall

PYTHON_TAG = "<|python_tag|>"
PY_START, PY_END = "<|python_start|>", "<|python_end|>"
LIST_TAGS = ((PY_START, PY_END), ("<|tool_call_start|>", "<|tool_call_end|>"))  # Llama 4, LFM2


def parse_llama_json(text: str) -> ParsedAction:
    head, tag, body = text.partition(PYTHON_TAG)
    if not tag:
        if not text.lstrip().startswith("{"):
            return finish([], text)
        head, body = "", text.lstrip()
    decoder = json.JSONDecoder()
    calls: list[ToolCall] = []
    pos = 0
    while True:
        while pos < len(body) and (body[pos].isspace() or body[pos] == ";"):
            pos += 1
        if pos >= len(body) or body[pos] != "{":
            if not calls:  # a python tag followed by something that is not a JSON call
                calls.append(bad_call(f"invalid JSON in tool call: expected '{{' after {tag}"))
            break
        try:
            obj, pos = decoder.raw_decode(body, pos)
        except json.JSONDecodeError as e:
            calls.append(bad_call(f"invalid JSON in tool call: {e.msg}"))
            pos = len(body)
            break
        calls.append(call_from_object(obj, ("parameters", "arguments")))
    return finish(calls, head + body[pos:])


@register_format("llama3-json")
class Llama3JsonFormat(NativeFormat):
    name = "llama3-json"

    def parse(self, text: str) -> ParsedAction:
        return parse_llama_json(text)

    def format_call(self, name: str, arguments: dict[str, Any]) -> str:
        return json.dumps({"name": name, "parameters": arguments})


# ---------------------------------------------------------------------------------------------
# pythonic

_JSON_NAMES = {"true": True, "false": False, "null": None}


class _JsonNames(ast.NodeTransformer):
    """``true`` / ``false`` / ``null`` (JSON spellings) as constants, so literal_eval takes them."""

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id in _JSON_NAMES:
            return ast.copy_location(ast.Constant(_JSON_NAMES[node.id]), node)
        return node


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise ValueError(type(value).__name__)


def _dotted(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        head = _dotted(func.value)
        return f"{head}.{func.attr}" if head else None
    return None


def _call_from_ast(node: ast.expr) -> ToolCall:
    if not isinstance(node, ast.Call):
        return bad_call("invalid Python call list: every item must be a call f(a=...)")
    name = _dotted(node.func)
    if not name:
        return bad_call('tool call has no "name": the callee must be a plain name')
    if node.args:
        return bad_call(f"positional argument in {name}(...): write {name}(name=value)", name)
    args: dict[str, Any] = {}
    for kw in node.keywords:
        if kw.arg is None:
            return bad_call(f"positional argument ** in {name}(...): name each argument", name)
        try:
            args[kw.arg] = _jsonable(ast.literal_eval(_JsonNames().visit(kw.value)))
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return bad_call(f"argument '{kw.arg}' of {name} is not a literal", name)
    return ToolCall(name=name, arguments=args)


def _call_list(text: str) -> tuple[ast.List | None, int]:
    """The Python list at the start of ``text`` and where it ends (first ``]`` that closes a
    parsable list), or ``(None, 0)``."""
    end = text.find("]")
    for _ in range(256):  # bounded: a turn is short, and this only runs on text starting with [
        if end < 0:
            break
        try:
            tree = ast.parse(text[: end + 1], mode="eval")
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            end = text.find("]", end + 1)
            continue
        return (tree.body, end + 1) if isinstance(tree.body, ast.List) else (None, 0)
    return None, 0


def parse_pythonic(text: str) -> ParsedAction:
    head, tag, body = "", "", text
    for open_tag, close_tag in LIST_TAGS:
        if open_tag in text:
            head, tag, body = text.partition(open_tag)
            body = body.replace(close_tag, "", 1)
            break
    stripped = body.lstrip()
    if not stripped.startswith("["):
        if tag:
            return finish([bad_call(f"invalid Python call list after {tag}")], head + body)
        return finish([], text)
    lst, end = _call_list(stripped)
    if lst is None:
        if tag or "(" in stripped.split("]", 1)[0]:
            return finish([bad_call("invalid Python call list: cannot parse it")], head)
        return finish([], text)  # e.g. "[1] is ..." : not a call list
    if not any(isinstance(e, ast.Call) for e in lst.elts):
        return finish([], text)
    return finish([_call_from_ast(e) for e in lst.elts], head + stripped[end:])


def format_pythonic_call(name: str, arguments: dict[str, Any]) -> str:
    return f"[{name}({', '.join(f'{k}={v!r}' for k, v in arguments.items())})]"


@register_format("pythonic")
class PythonicFormat(NativeFormat):
    name = "pythonic"

    def parse(self, text: str) -> ParsedAction:
        return parse_pythonic(text)

    def format_call(self, name: str, arguments: dict[str, Any]) -> str:
        return format_pythonic_call(name, arguments)
