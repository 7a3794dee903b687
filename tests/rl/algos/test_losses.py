"""Policy / SFT losses: hand-computed values, clipping gradients, loop vs vectorised, shard
invariance of every aggregation mode, empty masks."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from rl.algos import AGGREGATIONS, LossNorm, aggregate, policy_loss, sft_loss
from rl.algos.losses import generation_budget

F64 = torch.float64
MAX_TOKENS = 12.0  # the constant budget used for seq-mean-token-sum-norm throughout


def _norm_for(agg: str) -> LossNorm:
    """Local normalisers (counts from the batch) plus the constant budget every mode accepts."""
    return LossNorm(max_tokens=MAX_TOKENS)


# ---- aggregation modes by hand ----------------------------------------------------------------

VALUES = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]], dtype=F64)
MASK = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])  # last row empty: not counted
# masked tokens: row 0 -> 1, 2 (sum 3, mean 1.5); row 1 -> 4 (sum 4, mean 4); total 7 over 3
# tokens, 2 non-empty sequences.
LOCAL_EXPECTED = {
    "token-mean": 7 / 3,  # 7 / 3 tokens
    "seq-mean-token-sum": 3.5,  # (3 + 4) / 2 seqs
    "seq-mean-token-mean": 2.75,  # (1.5 + 4) / 2 seqs
    "seq-mean-token-sum-norm": 0.875,  # 7 / (2 seqs * 4 budget)
}
# with given global normalisers num_tokens=10, num_seqs=5, max_tokens=4
GLOBAL_EXPECTED = {
    "token-mean": 0.7,  # 7 / 10
    "seq-mean-token-sum": 1.4,  # 7 / 5
    "seq-mean-token-mean": 1.1,  # 5.5 / 5
    "seq-mean-token-sum-norm": 0.35,  # 7 / (5 * 4)
}


def test_aggregation_modes_are_the_documented_four() -> None:
    assert set(AGGREGATIONS.names()) == set(LOCAL_EXPECTED)


@pytest.mark.parametrize("agg", sorted(LOCAL_EXPECTED))
def test_aggregate_by_hand(agg: str) -> None:
    got = aggregate(VALUES, MASK, agg, LossNorm(max_tokens=4))
    torch.testing.assert_close(got, torch.tensor(LOCAL_EXPECTED[agg], dtype=F64))
    norm = LossNorm(num_tokens=10, num_seqs=5, max_tokens=4)
    torch.testing.assert_close(
        aggregate(VALUES, MASK, agg, norm), torch.tensor(GLOBAL_EXPECTED[agg], dtype=F64)
    )
    # SFT loss is the same aggregation of -logprobs
    loss, metrics = sft_loss(-VALUES, MASK, agg=agg, norm=LossNorm(max_tokens=4))
    torch.testing.assert_close(loss, torch.tensor(LOCAL_EXPECTED[agg], dtype=F64))
    torch.testing.assert_close(metrics["nll"], torch.tensor(7 / 3, dtype=F64))


def test_loss_norm_from_mask() -> None:
    norm = LossNorm.from_mask(MASK, max_tokens=4)
    assert norm == LossNorm(num_tokens=3.0, num_seqs=2.0, max_tokens=4)


def test_budget_mode_needs_max_tokens() -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        aggregate(VALUES, MASK, "seq-mean-token-sum-norm")


def test_dr_grpo_normaliser_is_the_generation_budget_not_the_padded_length() -> None:
    # Two trajectories, 2 turns of at most 3 model tokens each: budget 2 * 3 = 6 model tokens.
    # Row 0: 3 prompt tokens, model tokens 1, 2; row 1: 2 prompt tokens, model tokens 3, 4, 5.
    # seq-mean-token-sum-norm = (1 + 2 + 3 + 4 + 5) / (2 seqs * 6) = 15 / 12 = 1.25, whatever
    # the padding; the padded length (8 or 12 here, prompt included) is not a constant.
    budget = generation_budget(max_turns=2, max_tokens_per_turn=3)
    assert budget == 6
    for width in (8, 12):
        values = torch.zeros(2, width, dtype=F64)
        mask = torch.zeros(2, width)
        values[0, 3:5], mask[0, 3:5] = torch.tensor([1.0, 2.0], dtype=F64), 1
        values[1, 2:5], mask[1, 2:5] = torch.tensor([3.0, 4.0, 5.0], dtype=F64), 1
        norm = LossNorm.from_mask(mask, max_tokens=budget)
        got = aggregate(values, mask, "seq-mean-token-sum-norm", norm)
        assert got.item() == pytest.approx(1.25, abs=1e-12)
        padded = LossNorm.from_mask(mask, max_tokens=width)  # the old fallback
        assert aggregate(values, mask, "seq-mean-token-sum-norm", padded).item() == pytest.approx(
            15 / (2 * width)
        )
    # the total-token cap (prompt + model + tool tokens) bounds the model tokens too
    assert generation_budget(max_turns=4, max_tokens_per_turn=64, max_total_tokens=200) == 200
    with pytest.raises(ValueError, match="max_turns"):
        generation_budget(max_turns=0, max_tokens_per_turn=3)
    with pytest.raises(ValueError, match="max_tokens_per_turn"):
        generation_budget(max_turns=2, max_tokens_per_turn=0)
    with pytest.raises(ValueError, match="max_tokens"):
        LossNorm(max_tokens=0)


def test_unknown_aggregation_lists_names() -> None:
    with pytest.raises(KeyError, match=r"'seq-mean-token-mean'.*'token-mean'"):
        aggregate(VALUES, MASK, "sum")


# ---- policy loss by hand ----------------------------------------------------------------------
# old_logprobs = 0, logprobs = log(ratio); clip_low 0.2 -> [0.8, ...), clip_high 0.28 -> (..., 1.28]
#  tok ratio  A   -A*r   -A*clip(r)  max    dual(c=3, A<0: min(., 3))  d loss/d logp = -A*r or 0
#  0   0.5   +1   -0.5   -0.8        -0.5                              -0.5 (below 1-eps, A>0:
#                                                                            not clipped)
#  1   1.5   +1   -1.5   -1.28       -1.28                             0   (clipped high)
#  2   0.5   -1   +0.5   +0.8        +0.8                              0   (clipped low)
#  3   1.5   -1   +1.5   +1.28       +1.5   min(1.5, 3) = 1.5          +1.5
#  4   1.1   +2   -2.2   -2.2        -2.2                              -2.2 (inside the clip)
#  5   5.0   -1   +5     +1.28       +5     min(5, 3) = 3 (dual)       0
# sum = -0.5 - 1.28 + 0.8 + 1.5 - 2.2 + 3 = 1.32; token-mean over 6 tokens = 0.22
# approx_kl (k3 = r - 1 - ln r): .1931472 + .0945349 + .1931472 + .0945349 + .0046898 + 2.3905621
#   = 2.9706161, / 6 = 0.4951027; ratio mean = 10.1 / 6 = 1.6833333, max 5
HAND_RATIOS = [0.5, 1.5, 0.5, 1.5, 1.1, 5.0]
HAND_ADV = [1.0, 1.0, -1.0, -1.0, 2.0, -1.0]


def _hand_inputs() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    logprobs = torch.log(torch.tensor([HAND_RATIOS], dtype=F64)).requires_grad_()
    old = torch.zeros(1, 6, dtype=F64)
    return logprobs, old, torch.tensor([HAND_ADV], dtype=F64), torch.ones(1, 6)


def test_policy_loss_by_hand_with_dual_clip() -> None:
    logprobs, old, adv, mask = _hand_inputs()
    loss, m = policy_loss(logprobs, old, adv, mask, clip_low=0.2, clip_high=0.28, dual_clip=3.0)
    loss.backward()
    torch.testing.assert_close(loss, torch.tensor(0.22, dtype=F64))
    assert logprobs.grad is not None
    grad = torch.tensor([[-0.5, 0.0, 0.0, 1.5, -2.2, 0.0]], dtype=F64) / 6
    torch.testing.assert_close(logprobs.grad, grad)
    expected = {
        "clip_frac_low": 1 / 6,  # token 2
        "clip_frac_high": 1 / 6,  # token 1
        "dual_clip_frac": 1 / 6,  # token 5
        "approx_kl": 0.4951027,
        "ratio_mean": 1.6833333,
        "ratio_max": 5.0,
    }
    assert set(m) == set(expected)
    for key, value in expected.items():
        assert not m[key].requires_grad
        torch.testing.assert_close(m[key], torch.tensor(value, dtype=F64), atol=1e-6, rtol=0)


def test_policy_loss_by_hand_without_dual_clip() -> None:
    # token 5 now costs +5 with gradient -A*r = 5: sum = 1.32 - 3 + 5 = 3.32, / 6
    logprobs, old, adv, mask = _hand_inputs()
    loss, m = policy_loss(logprobs, old, adv, mask, clip_low=0.2, clip_high=0.28)
    loss.backward()
    torch.testing.assert_close(loss, torch.tensor(3.32 / 6, dtype=F64))
    assert logprobs.grad is not None
    grad = torch.tensor([[-0.5, 0.0, 0.0, 1.5, -2.2, 5.0]], dtype=F64) / 6
    torch.testing.assert_close(logprobs.grad, grad)
    assert m["dual_clip_frac"].item() == 0.0


def test_clip_higher_is_asymmetric() -> None:
    # ratio 1.25, A = +1: clip_high 0.28 leaves it (loss -1.25, grad -1.25);
    # clip_high 0.2 clips it to 1.2 (loss -1.2, grad 0). Same ratio 0.75 with A = -1:
    # clip_low 0.2 clips it to 0.8 (loss 0.8, grad 0); clip_low 0.3 leaves it (0.75, grad 0.75).
    for clip_low, clip_high, want_loss, want_grad in [
        (0.2, 0.28, [-1.25, 0.8], [-1.25, 0.0]),
        (0.3, 0.2, [-1.2, 0.75], [0.0, 0.75]),
    ]:
        logprobs = torch.log(torch.tensor([[1.25], [0.75]], dtype=F64)).requires_grad_()
        adv = torch.tensor([1.0, -1.0], dtype=F64)  # (B,) broadcast over tokens
        loss, _ = policy_loss(
            logprobs,
            torch.zeros(2, 1, dtype=F64),
            adv,
            torch.ones(2, 1),
            clip_low=clip_low,
            clip_high=clip_high,
            agg="seq-mean-token-sum",
        )
        loss.backward()
        # seq-mean over 2 sequences of one token each: loss = sum / 2, grads / 2
        torch.testing.assert_close(loss, torch.tensor(sum(want_loss) / 2, dtype=F64))
        assert logprobs.grad is not None
        torch.testing.assert_close(
            logprobs.grad, torch.tensor([[want_grad[0]], [want_grad[1]]], dtype=F64) / 2
        )


def test_dual_clip_ignores_positive_advantages() -> None:
    # A = +1, ratio 10: ordinary high clip -> loss -1.2, grad 0; the dual bound never applies
    logprobs = torch.log(torch.tensor([[10.0]], dtype=F64)).requires_grad_()
    loss, m = policy_loss(
        logprobs, torch.zeros(1, 1, dtype=F64), torch.ones(1), torch.ones(1, 1), dual_clip=3.0
    )
    loss.backward()
    torch.testing.assert_close(loss, torch.tensor(-1.2, dtype=F64))
    assert logprobs.grad is not None and logprobs.grad.item() == 0.0
    assert m["dual_clip_frac"].item() == 0.0 and m["clip_frac_high"].item() == 1.0


def test_bad_clip_arguments_raise() -> None:
    logprobs, old, adv, mask = _hand_inputs()
    with pytest.raises(ValueError, match="dual_clip"):
        policy_loss(logprobs, old, adv, mask, dual_clip=1.0)
    with pytest.raises(ValueError):
        policy_loss(logprobs, old, adv, mask, clip_low=1.0)
    with pytest.raises(ValueError):
        policy_loss(logprobs, old, adv[:, :3], mask)


# ---- loop (pure Python, per sequence / per token) vs vectorised -------------------------------


def _loop_token_mean(rows: list[list[float]], norm: LossNorm) -> float:
    n = sum(len(r) for r in rows)
    return sum(sum(r) for r in rows) / n if n else 0.0


def _loop_seq_mean_token_sum(rows: list[list[float]], norm: LossNorm) -> float:
    seqs = [r for r in rows if r]
    return sum(sum(r) for r in seqs) / len(seqs) if seqs else 0.0


def _loop_seq_mean_token_mean(rows: list[list[float]], norm: LossNorm) -> float:
    seqs = [r for r in rows if r]
    return sum(sum(r) / len(r) for r in seqs) / len(seqs) if seqs else 0.0


def _loop_seq_mean_token_sum_norm(rows: list[list[float]], norm: LossNorm) -> float:
    seqs = [r for r in rows if r]
    assert norm.max_tokens is not None
    return sum(sum(r) for r in seqs) / (len(seqs) * norm.max_tokens) if seqs else 0.0


LOOP_AGGREGATIONS: dict[str, Callable[[list[list[float]], LossNorm], float]] = {
    "token-mean": _loop_token_mean,
    "seq-mean-token-sum": _loop_seq_mean_token_sum,
    "seq-mean-token-mean": _loop_seq_mean_token_mean,
    "seq-mean-token-sum-norm": _loop_seq_mean_token_sum_norm,
}


def _loop_token_loss(
    logp: float, old: float, adv: float, lo: float, hi: float, dual: float | None
) -> float:
    ratio = math.exp(logp - old)
    loss = max(-adv * ratio, -adv * min(max(ratio, 1 - lo), 1 + hi))
    if dual is not None and adv < 0:
        loss = min(loss, -adv * dual)
    return loss


def _random_batch(seed: int, b: int = 7, length: int = 9) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """fp64 (logprobs leaf, old_logprobs, advantages (B,), mask) with holes in the mask (tool
    tokens inside a trajectory), uneven lengths and one empty row."""
    gen = torch.Generator().manual_seed(seed)
    logprobs = (-torch.rand(b, length, generator=gen, dtype=F64) * 3).requires_grad_()
    old = logprobs.detach() + 0.4 * torch.randn(b, length, generator=gen, dtype=F64)
    adv = torch.randn(b, generator=gen, dtype=F64)
    mask = (torch.rand(b, length, generator=gen) < 0.7).long()
    lengths = torch.randint(1, length + 1, (b,), generator=gen)
    mask = mask * (torch.arange(length) < lengths[:, None])
    mask[2] = 0
    return logprobs, old, adv, mask


@pytest.mark.parametrize("agg", sorted(LOOP_AGGREGATIONS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loop_matches_vectorised(agg: str, seed: int) -> None:
    logprobs, old, adv, mask = _random_batch(seed)
    norm = LossNorm(max_tokens=MAX_TOKENS)
    for lo, hi, dual in [(0.2, 0.2, None), (0.2, 0.28, 2.0), (0.1, 0.5, 1.5)]:
        loss, _ = policy_loss(
            logprobs, old, adv, mask, clip_low=lo, clip_high=hi, dual_clip=dual, agg=agg, norm=norm
        )
        rows = [
            [
                _loop_token_loss(
                    logprobs[i, t].item(), old[i, t].item(), adv[i].item(), lo, hi, dual
                )
                for t in range(mask.shape[1])
                if mask[i, t]
            ]
            for i in range(mask.shape[0])
        ]
        want = LOOP_AGGREGATIONS[agg](rows, norm)
        torch.testing.assert_close(loss, torch.tensor(want, dtype=F64))


# ---- shard invariance -------------------------------------------------------------------------


# (logprobs, old_logprobs, advantages, mask, agg, norm) -> loss
LossOf = Callable[[Tensor, Tensor, Tensor, Tensor, str, LossNorm], Tensor]
LOSSES: dict[str, LossOf] = {
    "policy": lambda lp, old, adv, m, agg, n: policy_loss(
        lp, old, adv, m, clip_high=0.28, dual_clip=2.0, agg=agg, norm=n
    )[0],
    "sft": lambda lp, old, adv, m, agg, n: sft_loss(lp, m, agg=agg, norm=n)[0],
}


def _losses_and_grads(
    agg: str, shards: list[int], seed: int, kind: str
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(full loss, full grad, summed shard losses, accumulated shard grads)."""
    logprobs, old, adv, mask = _random_batch(seed)
    norm = LossNorm.from_mask(mask, max_tokens=MAX_TOKENS)

    def loss_of(sl: slice, n: LossNorm) -> Tensor:
        return LOSSES[kind](logprobs[sl], old[sl], adv[sl], mask[sl], agg, n)

    full = loss_of(slice(None), _norm_for(agg))  # local normalisers of the full batch
    (full_grad,) = torch.autograd.grad(full, logprobs)
    total = torch.zeros((), dtype=F64)
    start = 0
    for size in shards:  # gradient accumulation: backward per shard, grads add up
        shard = loss_of(slice(start, start + size), norm)
        shard.backward()
        total = total + shard.detach()
        start += size
    assert start == mask.shape[0] and logprobs.grad is not None
    return full.detach(), full_grad, total, logprobs.grad


