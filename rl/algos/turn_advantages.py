"""Turn-level credit: per-turn rewards -> discounted per-turn returns -> group-normalised
advantages -> per-token advantages ``(B, L)``.

A trajectory with model turns ``t = 0..T-1`` has per-turn rewards ``r_t`` (``traj.turn_rewards``,
the weighted turn-level reward terms) and one trajectory-level reward (``traj.outcome_reward``),
which is added to the reward of the last turn. The return of turn ``t`` is

    G_t = sum_{k >= t} gamma^(k - t) * r_k

and its advantage is ``G_t`` normalised within the trajectory's GRPO group (same task), in one
of two ways (``mode``):

* ``"index"`` (default): against the turns with the same index ``t`` in the group:
  ``A_{i,t} = (G_{i,t} - mean_j G_{j,t}) / (std_j G_{j,t} + eps)`` over the group members ``j``
  that have a turn ``t``. Returns at the same depth are comparable (an early turn's return sums
  more rewards than a late one's, so pooling depths would favour early turns whatever they did).
  A turn index only one member reached gets advantage 0 (no baseline), like a group of size 1.
* ``"group"``: against all turns of all members of the group pooled together.

The std is the population std; ``norm_std=False`` only centres (Dr. GRPO style). Every token of
turn ``t`` gets ``A_t``; prompt and observation tokens get 0.

With a single turn, ``gamma`` irrelevant and no turn rewards, ``"index"`` mode equals outcome
GRPO (tested).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from rl.types import Trajectory

TURN_NORMS = ("index", "group")


def turn_rewards(traj: Trajectory) -> list[float]:
    """Per-turn rewards ``r_t`` of one trajectory, the outcome reward added to the last turn.

    Reads ``traj.turn_rewards`` (filled by the trainer's scoring from
    ``algorithm.turn_reward_weights``); an empty list (unscored, or no turn rewards) counts as
    zeros, so only the outcome reward remains.
    """
    r = [float(x) for x in traj.turn_rewards] or [0.0] * len(traj.turns)
    if len(r) != len(traj.turns):
        raise ValueError(f"trajectory {traj.task.id}: {len(r)} turn rewards for "
                         f"{len(traj.turns)} turns")
    if r:
        r[-1] += float(traj.outcome_reward)
    return r


def discounted_returns(rewards: Tensor, gamma: float) -> Tensor:
    """Reward-to-go ``G_t = r_t + gamma * G_{t+1}``. ``(T,) -> (T,)``."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    out = torch.zeros_like(rewards, dtype=torch.float32)
    running = 0.0
    for t in range(rewards.numel() - 1, -1, -1):
        running = float(rewards[t]) + gamma * running
        out[t] = running
    return out


def normalise_turn_returns(
    returns: Sequence[Tensor], group_ids: Sequence[int], *, mode: str = "index",
    norm_std: bool = True, eps: float = 1e-6,
) -> list[Tensor]:
    """Group-normalised turn advantages (module docstring). ``returns[i]`` is ``(T_i,)``;
    returns a list of ``(T_i,)`` tensors."""
    if mode not in TURN_NORMS:
        raise ValueError(f"turn normalisation must be one of {TURN_NORMS}, got {mode!r}")
    if len(returns) != len(group_ids):
        raise ValueError(f"{len(returns)} trajectories but {len(group_ids)} group ids")
    # bucket key -> list of (trajectory, turn) positions sharing a baseline
    buckets: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for i, (g, ret) in enumerate(zip(group_ids, returns)):
        for t in range(ret.numel()):
            key = (int(g), t if mode == "index" else 0)
            buckets.setdefault(key, []).append((i, t))
    out = [torch.zeros(r.numel(), dtype=torch.float32) for r in returns]
    for members in buckets.values():
        vals = torch.stack([returns[i][t].float() for i, t in members])
        centred = vals - vals.mean()
        if norm_std:
            centred = centred / (vals.std(unbiased=False) + eps)
        if bool((vals == vals[0]).all()):  # one member, or no spread: exactly 0, no rounding
            centred = torch.zeros_like(centred)
        for (i, t), a in zip(members, centred):
            out[i][t] = a
    return out


def spread_over_turns(trajs: Sequence[Trajectory], per_turn: Sequence[Tensor]) -> Tensor:
    """Per-token advantages ``(B, L)`` (``L`` = longest trajectory): every token of turn ``t``
    of trajectory ``i`` gets ``per_turn[i][t]``; all other tokens 0."""
    L = max((len(t.token_ids) for t in trajs), default=0)
    adv = torch.zeros((len(trajs), L), dtype=torch.float32)
    for i, (traj, values) in enumerate(zip(trajs, per_turn)):
        if values.numel() != len(traj.turns):
            raise ValueError(f"trajectory {i}: {values.numel()} values for {len(traj.turns)} turns")
        for turn, v in zip(traj.turns, values):
            adv[i, turn.start : turn.end] = v
    return adv


def turn_level_advantages(
    trajs: Sequence[Trajectory], group_ids: Sequence[int], *, gamma: float = 1.0,
    mode: str = "index", norm_std: bool = True, eps: float = 1e-6,
) -> Tensor:
    """Turn-level GRPO advantages, ``(B, L)`` per token (module docstring)."""
    returns = [discounted_returns(torch.tensor(turn_rewards(t)), gamma) for t in trajs]
    per_turn = normalise_turn_returns(returns, group_ids, mode=mode, norm_std=norm_std, eps=eps)
    return spread_over_turns(trajs, per_turn)


class TurnLevelGRPO:
    """The trainer's credit assigner for GRPO with turn-level rewards (no critic, no state)."""

    def __init__(self, gamma: float, mode: str, norm_std: bool) -> None:
        if mode not in TURN_NORMS:
            raise ValueError(f"algorithm.turn_norm must be one of {TURN_NORMS}, got {mode!r}")
        self.gamma, self.mode, self.norm_std = gamma, mode, norm_std

    def critic_update(self, trajs: Sequence[Trajectory]) -> dict[str, float]:
        return {}

    def advantages(self, trajs: Sequence[Trajectory], group_ids: Sequence[int]) -> Tensor:
        return turn_level_advantages(trajs, group_ids, gamma=self.gamma, mode=self.mode,
                                     norm_std=self.norm_std)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
