"""Masked reductions shared by the algorithms (one place for the empty-mask conventions).

Masks are ``(B, L)`` tensors of 0/1 (bool, int or float). Positions where the mask is 0 are
*selected away* with ``torch.where`` rather than multiplied by 0, so a NaN or inf sitting in a
padding position can never leak into a result (``0 * inf`` is NaN).
"""

from __future__ import annotations

import torch
from torch import Tensor


def masked_fill_zero(values: Tensor, mask: Tensor) -> Tensor:
    """``values`` with every position where ``mask == 0`` set to 0. Shapes broadcast."""
    return torch.where(mask != 0, values, values.new_zeros(()))


def masked_sum(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of ``values * mask`` over ``dim`` (all dims when None). ``(B, L) -> () or reduced``."""
    weighted = masked_fill_zero(values, mask) * mask.to(values.dtype)
    return weighted.sum() if dim is None else weighted.sum(dim)


def safe_divide(num: Tensor, den: Tensor | float) -> Tensor:
    """``num / den`` where a zero denominator gives 0 (its numerator is a sum over nothing)."""
    den_t = torch.as_tensor(den, dtype=num.dtype, device=num.device)
    return torch.where(den_t != 0, num / torch.where(den_t != 0, den_t, 1.0), 0.0)


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``values`` over the positions where ``mask`` is set; 0 where there are none."""
    return safe_divide(
        masked_sum(values, mask, dim), masked_sum(torch.ones_like(values), mask, dim)
    )


def masked_max(values: Tensor, mask: Tensor) -> Tensor:
    """Largest ``values`` over the masked positions, as a 0-dim tensor; 0 if there are none."""
    if values.numel() == 0:
        return values.new_zeros(())
    # no host sync: fill with -inf, reduce, and map "nothing selected" back to 0
    top = torch.where(mask != 0, values, values.new_full((), float("-inf"))).amax()
    return torch.where(torch.isneginf(top), values.new_zeros(()), top)
