"""ArCHer's hierarchical (utterance-level) critic: two Q heads and two V heads over token lists.

The high level of ArCHer (Zhou et al. 2024, "ArCHer: Training Language Model Agents via
Hierarchical Multi-Turn RL", Sec. 4) values whole utterances: a *state* is the token prefix up to
the start of a model turn (the observation history), an *action* is the turn's tokens.

``Q(s, a)`` and ``V(s)`` come from one causal pass over the tokens ``s + a``: the hidden state at
the last token of ``s`` summarises the state (causal attention: it has seen the whole prefix and
nothing after it), the hidden state at the last token of ``a`` summarises state and action.
``V`` heads read the first, ``Q`` heads read both (concatenated). One pass thus gives
``Q(s, a)``, ``V(s)``, and with ``a`` empty, ``V(s)`` alone.

Truncation (:meth:`TokenCritic.view`) to ``max_tokens`` tokens: the action reserves
``A = max_tokens // 4`` tokens (at least 1), so the state keeps at most ``S = max_tokens - A``.
A longer state keeps its first ``prompt_tokens`` tokens (the task prompt; default ``S // 2``) and
its last ``S - prompt_tokens`` (the latest turns), dropping the middle. The state's view depends
on the state alone, so (causal attention, same positions) ``V(s)`` inside ``forward(s, a)`` is
``state_values(s)`` for every action. The action then fills what the state left (at least
``A``), keeping its head and tail halves when it is longer.

Backbones (``backbone=``):

* ``"encoder"``: a small transformer of its own (token + position embeddings, causal
  self-attention, pre-norm), trained with the heads. The CPU default.
* ``"policy"``: the policy's own decoder, frozen: its last hidden states are computed under
  ``torch.no_grad()`` and only the MLP heads train, so critic losses never reach the policy.
  The policy is held outside the module's parameters and ``state_dict``.

The target network is :meth:`TokenCritic.clone` (same backbone reference, copied weights),
moved towards the online critic by :func:`rl.algos.archer.polyak_update`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

BACKBONES = ("encoder", "policy")


class CriticValues(NamedTuple):
    """Outputs of the double critic, each ``(N,)``."""

    q1: Tensor
    q2: Tensor
    v1: Tensor
    v2: Tensor


def _mlp(d_in: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, 1))


class _Encoder(nn.Module):
    """Token + learned position embeddings -> causal pre-norm transformer -> ``(B, L, H)``."""

    def __init__(self, vocab_size: int, hidden: int, layers: int, heads: int, max_tokens: int):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, hidden)
        self.pos = nn.Embedding(max_tokens, hidden)
        layer = nn.TransformerEncoderLayer(
            hidden, heads, dim_feedforward=2 * hidden, dropout=0.0, batch_first=True,
            norm_first=True, activation="gelu",
        )
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)
        nn.init.normal_(self.tok.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)

    def forward(self, ids: Tensor, attn: Tensor) -> Tensor:
        L = ids.shape[1]
        x = self.tok(ids) + self.pos(torch.arange(L, device=ids.device))[None]
        neg = torch.full((L, L), float("-inf"), device=ids.device)
        causal = torch.triu(neg, diagonal=1)
        pad = torch.zeros(attn.shape, device=ids.device).masked_fill(attn == 0, float("-inf"))
        h = self.blocks(x, mask=causal, src_key_padding_mask=pad, is_causal=True)
        return self.norm(h)


class TokenCritic(nn.Module):
    """Double utterance-level critic ``(Q1, Q2, V1, V2)`` over token-id lists.

    vocab_size: tokenizer size (encoder backbone). hidden / layers / heads: encoder size (the
    MLP heads use ``hidden`` too). max_tokens: the longest ``s + a`` the backbone sees;
    prompt_tokens: leading state tokens kept when a state is truncated (default: half of the
    state's budget); see the module docstring. policy: the causal LM whose frozen decoder is the
    backbone when ``backbone="policy"``.
    """

    def __init__(
        self, vocab_size: int, *, backbone: str = "encoder", hidden: int = 64, layers: int = 2,
        heads: int = 4, max_tokens: int = 512, prompt_tokens: int | None = None,
        policy: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"critic backbone must be one of {BACKBONES}, got {backbone!r}")
        if backbone == "policy" and policy is None:
            raise ValueError("critic backbone 'policy' needs the policy model")
        if max_tokens < 2:
            raise ValueError(f"critic max_tokens must be >= 2, got {max_tokens}")
        self.action_budget = max(1, max_tokens // 4)
        self.state_budget = max_tokens - self.action_budget
        if prompt_tokens is None:
            prompt_tokens = self.state_budget // 2
        if not 0 <= prompt_tokens < self.state_budget:
            raise ValueError(f"critic prompt_tokens must be in [0, {self.state_budget}) for "
                             f"max_tokens={max_tokens}, got {prompt_tokens}")
        self.args: dict[str, Any] = dict(vocab_size=vocab_size, backbone=backbone, hidden=hidden,
                                         layers=layers, heads=heads, max_tokens=max_tokens,
                                         prompt_tokens=prompt_tokens)
        self.backbone, self.max_tokens, self.prompt_tokens = backbone, max_tokens, prompt_tokens
        # the policy is referenced, not owned: no parameters, no state_dict entries
        self._policy: Any
        object.__setattr__(self, "_policy", policy)
        if backbone == "encoder":
            self.encoder: _Encoder | None = _Encoder(vocab_size, hidden, layers, heads, max_tokens)
            feat = hidden
        else:
            self.encoder = None
            feat = int(self._policy.config.hidden_size)
        self.q_heads = nn.ModuleList([_mlp(2 * feat, hidden) for _ in range(2)])
        self.v_heads = nn.ModuleList([_mlp(feat, hidden) for _ in range(2)])

    def clone(self) -> TokenCritic:
        """A copy with the same backbone reference and equal weights (the target network)."""
        twin = TokenCritic(**self.args, policy=self._policy)
        twin.load_state_dict(self.state_dict())
        return twin.to(self._device())

    def _device(self) -> torch.device:
        return next(self.q_heads.parameters()).device

    def _hidden(self, ids: Tensor, attn: Tensor) -> Tensor:
        if self.encoder is not None:
            return self.encoder(ids, attn)
        with torch.no_grad():  # frozen policy backbone: the critic never backprops into it
            dec = self._policy.get_decoder()
            return dec(input_ids=ids, attention_mask=attn).last_hidden_state.float()

    def view(self, state: Sequence[int], action: Sequence[int]) -> tuple[list[int], int, int]:
        """The tokens the backbone sees for ``(state, action)`` (at most ``max_tokens``, see the
        module docstring), the position of the state's last token and of the action's last
        token (the state's when the action is empty)."""
        if not state:
            raise ValueError("a critic state must hold at least one token")
        s, a = list(state), list(action)
        if len(s) > self.state_budget:
            s = s[: self.prompt_tokens] + s[len(s) - (self.state_budget - self.prompt_tokens):]
        room = self.max_tokens - len(s)
        if len(a) > room:
            head = room // 2
            a = a[:head] + a[len(a) - (room - head):]
        return s + a, len(s) - 1, len(s) + len(a) - 1

    def features(
        self, states: Sequence[Sequence[int]], actions: Sequence[Sequence[int]]
    ) -> tuple[Tensor, Tensor]:
        """State features ``(N, F)`` (hidden at the last token of ``s``) and action features
        ``(N, F)`` (hidden at the last token of ``s + a``; equal to the state's when ``a`` is
        empty)."""
        if len(states) != len(actions) or not states:
            raise ValueError(f"need equally many (>0) states and actions, got "
                             f"{len(states)} and {len(actions)}")
        seqs, s_pos, a_pos = [], [], []
        for s, a in zip(states, actions):
            seq, sp, ap = self.view(s, a)
            seqs.append(seq)
            s_pos.append(sp)
            a_pos.append(ap)
        L = max(len(x) for x in seqs)
        dev = self._device()
        ids = torch.zeros((len(seqs), L), dtype=torch.long, device=dev)
        attn = torch.zeros((len(seqs), L), dtype=torch.long, device=dev)
        for i, x in enumerate(seqs):
            ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
            attn[i, : len(x)] = 1
        h = self._hidden(ids, attn)  # (N, L, F)
        rows = torch.arange(len(seqs), device=dev)
        return h[rows, torch.tensor(s_pos, device=dev)], h[rows, torch.tensor(a_pos, device=dev)]

    def forward(
        self, states: Sequence[Sequence[int]], actions: Sequence[Sequence[int]]
    ) -> CriticValues:
        """``Q1, Q2 (s, a)`` and ``V1, V2 (s)`` for ``N`` (state, action) pairs, each ``(N,)``."""
        hs, ha = self.features(states, actions)
        qa = torch.cat([hs, ha], dim=-1)
        q1, q2 = (head(qa).squeeze(-1) for head in self.q_heads)
        v1, v2 = (head(hs).squeeze(-1) for head in self.v_heads)
        return CriticValues(q1, q2, v1, v2)

    def state_values(self, states: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
        """``V1(s), V2(s)``, each ``(N,)``."""
        hs, _ = self.features(states, [[] for _ in states])
        v1, v2 = (head(hs).squeeze(-1) for head in self.v_heads)
        return v1, v2
