"""ArCHer: hierarchical actor-critic for multi-turn agents (Zhou et al. 2024, "ArCHer: Training
Language Model Agents via Hierarchical Multi-Turn RL", Algorithm 1).

High level: an off-policy, utterance-level double critic (``rl.algos.critic.TokenCritic``: heads
Q1, Q2, V1, V2 and a Polyak-averaged target copy) trained by TD on turns ``(s, a, r, s', done)``
replayed uniformly from a buffer:

    Q_i(s, a) <- r + gamma * (1 - done) * V_target(s')                      (paper eq. 2)
    V_i(s)    <- Q_target(s, a'),   a' ~ pi(. | s)                          (paper eq. 3)

With ``clipped_double`` (default) both heads regress to the min over the two target heads
(``min_j V_target_j``, ``min_j Q_target_j``, as in TD3 / the paper's double-critic); otherwise
head ``i`` regresses to target head ``i`` (the authors' released code).

Low level: the token policy is trained with the utterance advantage

    A(s, a) = min_i Q_i(s, a) - min_i V_i(s)                               (online, not target)

spread over every token of the turn, loss ``-A * sum_h log pi(a^h | s, a^{<h})``. That is a
policy gradient with per-token advantages, so it goes through the trainer's learner
(``learner.update`` with the clipped policy loss; with ``ppo_epochs = mini_batches = 1`` the
ratio is exactly 1, so the clipped loss is exactly ``-A * logpi`` per token) and
``loss.agg = seq-mean-token-sum`` (sum over a turn's tokens, mean over trajectories; the paper
averages over turns, which differs by the constant turns-per-trajectory factor).

Departures from the paper, for a CPU budget (each is a config option where it matters):

* The actor trains on this step's on-policy turns (their states and the actions the current
  policy just sampled), not on states re-sampled from the buffer with fresh actions: that would
  cost an extra generation pass per update. The critic stays off-policy (replay).
* ``V``'s target needs ``a' ~ pi(. | s)``. With ``fresh_actions=False`` (default) the action
  stored with the transition is used: for this step's turns that *is* a sample of the current
  policy; for older ones it is a stale action (V then tracks a mix of recent policies).
  ``fresh_actions=True`` samples a' from the rollout engine for every critic batch.
* The last turn of an episode has ``done = 1`` whether the env terminated or the turn limit
  truncated it: the episode ends there in the data (no next observation was rendered) and the
  turn limit is part of the task.
* Critic warm-up counts RL steps (``warmup_iters`` steps with critic updates only), each step
  adding its turns to the buffer.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from rl.algos.critic import CriticValues
from rl.algos.turn_advantages import spread_over_turns, turn_rewards
from rl.config import ArcherConfig
from rl.types import Trajectory

ADVANTAGE_MODES = ("q-v", "td")



# -- pure functions --------------------------------------------------------------------------------


def q_targets(
    reward: Tensor, done: Tensor, next_v1: Tensor, next_v2: Tensor, gamma: float,
    clipped_double: bool = True,
) -> tuple[Tensor, Tensor]:
    """TD targets of the two Q heads, ``r + gamma * (1 - done) * V_target(s')``. All ``(N,)``.

    ``clipped_double``: both use ``min(next_v1, next_v2)``; else head i uses ``next_v_i``.
    """
    if clipped_double:
        next_v1 = next_v2 = torch.minimum(next_v1, next_v2)
    keep = 1.0 - done.float()
    return reward + gamma * keep * next_v1, reward + gamma * keep * next_v2


def v_targets(
    fresh_q1: Tensor, fresh_q2: Tensor, clipped_double: bool = True
) -> tuple[Tensor, Tensor]:
    """Targets of the two V heads: ``Q_target(s, a')`` with ``a' ~ pi``. All ``(N,)``."""
    if clipped_double:
        m = torch.minimum(fresh_q1, fresh_q2)
        return m, m
    return fresh_q1, fresh_q2


def critic_loss(
    out: CriticValues, tq1: Tensor, tq2: Tensor, tv1: Tensor, tv2: Tensor
) -> tuple[Tensor, dict[str, Tensor]]:
    """Sum of the four mean-squared TD errors (targets are detached). Returns ``(loss, metrics)``.
    """
    losses = {
        "q1_loss": torch.mean((out.q1 - tq1.detach()) ** 2),
        "q2_loss": torch.mean((out.q2 - tq2.detach()) ** 2),
        "v1_loss": torch.mean((out.v1 - tv1.detach()) ** 2),
        "v2_loss": torch.mean((out.v2 - tv2.detach()) ** 2),
    }
    total = losses["q1_loss"] + losses["q2_loss"] + losses["v1_loss"] + losses["v2_loss"]
    metrics = {k: v.detach() for k, v in losses.items()}
    metrics["q_mean"] = torch.minimum(out.q1, out.q2).detach().mean()
    metrics["v_mean"] = torch.minimum(out.v1, out.v2).detach().mean()
    return total, metrics


def q_minus_v(out: CriticValues) -> Tensor:
    """ArCHer's actor advantage ``min(Q1, Q2) - min(V1, V2)``. ``(N,)``."""
    return torch.minimum(out.q1, out.q2) - torch.minimum(out.v1, out.v2)


@torch.no_grad()
def polyak_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """``target <- (1 - tau) * target + tau * online``, parameter by parameter (and buffers)."""
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau must be in [0, 1], got {tau}")
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.mul_(1.0 - tau).add_(o.detach(), alpha=tau)
    for tb, ob in zip(target.buffers(), online.buffers(), strict=True):
        tb.copy_(ob)


# -- replay ----------------------------------------------------------------------------------------


class Transition(NamedTuple):
    """One utterance-level step. ``state``/``action``/``next_state`` are token-id tuples for the
    token critic (any hashable values for other critics, e.g. ints in the chain-MDP test)."""

    state: Any
    action: Any
    reward: float
    next_state: Any
    done: bool


class ReplayBuffer:
    """FIFO buffer of transitions with uniform sampling (with replacement) from a seeded RNG."""

    def __init__(self, capacity: int, seed: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"replay capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.items: list[Transition] = []
        self.next = 0  # slot overwritten next once full
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.items)

    def add(self, tr: Transition) -> None:
        if len(self.items) < self.capacity:
            self.items.append(tr)
        else:
            self.items[self.next] = tr
        self.next = (self.next + 1) % self.capacity

    def extend(self, trs: Sequence[Transition]) -> None:
        for tr in trs:
            self.add(tr)

    def sample(self, n: int) -> list[Transition]:
        if not self.items:
            raise ValueError("cannot sample from an empty replay buffer")
        return [self.items[self.rng.randrange(len(self.items))] for _ in range(n)]

    def state_dict(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "items": [tuple(t) for t in self.items],
                "next": self.next, "rng": self.rng.getstate()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.capacity = state["capacity"]
        self.items = [Transition(*t) for t in state["items"]]
        self.next = state["next"]
        self.rng.setstate(state["rng"])


def transitions(traj: Trajectory) -> list[Transition]:
    """The turns of one trajectory as utterance transitions: ``s_t`` = tokens before turn ``t``,
    ``a_t`` = the turn's tokens, ``s'_t = s_{t+1}``; the last turn is ``done`` (module doc)."""
    ids, rewards = traj.token_ids, turn_rewards(traj)
    out = []
    for t, turn in enumerate(traj.turns):
        last = t == len(traj.turns) - 1
        nxt = ids if last else ids[: traj.turns[t + 1].start]
        out.append(Transition(tuple(ids[: turn.start]), tuple(ids[turn.start : turn.end]),
                              rewards[t], tuple(nxt), last))
    return out


# -- the trainer-facing object ---------------------------------------------------------------------

ActionSampler = Callable[[list[Any]], list[Any]]


class Archer:
    """Critic, target critic, their optimizer and the replay buffer; a stateful trainer part.

    ``critic_update(trajs)`` adds the step's turns to the buffer and runs the critic updates;
    ``advantages(trajs, groups)`` gives the actor's per-token advantages ``(B, L)`` (zeros during
    warm-up, so the trainer skips the actor update).
    """

    def __init__(self, cfg: ArcherConfig, critic: Any, *, seed: int = 0,
                 action_sampler: ActionSampler | None = None) -> None:
        """``critic``: a module like ``rl.algos.critic.TokenCritic``: ``critic(states, actions)
        -> CriticValues``, ``critic.state_values(states) -> (V1, V2)``, ``critic.clone()``."""
        if cfg.advantage not in ADVANTAGE_MODES:
            raise ValueError(f"archer.advantage must be one of {ADVANTAGE_MODES}, "
                             f"got {cfg.advantage!r}")
        if cfg.fresh_actions and action_sampler is None:
            raise ValueError("archer.fresh_actions needs an action sampler (the rollout engine)")
        self.cfg, self.critic = cfg, critic
        self.target = critic.clone()
        for p in self.target.parameters():
            p.requires_grad_(False)
        self.optimizer = torch.optim.Adam([p for p in critic.parameters() if p.requires_grad],
                                          lr=cfg.critic_lr)
        self.buffer = ReplayBuffer(cfg.replay_capacity, seed)
        self.action_sampler = action_sampler
        self.iterations = 0  # RL steps seen (for warm-up)

    @property
    def actor_ready(self) -> bool:
        return self.iterations > self.cfg.warmup_iters

    def update_once(self, batch: Sequence[Transition]) -> dict[str, float]:
        """One critic gradient step on ``batch`` and a Polyak update of the target."""
        c = self.cfg
        states = [t.state for t in batch]
        actions = [t.action for t in batch]
        reward = torch.tensor([t.reward for t in batch], dtype=torch.float32)
        done = torch.tensor([t.done for t in batch], dtype=torch.float32)
        with torch.no_grad():
            nv1, nv2 = self.target.state_values([t.next_state for t in batch])
            fresh = self.action_sampler(states) if c.fresh_actions else actions  # type: ignore[misc]
            fq = self.target(states, fresh)
        tq1, tq2 = q_targets(reward, done, nv1, nv2, c.gamma, c.clipped_double)
        tv1, tv2 = v_targets(fq.q1, fq.q2, c.clipped_double)
        self.critic.train()
        out = self.critic(states, actions)
        loss, m = critic_loss(out, tq1, tq2, tv1, tv2)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for p in self.critic.parameters() if p.requires_grad]
        clip = c.critic_grad_clip if c.critic_grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
        self.optimizer.step()
        polyak_update(self.target, self.critic, c.tau)
        return {**{k: float(v) for k, v in m.items()}, "grad_norm": float(grad_norm),
                "target_q_mean": float(torch.minimum(tq1, tq2).mean())}

    def critic_update(self, trajs: Sequence[Trajectory]) -> dict[str, float]:
        """Add the step's turns to the buffer, then ``critic_updates`` TD steps. Metrics are
        means over the steps, prefixed ``critic/``."""
        for traj in trajs:
            self.buffer.extend(transitions(traj))
        self.iterations += 1
        if not len(self.buffer):
            return {"critic/buffer": 0.0}
        hist = [self.update_once(self.buffer.sample(self.cfg.batch_size))
                for _ in range(self.cfg.critic_updates)]
        out = {f"critic/{k}": sum(h[k] for h in hist) / len(hist) for k in hist[0]} if hist else {}
        out["critic/buffer"] = float(len(self.buffer))
        out["critic/actor_ready"] = float(self.actor_ready)
        return out

    @torch.no_grad()
    def turn_advantages(self, trajs: Sequence[Trajectory]) -> list[Tensor]:
        """The actor advantage of every turn: a list of ``(T_i,)`` tensors."""
        flat = [tr for traj in trajs for tr in transitions(traj)]
        if not flat:
            return [torch.zeros(0) for _ in trajs]
        self.critic.eval()
        out = self.critic([t.state for t in flat], [t.action for t in flat])
        if self.cfg.advantage == "q-v":
            adv = q_minus_v(out)
        else:
            nv1, nv2 = self.target.state_values([t.next_state for t in flat])
            r = torch.tensor([t.reward for t in flat], dtype=torch.float32)
            d = torch.tensor([t.done for t in flat], dtype=torch.float32)
            tq, _ = q_targets(r, d, nv1, nv2, self.cfg.gamma, clipped_double=True)
            adv = tq - torch.minimum(out.v1, out.v2)
        sizes = [len(traj.turns) for traj in trajs]
        return list(torch.split(adv.float(), sizes))

    def advantages(self, trajs: Sequence[Trajectory], group_ids: Sequence[int]) -> Tensor:
        """Per-token actor advantages ``(B, L)``; all zero during critic warm-up."""
        if not self.actor_ready:
            L = max((len(t.token_ids) for t in trajs), default=0)
            return torch.zeros((len(trajs), L))
        return spread_over_turns(trajs, self.turn_advantages(trajs))

    def state_dict(self) -> dict[str, Any]:
        return {"critic": self.critic.state_dict(), "target": self.target.state_dict(),
                "optimizer": self.optimizer.state_dict(), "buffer": self.buffer.state_dict(),
                "iterations": self.iterations}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"critic", "target", "optimizer", "buffer", "iterations"} - set(state)
        if missing:
            raise ValueError(f"ArCHer state is missing {sorted(missing)}")
        self.critic.load_state_dict(state["critic"])
        self.target.load_state_dict(state["target"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.buffer.load_state_dict(state["buffer"])
        self.iterations = int(state["iterations"])
