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
    with torch.no_grad():  # the sampler's logprobs = this policy's: the rollout ratio is 1
        b.old_logprobs = token_logprobs(learner.model, b.input_ids, b.attention_mask,
                                        b.loss_mask)
    before = _seq_logprob(learner.model, b)
    m = learner.update(b, LossConfig())
    after = _seq_logprob(learner.model, b)
    assert after[0] > before[0] and after[1] < before[1]  # A=+1 up, A=-1 down
    assert m["grad_norm"] > 0 and abs(m["actor/ratio_mean"] - 1.0) < 1e-5


def test_on_policy_ratio_metrics_are_measured_against_the_rollout_policy(tiny_model):
    """Fully on-policy the PPO ratio is 1 by construction; the reported ratio and clip shares
    compare the learner with the sampler's logprobs (they were the constants 1 / 0 before)."""
    b = _batch()
    learner = TorchLearner(tiny_model, LearnerConfig(lr=1e-4, autocast="fp32"))
    with torch.no_grad():
        lp = token_logprobs(learner.model, b.input_ids, b.attention_mask, b.loss_mask)
    shift = torch.zeros_like(lp)
    shift[:, ::2] = 0.5  # the sampler gave every other token 0.5 nats more: ratio e^-0.5
    b.old_logprobs = (lp + shift) * b.loss_mask
    m = learner.update(b, LossConfig(clip_low=0.2, clip_high=0.28))
    on = b.loss_mask > 0
    low = (shift[on] > 0).float().mean().item()  # ratio 0.607 < 0.8 on exactly those tokens
    assert abs(m["actor/clip_frac_low"] - low) < 1e-6 and m["actor/clip_frac_high"] == 0.0
    expect = (torch.exp(-shift[on])).mean().item()
    assert abs(m["actor/ratio_mean"] - expect) < 1e-4


def test_update_reports_its_size_and_kl(tiny_model):
    """The health probe: KL before/after the update and to the RL-start snapshot, relative
    update size, and the share of parameters moved by >= lr/2 (~all of them on Adam's first,
    sign-like step)."""
    b = _batch()
    learner = TorchLearner(tiny_model, LearnerConfig(lr=1e-3, autocast="fp32"))
    learner.snapshot_reference()
    m1 = learner.update(b, LossConfig())
    assert m1["health/kl_update"] > 0 and m1["health/update_rel"] > 0
    assert abs(m1["health/kl_to_start"]) < 1e-6  # the first update starts at the snapshot
    assert m1["health/moved_frac"] > 0.9  # Adam's first step: |dtheta| ~ lr everywhere
    m2 = learner.update(b, LossConfig())
    assert m2["health/kl_to_start"] > 0


def test_rl_warmup_counts_from_rl_start_not_from_sft(tiny_model):
    """One scheduler serves SFT and RL; RL's warm-up restarts when RL starts (it used to count
    the SFT steps, so warmup_steps <= SFT steps gave RL none)."""
    b = _batch()
    learner = TorchLearner(tiny_model, LearnerConfig(lr=1e-4, warmup_steps=4, autocast="fp32"))
    learner.set_lr(1e-3, warmup_steps=0)  # the SFT stage, no warm-up
    for _ in range(6):
        assert learner.sft_update(b)["lr"] == 1e-3
    learner.reset_optimizer()
    learner.set_lr(1e-4, warmup_steps=4)  # what Trainer.start_rl does
    lrs = [learner.update(b, LossConfig())["lr"] for _ in range(5)]
    assert lrs == [1e-4 * k / 4 for k in (1, 2, 3, 4)] + [1e-4]
    state = learner.state_dict()["scheduler"]  # the warm-up length survives a checkpoint
    fresh = TorchLearner(tiny_model, LearnerConfig(lr=1e-4, warmup_steps=0, autocast="fp32"))
    fresh.load_state_dict(learner.state_dict())
    assert fresh.scheduler.lr_lambdas[0].steps == 4 and state["last_epoch"] == 5


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


def test_trainer_start_rl_restarts_the_warmup_after_sft(tiny_model):
    """The driver's RL start (rl/trainer.py) gives RL its warm-up after any number of SFT
    steps: the first RL step runs at lr / warmup_steps."""
    from types import SimpleNamespace

    from rl.config import Config
    from rl.trainer import Trainer

    cfg = Config()
    cfg.learner.lr, cfg.learner.warmup_steps, cfg.learner.autocast = 1e-4, 3, "fp32"
    b = _batch()
    learner = TorchLearner(tiny_model, cfg.learner)
    learner.set_lr(2e-5, warmup_steps=cfg.sft.warmup_steps)
    for _ in range(8):  # the SFT stage, more steps than RL's warm-up
        learner.sft_update(b)
    Trainer.start_rl(SimpleNamespace(cfg=cfg, learner=learner))  # type: ignore[arg-type]
    assert learner.update(b, LossConfig())["lr"] == 1e-4 / 3
