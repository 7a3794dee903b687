"""The formats against real chat templates of the families (the originals TRL ships as package
data): ``auto`` picks the right format, and each format parses the calls the template itself
renders for an assistant message with ``tool_calls``. Skipped where TRL is not installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from envs.formats import detect_format, get_format

_spec = importlib.util.find_spec("trl")  # the folder only: importing trl is slow
TEMPLATES = (Path(next(iter(_spec.submodule_search_locations or []))) / "chat_templates"
             if _spec else None)
pytestmark = pytest.mark.skipif(
    TEMPLATES is None or not TEMPLATES.is_dir(), reason="trl's chat_templates not installed"
)

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather.",
     "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                     "days": {"type": "integer"}}}}},
    {"type": "function", "function": {"name": "calc", "description": "Calculator.",
     "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}}}},
]
CALLS = [("get_weather", {"city": "Paris", "days": 3}), ("calc", {"expression": "1+2"})]
QUESTION = "USER-QUESTION-7"


def _template(name: str) -> str:
    return (TEMPLATES / f"{name}.jinja").read_text()  # type: ignore[operator]


@pytest.mark.parametrize(
    "template, expected",
    [("qwen2_5", "hermes"), ("qwen3", "qwen3"), ("qwen3_instruct_2507", "hermes"),
     ("qwen3_6", "qwen3-coder"), ("qwen3_5_think", "qwen3-coder"),
     ("nemotron_3_nano", "qwen3-coder"), ("llama3_1", "llama3-json"),
     ("llama3_2", "llama3-json"), ("lfm2", "pythonic"), ("lfm2_2_5", "pythonic"),
     ("llama3", "hermes-prompt"), ("smolvlm", "hermes-prompt"), ("gptoss", "harmony"),
     ("glm4moe", "hermes-prompt")],
)
def test_auto_on_real_templates(template: str, expected: str) -> None:
    name, reason = detect_format(_template(template))
    assert name == expected, reason
    if template == "glm4moe":  # recognised, not implemented: it says so
        assert "not implemented" in reason


@pytest.mark.parametrize(
    "template, n_calls",
    [("qwen2_5", 2), ("qwen3", 2), ("qwen3_instruct_2507", 2), ("qwen3_6", 2),
     ("qwen3_5_think", 2), ("nemotron_3_nano", 2), ("llama3_1", 1), ("llama3_2", 1),
     ("lfm2_2_5", 2)],
)
def test_format_parses_what_the_template_renders(tokenizer, template: str, n_calls: int) -> None:
    text = _template(template)
    fmt = get_format(detect_format(text)[0])
    if hasattr(fmt, "with_tools"):
        fmt = fmt.with_tools(TOOLS)
    calls = CALLS[:n_calls]
    messages = [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": n, "arguments": a}} for n, a in calls]},
    ]
    rendered = tokenizer.apply_chat_template(messages, tools=TOOLS, chat_template=text,
                                             tokenize=False)
    prompt = tokenizer.apply_chat_template(messages[:1], tools=TOOLS, chat_template=text,
                                           tokenize=False, add_generation_prompt=True)
    # the model's turn: after the generation prompt (or, where the template renders that prompt
    # differently in history, after the question — past the tool prompt's example call)
    turn = rendered[len(prompt):] if rendered.startswith(prompt) else \
        rendered[rendered.rindex(QUESTION) + len(QUESTION):]
    parsed = fmt.parse(turn)
    assert [(c.name, c.arguments, c.error) for c in parsed.tool_calls] == [
        (n, a, None) for n, a in calls]
