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
        share_prefix: bool = True,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.shared = shared
        self.max_batch_size = max_batch_size
        self.share_prefix = share_prefix
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
        if any(n <= 0 for n in limits):
            raise ValueError("every request needs a token budget of at least 1")
        # Shared prefix (e.g. the system prompt of every trajectory): prefill it once and
        # repeat its KV cache across the batch. Rows are laid out [prefix | pads | suffix];
        # padding may sit anywhere since attention masks it and positions skip it.
        prefix = self._shared_prefix([r.prompt_ids for r in requests]) if self.share_prefix else []
        suffixes = [r.prompt_ids[len(prefix):] for r in requests]
        S = max(len(x) for x in suffixes)
        ids = torch.full((B, S), self.pad_id, dtype=torch.long)
        attn = torch.zeros((B, len(prefix) + S), dtype=torch.long)
        attn[:, : len(prefix)] = 1
        for i, suf in enumerate(suffixes):
            if suf:
                ids[i, S - len(suf):] = torch.tensor(suf, dtype=torch.long)
            attn[i, len(prefix) + S - len(suf):] = 1
        pos_all = (attn.cumsum(-1) - 1).clamp(min=0)
        stop_ids = self.eos_ids | set(sampling.stop_token_ids)
        tokens: list[list[int]] = [[] for _ in range(B)]
        logprobs: list[list[float]] = [[] for _ in range(B)]
        finish = [""] * B
        cache = DynamicCache()
        if prefix:
            p = torch.tensor([prefix], dtype=torch.long)
            self.model(input_ids=p, attention_mask=torch.ones_like(p), past_key_values=cache,
                       use_cache=True, logits_to_keep=1)
            cache.batch_repeat_interleave(B)
        out = self.model(
            input_ids=ids, attention_mask=attn, position_ids=pos_all[:, len(prefix):],
            past_key_values=cache, use_cache=True, logits_to_keep=1,
        )
        pos = pos_all[:, -1:]
        rows = list(range(B))  # original index of each row still in the batch
        while True:
            tok, lp = sample_next(out.logits[:, -1].float(), sampling, self.generator)
            for j, i in enumerate(rows):
                if finish[i]:
                    continue
                t = int(tok[j])
                tokens[i].append(t)
                logprobs[i].append(float(lp[j]))
                if t in stop_ids or self._hit_stop_string(tokens[i], sampling.stop):
                    finish[i] = "stop"
                elif len(tokens[i]) >= limits[i]:
                    finish[i] = "length"
            keep = [j for j, i in enumerate(rows) if not finish[i]]
            if not keep:
                break
            if len(keep) < len(rows):  # drop finished rows: no compute wasted on them
                sel = torch.tensor(keep, dtype=torch.long)
                cache.batch_select_indices(sel)
                attn, pos = attn[sel], pos[sel]
                rows = [rows[j] for j in keep]
            nxt = torch.tensor([[tokens[i][-1]] for i in rows], dtype=torch.long)
            attn = torch.cat([attn, torch.ones((len(rows), 1), dtype=torch.long)], dim=1)
            pos = pos + 1
            out = self.model(
                input_ids=nxt, attention_mask=attn, position_ids=pos,
                past_key_values=cache, use_cache=True,
            )
        if was_training:
            self.model.train()
        return [
            GenerationOutput(tokens[i], logprobs[i], finish[i] or "length") for i in range(B)
        ]

    @staticmethod
    def _shared_prefix(prompts: list[list[int]], min_len: int = 16) -> list[int]:
        """Longest common prefix of all prompts, minus one token so every row still has a
        suffix to prefill (its last position yields the first logits). Empty when short."""
        if len(prompts) < 2:
            return []
        n = min(len(p) for p in prompts) - 1
        first = prompts[0]
        k = 0
        while k < n and all(p[k] == first[k] for p in prompts):
            k += 1
        return first[:k] if k >= min_len else []

    def _hit_stop_string(self, toks: list[int], stops: list[str]) -> bool:
        if not stops:
            return False
        tail = self.tokenizer.decode(toks[-16:])
        return any(s in tail for s in stops)
