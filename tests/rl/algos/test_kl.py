"""KL estimators: hand-computed values, exact expectations, exact expected gradients (against
autograd of the exact KL), clamping, and k1 refused as a loss."""

from __future__ import annotations

import math

import pytest
import torch

from rl.algos import KL_ESTIMATORS, kl_penalty
from rl.algos.kl import LOSS_ESTIMATORS, kl_estimate

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
    got = kl_estimate(logp, ref, kind)
    assert got.shape == (1, 3)
    torch.testing.assert_close(got, torch.tensor([HAND[kind]], dtype=F64), atol=1e-7, rtol=0)


@pytest.mark.parametrize("kind", ["k1", "k3"])
def test_unbiased_estimators_have_exact_expectation(kind: str) -> None:
    # E_{x~p}[k(x)] over a categorical, computed exactly by weighting every outcome by p(x),
    # equals KL(p || ref) = sum p log(p / ref)
    gen = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(11, generator=gen, dtype=F64), 0)
    ref = torch.softmax(torch.randn(11, generator=gen, dtype=F64), 0)
    per_outcome = kl_estimate(p.log()[None], ref.log()[None], kind)[0]
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
        kl_estimate(torch.zeros(1, 2), torch.zeros(1, 2), "k4")
    with pytest.raises(ValueError):
        kl_penalty(torch.zeros(1, 2), torch.zeros(1, 3), "k3")


# ---- gradients: what each estimator optimises when used as a loss ---------------------------
# The loss term is E_{x ~ pi}[k(log pi(x) - log ref(x))] with the sampling distribution held
# fixed (tokens come from the rollout; only log pi(x) inside k carries the gradient). Over a
# categorical its expectation is exact: sum_x stopgrad(pi(x)) * k(x). Autograd of that, w.r.t.
# the logits, against autograd of the exact KL in either direction.


def _expected_loss_grad(kind: str, logits: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    theta = logits.clone().requires_grad_(True)
    logp = torch.log_softmax(theta, 0)
    per_outcome = KL_ESTIMATORS.get(kind)(logp - ref_logp)
    (logp.exp().detach() * per_outcome).sum().backward()
    assert theta.grad is not None
    return theta.grad


def _exact_kl_grad(logits: torch.Tensor, ref_logp: torch.Tensor, reverse: bool) -> torch.Tensor:
    theta = logits.clone().requires_grad_(True)
    logp = torch.log_softmax(theta, 0)
    if reverse:  # KL(pi || ref) = sum pi log(pi / ref)
        kl = (logp.exp() * (logp - ref_logp)).sum()
    else:  # KL(ref || pi) = sum ref log(ref / pi)
        kl = (ref_logp.exp() * (ref_logp - logp)).sum()
    kl.backward()
    assert theta.grad is not None
    return theta.grad


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_expected_gradients_against_exact_kl(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(7, generator=gen, dtype=F64)
    ref_logp = torch.log_softmax(torch.randn(7, generator=gen, dtype=F64), 0)
    g_kl_pi_ref = _exact_kl_grad(logits, ref_logp, reverse=True)
    g_kl_ref_pi = _exact_kl_grad(logits, ref_logp, reverse=False)
    assert not torch.allclose(g_kl_pi_ref, g_kl_ref_pi, atol=1e-3)  # the two really differ
    # k1: zero expected gradient (sum_x pi grad log pi = grad sum_x pi = 0), a silent no-op
    torch.testing.assert_close(
        _expected_loss_grad("k1", logits, ref_logp), torch.zeros(7, dtype=F64), atol=1e-12, rtol=0
    )
    # k2: the gradient of KL(pi || ref)
    torch.testing.assert_close(_expected_loss_grad("k2", logits, ref_logp), g_kl_pi_ref)
    # k3: the gradient of KL(ref || pi), not of KL(pi || ref)
    torch.testing.assert_close(_expected_loss_grad("k3", logits, ref_logp), g_kl_ref_pi)


def test_expected_gradients_by_hand_two_outcomes() -> None:
    # pi = (1/2, 1/2) (logits 0, 0), ref = (1/4, 3/4). With dpi_0/dtheta_0 = pi_0 pi_1 = 1/4:
    # d KL(pi||ref)/dtheta_0 = pi_0 pi_1 (log(pi_0/ref_0) - log(pi_1/ref_1)) = 1/4 * log 3
    # d KL(ref||pi)/dtheta_0 = pi_0 - ref_0 = 1/4
    logits = torch.zeros(2, dtype=F64)
    ref_logp = torch.tensor([0.25, 0.75], dtype=F64).log()
    g2 = _expected_loss_grad("k2", logits, ref_logp)
    g3 = _expected_loss_grad("k3", logits, ref_logp)
    torch.testing.assert_close(
        g2, torch.tensor([0.25 * math.log(3), -0.25 * math.log(3)], dtype=F64)
    )
    torch.testing.assert_close(g3, torch.tensor([0.25, -0.25], dtype=F64))


def test_k2_gradient_matches_formula() -> None:
    # d/dlogp [0.5 (logp - ref)^2] = logp - ref
    logp = torch.tensor([[0.0, LN2, -LN2]], dtype=F64, requires_grad=True)
    kl_penalty(logp, torch.zeros(1, 3, dtype=F64), "k2").sum().backward()
    assert logp.grad is not None
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, LN2, -LN2]], dtype=F64))


def test_k1_is_refused_as_a_loss() -> None:
    assert set(LOSS_ESTIMATORS) == {"k2", "k3"}
    with pytest.raises(ValueError, match="k1.*zero expected gradient.*k2.*k3"):
        kl_penalty(torch.zeros(1, 2), torch.zeros(1, 2), "k1")
    with pytest.raises(KeyError, match="'k1', 'k2', 'k3'"):
        kl_penalty(torch.zeros(1, 2), torch.zeros(1, 2), "k4")
