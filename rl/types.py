"""Records that flow through a training step.

One :class:`Trajectory` holds a single token list for a whole multi-turn episode (prompt, the
model's turns, observations) with a per-token loss mask and sampler logprobs, so the learner
trains on exactly the tokens the sampler produced (token-in / token-out, see DESIGN.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

Message = dict[str, Any]  # {"role": ..., "content": ...} as chat templates expect


@dataclass
class Task:
    """One problem instance an env can be reset with."""

    id: str
    prompt: str  # the user's request
    answer: Any = None  # reference answer, for outcome reward
    data: dict[str, Any] = field(default_factory=dict)  # env-specific (e.g. reference solution)


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any]
    error: str | None = None  # set when the call could not be parsed / validated
    lenient: bool = False  # found by a format's lenient option, not its strict syntax


@dataclass
class Turn:
    """One model action and what came back from the env."""

    start: int  # index into Trajectory.token_ids where the model's tokens begin
    end: int  # one past the model's last token (observation tokens follow)
    text: str  # decoded action text
    finish_reason: str  # "stop" | "length"
    tool_calls: list[ToolCall] = field(default_factory=list)
    reward: float = 0.0  # turn-level reward from env.step
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Trajectory:
    """A whole episode as one token list.

    Invariants (checked by :meth:`validate`): ``len(token_ids) == len(loss_mask) ==
    len(logprobs)``; ``loss_mask[i] == 1`` iff token ``i`` was sampled by the model; logprobs are
    0.0 where the mask is 0.
    """

    task: Task
    token_ids: list[int]
    loss_mask: list[int]
    logprobs: list[float]
    prompt_len: int
    messages: list[Message] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)
    outcome_reward: float = 0.0  # final scalar used for advantages (after reward composition)
    reward_terms: dict[str, float] = field(default_factory=dict)  # named parts of the reward
    # per-model-turn composed reward (algorithm.turn_reward_weights), len == len(turns) once
    # scored; empty before scoring. Turn-level advantages read it beside outcome_reward.
    turn_rewards: list[float] = field(default_factory=list)
    terminated: bool = False  # env said the episode is over (final answer, failure)
    # cut by a limit (turns, tokens; also when the env ended the episode on a turn a token limit
    # cut: rl/rollout/agent_loop.py); bootstrapping would differ. May be set with terminated.
    truncated: bool = False
    group_id: int = 0  # trajectories sharing a prompt share a group (GRPO / RLOO)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_model_tokens(self) -> int:
        return sum(self.loss_mask)

    @property
    def num_tool_calls(self) -> int:
        return sum(len(t.tool_calls) for t in self.turns)

    def validate(self) -> None:
        n = len(self.token_ids)
        if not (n == len(self.loss_mask) == len(self.logprobs)):
            raise ValueError(
                f"length mismatch: ids={n} mask={len(self.loss_mask)} logprobs={len(self.logprobs)}"
            )
        if any(self.loss_mask[: self.prompt_len]):
            raise ValueError("prompt tokens must not carry loss")
        for t in self.turns:
            if not all(self.loss_mask[t.start : t.end]):
                raise ValueError(f"turn tokens [{t.start}, {t.end}) not all in the loss mask")
        model_positions = {i for t in self.turns for i in range(t.start, t.end)}
        for i, m in enumerate(self.loss_mask):
            if m and i not in model_positions:
                raise ValueError(f"token {i} carries loss but belongs to no model turn")


@dataclass
class PreferenceSpec:
    """What a preference objective (rl/algos/preference.py: dpo, kto, refuel) needs beside the
    batch's token tensors; row indices refer to the batch's rows. Built per step
    (rl.algos.preference.preference_spec); the learner turns it into per-token weights on the
    whole batch before any micro-batch is split off."""

    objective: str  # rl.algos.preference.PREFERENCE registry name
    beta: float
    pairs: torch.Tensor  # (P, 2) long: (chosen, rejected) for dpo, (a, b) for refuel
    starts: torch.Tensor  # (P,) long: first position after the pair's shared token prefix
    labels: torch.Tensor  # (B,) long: kto +1 desirable / -1 undesirable / 0 unlabelled
    rewards: torch.Tensor  # (B,) float: each row's score (refuel's regression target)
    desirable_weight: float = 1.0  # kto lambda_D
    undesirable_weight: float = 1.0  # kto lambda_U


@dataclass
class Batch:
    """Right-padded tensors for the learner. Shapes: ``(B, L)`` unless noted.

    ``loss_mask`` is shifted so that position ``t`` scores token ``t`` given tokens ``< t``; the
    learner computes logprobs of ``input_ids[:, 1:]`` from logits ``[:, :-1]`` and the fields here
    are aligned with ``input_ids`` (position 0 never carries loss).
    """

    input_ids: torch.Tensor  # (B, L) long
    attention_mask: torch.Tensor  # (B, L) long, 1 = real token
    loss_mask: torch.Tensor  # (B, L) float, 1 = model-sampled token
    old_logprobs: torch.Tensor  # (B, L) float, sampler logprobs (0 where mask is 0)
    advantages: torch.Tensor  # (B, L) float, per-token advantage (broadcast of per-sequence)
    ref_logprobs: torch.Tensor | None = None  # (B, L) float, frozen reference, if KL is used
    # (B, L) float: the sampler's logprobs, kept here when the learner replaces old_logprobs by
    # its own recomputation (PPO epochs / mini-batches); truncated IS weights compare the two
    sampler_logprobs: torch.Tensor | None = None
    # a preference objective's pairs / labels (algorithm.objective != policy); whole batches only:
    # split() leaves it out (the learner has turned it into ``advantages`` by then)
    preference: PreferenceSpec | None = None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def split(self, micro_batch_size: int) -> list[Batch]:
        out = []
        for s in range(0, len(self), micro_batch_size):
            sl = slice(s, s + micro_batch_size)
            out.append(
                Batch(
                    input_ids=self.input_ids[sl],
                    attention_mask=self.attention_mask[sl],
                    loss_mask=self.loss_mask[sl],
                    old_logprobs=self.old_logprobs[sl],
                    advantages=self.advantages[sl],
                    ref_logprobs=None if self.ref_logprobs is None else self.ref_logprobs[sl],
                    sampler_logprobs=None if self.sampler_logprobs is None
                    else self.sampler_logprobs[sl],
                )
            )
        return out

    @staticmethod
    def from_trajectories(
        trajs: list[Trajectory], advantages: torch.Tensor, pad_id: int
    ) -> Batch:
        """Pack trajectories; ``advantages`` is ``(B,)`` (one per trajectory) or ``(B, L)``."""
        lengths = [len(t.token_ids) for t in trajs]
        B, L = len(trajs), max(lengths)
        ids = torch.full((B, L), pad_id, dtype=torch.long)
        attn = torch.zeros((B, L), dtype=torch.long)
        mask = torch.zeros((B, L), dtype=torch.float32)
        lp = torch.zeros((B, L), dtype=torch.float32)
        for i, t in enumerate(trajs):
            n = lengths[i]
            ids[i, :n] = torch.tensor(t.token_ids, dtype=torch.long)
            attn[i, :n] = 1
            mask[i, :n] = torch.tensor(t.loss_mask, dtype=torch.float32)
            lp[i, :n] = torch.tensor(t.logprobs, dtype=torch.float32)
        if advantages.dim() == 1:
            adv = advantages[:, None].expand(B, L) * mask
        else:  # (B, L') with L' >= L: a subset of a wider batch keeps its first L columns
            adv = advantages[:, :L] * mask
        return Batch(ids, attn, mask, lp, adv.contiguous())
