"""Write a function against hidden unit tests, with a persistent Python session: ``env=code``.

Each episode owns one persistent sandbox session (``envs.sandbox``: a sandboxed interpreter
whose variables survive between calls; ARTIST / ReTool-style code interpreter). The ``python``
tool runs the model's code in that session, so a function defined in one turn can be called in
the next. The episode ends when the model answers (``<answer>...</answer>``) or replies without a
tool call; ```python blocks in that final message are run in the session first (small models
write their solution that way), then the task's unit tests run **in the same session**, against
whatever the model defined there.

Scoring: ``reward`` = ``info["score"]`` = the share of tests passed, ``info["success"]`` = all of
them, ``info["tests_passed"]`` / ``info["tests_total"]``. Each test calls the function with
stdout captured (so its prints cannot fake a result), compares after a JSON round trip and prints
its verdict behind a random marker the model's code never saw. A test that hangs ends the call at
``test_timeout_s``: it and the tests after it fail, the ones before it keep their verdict.
Limit: the tests share the interpreter the model's code ran in, so code that deliberately
patches ``builtins.print`` or ``json`` in its session could forge verdicts (the marker stops
printed and accidental forgeries, not a hostile interpreter). Where reward hacking matters,
watch for it in samples; replaying the model's calls into a fresh sandbox process is the fix.

Session lifetime: opened lazily by the first call of an episode, closed at the episode's end, on
``close()`` (the agent loop calls it in a ``finally``, also when a turn or token limit or a
cancellation cuts the episode), on the next ``reset``, and when the env's own wall-clock limit
``episode_time_s`` cuts the episode (``truncated``, score 0). That limit is off by default: it
counts from ``reset`` and so includes the model's generation time, which on a loaded CPU
exceeded 300 s per turn in a batched eval (every episode was cut); set it per machine.

Tasks (:mod:`envs.tasks.code_data`): ``make_tasks("mixed", split, n, seed, n_tests=5)``; the prompt
states the signature, the behaviour and one example; the split hashes the prompt.
"""

from __future__ import annotations

import json
import random
import re
import secrets
import time
import uuid
from typing import Any

from envs.base import StepResult, Tool, ToolEnv, register_env
from envs.formats import ToolCallFormat, get_format
from envs.sandbox import get_sandbox
from envs.tasks.code_data import FAMILIES, make_instance
from envs.tasks.math import SPLITS, split_of
from envs.tools.python import execute
from rl.types import Message, Task

INSTRUCTIONS = ("Write the Python function the user asks for. Use the python tool to define it and "
                "try it: the interpreter keeps your functions and variables between calls. When "
                "it works, reply <answer>done</answer>; the function you defined is then checked "
                "with hidden unit tests.")

_FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.S)


def make_tasks(source: str = "mixed", split: str = "train", n: int = 100, seed: int = 0,
               n_tests: int = 5) -> list[Task]:
    """``n`` tasks (module docstring); ``data``: family, params, fn, signature, solution,
    example ``[args, expected]``, tests ``[[args, expected], ...]``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got '{split}'")
    names = [f.name for f in FAMILIES]
    if source != "mixed" and source not in names:
        raise KeyError(f"unknown code task source {source!r}; valid names: "
                       f"{['mixed', *names]}")
    if not 1 <= n_tests <= 50:
        raise ValueError(f"code tasks.kwargs.n_tests must be 1..50, got {n_tests}")
    families = FAMILIES if source == "mixed" else [f for f in FAMILIES if f.name == source]
    tasks: list[Task] = []
    seen: set[str] = set()
    for k in range(50 * n + 1000):
        if len(tasks) == n:
            break
        rng = random.Random(f"code/{seed}/{k}/{source}/{n_tests}")
        data = make_instance(rng.choice(families), rng, n_tests)
        args, want = data["example"]
        call = f"{data['fn']}({', '.join(repr(a) for a in args)})"
        prompt = (f"Write a Python function `{data['signature']}` that {data['description']}.\n"
                  f"Example: {call} == {want!r}")
        if prompt in seen or split_of(f"code/{prompt}") != split:
            continue
        seen.add(prompt)
        tasks.append(Task(id=f"code-{split}-{seed}-{k}", prompt=prompt, answer=None, data=data))
    if len(tasks) < n:
        raise ValueError(f"code: only {len(tasks)} unique {split} tasks")
    return tasks


def unit_test_program(fn: str, tests: list[list[Any]], marker: str) -> str:
    """The program that runs ``tests`` against ``fn`` in the session; one line per test:
    ``<marker> <i> <1|0>``."""
    return f"""
import contextlib as _tl_ctx, io as _tl_io, json as _tl_json
for _tl_i, (_tl_args, _tl_want) in enumerate(_tl_json.loads({json.dumps(json.dumps(tests))})):
    try:
        with _tl_ctx.redirect_stdout(_tl_io.StringIO()), _tl_ctx.redirect_stderr(_tl_io.StringIO()):
            _tl_got = _tl_json.loads(_tl_json.dumps({fn}(*_tl_args)))
        _tl_ok = _tl_got == _tl_want and type(_tl_got) is type(_tl_want)
    except BaseException:
        _tl_ok = False
    print("{marker}", _tl_i, int(_tl_ok), flush=True)
