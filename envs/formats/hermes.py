"""Hermes call syntax: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``.

- ``"hermes"``: Hermes 2 Pro / Qwen2.5. ``native_tools=True``: the agent loop passes the schemas
  to the chat template (``tools=``), which renders them; results go back as role ``"tool"``.
- ``"hermes-prompt"`` (the default): the same call syntax for chat templates without tool
  support (SmolLM2's ChatML). The schemas go into the system prompt as compact JSON inside
  ``<tools>...</tools>``; results come back wrapped in ``<tool_response>...</tool_response>``.
- ``"qwen3"``: Hermes calls after an optional ``<think>...</think>`` block (Qwen3, QwQ). Calls
  and answers inside the reasoning do not count; the reasoning is ``ParsedAction.reasoning``.

Parsing is the standard library's ``json`` on the text between the tags. vLLM's
``hermes_tool_parser`` does the same job but needs a tokenizer and vLLM's (torch-importing)
protocol classes, and it turns a malformed call into plain text, where the trainer needs each
failure as an error observation and a counted kind.
"""

from __future__ import annotations

import json
from typing import Any

from envs.formats.base import (
    NativeFormat,
    ParsedAction,
    bad_call,
    call_from_object,
    compact_schema,
    finish,
    format_answer,
    register_format,
    split_reasoning,
)
from rl.types import Message, ToolCall

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"


def split_tagged(text: str, open_tag: str, close_tag: str) -> tuple[list[str | None], str]:
    """Bodies between ``open_tag`` / ``close_tag`` (None for an unclosed last one) and the text
    outside them (a stray closing tag left in place)."""
    bodies: list[str | None] = []
    rest: list[str] = []
    pos = 0
    while True:
        start = text.find(open_tag, pos)
        if start < 0:
            rest.append(text[pos:])
            break
        rest.append(text[pos:start])
        end = text.find(close_tag, start + len(open_tag))
        if end < 0:
            bodies.append(None)
            break
        bodies.append(text[start + len(open_tag) : end])
        pos = end + len(close_tag)
    return bodies, "".join(rest)


def _call_from_json(body: str) -> ToolCall:
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as e:
        return bad_call(f"invalid JSON in tool call: {e.msg}")
    return call_from_object(obj)


def parse_hermes(text: str, reasoning: str = "") -> ParsedAction:
    """Split ``text`` into ``<tool_call>`` blocks, ``<answer>`` blocks and the rest."""
    bodies, outside = split_tagged(text, CALL_OPEN, CALL_CLOSE)
    calls = [
        _call_from_json(b.strip()) if b is not None else bad_call("unclosed <tool_call> tag")
        for b in bodies
    ]
    if CALL_CLOSE in outside:  # a closing tag without its opening one
        calls.append(bad_call("</tool_call> without <tool_call>"))
        outside = outside.replace(CALL_CLOSE, "")
    return finish(calls, outside, reasoning)


def format_hermes_call(name: str, arguments: dict[str, Any]) -> str:
    return f"{CALL_OPEN}{json.dumps({'name': name, 'arguments': arguments})}{CALL_CLOSE}"


@register_format("hermes")
class HermesFormat(NativeFormat):
    """Hermes tool calls with the chat template rendering the schemas (``tools=``)."""

    name = "hermes"

    def parse(self, text: str) -> ParsedAction:
        return parse_hermes(text)

    def format_call(self, name: str, arguments: dict[str, Any]) -> str:
        return format_hermes_call(name, arguments)


@register_format("qwen3")
class Qwen3Format(HermesFormat):
    """Hermes calls after optional ``<think>`` reasoning (Qwen3's native template renders tools)."""

    name = "qwen3"

    def parse(self, text: str) -> ParsedAction:
        reasoning, rest = split_reasoning(text)
        return parse_hermes(rest, reasoning)


@register_format("hermes-prompt")
class HermesPromptFormat:
    """Hermes tool calls for templates without tool support: schemas in the system prompt.

    The prompt is deliberately terse (every prompt token is paid for in every rollout and every
    learner step); it carries the schemas and one call pattern, nothing else.
    """

    name = "hermes-prompt"
    native_tools = False

    def system_prompt(self, tools: list[dict[str, Any]]) -> str:
        if not tools:
            return ""
        schemas = "\n".join(compact_schema(t) for t in tools)
        return (
            f"<tools>\n{schemas}\n</tools>\n"
            'Call tools as <tool_call>{"name": ..., "arguments": {...}}</tool_call>'
        )

    def parse(self, text: str) -> ParsedAction:
        return parse_hermes(text)

    def tool_result_message(self, name: str, content: str) -> Message:
        return {
            "role": "tool",
            "name": name,
            "content": f"<tool_response>{content}</tool_response>",
        }

    def format_call(self, name: str, arguments: dict[str, Any]) -> str:
        return format_hermes_call(name, arguments)

    def format_answer(self, answer: Any) -> str:
        return format_answer(answer)
