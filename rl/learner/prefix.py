"""Prefix-shared learner pass: every token prefix that several rows share is computed once.

Why: in ``make train`` a group's samples share the system prompt, tool schemas and question
(two thirds of each row), and multi-turn rollouts that branch at turn k share turns 0..k-1.
The plain pass recomputes them per row, forward and backward.

How (one forward per micro-batch, exact):

1. **Trie over token ids.** The rows' token lists (attention-masked padding dropped) are sorted
   lexicographically. That order is a depth-first walk of their token trie, and each row's
   longest common prefix (LCP) with its predecessor in it is the depth at which the row
   branches off the part of the trie already walked (the largest LCP with *any* earlier row).
   No strings: ids are compared as integer arrays.
2. **Packing.** Consecutive rows whose LCP with the predecessor is at least ``min_shared``
   tokens go into one packed sequence: the first row whole, then each later row's tokens after
   its LCP (a trie node's tokens appear once, however many rows pass through it). A packed
   sequence is closed when adding the next row would exceed ``max_len`` packed tokens.
3. **Tree attention mask and positions.** A packed token attends to exactly the packed copies
   of the tokens before it in its own rows (its trie ancestors) and to itself; its position id
   is its position in those rows. So every hidden state equals the plain per-row one.
4. **Logprobs per original row.** Token ``t`` of row ``b`` is scored from the hidden state of
   token ``t-1`` of row ``b`` (wherever that was packed), so a branch point scores each child's
   first token from the one shared state. Identical (state, target) pairs are scored once.

The returned ``(B, L)`` logprobs are the plain pass's values, and since they are the same
function of the parameters, so are the gradients (up to float summation order; tests/rl/learner/
test_prefix.py checks fp32 logprobs and parameter gradients to 1e-5 against ``token_logprobs``).

What is relied on in transformers (5.x, checked on 5.19): ``masking_utils`` returns an attention
mask that is already 4-D ``(B, 1, q, kv)`` unchanged (``_preprocess_mask_arguments``), and the
``sdpa`` attention passes it to ``torch.nn.functional.scaled_dot_product_attention`` (a bool
mask: True = attend), the ``eager`` one adds it to the scores (an additive float mask), with the
explicit ``position_ids`` used for the rotary embedding. Llama, Qwen2/3 and Mistral-family
decoders take this path.

CUDA kernels. ``flex_attention`` (the model loaded with ``attn_implementation="flex_attention"``)
gets the tree as a ``BlockMask`` (:func:`flex_block_mask`: key ``kv`` is visible to query ``q``
iff ``kv <= q <= subtree_end[kv]``, preorder layout), which transformers passes through as a
4-D mask; the kernel skips fully-masked blocks. WRITTEN BUT UNTESTED: no GPU was lent; only the
mask it encodes is checked on CPU (equal to the dense tree mask). transformers compiles flex
attention on first use. ``flash_attention_2`` / varlen kernels are refused: they take only
causal masks over concatenated segments (``cu_seqlens``), not a tree. A flash path would have to
run the trie level by level: each packed segment (the tokens a node adds) as a varlen query
block whose keys are its ancestors' cached K/V followed by its own (cascade/prefix attention,
e.g. flash-attn's ``flash_attn_varlen_func`` with per-segment ``cu_seqlens_k`` over gathered
ancestor K/V, or FlashInfer's cascade API), i.e. its own attention layer with a KV gather per
segment, plus a backward through the gathered K/V: a larger, separately tested piece of work.

Reused: the model's own decoder and LM head (HF), torch SDPA. Written here: the trie/packing
and the mask; verl's PrefixGrouper and AReaL's tree training do the same idea (not copied).

Budgets (:func:`prefix_microbatches`, :func:`packed_length_cap`). The mask is dense, so a
packed sequence of ``P`` tokens costs ``P**2`` attention scores however sparse its tree is:
packing a whole batch that shares only a system prompt into one sequence would trade cheaper
linear layers for quadratically more attention (prohibitive at long context). With ``L`` the
batch's longest row and ``m`` = ``learner.micro_batch_size``, a plain micro-batch computes
``m * L`` token slots and ``m * L**2`` attention scores; a prefix-shared micro-batch stays within
both: packed sequences are at most ``L * sqrt(m)`` tokens, and whole sequences are put together
while ``sequences * longest <= m * L`` and ``sum(P**2) <= m * L**2``. So it never does more
work than the plain micro-batch, and does less wherever rows share prefixes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from rl.types import Batch

SUPPORTED_ATTENTION = ("sdpa", "eager", "flex_attention")


@dataclass
class PackedSequence:
    """One packed sequence: rows ``rows`` (indices into the batch) sharing their prefixes."""

    rows: list[int]
    length: int
    """Packed tokens (each shared prefix once)."""


@dataclass
class PrefixPlan:
    """How a batch's rows pack into prefix-shared sequences (shapes in the field comments)."""

    input_ids: torch.Tensor  # (G, P) long, packed tokens, 0 where padding
    position_ids: torch.Tensor  # (G, P) long, each token's position in its rows
    tree_mask: torch.Tensor  # (G, P, P) bool, True = query may attend key
    subtree_end: torch.Tensor  # (G, P) long, last packed index of each token's subtree
    index: torch.Tensor  # (B, L) long, flat packed index g * P + p of row b's token t; -1 = none
    sequences: list[PackedSequence]

    @property
    def packed_tokens(self) -> int:
        return sum(s.length for s in self.sequences)


