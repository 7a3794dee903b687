"""The KL reference is the policy at the start of RL (after SFT), with LoRA and with full
fine-tuning; it survives a state_dict round trip; the RL objective lives in rl.algos."""

from __future__ import annotations

import pytest
import torch
from test_torch_learner import _batch

from rl.learner.base import Learner
from rl.learner.torch import LearnerConfig, LoraConfig, LossConfig, TorchLearner


def _sft_then_snapshot(model, lora: bool, offload: bool = False) -> tuple[TorchLearner, object]:
    learner = TorchLearner(model, LearnerConfig(
        lr=5e-2, autocast="fp32", micro_batch_size=4, ref_offload=offload,
        lora=LoraConfig(enabled=lora, r=4, alpha=8)))
    b = _batch()
    learner.sft_update(b)  # the cold start moves the policy away from the base model
    learner.reset_optimizer()
    learner.snapshot_reference()
    return learner, b


@pytest.mark.parametrize(("lora", "offload"), [(True, False), (False, False), (False, True)])
def test_reference_is_the_policy_when_rl_starts(tiny_model, lora, offload):
    learner, b = _sft_then_snapshot(tiny_model, lora, offload)
    assert isinstance(learner, Learner)
    at_start = learner.compute_logprobs(b)
    torch.testing.assert_close(learner.compute_ref_logprobs(b), at_start)
    learner.update(b, LossConfig(kl_coef=0.1))  # RL moves the policy
    now = learner.compute_logprobs(b)
    assert not torch.allclose(now, at_start, atol=1e-4)
    # the reference did not move with it, and the live weights are back after the ref pass
    torch.testing.assert_close(learner.compute_ref_logprobs(b), at_start)
    torch.testing.assert_close(learner.compute_logprobs(b), now)
    if lora:  # the old reference (adapter disabled = the pre-SFT model) differs from it
        with learner.model.disable_adapter():
            base = learner.compute_logprobs(b)
        assert not torch.allclose(base, at_start, atol=1e-4)


def test_reference_survives_a_state_dict_round_trip(tiny_model, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    learner, b = _sft_then_snapshot(tiny_model, lora=True)
    at_start = learner.compute_logprobs(b)
    learner.update(b, LossConfig(kl_coef=0.1))
    state = learner.state_dict()
    other = TorchLearner(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                         LearnerConfig(autocast="fp32", lora=LoraConfig(enabled=True, r=4,
                                                                        alpha=8)))
    other.load_state_dict(state)
    # the restored reference gives the reference logprobs of the run it came from
    torch.testing.assert_close(other.compute_ref_logprobs(b), at_start)


def test_reference_before_rl_starts_is_an_error(tiny_model):
    learner = TorchLearner(tiny_model, LearnerConfig(autocast="fp32"))
    with pytest.raises(RuntimeError, match="before RL started"):
        learner.compute_ref_logprobs(_batch())
