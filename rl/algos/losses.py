"""Token-level losses: the PPO-style clipped policy loss and the SFT loss, with one set of
aggregation modes (per-token loss ``(B, L)`` -> scalar).

Aggregation modes (registry ``AGGREGATIONS``), with ``m`` the 0/1 loss mask, ``x`` the per-token
loss, ``T = sum(m)`` the number of loss tokens, ``S`` the number of sequences with at least one
loss token, and ``M`` a constant token budget:

* ``token-mean``               ``sum(x*m) / T``  (DAPO's token-level loss)
* ``seq-mean-token-sum``       ``sum_i sum_t x*m / S``
* ``seq-mean-token-mean``      ``sum_i (sum_t x*m / T_i) / S``  (the original GRPO loss)
* ``seq-mean-token-sum-norm``  ``sum(x*m) / (S * M)``  (Dr. GRPO: a constant normaliser
  instead of each sequence's length). ``M`` must not depend on the batch: take the generation
  budget, :func:`generation_budget` (model tokens only), never the padded width of the batch,
  which counts the prompt and tool tokens and changes with the longest row.

Sequences whose mask is all zero contribute nothing and are not counted in ``S`` (so padding
rows added to balance shards change nothing); an all-zero mask gives a loss of 0, never NaN.

Sharding (data parallel ranks, gradient-accumulation micro-batches). Every mode is a sum over
sequences divided by a normaliser, so if the batch is split *by rows* into shards and every
shard is aggregated with the normalisers of the *full* batch (:class:`LossNorm`), the shard
losses add up to the full-batch loss exactly, and so do their gradients. With local normalisers
they do not (e.g. token-mean over shards of 10 and 1000 tokens). To get the global ``LossNorm``:
``LossNorm.from_mask(full_mask, max_tokens=...)`` on one process, or on each DP rank build it
from the local mask and all-reduce (SUM) ``num_tokens`` and ``num_seqs`` (the counts are
additive). Then *sum* (do not average) gradients over micro-batches and ranks; DDP averages over
ranks, so multiply each rank's loss by the world size there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from rl.algos.kl import k3
from rl.algos.metrics import masked_fill_zero, masked_max, masked_mean, safe_divide
from rl.registry import Registry

MAX_LOG_RATIO = 20.0
"""``logp - old_logp`` is clamped into ``[-20, 20]`` before ``exp`` (ratio in [2e-9, 4.9e8]),
so a stale or garbage token cannot overflow the ratio to inf (and the gradient to NaN)."""


@dataclass(frozen=True)
class LossNorm:
    """Normalisers for the aggregation modes. ``None`` means "compute it from this batch's mask";
    pass the full batch's values when aggregating a shard of it (see the module docstring).
    """

    num_tokens: float | None = None
    """Number of loss tokens in the full batch (``token-mean``)."""

    num_seqs: float | None = None
    """Number of sequences with at least one loss token in the full batch (every ``seq-*``
    mode)."""

    max_tokens: float | None = None
    """Constant per-sequence token budget (``seq-mean-token-sum-norm``, required there), e.g. the
    maximum number of generated tokens. Not the batch's longest sequence: that varies between
    batches and shards, which is the length bias Dr. GRPO removes. See :func:`generation_budget`."""

    def __post_init__(self) -> None:
        if self.max_tokens is not None and not self.max_tokens > 0:
            raise ValueError(f"LossNorm max_tokens must be > 0, got {self.max_tokens}")

    @classmethod
    def from_mask(cls, mask: Tensor, max_tokens: float | None = None) -> LossNorm:
        """Global normalisers of a full batch with loss mask ``mask`` ``(B, L)``."""
        per_seq = (mask != 0).sum(-1)
        return cls(
            num_tokens=float(per_seq.sum()),
            num_seqs=float((per_seq > 0).sum()),
            max_tokens=max_tokens,
        )


def generation_budget(
    max_turns: int, max_tokens_per_turn: int, max_total_tokens: int | None = None
) -> int:
    """The most model (loss-mask) tokens one trajectory can hold, a constant of the rollout
    config: ``max_turns * max_tokens_per_turn``, capped by ``max_total_tokens`` (the whole
    context, prompt and tool outputs included) when given. The Dr. GRPO normaliser ``M`` when
    ``loss.max_tokens`` is unset."""
    for name, value in (("max_turns", max_turns), ("max_tokens_per_turn", max_tokens_per_turn)):
        if value < 1:
            raise ValueError(f"generation_budget: {name} must be >= 1, got {value}")
    budget = max_turns * max_tokens_per_turn
    if max_total_tokens is not None:
        if max_total_tokens < 1:
            raise ValueError(
                f"generation_budget: max_total_tokens must be >= 1, got {max_total_tokens}"
            )
        budget = min(budget, max_total_tokens)
    return budget


# (per-token loss already zeroed off-mask (B, L), mask weights (B, L), normalisers) -> ()
AggregationFn = Callable[[Tensor, Tensor, LossNorm], Tensor]
AGGREGATIONS: Registry[AggregationFn] = Registry("loss aggregation")


def _num_seqs(weights: Tensor, norm: LossNorm) -> Tensor | float:
    if norm.num_seqs is not None:
        return norm.num_seqs
    return (weights.sum(-1) > 0).sum().to(weights.dtype)


@AGGREGATIONS.register("token-mean")
def _token_mean(values: Tensor, weights: Tensor, norm: LossNorm) -> Tensor:
    num_tokens = weights.sum() if norm.num_tokens is None else norm.num_tokens
    return safe_divide((values * weights).sum(), num_tokens)


@AGGREGATIONS.register("seq-mean-token-sum")
def _seq_mean_token_sum(values: Tensor, weights: Tensor, norm: LossNorm) -> Tensor:
    return safe_divide((values * weights).sum(), _num_seqs(weights, norm))


@AGGREGATIONS.register("seq-mean-token-mean")
def _seq_mean_token_mean(values: Tensor, weights: Tensor, norm: LossNorm) -> Tensor:
    # per-row means stay local to a row, so row-sharding needs only the global sequence count
    seq_means = safe_divide((values * weights).sum(-1), weights.sum(-1))
    return safe_divide(seq_means.sum(), _num_seqs(weights, norm))


@AGGREGATIONS.register("seq-mean-token-sum-norm")
def _seq_mean_token_sum_norm(values: Tensor, weights: Tensor, norm: LossNorm) -> Tensor:
    if norm.max_tokens is None:
        raise ValueError(
            "aggregation 'seq-mean-token-sum-norm' needs a constant token budget: pass "
            "norm=LossNorm(max_tokens=...), e.g. rl.algos.losses.generation_budget(...)"
        )
    return safe_divide((values * weights).sum(), _num_seqs(weights, norm) * norm.max_tokens)


def aggregate(
    values: Tensor, mask: Tensor, agg: str = "token-mean", norm: LossNorm | None = None
) -> Tensor:
    """Reduce a per-token loss ``values (B, L)`` under ``mask (B, L)`` (0/1) to a scalar with
    aggregation mode ``agg`` (see the module docstring). Off-mask values (even NaN/inf) are
    ignored.
    """
    if values.shape != mask.shape:
        raise ValueError(f"values {tuple(values.shape)} and mask {tuple(mask.shape)} differ")
    fn = AGGREGATIONS.get(agg)
    weights = mask.to(values.dtype)
    return fn(masked_fill_zero(values, mask), weights, norm or LossNorm())


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    agg: str = "token-mean",
    norm: LossNorm | None = None,
    is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate loss (Schulman et al. 2017, eq. 7), to minimise.

    Per token, with ``ratio = exp(logp - old_logp)`` and advantage ``A``::

        loss = max(-A * ratio, -A * clip(ratio, 1 - clip_low, 1 + clip_high))

    i.e. minus PPO's ``min(r A, clip(r) A)``. Separate low / high bounds are DAPO's
    "clip-higher" (Yu et al. 2025). With ``dual_clip = c > 1`` (dual-clip PPO, Ye et al. 2020,
    "Mastering Complex Control in MOBA Games with Deep RL") tokens with ``A < 0`` are further
    bounded, ``loss = min(loss, -c * A)``, so a huge ratio on a bad token cannot blow up the
    update.

    logprobs: ``(B, L)`` current policy log-probs of the sampled tokens (carries the gradient).
    old_logprobs: ``(B, L)`` log-probs under the policy that sampled them (no gradient).
    advantages: ``(B, L)``, or ``(B,)`` broadcast over every token of its row.
    mask: ``(B, L)`` 1 on tokens that carry loss (model tokens), 0 elsewhere.
    agg, norm: aggregation mode and normalisers (module docstring; global ``norm`` for shards).
    is_weights: optional ``(B, L)`` per-token weights (no gradient) multiplying each token's
    clipped term, e.g. :func:`truncated_is_weights` to correct for a sampler that differs from
    the learner's behaviour policy (stale weights in async training, vLLM vs. learner kernels).

    Returns ``(loss (), metrics)``; metrics are detached means over this batch's masked tokens
    (not globally normalised): ``clip_frac_low`` / ``clip_frac_high`` (tokens where the lower /
    upper clip is active, i.e. their gradient is zero), ``dual_clip_frac``, ``approx_kl`` (k3
    estimate of KL(pi_old || pi)), ``ratio_mean``, ``ratio_max``.
    """
    if not 0.0 <= clip_low < 1.0 or clip_high < 0.0:
        raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got {clip_low}, {clip_high}")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    if not logprobs.shape == old_logprobs.shape == mask.shape or logprobs.dim() != 2:
        raise ValueError(
            f"logprobs {tuple(logprobs.shape)}, old_logprobs {tuple(old_logprobs.shape)} and "
            f"mask {tuple(mask.shape)} must all be the same (B, L)"
        )
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)  # (B,) -> (B, 1), broadcast over tokens
    if advantages.shape not in (logprobs.shape, (logprobs.shape[0], 1)):
        raise ValueError(f"advantages {tuple(advantages.shape)} must be (B, L) or (B,)")
    adv = advantages.to(logprobs.dtype).expand_as(logprobs)

    # off-mask positions (padding, tool tokens) may hold anything, even -inf: zero their
    # log-ratio before exp so neither the value nor the gradient can become NaN
    log_ratio = masked_fill_zero(logprobs - old_logprobs, mask).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)  # pessimistic bound: -min(rA, clip(r)A)
    clip_active = clipped > unclipped
    dual_active = torch.zeros_like(clip_active)
    if dual_clip is not None:
        bound = -adv * dual_clip
        dual_active = (adv < 0) & (bound < per_token)
        per_token = torch.where(dual_active, bound, per_token)
    if is_weights is not None:
        if is_weights.shape != logprobs.shape:
            raise ValueError(f"is_weights {tuple(is_weights.shape)} must be (B, L) like logprobs")
        per_token = per_token * is_weights.detach().to(per_token.dtype)

    loss = aggregate(per_token, mask, agg, norm)

    with torch.no_grad():
        metrics = {
            "clip_frac_low": masked_mean((clip_active & (adv < 0)).to(ratio.dtype), mask),
            "clip_frac_high": masked_mean((clip_active & (adv > 0)).to(ratio.dtype), mask),
            "dual_clip_frac": masked_mean(dual_active.to(ratio.dtype), mask),
            # k3 with samples from pi_old: (pi/pi_old - 1) - log(pi/pi_old)
            "approx_kl": masked_mean(k3(-log_ratio), mask),
            "ratio_mean": masked_mean(ratio, mask),
            "ratio_max": masked_max(ratio, mask),
        }
    return loss, {k: v.detach() for k, v in metrics.items()}


