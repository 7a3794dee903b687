"""The Engine protocol on a transformers causal LM, in-process, batched, with a KV cache.

Our own decode loop (not ``model.generate``) so that we control exactly which tokens were sampled
and their logprobs, per-request token budgets, and stop conditions, with no re-tokenization.
Prompts are left-padded; position ids come from the attention mask so padding does not shift
positions.

Devices: every tensor the engine builds (ids, masks, positions, the shared prefix, row
selections, next tokens) goes to the model's device, read per batch (DeepSpeed moves a shared
policy after the engine was made), and sampling draws from a ``torch.Generator`` on the device
the logits come out on. The sampled tokens and logprobs cross to the host once per decode step
(one ``tolist`` each), not once per row.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from rl.rollout.engines.base import (
    GenerationOutput,
    GenerationRequest,
    SamplingParams,
    turn_end_ids,
)


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
        # where a turn ends: the tokenizer's EOS and the model's generation_config.eos_token_id
        # (Gemma's <end_of_turn>, Llama 3's <|eot_id|>), as vLLM stops (turn_end_ids)
        self.generation_config = getattr(model, "generation_config", None)
        self.eos_ids = set(turn_end_ids(tokenizer, self.generation_config))
        self.seed = seed
        # On the model's device now, so a resumed run restores the state into a generator of
        # the right kind (rl/checkpoint.py GeneratorState) before the first rollout.
        self.generator = self._new_generator(self.device, seed)

    @property
    def device(self) -> torch.device:
        """Where the engine's input tensors go: the model's device, read on every use."""
        from rl.models import module_device

        return module_device(self.model)

    @staticmethod
    def _new_generator(device: torch.device, seed: int) -> torch.Generator:
        # a shape-only model on the meta device has no generator of its own kind
        dev = device if device.type != "meta" else torch.device("cpu")
        return torch.Generator(device=dev).manual_seed(seed)

    def _generator_for(self, device: torch.device) -> torch.Generator:
        """The sampling generator on ``device`` (where the logits are). Re-made, seeded with
        the engine's seed, only if the model moved to another device since."""
        if self.generator.device != device:
            self.generator = self._new_generator(device, self.seed)
        return self.generator

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        if self.shared:
            return
        params = dict(self.model.named_parameters())
        params.update(dict(self.model.named_buffers()))
        with torch.no_grad():
            for name, tensor in named_tensors:
                if name not in params:
                    raise KeyError(f"update_weights: engine model has no tensor '{name}'")
                params[name].copy_(tensor.to(device=params[name].device,
                                              dtype=params[name].dtype))

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
        dev = self.device
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
        # built on the host, then moved in one copy each
        ids_rows = [[self.pad_id] * (S - len(suf)) + list(suf) for suf in suffixes]
        attn_rows = [[1] * len(prefix) + [0] * (S - len(suf)) + [1] * len(suf)
                     for suf in suffixes]
        ids = torch.tensor(ids_rows, dtype=torch.long).to(dev)
        attn = torch.tensor(attn_rows, dtype=torch.long).to(dev)
        pos_all = (attn.cumsum(-1) - 1).clamp(min=0)
        stop_ids = self.eos_ids | set(sampling.stop_token_ids)
        tokens: list[list[int]] = [[] for _ in range(B)]
        logprobs: list[list[float]] = [[] for _ in range(B)]
        finish = [""] * B
        cache = DynamicCache()
        if prefix:
            p = torch.tensor([prefix], dtype=torch.long).to(dev)
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
            logits = out.logits[:, -1].float()
            tok, lp = sample_next(logits, sampling, self._generator_for(logits.device))
            tok_list, lp_list = tok.tolist(), lp.tolist()  # one device->host copy each
            for j, i in enumerate(rows):
                if finish[i]:
                    continue
                t = tok_list[j]
                tokens[i].append(t)
                logprobs[i].append(lp_list[j])
                if t in stop_ids or self._hit_stop_string(tokens[i], sampling.stop):
                    finish[i] = "stop"
                elif len(tokens[i]) >= limits[i]:
                    finish[i] = "length"
            keep = [j for j, i in enumerate(rows) if not finish[i]]
            if not keep:
                break
            nxt = tok[:, None].to(device=dev, dtype=torch.long)  # the tokens just sampled
            if len(keep) < len(rows):  # drop finished rows: no compute wasted on them
                sel = torch.tensor(keep, dtype=torch.long).to(dev)
                cache.batch_select_indices(sel)
                attn, pos, nxt = attn[sel], pos[sel], nxt[sel]
                rows = [rows[j] for j in keep]
            attn = torch.cat([attn, torch.ones((len(rows), 1), dtype=torch.long, device=dev)],
                             dim=1)
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
