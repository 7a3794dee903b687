"""Multi-turn preference objectives on whole trajectories: M-DPO, M-KTO and REFUEL.

* ``dpo``  (M-DPO; Xiong et al. 2024, "Building Math Agents with Multi-Turn Iterative Preference
  Learning"): ``-log sigmoid(beta * (D_chosen - D_rejected))`` per pair, mean over pairs, where
  ``D = sum over the model's own tokens of (log pi - log pi_ref)``; ``pi_ref`` is the policy at
  the start of the RL stage. Observation, tool, user and template tokens are masked out (the
  loss mask every objective uses), so they never enter ``D``.
* ``kto``  (M-KTO; Ethayarajh et al. 2024, eq. 8): ``z = max(0, mean_i D_i)`` over the batch,
  detached (the paper's reference point, estimated from the batch); a desirable trajectory has
  value ``lambda_D * sigmoid(beta * (D - z))``, an undesirable one
  ``lambda_U * sigmoid(beta * (z - D))``; loss = mean over labelled trajectories of
  ``lambda_y - value``. Departure: the paper estimates ``z`` on mismatched (prompt, completion)
  pairs; here it is the batch mean of ``D`` over the labelled trajectories themselves.
* ``refuel`` (Gao et al. 2024, "Regressing the Relative Future"): two continuations ``a, b`` of
  a shared prefix (their longest common token prefix: the fork turn of a tree rollout, the
  prompt otherwise) regress their reward difference:
  ``(beta * (D_a - D_b) - (r_a - r_b))^2`` with ``D = sum over the continuation's model tokens
  of (log pi - log pi_old)`` and ``pi_old`` the policy that sampled them (recomputed by the
  learner before the update, so engine numerics do not enter); ``beta`` is the paper's
  ``1 / eta``. Mean over pairs.

Every loss is a pure function of per-token tensors ``(B, L)`` (log-probs under the current
policy, under the reference, the loss mask) and a :class:`rl.types.PreferenceSpec` (pairs,
labels, rewards, knobs). :func:`token_weights` turns any of them into the exact gradient of
the objective as per-token weights on ``log pi``, so the learner can accumulate it over
micro-batches (rl/algos/objective.py). :func:`preference_spec` forms the pairs / labels of one
step's groups (online mode).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from rl.registry import Registry
from rl.types import PreferenceSpec, Trajectory

PreferenceLossFn = Callable[[Tensor, Tensor, Tensor, PreferenceSpec], tuple[Tensor, dict]]


@dataclass(frozen=True)
class PreferenceObjective:
    """One registered objective: its loss and which policy its log-ratios are taken against."""

    loss: PreferenceLossFn
    reference: str
    """"start": the policy at the start of RL (the learner's reference snapshot);
    "old": the policy that sampled the batch (the learner's logprobs before the update)."""
    paired: bool
    """Pairs (dpo, refuel) or labelled single trajectories (kto)."""


PREFERENCE: Registry[PreferenceObjective] = Registry("preference objective")
PAIRINGS = ("best_worst", "all", "deepest")


def sequence_logratio(lp: Tensor, ref: Tensor, mask: Tensor) -> Tensor:
    """``(B,)``: ``sum_t mask * (lp - ref)`` over each row. All inputs ``(B, L)``."""
    return ((lp - ref) * mask).sum(dim=-1)


def dpo_loss(lp: Tensor, ref: Tensor, mask: Tensor,
             spec: PreferenceSpec) -> tuple[Tensor, dict[str, Tensor]]:
    """M-DPO over ``spec.pairs`` (``(P, 2)``: chosen row, rejected row). Scalar loss, metrics."""
    d = sequence_logratio(lp, ref, mask)
    margin = spec.beta * (d[spec.pairs[:, 0]] - d[spec.pairs[:, 1]])
    loss = -F.logsigmoid(margin).mean()
    return loss, {"margin": margin.detach().mean(),
                  "accuracy": (margin.detach() > 0).float().mean()}


def kto_loss(lp: Tensor, ref: Tensor, mask: Tensor,
             spec: PreferenceSpec) -> tuple[Tensor, dict[str, Tensor]]:
    """M-KTO over the rows with ``spec.labels`` +1 (desirable) or -1 (undesirable)."""
    d = sequence_logratio(lp, ref, mask)
    lab = spec.labels
    rows = lab != 0
    z = d.detach()[rows].mean().clamp(min=0.0)  # the reference point, no gradient
    good = spec.desirable_weight * torch.sigmoid(spec.beta * (d - z))
    bad = spec.undesirable_weight * torch.sigmoid(spec.beta * (z - d))
    value = torch.where(lab > 0, good, bad)
    weight = torch.where(lab > 0, torch.full_like(d, spec.desirable_weight),
                         torch.full_like(d, spec.undesirable_weight))
    loss = (weight - value)[rows].mean()
    return loss, {"kl_ref_point": z, "desirable": (lab > 0).float().sum(),
                  "undesirable": (lab < 0).float().sum()}


def continuation_mask(mask: Tensor, starts: Tensor) -> Tensor:
    """``(B, L)`` mask of the tokens at positions ``>= starts[i]`` of row ``i``."""
    pos = torch.arange(mask.shape[1], device=mask.device)[None, :]
    return mask * (pos >= starts.to(mask.device)[:, None]).to(mask.dtype)


def refuel_loss(lp: Tensor, ref: Tensor, mask: Tensor,
                spec: PreferenceSpec) -> tuple[Tensor, dict[str, Tensor]]:
    """REFUEL over ``spec.pairs`` (``(P, 2)``: rows a, b) from ``spec.starts`` (``(P,)``: the
    first position after their shared prefix); ``spec.rewards`` ``(B,)``; ``ref`` = the old
    (sampling) policy's logprobs."""
    a, b = spec.pairs[:, 0], spec.pairs[:, 1]
    da = sequence_logratio(lp[a], ref[a], continuation_mask(mask[a], spec.starts))
    db = sequence_logratio(lp[b], ref[b], continuation_mask(mask[b], spec.starts))
    rewards = spec.rewards.to(lp.device)
    pred = spec.beta * (da - db)
    target = rewards[a] - rewards[b]
    loss = (pred - target).pow(2).mean()
    return loss, {"reward_gap": target.abs().mean(), "pred_gap": pred.detach().mean()}


PREFERENCE.register("dpo")(PreferenceObjective(dpo_loss, reference="start", paired=True))
PREFERENCE.register("kto")(PreferenceObjective(kto_loss, reference="start", paired=False))
PREFERENCE.register("refuel")(PreferenceObjective(refuel_loss, reference="old", paired=True))


def token_weights(lp: Tensor, ref: Tensor, mask: Tensor,
                  spec: PreferenceSpec) -> tuple[Tensor, dict[str, float]]:
    """``(B, L)`` weights ``w = d loss / d lp`` of the objective at the current logprobs ``lp``
    (no grad), and its metrics (``pref/loss``, ...). ``sum(w * lp_with_grad)`` then has exactly
    the objective's gradient at these parameters, row by row, so it accumulates over
    micro-batches like any token loss (these objectives couple rows: a pair's rows may land in
    different micro-batches)."""
    x = lp.detach().float().requires_grad_(True)
    with torch.enable_grad():
        loss, m = PREFERENCE.get(spec.objective).loss(x, ref.detach().float(), mask.float(), spec)
        (w,) = torch.autograd.grad(loss, x)
    out = {"pref/loss": float(loss.detach()), "pref/pairs": float(len(spec.pairs)),
           **{f"pref/{k}": float(v) for k, v in m.items()}}
    return w * mask, out


# -- online pair formation ----------------------------------------------------------------------
def trajectory_score(t: Trajectory) -> float:
    """The verifier's label of a trajectory: its outcome reward plus its turn rewards (all zero
    unless ``algorithm.turn_reward_weights`` names some)."""
    return float(t.outcome_reward) + float(sum(t.turn_rewards))


def group_pairs(scores: Sequence[float], rule: str) -> list[tuple[int, int]]:
    """Preference pairs ``(better, worse)`` of one group's scores, as indices into it.

    ``best_worst``: one pair, the first best against the first worst; ``all``: every pair with
    different scores (``all correct x incorrect`` for binary rewards), in index order (also the
    candidates of ``deepest``, which :func:`preference_spec` narrows by shared prefix). A group
    whose scores are all equal has no preference and gives no pair.
    """
    if rule not in PAIRINGS:
        raise ValueError(f"preference pairing {rule!r} is not one of: {', '.join(PAIRINGS)}")
    n = len(scores)
    if n < 2 or max(scores) == min(scores):
        return []
    if rule == "best_worst":
        return [(max(range(n), key=lambda i: scores[i]), min(range(n), key=lambda i: scores[i]))]
    return [(i, j) for i in range(n) for j in range(n) if scores[i] > scores[j]]


def group_labels(scores: Sequence[float]) -> list[int]:
    """KTO labels of one group: +1 above the group's mean score, -1 below, 0 at it (a group
    whose scores are all equal has no preference: all 0)."""
    mean = sum(scores) / max(len(scores), 1)
    return [1 if s > mean else -1 if s < mean else 0 for s in scores]


def shared_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def preference_spec(trajs: Sequence[Trajectory], objective: str, rule: str, beta: float,
                    desirable_weight: float = 1.0, undesirable_weight: float = 1.0
                    ) -> tuple[list[int], PreferenceSpec] | None:
    """The rows that take part and their :class:`PreferenceSpec` (indices into those rows), from
    one step's scored trajectories grouped by ``group_id``; None when no group has a
    preference."""
    paired = PREFERENCE.get(objective).paired
    scores = [trajectory_score(t) for t in trajs]
    groups: dict[int, list[int]] = {}
    for i, t in enumerate(trajs):
        groups.setdefault(t.group_id, []).append(i)
    pairs: list[tuple[int, int]] = []
    labels: dict[int, int] = {}
    for members in groups.values():
        s = [scores[i] for i in members]
        if paired:
            got = [(members[a], members[b]) for a, b in group_pairs(s, rule)]
            if rule == "deepest" and got:  # the pair that forks latest (ties: the larger gap)
                got = [max(got, key=lambda p: (shared_prefix(trajs[p[0]].token_ids,
                                                             trajs[p[1]].token_ids),
                                               scores[p[0]] - scores[p[1]]))]
            pairs += got
        else:
            labels.update({members[k]: y for k, y in enumerate(group_labels(s)) if y})
    used = sorted({i for p in pairs for i in p} | set(labels))
    if not used:
        return None
    row = {i: k for k, i in enumerate(used)}
    spec = PreferenceSpec(
        objective=objective, beta=beta,
        pairs=torch.tensor([[row[a], row[b]] for a, b in pairs], dtype=torch.long
                           ).reshape(-1, 2),
        starts=torch.tensor([shared_prefix(trajs[a].token_ids, trajs[b].token_ids)
                             for a, b in pairs], dtype=torch.long),
        labels=torch.tensor([labels.get(i, 0) for i in used], dtype=torch.long),
        rewards=torch.tensor([scores[i] for i in used], dtype=torch.float32),
        desirable_weight=desirable_weight, undesirable_weight=undesirable_weight)
    return used, spec