def rollout_ratio_stats(logprobs: Tensor, rollout_logprobs: Tensor, mask: Tensor,
                        clip_low: float, clip_high: float) -> dict[str, Tensor]:
    """The PPO ratio of the learner's policy against the rollout policy's logprobs, as metrics.

    Fully on-policy (one mini-batch, one epoch) the clipped ratio is ``pi / pi_old`` with
    ``pi_old`` the same weights detached: 1 by construction, so its metrics say nothing. Against
    the sampler's logprobs (what the engine reported when it drew each token) the ratio shows the
    engine/learner mismatch and, with async rollouts, staleness. ``(B, L)`` inputs; returns
    0-dim tensors: ``ratio_mean``, ``ratio_max``, ``clip_frac_low`` / ``clip_frac_high`` (share
    of tokens with ratio below ``1 - clip_low`` / above ``1 + clip_high``, i.e. outside the
    trust region whatever the advantage's sign) and ``approx_kl`` (k3 of KL(rollout || pi)).
    """
    log_ratio = (logprobs - rollout_logprobs).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    ratio = torch.exp(log_ratio)
    return {
        "ratio_mean": masked_mean(ratio, mask),
        "ratio_max": masked_max(ratio, mask),
        "clip_frac_low": masked_mean((ratio < 1.0 - clip_low).to(ratio.dtype), mask),
        "clip_frac_high": masked_mean((ratio > 1.0 + clip_high).to(ratio.dtype), mask),
        "approx_kl": masked_mean(k3(-log_ratio), mask),
    }


