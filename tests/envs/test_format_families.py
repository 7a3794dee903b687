"""Tool-call formats of the model families: round trips, each family's documented syntax,
malformed calls as counted error kinds, the lenient option, and auto-detection."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from envs.base import ToolEnv
from envs.formats import (
    PARSE_ERROR_KINDS,
    ToolCallFormat,
    detect_format,
    error_kind,
    get_format,
    registered_formats,
    resolve_format,
)
from envs.tools.calculator import calculator

FAMILIES = ["hermes", "hermes-prompt", "qwen3", "qwen3-coder", "llama3-json", "pythonic",
            "mistral"]
ARGS: dict[str, Any] = {"expression": "(2+3)*4 < 30", "n": 3, "x": -1.5, "flag": True,
                        "xs": [1, "a]b", None], "obj": {"k": "v\nw"}}


def _calls(p) -> list[tuple[str, dict, str | None]]:
    return [(c.name, c.arguments, c.error) for c in p.tool_calls]


def test_every_family_is_registered_with_the_interface() -> None:
    assert set(FAMILIES) <= set(registered_formats())
    for name in registered_formats():
        fmt = get_format(name)
        assert isinstance(fmt, ToolCallFormat) and fmt.name == name
        assert fmt.native_tools == (not name.endswith("-prompt"))  # hermes-, harmony-prompt


@pytest.mark.parametrize("name", FAMILIES)
def test_format_call_parse_round_trip(name: str) -> None:
    fmt = get_format(name)
    p = fmt.parse(fmt.format_call("f", ARGS) + "\n" + fmt.format_answer(20))
    assert _calls(p) == [("f", ARGS, None)]
    assert p.answer == "20" and p.content == "" and not p.tool_calls[0].lenient
    assert _calls(fmt.parse(fmt.format_call("now", {}))) == [("now", {}, None)]


@pytest.mark.parametrize("name", FAMILIES)
def test_plain_text_is_not_a_call(name: str) -> None:
    p = get_format(name).parse("The sum is 5 [see above]. <answer>5</answer>")
    assert p.tool_calls == [] and p.answer == "5" and p.content == "The sum is 5 [see above]."


@pytest.mark.parametrize("name", FAMILIES)
def test_through_the_env_good_unknown_and_wrong_typed_calls(name: str) -> None:
    env = ToolEnv([calculator], name)
    fmt = env.format
    good = asyncio.run(env.step(fmt.format_call("calculator", {"expression": "6*7"})))
    assert [m["content"].replace("<tool_response>", "").replace("</tool_response>", "")
            for m in good.messages] == ["42"]
    assert good.info["tool_errors"] == 0 and not good.terminated
    cases = [({"expression": "1", "base": 10}, "unknown argument"), ({}, "missing required")]
    if name == "qwen3-coder":  # values are text typed by the schema: 12 is the string "12"
        res = asyncio.run(env.step(fmt.format_call("calculator", {"expression": 12})))
        assert res.info["tool_errors"] == 0 and res.messages[0]["content"] == "12"
    else:
        cases.append(({"expression": 12}, "must be string, got integer"))
    for args, part in cases:
        res = asyncio.run(env.step(fmt.format_call("calculator", args)))
        (call,) = res.info["tool_calls"]
        assert part in (call.error or "") and not res.terminated
        assert error_kind(call.error or "") == "invalid_arguments"
    res = asyncio.run(env.step(fmt.format_call("search", {"q": "x"})))
    assert "unknown tool 'search'" in res.messages[0]["content"]
    assert error_kind(res.info["tool_calls"][0].error) == "unknown_tool"


# ---- each family's own syntax, as its models write it


def test_qwen3_reasoning_is_not_parsed_for_calls() -> None:
    fmt = get_format("qwen3")
    call = '<tool_call>{"name": "a", "arguments": {"x": 1}}</tool_call>'
    p = fmt.parse(f"<think>maybe {call}? or <answer>9</answer></think>\n\n{call}")
    assert _calls(p) == [("a", {"x": 1}, None)] and p.answer is None
    assert p.reasoning.startswith("maybe <tool_call>")
    # the generation prompt opened <think>: only the closing tag is in the turn
    p = fmt.parse("thinking...\n</think>\n<answer>3</answer>")
    assert p.reasoning == "thinking..." and p.answer == "3" and p.content == ""
    # cut inside the reasoning by the token limit: no call, no answer
    p = fmt.parse(f"<think>I will {call}")
    assert p.tool_calls == [] and p.answer is None


def test_qwen3_coder_calls_types_and_errors() -> None:
    text = (
        "Let me check.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nSan Francisco\n"
        "</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>\n"
        "<tool_call>\n<function=run>\n<parameter=code>\nif a < b:\n    print('x')\n</parameter>"
        "\n</function>\n</tool_call>"
    )
    p = get_format("qwen3-coder").parse(text)
    assert _calls(p) == [("get_weather", {"city": "San Francisco", "days": 3}, None),
                         ("run", {"code": "if a < b:\n    print('x')"}, None)]
    assert p.content == "Let me check."
    # with the schemas bound, a string parameter keeps "12" and a number parameter converts
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object",
             "properties": {"zip": {"type": "string"}, "k": {"type": "number"},
                            "on": {"type": "boolean"}, "ids": {"type": "array"}}}}}]
    fmt = get_format("qwen3-coder").with_tools(tools)  # type: ignore[attr-defined]
    p = fmt.parse("<tool_call>\n<function=f>\n<parameter=zip>\n02139\n</parameter>\n"
                  "<parameter=k>\n2.5\n</parameter>\n<parameter=on>\nTrue\n</parameter>\n"
                  "<parameter=ids>\n[1, 2]\n</parameter>\n</function>\n</tool_call>")
    assert _calls(p) == [("f", {"zip": "02139", "k": 2.5, "on": True, "ids": [1, 2]}, None)]
    # the wrapper may be missing: still a call
    assert _calls(fmt.parse("<function=f>\n<parameter=zip>\n1\n</parameter>\n</function>")) == [
        ("f", {"zip": "1"}, None)]


def test_llama3_json_calls() -> None:
    fmt = get_format("llama3-json")
    p = fmt.parse('<|python_tag|>{"name": "a", "parameters": {"x": 1}}; '
                  '{"name": "b", "arguments": {"y": [2]}}')
    assert _calls(p) == [("a", {"x": 1}, None), ("b", {"y": [2]}, None)]
    p = fmt.parse('I will look it up.<|python_tag|>{"name": "a", "parameters": {}}')
    assert _calls(p) == [("a", {}, None)] and p.content == "I will look it up."
    # built-in tool syntax (brave_search.call(...)) is not a JSON call: an error, not text
    (c,) = fmt.parse('<|python_tag|>brave_search.call(query="x")').tool_calls
    assert error_kind(c.error or "") == "invalid_json"


def test_pythonic_calls_never_evaluated() -> None:
    fmt = get_format("pythonic")
    p = fmt.parse("[get_weather(city='Paris', days=3), lookup(q=\"a]b\", flags=[true, null],"
                  " opts={'k': (1, 2)})]")
    assert _calls(p) == [("get_weather", {"city": "Paris", "days": 3}, None),
                         ("lookup", {"q": "a]b", "flags": [True, None], "opts": {"k": [1, 2]}},
                          None)]
    p = fmt.parse("<|python_start|>[api.search(q='x')]<|python_end|>")
    assert _calls(p) == [("api.search", {"q": "x"}, None)]
    p = fmt.parse("[f(a=__import__('os').system('touch /tmp/pwned'))]")
    assert "is not a literal" in (p.tool_calls[0].error or "")
    assert fmt.parse("[1, 2] are the candidates").tool_calls == []


def test_mistral_both_spellings_and_tool_call_ids() -> None:
    fmt = get_format("mistral")
    p = fmt.parse('[TOOL_CALLS][{"name": "a", "arguments": {"x": 1}}, {"name": "b", '
                  '"arguments": {}}]')
    assert _calls(p) == [("a", {"x": 1}, None), ("b", {}, None)]
    p = fmt.parse('[TOOL_CALLS]a[ARGS]{"x": 1}[TOOL_CALLS]b[CALL_ID]abc123XYZ[ARGS]{}')
    assert _calls(p) == [("a", {"x": 1}, None), ("b", {}, None)]
    ids = [fmt.tool_result_message("a", "1")["tool_call_id"] for _ in range(3)]
    assert len(set(ids)) == 3 and all(len(i) == 9 and i.isalnum() for i in ids)


# ---- malformed calls: an error each, of a named kind


@pytest.mark.parametrize(
    "name, text, kind",
    [
        ("qwen3", '<tool_call>{"name": "a", "arguments": {</tool_call>', "invalid_json"),
        ("qwen3", "</tool_call>", "stray_tag"),
        ("qwen3-coder", "<tool_call>\n<function=f>\n<parameter=a>\n1\n</tool_call>",
         "unclosed_tag"),
        ("qwen3-coder", "<tool_call>\n<function=f>\n<parameter=a>\n1\n</parameter>\n"
         "<parameter=a>\n2\n</parameter>\n</function>\n</tool_call>", "bad_arguments"),
        ("qwen3-coder", "<tool_call>\n{}\n</tool_call>", "unclosed_tag"),
        ("qwen3-coder", "<tool_call>\n<function=>\n</function>\n</tool_call>", "no_name"),
        ("llama3-json", '{"name": "a", "parameters": {"x": }', "invalid_json"),
        ("llama3-json", '{"parameters": {}}', "no_name"),
        ("llama3-json", '{"name": "a", "parameters": [1]}', "bad_arguments"),
        ("llama3-json", '<|python_tag|>["a"]', "invalid_json"),
        ("pythonic", "[f(a=1), g(b=2", "invalid_python"),
        ("pythonic", "[f(1)]", "bad_arguments"),
        ("pythonic", "[f(a=g())]", "bad_arguments"),
        ("pythonic", "[f(a=1), 3]", "invalid_python"),
        ("pythonic", "[f(a=1)(b=2)]", "no_name"),
        ("mistral", "[TOOL_CALLS][{bad}]", "invalid_json"),
        ("mistral", '[TOOL_CALLS]["a"]', "not_an_object"),
        ("mistral", "[TOOL_CALLS]f", "unclosed_tag"),
        ("mistral", '[TOOL_CALLS]f[ARGS]"x"', "bad_arguments"),
    ],
)
def test_malformed_calls_are_errors_of_a_kind(name: str, text: str, kind: str) -> None:
    p = get_format(name).parse(text)
    errors = [c.error for c in p.tool_calls if c.error]
    assert errors, p
    assert error_kind(errors[-1]) == kind and kind in PARSE_ERROR_KINDS


@pytest.mark.parametrize("name", FAMILIES)
def test_malformed_call_through_env_is_an_error_observation(name: str) -> None:
    bad = {"hermes": "<tool_call>{oops</tool_call>", "hermes-prompt": "<tool_call>{oops",
           "qwen3": "<tool_call>{oops</tool_call>", "qwen3-coder": "<function=calculator>",
           "llama3-json": '{"name": "calculator", "parameters": {', "pythonic": "[calculator(",
           "mistral": "[TOOL_CALLS][{oops"}[name]
    res = asyncio.run(ToolEnv([calculator], name).step(bad))
    assert not res.terminated and res.info["tool_errors"] == 1
    assert "Error: " in res.messages[0]["content"]
    assert error_kind(res.info["tool_calls"][0].error) in PARSE_ERROR_KINDS


# ---- lenient


CALL = {"name": "calculator", "arguments": {"expression": "6*7"}}


@pytest.mark.parametrize(
    "text",
    [
        f"Sure.\n```json\n{json.dumps(CALL)}\n```",
        f"```\n[{json.dumps(CALL)}]\n```",
        f"I will call {json.dumps(CALL)} now",
        json.dumps({"name": "calculator", "parameters": {"expression": "6*7"}}),
        json.dumps({"name": "calculator", "arguments": json.dumps({"expression": "6*7"})}),
    ],
)
def test_lenient_accepts_fenced_and_bare_json(text: str) -> None:
    assert get_format("hermes").parse(text).tool_calls == []
    p = get_format("hermes+lenient").parse(text)
    assert _calls(p) == [("calculator", {"expression": "6*7"}, None)]
    assert p.tool_calls[0].lenient and "calculator" not in p.content


def test_lenient_leaves_other_json_and_strict_calls_alone() -> None:
    fmt = get_format("qwen3", lenient=True)
    assert fmt.name == "qwen3+lenient" and fmt.native_tools
    for text in ['The data is {"a": 1} and ```json\n{"name": 3}\n```', '{"name": "x", "y": 1}']:
        assert fmt.parse(text).tool_calls == []
    strict = '<tool_call>{"name": "a", "arguments": {}}</tool_call>' + json.dumps(CALL)
    assert [(c.name, c.lenient) for c in fmt.parse(strict).tool_calls] == [("a", False)]
    # JSON inside the reasoning is not a call either
    assert fmt.parse(f"<think>{json.dumps(CALL)}</think>no call").tool_calls == []
    with pytest.raises(ValueError, match="unknown option.*'strict'"):
        get_format("hermes+strict")


def test_lenient_call_runs_in_the_env() -> None:
    env = ToolEnv([calculator], "hermes-prompt+lenient")
    res = asyncio.run(env.step(f"```json\n{json.dumps(CALL)}\n```"))
    assert res.messages[0]["content"] == "<tool_response>42</tool_response>"
    assert res.info["tool_calls"][0].lenient and res.info["tool_errors"] == 0


# ---- auto


TEMPLATES = {
    "qwen3-coder": "{% for t in tools %}...{% endfor %}<tool_call>\n<function=example>"
                   "\n<parameter=p>\nv\n</parameter>\n</function>\n</tool_call>",
    "mistral": "{% if tools %}[AVAILABLE_TOOLS]{{ tools|tojson }}[/AVAILABLE_TOOLS]{% endif %}"
               "{% if m.tool_calls %}[TOOL_CALLS]{{ m.tool_calls|tojson }}{% endif %}",
    "qwen3": "<tools>{{ tools }}</tools><tool_call>{...}</tool_call>{% if reasoning_content %}"
             "<think>\n{{ reasoning_content }}\n</think>{% endif %}",
    "hermes": "{% if tools %}<tools>{{ tools }}</tools> return <tool_call>{...}</tool_call>"
              "{% endif %}",
    "pythonic": "{% if tools %}respond with a python list: [func_name1(params_name1="
                "params_value1), func_name2(params)]{% endif %}",
    "llama3-json": "{% if builtin_tools %}<|python_tag|>{% endif %}{% if tools %}Given the "
                   "following functions, please respond with a JSON for a function call{% endif %}",
}


@pytest.mark.parametrize("expected", sorted(TEMPLATES))
def test_auto_picks_the_family_from_the_chat_template(expected: str) -> None:
    name, reason = detect_format(TEMPLATES[expected])
    assert name == expected and reason


def test_auto_without_tool_support_and_from_a_tokenizer(tokenizer) -> None:
    name, reason = detect_format(tokenizer)  # SmolLM2's ChatML: no tools
    assert name == "hermes-prompt" and "no tool support" in reason
    assert detect_format(None)[0] == "hermes-prompt"
    assert detect_format("{% for m in messages %}{{ m.content }}{% endfor %}")[0] == \
        "hermes-prompt"
    harmony = "<|start|>assistant<|channel|>commentary to=functions.f<|call|>{% if tools %}"
    assert detect_format(harmony)[0] == "harmony"  # tests/envs/test_format_harmony.py
    # several named templates: the tool_use one
    assert detect_format({"default": "x", "tool_use": TEMPLATES["hermes"]})[0] == "hermes"
    assert resolve_format("auto+lenient", TEMPLATES["qwen3"])[0] == "qwen3+lenient"
    assert resolve_format("mistral", None) == ("mistral", "")


@pytest.mark.parametrize("spec", ["hermes+lenient", "mistral", "qwen3-coder+lenient"])
def test_formats_copy_and_pickle(spec: str) -> None:
    import copy
    import pickle

    fmt = ToolEnv([calculator], spec).format  # bound to the tools where the format needs them
    for clone in (copy.deepcopy(fmt), pickle.loads(pickle.dumps(fmt))):
        assert clone.name == fmt.name
        text = fmt.format_call("calculator", {"expression": "12"})
        assert _calls(clone.parse(text)) == [("calculator", {"expression": "12"}, None)]
