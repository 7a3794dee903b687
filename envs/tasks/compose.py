"""Compositional multi-turn function calling, BUTTON-style and procedural (no LLM needed).

Atomic functions (:mod:`envs.tasks.compose_lib`: a store / members / cities world with a stateful
backend) are composed bottom-up into tasks (the generator: :mod:`envs.tasks.compose_data`):

- **sequential**: a call's output is an argument of the next (``find_member("Ana") -> M-104``,
  ``member_city("M-104") -> Oslo``, ``rain_chance("Oslo", "Friday")``); a chain is a tree of
  height ``1..depth``, so ``create_shipment`` may need both ``lookup_sku`` and ``find_member``;
- **parallel**: ``1..width`` independent chains in one user turn; calls of the same level go in one
  assistant message (LLMCompiler-style), the demonstration writes them that way;
- **multi-turn**: ``turns`` user turns per task over one backend, so state carries over (a
  restock in turn 1 changes the stock read in turn 2);
- **distractors**: ``distractors`` library functions the task does not need are offered too;
- **unanswerable** turns (probability ``unanswerable``): a request for a library function that is
  not offered, or for something outside the library. The right behaviour is no call and a reply.

Episode: ``reset`` gives the system prompt (the task's tools) and user turn 1. A step with tool
calls runs them (observations); a step without calls (plain text or ``<answer>``) is the reply
that closes the user turn: the turn is checked, and the next user turn follows (or the episode
ends, ``terminated``). More call messages in one user turn than its reference calls + 2:
``truncated`` (one call per message is allowed; merging independent calls is not required).

Turn check (the closing step's ``reward`` is ``turn_score / turns``, so a perfect episode sums
to 1.0; ``info["turn_passed"]``; at the end ``info["success"]`` = every turn passed):

- calls: the turn's executed calls against its reference calls, order-free, by maximum-weight
  matching (:func:`envs.matching.match_calls`); omitted optional arguments count as their default.
  ``call_score = sum(similarity of matched pairs) / max(calls attempted, reference calls)``;
  exact when every reference is matched with similarity 1 and nothing else was attempted
  (malformed and failed calls count as attempts and earn nothing). The similarity is 1 for the
  right call, less than 0.5 for the right tool with partly right arguments and 0 for the right
  tool alone (issue 23: a right-name call with garbage arguments used to earn 0.5, so a wrong
  extra call raised the score). Unanswerable turns: exact iff no call at all;
- state: the backend after the turn equals a copy of the backend at the turn's start with the
  reference calls replayed on it (per-turn, so one wrong turn does not fail every later one);
- reply: non-empty and mentions the result of every question in the turn (numbers by value);
- ``turn_score = call_score * (1 + state_ok + reply_ok) / 3`` (no right call, no credit);
  passed = exact and state_ok and reply_ok.

``Task.data["reference_calls"]`` (all turns, in order) feeds ``rewards/``' ``call_match``.

Tasks: ``make_tasks("mixed", split, n, seed, depth=, width=, turns=, distractors=,
unanswerable=)``: task ``k`` depends only on ``(seed, k, knobs)``; the split hashes the turn texts
(``envs.tasks.draw.split_of``). User turns come from templates, or from a frozen LLM conditioned on
the hidden goal (``user_model``, :mod:`envs.tasks.llm_user`).

Reused: ``envs.matching`` (Hungarian call matching), ``envs.base.ToolEnv`` (parsing, validation
against the typed schemas, timeouts, error observations), transformers' ``get_json_schema``.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import asdict
from typing import Any

from envs.base import StepResult, ToolEnv, ToolError, register_env
from envs.formats import ToolCallFormat, get_format
from envs.matching import match_calls
from envs.tasks.compose_data import CANNOT, INSTRUCTIONS, Knobs, one_task
from envs.tasks.compose_lib import (
    FUNCTIONS,
    Backend,
    schema,
    tools_for,
    with_defaults,
)
from envs.tasks.draw import SPLITS, Candidate, draw_tasks
from rl.types import Message, Task, ToolCall


def make_tasks(source: str = "mixed", split: str = "train", n: int = 100, seed: int = 0,
               **knobs: Any) -> list[Task]:
    """Compositional tasks (module docstring). ``data``: ``world``, ``tools`` (offered function
    names, in prompt order), ``turns`` (text, steps of reference calls, answers, required
    literals), ``reference_calls``, ``knobs``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got '{split}'")
    if source != "mixed":
        raise KeyError(f"unknown compose task source {source!r}; valid names: 'mixed' "
                       "(difficulty goes in tasks.kwargs: depth, width, turns, distractors, "
                       "unanswerable)")
    try:
        k = Knobs(**knobs)
    except TypeError as e:
        raise ValueError(f"compose tasks.kwargs: {e}") from None
    tag = json.dumps(asdict(k), sort_keys=True)

    def candidate(i: int) -> Candidate | None:
        task = one_task(random.Random(f"compose/{seed}/{i}/{tag}"), k)
        if task is None:
            return None
        key = json.dumps([t["text"] for t in task["turns"]])
        return key, f"compose/{key}", lambda: Task(
            id=f"compose-{split}-{seed}-{i}", prompt=task["turns"][0]["text"], answer=None,
            data=task)

    tasks = draw_tasks(candidate, split, n, tries=50 * n + 1000)
    if len(tasks) < n:
        raise ValueError(f"compose: only {len(tasks)} unique {split} tasks for knobs {tag}")
    return tasks


