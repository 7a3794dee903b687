"""Credit assignment, one knob: ``algorithm.credit`` names a registry entry with one Protocol.

    outcome   one advantage per trajectory from an outcome estimator (``algorithm.advantage``:
              grpo | drgrpo | rloo | reinforce, rl/algos/advantages.py), on every model token
    turn      turn-level GRPO: each turn's discounted return, normalised within the group by turn
              index or pooled (rl/algos/turn_advantages.py), on that turn's tokens
    archer    ArCHer's utterance-level double critic trained by TD on replayed turns; the actor's
              advantage min Q - min V on each turn's tokens (rl/algos/archer.py)
    tree      PORTool-style fork-relative advantages on rollout trees (trajectories sharing their
              first steps), blended with the outcome estimator's by ``tree_fork_weight``
              (rl/algos/tree.py)

Every member implements :class:`Credit`; a driver calls ``critic_update(trajs)`` after scoring
and ``advantages(trajs, group_ids) -> (B, L)`` to build the update batch. Members with state
(the critic, its optimizer, the replay buffer) save and load it with the checkpoint.

Distributed (data parallel / Ray). Credit is computed where the whole step's trajectories are:
the local driver's rank 0 gathers every rank's trajectories, the Ray controller holds them all.
ArCHer's critic therefore trains in one process (rank 0 / the controller), and each rank
receives its rows' advantages (rl/step.py). The critic is small next to the policy; a policy-
backbone critic needs the policy's module in that process, which the Ray controller does not
hold, so ``critic_backbone=policy`` is refused under Ray (the encoder critic is the default).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from rl.algos.advantages import ADVANTAGES, AdvantageConfig
from rl.registry import Registry
from rl.types import Trajectory


@runtime_checkable
class Credit(Protocol):
    """Turns a step's scored trajectories into per-token advantages."""

    def critic_update(self, trajs: Sequence[Trajectory]) -> dict[str, float]:
        """Learn from the step's trajectories (a critic's TD update); metrics, maybe empty."""
        ...

    def advantages(self, trajs: Sequence[Trajectory], group_ids: Sequence[int]) -> Tensor:
        """``(B, L)`` advantages, ``L`` = the longest ``token_ids``; 0 off model tokens. A row
        of zeros means "no signal" (the driver leaves it out of the update)."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class CreditContext:
    """What a credit assigner may need besides its settings (``rl.config.AlgorithmConfig``)."""

    vocab_size: int = 0
    policy: Any = None
    """The policy module (a critic with ``critic_backbone=policy`` reads its hidden states)."""
    seed: int = 0
    action_sampler: Callable[[list[Any]], list[Any]] | None = None
    """``states -> actions`` from the rollout engine (ArCHer's ``fresh_actions``)."""


CreditFactory = Callable[[Any, CreditContext], Credit]
CREDITS: Registry[CreditFactory] = Registry("credit assignment")


def make_credit(algo: Any, ctx: CreditContext) -> Credit:
    """The credit assigner ``algo.credit`` names (``algo``: an ``AlgorithmConfig``)."""
    return CREDITS.get(algo.credit)(algo, ctx)


def advantage_config(algo: Any) -> AdvantageConfig:
    """The outcome estimators' typed settings from an ``AlgorithmConfig``."""
    return AdvantageConfig(estimator=algo.advantage, norm_std=algo.norm_std,
                           std_unbiased=algo.std_unbiased, eps=algo.eps,
                           std_floor=algo.std_floor, batch_baseline=algo.batch_baseline)


def broadcast_over_tokens(adv: Tensor, trajs: Sequence[Trajectory]) -> Tensor:
    """``(B,)`` -> ``(B, L)``: each trajectory's advantage on its model tokens (loss mask 1)."""
    L = max((len(t.token_ids) for t in trajs), default=0)
    out = torch.zeros((len(trajs), L), dtype=torch.float32)
    for i, t in enumerate(trajs):
        mask = torch.tensor(t.loss_mask, dtype=torch.float32)
        out[i, : len(t.loss_mask)] = float(adv[i]) * mask
    return out


class OutcomeCredit:
    """One outcome advantage per trajectory (``algorithm.advantage``), no state."""

    def __init__(self, cfg: AdvantageConfig) -> None:
        self.cfg = cfg
        self.estimator = ADVANTAGES.get(cfg.estimator)

    def critic_update(self, trajs: Sequence[Trajectory]) -> dict[str, float]:
        return {}

    def trajectory_advantages(self, trajs: Sequence[Trajectory],
                              group_ids: Sequence[int]) -> Tensor:
        """``(B,)``: the estimator on the trajectories' ``outcome_reward``."""
        rewards = torch.tensor([float(t.outcome_reward) for t in trajs], dtype=torch.float32)
        return self.estimator(rewards, torch.tensor(list(group_ids), dtype=torch.long), self.cfg)

    def advantages(self, trajs: Sequence[Trajectory], group_ids: Sequence[int]) -> Tensor:
        return broadcast_over_tokens(self.trajectory_advantages(trajs, group_ids), trajs)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@CREDITS.register("outcome")
def _outcome(algo: Any, ctx: CreditContext) -> Credit:
    return OutcomeCredit(advantage_config(algo))


@CREDITS.register("turn")
def _turn(algo: Any, ctx: CreditContext) -> Credit:
    from rl.algos.turn_advantages import TurnLevelGRPO

    return TurnLevelGRPO(algo.gamma, algo.turn_norm, algo.norm_std)


@CREDITS.register("tree")
def _tree(algo: Any, ctx: CreditContext) -> Credit:
    from rl.algos.tree import TreeCredit

    return TreeCredit(advantage_config(algo), algo.tree_fork_weight)


@CREDITS.register("archer")
def _archer(algo: Any, ctx: CreditContext) -> Credit:
    from rl.algos.archer import Archer
    from rl.algos.critic import TokenCritic

    c = algo.archer
    if c.critic_backbone == "policy" and ctx.policy is None:
        raise ValueError("algorithm.archer.critic_backbone=policy needs the policy in the process "
                         "that trains the critic (not available under launcher=ray); use "
                         "critic_backbone=encoder")
    critic = TokenCritic(ctx.vocab_size, backbone=c.critic_backbone, hidden=c.critic_hidden,
                         layers=c.critic_layers, max_tokens=c.critic_max_tokens,
                         policy=ctx.policy)
    if ctx.policy is not None:
        critic = critic.to(next(ctx.policy.parameters()).device)
    return Archer(c, critic, seed=ctx.seed, action_sampler=ctx.action_sampler)
