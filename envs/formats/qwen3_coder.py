"""Qwen3-Coder's XML-style calls (format ``"qwen3-coder"``)::

    <tool_call>
    <function=calculator>
    <parameter=expression>
    (2+3)*4
    </parameter>
    </function>
    </tool_call>

Reasoning in ``<think>...</think>`` before the calls (Qwen3.5, Nemotron 3 templates use this call
syntax with thinking) is split off as in ``qwen3``. Parameter values are raw text, so their types come from the tool's schema: the env binds the
schemas with :meth:`Qwen3CoderFormat.with_tools` (``"12"`` is the string ``"12"`` for a string
parameter and the integer 12 for an integer one). Without schemas a value is decoded as JSON when
it is a JSON number, boolean, null, object or array, else kept as text.

Hand-written on ``re`` + ``json``: vLLM's ``qwen3coder`` parser needs its request objects and a
tokenizer (importing it loads torch and the vLLM protocol, seconds per process) and swallows a
malformed call into plain text, where the trainer needs an error observation per bad call.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from envs.formats.base import (
    NativeFormat,
    ParsedAction,
    bad_call,
    finish,
    register_format,
    split_reasoning,
)
from envs.formats.hermes import CALL_CLOSE, CALL_OPEN, split_tagged
from rl.types import ToolCall

_FUNC_RE = re.compile(r"<function=([^>\n]*)>(.*?)(</function>|$)", re.DOTALL)
_PARAM_RE = re.compile(r"<parameter=([^>\n]*)>(.*?)(</parameter>|$)", re.DOTALL)
_JSON_START = set('-0123456789{["') | {"t", "f", "n"}


def _strip_newline(value: str) -> str:
    """The template writes ``<parameter=k>\\nvalue\\n</parameter>``: drop one newline each side."""
    value = value[1:] if value.startswith("\n") else value
    return value[:-1] if value.endswith("\n") else value


def _untyped(raw: str) -> Any:
    if raw.strip()[:1] in _JSON_START and raw.strip() not in ("", '"'):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            return raw
        return raw if isinstance(value, str) else value
    return raw


def _typed(raw: str, schema: dict[str, Any] | None) -> Any:
    """``raw`` converted to the schema's type; left as text when it does not convert (the env's
    argument validation then answers with the type error)."""
    if not schema:
        return _untyped(raw)
    types = schema.get("type")
    types = types if isinstance(types, list) else [types]
    if "string" in types:
        return raw
    text = raw.strip()
    if "boolean" in types and text.lower() in ("true", "false"):
        return text.lower() == "true"
    if "null" in types and text.lower() in ("null", "none"):
        return None
    if "integer" in types and re.fullmatch(r"-?\d+", text):
        return int(text)
    if "number" in types:
        try:
            value = float(text)
        except ValueError:
            return raw
        return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() \
            else value
    if {"object", "array"} & set(types):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            try:  # the template renders Python-style literals for some values
                return ast.literal_eval(text)
            except (ValueError, SyntaxError):
                return raw
    return _untyped(raw)


def _function_calls(
    text: str, schemas: dict[str, dict[str, Any]]
) -> tuple[list[ToolCall], str]:
    """The ``<function=...>`` blocks of ``text`` as calls, and the text around them."""
    calls: list[ToolCall] = []
    for m in _FUNC_RE.finditer(text):
        name, body, closed = m.group(1).strip(), m.group(2), m.group(3)
        if not closed:
            calls.append(bad_call(f"unclosed <function={name}> tag", name))
            continue
        if not name:
            calls.append(bad_call('tool call has no "name"'))
            continue
        props = schemas.get(name, {})
        args: dict[str, Any] = {}
        error = None
        for p in _PARAM_RE.finditer(body):
            key, raw, pclosed = p.group(1).strip(), p.group(2), p.group(3)
            if not pclosed:
                error = f"unclosed <parameter={key}> tag in {name}"
                break
            if key in args:
                error = f"duplicate parameter '{key}' in {name}"
                break
            args[key] = _typed(_strip_newline(raw), props.get(key))
        calls.append(bad_call(error, name) if error else ToolCall(name=name, arguments=args))
    return calls, _FUNC_RE.sub("", text)


@register_format("qwen3-coder")
class Qwen3CoderFormat(NativeFormat):
    name = "qwen3-coder"

    def __init__(self, schemas: dict[str, dict[str, Any]] | None = None) -> None:
        self.schemas = schemas or {}  # tool name -> {parameter: JSON schema}

    def with_tools(self, tools: list[dict[str, Any]]) -> Qwen3CoderFormat:
        """This format with the tools' parameter schemas (the types of the raw values)."""
        schemas = {}
        for t in tools:
            fn = t.get("function", t)
            schemas[fn["name"]] = dict(fn.get("parameters", {}).get("properties", {}))
        return Qwen3CoderFormat(schemas)

    def parse(self, text: str) -> ParsedAction:
        reasoning, text = split_reasoning(text)
        bodies, outside = split_tagged(text, CALL_OPEN, CALL_CLOSE)
        calls: list[ToolCall] = []
        for b in bodies:
            if b is None:
                calls.append(bad_call("unclosed <tool_call> tag"))
            else:
                found, _ = _function_calls(b, self.schemas)
                calls.extend(found or [bad_call("unclosed <function=...> tag: none in the call")])
        # <function=...> written without the <tool_call> wrapper: still calls (as vLLM does)
        found, outside = _function_calls(outside, self.schemas)
        calls.extend(found)
        if CALL_CLOSE in outside:
            calls.append(bad_call("</tool_call> without <tool_call>"))
            outside = outside.replace(CALL_CLOSE, "")
        return finish(calls, outside, reasoning)

    def format_call(self, name: str, arguments: dict[str, Any]) -> str:
        params = "".join(
            f"<parameter={k}>\n{v if isinstance(v, str) else json.dumps(v)}\n</parameter>\n"
            for k, v in arguments.items()
        )
        return f"{CALL_OPEN}\n<function={name}>\n{params}</function>\n{CALL_CLOSE}"
