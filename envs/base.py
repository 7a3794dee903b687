"""The environment contract (Gymnasium-shaped, async) and the env registry.

An env is reset with a :class:`~rl.types.Task` and returns the opening messages (system + user);
each ``step`` takes the model's action text and returns the messages to append (tool results,
user replies), a turn reward, and whether the episode ended (``terminated``: the task is over,
e.g. a final answer; ``truncated``: cut by a limit, so a critic would bootstrap).

Tools are plain typed Python functions (:class:`Tool`); :class:`ToolEnv` is the reusable
tool-calling half of an env (parse the action with a tool-call format, run calls with timeouts,
turn every failure into an ``"Error: ..."`` observation).
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from envs.formats import ToolCallFormat, get_format
from rl.registry import Registry
from rl.types import Message, Task, ToolCall


@dataclass
class StepResult:
    """One env step. The typed fields below are what the agent loop and the rewards read; the
    checker (envs/checker.py) asserts their types, and that a terminated episode carries the
    env's verdict (``success``), so a new env cannot silently score 0 by forgetting a key.

    For envs written against the older untyped contract, the same names given as ``info`` keys
    fill the typed fields; the typed values are mirrored into ``info`` (which stays free-form
    for env-specific details)."""

    messages: list[Message]
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    tool_calls: list[ToolCall] = field(default_factory=list)
    """Calls parsed from the action, in order; a malformed one carries ``.error``."""
    tool_errors: int = 0
    """Calls of this step that failed (malformed, unknown tool, bad arguments, tool error)."""
    final_answer: str | None = None
    """The final answer the action gave, if it gave one."""
    success: bool | None = None
    """The env's verdict on the task; required (True/False) when ``terminated``; None before
    the episode is decided."""
    score: float | None = None
    """A graded verdict in [0, 1] where the env has one (F1, share of tests passed)."""

    TYPED = ("tool_calls", "tool_errors", "final_answer", "success", "score")

    def __post_init__(self) -> None:
        defaults = {"tool_calls": [], "tool_errors": 0, "final_answer": None, "success": None,
                    "score": None}
        for key, default in defaults.items():
            if getattr(self, key) == default and key in self.info:
                setattr(self, key, self.info[key])
        for key, default in defaults.items():
            value = getattr(self, key)
            if value != default or key in ("tool_calls", "tool_errors"):
                self.info[key] = value


@runtime_checkable
class Env(Protocol):
    """What the agent loop needs from an environment.

    ``tools`` are the JSON schemas the model may call (empty for tool-free envs); the agent loop
    passes them to the chat template or the tool prompt format.
    """

    tools: list[dict[str, Any]]

    async def reset(self, task: Task, *, seed: int | None = None) -> tuple[list[Message], dict]: ...

    async def step(self, action_text: str) -> StepResult: ...

    async def close(self) -> None: ...


_ENVS: Registry[Callable[..., Env]] = Registry("env")


def register_env(name: str) -> Callable[[Callable[..., Env]], Callable[..., Env]]:
    """Class/factory decorator: ``@register_env("math")``. Duplicate names are refused."""
    return _ENVS.register(name)


def make_env(name: str, **kwargs: Any) -> Env:
    return _ENVS.get(name)(**kwargs)


def registered_envs() -> list[str]:
    return sorted(_ENVS.names())


@runtime_checkable
class HasExampleTasks(Protocol):
    """Envs that can make their own tasks; the conformance test needs this of every registered
    env (``example_tasks(2)`` gives it something to reset with)."""

    def example_tasks(self, n: int, *, seed: int = 0) -> list[Task]: ...


@runtime_checkable
class HasDemonstrations(Protocol):
    """Envs that can synthesize reference actions for a task (cold-start SFT data).

    ``demonstration(task)`` returns the assistant action texts of one successful episode; replaying
    them through ``reset``/``step`` gives the observations in between.
    """

    def demonstration(self, task: Task) -> list[str]: ...


# ---------------------------------------------------------------------------------------------
# Tools: plain typed Python functions (sync or async) with a Google-style docstring.


class ToolError(Exception):
    """A tool refused its arguments or failed in an expected way; the message goes to the model."""


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list, tuple),
    "object": (dict,),
    "null": (type(None),),
}


def _matches_type(value: Any, type_name: str) -> bool:
    if type_name in ("integer", "number") and isinstance(value, bool):
        return False  # bool is an int subclass in Python, not in JSON
    if type_name == "integer" and isinstance(value, float):
        return value.is_integer()  # JSON Schema: 3.0 is an integer
    return isinstance(value, _JSON_TYPES.get(type_name, (object,)))


def _check_value(value: Any, schema: dict[str, Any], where: str) -> Any:
    """Check one value against a (subset of) JSON schema; return it (3.0 -> 3 for integers)."""
    if value is None and schema.get("nullable"):
        return None
    declared = schema.get("type")
    if declared is not None:
        names = declared if isinstance(declared, list) else [declared]
        matched = next((n for n in names if _matches_type(value, n)), None)
        if matched is None:
            got = _json_type_name(value)
            raise ToolError(f"{where} must be {' or '.join(names)}, got {got}")
        if matched == "integer":
            value = int(value)
    if "enum" in schema and value not in schema["enum"]:
        raise ToolError(f"{where} must be one of {schema['enum']}, got {value!r}")
    if isinstance(value, (list, tuple)) and isinstance(schema.get("items"), dict):
        value = [_check_value(v, schema["items"], f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict) and "properties" in schema:
        value = _check_object(value, schema, where)
    return value


def _check_object(args: dict[str, Any], schema: dict[str, Any], where: str) -> dict[str, Any]:
    props: dict[str, Any] = schema.get("properties", {})
    missing = [k for k in schema.get("required", []) if k not in args]
    if missing:
        raise ToolError(
            f"missing required argument{'s' if len(missing) > 1 else ''} {missing}"
            + (f" in {where}" if where else "")
        )
    unknown = sorted(set(args) - set(props))
    if unknown:
        raise ToolError(
            f"unknown argument{'s' if len(unknown) > 1 else ''} {unknown}; expected {sorted(props)}"
        )
    prefix = f"{where}." if where else ""
    return {k: _check_value(v, props[k], f"argument '{prefix}{k}'") for k, v in args.items()}


def _json_type_name(value: Any) -> str:
    for name in ("boolean", "integer", "number", "string", "array", "object", "null"):
        if _matches_type(value, name):
            return name
    return type(value).__name__


def validate_arguments(arguments: Any, parameters: dict[str, Any]) -> dict[str, Any]:
    """Validate call arguments against a tool's ``parameters`` schema; raise :class:`ToolError`.

    Checks: an object, required keys present, no unknown keys, JSON types (an int is accepted
    for ``number``, an integral float for ``integer``; bools are neither), ``enum``, array
    ``items``, nested objects. Returns the arguments with integral floats turned into ints.
    """
    if not isinstance(arguments, dict):
        raise ToolError(f"arguments must be an object, got {_json_type_name(arguments)}")
    return _check_object(arguments, parameters, "")


def _to_text(out: Any) -> str:
    if isinstance(out, str):
        return out
    if isinstance(out, (dict, list)):
        return json.dumps(out)
    return str(out)


@dataclass(frozen=True, eq=False)
class Tool:
    """A callable tool: name, description and JSON schema from a typed Python function.

    The schema comes from ``transformers.utils.get_json_schema`` (type hints + Google-style
    docstring with an ``Args:`` section). Sync functions run in a worker thread so a slow one does
    not stall other trajectories; note a thread cannot be killed, so a tool that may hang must be
    async (e.g. a subprocess, like the python tool) for its timeout to free resources.
    """

    name: str
    description: str
    parameters: dict[str, Any]
    fn: Callable[..., Any]

    @classmethod
    def from_function(cls, fn: Callable[..., Any], *, name: str | None = None) -> Tool:
        from transformers.utils import get_json_schema

        spec = get_json_schema(fn)["function"]
        params = spec.get("parameters") or {"type": "object", "properties": {}}
        return cls(
            name=name or spec["name"],
            description=spec.get("description", ""),
            parameters=params,
            fn=fn,
        )

    @property
    def schema(self) -> dict[str, Any]:
        """The OpenAI/HF chat-template tool schema: ``{"type": "function", "function": {...}}``."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }

    async def call(self, arguments: Any) -> str:
        """Validate ``arguments`` and run the tool; raises :class:`ToolError` on bad arguments."""
        args = validate_arguments(arguments, self.parameters)
        if inspect.iscoroutinefunction(self.fn):
            out = await self.fn(**args)
        else:
            out = await asyncio.to_thread(self.fn, **args)
        return _to_text(out)


