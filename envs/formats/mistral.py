"""Mistral tool calls (format ``"mistral"``).

Two spellings, both after the ``[TOOL_CALLS]`` token:

- JSON list (Mistral 7B v0.3, Nemo, Small 24.09 templates):
  ``[TOOL_CALLS][{"name": "f", "arguments": {...}}, ...]`` — what :meth:`format_call` writes;
- name + ``[ARGS]`` (tokenizer v11+, Mistral Small 3.2 / Magistral):
  ``[TOOL_CALLS]f[ARGS]{...}`` repeated per call (an optional ``[CALL_ID]id`` is skipped).

Mistral's templates require a 9-character alphanumeric ``tool_call_id`` on every tool message;
:meth:`MistralFormat.tool_result_message` numbers them per env (``"000000001"``, ...).

Hand-written on ``json``: vLLM's Mistral parser is bound to ``mistral_common``'s tokenizer and
vLLM's request classes (torch import) and reports no error for a malformed call.
"""

from __future__ import annotations

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
from rl.types import Message, ToolCall

TOOL_CALLS, ARGS, CALL_ID = "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"


def _json_list(body: str) -> tuple[list[ToolCall], str]:
    try:
        obj, end = json.JSONDecoder().raw_decode(body.lstrip())
    except json.JSONDecodeError as e:
        return [bad_call(f"invalid JSON in tool call: {e.msg}")], ""
    objs = obj if isinstance(obj, list) else [obj]
    calls = [call_from_object(o) for o in objs]
    return calls or [bad_call("tool call must be a JSON object: the list is empty")], \
        body.lstrip()[end:]


def _name_args(chunk: str) -> tuple[ToolCall, str]:
    name, sep, rest = chunk.partition(ARGS)
    if CALL_ID in name:
        name = name.split(CALL_ID, 1)[0]
    name = name.strip()
    if not sep:
        return bad_call(f"unclosed call: {TOOL_CALLS}{name} has no [ARGS]", name), ""
    if not name:
        return bad_call('tool call has no "name"'), ""
    try:
        args, end = json.JSONDecoder().raw_decode(rest.lstrip())
    except json.JSONDecodeError as e:
        return bad_call(f"invalid JSON in tool call: {e.msg}", name), ""
    if not isinstance(args, dict):
        return bad_call('"arguments" must be a JSON object', name), rest.lstrip()[end:]
    return ToolCall(name=name, arguments=args), rest.lstrip()[end:]


def parse_mistral(text: str) -> ParsedAction:
    head, tag, body = text.partition(TOOL_CALLS)
    if not tag:
        return finish([], text)
    if body.lstrip().startswith(("[", "{")):
        calls, rest = _json_list(body)
        return finish(calls, head + rest)
    calls, tails = [], []
    for chunk in body.split(TOOL_CALLS):
        call, tail = _name_args(chunk)
        calls.append(call)
        tails.append(tail)
    return finish(calls, head + "".join(tails))


@register_format("mistral")
class MistralFormat(NativeFormat):
    name = "mistral"

    def __init__(self) -> None:
        self._calls = 0  # tool results answered so far: their ids

    def parse(self, text: str) -> ParsedAction:
        return parse_mistral(text)

    def tool_result_message(self, name: str, content: str) -> Message:
        self._calls += 1
        return {"role": "tool", "name": name, "content": content,
                "tool_call_id": f"{self._calls % 10**9:09d}"}

    def format_call(self, name: str, arguments: dict[str, Any]) -> str:
        return f"{TOOL_CALLS}{json.dumps([{'name': name, 'arguments': arguments}])}"
