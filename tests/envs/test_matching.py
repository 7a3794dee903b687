"""Call similarity and maximum-weight bipartite matching, against hand-computed values."""

from __future__ import annotations

import itertools
import random

import pytest

from envs.matching import (
    call_similarity,
    calls_equal,
    match_calls,
    max_weight_matching,
    values_equal,
)
from rl.types import ToolCall


def ref(name: str, **args: object) -> dict:
    return {"name": name, "arguments": args}


def test_values_equal() -> None:
    assert values_equal(" Golden  Dragon", "golden dragon")
    assert values_equal(4, 4.0) and not values_equal(4, 5)
    assert not values_equal(True, 1) and not values_equal(1, "1")
    assert values_equal([1, "A"], [1.0, "a"]) and not values_equal([1], [1, 2])
    assert values_equal({"a": "X"}, {"a": "x"}) and not values_equal({"a": 1}, {"b": 1})


def test_call_similarity_by_hand() -> None:
    r = ref("book_table", restaurant="Luigi", day="Friday", people=4)
    assert call_similarity(ToolCall("book_table", dict(r["arguments"])), r) == 1.0
    # wrong tool: 0 whatever the arguments
    assert call_similarity(ToolCall("order_pizza", dict(r["arguments"])), r) == 0.0
    assert call_similarity(ToolCall("", {}, error="invalid JSON"), r) == 0.0
    # 2 of 3 keys agree: PARTIAL_WEIGHT (0.5) * 2/3 = 1/3
    two = ToolCall("book_table", {"restaurant": "luigi", "day": "Friday", "people": 5})
    assert call_similarity(two, r) == pytest.approx(1 / 3)
    # a missing key and an unknown key both count in the union {restaurant, day, people, time}:
    # agree on restaurant and day -> 0.5 * 2/4
    odd = ToolCall("book_table", {"restaurant": "Luigi", "day": "friday", "time": "19:00"})
    assert call_similarity(odd, r) == pytest.approx(0.25)
    assert call_similarity(ToolCall("ping", {}), ref("ping")) == 1.0
    assert calls_equal(ToolCall("ping", {}), ref("ping")) and not calls_equal(two, r)
    with pytest.raises(ValueError, match="reference call"):
        call_similarity(two, {"arguments": {}})


def test_right_name_alone_and_failed_calls_earn_nothing() -> None:
    r = ref("book_table", restaurant="Luigi", day="Friday", people=4)
    # the right tool with no agreeing argument: 0 (was 0.5, half of the right call)
    garbage = ToolCall("book_table", {"restaurant": "Nowhere", "day": "Sunday", "people": 99})
    assert call_similarity(garbage, r) == 0.0
    # a near miss earns less than PARTIAL_WEIGHT (0.5): under half of what the right call earns
    near = ToolCall("book_table", {"restaurant": "Luigi", "day": "Friday", "people": 5})
    assert call_similarity(near, r) == pytest.approx(0.5 * 2 / 3)
    # a call that did not run earns 0, even with the exact name and arguments; a malformed call
    # that kept its name earned full credit for a tool without arguments (was 1.0)
    failed = ToolCall("book_table", dict(r["arguments"]), error="not run: the turn also gave "
                      "a final answer")
    assert call_similarity(failed, r) == 0.0 and not calls_equal(failed, r)
    unclosed = ToolCall("ping", {}, error="unclosed call: [TOOL_CALLS]ping has no [ARGS]")
    assert call_similarity(unclosed, ref("ping")) == 0.0


def test_matching_where_greedy_is_wrong() -> None:
    # Greedy takes the best pair (0,0)=1.0, then (1,1)=0.5: 1.5. The matching: 0.9 + 0.9 = 1.8.
    assert max_weight_matching([[1.0, 0.9], [0.9, 0.5]]) == [(0, 1), (1, 0)]
    # 3x3: greedy takes 0.9 (0,0), then 0.8 (1,2), then 0.0 (2,1) = 1.7; best 0.8+0.8+0.7 = 2.3
    w = [[0.9, 0.8, 0.0], [0.0, 0.3, 0.8], [0.7, 0.0, 0.0]]
    assert max_weight_matching(w) == [(0, 1), (1, 2), (2, 0)]  # 0.8 + 0.8 + 0.7 = 2.3


def test_matching_rectangular_and_zero_weights() -> None:
    assert max_weight_matching([]) == []
    assert max_weight_matching([[0.2, 0.7, 0.4]]) == [(0, 1)]
    assert max_weight_matching([[0.2], [0.7], [0.4]]) == [(1, 0)]
    # zero-weight pairs are not reported as matched
    assert max_weight_matching([[0.0, 0.0], [0.0, 0.6]]) == [(1, 1)]
    with pytest.raises(ValueError, match="rectangular"):
        max_weight_matching([[1.0], [1.0, 2.0]])
    with pytest.raises(ValueError, match="non-negative"):
        max_weight_matching([[-1.0]])


def test_matching_equals_brute_force_on_random_matrices() -> None:
    rng = random.Random(0)
    for _ in range(200):
        r, c = rng.randint(1, 5), rng.randint(1, 5)
        w = [[rng.choice([0.0, rng.random()]) for _ in range(c)] for _ in range(r)]
        got = sum(w[i][j] for i, j in max_weight_matching(w))
        if r <= c:
            best = max(sum(w[i][p[i]] for i in range(r)) for p in itertools.permutations(range(c), r))
        else:
            best = max(sum(w[p[j]][j] for j in range(c)) for p in itertools.permutations(range(r), c))
        assert got == pytest.approx(best)


def test_match_calls_where_greedy_is_wrong() -> None:
    # Similarities (PARTIAL_WEIGHT * agreeing keys / union of keys, as no call is exact):
    #   P0=(y=2,z=3) vs R0=(x=1,z=3): z agrees of {x,y,z} -> 1/6; vs R1=(y=2,z=2): y of {y,z} -> 1/4
    #   P1=(x=2,z=2,y=1) vs R0: none of {x,y,z} -> 0;             vs R1: z of {x,y,z} -> 1/6
    # Greedy pairs P0-R1 (1/4) then P1-R0 (0): 1/4. The matching: 1/6 + 1/6 = 1/3.
    preds = [ToolCall("book", {"y": 2, "z": 3}), ToolCall("book", {"x": 2, "z": 2, "y": 1})]
    refs = [ref("book", x=1, z=3), ref("book", y=2, z=2)]
    pairs = match_calls(preds, refs)
    assert [(i, j) for i, j, _ in pairs] == [(0, 0), (1, 1)]
    assert sum(w for _, _, w in pairs) == pytest.approx(1 / 3)
    assert match_calls([], refs) == [] and match_calls(preds, []) == []


def test_rectangular_matching_where_greedy_is_wrong() -> None:
    # 3 predicted calls, 2 references. Greedy takes (0,0)=0.9, then gives the one column left to
    # P2 (0.1): 1.0. The matching: (0,1)=0.8 + (1,0)=0.85 = 1.65; P2 stays unmatched.
    w = [[0.9, 0.8], [0.85, 0.0], [0.1, 0.0]]
    assert max_weight_matching(w) == [(0, 1), (1, 0)]
    # transposed (2 predictions, 3 references): the same pairs, reversed
    wt = [list(col) for col in zip(*w)]
    assert max_weight_matching(wt) == [(0, 1), (1, 0)]