def truncated_is_weights(
    behaviour_logprobs: Tensor, sampler_logprobs: Tensor, mask: Tensor, cap: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """Truncated importance sampling (TIS) weights for tokens drawn by a different sampler.

    Per token ``w = min(exp(logp_behaviour - logp_sampler), cap)`` (Yao et al. 2025, "Your
    Efficient RL Framework Secretly Brings You Off-Policy RL Training"). ``logp_behaviour`` is
    the learner's log-prob of the token under the weights the update starts from (the "old"
    policy of the clipped ratio); ``logp_sampler`` is what the rollout engine reported when it
    sampled the token, possibly with weights some versions older (async training) and with
    different kernels/precision. Truncating at ``cap`` bounds the variance; unlike PPO's clip the
    weight is not clipped from below, so nothing is biased toward the sampler for w < 1.

    behaviour_logprobs, sampler_logprobs, mask: ``(B, L)``. Returns ``(weights (B, L), metrics)``
    with weights detached and 1.0 off-mask; metrics over the masked tokens: ``tis_weight_mean``
    (after truncation), ``tis_weight_max`` (before truncation), ``tis_capped_frac``.
    """
    if cap <= 0:
        raise ValueError(f"TIS cap must be > 0, got {cap}")
    if not behaviour_logprobs.shape == sampler_logprobs.shape == mask.shape:
        raise ValueError(
            f"behaviour {tuple(behaviour_logprobs.shape)}, sampler "
            f"{tuple(sampler_logprobs.shape)} and mask {tuple(mask.shape)} must match"
        )
    with torch.no_grad():
        log_w = masked_fill_zero(behaviour_logprobs - sampler_logprobs, mask)
        raw = torch.exp(log_w.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO))
        weights = raw.clamp(max=cap)
        metrics = {
            "tis_weight_mean": masked_mean(weights, mask),
            "tis_weight_max": masked_max(raw, mask),
            "tis_capped_frac": masked_mean((raw > cap).to(raw.dtype), mask),
        }
    return weights, metrics


def sft_loss(
    logprobs: Tensor,
    mask: Tensor,
    *,
    agg: str = "token-mean",
    norm: LossNorm | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Negative log-likelihood of the target tokens, aggregated like :func:`policy_loss`.

    logprobs: ``(B, L)`` model log-probs of the target tokens.
    mask: ``(B, L)`` 1 on tokens to learn (assistant tokens), 0 elsewhere.
    Returns ``(loss (), {"nll": token-mean NLL over this batch})``.
    """
    if logprobs.shape != mask.shape or logprobs.dim() != 2:
        raise ValueError(f"logprobs {tuple(logprobs.shape)} and mask {tuple(mask.shape)} differ")
    nll = -logprobs
    loss = aggregate(nll, mask, agg, norm)
    return loss, {"nll": masked_mean(nll.detach(), mask)}
