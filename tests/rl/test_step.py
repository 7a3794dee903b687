"""The step core (rl/step.py) without a model: credit registry, batching with the uniform-group
filter, seeds, the stage machine, the stage table."""

from __future__ import annotations

import pytest
import torch

from rl.algos.credit import CREDITS, Credit, CreditContext, make_credit
from rl.config import Config
from rl.step import RunState, StepCore, fit, stage_table
from rl.types import Task, Trajectory


def _trajs(rewards, group_size):
    out = []
    for i, r in enumerate(rewards):
        t = Trajectory(Task(str(i), ""), [5, 6, 7, 8], [0, 0, 1, 1], [0.0] * 4, 2,
                       group_id=i // group_size)
        t.outcome_reward = float(r)
        out.append(t)
    return out


def _core(drop: bool = True, **algo) -> StepCore:
    cfg = Config()
    cfg.algorithm.drop_uniform_groups = drop
    for k, v in algo.items():
        setattr(cfg.algorithm, k, v)
    return StepCore(cfg, None, 0, make_credit(cfg.algorithm, CreditContext()))


def _batch(core: StepCore, trajs):
    adv, _ = core.assign_credit(trajs)
    return core.make_batch(trajs, adv)


def test_every_credit_member_implements_the_protocol():
    assert {"outcome", "turn", "archer"} <= set(CREDITS.names())
    cfg = Config()
    for name in CREDITS.names():
        cfg.algorithm.credit = name
        assert isinstance(make_credit(cfg.algorithm, CreditContext(vocab_size=50)), Credit)
    cfg.algorithm.credit = "critic"
    with pytest.raises(KeyError, match="valid names: 'archer', 'outcome'"):
        make_credit(cfg.algorithm, CreditContext())


def test_uniform_groups_are_left_out_of_the_update():
    trajs = _trajs([1.0, 1.0, 0.0, 1.0, 0.0, 0.0], 2)  # groups: [1,1] [0,1] [0,0]
    batch = _batch(_core(True), trajs)
    assert batch is not None and len(batch) == 2  # only the mixed group
    # grpo with population std: [0, 1] -> [-1, +1] on the model tokens
    expected = torch.tensor([[-1.0, -1.0], [1.0, 1.0]])
    torch.testing.assert_close(batch.advantages[:, 2:], expected, atol=1e-5, rtol=0)  # eps
    assert torch.all(batch.advantages[:, :2] == 0)  # prompt tokens carry no advantage
    full = _batch(_core(False), trajs)
    assert full is not None and len(full) == 6


def test_all_uniform_means_no_update():
    assert _batch(_core(True), _trajs([1.0, 1.0, 0.0, 0.0], 2)) is None


def test_reinforce_keeps_all_success_groups():
    """Defect: drop_uniform_groups dropped REINFORCE's all-success groups, whose advantages
    (the raw reward, no baseline) are not zero."""
    trajs = _trajs([1.0, 1.0, 0.0, 0.0], 2)
    batch = _batch(_core(True, advantage="reinforce"), trajs)
    assert batch is not None and len(batch) == 2  # the all-success group; all-zero rows go
    torch.testing.assert_close(batch.advantages[:, 2:], torch.ones(2, 2))


def test_rollout_seeds_and_group_ids_are_driver_independent():
    core = _core()
    core.cfg.trainer.tasks_per_step, core.cfg.trainer.seed = 8, 3
    # a worker (or rank) starting at task 4 of step 2
    assert core.rollout_seed(2, 4) == 3 * 100_003 + 2 + 7919 * 4
    assert core.group_offset(2, 4) == 2 * 8 + 4


class _ScriptedDriver:
    def __init__(self, stage: str = "start", step: int = 0) -> None:
        self.state = RunState(step, stage)
        self.calls: list[str] = []

    def resume(self): self.calls.append("resume")
    def evaluate(self, label):
        self.calls.append(f"eval:{label}")
        return {"success": 0.0}
    def run_sft(self): self.calls.append("sft")
    def start_rl(self): self.calls.append("start_rl")
    def train_step(self, step): self.calls.append(f"step{step}")
    def save(self): self.calls.append(f"save@{self.state.step}")
    def finish(self): self.calls.append("finish")
    def progress(self, steps): return steps


def test_stage_machine_order_and_save_cadence():
    cfg = Config()
    cfg.trainer.steps, cfg.trainer.save_every = 3, 2
    d = _ScriptedDriver()
    results = fit(d, cfg)
    assert d.calls == ["resume", "eval:base", "sft", "eval:sft", "start_rl", "save@0", "step0",
                       "step1", "save@2", "step2", "eval:grpo", "save@3", "finish"]
    assert set(results) == {"base", "sft", "grpo"} and d.state.stage == "rl"


def test_no_cold_start_checkpoint_without_sft_or_periodic_saves():
    for sft, every in ((False, 2), (True, 0)):
        cfg = Config()
        cfg.trainer.steps, cfg.trainer.save_every, cfg.sft.enabled = 2, every, sft
        d = _ScriptedDriver()
        fit(d, cfg)
        assert [c for c in d.calls if c.startswith("save")] == ["save@2"]  # the final one


def test_stage_machine_resumed_in_rl_skips_the_pre_rl_stages():
    cfg = Config()
    cfg.trainer.steps, cfg.eval.compare_stages = 3, False
    d = _ScriptedDriver(stage="rl", step=2)
    fit(d, cfg)
    assert d.calls == ["resume", "step2", "save@3", "finish"]


def test_resume_from_the_cold_start_checkpoint_starts_rl_with_this_runs_settings():
    """A resume at step 0 (the cold-start checkpoint) calls start_rl, so the resumed run's
    learning rate, warm-up and KL reference apply instead of the saved schedule."""
    cfg = Config()
    cfg.trainer.steps, cfg.eval.compare_stages = 1, False
    d = _ScriptedDriver(stage="rl", step=0)
    fit(d, cfg)
    assert d.calls == ["resume", "start_rl", "step0", "save@1", "finish"]


def test_resume_from_a_cold_start_checkpoint_without_evaluations_evaluates_the_start():
    """Defect: a checkpoint made with eval.compare_stages=false (an SFT-only run shared by RL
    seeds) carried no start evaluation, so the resumed run's table had no SFT row and no paired
    gain. Now the start is evaluated after start_rl; one that carries its results is not."""
    cfg = Config()
    cfg.trainer.steps = 1
    d = _ScriptedDriver(stage="rl", step=0)
    results = fit(d, cfg)
    assert d.calls == ["resume", "start_rl", "eval:sft", "step0", "eval:grpo", "save@1", "finish"]
    assert set(results) == {"sft", "grpo"}
    d = _ScriptedDriver(stage="rl", step=0)
    d.state.results["sft"] = {"success": 0.5}
    fit(d, cfg)
    assert "eval:sft" not in d.calls


def test_stage_table_lists_every_stage_with_intervals():
    table = stage_table({"base": {"success": 0.0, "tool_call_rate": 0.0},
                         "sft": {"success": 0.25, "success_lo": 0.1, "success_hi": 0.5,
                                 "tool_call_rate": 1.0, "n": 64}})
    lines = table.splitlines()
    assert lines[0].startswith("| stage | n | held-out success | tool-call rate")
    assert lines[2].startswith("| base | - | 0.000 | 0.000")
    assert lines[3].startswith("| sft | 64 | 0.250 [0.100, 0.500] | 1.000")


def test_stage_table_gives_the_paired_gain_over_the_previous_stage():
    # 10 tasks: SFT solves tasks 0-3, RL solves 0-6 (gains 4-6, loses none)
    sft = {"success": 0.4, "n": 10, "success_by_task": [1.0] * 4 + [0.0] * 6}
    rl = {"success": 0.7, "n": 10, "success_by_task": [1.0] * 7 + [0.0] * 3}
    row = stage_table({"sft": sft, "grpo": rl}).splitlines()[3]
    # d = [0]*4 + [1]*3 + [0]*3: mean 0.3, sd = sqrt(0.3*0.7*10/9) = 0.48305,
    # half width = t(0.975, 9) 2.26216 * 0.48305 / sqrt(10) = 0.34555
    assert row.endswith("| +0.300 [-0.046, +0.646] |")
    assert stage_table({"sft": sft}).splitlines()[2].endswith("| - |")


def test_truncated_mask_zeroes_cut_episodes_advantages():
    """algorithm.truncated=mask: a cut episode keeps its place in the group's baseline but
    carries no gradient; keep trains it like any other."""
    import torch

    from rl.config import Config
    from rl.step import StepCore
    from rl.types import Task, Trajectory

    trajs = [Trajectory(Task(str(i), ""), [5, 6, 7], [0, 1, 1], [0.0] * 3, 1) for i in range(3)]
    trajs[1].truncated = True
    adv = torch.tensor([[0.0, 1.0, 1.0], [0.0, -0.5, -0.5], [0.0, -0.5, -0.5]])
    for mode, expect in (("keep", adv), ("mask", adv * torch.tensor([[1.0], [0.0], [1.0]]))):
        cfg = Config()
        cfg.algorithm.truncated, cfg.algorithm.drop_uniform_groups = mode, False
        batch = StepCore(cfg, None, 0, None).make_batch(trajs, adv)
        assert batch is not None
        torch.testing.assert_close(batch.advantages, expect)


class _GuardDriver(_ScriptedDriver):
    """A driver whose guard evaluations score ``scores`` in turn (eval.every)."""

    def __init__(self, scores, stage: str = "start", step: int = 0) -> None:
        super().__init__(stage, step)
        self.scores = list(scores)
        self.guard_tasks = [Task(f"g{i}", f"guard task {i}") for i in range(3)]
        self.rows: list[tuple[int, dict]] = []

    def evaluate(self, label, tasks=None):
        if label == "guard":
            assert tasks is self.guard_tasks  # never the held-out tasks
            self.calls.append(f"guard@{self.state.step}")
            return {"success": self.scores.pop(0)}
        self.calls.append(f"eval:{label}")
        return {"success": 0.1, "n": 8.0}

    def save(self):
        self.calls.append(f"save@{self.state.step}")
        return f"ckpt/step_{self.state.step}"

    def mark_best(self, step):
        self.calls.append(f"best->{step}")
        return f"ckpt/best(step_{step})"

    def load_checkpoint_weights(self, path):
        self.calls.append(f"load:{path}")

    def log_metrics(self, row):
        self.rows.append((self.state.step, row))


def _guard_cfg(steps: int = 4, every: int = 2) -> Config:
    cfg = Config()
    cfg.trainer.steps, cfg.eval.every, cfg.sft.enabled = steps, every, False
    return cfg


def test_guard_keeps_the_best_step_and_the_table_names_it(capsys):
    d = _GuardDriver([0.3, 0.5, 0.2])  # guard at steps 0, 2, 4
    results = fit(d, _guard_cfg())
    assert d.calls == [
        "resume", "eval:base", "start_rl",
        "guard@0", "save@0", "best->0",  # step 0 (the policy RL starts from) is saved
        "step0", "step1", "guard@2", "save@2", "best->2",  # a new best is saved and linked
        "step2", "step3", "guard@4",  # worse: no extra save
        "eval:grpo", "save@4",  # the last checkpoint is the last policy, as always
        "best->2", "load:ckpt/best(step_2)", "eval:grpo_best", "load:ckpt/step_4", "finish"]
    assert (d.state.best_step, d.state.best_guard) == (2, 0.5)
    assert list(results) == ["base", "grpo", "grpo best@step2"]
    assert "| grpo best@step2 | 8 |" in stage_table(results)
    assert [(s, r["guard/success"], r["guard/best_step"]) for s, r in d.rows] == [
        (0, 0.3, 0.0), (2, 0.5, 2.0), (4, 0.2, 2.0)]
    out = capsys.readouterr().out
    assert "step 2 (success 0.500), not the last step 4; best checkpoint: ckpt/best(step_2)" in out


def test_guard_ties_keep_the_earlier_step_and_a_best_last_step_adds_no_row(capsys):
    d = _GuardDriver([0.5, 0.5, 0.5])
    fit(d, _guard_cfg())
    assert d.state.best_step == 0 and "save@2" not in d.calls
    d = _GuardDriver([0.1, 0.2, 0.3])
    results = fit(d, _guard_cfg())
    assert list(results) == ["base", "grpo"] and not any(c.startswith("load") for c in d.calls)
    # the last step is the best: the final save is the one linked (no save inside the loop)
    assert d.calls[-4:] == ["save@4", "best->4", "best->4", "finish"]
    assert "the last policy (step 4) is the best on the guard set (success 0.300); best " \
           "checkpoint: ckpt/best(step_4)" in capsys.readouterr().out


def test_guard_runs_at_the_last_step_when_every_does_not_divide_it():
    d = _GuardDriver([0.3, 0.4, 0.1])
    fit(d, _guard_cfg(steps=3, every=2))
    assert [c for c in d.calls if c.startswith("guard")] == ["guard@0", "guard@2", "guard@3"]


def test_resume_keeps_the_guards_best():
    state = RunState(2, "rl", {"base": {"success": 0.1}}, best_step=2, best_guard=0.5)
    saved = state.to_dict()
    assert RunState.from_dict(saved) == state
    old = {k: v for k, v in saved.items() if not k.startswith("best")}  # a pre-guard state.pt
    assert RunState.from_dict(old).best_step is None
    d = _GuardDriver([0.2])  # only step 4 is left to guard
    d.state = RunState.from_dict(saved)
    results = fit(d, _guard_cfg())
    assert d.calls[:2] == ["resume", "best->2"]  # the link is re-pointed at the state's best
    assert d.state.best_step == 2 and "grpo best@step2" in results
