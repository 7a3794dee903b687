"""Turn-level returns and GRPO-normalised turn advantages against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from rl.algos import ADVANTAGES, AdvantageConfig
from rl.algos.turn_advantages import (
    discounted_returns,
    normalise_turn_returns,
    spread_over_turns,
    turn_level_advantages,
    turn_rewards,
)
from rl.types import Task, Trajectory, Turn


def _traj(turn_rewards, outcome, group=0, turn_len=2, obs_len=1, prompt=3):
    """Prompt tokens, then per turn ``turn_len`` model tokens and ``obs_len`` observation ones."""
    ids, mask, turns, pos = list(range(prompt)), [0] * prompt, [], prompt
    for t in range(len(turn_rewards)):
        turns.append(Turn(pos, pos + turn_len, f"t{t}", "stop"))
        ids += [10] * turn_len
        mask += [1] * turn_len
        pos += turn_len
        if t < len(turn_rewards) - 1:
            ids += [20] * obs_len
            mask += [0] * obs_len
            pos += obs_len
    return Trajectory(Task("x", ""), ids, mask, [0.0] * len(ids), prompt, turns=turns,
                      outcome_reward=outcome, turn_rewards=list(turn_rewards), group_id=group)


def test_turn_rewards_add_the_outcome_to_the_last_turn():
    assert turn_rewards(_traj([0.5, 0.0, 0.25], 1.0)) == [0.5, 0.0, 1.25]
    assert turn_rewards(_traj([], 1.0)) == []
    unscored = _traj([0.0, 0.0], 2.0)
    unscored.turn_rewards = []  # before scoring: zeros, only the outcome remains
    assert turn_rewards(unscored) == [0.0, 2.0]
    bad = _traj([0.0, 0.0], 1.0)
    bad.turn_rewards = [1.0]
    with pytest.raises(ValueError, match="1 turn rewards for 2 turns"):
        turn_rewards(bad)


def test_discounted_returns_by_hand():
    # r = [0.5, 0, 1], gamma 0.5: G2 = 1, G1 = 0 + 0.5 * 1 = 0.5, G0 = 0.5 + 0.5 * 0.5 = 0.75
    g = discounted_returns(torch.tensor([0.5, 0.0, 1.0]), 0.5)
    torch.testing.assert_close(g, torch.tensor([0.75, 0.5, 1.0]))
    torch.testing.assert_close(discounted_returns(torch.tensor([1.0, 2.0]), 1.0),
                               torch.tensor([3.0, 2.0]))
    with pytest.raises(ValueError, match="gamma"):
        discounted_returns(torch.tensor([1.0]), 1.5)


def test_index_and_group_normalisation_by_hand():
    # A: G = [0.75, 0.5, 1.0]; B: G = [0.25, 0.5]  (same group)
    ga, gb = torch.tensor([0.75, 0.5, 1.0]), torch.tensor([0.25, 0.5])
    a, b = normalise_turn_returns([ga, gb], [7, 7], mode="index", norm_std=False)
    torch.testing.assert_close(a, torch.tensor([0.25, 0.0, 0.0]))  # turn 2: no baseline -> 0
    torch.testing.assert_close(b, torch.tensor([-0.25, 0.0]))
    a, b = normalise_turn_returns([ga, gb], [7, 7], mode="index", norm_std=True)
    # turn 0: mean 0.5, population std 0.25 -> +-1 (eps 1e-6)
    torch.testing.assert_close(a, torch.tensor([1.0, 0.0, 0.0]), atol=1e-4, rtol=0)
    torch.testing.assert_close(b, torch.tensor([-1.0, 0.0]), atol=1e-4, rtol=0)
    a, b = normalise_turn_returns([ga, gb], [7, 7], mode="group", norm_std=False)
    # pooled: [0.75, 0.5, 1.0, 0.25, 0.5], mean 0.6
    torch.testing.assert_close(a, torch.tensor([0.15, -0.1, 0.4]))
    torch.testing.assert_close(b, torch.tensor([-0.35, -0.1]))
    # different groups never share a baseline
    a, b = normalise_turn_returns([ga, gb], [1, 2], mode="group", norm_std=False)
    torch.testing.assert_close(a, ga - ga.mean())
    torch.testing.assert_close(b, gb - gb.mean())
    with pytest.raises(ValueError, match="turn normalisation"):
        normalise_turn_returns([ga], [0], mode="nope")


def test_single_turn_outcome_only_equals_grpo():
    outcomes = [1.0, 0.0, 0.0, 1.0, 0.5, 0.0]
    groups = [0, 0, 0, 0, 1, 1]
    trajs = [_traj([0.0], r, g) for r, g in zip(outcomes, groups)]
    adv = turn_level_advantages(trajs, groups, gamma=0.9)
    grpo = ADVANTAGES.get("grpo")(torch.tensor(outcomes), torch.tensor(groups), AdvantageConfig())
    torch.testing.assert_close(adv[:, 3:5], grpo[:, None].expand(6, 2))
    assert torch.all(adv[:, :3] == 0)


def test_spread_puts_each_turn_value_on_its_tokens_only():
    a, b = _traj([0.0, 0.0, 0.0], 1.0), _traj([0.0], 0.0)
    adv = spread_over_turns([a, b], [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([-1.0])])
    # a: prompt 3 | turn0 2 | obs 1 | turn1 2 | obs 1 | turn2 2  -> length 11
    assert adv.shape == (2, 11)
    assert adv[0].tolist() == [0, 0, 0, 1, 1, 0, 2, 2, 0, 3, 3]
    assert adv[1].tolist() == [0, 0, 0, -1, -1] + [0] * 6
    with pytest.raises(ValueError, match="values for 3 turns"):
        spread_over_turns([a], [torch.tensor([1.0])])


def test_turn_level_credit_differs_from_outcome_only_as_expected():
    # Same outcome (both failed), but A made progress in turn 0 and B did not: outcome-only GRPO
    # sees a uniform group (advantage 0); turn-level credit rewards A's first turn only.
    a, b = _traj([1.0, 0.0], 0.0), _traj([0.0, 0.0], 0.0)
    adv = turn_level_advantages([a, b], [0, 0], gamma=1.0, norm_std=False)
    assert adv[0, 3:5].tolist() == [0.5, 0.5] and adv[1, 3:5].tolist() == [-0.5, -0.5]
    assert adv[0, 6:8].tolist() == [0.0, 0.0] and adv[1, 6:8].tolist() == [0.0, 0.0]
    outcome = ADVANTAGES.get("grpo")(torch.tensor([0.0, 0.0]), torch.tensor([0, 0]),
                                     AdvantageConfig())
    assert outcome.tolist() == [0.0, 0.0]
