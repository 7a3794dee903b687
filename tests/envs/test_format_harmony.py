"""The gpt-oss harmony formats: round trips, hand-written turns in the documented syntax,
malformed calls as counted error kinds, auto-detection, episodes through the agent loop with a
harmony template that drops the analysis of earlier turns and with gpt-oss's shipped template
(structured turns), and SFT demonstrations replayed token-exactly (no EOS after ``<|call|>``)."""

from __future__ import annotations

import asyncio
import copy
import importlib.util
import json
import pickle
import sys
from pathlib import Path
from typing import Any

import pytest

import envs.tasks  # noqa: F401  (registers the task envs)
from envs.base import StepResult, ToolEnv, make_env, registered_envs
from envs.checker import check_env
from envs.formats import (
    PARSE_ERROR_KINDS,
    ToolCallFormat,
    detect_format,
    error_kind,
    get_format,
    registered_formats,
    resolve_format,
)
from envs.formats import harmony as harmony_mod
from envs.tools.calculator import calculator
from rl.rollout.agent_loop import AgentLoop, RolloutConfig, trajectory_stats
from rl.rollout.engines.base import GenerationOutput
from rl.types import Task

try:
    harmony_mod._harmony()
    _missing = ""
except ImportError as e:  # oss-harmony not installed
    _missing = str(e)
pytestmark = pytest.mark.skipif(bool(_missing), reason=_missing)

NAMES = ["harmony", "harmony-prompt"]
ARGS: dict[str, Any] = {"expression": "(2+3)*4 < 30", "n": 3, "x": -1.5, "flag": True,
                        "xs": [1, "a]b", None], "obj": {"k": "v\nw <|end|>"}}
A = "<|start|>assistant"  # how the second and later messages of a turn begin


def _calls(p) -> list[tuple[str, dict, str | None]]:
    return [(c.name, c.arguments, c.error) for c in p.tool_calls]


def _call(name: str, body: str, end: str = "<|call|>") -> str:
    return f"<|channel|>commentary to=functions.{name} <|constrain|>json<|message|>{body}{end}"


def test_registered_with_the_interface() -> None:
    assert set(NAMES) <= set(registered_formats())
    for name in NAMES:
        fmt = get_format(name)
        assert isinstance(fmt, ToolCallFormat) and fmt.name == name
        assert fmt.native_tools == (name == "harmony")
        assert "<|call|>" in fmt.special_tokens  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", NAMES)
def test_format_call_parse_round_trip(name: str) -> None:
    fmt = get_format(name)
    text = fmt.format_call("f", ARGS)
    assert text == ("<|channel|>commentary to=functions.f <|constrain|>json<|message|>"
                    + json.dumps(ARGS).replace("<|", "<\\u007c") + "<|call|>")
    p = fmt.parse(text + "\n" + fmt.format_answer(20))  # as demonstrations join two messages
    assert _calls(p) == [("f", ARGS, None)]
    assert p.answer == "20" and p.content == "" and not p.tool_calls[0].lenient
    assert _calls(fmt.parse(fmt.format_call("now", {}))) == [("now", {}, None)]
    assert fmt.format_answer(7) == "<|channel|>final<|message|><answer>7</answer>"


def test_plain_text_is_not_a_call() -> None:
    p = get_format("harmony").parse("The sum is 5 [see above]. <answer>5</answer>")
    assert p.tool_calls == [] and p.answer == "5" and p.content == "The sum is 5 [see above]."


# ---- turns as gpt-oss writes them


def test_one_call_after_analysis() -> None:
    p = get_format("harmony").parse(
        "<|channel|>analysis<|message|>Need the weather; <answer>guess</answer>?<|end|>"
        + A + _call("get_weather", '{"city": "San Francisco", "days": 3}'))
    assert _calls(p) == [("get_weather", {"city": "San Francisco", "days": 3}, None)]
    # the analysis is reasoning: an answer written there is not the answer
    assert p.reasoning == "Need the weather; <answer>guess</answer>?"
    assert p.answer is None and p.content == ""


