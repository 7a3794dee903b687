"""The RL objective both learner backends optimise (one definition, beside the algorithms).

``rl_loss`` combines the clipped policy loss (rl/algos/losses.py), optional truncated importance
weights against the sampler's logprobs, and the KL penalty to the reference (rl/algos/kl.py).
``preference_loss`` is the objective of ``algorithm.objective`` = dpo | kto | refuel
(rl/algos/preference.py), on the per-token weights ``preference_weights`` puts in the batch.
"""

from __future__ import annotations

import torch

from rl.algos.kl import kl_penalty
from rl.algos.losses import LossNorm, policy_loss, rollout_ratio_stats, truncated_is_weights
from rl.config import LossConfig
from rl.types import Batch


def rl_loss(lp: torch.Tensor, mb: Batch, loss_cfg: LossConfig, norm: LossNorm,
            on_policy: bool) -> tuple[torch.Tensor, dict[str, float]]:
    """The RL objective of one micro-batch given the learner's logprobs ``lp`` (B, L) of it:
    clipped policy loss (optionally truncated-IS weighted against the sampler) plus the KL
    penalty, normalised by ``norm`` (the whole mini-batch's, or every rank's). ``on_policy``:
    the old logprobs are ``lp`` detached (ratio exactly 1); the ratio and clip metrics are then
    those of ``lp`` against the sampler's logprobs (``mb.old_logprobs``), the policy that really
    drew the tokens, instead of constants. Shared by every learner backend."""
    old = lp.detach() if on_policy else mb.old_logprobs
    mask = mb.loss_mask
    is_w: torch.Tensor | None = None
    tis_m: dict[str, torch.Tensor] = {}
    if loss_cfg.tis_cap > 0:
        sampler = mb.old_logprobs if on_policy else mb.sampler_logprobs
        assert sampler is not None
        is_w, tis_m = truncated_is_weights(old, sampler, mask, loss_cfg.tis_cap)
    loss, m = policy_loss(
        lp, old, mb.advantages, mask, clip_low=loss_cfg.clip_low,
        clip_high=loss_cfg.clip_high, dual_clip=loss_cfg.dual_clip,
        agg=loss_cfg.agg, norm=norm, is_weights=is_w,
    )
    if on_policy:  # ratio 1 / clip 0 by construction: measure them against the rollout policy
        m.update(rollout_ratio_stats(lp.detach(), mb.old_logprobs, mask, loss_cfg.clip_low,
                                     loss_cfg.clip_high))
    metrics = {f"actor/{k}": float(v) for k, v in {**m, **tis_m}.items()}
    if loss_cfg.kl_coef > 0:
        assert mb.ref_logprobs is not None
        kl = kl_penalty(lp, mb.ref_logprobs, loss_cfg.kl_estimator) * mask
        kl_loss = kl.sum() / max(norm.num_tokens or 1.0, 1.0)
        loss = loss + loss_cfg.kl_coef * kl_loss
        metrics["actor/kl"] = float(kl_loss.detach())
    # sampler vs learner mismatch (bf16 vs fp32, kernels): a diagnostic only
    n_tok = mask.sum().clamp(min=1)
    metrics["actor/sampler_logprob_diff"] = float(
        ((lp.detach() - mb.old_logprobs).abs() * mask).sum() / n_tok
    ) if on_policy else 0.0
    return loss, metrics


def preference_weights(batch: Batch, now: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """A preference objective (``batch.preference``) on the whole batch: ``now`` ``(B, L)`` the
    current policy's logprobs (no grad), ``ref`` those of its reference (the RL-start policy, or
    the sampling policy for refuel). Stores ``-d loss / d logprob`` in ``batch.advantages``, so
    :func:`preference_loss` over any split into micro-batches has the objective's exact gradient
    at the current weights; returns the objective's metrics (``actor/pref/...``)."""
    from rl.algos.preference import token_weights

    assert batch.preference is not None
    dev = batch.loss_mask.device
    w, m = token_weights(now.to(dev), ref.to(dev), batch.loss_mask, batch.preference)
    batch.advantages = -w
    return {f"actor/{k}": v for k, v in m.items()}


def preference_loss(lp: torch.Tensor, mb: Batch) -> tuple[torch.Tensor, dict[str, float]]:
    """``-sum(advantages * lp)`` over a micro-batch: summed (not averaged) over micro-batches,
    its gradient is the preference objective's (:func:`preference_weights`)."""
    return -(mb.advantages.to(lp.device) * mb.loss_mask.to(lp.device) * lp).sum(), {}
