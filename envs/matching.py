"""Matching predicted tool calls to reference calls (MatchTIR-style), as pure functions.

A pair's similarity is ``0`` when the tool names differ, else
``NAME_WEIGHT + (1 - NAME_WEIGHT) * arg_overlap`` where ``arg_overlap`` is the fraction of the
argument keys (union of both calls' keys) whose values agree (1.0 when neither call has
arguments). Values agree after light normalisation: strings compare case- and
whitespace-insensitively, numbers by value (``4 == 4.0``; a bool is not a number), lists and
objects element by element.

Predicted and reference calls are paired by a maximum-weight bipartite matching (each call used
at most once): SciPy's ``scipy.optimize.linear_sum_assignment`` (the rectangular assignment
problem, ``maximize=True``), imported lazily so ``envs`` imports without SciPy loaded. Greedy
pairing (best pair first) can be wrong: with weights ``[[1.0, 0.9], [0.9, 0.5]]`` greedy
takes 1.0 + 0.5, the matching 0.9 + 0.9.

Departure from MatchTIR (Qu et al.): they score parameter names and values as separate terms and
also study a soft (optimal-transport) assignment; here one overlap fraction and the hard
assignment only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from rl.types import ToolCall

NAME_WEIGHT = 0.5  # share of a pair's similarity earned by calling the right tool

Call = ToolCall | dict[str, Any]  # a parsed call, or a reference {"name", "arguments"}


def _name_args(call: Call) -> tuple[str, dict[str, Any]]:
    if isinstance(call, ToolCall):
        return call.name, call.arguments
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        raise ValueError(f'a reference call must be {{"name": str, "arguments": dict}}, got {call!r}')
    args = call.get("arguments", {})
    if not isinstance(args, dict):
        raise ValueError(f"reference call arguments must be a dict, got {args!r}")
    return call["name"], args


def values_equal(a: Any, b: Any) -> bool:
    """Argument values agree (see the module docstring)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, str) and isinstance(b, str):
        return " ".join(a.casefold().split()) == " ".join(b.casefold().split())
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(values_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(values_equal(a[k], b[k]) for k in a)
    return a == b


def call_similarity(pred: Call, ref: Call) -> float:
    """Similarity in ``{0} | [NAME_WEIGHT, 1]``; 1.0 iff same name and all arguments agree."""
    p_name, p_args = _name_args(pred)
    r_name, r_args = _name_args(ref)
    if not p_name or p_name.strip() != r_name.strip():
        return 0.0
    keys = set(p_args) | set(r_args)
    if not keys:
        return 1.0
    agree = sum(k in p_args and k in r_args and values_equal(p_args[k], r_args[k]) for k in keys)
    return NAME_WEIGHT + (1.0 - NAME_WEIGHT) * agree / len(keys)


def calls_equal(pred: Call, ref: Call) -> bool:
    return call_similarity(pred, ref) == 1.0


def max_weight_matching(weights: Sequence[Sequence[float]]) -> list[tuple[int, int]]:
    """Maximum-weight bipartite matching of rows to columns (weights ``(n_rows, n_cols)``,
    non-negative). Returns the matched ``(row, col)`` pairs with positive weight, sorted by row.

    ``scipy.optimize.linear_sum_assignment(weights, maximize=True)`` assigns min(n_rows, n_cols)
    pairs with the largest total weight; zero-weight pairs among them are dropped.
    """
    n_rows = len(weights)
    n_cols = len(weights[0]) if n_rows else 0
    if any(len(r) != n_cols for r in weights):
        raise ValueError("weights must be a rectangular matrix")
    if n_rows == 0 or n_cols == 0:
        return []
    if any(not (math.isfinite(float(v)) and float(v) >= 0) for row in weights for v in row):
        raise ValueError("weights must be finite and non-negative")
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(np.asarray(weights, dtype=np.float64), maximize=True)
    return sorted((int(r), int(c)) for r, c in zip(rows, cols) if weights[r][c] > 0)


def match_calls(preds: Sequence[Call], refs: Sequence[Call]) -> list[tuple[int, int, float]]:
    """Best pairing of predicted to reference calls: ``(pred_index, ref_index, similarity)``
    for every matched pair with positive similarity."""
    weights = [[call_similarity(p, r) for r in refs] for p in preds]
    if not preds or not refs:
        return []
    return [(i, j, weights[i][j]) for i, j in max_weight_matching(weights)]