def test_two_calls_and_a_preamble_in_one_turn() -> None:
    p = get_format("harmony").parse(
        "<|channel|>commentary<|message|>Checking both cities.<|end|>"
        + A + _call("get_weather", '{"city": "Paris"}')
        + A + _call("get_weather", '{"city": "Rome"}'))
    assert _calls(p) == [("get_weather", {"city": "Paris"}, None),
                         ("get_weather", {"city": "Rome"}, None)]
    assert p.content == "Checking both cities."  # a preamble is visible content


def test_call_then_final_in_one_turn() -> None:
    p = get_format("harmony").parse(
        _call("calc", '{"expression": "1+2"}') + A + "<|channel|>final<|message|>It is "
        "<answer>3</answer>.<|return|>")
    assert _calls(p) == [("calc", {"expression": "1+2"}, None)]
    assert p.answer == "3" and p.content == "It is ."


def test_recipient_in_the_role_part_of_the_header() -> None:
    # how gpt-oss's own template renders a call in history: recipient before the channel, and
    # the content type without <|constrain|>
    p = get_format("harmony").parse(
        ' to=functions.calc<|channel|>commentary json<|message|>{"expression": "2"}<|call|>')
    assert _calls(p) == [("calc", {"expression": "2"}, None)]


def test_call_cut_at_the_stop_token_boundary_is_still_a_call() -> None:
    fmt = get_format("harmony")
    # the engine ended the text at <|call|> (or the loop stripped it as the EOS)
    p = fmt.parse("<|channel|>analysis<|message|>go<|end|>" + A
                  + _call("calc", '{"expression": "6*7"}', end=""))
    assert _calls(p) == [("calc", {"expression": "6*7"}, None)] and p.reasoning == "go"
    # cut by the token limit inside the JSON: an error, not a call with half its arguments
    (c,) = fmt.parse(_call("calc", '{"expression": "6*', end="")).tool_calls
    assert error_kind(c.error or "") == "invalid_json" and c.name == "calc"
    # cut inside the reasoning: no call, no answer
    p = fmt.parse("<|channel|>analysis<|message|>I will call calc and answer <answer>4")
    assert p.tool_calls == [] and p.answer is None and p.reasoning.startswith("I will")


def test_final_answer_with_reasoning() -> None:
    p = get_format("harmony").parse(
        "<|channel|>analysis<|message|>2+2 is 4.<|end|>" + A
        + "<|channel|>final<|message|><answer>4</answer>")
    assert p.tool_calls == [] and p.answer == "4" and p.reasoning == "2+2 is 4."
    # a turn that writes out its own "<|start|>assistant" (a prompt without it) reads the same
    assert get_format("harmony").parse(A + FINAL + "<answer>4</answer><|return|>").answer == "4"


def test_a_tool_reply_written_by_the_model_is_dropped() -> None:
    p = get_format("harmony").parse(
        _call("calc", "{}") + "<|start|>functions.calc to=assistant<|channel|>commentary"
        "<|message|><answer>99</answer><|end|>")
    assert _calls(p) == [("calc", {}, None)] and p.answer is None


@pytest.mark.parametrize(
    "text, kind",
    [
        (_call("calc", '{"expression": }'), "invalid_json"),
        (_call("calc", '["6*7"]'), "bad_arguments"),
        (_call("calc", '"6*7"'), "bad_arguments"),
        ("<|channel|>commentary to=functions.calc <|constrain|>json", "unclosed_tag"),
        ("<|channel|>commentary to=python<|message|>print(1)<|call|>", "unknown_tool"),
        ("<|channel|>commentary to=functions<|message|>{}<|call|>", "unknown_tool"),
    ],
)
def test_malformed_calls_are_errors_of_a_kind(text: str, kind: str) -> None:
    p = get_format("harmony").parse(text)
    errors = [c.error for c in p.tool_calls if c.error]
    assert len(errors) == 1, p
    assert error_kind(errors[0]) == kind
    assert (kind in PARSE_ERROR_KINDS) == (kind != "unknown_tool")


