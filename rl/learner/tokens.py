"""Barely trained special tokens: detect them, and train their rows beside the LoRA adapter.

Why: in small instruct models the tool-call tokens (``<tool_call>``, ``</tool_call>``, ...) can
be almost untrained: their output rows are near copies of each other and of ``<|im_start|>``
(measured on a Qwen2.5-family 0.5B model: cosine 0.99999 between ``<tool_call>`` and
``</tool_call>``, 0.93 to ``<|im_start|>``). LoRA on attention/MLP cannot separate rows that
the LM head maps to the same logit, so after SFT the model writes ``<|im_start|>`` where
``<tool_call>`` belongs. Training those rows too fixes it.

Reused: PEFT's ``LoraConfig(trainable_token_indices=...)`` (a ``TrainableTokensLayer`` holds
the selected rows as a small delta; with tied embeddings the LM head follows). This module only
picks the rows:

- candidates: the format's marker tokens (``format_token_ids``: the added / special tokens in
  a rendered call and tool result of the format), or, without a format, the tokenizer's added
  tokens whose text names a tool-call / reasoning marker (``tool``, ``function``,
  ``python_tag``, ``TOOL_CALLS``, ``think``);
- detection (``near_duplicate_rows``): a candidate's output row (LM head; the embedding when
  tied) with cosine > ``threshold`` (0.98) to another candidate or to a reference token
  (``<|im_start|>``, else BOS/EOS);
- decision (``learner.lora.train_token_rows``): ``auto`` trains every candidate when any is
  flagged, ``true`` always, ``false`` never.

Departure from PEFT: its ``TrainableTokensLayer`` rebuilds the whole matrix
(``W.index_copy(rows)``) on every forward call, for the embedding and again for the LM head: a
151k x 896 copy per decoded token on a 0.5B model, which made generation several times slower
on CPU. :func:`fast_token_layers` gives each such layer a forward with the same result: the
frozen base layer's output, with only the trained rows' lookups (embedding) or logits (head)
replaced.
"""

from __future__ import annotations

import logging
import re
import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

log = logging.getLogger(__name__)

THRESHOLD = 0.98
_MARKER_RE = re.compile(r"tool|function|python_tag|TOOL_CALLS|think", re.IGNORECASE)
_ATTR = "_turnrl_format_token_ids"  # set on a model by tag_format_tokens
_REFERENCE_TOKENS = ("<|im_start|>", "<|start_header_id|>", "<start_of_turn>", "[INST]")


@dataclass
class RowReport:
    """What :func:`near_duplicate_rows` found."""

    candidates: list[int]
    flagged: list[int] = field(default_factory=list)
    pairs: list[tuple[int, int, float]] = field(default_factory=list)
    """(candidate, other token, cosine) above the threshold."""

    def describe(self, tokenizer=None) -> str:
        def name(i: int) -> str:
            return repr(tokenizer.convert_ids_to_tokens(i)) if tokenizer is not None else str(i)

        return ", ".join(f"{name(a)}~{name(b)} cos={c:.4f}" for a, b, c in self.pairs) or "none"


def added_token_ids(tokenizer) -> dict[int, str]:
    """Ids and texts of the tokenizer's added tokens (special markers of the template)."""
    dec = getattr(tokenizer, "added_tokens_decoder", None) or {}
    return {int(i): str(getattr(t, "content", t)) for i, t in dec.items()}


def marker_token_ids(tokenizer) -> list[int]:
    """Added tokens whose text names a tool-call or reasoning marker (format-agnostic)."""
    return sorted(i for i, s in added_token_ids(tokenizer).items() if _MARKER_RE.search(s))


