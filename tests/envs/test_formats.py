"""Tool-call formats: parsing, rendering, and how every malformed call becomes an error
observation through ToolEnv while the episode goes on."""

from __future__ import annotations

import asyncio
import json

import pytest

from envs.base import ToolEnv
from envs.formats import (
    ParsedAction,
    ToolCallFormat,
    find_answers,
    get_format,
    parse_hermes,
    registered_formats,
)
from envs.tools.calculator import calculator


def _call(name: str, **args: object) -> str:
    return f"<tool_call>{json.dumps({'name': name, 'arguments': args})}</tool_call>"


def test_registry() -> None:
    assert {"hermes", "hermes-prompt"} <= set(registered_formats())
    for name in registered_formats():
        assert isinstance(get_format(name), ToolCallFormat)
    with pytest.raises(KeyError, match="valid names: .*hermes"):
        get_format("nope")


def test_several_calls_answer_and_content() -> None:
    text = f"Let me compute. {_call('calculator', expression='1+2')}\n{_call('calculator', expression='3*4')} done"
    p = parse_hermes(text)
    assert [(c.name, c.arguments, c.error) for c in p.tool_calls] == [
        ("calculator", {"expression": "1+2"}, None),
        ("calculator", {"expression": "3*4"}, None),
    ]
    assert p.answer is None and p.num_answers == 0
    assert p.content == "Let me compute. \n done".strip()


def test_answer_extraction() -> None:
    p = parse_hermes("So the total is <answer> 42 </answer>.")
    assert p == ParsedAction(tool_calls=[], answer="42", content="So the total is .", num_answers=1)
    p = parse_hermes("<answer>1</answer> no wait <answer>2</answer>")
    assert p.answer == "2" and p.num_answers == 2  # the last one counts; format reward sees 2
    assert parse_hermes("<answer>7").answer is None  # unclosed: no answer
    assert find_answers("<answer>a\nb</answer><answer></answer>") == ["a\nb", ""]


@pytest.mark.parametrize(
    "body, error",
    [
        ("{not json}", "invalid JSON"),
        ('{"name": "calculator", "arguments": {"expression": "1"}', "invalid JSON"),
        ('["calculator"]', "JSON object"),
        ('{"arguments": {}}', 'no "name"'),
        ('{"name": "", "arguments": {}}', 'no "name"'),
        ('{"name": "calculator", "arguments": "1+2"}', '"arguments" must be a JSON object'),
        ('{"name": "calculator", "arguments": [1]}', '"arguments" must be a JSON object'),
    ],
)
def test_malformed_calls_carry_errors(body: str, error: str) -> None:
    (call,) = parse_hermes(f"<tool_call>{body}</tool_call>").tool_calls
    assert call.error is not None and error in call.error


def test_unclosed_and_stray_tags() -> None:
    p = parse_hermes(f"{_call('calculator', expression='1')} <tool_call>" + '{"name": "calc')
    assert [c.error for c in p.tool_calls] == [None, "unclosed <tool_call> tag"]
    p = parse_hermes("oops </tool_call>")
    assert [c.error for c in p.tool_calls] == ["</tool_call> without <tool_call>"]
    assert p.content == "oops"


def test_arguments_may_be_omitted() -> None:
    (call,) = parse_hermes('<tool_call>{"name": "now"}</tool_call>').tool_calls
    assert call.name == "now" and call.arguments == {} and call.error is None


@pytest.mark.parametrize("name", ["hermes", "hermes-prompt"])
def test_format_call_round_trip(name: str) -> None:
    fmt = get_format(name)
    text = fmt.format_call("calculator", {"expression": "(2+3)*4"}) + fmt.format_answer(20)
    p = fmt.parse(text)
    assert [(c.name, c.arguments, c.error) for c in p.tool_calls] == [
        ("calculator", {"expression": "(2+3)*4"}, None)
    ]
    assert p.answer == "20" and p.content == ""


def test_prompts_and_result_messages() -> None:
    tools = ToolEnv([calculator]).tools
    native, prompted = get_format("hermes"), get_format("hermes-prompt")
    assert native.native_tools and not prompted.native_tools
    assert native.system_prompt(tools) == ""
    prompt = prompted.system_prompt(tools)
    assert "<tools>" in prompt and "</tools>" in prompt and "<tool_call>" in prompt
    schema = json.loads(prompt.split("<tools>\n")[1].split("\n</tools>")[0])
    assert schema["name"] == "calculator" and "expression" in schema["parameters"]["properties"]
    assert prompted.system_prompt([]) == ""
    assert native.tool_result_message("calculator", "5") == {
        "role": "tool",
        "name": "calculator",
        "content": "5",
    }
    assert prompted.tool_result_message("calculator", "5")["content"] == (
        "<tool_response>5</tool_response>"
    )


# ---- through the env: every bad call is an "Error: ..." observation and the episode goes on


@pytest.mark.parametrize(
    "action, error_part",
    [
        ("<tool_call>{bad json</tool_call>", "invalid JSON"),
        ("<tool_call>" + '{"name": "calculator", "arguments": {"expression": "1+', "unclosed"),
        (_call("search", query="x"), "unknown tool 'search'"),
        (_call("calculator", expression=12), "must be string, got integer"),
        (_call("calculator"), "missing required argument"),
        (_call("calculator", expression="1", base=10), "unknown argument"),
        (_call("calculator", expression="__import__('os')"), "unsupported syntax"),
        (_call("calculator", expression="1/0"), "division by zero"),
    ],
)
def test_errors_become_observations(action: str, error_part: str) -> None:
    env = ToolEnv([calculator])
    res = asyncio.run(env.step("Thinking... " + action))
    assert not res.terminated and not res.truncated and res.reward == 0.0
    assert len(res.messages) == 1
    content = res.messages[0]["content"]
    assert content.startswith("<tool_response>Error: ") and error_part in content
    assert res.info["tool_errors"] == 1 and res.info["final_answer"] is None
    assert error_part in (res.info["tool_calls"][0].error or "")


def test_mixed_good_and_bad_calls_in_one_turn() -> None:
    env = ToolEnv([calculator], "hermes")
    action = (
        _call("calculator", expression="6*7")
        + _call("nope")
        + _call("calculator", expression="2**5")
    )
    res = asyncio.run(env.step(action))
    assert [m["content"] for m in res.messages] == [
        "42",
        "Error: unknown tool 'nope'; available: ['calculator']",
        "32",
    ]
    assert res.info["tool_errors"] == 1 and not res.terminated


def test_answer_and_no_call_terminate() -> None:
    env = ToolEnv([calculator])
    res = asyncio.run(env.step("<answer>42</answer>"))
    assert res.terminated and res.messages == [] and res.info["final_answer"] == "42"
    assert res.info["tool_errors"] == 0
    # Calls next to an answer are not run (the answer could not have used them): errors.
    res = asyncio.run(env.step(_call("calculator", expression="1+1") + "<answer>2</answer>"))
    assert res.terminated and res.messages == [] and res.info["tool_errors"] == 1
    assert "not run" in (res.info["tool_calls"][0].error or "")
    # Neither a call nor an answer: the episode ends without an answer.
    res = asyncio.run(env.step("I think it is 5."))
    assert res.terminated and res.info["final_answer"] is None and res.info["tool_calls"] == []