# ---- through the env: observations for good, unknown, wrong-typed and malformed calls


@pytest.mark.parametrize("name", NAMES)
def test_through_the_env(name: str) -> None:
    env = ToolEnv([calculator], name)
    fmt = env.format
    good = asyncio.run(env.step(fmt.format_call("calculator", {"expression": "6*7"})))
    assert good.messages == [{"role": "tool", "name": "calculator", "content": "42"}]
    assert good.info["tool_errors"] == 0 and not good.terminated
    for args, part in [({"expression": "1", "base": 10}, "unknown argument"),
                       ({}, "missing required"), ({"expression": 12}, "must be string")]:
        res = asyncio.run(env.step(fmt.format_call("calculator", args)))
        (call,) = res.info["tool_calls"]
        assert part in (call.error or "") and not res.terminated
        assert error_kind(call.error or "") == "invalid_arguments"
    res = asyncio.run(env.step(fmt.format_call("search", {"q": "x"})))
    assert "unknown tool 'search'" in res.messages[0]["content"]
    assert error_kind(res.info["tool_calls"][0].error) == "unknown_tool"
    res = asyncio.run(env.step(_call("calculator", "{oops")))
    assert not res.terminated and res.info["tool_errors"] == 1
    assert res.messages[0]["content"].startswith("Error: invalid JSON")
    final = asyncio.run(env.step(fmt.format_answer(42)))
    assert final.terminated and final.info["final_answer"] == "42"


def test_lenient_reads_json_written_on_the_final_channel() -> None:
    call = json.dumps({"name": "calculator", "arguments": {"expression": "6*7"}})
    text = f"<|channel|>final<|message|>```json\n{call}\n```"
    assert get_format("harmony").parse(text).tool_calls == []
    p = get_format("harmony+lenient").parse(text)
    assert _calls(p) == [("calculator", {"expression": "6*7"}, None)] and p.tool_calls[0].lenient


def test_tools_namespace_in_the_system_prompt() -> None:
    env = ToolEnv([calculator], "harmony-prompt")
    assert env.system_prompt("Be brief.") == (
        "Be brief.\n# Tools\n\n## functions\n\nnamespace functions {\n\n"
        "// Evaluate an arithmetic expression.\ntype calculator = (_: {\n"
        '// Arithmetic such as "(3+4)*2".\nexpression: string,\n}) => any;\n\n'
        "} // namespace functions\n\n"
        "Calls to these tools must go to the commentary channel: 'functions'.")
    assert ToolEnv([calculator], "harmony").system_prompt("Be brief.") == "Be brief."
    none = harmony_mod.tools_namespace([{"type": "function", "function": {
        "name": "now", "description": "Time.", "parameters": {"type": "object",
                                                             "properties": {}}}}])
    assert "// Time.\ntype now = () => any;" in none


def test_without_the_package_the_error_says_what_to_install(monkeypatch) -> None:
    harmony_mod._harmony.cache_clear()
    monkeypatch.setitem(sys.modules, "openai_harmony", None)
    try:
        fmt = get_format("harmony")  # building the format needs nothing
        with pytest.raises(ImportError, match="pip install 'turnrl\\[harmony\\]'"):
            fmt.parse("x")
    finally:
        harmony_mod._harmony.cache_clear()


@pytest.mark.parametrize("fmt", NAMES)
@pytest.mark.parametrize("name", registered_envs())
def test_every_registered_env_conforms_with_harmony(name: str, fmt: str) -> None:
    env = make_env(name, tool_format=fmt)
    for task in env.example_tasks(1, seed=0):
        asyncio.run(check_env(env, task))


@pytest.mark.parametrize("spec", ["harmony", "harmony-prompt+lenient"])
def test_copy_and_pickle(spec: str) -> None:
    fmt = ToolEnv([calculator], spec).format
    for clone in (copy.deepcopy(fmt), pickle.loads(pickle.dumps(fmt))):
        text = fmt.format_call("calculator", {"expression": "12"})
        assert _calls(clone.parse(text)) == [("calculator", {"expression": "12"}, None)]