def format_token_ids(tokenizer, fmt: Any) -> list[int]:
    """The added tokens that the format writes: in a call, an answer and a tool result."""
    if hasattr(fmt, "special_tokens"):  # a format may list its markers itself
        ids = {tokenizer.convert_tokens_to_ids(t) for t in fmt.special_tokens}
        return sorted(i for i in ids if i is not None and i != tokenizer.unk_token_id)
    texts = [fmt.format_call("f", {"x": 1})]
    for method, args in (("format_answer", ("1",)), ("tool_result_message", ("f", "1"))):
        if hasattr(fmt, method):
            out = getattr(fmt, method)(*args)
            texts.append(out if isinstance(out, str) else str(out.get("content", "")))
    added = added_token_ids(tokenizer)
    found: set[int] = set()
    for text in texts:
        found |= {i for i in tokenizer.encode(text, add_special_tokens=False) if i in added}
    return sorted(found)


def reference_token_ids(tokenizer) -> list[int]:
    """Well-trained template tokens to compare against: the turn-start marker, else BOS/EOS."""
    vocab = tokenizer.get_vocab()
    refs = [vocab[t] for t in _REFERENCE_TOKENS if t in vocab]
    if not refs:
        refs = [i for i in (tokenizer.bos_token_id, tokenizer.eos_token_id) if i is not None]
    return refs


def output_rows(model: torch.nn.Module) -> torch.Tensor:
    """``(vocab, hidden)`` output embedding (the input one when the model has no head)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        head = model.get_input_embeddings()
    return head.weight


@torch.no_grad()
def near_duplicate_rows(weight: torch.Tensor, candidates: Sequence[int],
                        references: Sequence[int] = (),
                        threshold: float = THRESHOLD) -> RowReport:
    """Candidates whose row has cosine > ``threshold`` to another candidate or a reference.

    ``weight``: ``(vocab, hidden)``. Rows out of range are ignored (a tokenizer larger than the
    head happens with padded vocabularies).
    """
    v = weight.shape[0]
    cand = [int(i) for i in candidates if 0 <= int(i) < v]
    refs = [int(i) for i in references if 0 <= int(i) < v and int(i) not in cand]
    rep = RowReport(candidates=cand)
    if not cand:
        return rep
    others = cand + refs
    w = torch.nn.functional.normalize(weight[others].float(), dim=-1)
    cos = w[: len(cand)] @ w.T  # (C, C + R)
    for a, ia in enumerate(cand):
        for b, ib in enumerate(others):
            if ib == ia or (b < len(cand) and b < a):  # each candidate pair once
                continue
            c = float(cos[a, b])
            if c > threshold:
                rep.pairs.append((ia, ib, c))
                if ia not in rep.flagged:
                    rep.flagged.append(ia)
                if b < len(cand) and ib not in rep.flagged:
                    rep.flagged.append(ib)
    rep.flagged.sort()
    return rep


def tag_format_tokens(model: torch.nn.Module, ids: Sequence[int]) -> None:
    """Record the format's token ids on the model (read by :func:`lora_token_indices`)."""
    setattr(model, _ATTR, [int(i) for i in ids])


def _tokenizer_of(model: torch.nn.Module):
    path = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
    if not path:
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)
    except Exception:  # no tokenizer next to the weights: no candidates
        return None


def peft_token_indices(model: torch.nn.Module, ids: Sequence[int]
                       ) -> dict[str, list[int]] | None:
    """PEFT's ``trainable_token_indices`` for ``ids``: the input embedding's rows, and the LM
    head's own rows when it is not tied to the embedding (the output rows are the near
    duplicates that matter for emitting the token). None when ``ids`` is empty."""
    if not ids:
        return None
    emb = model.get_input_embeddings()
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = {id(m): n.rsplit(".", 1)[-1] for n, m in model.named_modules()}
    out = {names[id(emb)]: sorted(ids)}
    if head is not None and head.weight is not emb.weight:
        out[names[id(head)]] = sorted(ids)
    return out


