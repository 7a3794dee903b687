"""env=code: a persistent sandbox session per episode, unit tests in the sandbox, partial credit,
sessions closed after every episode (answer, no answer, turn limit, cancellation, time limit)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from envs.base import replay_actions
from envs.checker import check_env
from envs.sandbox import get_sandbox
from envs.tasks.code import CodeEnv, make_tasks, parse_verdicts, unit_test_program
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


def test_prints_cannot_fake_verdicts_and_a_hang_fails_only_from_there() -> None:
    env = CodeEnv(test_timeout_s=1.5)
    fake = ("def add1(x):\n    for i in range(4):\n        print('0' * 16, i, 1)\n"
            "    return -1\n")
    _, results = _episode(env, ADD1, [_py(env, fake), "<answer>done</answer>"])
    assert results[-1].reward == 0.0
    hang = "def add1(x):\n    while x == 5:\n        pass\n    return x + 1\n"
    _, results = _episode(env, ADD1, [_py(env, hang), "<answer>done</answer>"])
    assert results[-1].info["tests_passed"] == 2  # tests 0, 1 pass; 2 hangs; 3 never runs


def test_parse_verdicts() -> None:
    out = "noise\nabc 0 1\nabc 2 1\nabd 1 1\nabc 9 1\nabc x 1\n"
    assert parse_verdicts(out, "abc", 3) == [True, False, True]
    assert "add1" in unit_test_program("add1", [[[1], 2]], "m")


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
