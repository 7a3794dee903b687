"""Trainer pieces that need no model: batching with uniform-group filtering, the stage table."""

from __future__ import annotations

import torch

from rl.config import Config
from rl.trainer import Trainer, stage_table
from rl.types import Task, Trajectory


class _Tok:
    pad_token_id = 0


def _trajs(rewards, group_size):
    out = []
    for i, _ in enumerate(rewards):
        ids = [5, 6, 7, 8]
        out.append(Trajectory(Task(str(i), ""), ids, [0, 0, 1, 1], [0.0] * 4, 2,
                              group_id=i // group_size))
    return out


def _trainer(drop: bool) -> Trainer:
    t = Trainer.__new__(Trainer)  # only the batching logic; no model needed
    t.cfg = Config()
    t.cfg.algorithm.drop_uniform_groups = drop
    from rl.algos import ADVANTAGES

    t.advantage = ADVANTAGES.get("grpo")
    t.tokenizer = _Tok()
    t.credit = None  # outcome advantages (no turn-level credit)
    return t


def test_uniform_groups_are_left_out_of_the_update():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0])  # groups: [1,1] [0,1] [0,0]
    trajs = _trajs(rewards, 2)
    batch = _trainer(True).make_batch(trajs, rewards)
    assert batch is not None and len(batch) == 2  # only the mixed group
    # grpo with population std: [0, 1] -> [-1, +1] on the model tokens
    expected = torch.tensor([[-1.0, -1.0], [1.0, 1.0]])
    torch.testing.assert_close(batch.advantages[:, 2:], expected, atol=1e-5, rtol=0)  # eps
    assert torch.all(batch.advantages[:, :2] == 0)  # prompt tokens carry no advantage
    full = _trainer(False).make_batch(trajs, rewards)
    assert full is not None and len(full) == 6


def test_all_uniform_means_no_update():
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.0])
    assert _trainer(True).make_batch(_trajs(rewards, 2), rewards) is None


def test_stage_table_lists_every_stage():
    table = stage_table({"base": {"success": 0.0, "tool_call_rate": 0.0},
                         "sft": {"success": 0.25, "tool_call_rate": 1.0}})
    lines = table.splitlines()
    assert lines[0].startswith("| stage | held-out success | tool-call rate")
    assert lines[2].startswith("| base | 0.000 | 0.000") and lines[3].startswith("| sft | 0.250 | 1.000")