def row_lengths(attention_mask: torch.Tensor) -> list[int]:
    """Lengths of right-padded rows; a row whose mask is not ones-then-zeros is an error."""
    am = attention_mask.detach().to("cpu") != 0
    n = am.sum(-1)
    ar = torch.arange(am.shape[1])
    bad = (am != (ar[None, :] < n[:, None])).any(-1).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"prefix sharing needs right-padded rows; attention_mask row {bad[0]} "
                         "has a gap or left padding")
    return [int(x) for x in n]


def _lcp(a: np.ndarray, b: np.ndarray) -> int:
    m = min(len(a), len(b))
    diff = np.flatnonzero(a[:m] != b[:m])
    return int(diff[0]) if len(diff) else m


def trie_order(seqs: Sequence[np.ndarray]) -> tuple[list[int], list[int]]:
    """Depth-first order of the rows' token trie, and each row's branch depth.

    Returns ``(order, lcp)``: ``order`` lists row indices lexicographically by token ids,
    ``lcp[k]`` is the longest common prefix of row ``order[k]`` with row ``order[k-1]`` (0 for the
    first): the largest prefix it shares with any row before it in ``order``.
    """
    order = sorted(range(len(seqs)), key=lambda i: seqs[i].tolist())
    lcp = [0] + [_lcp(seqs[order[k - 1]], seqs[order[k]]) for k in range(1, len(order))]
    return order, lcp


def pack_rows(seqs: Sequence[np.ndarray], max_len: int | None = None,
              min_shared: int = 1) -> tuple[list[PackedSequence], list[int], list[int]]:
    """Greedy packing of the rows (in trie order) into prefix-shared sequences.

    A row joins the current sequence when it shares at least ``min_shared`` tokens with its
    predecessor and the sequence stays within ``max_len`` packed tokens (a row longer than
    ``max_len`` still gets a sequence of its own). Empty rows are left out. Returns the packed
    sequences, the trie order and the LCPs (see :func:`trie_order`).
    """
    if min_shared < 1:
        raise ValueError(f"prefix sharing: min_shared must be >= 1, got {min_shared}")
    order, lcp = trie_order(seqs)
    out: list[PackedSequence] = []
    cur: PackedSequence | None = None
    for k, r in enumerate(order):
        n = len(seqs[r])
        if n == 0:
            continue
        new = n - lcp[k]
        if (cur is not None and lcp[k] >= min_shared
                and (max_len is None or cur.length + new <= max_len)):
            cur.rows.append(r)
            cur.length += new
            continue
        cur = PackedSequence([r], n)
        out.append(cur)
    return out, order, lcp


