"""BFCL (Berkeley Function Calling Leaderboard) as an env: ``env=bfcl tasks.source=<category>``.

Data, schemas and splits: :mod:`envs.tasks.bfcl_data` (the ``bfcl-eval`` package's data files,
installed with ``pip install --no-deps bfcl-eval``); scoring: :mod:`envs.tasks.bfcl_check` (our
own checker to BFCL's documented AST and multi-turn semantics).

Single-turn categories (``simple_python``, ``multiple``, ``parallel``, ``parallel_multiple``,
``irrelevance``, the ``live_*`` ones, ``simple_java``, ``simple_javascript``): one step. The
model's calls are parsed with the tool-call format and checked against the possible answers
(not executed: BFCL has no backends for them); the episode ends after the first action.
``info["success"]`` is the verdict, the step reward is 1.0 / 0.0 and ``info["check"]`` says why.

Multi-turn categories (``multi_turn_base``, ``multi_turn_long_context``, ``multi_turn_miss_func``,
``multi_turn_miss_param``): the episode plays the entry's user turns. Within a user turn the
model calls functions (each step's well-formed calls run, in order, against this episode's own
instances of the package's API classes; results come back as tool messages) until it replies
without a call, which ends the turn (as does ``max_steps_per_turn``, 20 as in BFCL). At the end
of each user turn the ground truth of that turn runs on a second, ground-truth instance set and
BFCL's per-turn check compares states and execution results (:func:`~envs.tasks.bfcl_check.
turn_check`): that step's reward is 1.0 when the turn passes, else 0.0, with ``info["turn"]``,
``info["turn_passed"]`` and ``info["check"]``; the next user turn comes back as the observation.
After the last turn the episode terminates with ``info["success"]`` = every turn passed (BFCL's
verdict) and ``info["score"]`` = the share of turns passed. In ``multi_turn_miss_func``, a
held-out function's schema arrives as a user message at the turn that adds it (BFCL adds the
doc to the tools; the prompt here is fixed at reset).

Every env object builds fresh instances at ``reset``: the package's own executor caches
instances in module globals keyed by model name and entry id, which would let two concurrent
rollouts of one entry share a file system; it is not used.

Demonstrations (cold start): single turn, the first option of every possible answer as calls in
one action (a refusal for ``irrelevance``); multi turn, per user turn one action with the
turn's ground-truth calls and a short closing reply (a refusal for turns without ground truth).
"""

from __future__ import annotations

from typing import Any

from envs.base import StepResult, register_env
from envs.formats import ToolCallFormat, compact_schema, get_format
from envs.tasks.bfcl_check import ApiSession, canonical_name, check_single_turn, turn_check
from envs.tasks.bfcl_data import (
    SPLITS,
    bfcl_categories,
    function_docs,
    is_multi_turn,
    make_tasks,
    method_parameters,
    parse_call,
    tool_schema,
)
from rl.types import Message, Task, ToolCall

__all__ = ["BFCLEnv", "SPLITS", "bfcl_categories", "make_tasks"]

SINGLE_TURN_INSTRUCTIONS = (
    "You are an expert in composing function calls. Answer the user's request by calling the "
    "functions below; make several calls in one reply when the request asks for several things. "
    "If none of the functions fits the request, say so and call nothing."
)
MULTI_TURN_INSTRUCTIONS = (
    "You act for the user with the functions below. Call functions to do what the user asks; "
    "you will see their results. When the request is done, or cannot be done with these "
    "functions, reply in plain text without a call to end your turn."
)
REFUSAL = "None of the available functions can do this."
TURN_DONE = "Done."
NEW_FUNCTIONS = "I have added functions you can use:\n{schemas}\nPlease continue with my request."


def _user(text: str) -> Message:
    return {"role": "user", "content": text}


