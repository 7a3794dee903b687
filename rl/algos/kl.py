"""Per-token estimators of KL(pi || pi_ref) from tokens sampled by pi (Schulman 2020,
"Approximating KL Divergence", http://joschu.net/blog/kl-approx.html), and which of them may be
used as a loss.

With ``log_ratio = logp - ref_logp`` at a sampled token (``logp`` the policy's, ``ref_logp`` the
frozen reference's log-probability of that token), and ``r = pi_ref / pi = exp(-log_ratio)``:

=====  ============================  ======================  =====================================
kind   value                         as an estimate of        expected gradient when minimised as
                                     KL(pi || ref)            a loss (tokens x ~ pi, held fixed)
=====  ============================  ======================  =====================================
k1     ``-log r = log_ratio``        unbiased, high variance  **zero**: ``E_pi[grad log pi] = 0``.
                                     can be negative          Refused as a loss (:func:`kl_penalty`)
k2     ``0.5 * (log r)^2``           biased (small near       ``E_pi[log(pi/ref) grad log pi]`` =
                                     pi = ref), always >= 0   grad **KL(pi || ref)** (reverse KL)
k3     ``(r - 1) - log r``           unbiased, low variance,  ``E_pi[(1 - ref/pi) grad log pi]`` =
                                     always >= 0              ``-sum_x ref(x) grad log pi(x)`` =
                                                              grad **KL(ref || pi)** (forward KL)
=====  ============================  ======================  =====================================

So k3 (the GRPO / DeepSeekMath default) is a good *estimate* of KL(pi || ref) but, as a loss,
pulls pi toward ref along the gradient of the *other* direction, KL(ref || pi) (mass-covering).
k2 is the one whose loss gradient is that of KL(pi || ref) (Tang & Munos 2025, "On a few pitfalls
in KL divergence gradient estimation for RL"). k1's value is a fine metric; to penalise with it,
subtract ``kl_coef * k1`` from the reward (a reward penalty, as in InstructGPT-style RLHF), which
this loss path does not do. The gradient statements hold on-policy (tokens sampled from the
current pi); with PPO epochs > 1 the tokens come from pi_old and no importance weight corrects
the KL term. ``tests/rl/algos/test_kl.py`` checks each row against autograd of the exact KL.

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

LOSS_ESTIMATORS = ("k2", "k3")
"""The estimators :func:`kl_penalty` accepts (a nonzero, documented loss gradient)."""

DEFAULT_MAX_LOG_RATIO = 20.0
"""Default clamp on ``|logp - ref_logp|`` in :func:`kl_penalty` (exp(20) ~ 4.9e8)."""


@KL_ESTIMATORS.register("k1")
def k1(log_ratio: Tensor) -> Tensor:
    """``log pi - log pi_ref``. ``(B, L) -> (B, L)``. Zero expected gradient as a loss."""
    return log_ratio


@KL_ESTIMATORS.register("k2")
def k2(log_ratio: Tensor) -> Tensor:
    """``0.5 * (log pi - log pi_ref)^2``. ``(B, L) -> (B, L)``. As a loss: grad KL(pi || ref)."""
    return 0.5 * log_ratio.square()


@KL_ESTIMATORS.register("k3")
def k3(log_ratio: Tensor) -> Tensor:
    """``exp(ref - logp) - (ref - logp) - 1``, i.e. ``(r - 1) - log r`` with ``r = pi_ref/pi``.
    ``(B, L) -> (B, L)``. As a loss: grad KL(ref || pi). Overflows (inf, then NaN gradients) once
    ``ref - logp`` exceeds ~88 in fp32: :func:`kl_penalty` clamps the log-ratio first.
    """
    neg = -log_ratio  # log r = ref_logp - logp
    return torch.expm1(neg) - neg  # expm1 keeps precision when r ~ 1


def check_loss_estimator(kind: str) -> None:
    """Raise (one line, naming the alternatives) unless ``kind`` may be used as a KL loss.
    For config validation: ``loss.kl_estimator`` with ``loss.kl_coef > 0``."""
    KL_ESTIMATORS.get(kind)  # KeyError listing the names for an unknown kind
    if kind not in LOSS_ESTIMATORS:
        raise ValueError(
            f"kl_estimator {kind!r} as a loss has zero expected gradient (a silent no-op); "
            "use 'k2' (gradient of KL(pi||ref)) or 'k3' (gradient of KL(ref||pi)), "
            "see rl/algos/kl.py"
        )


def kl_estimate(
    logprobs: Tensor,
    ref_logprobs: Tensor,
    kind: str = "k3",
    *,
    max_log_ratio: float | None = DEFAULT_MAX_LOG_RATIO,
) -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) of kind ``kind`` ("k1", "k2", "k3"), for metrics
    (any kind). Arguments and clamp as in :func:`kl_penalty`. Returns ``(B, L)``."""
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(
            f"logprobs {tuple(logprobs.shape)} and ref_logprobs {tuple(ref_logprobs.shape)} differ"
        )
    estimator = KL_ESTIMATORS.get(kind)
    log_ratio = logprobs - ref_logprobs
    if max_log_ratio is not None:
        log_ratio = log_ratio.clamp(-max_log_ratio, max_log_ratio)
    return estimator(log_ratio)


def kl_penalty(
    logprobs: Tensor,
    ref_logprobs: Tensor,
    kind: str = "k3",
    *,
    max_log_ratio: float | None = DEFAULT_MAX_LOG_RATIO,
) -> Tensor:
    """Per-token KL penalty to minimise, of kind ``kind`` ("k2" or "k3"; "k1" is refused, see
    the module docstring for the gradient each one gives).

    logprobs: ``(B, L)`` policy log-probs of the sampled tokens (carries the gradient).
    ref_logprobs: ``(B, L)`` frozen reference log-probs of the same tokens.
    max_log_ratio: clamp ``logp - ref_logp`` into ``[-max, max]`` before estimating, so k3's
        ``exp`` cannot overflow; tokens beyond the clamp get a constant penalty and zero
        gradient. ``None`` disables the clamp.
    Returns ``(B, L)``; positions outside the loss mask hold junk the caller masks away.
    """
    check_loss_estimator(kind)
    return kl_estimate(logprobs, ref_logprobs, kind, max_log_ratio=max_log_ratio)