def build_plan(input_ids: torch.Tensor, attention_mask: torch.Tensor,
               max_len: int | None = None, min_shared: int = 1) -> PrefixPlan:
    """The packed tensors for ``input_ids`` / ``attention_mask`` ``(B, L)`` (right-padded)."""
    B, L = input_ids.shape
    lengths = row_lengths(attention_mask)
    ids_cpu = input_ids.detach().to("cpu")
    seqs = [ids_cpu[b, : lengths[b]].numpy() for b in range(B)]
    packed, _, _ = pack_rows(seqs, max_len, min_shared)
    G = len(packed)
    P = max((s.length for s in packed), default=1)
    ids = torch.zeros((G, P), dtype=torch.long)
    pos = torch.zeros((G, P), dtype=torch.long)
    # padding queries attend to themselves only (an all-False row would give NaN in SDPA)
    mask = torch.eye(P, dtype=torch.bool).repeat(G, 1, 1) if G else torch.zeros((0, P, P),
                                                                               dtype=torch.bool)
    index = torch.full((B, L), -1, dtype=torch.long)
    end_of = torch.arange(P).repeat(G, 1)  # padding: its own subtree
    tri_cache: dict[int, torch.Tensor] = {}
    for g, s in enumerate(packed):
        end = 0  # packed tokens written so far in this sequence
        prev: int | None = None  # previous row of this sequence
        for r in s.rows:
            n = lengths[r]
            shared = 0 if prev is None else _lcp(seqs[prev], seqs[r])
            prev_idx = index[prev, :shared] - g * P if prev is not None else torch.zeros(0,
                                                                                   dtype=torch.long)
            new = n - shared
            seg = torch.arange(end, end + new)
            ids[g, end: end + new] = torch.from_numpy(seqs[r][shared:].astype(np.int64))
            pos[g, end: end + new] = torch.arange(shared, n)
            if new:
                if shared:  # ancestors: exactly what the branch point's token attends to
                    mask[g, end: end + new] = mask[g, int(prev_idx[-1])][None, :]
                else:
                    mask[g, end: end + new] = False
                tri = tri_cache.get(new)
                if tri is None:
                    tri = tri_cache.setdefault(new, torch.ones((new, new), dtype=torch.bool)
                                               .tril())
                mask[g, end: end + new, end: end + new] = tri
            index[r, :n] = torch.cat([prev_idx, seg]) + g * P
            if n:  # rows come in preorder: a token's subtree ends at its last row's last token
                local = index[r, :n] - g * P
                end_of[g, local] = torch.maximum(end_of[g, local], local[-1])
            end += new
            prev = r
        assert end == s.length
    return PrefixPlan(ids.to(input_ids.device), pos.to(input_ids.device),
                      mask.to(input_ids.device), end_of.to(input_ids.device),
                      index.to(input_ids.device), packed)


def _attention_implementation(model: torch.nn.Module) -> str:
    cfg = getattr(model, "config", None)
    impl = getattr(cfg, "_attn_implementation", None) or "eager"
    if impl not in SUPPORTED_ATTENTION:
        raise ValueError(f"learner.prefix_sharing needs attn_implementation sdpa, eager or "
                         f"flex_attention; the model uses {impl!r} (flash/varlen kernels cannot "
                         "take a tree mask)")
    return impl


def attention_mask_4d(tree_mask: torch.Tensor, impl: str, dtype: torch.dtype) -> torch.Tensor:
    """``(G, P, P)`` bool -> the ``(G, 1, P, P)`` mask the attention implementation takes."""
    m = tree_mask[:, None]
    if impl == "sdpa":
        return m
    neg = torch.finfo(dtype).min  # eager adds the mask to the scores
    return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(~m, neg)


def flex_block_mask(plan: PrefixPlan):
    """The tree mask as a flex-attention ``BlockMask`` (UNTESTED on CUDA; no GPU was lent).

    In the packed (preorder) layout the keys a query may attend are its trie ancestors and
    itself: key ``kv`` is one exactly when ``kv <= q <= subtree_end[kv]``. That needs ``O(P)``
    memory per sequence instead of the dense ``(P, P)`` mask, and flex attention skips the
    fully-masked blocks (most of a wide tree). Checked on CPU: the mask it describes equals
    ``plan.tree_mask`` (tests/rl/learner/test_prefix.py); the fused kernel itself is not run here.
    """
    from torch.nn.attention.flex_attention import create_block_mask

    end = plan.subtree_end

    def tree(b, h, q, kv):
        return (kv <= q) & (q <= end[b, kv])

    G, P = end.shape
    return create_block_mask(tree, G, None, P, P, device=end.device)


