"""The interface every tool-call format implements, its registry, and what formats share.

A format is chosen by a *spec* string: a registered name, optionally followed by options, e.g.
``"hermes"``, ``"qwen3+lenient"`` (``get_format(spec)``). Parsing never raises: a malformed call
becomes a :class:`~rl.types.ToolCall` whose ``error`` says what is wrong (the env answers it with
an error observation and the episode goes on); :func:`error_kind` names the kind of failure for
the ``episode/parse_errors/<kind>`` metric.

Options (``+``-separated after the name):

- ``lenient``: when the strict syntax finds no call, also accept what small models actually write
  instead: a JSON object (or a list of them) with a string ``"name"`` and an object
  ``"arguments"`` (or ``"parameters"``), bare in the text or inside a ```` ```json ```` fence.
  Those calls carry ``ToolCall.lenient = True`` and are counted (``episode/lenient_calls``), so a
  run shows how much of its tool use the strict format would have missed. Text that does not
  look like a call stays text (lenient parsing adds calls, never errors).

What is reused, and why not more: the syntaxes follow vLLM's tool-parser registry
(``vllm/tool_parsers``: hermes, qwen3coder, llama3_json, pythonic, mistral) and the families' own
chat templates (tests parse what TRL's packaged originals render), but vLLM is not imported. Its
parsers need a tokenizer object and vLLM's request / protocol classes, which import torch and
the vLLM engine package: ``import vllm.tool_parsers.hermes_tool_parser`` had not finished after
300 s wall (3 s user CPU) on the loaded shared 2-core machine, where ``import envs.formats`` took
9.5 s wall / 1.8 s user (mostly torch via rl.types). They also return a malformed call as plain
text (``tools_called=False``), where the trainer needs an error observation and a counted kind
per bad call. transformers' ``parse_response`` needs a response schema the model's tokenizer
rarely ships. The parsing itself is the standard library: ``json``, ``ast`` (pythonic, never
``eval``), ``re``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

from rl.registry import Registry
from rl.types import Message, ToolCall

ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


@dataclass
class ParsedAction:
    """One model turn, split into tool calls, a final answer and the remaining text."""

    tool_calls: list[ToolCall] = field(default_factory=list)  # malformed ones carry .error
    answer: str | None = None  # stripped content of the last <answer>...</answer>, if any
    content: str = ""  # text outside the tags (and outside reasoning), stripped
    num_answers: int = 0  # how many complete <answer> tags the turn holds
    reasoning: str = ""  # <think> text of formats with reasoning (qwen3), stripped


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


class NativeFormat:
    """What the native formats share (``native_tools``: the chat template renders the tool
    schemas and the call syntax from ``tools=``): no system-prompt text of their own, a tool
    result is a ``tool`` message, a final answer is :func:`format_answer`'s. A format names
    itself and writes ``parse`` and ``format_call``; it overrides what its family does otherwise
    (Mistral's tool-call ids, harmony's final channel)."""

    native_tools = True

    def system_prompt(self, tools: list[dict[str, Any]]) -> str:
        return ""  # the chat template renders the tools and the call syntax

    def tool_result_message(self, name: str, content: str) -> Message:
        return {"role": "tool", "name": name, "content": content}

    def format_answer(self, answer: Any) -> str:
        return format_answer(answer)


def finish(calls: list[ToolCall], outside: str, reasoning: str = "") -> ParsedAction:
    """The :class:`ParsedAction` of a turn whose calls are parsed and ``outside`` is the rest."""
    answers = find_answers(outside)
    return ParsedAction(
        tool_calls=calls,
        answer=answers[-1] if answers else None,
        content=ANSWER_RE.sub("", outside).strip(),
        num_answers=len(answers),
        reasoning=reasoning,
    )


# ---------------------------------------------------------------------------------------------
# Registry

_FORMATS: Registry[Callable[[], ToolCallFormat]] = Registry("tool-call format")
FORMAT_OPTIONS = ("lenient",)


def register_format(
    name: str,
) -> Callable[[Callable[[], ToolCallFormat]], Callable[[], ToolCallFormat]]:
    """Class decorator: ``@register_format("hermes")``. Duplicate names are refused."""
    return _FORMATS.register(name)


def split_spec(spec: str) -> tuple[str, set[str]]:
    """``"qwen3+lenient"`` -> ``("qwen3", {"lenient"})``; unknown options are refused."""
    name, *opts = spec.split("+")
    bad = [o for o in opts if o not in FORMAT_OPTIONS]
    if bad:
        raise ValueError(
            f"tool-call format {spec!r}: unknown option(s) {bad} (valid: {list(FORMAT_OPTIONS)})"
        )
    return name, set(opts)


def get_format(spec: str, *, lenient: bool = False) -> ToolCallFormat:
    """The format named by ``spec`` (``name[+lenient]``); ``lenient=True`` is the same option."""
    name, opts = split_spec(spec)
    fmt = _FORMATS.get(name)()
    if lenient or "lenient" in opts:
        return LenientFormat(fmt)
    return fmt


def registered_formats() -> list[str]:
    return sorted(_FORMATS.names())


# ---------------------------------------------------------------------------------------------
# Shared pieces


def compact_schema(tool: dict[str, Any]) -> str:
    """One tool schema as short JSON: the ``function`` part without its ``return`` entry."""
    fn = tool.get("function", tool)
    short = {k: fn[k] for k in ("name", "description", "parameters") if k in fn}
    return json.dumps(short, separators=(",", ":"))


def bad_call(error: str, name: str = "") -> ToolCall:
    return ToolCall(name=name, arguments={}, error=error)


def call_from_object(obj: Any, arg_keys: tuple[str, ...] = ("arguments",)) -> ToolCall:
    """A decoded JSON call ``{"name": ..., <arg key>: {...}}``; problems become ``.error``.

    ``arg_keys``: the argument field names the family uses, first is the documented one (Llama:
    ``"parameters"``). A tool without parameters may omit the field.
    """
    if not isinstance(obj, dict):
        return bad_call(f'tool call must be a JSON object {{"name": ..., "{arg_keys[0]}": ...}}')
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        return bad_call('tool call has no "name"')
    key = next((k for k in arg_keys if k in obj), arg_keys[0])
    args = obj.get(key, {})
    if not isinstance(args, dict):
        return bad_call(f'"{key}" must be a JSON object', name)
    return ToolCall(name=name, arguments=args)


THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def split_reasoning(text: str) -> tuple[str, str]:
    """``(reasoning, rest)``: ``<think>...</think>`` blocks out of ``text``.

    A ``</think>`` without its opening tag closes reasoning that began in the generation prompt
    (templates that end the prompt with ``<think>``); an unclosed ``<think>`` (turn cut by the
    token limit) makes the rest of the turn reasoning. Calls inside reasoning are not calls.
    """
    thoughts: list[str] = []
    head, sep, tail = text.partition(THINK_CLOSE)
    if sep and THINK_OPEN not in head:
        thoughts.append(head)
        text = tail
    out: list[str] = []
    pos = 0
    while True:
        start = text.find(THINK_OPEN, pos)
        if start < 0:
            out.append(text[pos:])
            break
        out.append(text[pos:start])
        end = text.find(THINK_CLOSE, start)
        if end < 0:
            thoughts.append(text[start + len(THINK_OPEN) :])
            break
        thoughts.append(text[start + len(THINK_OPEN) : end])
        pos = end + len(THINK_CLOSE)
    return "\n".join(t.strip() for t in thoughts).strip(), "".join(out)


# ---------------------------------------------------------------------------------------------
# Failure kinds (metrics). Parse kinds come from the formats here; call kinds from ToolEnv.

_KINDS: tuple[tuple[str, str], ...] = (
    ("invalid JSON", "invalid_json"),
    ("invalid Python", "invalid_python"),
    ("tool call must be", "not_an_object"),
    ('has no "name"', "no_name"),
    ("unclosed", "unclosed_tag"),
    ("without <", "stray_tag"),
    ('" must be a JSON object', "bad_arguments"),
    ("positional argument", "bad_arguments"),
    ("not a literal", "bad_arguments"),
    ("duplicate parameter", "bad_arguments"),
    # below: not parse failures but what running / validating a parsed call found
    ("not run", "not_run"),
    ("unknown tool", "unknown_tool"),
    ("timed out", "timeout"),
    ("missing required argument", "invalid_arguments"),
    ("unknown argument", "invalid_arguments"),
    ("arguments must be", "invalid_arguments"),
    (" must be ", "invalid_arguments"),
    (" failed: ", "tool_crashed"),
)
PARSE_ERROR_KINDS = frozenset(
    {"invalid_json", "invalid_python", "not_an_object", "no_name", "unclosed_tag", "stray_tag",
     "bad_arguments"}
)


def error_kind(error: str) -> str:
    """A short name for a failed call's ``error`` (``"tool_error"`` when none matches: the tool
    itself refused the input, e.g. division by zero). ``kind in PARSE_ERROR_KINDS`` tells a
    malformed call from a well-formed one that failed."""
    return next((kind for part, kind in _KINDS if part in error), "tool_error")


# ---------------------------------------------------------------------------------------------
# Lenient parsing

_FENCE_RE = re.compile(r"```[ \t]*(?:json|JSON|tool_call|tool_code)?[ \t]*\n?(.*?)```", re.DOTALL)
_ARG_KEYS = ("arguments", "parameters")


def _lenient_call(obj: Any) -> ToolCall | None:
    """A call from a decoded object that has the right keys, else None (it is just JSON)."""
    if not (isinstance(obj, dict) and isinstance(obj.get("name"), str) and obj["name"].strip()):
        return None
    args = next((obj[k] for k in _ARG_KEYS if k in obj), None)
    if isinstance(args, str):  # OpenAI style: arguments as a JSON string
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    if not isinstance(args, dict) or set(obj) - {"name", *_ARG_KEYS, "type", "id"}:
        return None
    return ToolCall(name=obj["name"], arguments=args, lenient=True)


def _calls_of(obj: Any) -> list[ToolCall] | None:
    objs = obj if isinstance(obj, list) else [obj]
    calls = [_lenient_call(o) for o in objs]
    if not calls or any(c is None for c in calls):
        return None
    return [c for c in calls if c is not None]


def lenient_calls(text: str) -> tuple[list[ToolCall], str]:
    """Calls written as fenced or bare JSON objects with the right keys, and the rest of text."""
    calls: list[ToolCall] = []

    def fenced(m: re.Match[str]) -> str:
        try:
            found = _calls_of(json.loads(m.group(1)))
        except json.JSONDecodeError:
            found = None
        if found is None:
            return m.group(0)
        calls.extend(found)
        return ""

    text = _FENCE_RE.sub(fenced, text)
    decoder = json.JSONDecoder()
    rest: list[str] = []
    pos = 0
    while True:
        start = min((i for i in (text.find("{", pos), text.find("[", pos)) if i >= 0), default=-1)
        if start < 0:
            rest.append(text[pos:])
            break
        try:
            obj, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            obj, end = None, start + 1
        found = _calls_of(obj) if obj is not None else None
        rest.append(text[pos:start] if found else text[pos:end])
        calls.extend(found or [])
        pos = end
    return calls, "".join(rest)


class LenientFormat:
    """``inner`` plus lenient calls when the strict syntax finds none (see the module doc)."""

    def __init__(self, inner: ToolCallFormat) -> None:
        self.inner = inner
        self.name = f"{inner.name}+lenient"
        self.native_tools = inner.native_tools
        self.lenient = True

    def __getattr__(self, attr: str) -> Any:  # format-specific extras (e.g. with_tools)
        if attr.startswith("__") or attr == "inner":  # copy / pickle probe before __init__
            raise AttributeError(attr)
        value = getattr(self.inner, attr)
        if attr == "with_tools":
            return lambda tools: LenientFormat(value(tools))
        return value

    def system_prompt(self, tools: list[dict[str, Any]]) -> str:
        return self.inner.system_prompt(tools)

    def parse(self, text: str) -> ParsedAction:
        p = self.inner.parse(text)
        if p.tool_calls:
            return p
        calls, rest = lenient_calls(p.content)
        return replace(p, tool_calls=calls, content=rest.strip()) if calls else p

    def tool_result_message(self, name: str, content: str) -> Message:
        return self.inner.tool_result_message(name, content)

    def format_call(self, name: str, arguments: dict[str, Any]) -> str:
        return self.inner.format_call(name, arguments)  # demonstrations teach the strict syntax

    def format_answer(self, answer: Any) -> str:
        return self.inner.format_answer(answer)