"""


def parse_verdicts(stdout: str, marker: str, n: int) -> list[bool]:
    """Per-test verdicts from the test program's output; a missing line is a failure."""
    ok = [False] * n
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == marker and parts[1].isdigit() and int(parts[1]) < n:
            ok[int(parts[1])] = parts[2] == "1"
    return ok


@register_env("code")
class CodeEnv:
    """Function writing with a persistent Python session per episode (module docstring)."""

    def __init__(self, tool_format: str = "hermes-prompt", *, call_timeout_s: float = 5.0,
                 test_timeout_s: float = 10.0, episode_time_s: float | None = None,
                 max_calls_per_turn: int = 4, max_output_chars: int = 2000) -> None:
        self.format: ToolCallFormat = get_format(tool_format)
        self.call_timeout_s, self.test_timeout_s = call_timeout_s, test_timeout_s
        self.episode_time_s = episode_time_s
        self.session: str | None = None
        self.task: Task | None = None
        self.deadline = float("inf")
        self.calls = 0

        async def python(code: str) -> str:
            """Run Python code in your persistent interpreter and return what it prints (the
            value of a last bare expression is shown too).

            Args:
                code: Python code; functions and variables stay defined for later calls.
            """
            return await self._run(code)

        # The ToolEnv's own timeout is a backstop above the sandbox's per-call one.
        self.tool_env = ToolEnv([Tool.from_function(python)], self.format,
                                timeout_s=call_timeout_s + 10.0,
                                max_calls_per_turn=max_calls_per_turn,
                                max_output_chars=max_output_chars)
        self.tools: list[dict[str, Any]] = self.tool_env.tools
        self.system_prompt = self.tool_env.system_prompt(INSTRUCTIONS)

    async def _run(self, code: str, timeout_s: float | None = None) -> str:
        if self.task is None:
            return "Error: no episode is running"
        if self.session is None:
            self.session = f"code-{uuid.uuid4().hex[:16]}"
        self.calls += 1
        return await execute(code, timeout_s=timeout_s or self.call_timeout_s,
                             session=self.session)

    async def _close_session(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            await get_sandbox().close_session(session)

    async def reset(self, task: Task, *, seed: int | None = None) -> tuple[list[Message], dict]:
        if not isinstance(task.data, dict) or not {"fn", "tests"} <= task.data.keys():
            raise ValueError(f"task {task.id} is not a code task: needs data['fn'] and "
                             "data['tests']")
        await self._close_session()
        self.task, self.calls = task, 0
        limit = self.episode_time_s
        self.deadline = time.monotonic() + limit if limit is not None else float("inf")
        messages: list[Message] = [{"role": "system", "content": self.system_prompt},
                                   {"role": "user", "content": task.prompt}]
        return messages, {"task_id": task.id, "tests": len(task.data["tests"])}

    async def step(self, action_text: str) -> StepResult:
        if self.task is None:
            raise RuntimeError("step() before reset() or after the episode ended")
        if time.monotonic() > self.deadline:
            return await self._cut()
        parsed = self.format.parse(action_text)
        res = await self.tool_env.step(action_text)
        if not res.terminated:
            if time.monotonic() > self.deadline:  # the calls of this turn ran past the limit
                return await self._cut(res.messages, res.info)
            return res
        final = parsed.answer if parsed.answer is not None else parsed.content
        for block in _FENCE.findall(final or ""):  # code submitted in the final message
            await self._run(block)
        verdicts = await self._run_tests()
        await self._close_session()
        score = sum(verdicts) / len(verdicts)
        res.reward = score
        res.success, res.score = all(verdicts), score  # the typed verdict (envs.base.StepResult)
        res.info.update(score=score, success=all(verdicts), tests_passed=sum(verdicts),
                        tests_total=len(verdicts), python_calls=self.calls)
        self.task = None
        return res

    async def _run_tests(self) -> list[bool]:
        assert self.task is not None
        tests = self.task.data["tests"]
        marker = secrets.token_hex(8)
        out = await get_sandbox().run(unit_test_program(self.task.data["fn"], tests, marker),
                                      session=self._ensure_session(),
                                      timeout=self.test_timeout_s)
        return parse_verdicts(out.stdout, marker, len(tests))

    def _ensure_session(self) -> str:
        if self.session is None:  # no call was made: the tests fail in a fresh session
            self.session = f"code-{uuid.uuid4().hex[:16]}"
        return self.session

    async def _cut(self, messages: list[Message] | None = None,
                   info: dict[str, Any] | None = None) -> StepResult:
        await self._close_session()
        self.task = None
        info = {**(info or {}), "score": 0.0, "success": False, "time_limit": True}
        info.setdefault("tool_calls", [])
        return StepResult(messages or [], 0.0, truncated=True, info=info)

    async def close(self) -> None:
        await self._close_session()
        self.task = None

    def example_tasks(self, n: int, *, seed: int = 0) -> list[Task]:
        return make_tasks("mixed", "train", n, seed)

    def demonstration(self, task: Task) -> list[str]:
        """Define the reference solution, call it on the example in a second call (the
        session keeps the function), then answer."""
        args, _ = task.data["example"]
        call = f"{task.data['fn']}({', '.join(repr(a) for a in args)})"
        return [self.format.format_call("python", {"code": task.data["solution"]}),
                self.format.format_call("python", {"code": f"print({call})"}),
                self.format.format_answer("done")]
