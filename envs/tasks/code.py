"""Write a function against hidden unit tests, with a persistent Python session: ``env=code``.

Each episode owns one persistent sandbox session (``envs.sandbox``: a sandboxed interpreter
whose variables survive between calls; ARTIST / ReTool-style code interpreter). The ``python``
tool runs the model's code in that session, so a function defined in one turn can be called in
the next. The episode ends when the model answers (``<answer>...</answer>``) or replies without a
tool call; ```python blocks in that final message count as submitted code (small models write
their solution that way).

Scoring runs **outside the session**, in a fresh one-shot sandbox process: the env records every
code cell as it runs in the session (a cell that killed the interpreter, by a timeout, a limit or
a lost worker, drops the cells before it with the state it took down, as the session itself
did), appends the final message's blocks, and sends one program that replays those cells in a
new ``__main__`` (their output discarded; each cell under its own ``call_timeout_s`` alarm; an
exception ends only that cell), then calls the function on each test's **inputs** under its own
``test_timeout_s`` alarm and prints ``<marker> <i> <json of the result>`` (a random marker per
scoring call). The expected outputs never enter the sandbox: the env process parses the lines
and compares each result with the expected value after a JSON round trip of both, canonically
(``2.0`` is not ``2``, ``True`` is not ``1``, at any depth). A test with no line, with two lines
(a forged extra line spoils a test, it never passes one) or with a result that is not JSON
fails. A test that raises or hangs fails alone; only a hang that ignores the alarm (signal
handlers replaced, a blocking C call) runs into the whole program's wall limit, and then the
tests after it fail too.

Cost: one forked sandbox process per episode. Measured on the shared 2-core machine under load
(load average ~6; 30 test tasks, reference solutions): the final step took 12 ms median, 20 ms p90
(2-3 ms median when the tests ran in the session). A program over the sandbox's
``max_code_bytes`` (512 KiB of cells, JSON-escaped) is refused, and every test fails.

``reward`` = ``info["score"]`` = the share of tests passed, ``info["success"]`` = all of them,
``info["tests_passed"]`` / ``info["tests_total"]``, ``info["python_calls"]`` = cells submitted
(tool calls that ran plus final-message blocks).

What this stops: code that patches ``builtins.print``, ``json``, ``sys.stdout`` or ``os.write``,
prints lines with the marker (it can read it from the harness's frames), or returns an object
that compares equal to anything. Each can only spoil its own lines, since passing needs the
expected value and only the env process has it. What could still be gamed: a solution that
special-cases inputs it has seen (the prompt's example; the test inputs are visible in the
scoring process, so it can branch on them, but it still has to produce the right outputs);
reading the reference solutions of :mod:`envs.tasks.code_data` from inside the sandbox, which
works only where the isolation level lets the sandbox read the installed project (under the
``kernel`` level Landlock denies it: measured, ``Permission denied``); and the replay differs
from the session where the code is not deterministic (randomness, time, the files of a
different work dir). Watch samples for reward hacking all the same.

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
from envs.sandbox import ExecResult, get_sandbox
from envs.tasks.code_data import FAMILIES, make_instance
from envs.tasks.draw import SPLITS, Candidate, draw_tasks
from envs.tools.python import MAX_CODE_CHARS, execute
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

    def candidate(k: int) -> Candidate:
        rng = random.Random(f"code/{seed}/{k}/{source}/{n_tests}")
        data = make_instance(rng.choice(families), rng, n_tests)
        args, want = data["example"]
        call = f"{data['fn']}({', '.join(repr(a) for a in args)})"
        prompt = (f"Write a Python function `{data['signature']}` that {data['description']}.\n"
                  f"Example: {call} == {want!r}")
        return prompt, f"code/{prompt}", lambda: Task(id=f"code-{split}-{seed}-{k}",
                                                      prompt=prompt, answer=None, data=data)

    tasks = draw_tasks(candidate, split, n, tries=50 * n + 1000)
    if len(tasks) < n:
        raise ValueError(f"code: only {len(tasks)} unique {split} tasks")
    return tasks


# The scoring program. It runs in a fresh one-shot sandbox process: a prelude (saved references,
# a dup of stdout), the model's cells in a new ``__main__`` (their output discarded, each under its
# own alarm, an exception ends only that cell, as in the session), then one call per test input
# under its own alarm, printing ``<marker> <i> <json of the result>``. No expected value is in it.
_HARNESS = """
import builtins as _tl_b, json as _tl_j, os as _tl_o, signal as _tl_sg, sys as _tl_s, types as _tl_t
_tl_P = _tl_j.loads(__PAYLOAD__)
_tl_fd, _tl_dumps, _tl_write = _tl_o.dup(1), _tl_j.dumps, _tl_o.write