# ---------------------------------------------------------------------------------------------
# Checks

_NUM_RE = re.compile(r"-?\d+(?:\.\d+)?")


def mentions(reply: str, value: Any) -> bool:
    """The reply states ``value``: a number by value (``42.50`` states ``42.5``), else the text
    as whole words, case-insensitively ("Eve" is not in "every")."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return any(math.isclose(float(x), float(value), rel_tol=1e-9, abs_tol=1e-9)
                   for x in _NUM_RE.findall(reply.replace(",", "")))
    return re.search(rf"(?<!\w){re.escape(str(value))}(?!\w)", reply, re.IGNORECASE) is not None


def _as_ref(call: ToolCall) -> dict[str, Any]:
    return with_defaults({"name": call.name or "", "arguments": dict(call.arguments or {})})


def check_turn(turn: dict[str, Any], start: Backend, live: Backend, calls_run: list[ToolCall],
               attempted: int, reply: str) -> dict[str, Any]:
    """Score one user turn (module docstring). ``start``: the backend at the turn's start (it
    is consumed: the reference calls are replayed on it); ``calls_run``: the turn's calls that
    executed; ``attempted``: every call the model wrote in the turn, failed ones included."""
    refs = [c for step in turn["steps"] for c in step]
    outputs: dict[tuple[int, int], Any] = {}
    for i, step in enumerate(turn["steps"]):
        for j, c in enumerate(step):
            try:
                outputs[i, j] = getattr(start, c["name"])(**c["arguments"])
            except ToolError:  # the live state no longer allows it (an earlier wrong turn)
                outputs[i, j] = None
    expected = [outputs[i, j] for i, j in turn["answer_calls"]]
    if refs:
        preds = [_as_ref(c) for c in calls_run]
        pairs = match_calls(preds, [with_defaults(r) for r in refs])
        n_exact = sum(w == 1.0 for _, _, w in pairs)
        call_score = sum(w for _, _, w in pairs) / max(attempted, len(refs))
        exact = n_exact == len(refs) == attempted
    else:
        call_score = 1.0 if attempted == 0 else 0.0
        exact = attempted == 0
    state_ok = live.state() == start.state()
    reply_ok = bool(reply.strip()) and all(v is not None and mentions(reply, v) for v in expected)
    # scaled by the call score: a turn that called nothing it should have earns nothing for an
    # untouched (read-only) state or a reply
    score = call_score * (1.0 + float(state_ok) + float(reply_ok)) / 3
    return {"turn_score": score, "turn_passed": bool(exact and state_ok and reply_ok),
            "call_score": call_score, "state_ok": state_ok, "reply_ok": reply_ok}


# ---------------------------------------------------------------------------------------------
# The env


@register_env("compose")
class ComposeEnv:
    """Compositional multi-turn function calling (module docstring).

    ``user_model``: None (the templated user turns) or an object with
    ``async reply(goal: str, conversation: list[Message]) -> str`` (e.g.
    :class:`envs.tasks.llm_user.LLMUser`), which writes each user turn from its hidden goal.
    """

    def __init__(self, tool_format: str = "hermes-prompt", *, tool_timeout_s: float = 10.0,
                 max_calls_per_turn: int = 4, user_model: Any = None) -> None:
        self.format: ToolCallFormat = get_format(tool_format)
        self.tools: list[dict[str, Any]] = [schema(n) for n in FUNCTIONS]  # until reset
        self.timeout_s, self.max_calls = tool_timeout_s, max_calls_per_turn
        if user_model is not None and not callable(getattr(user_model, "reply", None)):
            raise TypeError(f"user_model must have an async reply(goal, conversation) method, "
                            f"got {type(user_model).__name__}")
        self.user_model = user_model
        self.task: Task | None = None
        self.done = True

    # -- episode -----------------------------------------------------------------------------

    async def reset(self, task: Task, *, seed: int | None = None) -> tuple[list[Message], dict]:
        try:
            world, names, turns = task.data["world"], task.data["tools"], task.data["turns"]
        except (KeyError, TypeError) as e:
            raise ValueError(f"task {task.id} is not a compose task: missing {e}") from None
        if not turns:
            raise ValueError(f"task {task.id}: no user turns")
        self.task, self.turns = task, turns
        self.backend = Backend(world)
        self.tool_env = ToolEnv(tools_for(self.backend, list(names)), self.format,
                                timeout_s=self.timeout_s, max_calls_per_turn=self.max_calls)
        self.tools = self.tool_env.tools
        self.history: list[Message] = []  # the conversation without the system prompt
        self.passed: list[bool] = []
        self.user_fallbacks = 0
        self.done = False
        self._start_turn(0)
        first = {"role": "user", "content": await self._user_text(0)}
        self.history.append(first)
        system = {"role": "system", "content": self.tool_env.system_prompt(INSTRUCTIONS)}
        return [system, first], {"task_id": task.id, "turns": len(turns),
                                 "tools": list(names)}

    def _start_turn(self, u: int) -> None:
        self.u, self.actions, self.attempted = u, 0, 0
        self.calls_run: list[ToolCall] = []
        self.turn_start = self.backend.clone()

    async def _user_text(self, u: int) -> str:
        turn = self.turns[u]
        if self.user_model is None:
            return str(turn["text"])
        goal = (f"{turn['text']}\n(Say this request in your own words, keeping every name, "
                "code and number exactly.)")
        text = str(await self.user_model.reply(goal, list(self.history))).strip()
        if not text or not all(mentions(text, v) for v in turn["required"]):
            self.user_fallbacks += 1  # the user model dropped a detail: the task needs it
            return str(turn["text"])
        return text

    async def step(self, action_text: str) -> StepResult:
        if self.task is None or self.done:
            raise RuntimeError("step() before reset() or after the episode ended")
        parsed = self.format.parse(action_text)
        calls = parsed.tool_calls
        self.history.append({"role": "assistant", "content": action_text})
        info: dict[str, Any] = {"tool_calls": calls, "final_answer": None, "user_turn": self.u}
        if calls and parsed.answer is None:
            return await self._run_calls(calls, info)
        for c in calls:
            c.error = c.error or "not run: the turn also gave a final answer"
        self.attempted += len(calls)
        reply = parsed.answer if parsed.answer is not None else parsed.content
        verdict = self._close_turn(reply)
        info.update(tool_errors=len(calls), final_answer=reply, **verdict)
        reward = verdict["turn_score"] / len(self.turns)
        if self.u + 1 < len(self.turns):
            self._start_turn(self.u + 1)
            msg = {"role": "user", "content": await self._user_text(self.u)}
            self.history.append(msg)
            return StepResult([msg], reward, info=info)
        self.done = True
        info.update(success=all(self.passed), turns_passed=sum(self.passed),
                    user_fallbacks=self.user_fallbacks)
        return StepResult([], reward, terminated=True, info=info)

    async def _run_calls(self, calls: list[ToolCall], info: dict[str, Any]) -> StepResult:
        self.actions += 1
        self.attempted += len(calls)
        messages: list[Message] = []
        for c in calls[: self.max_calls]:
            out = await self.tool_env.run_call(c)
            messages.append(self.format.tool_result_message(c.name or "unknown", out))
            if c.error is None:
                self.calls_run.append(c)
        for c in calls[self.max_calls:]:
            c.error = c.error or f"not run: more than {self.max_calls} calls in one turn"
        if len(calls) > self.max_calls:
            messages.append(self.format.tool_result_message(
                "unknown", f"Error: at most {self.max_calls} tool calls per turn"))
        info["tool_errors"] = sum(c.error is not None for c in calls)
        self.history.extend(messages)
        cap = sum(len(step) for step in self.turns[self.u]["steps"]) + 2
        if self.actions > cap:  # looping on calls
            verdict = self._close_turn("")
            self.done = True
            info.update(**verdict, success=False, turns_passed=sum(self.passed),
                        user_fallbacks=self.user_fallbacks)
            return StepResult(messages, verdict["turn_score"] / len(self.turns), truncated=True,
                              info=info)
        return StepResult(messages, 0.0, info=info)

    def _close_turn(self, reply: str) -> dict[str, Any]:
        verdict = check_turn(self.turns[self.u], self.turn_start, self.backend, self.calls_run,
                             self.attempted, reply)
        self.passed.append(verdict["turn_passed"])
        return verdict

    async def close(self) -> None:
        self.task, self.done = None, True

    # -- tasks and demonstrations --------------------------------------------------------------

    def example_tasks(self, n: int, *, seed: int = 0) -> list[Task]:
        return make_tasks("mixed", "train", n, seed)

    def demonstration(self, task: Task) -> list[str]:
        """Per user turn: one message per level of the composition (independent calls
        together), then a reply stating every question's result; an unanswerable turn gets a
        refusal and no call."""
        actions: list[str] = []
        for turn in task.data["turns"]:
            for step in turn["steps"]:
                actions.append("\n".join(self.format.format_call(c["name"], dict(c["arguments"]))
                                         for c in step))
            if not turn["steps"]:
                actions.append(CANNOT)
            elif turn["answers"]:
                actions.append("Here you go: " + "; ".join(_fmt(v) for v in turn["answers"])
                               + ".")
            else:
                actions.append("Done.")
        return actions


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


# ---------------------------------------------------------------------------------------------
# Scripted players (BENCHMARKS.md): what each part of the composition is worth


def _levels(env: ComposeEnv, task: Task, *, merge: bool = True, upto: int = 99,
            reply: str | None = None) -> list[str]:
    out: list[str] = []
    demo = iter(env.demonstration(task))
    for turn in task.data["turns"]:
        for i, step in enumerate(turn["steps"]):
            action = next(demo)
            if i < upto:
                out += [action] if merge else [env.format.format_call(c["name"], c["arguments"])
                                               for c in step]
        closing = next(demo)
        out.append(closing if reply is None or not turn["steps"] else reply)
    return out


SCRIPTED_PLAYERS: dict[str, Any] = {
    "the demonstration": lambda env, t: env.demonstration(t),
    "demonstration, one call per message (no parallel merging)":
        lambda env, t: _levels(env, t, merge=False),
    'demonstration calls, reply "Done." (no results stated)':
        lambda env, t: _levels(env, t, reply="Done."),
    "first level of calls only, then the demonstration's reply":
        lambda env, t: _levels(env, t, upto=1),
    "refuse every turn": lambda env, t: [CANNOT] * len(t.data["turns"]),
}


def print_baselines(n: int = 500, seed: int = 0, **knobs: Any) -> None:
    """A markdown table of the scripted players on ``n`` held-out tasks."""
    import asyncio

    from envs.base import replay_actions

    async def play() -> None:
        tasks = make_tasks("mixed", "test", n, seed, **knobs)
        print("| player | success | user turns passed | mean episode env reward |")
        print("|---|---|---|---|")
        for name, player in SCRIPTED_PLAYERS.items():
            wins = passed = turns = 0
            reward = 0.0
            for task in tasks:
                env = ComposeEnv()
                _, res = await replay_actions(env, task, player(env, task))
                wins += bool(res[-1].info.get("success"))
                passed += sum(bool(r.info.get("turn_passed")) for r in res)
                turns += len(task.data["turns"])
                reward += sum(r.reward for r in res)
            print(f"| {name} | {wins / n:.3f} | {passed / turns:.3f} | {reward / n:.3f} |")

    asyncio.run(play())