# ---- auto


def test_auto_picks_harmony() -> None:
    with_tools = ("{% if tools %}namespace functions { {{ tools }} }{% endif %}"
                  "<|start|>assistant<|channel|>commentary to=functions.f<|message|>{}<|call|>")
    name, reason = detect_format(with_tools)
    assert name == "harmony" and "gpt-oss" in reason
    assert detect_format(HARMONY_TEMPLATE)[0] == "harmony-prompt"  # renders no tools
    assert resolve_format("auto+lenient", with_tools)[0] == "harmony+lenient"


_spec = importlib.util.find_spec("trl")
GPTOSS = (Path(next(iter(_spec.submodule_search_locations or []))) / "chat_templates"
          / "gptoss.jinja") if _spec else None


@pytest.mark.skipif(GPTOSS is None or not GPTOSS.exists(), reason="trl's templates not installed")
def test_gpt_oss_template_is_detected_and_its_calls_parse(tokenizer) -> None:
    text = GPTOSS.read_text()  # type: ignore[union-attr]
    assert detect_format(text)[0] == "harmony"
    tools = ToolEnv([calculator]).tools
    messages = [{"role": "user", "content": "Q-7"},
                {"role": "assistant", "thinking": "Use the calculator.", "tool_calls": [
                    {"type": "function", "function": {"name": "calculator",
                                                      "arguments": {"expression": "6*7"}}}]}]
    prompt = tokenizer.apply_chat_template(messages[:1], tools=tools, chat_template=text,
                                           tokenize=False, add_generation_prompt=True)
    rendered = tokenizer.apply_chat_template(messages, tools=tools, chat_template=text,
                                             tokenize=False)
    assert rendered.startswith(prompt) and prompt.endswith("<|start|>assistant")
    assert "namespace functions {" in prompt  # the template renders the tools natively
    p = get_format("harmony").parse(rendered[len(prompt):])
    assert _calls(p) == [("calculator", {"expression": "6*7"}, None)]
    assert p.reasoning == "Use the calculator."


# ---- an episode through the agent loop, with a template that rewrites history

HARMONY_TOKENS = ["<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>",
                  "<|return|>", "<|call|>"]
FINAL = "<|channel|>final<|message|>"
# A harmony chat template for the agent loop's messages: an assistant message's content is the
# model's raw turn (the text after the generation prompt "<|start|>assistant"). Like gpt-oss, it
# drops the analysis of a turn that ended on the final channel, and of a call turn once a later
# turn has a final message; it renders no tools (the definitions come in the system prompt).
HARMONY_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}"
    "{{ '<|start|>developer<|message|># Instructions\\n\\n' + m['content'] + '<|end|>' }}"
    "{%- elif m['role'] == 'user' -%}"
    "{{ '<|start|>user<|message|>' + m['content'] + '<|end|>' }}"
    "{%- elif m['role'] == 'tool' -%}"
    "{{ '<|start|>functions.' + m['name'] + ' to=assistant<|channel|>commentary<|message|>'"
    " + m['content'] + '<|end|>' }}"
    "{%- elif m['role'] == 'assistant' -%}"
    "{%- set c = m['content'] -%}"
    "{%- set ended_final = '<|channel|>final<|message|>' in c -%}"
    "{%- set later = namespace(final=false) -%}"
    "{%- for f in messages[loop.index:] -%}"
    "{%- if f['role'] == 'assistant' and '<|channel|>final<|message|>' in f['content'] -%}"
    "{%- set later.final = true -%}{%- endif -%}{%- endfor -%}"
    "{%- if (ended_final and (add_generation_prompt or not loop.last)) or later.final -%}"
    "{%- set kept = namespace(text='') -%}"
    "{%- for part in c.split('<|start|>assistant') -%}"
    "{%- if not part.startswith('<|channel|>analysis') -%}"
    "{%- set kept.text = kept.text + ('<|start|>assistant' if kept.text else '') + part -%}"
    "{%- endif -%}{%- endfor -%}"
    "{%- set c = kept.text -%}"
    "{%- endif -%}"
    "{{ '<|start|>assistant' + c }}"
    "{%- if ended_final and not (c.endswith('<|end|>') or c.endswith('<|return|>')) -%}"
    "{{ '<|end|>' }}{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|start|>assistant' }}{%- endif -%}"
    "{#- a call turn ends with <|call|>, a final one with <|return|> (the EOS, stripped) -#}"
)


