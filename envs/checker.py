"""Conformance checker for envs (in the spirit of Gymnasium's ``env_checker``).

``await check_env(env, task)`` raises ``AssertionError`` with a message that names the broken
rule. It checks:

- the env satisfies the :class:`~envs.base.Env` protocol;
- ``tools`` is a list of ``{"type": "function", "function": {name, description, parameters}}``
  with ``parameters`` an object JSON schema whose ``required`` keys are declared properties,
  using JSON types only, and JSON-serialisable;
- ``reset`` returns ``(messages, info)``: a non-empty list of well-formed messages and a dict;
  resetting twice with the same seed gives the same messages;
- ``step`` returns a :class:`~envs.base.StepResult` with well-formed messages, a finite float
  reward, plain-bool ``terminated``/``truncated``, a dict ``info`` and the typed fields the
  loop and rewards read (``tool_calls``, ``tool_errors``, ``final_answer``, ``success``,
  ``score``); a terminated step carries the verdict (``success`` is a bool);
- stepping with garbage (empty text, malformed or unclosed tool calls, an unknown tool, wrong
  argument types, binary junk) does not raise;
- ``close`` works.

``actions`` (default: ``env.demonstration(task)`` when the env has one, else a single empty
action) are stepped in order until the episode ends.
"""

from __future__ import annotations

import json
import math
from typing import Any

from envs.base import Env, HasDemonstrations, StepResult
from envs.formats import ToolCallFormat
from rl.types import Message, Task, ToolCall

ROLES = ("system", "user", "assistant", "tool")
JSON_TYPES = ("string", "integer", "number", "boolean", "array", "object", "null")

GARBAGE_ACTIONS = (
    "",
    "   \n ",
    "<tool_call>{not json</tool_call>",
    "<tool_call>",
    "</tool_call>",
    '<tool_call>{"arguments": {}}</tool_call>',
    '<tool_call>{"name": "no_such_tool_xyz", "arguments": {}}</tool_call>',
    '<tool_call>{"name": "no_such_tool_xyz", "arguments": [1, 2]}</tool_call>',
    '<tool_call>["a list"]</tool_call>',
    "<answer>",
    "<answer></answer><answer>1</answer>",
    "\x00\ufffd\U0001f600 <|im_end|> <tool_call>\n",
    "x" * 5000,
)


def _check_message(msg: Any, where: str) -> None:
    assert isinstance(msg, dict), f"{where}: a message must be a dict, got {type(msg).__name__}"
    assert msg.get("role") in ROLES, (
        f"{where}: role must be one of {ROLES}, got {msg.get('role')!r}"
    )
    assert isinstance(msg.get("content"), str), (
        f"{where}: content must be a str, got {type(msg.get('content')).__name__}"
    )
    try:
        json.dumps(msg)
    except (TypeError, ValueError) as e:
        raise AssertionError(f"{where}: message is not JSON-serialisable: {e}") from e


def check_messages(messages: Any, where: str, *, allow_empty: bool = True) -> None:
    assert isinstance(messages, list), f"{where}: messages must be a list, got {type(messages)}"
    assert allow_empty or messages, f"{where}: messages must not be empty"
    for i, m in enumerate(messages):
        _check_message(m, f"{where}[{i}]")


def _check_property_schema(schema: Any, where: str) -> None:
    assert isinstance(schema, dict), f"{where}: property schema must be a dict"
    declared = schema.get("type")
    names = declared if isinstance(declared, list) else [declared]
    if declared is not None:
        for n in names:
            assert n in JSON_TYPES, f"{where}: unknown JSON type {n!r} (valid: {JSON_TYPES})"
    if "enum" in schema:
        assert isinstance(schema["enum"], list), f"{where}: enum must be a list"
    if isinstance(schema.get("items"), dict):
        _check_property_schema(schema["items"], f"{where}.items")
    if "properties" in schema:
        _check_object_schema(schema, where)


def _check_object_schema(schema: dict[str, Any], where: str) -> None:
    assert schema.get("type") == "object", f"{where}: parameters must have type 'object'"
    props = schema.get("properties", {})
    assert isinstance(props, dict), f"{where}: properties must be a dict"
    required = schema.get("required", [])
    assert isinstance(required, list), f"{where}: required must be a list"
    for r in required:
        assert r in props, (
            f"{where}: required key {r!r} is not among the properties {sorted(props)}"
        )
    for k, p in props.items():
        _check_property_schema(p, f"{where}.{k}")


def check_tools(tools: Any) -> None:
    assert isinstance(tools, list), f"env.tools must be a list, got {type(tools).__name__}"
    names = []
    for i, t in enumerate(tools):
        where = f"tools[{i}]"
        assert isinstance(t, dict) and t.get("type") == "function", (
            f'{where}: must be {{"type": "function", "function": {{...}}}}'
        )
        fn = t.get("function")
        assert isinstance(fn, dict), f"{where}: missing 'function' dict"
        name = fn.get("name")
        assert isinstance(name, str) and name, f"{where}: function needs a non-empty str name"
        assert isinstance(fn.get("description"), str), f"{where} ({name}): needs a str description"
        assert isinstance(fn.get("parameters"), dict), f"{where} ({name}): needs parameters"
        _check_object_schema(fn["parameters"], f"{where} ({name}).parameters")
        names.append(name)
        try:
            json.dumps(t)
        except (TypeError, ValueError) as e:
            raise AssertionError(f"{where} ({name}): schema is not JSON-serialisable: {e}") from e
    assert len(names) == len(set(names)), f"duplicate tool names: {names}"


