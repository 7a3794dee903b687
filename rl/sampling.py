"""What one ``generate`` call of an engine is asked and what it returns: the request types shared
by the rollout engines (rl/rollout/engines/) and the envs that sample from an engine of their own
(the LLM-simulated user, envs/tasks/llm_user.py). Part of the core: plain dataclasses, no torch,
importable from ``envs/``."""

from __future__ import annotations

from dataclasses import dataclass, field


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
    """Extra stop tokens besides the engine's turn ends (rl.rollout.engines.base.turn_end_ids;
    kept in the output)."""
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