@pytest.fixture(scope="module")
def harmony_tokenizer(tokenizer):
    """SmolLM2's tokenizer with the harmony markers as single tokens, <|return|> as its EOS and
    the template above."""
    tok = copy.deepcopy(tokenizer)
    tok.add_tokens(HARMONY_TOKENS, special_tokens=True)
    tok.eos_token = "<|return|>"
    tok.chat_template = HARMONY_TEMPLATE
    return tok


class DialogueEnv:
    """Calculator tool + a user who answers the model's questions (a final message without an
    answer); ends at an <answer>."""

    def __init__(self, fmt: str) -> None:
        self.tool_env = ToolEnv([calculator], fmt)
        self.tools = self.tool_env.tools
        self.format = self.tool_env.format  # how the agent loop learns the format's needs

    async def reset(self, task, *, seed=None):
        return [{"role": "system", "content": self.tool_env.system_prompt("Answer in tags.")},
                {"role": "user", "content": f"Q:{task.prompt}"}], {}

    async def step(self, action: str) -> StepResult:
        res = await self.tool_env.step(action)
        if res.terminated and res.final_answer is None:
            return StepResult(messages=[{"role": "user", "content": "Multiply 6 by 7."}],
                              reward=0.0, info=res.info)
        return res

    async def close(self) -> None:
        return None


class ScriptedEngine:
    """Emits scripted harmony turns; records each prompt it was asked to continue."""

    def __init__(self, tok, turns: list[str]) -> None:
        self.tok, self.turns = tok, list(turns)
        self.prompts: list[list[int]] = []
        self.sampled: list[tuple[list[int], list[float]]] = []
        self.stop_ids: list[list[int]] = []

    def generate(self, requests, sampling):
        (r,) = requests
        self.prompts.append(list(r.prompt_ids))
        self.stop_ids.append(list(sampling.stop_token_ids))
        ids = self.tok.encode(self.turns.pop(0), add_special_tokens=False)
        lps = [-(len(self.sampled) + 1 + i / 100) for i in range(len(ids))]
        self.sampled.append((ids, lps))
        return [GenerationOutput(ids, lps, "stop")]

    def update_weights(self, named_tensors):
        return None


class AsyncScriptedEngine(ScriptedEngine):
    """The same, one request at a time (the per_trajectory schedule)."""

    async def agenerate(self, request, sampling):
        return self.generate([request], sampling)[0]


