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