@pytest.mark.parametrize("kind", sorted(LOSSES))
@pytest.mark.parametrize("agg", sorted(LOCAL_EXPECTED))
@pytest.mark.parametrize("shards", [[3, 4], [2, 2, 3]])
def test_shard_invariance(kind: str, agg: str, shards: list[int]) -> None:
    for seed in (0, 1):
        full, full_grad, total, shard_grad = _losses_and_grads(agg, shards, seed, kind)
        torch.testing.assert_close(total, full, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(shard_grad, full_grad, rtol=1e-12, atol=1e-12)
        assert full_grad.abs().sum() > 0


def test_local_normalisers_are_not_shard_invariant() -> None:
    # the reason LossNorm exists: token-mean per shard, summed, is not the full token-mean
    logprobs, _, _, mask = _random_batch(0)
    full = sft_loss(logprobs, mask)[0]
    shards = sft_loss(logprobs[:3], mask[:3])[0] + sft_loss(logprobs[3:], mask[3:])[0]
    assert not torch.allclose(full, shards)


# ---- empty masks / garbage in padding ---------------------------------------------------------


@pytest.mark.parametrize("agg", sorted(LOCAL_EXPECTED))
def test_empty_masks_give_zero_not_nan(agg: str) -> None:
    logprobs, old, adv, _ = _random_batch(3)
    empty = torch.zeros(logprobs.shape, dtype=torch.bool)
    loss, metrics = policy_loss(logprobs, old, adv, empty, agg=agg, norm=_norm_for(agg))
    loss.backward()
    assert loss.item() == 0.0
    assert logprobs.grad is not None and logprobs.grad.abs().sum() == 0
    assert all(v.item() == 0.0 for v in metrics.values())
    sft, sft_metrics = sft_loss(logprobs, empty, agg=agg, norm=_norm_for(agg))
    assert sft.item() == 0.0 and sft_metrics["nll"].item() == 0.0


@pytest.mark.parametrize("agg", sorted(LOCAL_EXPECTED))
def test_garbage_off_mask_does_not_leak(agg: str) -> None:
    logprobs, old, adv, mask = _random_batch(4)
    clean, _ = policy_loss(logprobs, old, adv, mask, agg=agg, norm=_norm_for(agg))
    (clean_grad,) = torch.autograd.grad(clean, logprobs)
    # -inf / nan / huge values on padding and tool tokens, and one fully empty row
    junk_lp = torch.where(mask.bool(), logprobs, torch.tensor(float("-inf"), dtype=F64))
    junk_old = torch.where(mask.bool(), old, torch.tensor(float("nan"), dtype=F64))
    loss, metrics = policy_loss(junk_lp, junk_old, adv, mask, agg=agg, norm=_norm_for(agg))
    (grad,) = torch.autograd.grad(loss, logprobs)
    torch.testing.assert_close(loss, clean)
    torch.testing.assert_close(grad, clean_grad)
    assert all(torch.isfinite(v) for v in metrics.values())
    sft, _ = sft_loss(junk_lp, mask, agg=agg, norm=_norm_for(agg))
    assert torch.isfinite(sft)


def test_huge_ratio_does_not_overflow() -> None:
    # log-ratio 500 would overflow exp even in fp64; it is clamped at 20 (ratio e^20) first
    logprobs = torch.tensor([[0.0, 0.0]], requires_grad=True)
    old = torch.tensor([[-500.0, 0.0]])
    loss, m = policy_loss(logprobs, old, torch.tensor([-1.0]), torch.ones(1, 2))
    loss.backward()
    assert torch.isfinite(loss) and logprobs.grad is not None
    assert torch.isfinite(logprobs.grad).all()
    assert torch.isfinite(m["ratio_max"]) and torch.isfinite(m["approx_kl"])