def test_episode_through_the_agent_loop_keeps_what_the_model_saw(harmony_tokenizer) -> None:
    tok = harmony_tokenizer
    fmt_name, _ = resolve_format("auto", tok)
    assert fmt_name == "harmony-prompt"
    from rl.learner.tokens import format_token_ids  # the rows a LoRA cold start trains

    assert format_token_ids(tok, get_format(fmt_name)) == sorted(
        tok.convert_tokens_to_ids(HARMONY_TOKENS))
    turns = [  # a question to the user; a call (stopped at <|call|>); the answer (EOS <|return|>)
        "<|channel|>analysis<|message|>Which numbers?<|end|>" + A + FINAL + "Which ones?<|return|>",
        "<|channel|>analysis<|message|>Use the tool.<|end|>" + A
        + _call("calculator", '{"expression": "6*7"}'),
        "<|channel|>analysis<|message|>It is 42.<|end|>" + A + FINAL + "<answer>42</answer><|return|>",
    ]
    engine = ScriptedEngine(tok, turns)
    loop = AgentLoop(engine, tok, lambda: DialogueEnv(fmt_name), RolloutConfig(max_turns=5),
                     native_tools=get_format(fmt_name).native_tools)
    (t,) = loop.run([Task(id="a", prompt="a")])
    t.validate()
    assert t.terminated and len(t.turns) == 3 and t.info["final_answer"] == "42"
    assert [(c.name, c.arguments, c.error) for c in t.turns[1].tool_calls] == [
        ("calculator", {"expression": "6*7"}, None)]
    # this template renders a raw turn verbatim: turns go in as raw content
    assert not loop.chat.structured(get_format(fmt_name))
    assert [m["content"] for m in t.messages if m["role"] == "assistant"] == [
        x.removesuffix("<|return|>") for x in turns]
    # the engine stops at <|call|> and <|return|> (the format's stop tokens)
    assert engine.stop_ids == [sorted(tok.convert_tokens_to_ids(["<|call|>", "<|return|>"]))] * 3
    _assert_token_in_token_out(t, engine)
    # the observations: the template's rendering after each sampled turn, nothing in between
    dec = [tok.decode(t.token_ids[a.end:b.start]) for a, b in zip(t.turns, t.turns[1:])]
    assert dec == ["<|start|>user<|message|>Multiply 6 by 7.<|end|><|start|>assistant",
                   "<|start|>functions.calculator to=assistant<|channel|>commentary<|message|>42"
                   "<|end|><|start|>assistant"]
    prompt = tok.decode(t.token_ids[: t.prompt_len])
    assert "namespace functions {" in prompt and "type calculator = (_: {" in prompt
    # earlier analysis stays in the context (what the model saw), though the template drops it
    text = tok.decode(t.token_ids)
    canonical = tok.apply_chat_template(t.messages, tokenize=False)
    for thought in ("Which numbers?", "Use the tool."):
        assert thought in text and thought not in canonical
    assert "It is 42." in canonical  # the last turn's analysis is rendered (training view)
    assert t.info["history_rewrites"] == 2 and trajectory_stats([t])["history_rewrites"] == 2


def _assert_token_in_token_out(t, engine) -> None:
    """The engine continued exactly the learner's tokens; mask and logprobs cover the sampled
    ones, verbatim."""
    for turn, prompt, (ids, lps) in zip(t.turns, engine.prompts, engine.sampled):
        assert prompt == t.token_ids[: turn.start]
        assert t.token_ids[turn.start:turn.end] == ids and t.logprobs[turn.start:turn.end] == lps
    assert [i for i, m in zip(t.token_ids, t.loss_mask) if m] == [
        i for ids, _ in engine.sampled for i in ids]
    assert all(lp == 0.0 for lp, m in zip(t.logprobs, t.loss_mask) if not m)


@pytest.fixture
def gpt_oss_tokenizer(harmony_tokenizer):
    if GPTOSS is None or not GPTOSS.exists():
        pytest.skip("trl's templates not installed")
    tok = copy.deepcopy(harmony_tokenizer)
    tok.chat_template = GPTOSS.read_text()
    return tok


