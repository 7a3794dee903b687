"""Advantages on rollout trees: PORTool-style fork-relative credit blended with GRPO's.

Trajectories of one group that share their first ``k`` tool-call steps (token-identical up to
the end of the model's ``k``-th turn) form a tree: a node is one step (a model turn) with the
exact context before it; the group's prompt is the root; a node's children are the different
next steps taken from it. With ``r_i`` the outcome reward of trajectory ``i``:

* step value ``V(s)`` = the mean (or max: "does any descendant succeed") of ``r_i`` over the
  trajectories through ``s`` (its subtree's leaves);
* fork-relative advantage ``F(s) = V(s) - mean_{c in children(parent(s))} V(c)``: the step
  against its siblings at the fork it was chosen at, each alternative weighted once. A step
  without siblings (its parent has one child) has ``F = 0``: there is nothing to compare it with;
* trajectory-relative advantage ``G_i``: an outcome estimator over the group (GRPO by default,
  rl/algos/advantages.py);
* a step's advantage ``A(i, s) = (1 - w) * G_i + w * F(s)`` on the tokens of that turn, with
  ``w`` = ``algorithm.tree_fork_weight``. ``w = 0`` is outcome GRPO; in a plain GRPO group (no
  shared steps: every trajectory forks at the root) ``F`` of the first step is ``r_i - mean r``.

Departures from PORTool (arXiv 2510.26020), written from its description, not its code: the
step value here is the subtree's mean outcome (``max`` available), without the paper's
auxiliary tool-success term (compose it into the outcome reward instead); ``F`` is not divided
by a std, so it is in reward units while GRPO's ``G`` is std-normalised.

Pure functions over plain lists and tensors: :func:`fork_relative` works on abstract paths
(hand-checkable), :func:`step_paths` derives the paths from token ids, :func:`tree_advantages`
puts the blend on tokens. :class:`TreeCredit` is the ``algorithm.credit=tree`` member.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import torch
from torch import Tensor

from rl.algos.advantages import ADVANTAGES, AdvantageConfig
from rl.types import Trajectory

VALUES = ("mean", "max")


def fork_relative(paths: Sequence[Sequence[Hashable]], rewards: Sequence[float],
                  value: str = "mean") -> list[list[float]]:
    """Fork-relative advantage of every step of every trajectory.

    ``paths[i]``: the node keys of trajectory ``i``'s steps, root excluded (equal keys = the
    same node; a key must identify the whole path to it, e.g. the token prefix). All paths hang
    from one root (one group). ``rewards[i]``: its outcome. Returns ``out[i][j] = F`` of step
    ``j`` of trajectory ``i``.
    """
    if len(paths) != len(rewards):
        raise ValueError(f"fork_relative: {len(paths)} paths but {len(rewards)} rewards")
    if value not in VALUES:
        raise ValueError(f"tree step value {value!r} is not one of: {', '.join(VALUES)}")
    root: tuple = ("<root>",)
    through: dict[Hashable, list[float]] = {}
    children: dict[Hashable, list[Hashable]] = {}
    parent_of: dict[Hashable, Hashable] = {}
    for path, r in zip(paths, rewards):
        parent: Hashable = root
        for node in path:
            if node in parent_of and parent_of[node] != parent:
                raise ValueError(f"tree node {node!r} has two parents: keys must identify the "
                                 "path to the node")
            if node not in parent_of:
                parent_of[node] = parent
                children.setdefault(parent, []).append(node)
            through.setdefault(node, []).append(float(r))
            parent = node
    agg = max if value == "max" else (lambda xs: sum(xs) / len(xs))
    v = {node: agg(rs) for node, rs in through.items()}
    fork: dict[Hashable, float] = {}
    for node, par in parent_of.items():
        sib = children[par]
        fork[node] = v[node] - sum(v[c] for c in sib) / len(sib) if len(sib) > 1 else 0.0
    return [[fork[n] for n in path] for path in paths]


def step_paths(trajs: Sequence[Trajectory]) -> list[list[tuple[int, ...]]]:
    """Node keys of each trajectory's steps: the token ids up to the end of each model turn
    (two trajectories share a step iff they are token-identical through it)."""
    return [[tuple(t.token_ids[: turn.end]) for turn in t.turns] for t in trajs]


def tree_advantages(trajs: Sequence[Trajectory], group_ids: Sequence[int], traj_adv: Tensor,
                    fork_weight: float, value: str = "mean") -> Tensor:
    """``(B, L)``: ``(1 - w) * traj_adv[i] + w * F(step)`` on each turn's model tokens.

    ``traj_adv``: ``(B,)`` trajectory-relative advantages; ``group_ids``: the tree (group) of
    each trajectory; ``L`` = the longest ``token_ids``. Tokens outside turns get 0.
    """
    if not 0.0 <= fork_weight <= 1.0:
        raise ValueError(f"algorithm.tree_fork_weight must be in [0, 1], got {fork_weight}")
    if len(group_ids) != len(trajs) or traj_adv.shape != (len(trajs),):
        raise ValueError(f"tree_advantages: {len(trajs)} trajectories, {len(group_ids)} group "
                         f"ids, advantages of shape {tuple(traj_adv.shape)}")
    paths = step_paths(trajs)
    fork: list[list[float]] = [[] for _ in trajs]
    for g in sorted(set(group_ids)):
        members = [i for i, gi in enumerate(group_ids) if gi == g]
        out = fork_relative([paths[i] for i in members],
                            [float(trajs[i].outcome_reward) for i in members], value)
        for i, f in zip(members, out):
            fork[i] = f
    L = max((len(t.token_ids) for t in trajs), default=0)
    adv = torch.zeros((len(trajs), L), dtype=torch.float32)
    for i, t in enumerate(trajs):
        mask = torch.tensor(t.loss_mask, dtype=torch.float32)
        for j, turn in enumerate(t.turns):
            a = (1.0 - fork_weight) * float(traj_adv[i]) + fork_weight * fork[i][j]
            adv[i, turn.start: turn.end] = a * mask[turn.start: turn.end]
    return adv


class TreeCredit:
    """``algorithm.credit=tree``: :func:`tree_advantages` with an outcome estimator's ``G``."""

    def __init__(self, cfg: AdvantageConfig, fork_weight: float, value: str = "mean") -> None:
        if not 0.0 <= fork_weight <= 1.0:
            raise ValueError(f"algorithm.tree_fork_weight must be in [0, 1], got {fork_weight}")
        self.cfg, self.fork_weight, self.value = cfg, fork_weight, value
        self.estimator = ADVANTAGES.get(cfg.estimator)

    def critic_update(self, trajs: Sequence[Trajectory]) -> dict[str, float]:
        return {}

    def advantages(self, trajs: Sequence[Trajectory], group_ids: Sequence[int]) -> Tensor:
        rewards = torch.tensor([float(t.outcome_reward) for t in trajs], dtype=torch.float32)
        g = self.estimator(rewards, torch.tensor(list(group_ids), dtype=torch.long), self.cfg)
        return tree_advantages(trajs, group_ids, g, self.fork_weight, self.value)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
