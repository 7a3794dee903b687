"""KL estimators: hand-computed values, exact expectations, clamping."""

from __future__ import annotations

import math

import pytest
import torch

from rl.algos import KL_ESTIMATORS, kl_penalty

F64 = torch.float64
LN2 = math.log(2.0)

# logp - ref_logp = [0, ln 2, -ln 2]  (ref - logp = [0, -ln 2, ln 2], r = pi_ref/pi = [1, 1/2, 2])
# k1 = logp - ref           = [0,  0.6931472, -0.6931472]
# k2 = 0.5 (logp - ref)^2   = [0,  0.2402265,  0.2402265]     (0.5 * 0.480453)
# k3 = r - 1 - ln r         = [0,  0.5 - 1 + 0.6931472 = 0.1931472,
#                                  2 - 1 - 0.6931472 = 0.3068528]
HAND = {
    "k1": [0.0, 0.6931472, -0.6931472],
    "k2": [0.0, 0.2402265, 0.2402265],
    "k3": [0.0, 0.1931472, 0.3068528],
}


def test_estimators_are_the_documented_three() -> None:
    assert set(KL_ESTIMATORS.names()) == set(HAND)


@pytest.mark.parametrize("kind", sorted(HAND))
def test_kl_by_hand(kind: str) -> None:
    logp = torch.tensor([[0.0, LN2, -LN2]], dtype=F64)
    ref = torch.zeros(1, 3, dtype=F64)
    got = kl_penalty(logp, ref, kind)
    assert got.shape == (1, 3)
    torch.testing.assert_close(got, torch.tensor([HAND[kind]], dtype=F64), atol=1e-7, rtol=0)


@pytest.mark.parametrize("kind", ["k1", "k3"])
def test_unbiased_estimators_have_exact_expectation(kind: str) -> None:
    # E_{x~p}[k(x)] over a categorical, computed exactly by weighting every outcome by p(x),
    # equals KL(p || ref) = sum p log(p / ref)
    gen = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(11, generator=gen, dtype=F64), 0)
    ref = torch.softmax(torch.randn(11, generator=gen, dtype=F64), 0)
    per_outcome = kl_penalty(p.log()[None], ref.log()[None], kind)[0]
    exact = (p * (p.log() - ref.log())).sum()
    torch.testing.assert_close((p * per_outcome).sum(), exact)


def test_k2_and_k3_are_nonnegative_and_zero_at_equality() -> None:
    gen = torch.Generator().manual_seed(1)
    logp, ref = torch.randn(2, 4, 16, generator=gen, dtype=F64)
    for kind in ("k2", "k3"):
        assert (kl_penalty(logp, ref, kind) >= 0).all()
        assert kl_penalty(logp, logp, kind).abs().max() == 0


def test_k3_gradient_matches_formula() -> None:
    # d/dlogp [exp(ref - logp) - (ref - logp) - 1] = 1 - exp(ref - logp) = 1 - r
    logp = torch.tensor([[0.0, LN2, -LN2]], dtype=F64, requires_grad=True)
    kl_penalty(logp, torch.zeros(1, 3, dtype=F64), "k3").sum().backward()
    assert logp.grad is not None
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, 0.5, -1.0]], dtype=F64))


def test_k3_clamp_prevents_overflow() -> None:
    # ref - logp = 100: exp(100) overflows fp32 -> inf value and NaN gradient without the clamp
    logp = torch.tensor([[-100.0, 0.0]], requires_grad=True)
    ref = torch.zeros(1, 2)
    raw = kl_penalty(logp, ref, "k3", max_log_ratio=None)
    assert torch.isinf(raw[0, 0])
    safe = kl_penalty(logp, ref, "k3")  # default clamp 20: exp(20) - 20 - 1
    torch.testing.assert_close(safe[0, 0], torch.tensor(math.exp(20) - 21))
    safe.sum().backward()
    assert logp.grad is not None and torch.isfinite(logp.grad).all()
    assert logp.grad[0, 0] == 0  # beyond the clamp: constant penalty, no gradient


def test_bad_inputs_raise() -> None:
    with pytest.raises(KeyError, match="'k1', 'k2', 'k3'"):
        kl_penalty(torch.zeros(1, 2), torch.zeros(1, 2), "k4")
    with pytest.raises(ValueError):
        kl_penalty(torch.zeros(1, 2), torch.zeros(1, 3), "k1")
