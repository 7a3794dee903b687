"""Shared fixtures: the embedded tokenizer, a tiny random Llama model with the same vocab, and a
few RL steps of it on the HF engine (``tiny_run``)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _sigint_handled():
    """A shell starts a background job (``make test &``, ``nohup ... &``) with SIGINT ignored,
    and every child inherits that: the Ctrl-C tests (here and in their subprocesses) need
    Python's own handler, so restore it for the session."""
    import signal

    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield


@pytest.fixture(scope="session")
def tokenizer():
    from rl.models import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """A 2-layer random Llama with SmolLM2's tokenizer, saved as an HF folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
    )
    model = LlamaForCausalLM(cfg)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture()
def tiny_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)


EVEN_TOKENS_REWARD = """
from rewards.compose import register_reward, registered_rewards
if "even_tokens" not in registered_rewards():
    @register_reward("even_tokens")
    def even_tokens(traj):
        ids = [t for t, m in zip(traj.token_ids, traj.loss_mask) if m]
        return sum(t % 2 == 0 for t in ids) / max(len(ids), 1)
"""


class TinyRun:
    """A few RL steps of the tiny random Llama (tests/rl/test_trainer.py, test_resume.py).

    On the in-process HF engine: the default ``engine=auto`` would start vLLM where it is
    installed (tens of seconds and GBs of KV cache for a 1 MB model). fp32, one thread, no
    wandb, no SFT. A random model earns nothing from the real reward terms, so every advantage
    would be 0 and nothing would train: the runs score the share of even sampled token ids
    instead (``register``, Python source, so that a subprocess can run it too)."""

    register = EVEN_TOKENS_REWARD

    def __init__(self, model_dir) -> None:
        self.model_dir = model_dir

    def overrides(self, run_dir, *extra: str) -> list[str]:
        """The run's overrides; ``extra`` come last, so they replace any of these."""
        return [
            f"model.name={self.model_dir}", "engine=hf", f"trainer.run_dir={run_dir}",
            "trainer.steps=2", "trainer.tasks_per_step=2", "algorithm.group_size=2",
            "tasks.train_size=8", "tasks.eval_size=2", "sft.enabled=false",
            "rollout.max_turns=1", "rollout.max_tokens_per_turn=6", "learner.autocast=fp32",
            "learner.lr=1e-2", "trainer.num_threads=1", "trainer.wandb=disabled",
            "trainer.samples_to_log=1", "++algorithm.reward_weights={even_tokens: 1.0}", *extra,
        ]

    def trainer(self, run_dir, *extra: str):
        """A local driver (rl/trainer.py) for :meth:`overrides` (the reward registered)."""
        from omegaconf import OmegaConf

        from rl.config import load_config, to_dataclass
        from rl.trainer import Trainer

        exec(self.register, {})
        raw = load_config(self.overrides(run_dir, *extra))
        return Trainer(to_dataclass(raw), run_dir, OmegaConf.to_yaml(raw))


@pytest.fixture(scope="session")
def tiny_run(tiny_model_dir) -> TinyRun:
    return TinyRun(tiny_model_dir)