def lora_token_indices(model: torch.nn.Module, cfg: Any, tokenizer=None) -> list[int]:
    """Rows to train beside the adapter, per ``cfg.train_token_rows`` (auto | true | false).

    Candidates: what :func:`tag_format_tokens` recorded on the model, else the tokenizer's marker
    tokens (the tokenizer is loaded from the model's folder when not given).
    """
    mode = str(getattr(cfg, "train_token_rows", "auto")).lower()
    if mode not in ("auto", "true", "false"):
        raise ValueError(f"learner.lora.train_token_rows={mode!r} is not one of: auto, true, "
                         "false")
    if mode == "false":
        return []
    cand = getattr(model, _ATTR, None)
    tok = tokenizer
    if cand is None:
        tok = tok if tok is not None else _tokenizer_of(model)
        cand = marker_token_ids(tok) if tok is not None else []
    if not cand:
        if mode == "true":
            log.warning("learner.lora.train_token_rows=true but the format has no special "
                        "tokens in this tokenizer: nothing to train")
        return []
    if mode == "true":
        return sorted(cand)
    refs = reference_token_ids(tok) if tok is not None else []
    rep = near_duplicate_rows(output_rows(model), cand, refs)
    if rep.flagged:
        log.warning("[turnrl] LoRA: %d of %d format tokens are barely trained (%s): training "
                    "their rows beside the adapter (learner.lora.train_token_rows=auto)",
                    len(rep.flagged), len(cand), rep.describe(tok))
        return sorted(cand)
    return []


def trainable_token_weights(peft_model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Merged weights of every module with trainable token rows, under the base model's plain
    parameter names (``model.embed_tokens.weight``, and ``lm_head.weight`` when it has its own
    rows): what an engine that loads plain weights needs. Empty without trainable tokens."""
    base = peft_model.get_base_model() if hasattr(peft_model, "get_base_model") else peft_model
    out: dict[str, torch.Tensor] = {}
    for name, module in base.named_modules():
        if hasattr(module, "get_merged_weights") and hasattr(module, "token_indices"):
            adapters = [a for a in getattr(module, "active_adapters", ["default"])
                        if a in module.token_indices]
            if not adapters:
                continue
            plain = re.sub(r"\.(token_adapter|base_layer|original_module)\b", "", name)
            with torch.no_grad():
                out[f"{plain}.weight"] = module.get_merged_weights(adapters).detach()
    return out


def is_token_adapter_param(name: str) -> bool:
    """Parameter / buffer names of PEFT's trainable-token bookkeeping (not base weights)."""
    return "trainable_tokens_" in name or ".token_adapter." in name


def _fast_forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """``TrainableTokensLayer.forward`` without materializing the merged matrix (same values,
    same gradients to the trained rows)."""
    active = [a for a in self.active_adapters if a in self.token_indices]
    if self.disable_adapters or self.merged or len(active) != 1:
        return type(self).forward(self, x, *args, **kwargs)
    base = self.base_layer
    delta = self.trainable_tokens_delta[active[0]]
    idx = torch.as_tensor(self.token_indices[active[0]], device=delta.device)
    if isinstance(base, torch.nn.Embedding):
        out = base(x, *args, **kwargs)
        hit = torch.isin(x, idx)
        if bool(hit.any()):
            pos = (x[hit].unsqueeze(-1) == idx).int().argmax(-1)  # row of each hit in delta
            rows = delta[pos].to(out.dtype)
            scale = self._get_embed_scale()
            if scale is not None:
                rows = rows * scale.to(rows.dtype)
            out = out.index_put((hit,), rows)
        return out
    if isinstance(base, torch.nn.Linear):
        out = base(x, *args, **kwargs)
        bias = base.bias[idx] if base.bias is not None else None
        cols = torch.nn.functional.linear(x, delta.to(x.dtype), bias)
        return out.index_copy_(-1, idx, cols.to(out.dtype))  # logits are not saved for backward
    return type(self).forward(self, x, *args, **kwargs)


def fast_token_layers(peft_model: torch.nn.Module) -> int:
    """Give every trainable-token layer of ``peft_model`` the fast forward; returns how many."""
    n = 0
    for module in peft_model.modules():
        if hasattr(module, "trainable_tokens_delta") and hasattr(module, "get_merged_weights"):
            module.forward = types.MethodType(_fast_forward, module)
            n += 1
    return n
