"""env=code: a persistent sandbox session per episode, scoring in a fresh one-shot sandbox process
with the expected values kept outside it (hostile solutions score 0), partial credit, sessions
closed after every episode (answer, no answer, turn limit, cancellation, time limit)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from envs.base import replay_actions
from envs.checker import check_env
from envs.sandbox import get_sandbox
from envs.tasks.code import CodeEnv, make_tasks, parse_outputs, scoring_program, verdicts
from envs.tasks.code_data import FAMILIES, reference
from rl.types import Task

ADD1 = Task(id="add1", prompt="Write add1(x) returning x + 1.",
            data={"fn": "add1", "tests": [[[1], 2], [[2], 3], [[5], 6], [[0], 1]],
                  "example": [[3], 4], "solution": "def add1(x):\n    return x + 1\n"})


def _sessions() -> float:
    return get_sandbox().metrics().get("sessions", 0.0)


def _episode(env: CodeEnv, task: Task, actions: Sequence[str]):
    async def run():
        msgs, results = await replay_actions(env, task, list(actions))
        await env.close()
        return msgs, results

    return asyncio.run(run())


def _py(env: CodeEnv, code: str) -> str:
    return env.format.format_call("python", {"code": code})


def test_variables_survive_across_turns_and_sessions_are_per_episode() -> None:
    env, other = CodeEnv(), CodeEnv()

    async def run():
        await env.reset(ADD1)
        await other.reset(ADD1)
        r1 = await env.step(_py(env, "secret = 41"))
        r2 = await env.step(_py(env, "print(secret + 1)"))
        r3 = await other.step(_py(other, "print(secret)"))  # another episode's session
        assert env.session != other.session
        await env.close()
        await other.close()
        return r1, r2, r3

    before = _sessions()
    r1, r2, r3 = asyncio.run(run())
    assert "42" in r2.messages[0]["content"]
    assert "NameError" in r3.messages[0]["content"]
    assert not r1.terminated and not r2.terminated
    assert _sessions() == before


def test_partial_credit_is_the_share_of_tests_passed() -> None:
    env = CodeEnv()
    # right for x < 3 only: passes tests 1, 2 and 0 (x = 1, 2, 0), fails x = 5
    code = "def add1(x):\n    return x + 1 if x < 3 else 0\n"
    _, results = _episode(env, ADD1, [_py(env, code), env.format.format_answer("done")])
    last = results[-1]
    assert last.terminated and last.info["tests_passed"] == 3 and last.info["tests_total"] == 4
    assert last.reward == pytest.approx(0.75) and last.info["score"] == pytest.approx(0.75)
    assert last.info["success"] is False
    # all pass
    _, results = _episode(env, ADD1, [_py(env, ADD1.data["solution"]), "<answer>done</answer>"])
    assert results[-1].reward == 1.0 and results[-1].info["success"] is True
    # nothing defined (no call, plain reply): every test fails
    _, results = _episode(env, ADD1, ["I think it is x + 1."])
    assert results[-1].terminated and results[-1].reward == 0.0
    # a float where an int is expected is wrong (types compare after the JSON round trip)
    _, results = _episode(env, ADD1, [_py(env, "def add1(x):\n    return x + 1.0\n"),
                                      "<answer>done</answer>"])
    assert results[-1].reward == 0.0


def test_code_in_the_final_message_is_run_first() -> None:
    env = CodeEnv()
    answer = f"<answer>\n```python\n{ADD1.data['solution']}```\n</answer>"
    _, results = _episode(env, ADD1, [answer])
    assert results[-1].reward == 1.0 and results[-1].info["python_calls"] == 1
    # a plain reply with a fenced function (what the base model writes) is a submission too
    reply = "```python\ndef add1(x):\n    return 2 * x\n```\nThis adds one."  # right for x=1
    _, results = _episode(env, ADD1, [reply])
    assert results[-1].terminated and results[-1].info["tests_passed"] == 1
    assert results[-1].reward == pytest.approx(0.25)


# Hostile submissions: each tries to forge verdicts in a way that worked (or could have) when the
# tests ran inside the model's session; add1 itself is wrong in all of them.
_STEAL_MARKER = (  # find the harness's payload (and so the marker) in the frames above the cell
    "import sys\n"
    "def _payload():\n"
    "    f = sys._getframe()\n"
    "    while f is not None:\n"
    "        if '_tl_P' in f.f_globals:\n"
    "            return f.f_globals['_tl_P']\n"
    "        f = f.f_back\n")
HOSTILE = {
    "print_patch": (  # rewrites a printed verdict 0 into 1 (the old harness printed verdicts)
        "import builtins\n_p = builtins.print\n"
        "def _print(*a, **k):\n"
        "    a = list(a)\n"
        "    if len(a) == 3 and a[2] in (0, '0'):\n"
        "        a[2] = 1\n"
        "    _p(*a, **k)\n"
        "builtins.print = _print\n"
        "def add1(x):\n    return -1\n"),
    "json_patch": (  # every dumps/loads answers with an object equal to anything
        "import json\n"
        "class Yes(int):\n"
        "    def __eq__(self, other):\n        return True\n"
        "    __hash__ = int.__hash__\n"
        "json.dumps = lambda *a, **k: '\"ok\"'\n"
        "json.loads = lambda *a, **k: Yes(0)\n"
        "def add1(x):\n    return -1\n"),
    "stdout_patch": (  # rewrites whatever reaches stdout, at the Python and the fd level
        "import os, sys\n_w = os.write\n"
        "os.write = lambda fd, b: _w(fd, b.replace(b'-1', b'true').replace(b' 0\\n', b' 1\\n'))\n"
        "class Out:\n"
        "    def write(self, s):\n"
        "        return _w(1, s.replace(' 0', ' 1').encode())\n"
        "    def flush(self):\n        pass\n"
        "sys.stdout = sys.__stdout__ = Out()\n"
        "def add1(x):\n    return -1\n"),
    "fake_markers": _STEAL_MARKER + (  # prints lines behind the real marker, then raises
        "import os\n"
        "def add1(x):\n"
        "    p = _payload()\n"
        "    for i in range(len(p['inputs'])):\n"
        "        for v in ('1', 'true', '\"pass\"'):\n"
        "            os.write(1, ('%s %d %s\\n' % (p['marker'], i, v)).encode())\n"
        "            print(p['marker'], i, v, flush=True)\n"
        "    raise RuntimeError('no')\n"),
    "sentinel": (  # returns an object that compares equal to anything
        "class Anything:\n"
        "    def __eq__(self, other):\n        return True\n"
        "    def __ne__(self, other):\n        return False\n"
        "def add1(x):\n    return Anything()\n"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_solutions_score_zero(name: str) -> None:
    env = CodeEnv()
    _, results = _episode(env, ADD1, [_py(env, HOSTILE[name]), "<answer>done</answer>"])
    assert results[-1].terminated
    assert results[-1].info["tests_passed"] == 0 and results[-1].reward == 0.0, name
    # the same code in the final message (not through the tool) scores 0 as well
    _, results = _episode(env, ADD1, [f"```python\n{HOSTILE[name]}```"])
    assert results[-1].reward == 0.0, name


def test_fake_marker_lines_spoil_a_right_answer() -> None:
    """A duplicate line for a test fails it: extra lines can only hurt their author."""
    env = CodeEnv()
    code = _STEAL_MARKER + (
        "import os\n"
        "def add1(x):\n"
        "    p = _payload()\n"
        "    if x == 5:\n"
        "        os.write(1, ('%s 2 6\\n' % p['marker']).encode())\n"  # test 2's right value
        "    return x + 1\n")
    _, results = _episode(env, ADD1, [_py(env, code), "<answer>done</answer>"])
    assert results[-1].info["tests_passed"] == 3  # test 2 printed twice: failed


def test_expected_outputs_never_enter_the_sandbox() -> None:
    sent: list[str] = []
    sandbox = get_sandbox()
    real = sandbox.run

    async def spy(code, **kw):
        sent.append(code)
        return await real(code, **kw)

    task = Task(id="t", prompt="p", data={"fn": "f", "tests": [[[1], "EXPECTED-7f3a"],
                                                                [[2], 918273645]]})
    env = CodeEnv()
    sandbox.run = spy  # type: ignore[method-assign]
    try:
        _, results = _episode(env, task, [_py(env, "def f(x):\n    return 'no'\n"),
                                          "<answer>done</answer>"])
    finally:
        del sandbox.run
    assert len(sent) == 2 and "def f(x)" in sent[1]  # the tool call, then the scoring program
    assert all("EXPECTED-7f3a" not in c and "918273645" not in c for c in sent)
    assert results[-1].reward == 0.0


def test_a_hang_or_an_error_fails_that_test_only() -> None:
    env = CodeEnv(test_timeout_s=0.5)
    hang = ("def add1(x):\n    if x == 1:\n        raise ValueError(x)\n"
            "    while x == 5:\n        pass\n    return x + 1\n")
    _, results = _episode(env, ADD1, [_py(env, hang), "<answer>done</answer>"])
    assert results[-1].info["tests_passed"] == 2  # x=1 raises, x=5 hangs; x=2, x=0 pass


def test_replay_follows_the_session_history() -> None:
    """A cell that kills the session's interpreter (timeout) loses the cells before it; the
    replay does the same, so the score reflects what the session held."""
    env = CodeEnv(call_timeout_s=1.0)
    steps = [_py(env, ADD1.data["solution"]),
             _py(env, "import time\ntime.sleep(30)"),  # timed out: the session restarts
             "<answer>done</answer>"]
    msgs, results = _episode(env, ADD1, steps)
    assert "restarted" in msgs[5]["content"]
    assert results[-1].reward == 0.0  # add1 was lost with the interpreter
    steps.insert(2, _py(env, ADD1.data["solution"]))  # defined again after the restart
    _, results = _episode(env, ADD1, steps)
    assert results[-1].reward == 1.0
    # an exception does not restart the session: the earlier definition stays
    _, results = _episode(env, ADD1, [_py(env, ADD1.data["solution"]), _py(env, "1 / 0"),
                                      "<answer>done</answer>"])
    assert results[-1].reward == 1.0


def test_outputs_and_verdicts() -> None:
    out = ("noise\nabc 0 2\nabc 2 [1, 2.0]\nabd 1 3\nabc 9 1\nabc x 1\nabc 3 4\n"
           "abc 3 4\nabc 4 {bad\n")
    got = parse_outputs(out, "abc", 5)
    assert got[0] == 2 and got[2] == [1, 2.0]
    tests = [[[1], 2], [[2], 3], [[3], [1, 2]], [[4], 4], [[5], None]]
    # 1: no line; 2: 2.0 is not 2; 3: two lines; 4: invalid JSON
    assert verdicts(got, tests) == [True, False, False, False, False]
    assert verdicts([True, [1, 2], {"b": 1, "a": [2]}], [[[], 1], [[], (1, 2)],
                                                         [[], {"a": [2], "b": 1}]]) == [
        False, True, True]
    program = scoring_program(["x = 1"], "add1", [[1]], "m", cell_timeout_s=1.0,
                              test_timeout_s=1.0)
    assert "add1" in program and "x = 1" in program


class _LoopingEngine:
    """Always asks for a python call (so only a limit ends the episode)."""

    def __init__(self, tokenizer, action: str, delay: float = 0.0) -> None:
        self.tok, self.action, self.delay = tokenizer, action, delay

    def generate(self, requests, sampling):
        from rl.rollout.engines.base import GenerationOutput

        ids = self.tok.encode(self.action, add_special_tokens=False) + [self.tok.eos_token_id]
        return [GenerationOutput(list(ids), [-0.1] * len(ids), "stop") for _ in requests]

    async def agenerate(self, request, sampling):
        await asyncio.sleep(self.delay)
        return self.generate([request], sampling)[0]

    def update_weights(self, named_tensors):
        return None


@pytest.mark.parametrize("schedule", ["rounds", "per_trajectory"])
def test_sessions_closed_when_the_turn_limit_cuts_episodes(tokenizer, schedule) -> None:
    from rl.rollout.agent_loop import AgentLoop, RolloutConfig

    opened: list[str] = []

    class Spy(CodeEnv):
        async def _run(self, code, timeout_s=None):
            out = await super()._run(code, timeout_s)
            opened.append(str(self.session))
            return out

    action = '<tool_call>{"name": "python", "arguments": {"code": "x = 1"}}</tool_call>'
    loop = AgentLoop(_LoopingEngine(tokenizer, action), tokenizer, Spy,
                     RolloutConfig(max_turns=2, max_total_tokens=4096, schedule=schedule))
    before = _sessions()
    trajs = loop.run([ADD1, ADD1], n_samples=2)
    assert all(t.truncated and not t.terminated for t in trajs)
    assert len(set(opened)) == 4  # one session per episode ...
    assert _sessions() == before  # ... all closed by the loop's close()


def test_sessions_closed_when_a_timeout_cancels_the_rollout(tokenizer) -> None:
    from rl.rollout.agent_loop import AgentLoop, RolloutConfig

    action = '<tool_call>{"name": "python", "arguments": {"code": "y = 2"}}</tool_call>'
    loop = AgentLoop(_LoopingEngine(tokenizer, action, delay=0.2), tokenizer, CodeEnv,
                     RolloutConfig(max_turns=50, max_total_tokens=100_000,
                                   schedule="per_trajectory"))
    before = _sessions()

    async def run():
        with pytest.raises((asyncio.TimeoutError, TimeoutError)):
            await asyncio.wait_for(loop.arun([ADD1, ADD1]), timeout=2.0)

    asyncio.run(run())
    assert _sessions() == before


def test_env_time_limit_truncates_and_closes_the_session() -> None:
    env = CodeEnv(episode_time_s=0.5)

    async def run():
        before = _sessions()
        await env.reset(ADD1)
        await env.step(_py(env, "z = 3"))
        assert _sessions() == before + 1 and env.session is not None
        await asyncio.sleep(0.6)
        res = await env.step(_py(env, "print(z)"))
        assert res.truncated and not res.terminated and res.reward == 0.0
        assert res.info["time_limit"] is True and env.session is None
        assert _sessions() == before
        await env.close()

    asyncio.run(run())


def test_demonstrations_score_one_and_references_are_consistent() -> None:
    env = CodeEnv()
    tasks = make_tasks("mixed", "train", 24, 0) + make_tasks("mixed", "test", 12, 0)
    assert {t.data["family"] for t in make_tasks("mixed", "train", 120, 0)} == {
        f.name for f in FAMILIES}
    before = _sessions()
    for task in tasks:
        actions = env.demonstration(task)
        msgs, results = _episode(env, task, actions)
        assert results[-1].reward == 1.0 and results[-1].info["success"], task.prompt
        args, want = task.data["example"]
        assert repr(want) in msgs[5]["content"] or str(want) in msgs[5]["content"]
    assert _sessions() == before
    fam = next(f for f in FAMILIES if f.name == "run_length")
    assert reference(fam, {})("aaab") == "a3b1"  # the prompt's example, by hand


def test_tasks_deterministic_and_split() -> None:
    a = make_tasks("mixed", "train", 30, 2)
    assert [t.prompt for t in a] == [t.prompt for t in make_tasks("mixed", "train", 30, 2)]
    assert not {t.prompt for t in a} & {t.prompt for t in make_tasks("mixed", "test", 30, 2)}
    assert all(len(t.data["tests"]) == 5 for t in a)
    assert {t.data["family"] for t in make_tasks("dedupe", "train", 5, 0)} == {"dedupe"}
    with pytest.raises(KeyError, match="mixed"):
        make_tasks("nope", "train", 1, 0)


def test_conformance_and_registry() -> None:
    import envs.tasks
    from envs.base import make_env

    env = make_env("code")
    before = _sessions()
    asyncio.run(check_env(env, env.example_tasks(1)[0]))
    assert _sessions() == before and env.session is None
    assert envs.tasks.make_tasks("code", "mixed", "test", 2, 0)[0].id.startswith("code-test")
