"""The Engine protocol: token ids in, sampled token ids + their logprobs out.

Every engine (HF transformers, vLLM) implements it, so the agent loop and the trainer never
depend on one backend. Prompts are token lists, never text: the agent loop owns tokenization.

An engine that knows its model also exposes ``generation_config`` (the model's transformers
``GenerationConfig``, or None): the agent loop derives the same turn ends from it
(:func:`turn_end_ids`) as the engine stops at. Engines without it (scripted test engines) stop
at the tokenizer's EOS.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

# the request types live in the core (rl/sampling.py, shared with envs/); re-exported here
from rl.sampling import GenerationOutput, GenerationRequest, SamplingParams


def _ids(value: Any) -> list[int]:
    """``eos_token_id`` as a list: it may be None, one id or a list of ids."""
    if value is None:
        return []
    return [int(i) for i in value] if isinstance(value, (list, tuple)) else [int(value)]


def eos_token_ids(tokenizer) -> list[int]:
    """The tokenizer's EOS ids (``eos_token_id`` may be one id or a list)."""
    return _ids(tokenizer.eos_token_id)


def turn_end_ids(tokenizer, generation_config: Any = None, extra: Iterable[int] = ()) -> list[int]:
    """Every token id at which a sampled turn ends: the tokenizer's EOS, then the model's
    ``generation_config.eos_token_id`` (one id or a list), then ``extra`` (a tool-call format's
    stop tokens), without repeats.

    The one place that decides where turns end: both engines stop at these ids (the HF engine
    reads ``model.generation_config``; the vLLM engine the model folder's, and passes the ids as
    explicit ``stop_token_ids`` so vLLM does not decide on its own), the agent loop strips them
    from a turn's text, and SFT replay ends a demonstrated turn with one of them
    (rl/sft.py). Models whose chat turns end with another token than the tokenizer's EOS list it
    in their generation config: Gemma's ``<end_of_turn>``, Llama 3's ``<|eot_id|>``, Qwen base
    models' ``<|im_end|>``; without it the HF engine ran past the turn while vLLM stopped.
    ``generation_config``: a transformers ``GenerationConfig`` (or anything with
    ``eos_token_id``), or None (the tokenizer's EOS only).
    """
    ids = [*eos_token_ids(tokenizer), *_ids(getattr(generation_config, "eos_token_id", None)),
           *extra]
    return list(dict.fromkeys(ids))


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