@pytest.mark.parametrize("schedule", ["rounds", "per_trajectory"])
def test_gpt_oss_shipped_template_through_the_agent_loop(gpt_oss_tokenizer, schedule) -> None:
    tok = gpt_oss_tokenizer
    turns = [  # a question to the user; a call; a call cut by the token limit; the answer
        "<|channel|>analysis<|message|>Which numbers?<|end|>" + A + FINAL + "Which ones?<|return|>",
        "<|channel|>analysis<|message|>Use the tool.<|end|>" + A
        + _call("calculator", '{"expression": "6*7"}'),
        _call("calculator", '{"expression": "6*', end=""),
        "<|channel|>analysis<|message|>It is 42.<|end|>" + A + FINAL + "<answer>42</answer><|return|>",
    ]
    engine = (AsyncScriptedEngine if schedule == "per_trajectory" else ScriptedEngine)(tok, turns)
    loop = AgentLoop(engine, tok, lambda: DialogueEnv("harmony"),
                     RolloutConfig(max_turns=5, schedule=schedule), native_tools=True)
    assert loop.chat.structured(get_format("harmony"))  # the template refuses raw harmony
    (t,) = loop.run([Task(id="a", prompt="a")])
    t.validate()
    assert t.terminated and len(t.turns) == 4 and t.info["final_answer"] == "42"
    assert [[(c.name, c.error is None) for c in u.tool_calls] for u in t.turns] == [
        [], [("calculator", True)], [("calculator", False)], []]
    _assert_token_in_token_out(t, engine)
    assert engine.stop_ids == [sorted(tok.convert_tokens_to_ids(["<|call|>", "<|return|>"]))] * 4
    # the turns as the template reads them
    calc = {"type": "function", "function": {"name": "calculator",
                                             "arguments": {"expression": "6*7"}}}
    assert [m for m in t.messages if m["role"] == "assistant"] == [
        {"role": "assistant", "content": "Which ones?", "thinking": "Which numbers?"},
        {"role": "assistant", "content": "", "thinking": "Use the tool.", "tool_calls": [calc]},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "calculator", "arguments": {}}}]},
        {"role": "assistant", "content": "<answer>42</answer>", "thinking": "It is 42."}]
    # the observations: gpt-oss's rendering of the new messages, after the model's stop token;
    # the cut turn is closed with <|end|>
    tool = "<|start|>functions.calculator to=assistant<|channel|>commentary<|message|>"
    error = json.dumps(t.messages[-2]["content"])
    assert error.startswith('"Error: invalid JSON')
    dec = [tok.decode(t.token_ids[a.end:b.start]) for a, b in zip(t.turns, t.turns[1:])]
    assert dec == ["<|start|>user<|message|>Multiply 6 by 7.<|end|><|start|>assistant",
                   tool + '"42"<|end|><|start|>assistant',
                   "<|end|>" + tool + error + "<|end|><|start|>assistant"]
    # every later context differs from the template's rendering (it drops the analysis, writes
    # <|end|> for <|return|> and the call header its own way): counted, never silently mixed
    assert t.info["history_rewrites"] == 3
    canonical = tok.apply_chat_template(t.messages, tokenize=False)  # the training rendering
    assert canonical.endswith(A + "<|channel|>analysis<|message|>It is 42.<|end|>" + A + FINAL
                              + "<answer>42</answer><|return|>")


def test_gpt_oss_demonstration_replays_token_exactly(gpt_oss_tokenizer) -> None:
    """SFT data for gpt-oss: the replayed demonstration is gpt-oss's own training rendering of
    the conversation, token for token, except the call header, which the format writes as the
    harmony spec has the model write it (the template renders history as to=... first)."""
    from rl.sft import replay

    tok = gpt_oss_tokenizer
    fmt = get_format("harmony")
    actions = [fmt.format_call("calculator", {"expression": "6*7"}), fmt.format_answer(42)]
    t = replay(tok, lambda: DialogueEnv("harmony"), Task(id="d", prompt="d"), actions,
               native_tools=True)
    assert t.terminated and t.info["final_answer"] == "42"
    rendered = tok.apply_chat_template(t.messages, tools=DialogueEnv("harmony").tools,
                                       tokenize=False).replace(
        A + " to=functions.calculator<|channel|>commentary json<|message|>",
        A + "<|channel|>commentary to=functions.calculator <|constrain|>json<|message|>")
    assert t.token_ids == tok.encode(rendered, add_special_tokens=False)
    call, ret = tok.convert_tokens_to_ids(["<|call|>", "<|return|>"])
    first = t.token_ids[t.turns[0].start:t.turns[0].end]
    assert first == tok.encode(actions[0], add_special_tokens=False) and first[-1] == call
    assert t.token_ids[t.turns[1].end - 1] == ret and t.token_ids.count(ret) == 1


