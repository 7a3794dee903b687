"""Log-probabilities (and entropy) of selected tokens from hidden states, a chunk of tokens at a
time: the learner never holds the batch's full-vocabulary logits.

Why: the LM head turns every scored position into a vocabulary-sized row. A micro-batch of long
multi-turn rows (8 x 1.5k tokens, SmolLM2's 49k vocabulary) makes ~2.4 GB per fp32 copy of
those logits, and the plain pass keeps several copies alive (the logits, ``log_softmax``'s
output saved for backward, their gradients): 135M-parameter learner processes reached 10+ GB
RSS on search rows (DESIGN.md, measured facts).

How (:func:`selected_logprobs`): the scored hidden states ``(U, H)`` are cut into chunks of
``chunk`` rows. Each chunk runs head -> float32 -> the model's own logit post-processing ->
``/ temperature`` -> ``log_softmax`` and keeps only the selected tokens' logprobs (and, when
asked, each row's entropy). With gradients on and more than one chunk, each chunk runs under
``torch.utils.checkpoint`` (non-reentrant): its ``(chunk, V)`` logits are freed after the
forward and recomputed, one chunk at a time, when backward reaches it. Peak logits memory is
``chunk x V`` instead of ``U x V``; the price is a second head matmul per chunk in backward. A
batch that fits in one chunk (or a no-grad pass) takes the plain path: nothing to save.
``chunk=0`` is the plain path at any size (``learner.logprob_chunk=0``).

The head is called as a module (``model.get_output_embeddings()``), so a PEFT-wrapped head
(trainable token rows, ``modules_to_save``, LoRA on ``lm_head``), a head tied to the input
embedding and a ZeRO-3 partitioned head (gathered by DeepSpeed's module hooks, in the recompute
too) work unchanged: gradients reach whatever parameters the head uses, as in the plain pass.

Logit post-processing (:func:`logit_transform`): a few model families change the head's output
in their ``ForCausalLM.forward``, which the learner bypasses (it runs the decoder and the head
itself): Gemma 2/3/4 soft-capping (``final_logit_softcapping``: ``cap * tanh(x / cap)``),
Granite's ``logits_scaling`` (``x / s``) and Cohere's ``logit_scale`` (``x * s``). They are
applied here, before the temperature, as the model (and the sampler serving it) does. The default
model family (Llama: SmolLM2) and Qwen2/3 / Mistral use none.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

Transform = Callable[[Tensor], Tensor]


def _text_config(model: torch.nn.Module):
    cfg = getattr(model, "config", None)
    get = getattr(cfg, "get_text_config", None)
    return get() if callable(get) else cfg


def logit_transform(model: torch.nn.Module) -> Transform | None:
    """What the model's ``ForCausalLM.forward`` does to the head's output (None: nothing).

    Checked against ``model(...).logits`` for tiny Gemma2, Granite and Cohere models in
    tests/rl/learner/test_logprobs.py.
    """
    cfg = _text_config(model)
    if cfg is None:
        return None
    scaling = getattr(cfg, "logits_scaling", None)  # Granite family: logits / logits_scaling
    divide = float(scaling) if scaling not in (None, 1, 1.0) else None
    scale = getattr(cfg, "logit_scale", None)  # Cohere family: logits * logit_scale
    cohere = str(getattr(cfg, "model_type", "")).startswith("cohere")
    multiply = float(scale) if cohere and scale not in (None, 1, 1.0) else None
    cap = getattr(cfg, "final_logit_softcapping", None)  # Gemma 2/3/4: cap * tanh(logits / cap)
    softcap = float(cap) if cap else None
    if divide is None and multiply is None and softcap is None:
        return None

    def apply(x: Tensor) -> Tensor:
        if divide is not None:
            x = x / divide
        if multiply is not None:
            x = x * multiply
        if softcap is not None:
            x = torch.tanh(x / softcap) * softcap
        return x

    return apply


def _chunk_logprobs(head: torch.nn.Module, transform: Transform | None, temperature: float,
                    entropy: bool, h: Tensor, rows: Tensor, targets: Tensor
                    ) -> Tensor | tuple[Tensor, Tensor]:
    """One chunk: ``h`` ``(C, H)``; ``rows`` ``(n,)`` index into ``h``, ``targets`` ``(n,)``.
    Returns the ``(n,)`` logprobs (and ``(n,)`` entropies of the rows' distributions)."""
    logits = head(h).float()
    if transform is not None:
        logits = transform(logits)
    if temperature > 0:
        logits = logits / temperature
    logp = torch.log_softmax(logits, dim=-1)
    lp = logp[rows, targets]
    if not entropy:
        return lp
    ent = -(logp.exp() * logp).sum(-1)
    return lp, ent[rows]


def num_chunks(states: int, chunk: int) -> int:
    """Chunks of ``chunk`` states that ``states`` scored states take (0 when not chunked)."""
    return math.ceil(states / chunk) if chunk > 0 else 0


def selected_logprobs(head: torch.nn.Module, hidden: Tensor, targets: Tensor, *,
                      rows: Tensor | None = None, temperature: float = 1.0, chunk: int = 0,
                      transform: Transform | None = None, entropy: bool = False,
                      min_chunks: int = 0) -> Tensor | tuple[Tensor, Tensor]:
    """``log softmax(post(head(hidden[rows])) / T)[targets]`` without all the logits at once.

    Shapes: ``hidden`` ``(U, H)`` scored states; ``targets`` ``(N,)`` token ids; ``rows``
    ``(N,)`` the state each target is scored from (None: ``arange(N)``, one target per state;
    the prefix-shared pass scores a shared state's several children from one row). Returns
    float32 ``(N,)`` logprobs, and with ``entropy`` also ``(N,)`` entropies of the same
    temperature-scaled distributions. ``temperature <= 0``: no scaling. ``chunk``: states per
    chunk (module docstring); 0 = all at once. ``transform``: :func:`logit_transform`.

    ``min_chunks``: run at least this many chunks (the trailing ones empty). Under ZeRO-3 every
    head call gathers the head's partitioned weight, a collective, so all ranks must make the
    same number of calls however many tokens each scores: the DeepSpeed learner passes the
    largest :func:`num_chunks` over the ranks (a rank that runs ahead deadlocks otherwise).
    """
    n_states = hidden.shape[0]
    if rows is None:
        rows = torch.arange(targets.shape[0], device=hidden.device)
    fn = functools.partial(_chunk_logprobs, head, transform, temperature, entropy)
    count = max(num_chunks(n_states, chunk), min_chunks) if chunk > 0 else 0
    if count <= 1:
        return fn(hidden, rows, targets)
    grad = torch.is_grad_enabled() and (
        hidden.requires_grad or any(p.requires_grad for p in head.parameters()))
    # pairs ordered by their state, so chunk k's pairs are one contiguous run
    order = torch.argsort(rows, stable=True)
    rows_s, targets_s = rows[order], targets[order]
    starts = torch.arange(0, count * chunk, chunk, device=rows.device)
    bounds = torch.searchsorted(rows_s, starts).tolist() + [int(rows_s.shape[0])]
    lps: list[Tensor] = []
    ents: list[Tensor] = []
    for k in range(count):
        lo, a, b = k * chunk, bounds[k], bounds[k + 1]
        args = (hidden[lo: lo + chunk], rows_s[a:b] - lo, targets_s[a:b])
        if grad:
            out = checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=False)
        else:
            out = fn(*args)
        if entropy:
            lps.append(out[0])
            ents.append(out[1])
        else:
            lps.append(out)  # type: ignore[arg-type]
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.shape[0], device=order.device)
    lp = torch.cat(lps)[inverse]
    return (lp, torch.cat(ents)[inverse]) if entropy else lp


def model_logprobs(model: torch.nn.Module, hidden: Tensor, targets: Tensor, *,
                   rows: Tensor | None = None, temperature: float = 1.0, chunk: int = 0,
                   entropy: bool = False, min_chunks: int = 0
                   ) -> Tensor | tuple[Tensor, Tensor]:
    """:func:`selected_logprobs` through ``model``'s output embedding (its LM head, tied or
    not, PEFT-wrapped or not) and its logit post-processing (:func:`logit_transform`)."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if not isinstance(head, torch.nn.Module):
        raise TypeError(f"{type(model).__name__} has no output embedding (LM head) to score with")
    return selected_logprobs(head, hidden, targets, rows=rows,
                             temperature=temperature, chunk=chunk,
                             transform=logit_transform(model), entropy=entropy,
                             min_chunks=min_chunks)
