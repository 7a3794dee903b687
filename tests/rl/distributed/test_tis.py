"""Truncated importance sampling: reference values computed by hand, and the learner wiring."""

from __future__ import annotations

import math

import pytest
import torch

from rl.algos import policy_loss, truncated_is_weights

BEHAVIOUR = torch.tensor([[-1.0, -0.5, -2.0, 0.0]])
SAMPLER = torch.tensor([[-1.5, -0.5, -0.5, -3.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0]])


def test_weights_and_metrics_by_hand():
    w, m = truncated_is_weights(BEHAVIOUR, SAMPLER, MASK, cap=1.5)
    # exp(0.5) = 1.6487 -> capped at 1.5; exp(0) = 1; exp(-1.5) = 0.22313; off-mask: 1
    torch.testing.assert_close(w, torch.tensor([[1.5, 1.0, math.exp(-1.5), 1.0]]))
    assert float(m["tis_weight_mean"]) == pytest.approx((1.5 + 1.0 + math.exp(-1.5)) / 3)
    assert float(m["tis_weight_max"]) == pytest.approx(math.exp(0.5))  # before truncation
    assert float(m["tis_capped_frac"]) == pytest.approx(1 / 3)


def test_weights_scale_each_tokens_loss_and_gradient():
    w, _ = truncated_is_weights(BEHAVIOUR, SAMPLER, MASK, cap=1.5)
    lp = BEHAVIOUR.clone().requires_grad_(True)  # ratio 1 against the behaviour policy
    adv = torch.tensor([[1.0, -1.0, 2.0, 5.0]])
    loss, _ = policy_loss(lp, BEHAVIOUR, adv, MASK, is_weights=w)
    # token-mean of -A * ratio * w over 3 tokens: -(1*1.5 - 1*1 + 2*0.22313) / 3
    expected = -(1.5 - 1.0 + 2 * math.exp(-1.5)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    # d/dlogp of -A * exp(logp - old) * w at ratio 1 is -A * w / T
    grad = torch.tensor([[-1.5, 1.0, -2 * math.exp(-1.5), 0.0]]) / 3
    torch.testing.assert_close(lp.grad, grad)


def test_huge_log_ratio_stays_finite_and_bad_input_is_refused():
    w, m = truncated_is_weights(torch.tensor([[0.0]]), torch.tensor([[-1e4]]),
                                torch.ones(1, 1), cap=2.0)
    assert float(w) == 2.0 and math.isfinite(float(m["tis_weight_max"]))
    with pytest.raises(ValueError, match="cap"):
        truncated_is_weights(BEHAVIOUR, SAMPLER, MASK, cap=0.0)
    with pytest.raises(ValueError, match="must match"):
        truncated_is_weights(BEHAVIOUR, SAMPLER[:, :2], MASK, cap=1.0)


@pytest.mark.parametrize("shift,cap,mean,capped,minis", [(math.log(2.0), 4.0, 0.5, 0.0, 1),
                                                         (-1.0, 2.0, 2.0, 1.0, 1),
                                                         (math.log(2.0), 4.0, 0.5, 0.0, 2)])
def test_learner_weights_against_its_own_logprobs(tiny_model, shift, cap, mean, capped, minis):
    """Sampler logprobs = learner's + shift: every weight is exp(-shift), truncated at cap.
    With 2 mini-batches the learner recomputes old logprobs and keeps the sampler's apart."""
    from rl.learner.torch import LearnerConfig, LossConfig, TorchLearner
    from rl.types import Batch, Task, Trajectory

    torch.manual_seed(0)
    learner = TorchLearner(tiny_model, LearnerConfig(autocast="fp32", lr=0.0, mini_batches=minis))
    ids = [[1, 5, 6, 7, 8, 9], [1, 5, 11, 12, 13, 2]]
    trajs = [Trajectory(Task(str(i), ""), x, [0, 0, 1, 1, 1, 1], [0.0] * 6, 2)
             for i, x in enumerate(ids)]
    batch = Batch.from_trajectories(trajs, torch.tensor([1.0, -1.0]), 0)
    batch.old_logprobs = (learner.compute_logprobs(batch) + shift) * batch.loss_mask
    m = learner.update(batch, LossConfig(tis_cap=cap))
    assert m["actor/tis_weight_mean"] == pytest.approx(mean, rel=1e-4)
    assert m["actor/tis_capped_frac"] == pytest.approx(capped)