def check_step_result(res: Any, where: str) -> None:
    assert isinstance(res, StepResult), f"{where}: step must return StepResult, got {type(res)}"
    check_messages(res.messages, f"{where}.messages")
    r = res.reward
    assert isinstance(r, (int, float)) and not isinstance(r, bool), (
        f"{where}: reward must be a float, got {type(r).__name__}"
    )
    assert math.isfinite(r), f"{where}: reward must be finite, got {r}"
    assert type(res.terminated) is bool, (
        f"{where}: terminated must be a bool, got {res.terminated!r}"
    )
    assert type(res.truncated) is bool, f"{where}: truncated must be a bool, got {res.truncated!r}"
    assert isinstance(res.info, dict), f"{where}: info must be a dict"
    # the typed contract the agent loop and the rewards read
    assert isinstance(res.tool_calls, list) and all(isinstance(c, ToolCall)
                                                    for c in res.tool_calls), (
        f"{where}: tool_calls must be a list of ToolCall, got {res.tool_calls!r:.80}")
    assert type(res.tool_errors) is int and 0 <= res.tool_errors, (
        f"{where}: tool_errors must be an int >= 0, got {res.tool_errors!r}")
    assert res.tool_errors <= max(len(res.tool_calls), 1) or not res.tool_calls, (
        f"{where}: tool_errors={res.tool_errors} exceeds the {len(res.tool_calls)} calls")
    assert res.final_answer is None or isinstance(res.final_answer, str), (
        f"{where}: final_answer must be a str or None, got {type(res.final_answer).__name__}")
    assert res.success is None or type(res.success) is bool, (
        f"{where}: success must be a bool or None, got {res.success!r}")
    assert res.score is None or (isinstance(res.score, (int, float)) and 0.0 <= res.score <= 1.0), (
        f"{where}: score must be in [0, 1] or None, got {res.score!r}")
    if res.terminated:
        assert res.success is not None, (
            f"{where}: a terminated episode must carry the env's verdict: StepResult.success "
            "(True/False); rewards and success metrics read it")


_WRONG_VALUE = {"string": 12345, "integer": "twelve", "number": "twelve", "boolean": "yes"}


def _bad_calls(env: Any) -> list[str]:
    """Calls to the env's own tools with missing, unknown and wrongly typed arguments, written
    in the env's tool-call format (when it exposes one as ``env.format``)."""
    fmt = getattr(env, "format", None)
    if not isinstance(fmt, ToolCallFormat):
        return []
    out = []
    for t in env.tools:
        fn = t["function"]
        props = fn["parameters"].get("properties", {})
        wrong = {k: _WRONG_VALUE.get(str(p.get("type")), {"x": [1]}) for k, p in props.items()}
        out += [
            fmt.format_call(fn["name"], wrong),
            fmt.format_call(fn["name"], {}),
            fmt.format_call(fn["name"], {"zz_unknown_argument": 1}),
        ]
    return out


async def _reset(env: Env, task: Task, seed: int) -> tuple[list[Message], dict]:
    out = await env.reset(task, seed=seed)
    assert isinstance(out, tuple) and len(out) == 2, "reset must return (messages, info)"
    messages, info = out
    check_messages(messages, "reset messages", allow_empty=False)
    assert isinstance(info, dict), f"reset info must be a dict, got {type(info).__name__}"
    return messages, info


async def check_env(
    env: Any, task: Task, *, actions: list[str] | None = None, seed: int = 0, max_steps: int = 20
) -> None:
    """Run the conformance checks on ``env`` with ``task``; raise ``AssertionError`` on failure."""
    assert isinstance(env, Env), (
        f"{type(env).__name__} does not satisfy the Env protocol (tools, reset, step, close)"
    )
    check_tools(env.tools)

    first, _ = await _reset(env, task, seed)
    again, _ = await _reset(env, task, seed)
    assert first == again, "reset with the same task and seed must return the same messages"

    from_demo = actions is None and isinstance(env, HasDemonstrations)
    if actions is None:
        actions = env.demonstration(task) if isinstance(env, HasDemonstrations) else [""]
    ended = False
    for i, action in enumerate(actions[:max_steps]):
        res = await env.step(action)
        check_step_result(res, f"step {i} ({action[:40]!r})")
        if res.terminated or res.truncated:
            ended = True
            break
    if from_demo:
        assert ended, f"the demonstration for task {task.id} did not end the episode"

    for action in [*GARBAGE_ACTIONS, *_bad_calls(env)]:
        await _reset(env, task, seed)
        try:
            res = await env.step(action)
        except Exception as e:
            raise AssertionError(
                f"step({action[:60]!r}) raised {type(e).__name__}: {e}; malformed actions must "
                "become observations, not exceptions"
            ) from e
        check_step_result(res, f"garbage step ({action[:40]!r})")

    await env.close()