class _TLLate(BaseException):
    pass


def _tl_alarm(*_):
    raise _TLLate()


def _tl_limited(f, secs):
    _tl_sg.signal(_tl_sg.SIGALRM, _tl_alarm)
    _tl_sg.setitimer(_tl_sg.ITIMER_REAL, secs)
    try:
        return f()
    finally:
        _tl_sg.setitimer(_tl_sg.ITIMER_REAL, 0)


class _TLNull:
    def write(self, s):
        return len(s)

    def flush(self):
        pass


_tl_main = _tl_t.ModuleType("__main__")
_tl_main.__dict__["__builtins__"] = _tl_b
_tl_s.modules["__main__"] = _tl_main
_tl_s.stdout = _tl_s.stderr = _TLNull()
for _tl_i, _tl_c in enumerate(_tl_P["cells"]):
    try:
        _tl_limited(lambda: exec(compile(_tl_c, "<cell>", "exec"), _tl_main.__dict__),
                    _tl_P["cell_s"])
    except BaseException:
        pass
for _tl_i, _tl_args in enumerate(_tl_P["inputs"]):
    try:
        _tl_line = _tl_limited(lambda: _tl_dumps(_tl_main.__dict__[_tl_P["fn"]](*_tl_args)),
                               _tl_P["test_s"])
        _tl_write(_tl_fd, ("%s %d %s\\n" % (_tl_P["marker"], _tl_i, _tl_line)).encode())
    except BaseException:
        pass
