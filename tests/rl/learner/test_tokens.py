"""Barely trained special tokens: detection on hand-made rows, the auto|true|false decision, the
format's tokens, and a LoRA update that moves exactly the chosen rows besides the adapter."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rl.config import LearnerConfig, LoraConfig
from rl.learner.tokens import (
    format_token_ids,
    lora_token_indices,
    near_duplicate_rows,
    peft_token_indices,
    tag_format_tokens,
    trainable_token_weights,
)
from rl.learner.torch import TorchLearner
from rl.types import Batch, Task, Trajectory


def test_near_duplicate_rows_against_hand_made_cosines():
    w = torch.tensor([
        [1.0, 0.0, 0.0],   # 0: reference ("<|im_start|>")
        [0.0, 1.0, 0.0],   # 1: candidate, well apart from everything
        [0.99, 0.1, 0.0],  # 2: candidate, cos to row 0 = 0.99 / sqrt(0.9901) = 0.99494
        [0.0, 0.0, 1.0],   # 3: candidate
        [0.0, 0.1, 1.0],   # 4: candidate, cos to row 3 = 1 / sqrt(1.01) = 0.99504
    ])
    rep = near_duplicate_rows(w, [1, 2, 3, 4], references=[0], threshold=0.98)
    assert rep.flagged == [2, 3, 4]
    pairs = {(a, b): c for a, b, c in rep.pairs}
    assert set(pairs) == {(2, 0), (3, 4)}
    assert pairs[(2, 0)] == pytest.approx(0.99 / (0.9901 ** 0.5), abs=1e-6)
    assert pairs[(3, 4)] == pytest.approx(1 / (1.01 ** 0.5), abs=1e-6)
    assert near_duplicate_rows(w, [1, 2, 3, 4], [0], threshold=0.996).flagged == []
    assert near_duplicate_rows(w, [99], [0]).candidates == []  # out of range: ignored


def _tiny(tie: bool, vocab: int = 40, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tie))


@pytest.mark.parametrize("mode,duplicate,want", [
    ("false", True, []), ("true", False, [3, 7]), ("auto", False, []), ("auto", True, [3, 7]),
])
def test_lora_token_indices_modes(mode, duplicate, want):
    m = _tiny(tie=True)
    if duplicate:
        with torch.no_grad():
            m.lm_head.weight[7] = m.lm_head.weight[3] * 1.001
    tag_format_tokens(m, [7, 3])
    assert lora_token_indices(m, LoraConfig(train_token_rows=mode)) == want
    with pytest.raises(ValueError, match="train_token_rows='maybe'"):
        lora_token_indices(m, LoraConfig(train_token_rows="maybe"))


def test_peft_indices_include_the_head_only_when_untied():
    assert peft_token_indices(_tiny(tie=True), [5, 2]) == {"embed_tokens": [2, 5]}
    assert peft_token_indices(_tiny(tie=False), [5]) == {"embed_tokens": [5], "lm_head": [5]}
    assert peft_token_indices(_tiny(tie=True), []) is None


def test_format_token_ids_are_the_added_tokens_a_format_writes(tiny_model_dir):
    from transformers import AutoTokenizer

    from envs.formats import get_format

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert format_token_ids(tok, get_format("hermes")) == []  # plain text in SmolLM2's vocab
    tok.add_special_tokens({"additional_special_tokens": ["<tool_call>", "</tool_call>"]})
    ids = tok.convert_tokens_to_ids(["<tool_call>", "</tool_call>"])
    assert format_token_ids(tok, get_format("hermes")) == sorted(ids)


def _batch(ids_rows: list[list[int]]) -> Batch:
    trajs = [Trajectory(Task(str(i), ""), r, [0, 0] + [1] * (len(r) - 2), [0.0] * len(r), 2)
             for i, r in enumerate(ids_rows)]
    return Batch.from_trajectories(trajs, torch.zeros(len(trajs)), pad_id=0)


@pytest.mark.parametrize("tie", [True, False])
def test_lora_with_token_rows_changes_exactly_those_rows_besides_the_adapter(tie):
    model = _tiny(tie=tie)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tag_format_tokens(model, [3, 7])
    cfg = LearnerConfig(lr=1e-2, autocast="fp32",
                        lora=LoraConfig(enabled=True, r=2, alpha=4, train_token_rows="true"))
    learner = TorchLearner(model, cfg)
    # every token of the vocabulary appears, so every row would get a gradient if trainable
    learner.sft_update(_batch([[1, 2, 3, 7, 9, 11, 3, 7], list(range(10, 40))]))
    after = dict(learner.named_weights())
    assert set(after) >= set(before) - {"lm_head.weight"}
    emb = after["model.embed_tokens.weight"]
    changed = (emb != before["model.embed_tokens.weight"]).any(-1).nonzero().flatten().tolist()
    assert changed == [3, 7]
    if not tie:  # the head's own rows: the ones that make the model emit the token
        head = after["lm_head.weight"]
        assert (head != before["lm_head.weight"]).any(-1).nonzero().flatten().tolist() == [3, 7]
    adapted = [k for k in before if "proj" in k]  # every linear layer carries a LoRA adapter
    assert adapted and all(not torch.equal(after[k], before[k]) for k in adapted)
    untouched = [k for k in before if "norm" in k]
    assert untouched and all(torch.equal(after[k], before[k]) for k in untouched)
    rows = trainable_token_weights(learner.model)
    assert torch.equal(rows["model.embed_tokens.weight"], emb)


def test_lora_without_token_rows_leaves_the_embedding_alone():
    model = _tiny(tie=True)
    before = model.model.embed_tokens.weight.detach().clone()
    tag_format_tokens(model, [3, 7])
    cfg = LearnerConfig(lr=1e-2, autocast="fp32",
                        lora=LoraConfig(enabled=True, r=2, alpha=4, train_token_rows="false"))
    learner = TorchLearner(model, cfg)
    learner.sft_update(_batch([[1, 2, 3, 7, 9, 11, 3, 7]]))
    after = dict(learner.named_weights())
    assert torch.equal(after["model.embed_tokens.weight"], before)
    assert trainable_token_weights(learner.model) == {}


@pytest.mark.parametrize("tie", [True, False])
def test_fast_token_forward_equals_peft_forward_values_and_grads(tie):
    from rl.learner.torch import apply_lora

    def build(fast: bool):
        m = _tiny(tie=tie, seed=1)
        tag_format_tokens(m, [3, 7])
        p = apply_lora(m, LoraConfig(enabled=True, r=2, alpha=4, train_token_rows="true"))
        layers = [mod for mod in p.modules() if hasattr(mod, "trainable_tokens_delta")]
        with torch.no_grad():  # give the trained rows values that differ from the base rows
            for mod in layers:
                for d in mod.trainable_tokens_delta.values():
                    d.add_(torch.arange(d.numel(), dtype=d.dtype).view_as(d) * 0.01)
        assert len(layers) == 2 and all("forward" in vars(m) for m in layers)  # embedding + head
        if not fast:
            for mod in layers:
                del mod.forward  # back to PEFT's class forward
        return p

    ids = torch.tensor([[1, 3, 5, 7, 7, 2], [7, 9, 3, 0, 4, 3]])
    outs, grads = [], []
    for fast in (True, False):
        p = build(fast)
        logits = p(input_ids=ids).logits
        (logits.square().mean()).backward()
        outs.append(logits.detach())
        grads.append({n: q.grad.clone() for n, q in p.named_parameters()
                      if q.requires_grad and q.grad is not None})
    torch.testing.assert_close(outs[0], outs[1])
    assert set(grads[0]) == set(grads[1]) and any("trainable_tokens" in n for n in grads[0])
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], msg=n)


def test_token_rows_get_their_own_learning_rate_and_no_weight_decay():
    # Adam's first step moves every element with a non-zero gradient by exactly its group's lr
    # (m/sqrt(v) = sign(g)): the token rows by lr * scale, the adapter by lr.
    model = _tiny(tie=False)
    before = model.lm_head.weight.detach().clone()
    tag_format_tokens(model, [3, 7])
    cfg = LearnerConfig(lr=1e-3, autocast="fp32", weight_decay=0.5,
                        lora=LoraConfig(enabled=True, r=2, alpha=4, train_token_rows="true",
                                        token_rows_lr_scale=20.0))
    learner = TorchLearner(model, cfg)
    groups = learner.optimizer.param_groups
    assert [g["lr"] for g in groups] == pytest.approx([1e-3, 2e-2])
    assert [g["weight_decay"] for g in groups] == [0.5, 0.0]
    learner.set_lr(1e-4)  # a stage change keeps the rows' scale
    assert [g["lr"] for g in groups] == pytest.approx([1e-4, 2e-3])
    lora_b = [p for n, p in learner.model.named_parameters() if "lora_B" in n]
    b0 = [p.detach().clone() for p in lora_b]
    learner.sft_update(_batch([[1, 2, 3, 7, 9, 11, 3, 7]]))
    moved = (dict(learner.named_weights())["lm_head.weight"] - before)[[3, 7]].abs()
    assert moved.max().item() == pytest.approx(2e-3, rel=1e-3)
    step_b = max((p.detach() - q).abs().max().item() for p, q in zip(lora_b, b0))
    assert step_b == pytest.approx(1e-4, rel=1e-3)