def as_tool(obj: Tool | Callable[..., Any]) -> Tool:
    return obj if isinstance(obj, Tool) else Tool.from_function(obj)


# ---------------------------------------------------------------------------------------------
# ToolEnv: the tool-calling half of an env (parse, run with timeouts, observe). Task envs hold one.


class ToolEnv:
    """Runs the model's tool calls and turns every failure into an error observation.

    A task env composes one of these: it builds its system message with :meth:`system_prompt`
    and delegates ``step`` to :meth:`step` (adding its own task logic around it if needed).

    Step semantics (ARTIST-style: the episode ends when the model stops calling tools):

    - an ``<answer>`` in the action: ``terminated``; ``info["final_answer"]`` is its content (the
      last one if several). Tool calls in the same action are NOT run (the answer could not have
      used their results) and count as errors (``"not run: ..."``).
    - tool calls and no answer: each call runs (in order, at most ``max_calls_per_turn``), one
      observation message per call; not terminated.
    - neither: ``terminated`` with ``final_answer`` None.

    The step reward is always 0.0 (outcome scoring lives in ``rewards/``). ``info`` holds
    ``tool_calls`` (list[ToolCall], failures with ``.error``), ``tool_errors`` (int) and
    ``final_answer`` (str | None).
    """

    def __init__(
        self,
        tools: Sequence[Tool | Callable[..., Any]],
        fmt: ToolCallFormat | str = "hermes-prompt",
        *,
        timeout_s: float = 10.0,
        max_calls_per_turn: int = 4,
        max_output_chars: int = 2000,
    ) -> None:
        self.format: ToolCallFormat = get_format(fmt) if isinstance(fmt, str) else fmt
        self.tool_map: dict[str, Tool] = {}
        for t in map(as_tool, tools):
            if t.name in self.tool_map:
                raise ValueError(f"duplicate tool name '{t.name}'")
            self.tool_map[t.name] = t
        self.tools: list[dict[str, Any]] = [t.schema for t in self.tool_map.values()]
        if hasattr(self.format, "with_tools"):  # formats whose argument types need the schemas
            self.format = self.format.with_tools(self.tools)
        self.timeout_s = timeout_s
        self.max_calls_per_turn = max_calls_per_turn
        self.max_output_chars = max_output_chars

    def system_prompt(self, instructions: str) -> str:
        """``instructions`` plus the format's tool prompt (empty for native-tool formats)."""
        parts = [instructions.strip(), self.format.system_prompt(self.tools).strip()]
        return "\n".join(p for p in parts if p)

    async def run_call(self, call: ToolCall) -> str:
        """Run one parsed call; return the observation text. Sets ``call.error`` on failure."""
        if call.error is None:
            tool = self.tool_map.get(call.name)
            try:
                if tool is None:
                    raise ToolError(
                        f"unknown tool '{call.name}'; available: {sorted(self.tool_map)}"
                    )
                out = await asyncio.wait_for(tool.call(call.arguments), self.timeout_s)
                return self._cap(out)
            except ToolError as e:
                call.error = str(e) or "tool error"
            except asyncio.TimeoutError:  # (the builtin TimeoutError on 3.11+, distinct on 3.10)
                call.error = f"{call.name} timed out after {self.timeout_s:g} s"
            except Exception as e:  # a tool bug must not take the trainer down
                call.error = f"{call.name} failed: {type(e).__name__}: {e}"
        return self._cap(f"Error: {call.error}")

    def _cap(self, text: str) -> str:
        if len(text) <= self.max_output_chars:
            return text
        return (
            text[: self.max_output_chars]
            + f"... [truncated {len(text) - self.max_output_chars} chars]"
        )

    async def step(self, action_text: str) -> StepResult:
        parsed = self.format.parse(action_text)
        calls = parsed.tool_calls
        info: dict[str, Any] = {"tool_calls": calls, "final_answer": parsed.answer}
        if parsed.answer is not None:
            for c in calls:
                c.error = c.error or "not run: the turn also gave a final answer"
            info["tool_errors"] = sum(c.error is not None for c in calls)
            return StepResult(messages=[], reward=0.0, terminated=True, info=info)
        if not calls:
            info["tool_errors"] = 0
            return StepResult(messages=[], reward=0.0, terminated=True, info=info)
        messages: list[Message] = []
        for c in calls[: self.max_calls_per_turn]:
            out = await self.run_call(c)
            messages.append(self.format.tool_result_message(c.name or "unknown", out))
        extra = calls[self.max_calls_per_turn :]
        for c in extra:
            c.error = c.error or f"not run: more than {self.max_calls_per_turn} calls in one turn"
        if extra:
            note = f"Error: at most {self.max_calls_per_turn} tool calls per turn; {len(extra)} ignored"
            messages.append(self.format.tool_result_message("unknown", note))
        info["tool_errors"] = sum(c.error is not None for c in calls)
        return StepResult(messages=messages, reward=0.0, terminated=False, info=info)


async def replay_actions(
    env: Env, task: Task, actions: Sequence[str], *, seed: int | None = None
) -> tuple[list[Message], list[StepResult]]:
    """Play fixed assistant actions through ``env`` (e.g. a demonstration for SFT data).

    Returns the whole conversation (reset messages, then each action as an ``assistant`` message
    followed by the step's messages) and the step results. Stops early when the episode ends.
    """
    messages, _ = await env.reset(task, seed=seed)
    messages = list(messages)
    results: list[StepResult] = []
    for action in actions:
        res = await env.step(action)
        messages.append({"role": "assistant", "content": action})
        messages.extend(res.messages)
        results.append(res)
        if res.terminated or res.truncated:
            break
    return messages, results