@register_env("bfcl")
class BFCLEnv:
    """BFCL single- and multi-turn function calling (see the module docstring)."""

    def __init__(self, tool_format: str = "hermes-prompt", *, max_steps_per_turn: int = 20,
                 max_calls_per_step: int = 32, max_output_chars: int = 4000) -> None:
        if max_steps_per_turn < 1 or max_calls_per_step < 1:
            raise ValueError("env.kwargs max_steps_per_turn and max_calls_per_step must be >= 1")
        self.format: ToolCallFormat = get_format(tool_format)
        self.max_steps_per_turn = max_steps_per_turn
        self.max_calls_per_step = max_calls_per_step
        self.max_output_chars = max_output_chars
        self.tools: list[dict[str, Any]] = []  # the task's functions, set by reset
        self.task: Task | None = None
        self.done = True
        # multi-turn episode state
        self.session: ApiSession | None = None
        self.truth: ApiSession | None = None
        self.turn = 0
        self.steps_in_turn = 0
        self.calls_in_turn = 0
        self.model_results: list[str] = []
        self.passed: list[bool] = []

    # -- reset --------------------------------------------------------------------------------

    async def reset(self, task: Task, *, seed: int | None = None) -> tuple[list[Message], dict]:
        data = task.data
        if "category" not in data or "turns" not in data:
            raise ValueError(f"task {task.id} is not a BFCL task (no data['category'/'turns'])")
        self.task, self.done = task, False
        multi = is_multi_turn(data["category"])
        if multi:
            missed = {n for names in data.get("missed_function", {}).values() for n in names}
            docs = [d for c in data["involved_classes"] for d in function_docs(c)
                    if d["name"] not in missed]
            self.tools = [tool_schema(d) for d in docs]
            self.session = ApiSession.create(data["involved_classes"], data["initial_config"],
                                             data.get("long_context", False))
            self.truth = ApiSession.create(data["involved_classes"], data["initial_config"],
                                           data.get("long_context", False))
            self.turn = self.steps_in_turn = self.calls_in_turn = 0
            self.model_results, self.passed = [], []
        else:
            self.tools = [tool_schema(d, data["language"]) for d in data["functions"]]
        instructions = MULTI_TURN_INSTRUCTIONS if multi else SINGLE_TURN_INSTRUCTIONS
        first = data["turns"][0]
        extra_system = [m["content"] for m in first if m.get("role") == "system"]
        system = "\n".join(p.strip() for p in [instructions, *extra_system,
                                               self.format.system_prompt(self.tools)] if p.strip())
        messages: list[Message] = [{"role": "system", "content": system}]
        messages += [_user(m["content"]) for m in first if m.get("role") != "system"]
        return messages, {"task_id": task.id, "category": data["category"]}

    # -- step ---------------------------------------------------------------------------------

    async def step(self, action_text: str) -> StepResult:
        if self.task is None or self.done:
            raise RuntimeError("step() before reset() or after the episode ended")
        parsed = self.format.parse(action_text)
        if not is_multi_turn(self.task.data["category"]):
            return self._single(parsed.tool_calls, parsed.answer)
        return self._multi(parsed.tool_calls, parsed.answer)

    def _single(self, calls: list[ToolCall], answer: str | None) -> StepResult:
        assert self.task is not None
        functions = self.task.data["functions"]
        names = {f["name"] for f in functions}
        malformed = sum(c.error is not None for c in calls)  # did not parse
        good = []
        for c in calls:
            if c.error is None:
                c.name = canonical_name(c.name, functions)
                if c.name not in names:
                    c.error = f"unknown function {c.name!r}"
                good.append({"name": c.name, "arguments": c.arguments})
        # BFCL decodes the whole reply: a call to an unknown name is still a (wrong) call.
        res = check_single_turn(good, malformed, self.task.data)
        self.done = True
        info = {"tool_calls": calls, "final_answer": answer, "success": res.success,
                "check": res.reason, "tool_errors": sum(c.error is not None for c in calls)}
        return StepResult([], 1.0 if res.success else 0.0, terminated=True, info=info)

    def _multi(self, calls: list[ToolCall], answer: str | None) -> StepResult:
        assert self.task is not None and self.session is not None
        messages: list[Message] = []
        info: dict[str, Any] = {"tool_calls": calls, "final_answer": answer}
        if calls:
            self.steps_in_turn += 1
            for i, c in enumerate(calls):
                if i >= self.max_calls_per_step:
                    c.error = c.error or f"not run: more than {self.max_calls_per_step} calls"
                    continue
                if c.error is not None:
                    out = f"Error: {c.error}"
                else:
                    self.calls_in_turn += 1
                    out, ran = self.session.call(c.name, c.arguments)
                    self.model_results.append(out)
                    if not ran:
                        c.error = out
                messages.append(self.format.tool_result_message(c.name or "unknown",
                                                                self._cap(out)))
        info["tool_errors"] = sum(c.error is not None for c in calls)
        if calls and self.steps_in_turn < self.max_steps_per_turn:
            return StepResult(messages, 0.0, info=info)
        return self._end_turn(messages, info)

    def _end_turn(self, messages: list[Message], info: dict[str, Any]) -> StepResult:
        assert self.task is not None and self.session is not None and self.truth is not None
        data = self.task.data
        truth_calls = data["ground_truth"][self.turn]
        params = method_parameters(tuple(data["involved_classes"]))
        truth_results = []
        for text in truth_calls:
            call = parse_call(text, params)
            truth_results.append(self.truth.call(call["name"], call["arguments"])[0])
        why = turn_check(self.session, self.truth, self.model_results, truth_results,
                         len(truth_calls), self.calls_in_turn)
        self.passed.append(why is None)
        info.update(turn=self.turn, turn_passed=why is None, check=why or "")
        self.turn += 1
        self.steps_in_turn = self.calls_in_turn = 0
        reward = 1.0 if why is None else 0.0
        if self.turn >= len(data["turns"]):
            self.done = True
            info["success"] = all(self.passed)
            info["turns_passed"] = sum(self.passed)
            info["score"] = sum(self.passed) / len(self.passed)  # graded: share of turns passed
            return StepResult(messages, reward, terminated=True, info=info)
        messages = messages + self._turn_messages(self.turn)
        return StepResult(messages, reward, info=info)

    def _turn_messages(self, turn: int) -> list[Message]:
        assert self.task is not None
        data = self.task.data
        out: list[Message] = []
        added = data.get("missed_function", {}).get(str(turn), [])
        if added:
            docs = {d["name"]: d for c in data["involved_classes"] for d in function_docs(c)}
            schemas = "\n".join(compact_schema(tool_schema(docs[n])) for n in added)
            out.append(_user(NEW_FUNCTIONS.format(schemas=schemas)))
        out += [_user(m["content"]) for m in data["turns"][turn]]
        return out

    def _cap(self, text: str) -> str:
        if len(text) <= self.max_output_chars:
            return text
        cut = len(text) - self.max_output_chars
        return f"{text[: self.max_output_chars]}... [truncated {cut} chars]"

    async def close(self) -> None:
        self.task, self.session, self.truth, self.done = None, None, None, True

    # -- tasks and demonstrations ---------------------------------------------------------------

    def example_tasks(self, n: int, *, seed: int = 0) -> list[Task]:
        return make_tasks("multi_turn_base", "test", n, seed)

    def demonstration(self, task: Task) -> list[str]:
        """Reference actions (module docstring); replaying them scores 1.0, except in the
        entries of :data:`envs.tasks.bfcl_data.UNSATISFIABLE` (no call satisfies them)."""
        data, fmt = task.data, self.format
        if not is_multi_turn(data["category"]):
            if data["kind"] == "irrelevance":
                return [REFUSAL]
            refs = data["reference_calls"] or [{"name": data["functions"][0]["name"],
                                                "arguments": {}}]  # relevance: any call
            return ["\n".join(fmt.format_call(r["name"], r["arguments"]) for r in refs)]
        params = method_parameters(tuple(data["involved_classes"]))
        actions = []
        for truth in data["ground_truth"]:
            if truth:
                calls = [parse_call(c, params) for c in truth]
                k = self.max_calls_per_step
                actions += ["\n".join(fmt.format_call(c["name"], c["arguments"])
                                      for c in calls[i:i + k]) for i in range(0, len(calls), k)]
                actions.append(TURN_DONE)
            else:
                actions.append(REFUSAL)
        return actions

