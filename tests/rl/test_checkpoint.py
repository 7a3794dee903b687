"""Atomic checkpoints: complete ones verify, truncated or unfinished ones are skipped."""

from __future__ import annotations

import pytest
import torch

from rl import checkpoint as ckpt
from rl.build import load_weights_into


def _save(root, step, model, tokenizer, keep_last=3):
    return ckpt.save_checkpoint(root, step, model=model, tokenizer=tokenizer,
                                state={"step": step, "rng": ckpt.rng_state()},
                                config_yaml="a: 1\n", keep_last=keep_last)


def test_save_load_round_trip(tmp_path, tiny_model, tokenizer, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        next(tiny_model.parameters()).add_(1.0)
    path = _save(tmp_path, 3, tiny_model, tokenizer)
    assert ckpt.verify(path) is None and ckpt.load_state(path)["step"] == 3
    fresh = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    load_weights_into(fresh, path / "model")
    for (n, a), (_, b) in zip(tiny_model.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), n


def test_truncated_checkpoint_is_skipped_for_the_previous_good_one(tmp_path, tiny_model,
                                                                    tokenizer):
    good = _save(tmp_path, 1, tiny_model, tokenizer)
    bad = _save(tmp_path, 2, tiny_model, tokenizer)
    weights = next((bad / "model").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # crash mid-write
    messages = []
    assert ckpt.latest_checkpoint(tmp_path, log=messages.append) == good
    assert "truncated" in messages[0] and str(bad) in messages[0]
    with pytest.raises(ValueError, match="incomplete"):
        ckpt.load_state(bad)


def test_unfinished_write_leaves_no_complete_checkpoint(tmp_path, tiny_model, tokenizer):
    good = _save(tmp_path, 1, tiny_model, tokenizer)
    (tmp_path / ".tmp-step_000002-123").mkdir()  # a writer killed before its rename
    half = tmp_path / "step_000003"
    half.mkdir()  # a folder without a manifest
    assert ckpt.latest_checkpoint(tmp_path, log=lambda m: None) == good


def test_keep_last_prunes_older_complete_checkpoints(tmp_path, tiny_model, tokenizer):
    for step in (1, 2, 3):
        _save(tmp_path, step, tiny_model, tokenizer, keep_last=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_000002", "step_000003"]