def prefix_token_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    loss_mask: torch.Tensor,
    temperature: float = 1.0,
    max_len: int | None = None,
    min_shared: int = 1,
    plan: PrefixPlan | None = None,
    chunk: int = 0,
    min_chunks: int = 0,
) -> torch.Tensor:
    """``token_logprobs`` (rl/learner/torch.py) with shared prefixes computed once.

    Shapes: all ``(B, L)`` right-padded; returns ``(B, L)`` float32, zeros where ``loss_mask``
    is 0. ``max_len``: the longest packed sequence (None: unbounded). ``chunk``: scored states
    per LM-head chunk (``learner.logprob_chunk``; 0 = all at once; ``min_chunks``: at least that
    many, for ZeRO-3; rl/learner/logprobs.py).
    """
    from rl.learner.logprobs import model_logprobs

    if plan is None:
        plan = build_plan(input_ids, attention_mask, max_len, min_shared)
    out = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    target_mask = (loss_mask[:, 1:] > 0) & (plan.index[:, 1:] >= 0)
    if not plan.sequences:
        return out
    # the forward runs even without loss tokens (like token_logprobs): every parameter stays in
    # the graph, so backward works, and DeepSpeed's per-forward/backward collectives match
    decoder = model.get_decoder()
    head = model.get_output_embeddings()
    impl = _attention_implementation(model)
    dtype = head.weight.dtype
    mask4 = (flex_block_mask(plan) if impl == "flex_attention"
             else attention_mask_4d(plan.tree_mask, impl, dtype))
    hidden = decoder(input_ids=plan.input_ids, attention_mask=mask4,
                     position_ids=plan.position_ids).last_hidden_state  # (G, P, H)
    flat = hidden.reshape(-1, hidden.shape[-1])
    src = plan.index[:, :-1][target_mask]  # packed index of the scoring state, (N,)
    targets = input_ids[:, 1:][target_mask]
    states, inv = torch.unique(src, return_inverse=True)  # a shared state scored once
    out[:, 1:][target_mask] = model_logprobs(model, flat[states], targets, rows=inv,
                                             temperature=temperature, chunk=chunk,
                                             min_chunks=min_chunks)
    return out


def packed_length_cap(micro_batch_size: int, width: int) -> int:
    """Longest packed sequence: ``width * sqrt(micro_batch_size)`` tokens (its attention area is
    at most a plain micro-batch's, ``micro_batch_size * width**2``), at least ``width``."""
    return max(int(math.isqrt(micro_batch_size * width * width)), width, 1)


def select_rows(batch: Batch, rows: Sequence[int]) -> Batch:
    """The batch restricted to ``rows`` (in that order), every ``(B, L)`` field alike."""
    idx = torch.as_tensor(list(rows), dtype=torch.long, device=batch.input_ids.device)
    return Batch(**{k: (v.index_select(0, idx.to(v.device)) if isinstance(v, torch.Tensor)
                        else v) for k, v in vars(batch).items()})


def prefix_microbatches(batch: Batch, micro_batch_size: int, min_shared: int = 1
                        ) -> list[tuple[list[int], Batch]]:
    """Micro-batches of whole packed sequences by a token budget: ``(rows, sub-batch)`` pairs.

    Budgets (module docstring): what a plain micro-batch of ``micro_batch_size`` rows of this
    batch's width ``L`` computes: ``micro_batch_size * L`` token slots (packed sequences padded
    to the longest) and ``micro_batch_size * L**2`` attention scores; packed sequences are at
    most :func:`packed_length_cap` long. One sequence always fits. Every row is in exactly one
    micro-batch; rows with no tokens go with the first.
    """
    if micro_batch_size < 1:
        raise ValueError(f"learner.micro_batch_size must be >= 1, got {micro_batch_size}")
    B, L = batch.input_ids.shape
    tokens, area = micro_batch_size * max(L, 1), micro_batch_size * max(L, 1) ** 2
    lengths = row_lengths(batch.attention_mask)
    ids = batch.input_ids.detach().to("cpu")
    seqs = [ids[b, : lengths[b]].numpy() for b in range(B)]
    packed, _, _ = pack_rows(seqs, packed_length_cap(micro_batch_size, L), min_shared)
    groups: list[list[int]] = []
    width = count = used = 0
    for s in packed:
        w = max(width, s.length)
        if groups and w * (count + 1) <= tokens and used + s.length ** 2 <= area:
            groups[-1].extend(s.rows)
            width, count, used = w, count + 1, used + s.length ** 2
        else:
            groups.append(list(s.rows))
            width, count, used = s.length, 1, s.length ** 2
    empty = [b for b in range(B) if lengths[b] == 0]
    if empty:
        if groups:
            groups[0].extend(empty)
        else:
            groups.append(empty)
    return [(g, select_rows(batch, g)) for g in groups]


def scatter_rows(parts: Sequence[tuple[Sequence[int], torch.Tensor]], shape: tuple[int, int],
                 device: torch.device | str) -> torch.Tensor:
    """Reassemble per-micro-batch ``(b_i, L)`` outputs into ``shape`` in the batch's row order."""
    out = torch.zeros(shape, dtype=torch.float32, device=device)
    for rows, lp in parts:
        out[torch.as_tensor(list(rows), dtype=torch.long, device=device)] = lp.to(device)
    return out
