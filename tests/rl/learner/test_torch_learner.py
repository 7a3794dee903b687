"""Torch learner on a tiny random model: updates move parameters the right way."""

from __future__ import annotations

import torch

from rl.learner.torch import LearnerConfig, LoraConfig, LossConfig, TorchLearner, token_logprobs
from rl.types import Batch, Task, Trajectory


def _batch(n=4, length=12, vocab=200, seed=0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    trajs = []
    for i in range(n):
        ids = torch.randint(10, vocab, (length - i,), generator=g).tolist()
        prompt = 4
        mask = [0] * prompt + [1] * (len(ids) - prompt)
        trajs.append(Trajectory(Task(str(i), ""), ids, mask, [0.0] * len(ids), prompt))
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5][:n])
    return Batch.from_trajectories(trajs, adv, pad_id=0)


def _seq_logprob(model, batch):
    with torch.no_grad():
        lp = token_logprobs(model, batch.input_ids, batch.attention_mask, batch.loss_mask)
    return (lp * batch.loss_mask).sum(-1)


def test_token_logprobs_match_full_logits(tiny_model):
    b = _batch()
    lp = token_logprobs(tiny_model, b.input_ids, b.attention_mask, b.loss_mask)
    with torch.no_grad():
        full = torch.log_softmax(tiny_model(b.input_ids, attention_mask=b.attention_mask)
                                 .logits.float(), -1)
    ref = full[:, :-1].gather(-1, b.input_ids[:, 1:, None]).squeeze(-1)
    m = b.loss_mask[:, 1:] > 0
    torch.testing.assert_close(lp[:, 1:][m], ref[m], atol=1e-5, rtol=1e-5)
    assert torch.all(lp[b.loss_mask == 0] == 0)


def test_policy_update_raises_positive_advantage_sequences(tiny_model):
    b = _batch()
    learner = TorchLearner(tiny_model, LearnerConfig(lr=1e-2, micro_batch_size=2,
                                                     autocast="fp32"))
    before = _seq_logprob(learner.model, b)
    m = learner.update(b, LossConfig())
    after = _seq_logprob(learner.model, b)
    assert after[0] > before[0] and after[1] < before[1]  # A=+1 up, A=-1 down
    assert m["grad_norm"] > 0 and abs(m["actor/ratio_mean"] - 1.0) < 1e-6


def test_micro_batching_gives_the_same_gradient(tiny_model_dir):
    """Gradient accumulation over micro-batches equals one full-batch backward (fp32)."""
    from transformers import AutoModelForCausalLM

    b = _batch()
    grads = []
    for mbs in (1, 3, 4):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        learner = TorchLearner(model, LearnerConfig(micro_batch_size=mbs, autocast="fp32"))
        learner.optimizer.step = lambda *a, **k: None  # type: ignore[method-assign]
        learner.scheduler.step = lambda *a, **k: None  # type: ignore[method-assign]
        learner.update(b, LossConfig())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert grads[0].abs().sum() > 0
    for g in grads[1:]:
        torch.testing.assert_close(g, grads[0], atol=1e-6, rtol=1e-4)  # fp32 sum order


def test_sft_update_lowers_nll(tiny_model):
    b = _batch()
    learner = TorchLearner(tiny_model, LearnerConfig(lr=1e-2, autocast="bf16"))
    first = learner.sft_update(b)["sft/nll"]
    for _ in range(3):
        last = learner.sft_update(b)["sft/nll"]
    assert last < first


def test_lora_trains_adapter_only_and_exports_merged_base_names(tiny_model):
    base_names = {n for n, _ in tiny_model.named_parameters()}
    frozen = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    learner = TorchLearner(tiny_model, LearnerConfig(
        lr=1e-2, autocast="fp32", lora=LoraConfig(enabled=True, r=4, alpha=8)))
    b = _batch()
    learner.update(b, LossConfig())
    learner.update(b, LossConfig())
    merged = dict(learner.named_weights())
    assert base_names <= set(merged) | {"lm_head.weight"}
    changed = [n for n in frozen if n in merged and not torch.equal(merged[n], frozen[n])]
    assert changed, "merged weights must include the adapter's update"
    # the base weights themselves stay frozen
    for n, p in learner.model.get_base_model().named_parameters():
        if "lora_" not in n and n.replace("base_layer.", "") in frozen:
            assert torch.equal(p, frozen[n.replace("base_layer.", "")])


def test_kl_with_lora_reference_is_zero_at_start(tiny_model):
    learner = TorchLearner(tiny_model, LearnerConfig(
        lr=1e-3, autocast="fp32", lora=LoraConfig(enabled=True, r=4, alpha=8)))
    learner.snapshot_reference()  # RL starts: the reference is the policy now
    m = learner.update(_batch(), LossConfig(kl_coef=0.1))
    assert abs(m["actor/kl"]) < 1e-6  # policy == reference at the first update


def test_set_lr_survives_scheduler_steps(tiny_model):
    learner = TorchLearner(tiny_model, LearnerConfig(lr=1e-3, autocast="fp32", warmup_steps=2))
    b = _batch()
    learner.set_lr(5e-2)
    assert learner.optimizer.param_groups[0]["lr"] == 2.5e-2  # warm-up step 1 of 2: lr * 1/2
    learner.sft_update(b)
    assert learner.optimizer.param_groups[0]["lr"] == 5e-2  # step 2: full base lr
    learner.sft_update(b)
    assert learner.optimizer.param_groups[0]["lr"] == 5e-2
