"""Matching predicted tool calls to reference calls (MatchTIR-style), as pure functions.

A pair's credit (:func:`call_similarity`):

- ``0`` when the predicted call failed (``ToolCall.error`` set: it could not be parsed, had
  invalid arguments, named an unknown tool, crashed, timed out or was not run). A call that did
  not happen cannot match a call that should have;
- ``0`` when the tool names differ. **The right name alone earns nothing**;
- ``1`` when the names agree and every argument agrees (also when neither call has arguments);
- ``PARTIAL_WEIGHT * arg_overlap`` otherwise, where ``arg_overlap`` is the fraction of the
  argument keys (union of both calls' keys) whose values agree. As the call is not exact,
  ``arg_overlap < 1``: a near miss earns strictly less than ``PARTIAL_WEIGHT`` (0.5), half of
  what the right call earns, and a right-name call whose arguments all disagree earns 0.

Values agree after light normalisation: strings compare case- and whitespace-insensitively,
numbers by value (``4 == 4.0``; a bool is not a number), lists and objects element by element.

Predicted and reference calls are paired by a maximum-weight bipartite matching (each call used
at most once): SciPy's ``scipy.optimize.linear_sum_assignment`` (the rectangular assignment
problem, ``maximize=True``), imported lazily so ``envs`` imports without SciPy loaded. Greedy
pairing (best pair first) can be wrong: with weights ``[[1.0, 0.9], [0.9, 0.5]]`` greedy
takes 1.0 + 0.5, the matching 0.9 + 0.9.

Why this rule (issue 23): earlier a pair earned ``0.5 + 0.5 * arg_overlap`` for the right name,
so a right-name call with garbage arguments earned half of a right call, and a malformed call
that still carried a name earned credit too (for a tool without arguments, full credit). The
rewards built on it (``call_match_outcome`` in rewards/outcome.py, ``rewards.turn.call_match``, the
compose env's per-turn ``call_score``) divide the matched credit by ``max(#attempted calls,
#reference calls)`` with every written call counted; with the one-to-one matching this makes
"spray right-name calls" lose to "make the one right call" (see ``rewards/outcome.py``).

Departure from MatchTIR (Qu et al.): they score parameter names and values as separate terms and
also study a soft (optimal-transport) assignment; here one overlap fraction, no credit for the
name alone, and the hard assignment only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from rl.types import ToolCall

PARTIAL_WEIGHT = 0.5  # a call that is not exactly right earns less than this (the right one: 1)

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
    """Credit in ``{0} | [0, PARTIAL_WEIGHT) | {1}`` (module docstring): 1.0 iff ``pred`` ran
    (no ``.error``), has ``ref``'s name and all arguments agree; 0.0 for a failed call, another
    name, or the right name with no agreeing argument."""
    if isinstance(pred, ToolCall) and pred.error is not None:
        return 0.0
    if isinstance(ref, ToolCall) and ref.error is not None:
        return 0.0
    p_name, p_args = _name_args(pred)
    r_name, r_args = _name_args(ref)
    if not p_name or p_name.strip() != r_name.strip():
        return 0.0
    keys = set(p_args) | set(r_args)
    agree = sum(k in p_args and k in r_args and values_equal(p_args[k], r_args[k]) for k in keys)
    if agree == len(keys):  # also no arguments at all
        return 1.0
    return PARTIAL_WEIGHT * agree / len(keys)


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