@pytest.mark.parametrize("join", [False, True])
def test_harmony_demonstration_replays_token_exactly(harmony_tokenizer, join: bool) -> None:
    """The same with the verbatim harmony template above (which closes the last final message
    with <|end|>, where gpt-oss's training rendering and the model write <|return|>); a call and
    the answer in one turn (joined as demonstrations join them) end at the one EOS."""
    from rl.sft import replay

    tok = harmony_tokenizer
    fmt = get_format("harmony-prompt")
    actions = [fmt.format_call("calculator", {"expression": "6*7"}), fmt.format_answer(42)]
    if join:  # the call's result is not needed: one turn, which the answer ends
        actions = ["\n".join(actions)]
    t = replay(tok, lambda: DialogueEnv("harmony-prompt"), Task(id="d", prompt="d"), actions)
    assert t.terminated and t.info["final_answer"] == "42" and len(t.turns) == len(actions)
    rendered = tok.apply_chat_template(t.messages, tokenize=False)
    assert rendered.endswith("</answer><|end|>")
    rendered = rendered.removesuffix("<|end|>") + "<|return|>"
    assert t.token_ids == tok.encode(rendered, add_special_tokens=False)
    ret = tok.eos_token_id
    model = [i for i, m in zip(t.token_ids, t.loss_mask) if m]
    assert model == [i for a in actions for i in tok.encode(a, add_special_tokens=False)] + [ret]


def test_jsonl_harmony_conversation_ends_a_call_turn_at_call(gpt_oss_tokenizer) -> None:
    """A user's JSONL row in harmony, replayed with the run's format (rl.build passes the env's):
    no EOS after <|call|>; the turns reach gpt-oss's template as structured messages."""
    from rl.sft import conversation_trajectory

    tok, fmt = gpt_oss_tokenizer, get_format("harmony")
    call, answer = fmt.format_call("calculator", {"expression": "6*7"}), fmt.format_answer(42)
    row = {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": call},
                        {"role": "tool", "name": "calculator", "content": "42"},
                        {"role": "assistant", "content": answer}]}
    t = conversation_trajectory(tok, row, native_tools=True, tool_format=fmt)
    first, last = (t.token_ids[u.start:u.end] for u in t.turns)
    call_id, ret = tok.convert_tokens_to_ids(["<|call|>", "<|return|>"])
    assert first == tok.encode(call, add_special_tokens=False) and first[-1] == call_id
    assert last == tok.encode(answer, add_special_tokens=False) + [ret]
    assert tok.decode(t.token_ids[t.turns[0].end:t.turns[1].start]) == (
        '<|start|>functions.calculator to=assistant<|channel|>commentary<|message|>"42"<|end|>'
        "<|start|>assistant")
    assert t.messages[1]["tool_calls"][0]["function"]["name"] == "calculator"


def test_sft_data_path_rows_are_replayed_in_the_envs_format(harmony_tokenizer, tmp_path) -> None:
    """``sft.data_path``: rl.sft.sft_trajectories hands the configured env's format to the
    replay, so a row's harmony call turn ends at <|call|> (no EOS after it)."""
    from rl.config import load_config, to_dataclass
    from rl.sft import sft_trajectories

    tok, fmt = harmony_tokenizer, get_format("harmony-prompt")
    call = fmt.format_call("calculator", {"expression": "6*7"})
    row = {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": call},
                        {"role": "tool", "name": "calculator", "content": "42"},
                        {"role": "assistant", "content": fmt.format_answer(42)}]}
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps(row) + "\n")
    cfg = to_dataclass(load_config([f"sft.data_path={data}", "env.format=harmony-prompt"]))
    (t,) = sft_trajectories(cfg.sft, tok, lambda: make_env("math", tool_format="harmony-prompt"),
                            native_tools=False, train_tasks=[])
    first = t.token_ids[t.turns[0].start:t.turns[0].end]
    assert first == tok.encode(call, add_special_tokens=False)
    assert first[-1] == tok.convert_tokens_to_ids("<|call|>")
    assert t.token_ids[t.turns[1].end - 1] == tok.eos_token_id
