"""Per-token estimators of KL(pi || pi_ref) from tokens sampled by pi (Schulman 2020,
"Approximating KL Divergence", http://joschu.net/blog/kl-approx.html).

With ``log_ratio = logp - ref_logp`` at a sampled token (``logp`` the policy's, ``ref_logp`` the
frozen reference's log-probability of that token), and ``r = pi_ref / pi = exp(-log_ratio)``:

* ``k1 = -log r = log_ratio``: unbiased, high variance, can be negative.
* ``k2 = 0.5 * (log r)^2``: biased (low bias near pi = pi_ref), low variance, always >= 0.
* ``k3 = (r - 1) - log r``: unbiased and low variance, always >= 0.

Every estimator maps ``log_ratio (B, L) -> (B, L)``; the caller aggregates with the loss mask
(:func:`rl.algos.losses.aggregate`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from rl.registry import Registry

KLFn = Callable[[Tensor], Tensor]
KL_ESTIMATORS: Registry[KLFn] = Registry("KL estimator")

DEFAULT_MAX_LOG_RATIO = 20.0
"""Default clamp on ``|logp - ref_logp|`` in :func:`kl_penalty` (exp(20) ~ 4.9e8)."""


@KL_ESTIMATORS.register("k1")
def k1(log_ratio: Tensor) -> Tensor:
    """``log pi - log pi_ref``. ``(B, L) -> (B, L)``."""
    return log_ratio


@KL_ESTIMATORS.register("k2")
def k2(log_ratio: Tensor) -> Tensor:
    """``0.5 * (log pi - log pi_ref)^2``. ``(B, L) -> (B, L)``."""
    return 0.5 * log_ratio.square()


@KL_ESTIMATORS.register("k3")
def k3(log_ratio: Tensor) -> Tensor:
    """``exp(ref - logp) - (ref - logp) - 1``, i.e. ``(r - 1) - log r`` with ``r = pi_ref/pi``.
    ``(B, L) -> (B, L)``. Overflows (inf, then NaN gradients) once ``ref - logp`` exceeds ~88 in
    fp32: :func:`kl_penalty` clamps the log-ratio first.
    """
    neg = -log_ratio  # log r = ref_logp - logp
    return torch.expm1(neg) - neg  # expm1 keeps precision when r ~ 1


def kl_penalty(
    logprobs: Tensor,
    ref_logprobs: Tensor,
    kind: str = "k3",
    *,
    max_log_ratio: float | None = DEFAULT_MAX_LOG_RATIO,
) -> Tensor:
    """Per-token KL(pi || pi_ref) estimate of kind ``kind`` ("k1", "k2", "k3").

    logprobs: ``(B, L)`` policy log-probs of the sampled tokens (carries the gradient).
    ref_logprobs: ``(B, L)`` frozen reference log-probs of the same tokens.
    max_log_ratio: clamp ``logp - ref_logp`` into ``[-max, max]`` before estimating, for every
        kind, so k3's ``exp`` cannot overflow; tokens beyond the clamp get a constant penalty and
        zero gradient. ``None`` disables the clamp.
    Returns ``(B, L)``; positions outside the loss mask hold junk the caller masks away.
    """
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(
            f"logprobs {tuple(logprobs.shape)} and ref_logprobs {tuple(ref_logprobs.shape)} differ"
        )
    estimator = KL_ESTIMATORS.get(kind)
    log_ratio = logprobs - ref_logprobs
    if max_log_ratio is not None:
        log_ratio = log_ratio.clamp(-max_log_ratio, max_log_ratio)
    return estimator(log_ratio)
