"""Outcome reward: forgiving but exact numeric matching, math-verify for symbolic references,
computed by hand."""

from __future__ import annotations

import pytest

from rewards.outcome import (
    answers_match,
    final_answer,
    outcome_reward,
    parse_number,
    tool_use_reward,
)
from rl.types import Task, ToolCall, Trajectory, Turn


def traj(
    answer: object, final: str | None, texts: tuple[str, ...] = (), **info: object
) -> Trajectory:
    turns = [Turn(start=0, end=0, text=t, finish_reason="stop") for t in texts]
    info = {"final_answer": final, **info} if final is not None or not texts else dict(info)
    return Trajectory(
        task=Task(id="t", prompt="?", answer=answer),
        token_ids=[],
        loss_mask=[],
        logprobs=[],
        prompt_len=0,
        turns=turns,
        info=info,
    )


@pytest.mark.parametrize(
    "text, value",
    [
        ("1234", 1234.0),
        (" 12 ", 12.0),
        ("1,234", 1234.0),
        ("1,234,567.5", 1234567.5),
        ("1234.0", 1234.0),
        ("$12", 12.0),
        ("12 apples", 12.0),
        ("x = -3", -3.0),
        ("\u22123", -3.0),
        ("3/4", 0.75),
        ("3 / 4", 0.75),
        ("\\frac{3}{4}", 0.75),
        ("\\boxed{7}", 7.0),
        ("50%", 50.0),
        (".5", 0.5),
        ("5.", 5.0),
        ("1e3", 1000.0),
        ("", None),
        ("twelve", None),
        ("3 + 4 = 7", None),  # more than one number: no credit for hedging
        ("12 or 13", None),
        ("1/0", None),
        ("3,5", None),  # not a thousands separator: two numbers
        ("-3/4", -0.75),
        ("22/2", None),  # an unevaluated division (the question echoed), not a number
        ("\\frac{22}{2}", None),
        ("6/8", None),  # a fraction counts as a number only in lowest terms
        ("11/1", None),
        ("3.5/7", None),
    ],
)
def test_parse_number(text: str, value: float | None) -> None:
    assert parse_number(text) == value


@pytest.mark.parametrize(
    "pred, ref, ok",
    [
        ("1,234", 1234, True),
        ("1234.0", 1234, True),
        ("$12", 12, True),
        (" 12 ", 12.0, True),
        ("12 apples", 12, True),
        ("3/4", 0.75, True),
        ("0.75", "3/4", True),
        ("0.3333333333", 1 / 3, True),  # the calculator's 10 significant digits: rel. error 1e-10
        ("2.333333333", 7 / 3, True),
        ("0.3333333", 1 / 3, False),  # relative error 1e-7: decimals need rel. error <= 1e-9
        ("0.33333", 1 / 3, False),
        ("1000001", 1000000, False),  # integers compare exactly: off by one is wrong
        ("1000002", 1000000, False),
        ("1234567", 1234568, False),
        ("12345678901234567", 12345678901234568, False),  # beyond float precision, still exact
        ("12345678901234568", 12345678901234568, True),
        ("11.0", 11, True),
        ("11.0000001", 11, False),
        ("1e3", 1000, True),
        ("22/2", 11, False),  # echoing the question's expression is not an answer
        ("\\frac{22}{2}", 11, False),
        ("22 / 2", 11.0, False),
        ("6/8", 0.75, False),
        ("0", 0, True),
        ("0.0000000001", 0, False),
        ("13", 12, False),
        ("12", "12", True),
        (None, 12, False),
        ("12", None, False),
        ("Paris", "paris", True),
        (" 'Paris'. ", "Paris", True),
        ("Lyon", "Paris", False),
        ("True", True, True),
        # symbolic references (fractions, LaTeX) go to math-verify
        ("0.75", "3/4", True),
        ("3/4", "\\frac{3}{4}", True),
        ("\\boxed{\\frac{3}{4}}", "3/4", True),
        ("0.7", "3/4", False),
        ("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2", True),
        ("\\sqrt{3}/2", "\\sqrt{2}/2", False),
        ("$x^2 + 1$", "1 + x^2", True),
        ("$x^2 - 1$", "1 + x^2", False),
        ("22/2", "11", False),  # a plain-number reference stays on the exact numeric path
        ("3/4 or 1/2", "3/4", False),  # hedging
        ("The answer is 3/4.", "3/4", True),
        ("x^2 + 1", "$1 + x^2$", True),
        ("sriaP", "Paris", False),  # words never reach math-verify (it reads them as symbols)
    ],
)
def test_answers_match(pred: str | None, ref: object, ok: bool) -> None:
    assert answers_match(pred, ref) is ok


def test_outcome_reward() -> None:
    assert outcome_reward(traj(42, "42")) == 1.0
    assert outcome_reward(traj(42, "41")) == 0.0
    assert outcome_reward(traj(42, None)) == 0.0
    # No final_answer recorded by the loop: the last turn's last <answer> is used.
    assert (
        outcome_reward(traj(42, None, ("<tool_call>x</tool_call>", "<answer>42</answer>"))) == 1.0
    )
    assert final_answer(traj(42, None, ("no answer",))) is None


def test_tool_use_reward() -> None:
    t = traj(1, "1", ("a", "b"))
    assert tool_use_reward(t) == 0.0
    t.turns[0].tool_calls = [ToolCall("calculator", {}, error="bad")]
    assert tool_use_reward(t) == 0.0
    t.turns[1].tool_calls = [ToolCall("calculator", {"expression": "1"})]
    assert tool_use_reward(t) == 1.0


def test_symbolic_match_works_off_the_main_thread() -> None:
    # math-verify's timeout uses signal.alarm, which raises outside the main thread
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(answers_match, "0.75", "\\frac{3}{4}").result() is True
        assert pool.submit(answers_match, "0.7", "\\frac{3}{4}").result() is False