"""


def scoring_program(cells: list[str], fn: str, inputs: list[list[Any]], marker: str, *,
                    cell_timeout_s: float, test_timeout_s: float) -> str:
    """The one-shot program that replays ``cells`` and prints ``fn(*args)`` for each of
    ``inputs`` as ``<marker> <i> <json>`` lines (module docstring). Only inputs go in."""
    payload = json.dumps({"cells": cells, "fn": fn, "inputs": inputs, "marker": marker,
                          "cell_s": cell_timeout_s, "test_s": test_timeout_s})
    return _HARNESS.replace("__PAYLOAD__", repr(payload))


_MISSING = object()


def parse_outputs(stdout: str, marker: str, n: int) -> list[Any]:
    """The ``n`` results printed behind ``marker``; ``_MISSING`` where a test printed no line,
    more than one line (a forged extra line spoils the test, never helps it), or invalid JSON."""
    lines: dict[int, list[str]] = {}
    for line in stdout.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[0] == marker and parts[1].isdigit() and int(parts[1]) < n:
            lines.setdefault(int(parts[1]), []).append(parts[2])
    out: list[Any] = []
    for i in range(n):
        got = lines.get(i, [])
        try:
            out.append(json.loads(got[0]) if len(got) == 1 else _MISSING)
        except ValueError:
            out.append(_MISSING)
    return out


def _canonical(value: Any) -> str:
    """Types count: ``2.0`` is not ``2``, ``True`` is not ``1``, at any depth."""
    return json.dumps(value, sort_keys=True)


def verdicts(outputs: list[Any], tests: list[list[Any]]) -> list[bool]:
    """Per-test pass/fail, computed here in the env process: the result printed by the sandbox
    against the expected value after a JSON round trip of both."""
    return [got is not _MISSING and _canonical(got) == _canonical(json.loads(json.dumps(want)))
            for got, (_args, want) in zip(outputs, tests, strict=True)]


@register_env("code")
class CodeEnv:
    """Function writing with a persistent Python session per episode (module docstring)."""

    def __init__(self, tool_format: str = "hermes-prompt", *, call_timeout_s: float = 5.0,
                 test_timeout_s: float = 3.0, episode_time_s: float | None = None,
                 max_calls_per_turn: int = 4, max_output_chars: int = 2000) -> None:
        self.format: ToolCallFormat = get_format(tool_format)
        self.call_timeout_s, self.test_timeout_s = call_timeout_s, test_timeout_s
        self.episode_time_s = episode_time_s
        self.session: str | None = None
        self.task: Task | None = None
        self.deadline = float("inf")
        self.calls = 0
        self.cells: list[str] = []  # the code the session holds the effects of, in order

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
        if len(code) > MAX_CODE_CHARS or "\x00" in code:
            return await execute(code)  # refused before anything runs: nothing to record
        if self.session is None:
            self.session = f"code-{uuid.uuid4().hex[:16]}"
        self.calls += 1
        result = await get_sandbox().run(code, timeout=timeout_s or self.call_timeout_s,
                                         session=self.session)
        self._record(code, result)
        return result.render()

    def _record(self, code: str, result: ExecResult) -> None:
        """Keep ``self.cells`` equal to what the session's interpreter has run since it last
        started: a cell that killed it (timeout, memory, a lost worker) takes the earlier
        cells' state with it; a cell run in a restarted interpreter starts a new history."""
        if (result.timed_out or result.exit_code is None
                or "session was restarted" in (result.error or "")):
            self.cells = []
        elif result.stderr.startswith("[sandbox] the session"):  # lost or idle-expired
            self.cells = [code]
        else:
            self.cells.append(code)

    async def _close_session(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            await get_sandbox().close_session(session)

    async def reset(self, task: Task, *, seed: int | None = None) -> tuple[list[Message], dict]:
        if not isinstance(task.data, dict) or not {"fn", "tests"} <= task.data.keys():
            raise ValueError(f"task {task.id} is not a code task: needs data['fn'] and "
                             "data['tests']")
        await self._close_session()
        self.task, self.calls, self.cells = task, 0, []
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
        await self._close_session()  # scoring does not use the session
        for block in _FENCE.findall(final or ""):  # code submitted in the final message
            if len(block) <= MAX_CODE_CHARS and "\x00" not in block:
                self.cells.append(block)
                self.calls += 1
        passed = await self._run_tests()
        score = sum(passed) / len(passed)
        res.reward = score
        res.success, res.score = all(passed), score  # the typed verdict (envs.base.StepResult)
        res.info.update(score=score, success=all(passed), tests_passed=sum(passed),
                        tests_total=len(passed), python_calls=self.calls)
        self.task, self.cells = None, []
        return res

    async def _run_tests(self) -> list[bool]:
        """Replay the cells and call the function on the inputs in a fresh one-shot sandbox
        process; compare here (module docstring)."""
        assert self.task is not None
        tests = self.task.data["tests"]
        if not self.cells:  # nothing was defined: every test fails without a process
            return [False] * len(tests)
        marker = secrets.token_hex(16)
        program = scoring_program(self.cells, self.task.data["fn"], [a for a, _ in tests],
                                  marker, cell_timeout_s=self.call_timeout_s,
                                  test_timeout_s=self.test_timeout_s)
        budget = self.call_timeout_s * len(self.cells) + self.test_timeout_s * len(tests) + 5.0
        out = await get_sandbox().run(program, timeout=budget)
        return verdicts(parse_outputs(out.stdout, marker, len(tests)), tests)

    async def _cut(self, messages: list[Message] | None = None,
                   info: dict[str, Any] | None = None) -> StepResult:
        await self._close_session()
        self.task, self.cells = None, []
        info = {**(info or {}), "score": 0.0, "success": False, "time_limit": True}
        info.setdefault("tool_calls", [])
        return StepResult(messages or [], 0.0, truncated=True, info=info)

    async def close(self) -> None:
        await self._close_session()
        self.task, self.cells = None, []

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
