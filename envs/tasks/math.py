"""ARTIST-style math with tools: the model turns a problem into calculator calls, reads the
results and answers with ``<answer>...</answer>``; the episode ends when it stops calling tools.

Tasks come from ``make_tasks(source, split, n, seed, **difficulty)``. Sources (a registry):

- ``"word"``: our own templated word problems (shopping, sharing, rates, ages, savings, boxes,
  tanks) with 1-3 operations. The numbers are in the text; the model must find the right
  expression (``Task.data["expression"]``), which is the point of the exercise.
- ``"arith"``: our own multi-step arithmetic (``"What is (12+7)*3?"``), 1-3 operations.
- ``"mixed"``: word problems and arithmetic, about 2:1.
- ``"basic_arithmetic"``, ``"chain_sum"``, ``"gsm_symbolic"``: reasoning-gym generators; the
  difficulty keywords are passed to their dataset config. gsm_symbolic has no expression, so its
  demonstration is answer-only.

Splits: every candidate problem is hashed (by its expression, or question when there is none)
into ``"train"`` (80 %) or ``"test"`` (20 %), so the held-out split is disjoint from train by
construction, whatever the seeds and sizes. Within a split, tasks are unique by prompt; task
``k`` depends only on ``(source, seed, difficulty)`` and is a prefix-stable stream (asking for more
tasks appends).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from envs.answers import answers_match
from envs.base import StepResult, ToolEnv, ToolError, register_env
from envs.tasks.draw import SPLITS, Candidate, draw_tasks
from envs.tools import get_tool
from envs.tools.calculator import calculator, evaluate, format_number
from rl.registry import Registry
from rl.types import Message, Task

MAX_CANDIDATES_PER_TASK = 200
RG_SIZE = 100_000  # reasoning-gym dataset size: the most candidates one source can draw


# ---------------------------------------------------------------------------------------------
# Difficulty and split


@dataclass(frozen=True)
class Difficulty:
    """Knobs of our own generators."""

    min_ops: int = 1  # operations per problem (1-3)
    max_ops: int = 3
    min_value: int = 2  # operand range for amounts (counts and multipliers stay <= 12)
    max_value: int = 50

    def __post_init__(self) -> None:
        if not 1 <= self.min_ops <= self.max_ops <= 3:
            raise ValueError(
                f"need 1 <= min_ops <= max_ops <= 3, got {self.min_ops}, {self.max_ops}"
            )
        if not 2 <= self.min_value < self.max_value:
            raise ValueError(
                f"need 2 <= min_value < max_value, got {self.min_value}, {self.max_value}"
            )


# ---------------------------------------------------------------------------------------------
# Word problem templates: (rng, ops, difficulty) -> (prompt, expression)

_NAMES = ["Ana", "Ben", "Mia", "Leo", "Sara", "Tom", "Lily", "Omar", "Zoe", "Raj", "Emma", "Sam"]
_GOODS = [("pens", "notebook"), ("apples", "bag"), ("stickers", "book"), ("cups", "tray")]
_THINGS = ["cookies", "marbles", "cards", "candies", "stamps", "shells"]
_RATES = [
    ("A car", "drives", "km", "hour"),
    ("A machine", "fills", "bottles", "minute"),
    ("A printer", "prints", "pages", "minute"),
    ("A pump", "moves", "liters", "minute"),
]
_BOXES = [("boxes", "eggs"), ("crates", "apples"), ("packs", "pencils"), ("trays", "muffins")]
_TANKS = [
    ("A tank", "liter", "liters"),
    ("A barrel", "liter", "liters"),
    ("A pool", "bucket of water", "buckets of water"),
]
_PURCHASES = ["game", "jacket", "bike lock", "ticket"]

Template = Callable[[random.Random, int, Difficulty], tuple[str, str]]


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _amount(rng: random.Random, d: Difficulty) -> int:
    return rng.randint(d.min_value, d.max_value)


def _small(rng: random.Random, d: Difficulty) -> int:
    return rng.randint(2, max(3, min(12, d.max_value)))


def _shopping(rng: random.Random, ops: int, d: Difficulty) -> tuple[str, str]:
    name, (items, other) = rng.choice(_NAMES), rng.choice(_GOODS)
    a, p, q = _small(rng, d), _amount(rng, d), _amount(rng, d)
    if ops == 1:
        return (
            f"{name} buys {a} {items} for ${p} each. How many dollars does {name} spend?",
            f"{a}*{p}",
        )
    if ops == 2:
        return (
            f"{name} buys {a} {items} for ${p} each and a {other} for ${q}. "
            f"How many dollars does {name} spend in total?",
            f"{a}*{p}+{q}",
        )
    bill = (a * p + q) // 10 * 10 + 10 * rng.randint(1, 3)
    return (
        f"{name} buys {a} {items} for ${p} each and a {other} for ${q}, paying with ${bill}. "
        f"How many dollars of change does {name} get?",
        f"{bill}-({a}*{p}+{q})",
    )


def _sharing(rng: random.Random, ops: int, d: Difficulty) -> tuple[str, str]:
    name, things = rng.choice(_NAMES), rng.choice(_THINGS)
    k, each = _small(rng, d), _amount(rng, d)
    total = k * each
    if ops == 1:
        return (
            f"{name} shares {total} {things} equally among {k} friends. "
            f"How many {things} does each friend get?",
            f"{total}/{k}",
        )
    if ops == 2:
        got = rng.randint(1, total - 1)
        return (
            f"{name} has {total - got} {things}, gets {got} more, then shares them all equally "
            f"among {k} friends. How many {things} does each friend get?",
            f"({total - got}+{got})/{k}",
        )
    bags, per_bag = _small(rng, d), _amount(rng, d)
    have = bags * per_bag
    k = rng.randint(2, min(9, have - 1))
    eaten = have % k + k * rng.randint(0, max(0, (have - 1) // k - 1))
    if eaten == 0:
        eaten = k
    return (
        f"{name} has {bags} bags with {per_bag} {things} each, keeps {eaten}, and shares the rest "
        f"equally among {k} friends. How many {things} does each friend get?",
        f"({bags}*{per_bag}-{eaten})/{k}",
    )


def _rates(rng: random.Random, ops: int, d: Difficulty) -> tuple[str, str]:
    who, verb, unit, per = rng.choice(_RATES)
    r, t = _amount(rng, d), _small(rng, d)
    if ops == 1:
        return f"{who} {verb} {r} {unit} per {per}. How many {unit} in {t} {per}s?", f"{r}*{t}"
    if ops == 2:
        extra = _amount(rng, d)
        return (
            f"{who} {verb} {r} {unit} per {per} for {t} {per}s, then {extra} {unit} more. "
            f"How many {unit} in total?",
            f"{r}*{t}+{extra}",
        )
    r2, t2 = _amount(rng, d), _small(rng, d)
    return (
        f"{who} {verb} {r} {unit} per {per} for {t} {per}s, then {r2} {unit} per {per} "
        f"for {t2} {per}s. How many {unit} in total?",
        f"{r}*{t}+{r2}*{t2}",
    )


def _ages(rng: random.Random, ops: int, d: Difficulty) -> tuple[str, str]:
    a_name, b_name, c_name = rng.sample(_NAMES, 3)
    a = _amount(rng, d)
    if ops == 1:
        diff = rng.randint(1, a - 1)
        if rng.random() < 0.5:
            return (
                f"{a_name} is {a} years old. {b_name} is {_count(diff, 'year', 'years')} older. "
                f"How old is {b_name}?",
                f"{a}+{diff}",
            )
        return (
            f"{a_name} is {a} years old. {b_name} is {_count(diff, 'year', 'years')} younger. "
            f"How old is {b_name}?",
            f"{a}-{diff}",
        )
    m, years = rng.randint(2, 4), _small(rng, d)
    if ops == 2:
        return (
            f"{a_name} is {a} years old. {b_name} is {m} times as old as {a_name}. "
            f"How old will {b_name} be in {years} years?",
            f"{a}*{m}+{years}",
        )
    diff = rng.randint(1, a * m - 1)
    return (
        f"{a_name} is {a} years old and {b_name} is {m} times as old. {c_name} is "
        f"{_count(diff, 'year', 'years')} younger than {b_name}. "
        f"How old will {c_name} be in {years} years?",
        f"{a}*{m}-{diff}+{years}",
    )


def _savings(rng: random.Random, ops: int, d: Difficulty) -> tuple[str, str]:
    name, s, w = rng.choice(_NAMES), _amount(rng, d), _small(rng, d)
    if ops == 1:
        return f"{name} saves ${s} every week. How many dollars after {w} weeks?", f"{s}*{w}"
    h = _amount(rng, d)
    if ops == 2:
        return (
            f"{name} has ${h} and saves ${s} every week. How many dollars does {name} have "
            f"after {w} weeks?",
            f"{h}+{s}*{w}",
        )
    spent = rng.randint(1, h + s * w - 1)
    thing = rng.choice(_PURCHASES)
    return (
        f"{name} has ${h}, saves ${s} every week for {w} weeks, then spends ${spent} on a "
        f"{thing}. How many dollars are left?",
        f"{h}+{s}*{w}-{spent}",
    )


def _boxes(rng: random.Random, ops: int, d: Difficulty) -> tuple[str, str]:
    box, item = rng.choice(_BOXES)
    g, k = _small(rng, d), _amount(rng, d)
    if ops == 1:
        return f"There are {g} {box} with {k} {item} in each. How many {item} in all?", f"{g}*{k}"
    if ops == 2:
        bad = rng.randint(2, g * k - 1)
        return (
            f"There are {g} {box} with {k} {item} in each. {bad} {item} are bad. "
            f"How many good {item} are there?",
            f"{g}*{k}-{bad}",
        )
    bags, per_bag = _small(rng, d), _amount(rng, d)
    total = bags * per_bag
    # g * k - bad == total, with bad >= 1: pick g, then k so that g * k exceeds total.
    k = total // g + rng.randint(1, 5)
    bad = g * k - total
    if bad == 1:  # "1 eggs are bad": move to the next k instead
        k, bad = k + 1, bad + g
    return (
        f"There are {g} {box} with {k} {item} in each. {bad} {item} are bad and the rest are "
        f"packed equally into {bags} bags. How many {item} go in each bag?",
        f"({g}*{k}-{bad})/{bags}",
    )


def _tanks(rng: random.Random, ops: int, d: Difficulty) -> tuple[str, str]:
    what, one, many = rng.choice(_TANKS)
    a = _amount(rng, d) + d.max_value  # a full tank holds more than any amount drawn
    b, c = rng.randint(2, a - 1), _amount(rng, d)
    if ops == 1:
        return (
            f"{what} holds {a} {many}. {b} {many} leak out. How many {many} are left?",
            f"{a}-{b}",
        )
    if ops == 2:
        return (
            f"{what} holds {a} {many}. {b} {many} leak out, then {c} {many} are added. "
            f"How many {many} are in it now?",
            f"{a}-{b}+{c}",
        )
    h = _small(rng, d)  # h < a, so r * h <= a - 1
    r = rng.randint(1, (a - 1) // h)
    return (
        f"{what} holds {a} {many}. It loses {_count(r, one, many)} per hour for {h} hours, then "
        f"{c} {many} are added. How many {many} are in it now?",
        f"{a}-{r}*{h}+{c}",
    )


WORD_TEMPLATES: dict[str, Template] = {
    "shopping": _shopping,
    "sharing": _sharing,
    "rates": _rates,
    "ages": _ages,
    "savings": _savings,
    "boxes": _boxes,
    "tanks": _tanks,
}


# ---------------------------------------------------------------------------------------------
# Multi-step arithmetic: an expression built one operation at a time, parenthesised as needed.

_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}


def _arith(rng: random.Random, ops: int, d: Difficulty) -> tuple[str, str]:
    value = _amount(rng, d)
    expr, prec = str(value), 3  # prec 3: a bare number
    for _ in range(ops):
        op = rng.choice("+-*/")
        divisors = [k for k in range(2, 13) if value % k == 0] if op == "/" else []
        if op == "/" and not divisors:
            op = rng.choice("+-*")
        n = rng.choice(divisors) if op == "/" else _small(rng, d) if op == "*" else _amount(rng, d)
        if op in "+*" and rng.random() < 0.5:  # operand first: n+(expr) == n+expr, etc.
            expr = f"{n}{op}" + (f"({expr})" if prec < _PREC[op] else expr)
        elif op == "-" and rng.random() < 0.3:  # n-(expr): value flips
            expr = f"{n}-" + (f"({expr})" if prec <= _PREC[op] else expr)
            value, prec = n - value, _PREC[op]
            continue
        else:
            expr = (f"({expr})" if prec < _PREC[op] else expr) + f"{op}{n}"
        if op == "+":
            value += n
        elif op == "-":
            value -= n
        elif op == "*":
            value *= n
        else:
            value //= n  # exact: n divides value
        prec = _PREC[op]
    phrase = rng.choice(["What is {}?", "Calculate {}.", "Compute {}."])
    return phrase.format(expr), expr


# ---------------------------------------------------------------------------------------------
# Sources

Source = Callable[[str, int, int, dict[str, Any]], list[Task]]
_SOURCES: Registry[Source] = Registry("math source")


def _source(name: str) -> Callable[[Source], Source]:
    return _SOURCES.register(name)


def _collect(
    make: Callable[[int], tuple[str, str | None, Any, dict[str, Any]] | None],
    prefix: str,
    split: str,
    n: int,
) -> list[Task]:
    """Draw candidates 0, 1, 2, ... (``make(k)`` -> prompt, expression, answer, data) and keep
    the first ``n`` unique ones that hash into ``split`` (envs.tasks.draw)."""

    def candidate(k: int) -> Candidate | None:
        cand = make(k)
        if cand is None:
            return None
        prompt, expr, answer, data = cand
        return prompt, expr if expr is not None else prompt, lambda: Task(
            id=f"{prefix}-{k}", prompt=prompt, answer=answer, data={"expression": expr, **data})

    tasks = draw_tasks(candidate, split, n, tries=n * MAX_CANDIDATES_PER_TASK + 100)
    if len(tasks) < n:
        raise ValueError(f"{prefix}: only {len(tasks)} unique {split} tasks; widen the difficulty")
    return tasks


def _own_source(name: str, templates: dict[str, Template], word_share: float | None = None) -> None:
    @_source(name)
    def make_own(split: str, n: int, seed: int, difficulty: dict[str, Any]) -> list[Task]:
        d = Difficulty(**difficulty)
        names = sorted(templates)

        def make(k: int) -> tuple[str, str | None, Any, dict[str, Any]]:
            rng = random.Random(f"math/{name}/{seed}/{k}")
            ops = rng.randint(d.min_ops, d.max_ops)
            if word_share is None:
                template = rng.choice(names)
            else:
                words = [t for t in names if t != "arith"]
                template = rng.choice(words) if rng.random() < word_share else "arith"
            prompt, expr = templates[template](rng, ops, d)
            value = evaluate(expr)
            answer = int(value) if float(value).is_integer() else value
            return prompt, expr, answer, {"source": name, "template": template, "ops": ops}

        return _collect(make, f"{name}-{split}-{seed}", split, n)


_own_source("word", WORD_TEMPLATES)
_own_source("arith", {"arith": _arith})
_own_source("mixed", {**WORD_TEMPLATES, "arith": _arith}, word_share=2 / 3)


def _parse_number(text: str) -> int | float:
    try:  # integers exactly (a float round trip loses digits past 2**53)
        return int(text.strip())
    except ValueError:
        value = float(text)
        return int(value) if value.is_integer() else value


def _reasoning_gym_source(name: str, has_expression: bool) -> None:
    @_source(name)
    def make_rg(split: str, n: int, seed: int, difficulty: dict[str, Any]) -> list[Task]:
        import reasoning_gym

        # rg items are generated lazily from (seed + index), but some datasets (gsm_symbolic)
        # precompute a per-index list whose content depends on `size`: a fixed size keeps task k
        # the same whatever n is.
        # rg seeds item k with Random(seed + k): seeds 3 and 4 would give the same stream shifted
        # by one. Spacing our seeds RG_SIZE + 1 apart keeps the streams of different seeds apart.
        rg_seed = seed * (RG_SIZE + 1)
        ds = reasoning_gym.create_dataset(name, size=RG_SIZE, seed=rg_seed, **difficulty)

        def make(k: int) -> tuple[str, str | None, Any, dict[str, Any]] | None:
            if k >= RG_SIZE:
                return None
            item = ds[k]
            meta = item["metadata"]
            answer = meta.get("answer_value", None)
            try:
                answer = _parse_number(str(item["answer"] if answer is None else answer))
            except ValueError:
                return None  # keep only numeric tasks
            expr = meta.get("expression") if has_expression else None
            if expr is not None:
                expr = str(expr).strip()
                # rg rounds some non-integer results (e.g. "542 + -438 / -(...)" -> 532): such a
                # reference answer is wrong for a real calculator, so skip the task.
                try:
                    if abs(float(evaluate(expr)) - float(answer)) > 1e-6 * max(1.0, abs(answer)):
                        return None
                except ToolError:
                    return None
            return item["question"], expr, answer, {"source": name}

        return _collect(make, f"{name}-{split}-{seed}", split, n)


_reasoning_gym_source("basic_arithmetic", has_expression=True)
_reasoning_gym_source("chain_sum", has_expression=True)
_reasoning_gym_source("gsm_symbolic", has_expression=False)


def math_sources() -> list[str]:
    return sorted(_SOURCES.names())


def make_tasks(
    source: str = "mixed", split: str = "train", n: int = 100, seed: int = 0, **difficulty: Any
) -> list[Task]:
    """``n`` math tasks from ``source`` (see the module docstring). Each has a numeric ``answer``
    and ``data["expression"]`` (the arithmetic that solves it, or None when unknown)."""
    make = _SOURCES.get(source)  # KeyError listing the valid sources
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got '{split}'")
    return make(split, n, seed, difficulty)


# ---------------------------------------------------------------------------------------------
# The env

_USE_TOOLS: dict[tuple[str, ...], str] = {
    ("calculator",): "Use the calculator",
    ("python",): "Use python",
}


@register_env("math")
class MathEnv:
    """Math problems solved with tools (default: the calculator) in the hermes-prompt format.

    ``tools`` names tools from :mod:`envs.tools`; ``tool_format`` names a format from
    :mod:`envs.formats`. Episodes end on ``<answer>`` or a turn without tool calls
    (see :class:`~envs.base.ToolEnv`); the step reward is 0 and scoring is in ``rewards/``.
    """

    def __init__(
        self,
        tools: Sequence[str] = ("calculator",),
        tool_format: str = "hermes-prompt",
        *,
        tool_timeout_s: float = 10.0,
        max_calls_per_turn: int = 4,
    ) -> None:
        self.tool_names = tuple(tools)
        self.tool_env = ToolEnv(
            [get_tool(t) for t in self.tool_names],
            tool_format,
            timeout_s=tool_timeout_s,
            max_calls_per_turn=max_calls_per_turn,
        )
        self.tools = self.tool_env.tools
        self.format = self.tool_env.format
        use = _USE_TOOLS.get(self.tool_names, "Use the tools")
        self.system_prompt = self.tool_env.system_prompt(
            f"{use}, then give the final answer as <answer>number</answer>."
        )
        self.task: Task | None = None

    async def reset(self, task: Task, *, seed: int | None = None) -> tuple[list[Message], dict]:
        self.task = task
        messages: list[Message] = [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": task.prompt},
        ]
        return messages, {"task_id": task.id}

    async def step(self, action_text: str) -> StepResult:
        res = await self.tool_env.step(action_text)
        if res.terminated and self.task is not None:  # the verdict: the answer is the reference
            res.success = answers_match(res.final_answer, self.task.answer)
            res.info["success"] = res.success
        return res

    async def close(self) -> None:
        self.task = None

    def example_tasks(self, n: int, *, seed: int = 0) -> list[Task]:
        return make_tasks("mixed", "train", n, seed)

    def demonstration(self, task: Task) -> list[str]:
        """Reference actions: one tool call with the task's expression, then the answer built from
        that call's real result; answer-only when the task has no expression."""
        fmt, expr = self.format, task.data.get("expression")
        if expr is not None and "calculator" in self.tool_names:
            result = calculator(expr)  # the tool itself, replayed synchronously
            return [fmt.format_call("calculator", {"expression": expr}), fmt.format_answer(result)]
        if expr is not None and "python" in self.tool_names:
            # What `print(expr)` shows: evaluate() follows Python's int/float semantics exactly.
            result = str(evaluate(expr))
            return [
                fmt.format_call("python", {"code": f"print({expr})"}),
                fmt.format_answer(result),
            ]
        return [fmt.format_answer(format_number(task.answer))]
