"""Tool-call formats: how the model writes tool calls and final answers, and how results come back.

A format is chosen by name from a registry (``get_format("hermes-prompt")``); every format has the
same small interface (:class:`ToolCallFormat`). Parsing never raises: a malformed call becomes a
:class:`~rl.types.ToolCall` whose ``error`` says what is wrong, so the env can answer it with an
error observation and the episode goes on.

Formats here:

- ``"hermes"``: Hermes/Qwen-style ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
  (several per turn). ``native_tools=True``: the agent loop passes the schemas to the chat
  template (``tools=``), which renders them; results go back as role ``"tool"`` messages.
- ``"hermes-prompt"``: the same call syntax for chat templates without tool support (the default
  SmolLM2 ChatML one). The schemas go into the system prompt as compact JSON inside
  ``<tools>...</tools>``; results come back as role ``"tool"`` messages wrapped in
  ``<tool_response>...</tool_response>``.

Final answers are ``<answer>...</answer>`` in every format.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from rl.registry import Registry
from rl.types import Message, ToolCall

ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


@dataclass
class ParsedAction:
    """One model turn, split into tool calls, a final answer and the remaining text."""

    tool_calls: list[ToolCall] = field(default_factory=list)  # malformed ones carry .error
    answer: str | None = None  # stripped content of the last <answer>...</answer>, if any
    content: str = ""  # text outside the tags, stripped
    num_answers: int = 0  # how many complete <answer> tags the turn holds


@runtime_checkable
class ToolCallFormat(Protocol):
    """How tool calls and answers are written, parsed and answered."""

    name: str
    native_tools: bool  # True: the agent loop passes ``tools=`` to the chat template

    def system_prompt(self, tools: list[dict[str, Any]]) -> str:
        """Tool instructions + schemas for the system message ("" when the template does it)."""
        ...

    def parse(self, text: str) -> ParsedAction: ...

    def tool_result_message(self, name: str, content: str) -> Message: ...

    def format_call(self, name: str, arguments: dict[str, Any]) -> str:
        """A call exactly as the model should write it (used to synthesize demonstrations)."""
        ...

    def format_answer(self, answer: Any) -> str: ...


def find_answers(text: str) -> list[str]:
    """Contents (stripped) of every complete ``<answer>...</answer>`` in ``text``."""
    return [m.strip() for m in ANSWER_RE.findall(text)]


def format_answer(answer: Any) -> str:
    return f"<answer>{answer}</answer>"


_FORMATS: Registry[Callable[[], ToolCallFormat]] = Registry("tool-call format")


def register_format(
    name: str,
) -> Callable[[Callable[[], ToolCallFormat]], Callable[[], ToolCallFormat]]:
    """Class decorator: ``@register_format("hermes")``. Duplicate names are refused."""
    return _FORMATS.register(name)


def get_format(name: str) -> ToolCallFormat:
    return _FORMATS.get(name)()


def registered_formats() -> list[str]:
    return sorted(_FORMATS.names())


# ---------------------------------------------------------------------------------------------
# Hermes call syntax (shared by "hermes" and "hermes-prompt")

_CALL_OPEN, _CALL_CLOSE = "<tool_call>", "</tool_call>"


def _call_from_json(body: str) -> ToolCall:
    """Decode the JSON inside one ``<tool_call>`` tag; problems become ``ToolCall.error``."""
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as e:
        return ToolCall(name="", arguments={}, error=f"invalid JSON in tool call: {e.msg}")
    if not isinstance(obj, dict):
        return ToolCall(
            name="", arguments={}, error='tool call must be a JSON object {"name": ...}'
        )
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        return ToolCall(name="", arguments={}, error='tool call has no "name"')
    args = obj.get("arguments", {})  # a tool without parameters may omit "arguments"
    if not isinstance(args, dict):
        return ToolCall(name=name, arguments={}, error='"arguments" must be a JSON object')
    return ToolCall(name=name, arguments=args)


def parse_hermes(text: str) -> ParsedAction:
    """Split ``text`` into ``<tool_call>`` blocks, ``<answer>`` blocks and the rest."""
    calls: list[ToolCall] = []
    rest: list[str] = []
    pos = 0
    while True:
        start = text.find(_CALL_OPEN, pos)
        if start < 0:
            rest.append(text[pos:])
            break
        rest.append(text[pos:start])
        end = text.find(_CALL_CLOSE, start + len(_CALL_OPEN))
        if end < 0:
            calls.append(ToolCall(name="", arguments={}, error="unclosed <tool_call> tag"))
            break
        calls.append(_call_from_json(text[start + len(_CALL_OPEN) : end].strip()))
        pos = end + len(_CALL_CLOSE)
    outside = "".join(rest)
    if _CALL_CLOSE in outside:  # a closing tag without its opening one
        calls.append(ToolCall(name="", arguments={}, error="</tool_call> without <tool_call>"))
        outside = outside.replace(_CALL_CLOSE, "")
    answers = find_answers(outside)
    content = ANSWER_RE.sub("", outside).strip()
    return ParsedAction(
        tool_calls=calls,
        answer=answers[-1] if answers else None,
        content=content,
        num_answers=len(answers),
    )


def _format_hermes_call(name: str, arguments: dict[str, Any]) -> str:
    return f"{_CALL_OPEN}{json.dumps({'name': name, 'arguments': arguments})}{_CALL_CLOSE}"


def compact_schema(tool: dict[str, Any]) -> str:
    """One tool schema as short JSON: the ``function`` part without its ``return`` entry."""
    fn = tool.get("function", tool)
    short = {k: fn[k] for k in ("name", "description", "parameters") if k in fn}
    return json.dumps(short, separators=(",", ":"))


@register_format("hermes")
class HermesFormat:
    """Hermes tool calls with the chat template rendering the schemas (``tools=``)."""

    name = "hermes"
    native_tools = True

    def system_prompt(self, tools: list[dict[str, Any]]) -> str:
        return ""  # the chat template renders the tools and the call syntax

    def parse(self, text: str) -> ParsedAction:
        return parse_hermes(text)

    def tool_result_message(self, name: str, content: str) -> Message:
        return {"role": "tool", "name": name, "content": content}

    def format_call(self, name: str, arguments: dict[str, Any]) -> str:
        return _format_hermes_call(name, arguments)

    def format_answer(self, answer: Any) -> str:
        return format_answer(answer)


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
        return _format_hermes_call(name, arguments)

    def format_answer(self, answer: Any) -> str:
        return format_answer(answer)
