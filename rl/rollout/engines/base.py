"""The Engine protocol: token ids in, sampled token ids + their logprobs out.

Every engine (HF transformers, vLLM) implements it, so the agent loop and the trainer never
depend on one backend. Prompts are token lists, never text: the agent loop owns tokenization.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch


def eos_token_ids(tokenizer) -> list[int]:
    """The tokenizer's EOS ids (``eos_token_id`` may be one id or a list); the first is the one
    a scripted turn ends with."""
    eos = tokenizer.eos_token_id
    return list(eos) if isinstance(eos, list) else [eos]


@dataclass
class SamplingParams:
    max_new_tokens: int = 64
    """Upper bound on tokens sampled for one request (per-request limits may be lower)."""
    temperature: float = 1.0
    """0 means greedy decoding (logprobs are then those of the untempered distribution)."""
    top_p: float = 1.0
    top_k: int = 0
    """0 disables top-k."""
    stop: list[str] = field(default_factory=list)
    """Stop strings: generation ends once the decoded continuation contains one (kept)."""
    stop_token_ids: list[int] = field(default_factory=list)
    """Extra stop tokens besides the tokenizer's EOS (kept in the output)."""
    seed: int | None = None
    """Seed for this call's sampling; None continues the engine's RNG stream."""


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    max_new_tokens: int | None = None
    """Overrides SamplingParams.max_new_tokens when smaller (remaining trajectory budget)."""


@dataclass
class GenerationOutput:
    token_ids: list[int]
    logprobs: list[float]
    """Log-probability of each sampled token under the sampling distribution (after temperature)."""
    finish_reason: str
    """"stop" (EOS, stop token or stop string) or "length"."""


@runtime_checkable
class Engine(Protocol):
    def generate(
        self, requests: Sequence[GenerationRequest], sampling: SamplingParams
    ) -> list[GenerationOutput]:
        """Sample one continuation per request (batched); same order as ``requests``."""
        ...

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load new policy weights (learner -> engine sync)."""
        ...
