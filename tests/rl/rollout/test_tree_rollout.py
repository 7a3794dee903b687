"""Tree rollouts (rl/rollout/tree.py): replay-to-fork branches under the token contract.

A counting stand-in engine (its n-th sample from one exact context is ``policy(text, n)``), a
small deterministic calculator env whose tool errors on a known call, and the real tokenizer.
No model."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import pytest
import torch

from envs.base import StepResult
from rl.config import Config, RolloutConfig, TreeConfig, config_problems
from rl.rollout.agent_loop import AgentLoop
from rl.rollout.engines.base import GenerationOutput, GenerationRequest, SamplingParams
from rl.rollout.tree import is_error_turn, tree_stats
from rl.types import Task, ToolCall, Trajectory

Policy = Callable[[str, int], str]


class CountingEngine:
    """The n-th request for one exact token context gets ``policy(context text, n)``; records
    every call (context ids, sampled ids, logprobs) to check the token contract against."""

    def __init__(self, tokenizer, policy: Policy) -> None:
        self.tok, self.policy = tokenizer, policy
        self.seen: dict[tuple[int, ...], int] = {}
        self.calls: list[tuple[tuple[int, ...], list[int], list[float]]] = []

    def generate(self, requests: Sequence[GenerationRequest], sampling: SamplingParams):
        outs = []
        for r in requests:
            key = tuple(r.prompt_ids)
            n = self.seen.get(key, 0)
            self.seen[key] = n + 1
            ids = self.tok.encode(self.policy(self.tok.decode(r.prompt_ids), n),
                                  add_special_tokens=False) + [self.tok.eos_token_id]
            lps = [-(len(self.calls) + 1) / 100 - i / 1000 for i in range(len(ids))]
            self.calls.append((key, ids, lps))
            outs.append(GenerationOutput(ids, lps, "stop"))
        return outs

    def update_weights(self, named_tensors):
        return None


class AsyncCountingEngine(CountingEngine):
    async def agenerate(self, request: GenerationRequest, sampling: SamplingParams):
        (out,) = self.generate([request], sampling)
        return out


class CalcEnv:
    """``a+b=?`` -> ``= a+b``; ``a*b=?`` -> a tool error (no such tool); ``x!`` answers x (success
    iff x is the task's answer). Deterministic given the actions. Every action starts with its
    variable part, so two different actions differ from their first token on."""

    tools: list[dict] = []

    def note(self) -> str:
        return ""

    async def reset(self, task, *, seed=None):
        self.task = task
        return [{"role": "system", "content": "Use the calculator."},
                {"role": "user", "content": f"Q:{task.prompt}"}], {}

    async def step(self, action: str) -> StepResult:
        if m := re.fullmatch(r"(-?\d+)!", action):
            ok = m[1] == str(self.task.answer)
            return StepResult(messages=[], reward=float(ok), terminated=True, success=ok,
                              final_answer=m[1])
        if m := re.fullmatch(r"(-?\d+)\+(-?\d+)=\?", action):
            a, b = int(m[1]), int(m[2])
            return StepResult(messages=[{"role": "tool", "content": f"= {a + b}{self.note()}"}],
                              tool_calls=[ToolCall("add", {"a": a, "b": b})])
        if re.fullmatch(r"(-?\d+)\*(-?\d+)=\?", action):
            err = "unknown tool 'mul'"
            return StepResult(messages=[{"role": "tool", "content": f"error: {err}"}],
                              tool_calls=[ToolCall("mul", {}, error=err)], tool_errors=1)
        return StepResult(messages=[{"role": "user", "content": "Call a tool or answer."}])

    async def close(self):
        return None


class FlakyCalcEnv(CalcEnv):
    """Not deterministic: every instance stamps its results with its own serial number."""

    made = 0

    def note(self) -> str:
        return f" (run {self.serial})"

    async def reset(self, task, *, seed=None):
        FlakyCalcEnv.made += 1
        self.serial = FlakyCalcEnv.made
        return await super().reset(task, seed=seed)


def last_result(text: str) -> int:
    return int(re.findall(r"= (-?\d+)", text)[-1])


def one_call_policy(text: str, n: int) -> str:
    """Turn 0: two different calls; after the result: answer ``result + n``."""
    if text.count("<|im_start|>tool") == 0:
        return ["1+2=?", "2+2=?"][n % 2]
    return f"{last_result(text) + n}!"


def two_call_policy(text: str, n: int) -> str:
    obs = text.count("<|im_start|>tool")
    if obs == 0:
        return ["1+2=?", "2+2=?"][n % 2]
    if obs == 1:
        return f"{n + 1}+{last_result(text)}=?"
    return f"{last_result(text) + n}!"


def error_policy(text: str, n: int) -> str:
    """Even samples from the prompt call a tool that does not exist, odd ones add; after an
    error observation the n-th recovery adds ``n+1 + 1``; after a result: answer it."""
    tail = text.rsplit("<|im_start|>tool", 1)[-1]
    if text.count("<|im_start|>tool") == 0:
        return ["1*2=?", "1+2=?"][n % 2]
    if "error:" in tail:
        return f"{n + 1}+1=?"
    return f"{last_result(text)}!"


def run_tree(tokenizer, policy: Policy, tree: TreeConfig, group_size: int = 2,
             env=CalcEnv, schedule: str = "rounds", answer: int = 3, max_turns: int = 4):
    engine = (AsyncCountingEngine if schedule == "per_trajectory" else CountingEngine)(
        tokenizer, policy)
    cfg = RolloutConfig(max_turns=max_turns, max_total_tokens=2048, schedule=schedule, tree=tree)
    loop = AgentLoop(engine, tokenizer, env, cfg)
    trajs = loop.run([Task(id="a", prompt="add", answer=answer)], n_samples=group_size,
                     seed=5, group_offset=7)
    return trajs, engine


def by_id(trajs: list[Trajectory]) -> dict[str, Trajectory]:
    return {t.info["tree"]["id"]: t for t in trajs}


def lcp(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def assert_token_contract(t: Trajectory, engine: CountingEngine, tokenizer) -> None:
    """Every model turn is exactly an engine sample (ids and logprobs) for exactly the
    trajectory's tokens before it; the token list is the template rendering of its messages
    (up to the template's final newline); only model turns carry loss."""
    t.validate()
    calls: dict[tuple, list[list[float]]] = {}
    for ctx, ids, lps in engine.calls:  # the same turn may be sampled twice in one context
        calls.setdefault((ctx, tuple(ids)), []).append(lps)
    for turn in t.turns:
        ctx, ids = tuple(t.token_ids[: turn.start]), tuple(t.token_ids[turn.start: turn.end])
        assert (ctx, ids) in calls, "a model turn no engine call sampled in this context"
        assert t.logprobs[turn.start: turn.end] in calls[(ctx, ids)]
    full = tokenizer.encode(tokenizer.apply_chat_template(t.messages, tokenize=False),
                            add_special_tokens=False)
    assert full[: len(t.token_ids)] == t.token_ids
    model = {i for u in t.turns for i in range(u.start, u.end)}
    assert [i for i, m in enumerate(t.loss_mask) if m] == sorted(model)


@pytest.mark.parametrize("schedule", ["rounds", "per_trajectory"])
def test_fork_branches_share_exactly_the_prefix_through_the_fork(tokenizer, schedule):
    tree = TreeConfig(mode="fork", branch=2, depth=1, max_branches=4)
    trajs, engine = run_tree(tokenizer, one_call_policy, tree, schedule=schedule)
    t = by_id(trajs)
    assert sorted(t) == ["7.0", "7.0-0.0", "7.0-0.1", "7.1", "7.1-0.0", "7.1-0.1"]
    assert {x.group_id for x in trajs} == {7}
    for x in trajs:
        assert_token_contract(x, engine, tokenizer)
    for root in ("7.0", "7.1"):
        parent = t[root]
        fork_end = parent.turns[1].start  # through turn 0's observation
        kids = [t[f"{root}-0.0"], t[f"{root}-0.1"]]
        for kid in kids:
            m = kid.info["tree"]
            assert (m["kind"], m["parent"], m["fork_turn"], m["level"]) == ("branch", root, 0, 1)
            assert lcp(kid.token_ids, parent.token_ids) == fork_end  # exactly the shared prefix
            assert kid.logprobs[:fork_end] == parent.logprobs[:fork_end]  # the sampler's, copied
            assert kid.loss_mask[:fork_end] == parent.loss_mask[:fork_end]
        assert lcp(kids[0].token_ids, kids[1].token_ids) == fork_end
    assert lcp(t["7.0"].token_ids, t["7.1"].token_ids) == t["7.0"].prompt_len  # fork at prompt
    # the answers: the root's own continuation first (n=0), the branches resample (n=1, 2)
    assert [t[i].info["final_answer"] for i in ("7.0", "7.0-0.0", "7.0-0.1")] == ["3", "4", "5"]
    assert [t[i].info["final_answer"] for i in ("7.1", "7.1-0.0", "7.1-0.1")] == ["4", "5", "6"]
    s = tree_stats(trajs)
    assert (s["tree/branches"], s["tree/fill"], s["tree/skipped"]) == (4.0, 0.0, 0.0)
    assert s["tree/episodes_per_group"] == 6.0


def test_depth_two_forks_branches_of_branches(tokenizer):
    tree = TreeConfig(mode="fork", branch=1, depth=2, max_branches=3)
    trajs, engine = run_tree(tokenizer, two_call_policy, tree, group_size=1, answer=4)
    t = by_id(trajs)
    # level 1: the root after turn 0; level 2: the root after turn 1, and that branch after its
    # own turn 1 (a chain of three forks: shared turns 0 / 0..1 / 0..1 of the branch)
    assert sorted(t) == ["7.0", "7.0-0.0", "7.0-0.0-1.0", "7.0-1.0"]
    for x in trajs:
        assert_token_contract(x, engine, tokenizer)
    b, bb, rb = t["7.0-0.0"], t["7.0-0.0-1.0"], t["7.0-1.0"]
    assert (b.info["tree"]["level"], bb.info["tree"]["level"], rb.info["tree"]["level"]) == (1, 2, 2)
    assert lcp(bb.token_ids, b.token_ids) == b.turns[2].start
    assert lcp(bb.token_ids, t["7.0"].token_ids) == lcp(b.token_ids, t["7.0"].token_ids) == (
        t["7.0"].turns[1].start)
    assert lcp(rb.token_ids, t["7.0"].token_ids) == t["7.0"].turns[2].start
    assert [x.info["final_answer"] for x in (t["7.0"], rb, b, bb)] == ["4", "5", "5", "6"]


def test_budget_is_exact_and_unfilled_slots_become_roots(tokenizer):
    tree = TreeConfig(mode="fork", branch=2, depth=3, max_branches=3)
    trajs, _ = run_tree(tokenizer, lambda text, n: f"{n}!", tree, group_size=2)
    kinds = sorted(x.info["tree"]["kind"] for x in trajs)
    assert kinds == ["fill", "fill", "fill", "root", "root"]  # no tool call: nothing to fork
    # with a budget smaller than the fork points: the first root's fork takes it all
    trajs, _ = run_tree(tokenizer, one_call_policy,
                        TreeConfig(mode="fork", branch=2, max_branches=3), group_size=2)
    ids = sorted(x.info["tree"]["id"] for x in trajs)
    assert ids == ["7.0", "7.0-0.0", "7.0-0.1", "7.1", "7.1-0.0"] and len(trajs) == 2 + 3


@pytest.mark.parametrize("hint", [False, True])
def test_error_branches_fire_only_after_error_observations(tokenizer, hint):
    tree = TreeConfig(mode="error", branch=2, depth=2, max_branches=4, error_hint=hint)
    trajs, engine = run_tree(tokenizer, error_policy, tree, group_size=2)
    t = by_id(trajs)
    for x in trajs:
        assert_token_contract(x, engine, tokenizer)
    assert is_error_turn(t["7.0"].turns[0]) and not is_error_turn(t["7.1"].turns[0])
    branches = [x for x in trajs if x.info["tree"]["kind"] == "branch"]
    # only root 0 saw an error (turn 0); its recoveries make no error, so no level 2
    assert sorted(x.info["tree"]["id"] for x in branches) == ["7.0-0.0", "7.0-0.1"]
    assert sum(x.info["tree"]["kind"] == "fill" for x in trajs) == 2
    parent = t["7.0"]
    for b in branches:
        assert b.info["tree"]["hint"] is hint
        shared = lcp(b.token_ids, parent.token_ids)
        if hint:  # differs from the parent inside the observation, after the error message
            assert parent.turns[0].end < shared < parent.turns[1].start
            msg = b.messages[4]  # system, user, the failed call, its error, the hint
            assert msg["role"] == "user" and "unknown tool 'mul'" in msg["content"]
            obs = b.token_ids[b.turns[0].end: b.turns[1].start]
            assert "The last tool call failed" in tokenizer.decode(obs)
            assert not any(b.loss_mask[b.turns[0].end: b.turns[1].start])
        else:
            assert shared == parent.turns[1].start
    # recoveries from the error context: root 0 takes sample 0 (1+1: answers 2), its branches
    # samples 1, 2 (3, 4); hinted, the branches' context is new: samples 0, 1 (2, 3)
    answers = [x.info["final_answer"] for x in (parent, *branches)]
    assert answers == (["2", "2", "3"] if hint else ["2", "3", "4"])
    # the first fill root also errs (sample 2 from the prompt) and recovers with the error
    # context's next sample: 3 without hints (4+1: fails), 1 with (2+1: solves)
    s = tree_stats(trajs)
    assert s["tree/hinted"] == (2.0 if hint else 0.0)
    assert s["episode/error_seen"] == pytest.approx(4 / 6)
    assert s["episode/error_recovery"] == pytest.approx(2 / 4 if hint else 1 / 4)
    assert s["tree/error_branch_success"] == pytest.approx(1 / 2)


def repeat_error_policy(text: str, n: int) -> str:
    """Errs from the prompt; from an error context, sample 0 errs again, sample n >= 1 adds."""
    tail = text.rsplit("<|im_start|>tool", 1)[-1]
    if text.count("<|im_start|>tool") == 0:
        return "1*2=?"
    if "error:" in tail:
        return "2*2=?" if n == 0 else f"{n}+1=?"
    return f"{last_result(text)}!"


def test_hinted_branch_forked_again_replays_its_earlier_hint(tokenizer):
    tree = TreeConfig(mode="error", branch=1, depth=2, max_branches=3, error_hint=True)
    trajs, engine = run_tree(tokenizer, repeat_error_policy, tree, group_size=1)
    t = by_id(trajs)
    assert sorted(t) == ["7.0", "7.0-0.0", "7.0-0.0-1.0", "7.0-1.0"]  # nothing skipped
    for x in trajs:
        assert_token_contract(x, engine, tokenizer)
    b, bb = t["7.0-0.0"], t["7.0-0.0-1.0"]
    hint = "The last tool call failed: unknown tool 'mul'. Fix the call and try again."
    assert b.info["tree"]["hints"] == [[0, hint]]
    assert bb.info["tree"]["hints"] == [[0, hint], [1, hint]]
    assert t["7.0-1.0"].info["tree"]["hints"] == [[1, hint]]  # the root had none before
    # bb shares b's tokens through b's first hint and its second failed call's error message
    assert b.turns[1].end < lcp(bb.token_ids, b.token_ids) < b.turns[2].start
    assert [m["content"] for m in bb.messages].count(hint) == 2
    assert tree_stats(trajs)["tree/skipped"] == 0


def test_no_error_no_error_branch(tokenizer):
    tree = TreeConfig(mode="error", branch=2, max_branches=2)
    trajs, _ = run_tree(tokenizer, one_call_policy, tree, group_size=2)
    assert sorted(x.info["tree"]["kind"] for x in trajs) == ["fill", "fill", "root", "root"]
    assert "episode/error_recovery" not in tree_stats(trajs)


def test_non_deterministic_env_branch_is_skipped_and_counted(tokenizer):
    tree = TreeConfig(mode="fork", branch=2, max_branches=2)
    trajs, engine = run_tree(tokenizer, one_call_policy, tree, group_size=1, env=FlakyCalcEnv)
    assert sorted(x.info["tree"]["kind"] for x in trajs) == ["fill", "fill", "root"]
    root = by_id(trajs)["7.0"]
    assert root.info["tree"]["skipped"] == root.info["tree"]["skipped_nondeterministic"] == 2
    s = tree_stats(trajs)
    assert (s["tree/skipped_nondeterministic"], s["tree/branches"], s["tree/fill"]) == (2, 0, 2)
    for x in trajs:
        assert_token_contract(x, engine, tokenizer)


def test_tree_credit_on_a_sampled_tree_equals_hand_computed_fork_values(tokenizer):
    from rl.algos.advantages import AdvantageConfig
    from rl.algos.tree import TreeCredit

    tree = TreeConfig(mode="fork", branch=2, max_branches=4)
    trajs, _ = run_tree(tokenizer, one_call_policy, tree, group_size=2)
    for x in trajs:
        x.outcome_reward = float(x.info["success"])
    t = by_id(trajs)
    # rewards: root 7.0 solved (ANSWER 3), everything else failed. Fork at the prompt:
    # V(7.0's call) = mean(1, 0, 0) = 1/3, V(7.1's call) = 0, siblings' mean 1/6:
    # F = +1/6 and -1/6. Fork after 7.0's call: answers valued 1, 0, 0 (mean 1/3): F = 2/3,
    # -1/3, -1/3; after 7.1's call every answer is 0: F = 0.
    want = {"7.0": (1 / 6, 2 / 3), "7.0-0.0": (1 / 6, -1 / 3), "7.0-0.1": (1 / 6, -1 / 3),
            "7.1": (-1 / 6, 0.0), "7.1-0.0": (-1 / 6, 0.0), "7.1-0.1": (-1 / 6, 0.0)}
    credit = TreeCredit(AdvantageConfig(), fork_weight=1.0)
    adv = credit.advantages(trajs, [x.group_id for x in trajs])
    for i, x in enumerate(trajs):
        for turn, value in zip(x.turns, want[x.info["tree"]["id"]]):
            got = adv[i, turn.start: turn.end]
            assert torch.allclose(got, torch.full_like(got, value), atol=1e-6), x.info["tree"]
        assert len(x.turns) == 2 and not adv[i, : t["7.0"].prompt_len].any()


def test_tree_off_samples_the_plain_group(tokenizer):
    trajs, _ = run_tree(tokenizer, one_call_policy, TreeConfig(), group_size=2)
    assert len(trajs) == 2 and all("tree" not in x.info for x in trajs)
    assert "tree/branches" not in tree_stats(trajs)


def test_config_validation_one_line_per_problem():
    cfg = Config()
    cfg.rollout.max_turns = 1
    cfg.rollout.tree = TreeConfig(mode="forks", branch=0, depth=0, max_branches=0,
                                  error_hint=True, hint_text="{err}", hint_role="system")
    problems = config_problems(cfg)
    tree = [p for p in problems if p.startswith("rollout.tree.")]
    assert tree == [
        "rollout.tree.mode='forks' is not one of: off, fork, error, both",
        "rollout.tree.branch=0 must be >= 1",
        "rollout.tree.depth=0 must be >= 1",
        "rollout.tree.max_branches=0 must be >= 1 when rollout.tree.mode=forks",
        "rollout.tree.mode=forks needs rollout.max_turns >= 2 (a branch continues after its "
        "fork turn), got 1",
        "rollout.tree.error_hint=true needs rollout.tree.mode=error or both, got forks",
        "rollout.tree.hint_role='system' is not one of: tool, user",
        "rollout.tree.hint_text='{err}' is not a format string with only {error}: KeyError "
        "'err'",
    ]
    cfg = Config()
    cfg.rollout.tree = TreeConfig(mode="error", error_hint=True)
    assert not [p for p in config_problems(cfg) if p.startswith("rollout.tree.")]


def test_tree_config_composes_from_overrides():
    from rl.config import load_config, to_dataclass

    cfg = to_dataclass(load_config(["rollout.tree.mode=error", "rollout.tree.error_hint=true",
                                    "rollout.tree.max_branches=6", "algorithm.credit=tree"]))
    assert cfg.rollout.tree == TreeConfig(mode="error", error_hint=True, max_branches=6)
    assert cfg.algorithm.credit == "tree"


class DemoEngine(CountingEngine):
    """Real envs: the n-th sample of turn j is the env's demonstration turn j (n even) or that
    turn with its first closing brace/parenthesis dropped (n odd: usually a malformed call)."""

    def __init__(self, tokenizer, demos: dict[str, list[str]]) -> None:
        def policy(text: str, n: int) -> str:
            demo = next(d for prompt, d in demos.items() if prompt in text)
            turn = demo[min(text.count("<|im_start|>assistant") - 1, len(demo) - 1)]
            return turn if n % 2 == 0 else turn.replace("}", "", 1).replace(")", "", 1)

        super().__init__(tokenizer, policy)


@pytest.mark.parametrize("env", ["math", "compose", "sql", "search", "code", "bfcl"])
def test_real_envs_replay_deterministically(tokenizer, env):
    """Every tool env here re-produces a recorded prefix exactly: no branch is skipped, and
    each branch equals its parent token for token through the fork turn's observation."""
    if env == "bfcl":
        pytest.importorskip("bfcl_eval", reason="pip install --no-deps bfcl-eval")
    from rl.build import build_env_factory
    from rl.config import load_config, to_dataclass
    from rl.tasks import build_tasks

    cfg = to_dataclass(load_config([f"env={env}"]))
    factory, native = build_env_factory(cfg)
    tasks = build_tasks(cfg, "train", 2)
    demos = {t.prompt: factory().demonstration(t) for t in tasks}
    for tree in (TreeConfig(mode="both", branch=2, depth=2, max_branches=4),
                 TreeConfig(mode="error", branch=2, depth=2, max_branches=4, error_hint=True)):
        rollout = RolloutConfig(max_turns=6, max_total_tokens=4096, max_tokens_per_turn=4096,
                                schedule="rounds", tree=tree)
        engine = DemoEngine(tokenizer, demos)
        trajs = AgentLoop(engine, tokenizer, factory, rollout, native_tools=native).run(
            tasks, n_samples=2, seed=3)
        s = tree_stats(trajs)
        assert s["tree/skipped"] == 0 and s["tree/branches"] > 0, (tree.mode, s)
        assert len(trajs) == 2 * (2 + 4)
        ids = {x.info["tree"]["id"]: x for x in trajs}
        for x in trajs:
            x.validate()
            m = x.info["tree"]
            if m["kind"] == "branch":
                p, k = ids[m["parent"]], m["fork_turn"]
                end = p.turns[k].end if m["hint"] else p.turns[k + 1].start
                assert x.token_ids[:end] == p.token_ids[:end]
                assert x.logprobs[:end] == p.logprobs[:end]


def test_step_core_scores_credits_batches_and_reports_a_tree(tokenizer):
    """The step core (both drivers) on a tree: tree credit sees the forks, the batch keeps
    rows with signal, the metrics row carries the tree counts."""
    from rl.step import StepCore, build_credit

    cfg = Config()
    cfg.algorithm.credit = "tree"
    cfg.algorithm.tree_fork_weight = 1.0
    cfg.rollout.tree = TreeConfig(mode="fork", branch=2, max_branches=4)
    trajs, _ = run_tree(tokenizer, one_call_policy, cfg.rollout.tree, group_size=2)
    core = StepCore(cfg, None, tokenizer.pad_token_id, build_credit(cfg, tokenizer))
    rewards = core.score(trajs)
    assert rewards.tolist() == [float(x.info["success"]) for x in trajs]
    adv, _ = core.assign_credit(trajs)
    first = by_id(trajs)["7.0"]
    i = trajs.index(first)
    assert adv[i, first.turns[1].start].item() == pytest.approx(2 / 3)  # as hand-computed above
    batch = core.make_batch(trajs, adv)
    assert batch is not None and len(batch) == 6  # every row has a non-zero fork advantage
    row = core.metrics_row(trajs, rewards, {}, {"rollout": 1.0})
    assert (row["tree/branches"], row["tree/episodes_per_group"]) == (4.0, 6.0)
    # branches copy their parent's turn 0: trained on, but not sampled in this rollout
    ids = by_id(trajs)
    copied = sum(ids[x.info["tree"]["parent"]].turns[0].end - ids[x.info["tree"]["parent"]]
                 .turns[0].start for x in trajs if x.info["tree"]["kind"] == "branch")
    assert copied > 0 and row["tree/replayed_model_tokens"] == copied
    assert row["perf/rollout_tokens_per_s"] == sum(x.num_model_tokens for x in trajs) - copied


class AnyCallEnv(CalcEnv):
    """Every action counts as a tool call answered by a fixed result; 3 turns, then ends."""

    async def step(self, action: str) -> StepResult:
        self.turns = getattr(self, "turns", 0) + 1
        if self.turns == 3:
            return StepResult(messages=[], terminated=True, success=False)
        return StepResult(messages=[{"role": "tool", "content": "= 1"}],
                          tool_calls=[ToolCall("any", {})])


def test_hf_engine_branches_resample_and_keep_the_sampler_logprobs(tokenizer, tiny_model):
    """A real engine (HF, tiny random model): branches continue with new samples (the level's
    seed differs from the roots'), and the learner-side logprobs of every model token, shared
    prefix included, equal the sampler's."""
    from rl.rollout.engines.hf import HFEngine

    torch.manual_seed(0)
    engine = HFEngine(tiny_model, tokenizer, seed=0)
    tree = TreeConfig(mode="fork", branch=2, depth=1, max_branches=2)
    cfg = RolloutConfig(max_turns=3, max_tokens_per_turn=6, max_total_tokens=512,
                        schedule="rounds", tree=tree)
    trajs = AgentLoop(engine, tokenizer, AnyCallEnv, cfg).run(
        [Task(id="a", prompt="add", answer=0)], n_samples=1, seed=11)
    t = by_id(trajs)
    root = t["0.0"]
    kids = [x for x in trajs if x.info["tree"]["kind"] == "branch"]
    assert len(kids) == 2
    end = root.turns[1].start
    for kid in kids:
        assert kid.token_ids[:end] == root.token_ids[:end]
        kid.validate()
    conts = {tuple(x.token_ids[end: x.turns[1].end]) for x in (root, *kids)}
    assert len(conts) == 3  # three different samples of turn 1 from one context
    with torch.no_grad():
        for x in (root, *kids):
            ids = torch.tensor([x.token_ids])
            lp = torch.log_softmax(tiny_model(ids).logits[0, :-1].float(), -1)
            got = lp.gather(-1, ids[0, 1:, None])[:, 0]
            mask = torch.tensor(x.loss_mask[1:], dtype=torch.bool)
            want = torch.tensor(x.logprobs[1:])
            assert torch.allclose(got[mask], want[mask], atol=1e-4)


def test_evaluation_never_branches(tokenizer):
    from types import SimpleNamespace

    from rl.evaluate import evaluate_tasks

    cfg = Config()
    cfg.rollout.tree = TreeConfig(mode="fork", branch=2, max_branches=4)
    parts = SimpleNamespace(tokenizer=tokenizer, native_tools=False, env_factory=CalcEnv)
    res = evaluate_tasks(cfg, parts, CountingEngine(tokenizer, one_call_policy),
                         [Task(id="a", prompt="add", answer=3)], n_samples=2, seed=1)
    assert len(res.trajectories) == 2
    assert all("tree" not in x.info for x in res.trajectories)
    assert cfg.rollout.tree.mode == "fork"  # the run's config is left as it was


@pytest.mark.parametrize("flaky", [False, True])
def test_every_env_a_tree_opens_is_closed(tokenizer, flaky):
    """Roots, kept and skipped replays, fill episodes: each env is closed exactly once."""
    log: list[tuple[str, int]] = []

    class Counted(FlakyCalcEnv if flaky else CalcEnv):  # type: ignore[misc]
        def __init__(self) -> None:
            self.n = len(log)
            log.append(("open", self.n))

        async def close(self):
            log.append(("close", self.n))

    tree = TreeConfig(mode="fork", branch=2, depth=2, max_branches=4)
    trajs, _ = run_tree(tokenizer, two_call_policy, tree, group_size=2, env=Counted)
    opened = [n for kind, n in log if kind == "open"]
    closed = sorted(n for kind, n in log if kind == "close")
    assert closed == opened and len(opened) == len(trajs) + tree_stats(trajs)["tree/skipped"]
