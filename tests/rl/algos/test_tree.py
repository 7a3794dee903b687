"""Tree advantages (rl/algos/tree.py) against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from rl.algos.advantages import AdvantageConfig
from rl.algos.credit import CREDITS, CreditContext, make_credit
from rl.algos.tree import TreeCredit, fork_relative, step_paths, tree_advantages
from rl.types import Task, Trajectory, Turn

# One group, hand-drawn tree (keys are whole paths):
#   root -> a (trajs 0, 1, 2) -> a1 (0, 1) -> a1x (0)
#                                          -> a1y (1)
#                             -> a2 (2)
#        -> b (3) -> bb (3)
PATHS = [["a", "a/1", "a/1/x"], ["a", "a/1", "a/1/y"], ["a", "a/2"], ["b", "b/b"]]
REWARDS = [1.0, 0.0, 0.0, 1.0]


def test_fork_relative_by_hand():
    # V(a) = 1/3, V(b) = 1, fork mean 2/3: F(a) = -1/3, F(b) = +1/3
    # V(a1) = 1/2, V(a2) = 0, fork mean 1/4: F(a1) = 1/4, F(a2) = -1/4
    # V(a1x) = 1, V(a1y) = 0: F = +-1/2; bb is an only child: F = 0
    out = fork_relative(PATHS, REWARDS)
    expect = [[-1 / 3, 0.25, 0.5], [-1 / 3, 0.25, -0.5], [-1 / 3, -0.25], [1 / 3, 0.0]]
    for o, e in zip(out, expect):
        assert o == pytest.approx(e, abs=1e-12)


def test_fork_relative_max_value():
    # max: V(a) = 1, V(b) = 1 -> F = 0; V(a1) = 1, V(a2) = 0 -> F = +-1/2
    out = fork_relative(PATHS, REWARDS, value="max")
    assert out[0] == pytest.approx([0.0, 0.5, 0.5])
    assert out[2] == pytest.approx([0.0, -0.5])


def test_fork_relative_errors():
    with pytest.raises(ValueError, match="not one of: mean, max"):
        fork_relative(PATHS, REWARDS, value="median")
    with pytest.raises(ValueError, match="2 paths but 1 rewards"):
        fork_relative(PATHS[:2], [1.0])
    with pytest.raises(ValueError, match="two parents"):
        fork_relative([["a", "x"], ["b", "x"]], [0.0, 1.0])


def _traj(steps: list[tuple[list[int], list[int]]], reward: float, prompt=(1, 2, 3)) -> Trajectory:
    """A trajectory from (action ids, observation ids) per step after a prompt."""
    ids, mask, turns = list(prompt), [0] * len(prompt), []
    for action, obs in steps:
        turns.append(Turn(len(ids), len(ids) + len(action), "", "stop"))
        ids += action + obs
        mask += [1] * len(action) + [0] * len(obs)
    t = Trajectory(Task("t", ""), ids, mask, [0.0] * len(ids), len(prompt), turns=turns,
                   outcome_reward=reward)
    t.validate()
    return t


def _tree_trajs() -> list[Trajectory]:
    """The hand-drawn tree as token trajectories (group 0) plus a plain pair (group 1)."""
    a, a1, a2, x, y, b, bb = [10, 11], [20], [21, 22], [30], [31, 32], [40], [41]
    obs = [5, 5]
    return [
        _traj([(a, obs), (a1, obs), (x, [])], 1.0),
        _traj([(a, obs), (a1, obs), (y, [])], 0.0),
        _traj([(a, obs), (a2, [])], 0.0),
        _traj([(b, obs), (bb, [])], 1.0),
        _traj([([50], [])], 2.0, prompt=(7,)),
        _traj([([51], [])], 0.0, prompt=(7,)),
    ]


def test_step_paths_share_exactly_the_common_steps():
    p = step_paths(_tree_trajs())
    assert p[0][0] == p[1][0] == p[2][0] != p[3][0]
    assert p[0][1] == p[1][1] != p[2][1]
    assert p[0][2] != p[1][2]


def test_tree_advantages_on_tokens_by_hand():
    trajs = _tree_trajs()
    groups = [0, 0, 0, 0, 1, 1]
    g = torch.tensor([1.0, -1.0, -1.0, 1.0, 1.0, -1.0])
    adv = tree_advantages(trajs, groups, g, fork_weight=0.25)

    def a(gi, f):
        return 0.75 * gi + 0.25 * f

    t0 = trajs[0]  # prompt 3 | a a o o | a1 o o | x
    expect0 = [0, 0, 0, a(1, -1 / 3), a(1, -1 / 3), 0, 0, a(1, 0.25), 0, 0, a(1, 0.5)]
    assert len(t0.token_ids) == len(expect0)
    torch.testing.assert_close(adv[0, : len(expect0)], torch.tensor(expect0), atol=1e-6, rtol=0)
    t3 = [0, 0, 0, a(1, 1 / 3), 0, 0, a(1, 0.0)]
    torch.testing.assert_close(adv[3, :7], torch.tensor(t3), atol=1e-6, rtol=0)
    assert torch.all(adv[3, 7:] == 0)  # padding beyond the row
    # group 1: plain GRPO pair, forks at the root: F = r - mean r = +-1
    assert float(adv[4, 1]) == pytest.approx(a(1, 1.0))
    assert float(adv[5, 1]) == pytest.approx(a(-1, -1.0))
    # w = 0 is the trajectory advantage on every model token
    adv0 = tree_advantages(trajs, groups, g, fork_weight=0.0)
    assert torch.equal(adv0[1, : len(trajs[1].token_ids)],
                       -torch.tensor(trajs[1].loss_mask, dtype=torch.float32))


def test_tree_advantages_errors():
    trajs = _tree_trajs()
    with pytest.raises(ValueError, match=r"tree_fork_weight must be in \[0, 1\], got 1.5"):
        tree_advantages(trajs, [0] * 6, torch.zeros(6), 1.5)
    with pytest.raises(ValueError, match="6 trajectories, 5 group ids"):
        tree_advantages(trajs, [0] * 5, torch.zeros(6), 0.5)


def test_tree_credit_is_registered_and_uses_grpo_for_g():
    from rl.config import AlgorithmConfig

    assert "tree" in CREDITS
    algo = AlgorithmConfig(credit="tree", tree_fork_weight=0.5)
    credit = make_credit(algo, CreditContext())
    assert isinstance(credit, TreeCredit)
    trajs = _tree_trajs()
    adv = credit.advantages(trajs, [0, 0, 0, 0, 1, 1])
    # group 0 rewards [1, 0, 0, 1]: GRPO G = (r - 0.5) / (0.5 + eps) ~ +-1
    g0 = (1.0 - 0.5) / (0.5 + algo.eps)
    assert float(adv[0, 3]) == pytest.approx(0.5 * g0 + 0.5 * (-1 / 3), rel=1e-6)
    assert float(adv[2, 7]) == pytest.approx(0.5 * -g0 + 0.5 * (-0.25), rel=1e-6)
    assert credit.critic_update(trajs) == {} and credit.state_dict() == {}


def test_tree_credit_rejects_bad_weight():
    with pytest.raises(ValueError, match="tree_fork_weight"):
        TreeCredit(AdvantageConfig(), 2.0)
