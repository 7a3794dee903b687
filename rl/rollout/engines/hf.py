"""The Engine protocol on a transformers causal LM, in-process, batched, with a KV cache.

Our own decode loop (not ``model.generate``) so that we control exactly which tokens were sampled
and their logprobs, per-request token budgets, and stop conditions, with no re-tokenization.
Prompts are left-padded; position ids come from the attention mask so padding does not shift
positions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from rl.rollout.engines.base import GenerationOutput, GenerationRequest, SamplingParams


def sample_next(
    logits: torch.Tensor, sampling: SamplingParams, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row. ``logits`` is ``(B, V)`` float32.

    Returns ``(tokens (B,), logprobs (B,))``; logprobs are under ``log_softmax(logits / T)``
    (the distribution the learner recomputes), before top-k / top-p truncation.
    """
    if sampling.temperature <= 0:
        logp = torch.log_softmax(logits, dim=-1)
        tok = logits.argmax(dim=-1)
        return tok, logp.gather(-1, tok[:, None]).squeeze(-1)
    logp = torch.log_softmax(logits / sampling.temperature, dim=-1)
    filtered = logp.clone()
    if sampling.top_k > 0 and sampling.top_k < filtered.shape[-1]:
        kth = torch.topk(filtered, sampling.top_k, dim=-1).values[:, -1:]
        filtered = filtered.masked_fill(filtered < kth, float("-inf"))
    if sampling.top_p < 1.0:
        sorted_lp, order = filtered.sort(dim=-1, descending=True)
        cum = sorted_lp.exp().cumsum(dim=-1)
        # drop a token when the mass before it already reaches top_p (always keep the first)
        drop_sorted = (cum - sorted_lp.exp()) >= sampling.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        filtered = filtered.masked_fill(drop, float("-inf"))
    probs = torch.softmax(filtered, dim=-1)
    tok = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return tok, logp.gather(-1, tok[:, None]).squeeze(-1)


class HFEngine:
    """Batched sampling on an ``AutoModelForCausalLM``.

    ``model`` may be the learner's own module (``shared=True``): then ``update_weights`` is a
    no-op because the engine already sees the learner's parameters.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        *,
        shared: bool = False,
        max_batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.shared = shared
        self.max_batch_size = max_batch_size
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        eos = tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.generator = torch.Generator().manual_seed(seed)

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        if self.shared:
            return
        params = dict(self.model.named_parameters())
        params.update(dict(self.model.named_buffers()))
        with torch.no_grad():
            for name, tensor in named_tensors:
                if name not in params:
                    raise KeyError(f"update_weights: engine model has no tensor '{name}'")
                params[name].copy_(tensor.to(params[name].dtype))

    def generate(
        self, requests: Sequence[GenerationRequest], sampling: SamplingParams
    ) -> list[GenerationOutput]:
        if sampling.seed is not None:
            self.generator.manual_seed(sampling.seed)
        outs: list[GenerationOutput] = []
        for s in range(0, len(requests), self.max_batch_size):
            outs.extend(self._generate_batch(requests[s : s + self.max_batch_size], sampling))
        return outs

    @torch.inference_mode()
    def _generate_batch(
        self, requests: Sequence[GenerationRequest], sampling: SamplingParams
    ) -> list[GenerationOutput]:
        from transformers import DynamicCache

        was_training = self.model.training
        self.model.eval()
        B = len(requests)
        limits = [
            min(sampling.max_new_tokens, r.max_new_tokens or sampling.max_new_tokens)
            for r in requests
        ]
        P = max(len(r.prompt_ids) for r in requests)
        ids = torch.full((B, P), self.pad_id, dtype=torch.long)
        attn = torch.zeros((B, P), dtype=torch.long)
        for i, r in enumerate(requests):
            ids[i, P - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids, dtype=torch.long)
            attn[i, P - len(r.prompt_ids) :] = 1
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        stop_ids = self.eos_ids | set(sampling.stop_token_ids)
        tokens: list[list[int]] = [[] for _ in range(B)]
        logprobs: list[list[float]] = [[] for _ in range(B)]
        finish = [""] * B
        for i in range(B):
            if limits[i] <= 0:
                finish[i] = "length"
        cache = DynamicCache()
        out = self.model(
            input_ids=ids, attention_mask=attn, position_ids=pos,
            past_key_values=cache, use_cache=True, logits_to_keep=1,
        )
        step = 0
        while not all(finish) and step < max(limits):
            tok, lp = sample_next(out.logits[:, -1].float(), sampling, self.generator)
            for i in range(B):
                if finish[i]:
                    continue
                t = int(tok[i])
                tokens[i].append(t)
                logprobs[i].append(float(lp[i]))
                if t in stop_ids or self._hit_stop_string(tokens[i], sampling.stop):
                    finish[i] = "stop"
                elif len(tokens[i]) >= limits[i]:
                    finish[i] = "length"
            step += 1
            if all(finish):
                break
            nxt = torch.tensor(
                [tokens[i][-1] if tokens[i] else self.pad_id for i in range(B)], dtype=torch.long
            )
            attn = torch.cat([attn, torch.ones((B, 1), dtype=torch.long)], dim=1)
            pos = pos[:, -1:] + 1
            out = self.model(
                input_ids=nxt[:, None], attention_mask=attn, position_ids=pos,
                past_key_values=cache, use_cache=True,
            )
        if was_training:
            self.model.train()
        return [
            GenerationOutput(tokens[i], logprobs[i], finish[i] or "length") for i in range(B)
        ]

    def _hit_stop_string(self, toks: list[int], stops: list[str]) -> bool:
        if not stops:
            return False
        tail = self.tokenizer.decode(toks[-16:])
        return any(s in tail for s in stops)
