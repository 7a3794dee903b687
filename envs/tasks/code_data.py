"""Generated function-writing tasks with unit tests for ``env=code``.

A family is a parameterised spec: the function's signature, what it must do (with the drawn
parameters in the text), a reference solution (source, with the same parameters) and an input
generator. A task instance draws the parameters and ``1 + n_tests`` inputs from
``random.Random(f"code/{seed}/{k}")``; the expected outputs come from running the reference
source (our code, in this process) on them. The first input is the example shown in the prompt;
the others are the hidden unit tests. Inputs and outputs are JSON values (lists, ints, strings,
None), so tests travel to the sandbox as JSON and compare after a JSON round trip.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Params = dict[str, Any]


@dataclass(frozen=True)
class Family:
    name: str
    signature: str  # "def f(xs: list[int]) -> int"
    describe: Callable[[Params], str]
    source: Callable[[Params], str]  # the reference solution
    params: Callable[[random.Random], Params]
    inputs: Callable[[random.Random, Params], list[Any]]  # positional arguments of one call

    @property
    def fn(self) -> str:
        return self.signature.split("def ", 1)[1].split("(", 1)[0]


def _ints(rng: random.Random, lo: int = -20, hi: int = 50, n: tuple[int, int] = (0, 9)
          ) -> list[int]:
    return [rng.randint(lo, hi) for _ in range(rng.randint(*n))]


def _text(rng: random.Random, words: tuple[int, int] = (1, 8)) -> str:
    vocab = ["apple", "Banana", "cherry", "a", "to", "stream", "queue", "Level", "noon", "data",
             "ok", "parallel", "x", "moon", "Sky", "river", "bee", "tree"]
    return " ".join(rng.choice(vocab) for _ in range(rng.randint(*words)))


FAMILIES: list[Family] = [
    Family("sum_divisible", "def sum_divisible(xs: list[int]) -> int",
           lambda p: f"returns the sum of the elements of xs that are divisible by {p['k']} "
                     "(0 for none)",
           lambda p: f"def sum_divisible(xs):\n    return sum(x for x in xs if x % {p['k']} == 0)\n",
           lambda r: {"k": r.randint(2, 7)}, lambda r, p: [_ints(r)]),
    Family("count_letter", "def count_letter(s: str) -> int",
           lambda p: f"returns how many times the letter '{p['c']}' occurs in s, ignoring case",
           lambda p: f"def count_letter(s):\n    return s.lower().count('{p['c']}')\n",
           lambda r: {"c": r.choice("aeiornst")}, lambda r, p: [_text(r)]),
    Family("rotate_right", "def rotate_right(xs: list[int]) -> list[int]",
           lambda p: f"returns xs rotated right by {p['k']} positions (the last {p['k']} "
                     "elements move to the front, wrapping around for short lists; [] stays [])",
           lambda p: (f"def rotate_right(xs):\n    if not xs:\n        return []\n"
                      f"    k = {p['k']} % len(xs)\n    return xs[-k:] + xs[:-k] if k else "
                      "list(xs)\n"),
           lambda r: {"k": r.randint(1, 4)}, lambda r, p: [_ints(r, n=(0, 7))]),
    Family("shift_letters", "def shift_letters(s: str) -> str",
           lambda p: f"shifts every lowercase letter a-z in s forward by {p['k']} places in the "
                     "alphabet, wrapping from z to a, and leaves every other character as it is",
           lambda p: ("def shift_letters(s):\n    return ''.join(chr((ord(c) - 97 + "
                      f"{p['k']}) % 26 + 97) if 'a' <= c <= 'z' else c for c in s)\n"),
           lambda r: {"k": r.randint(1, 25)}, lambda r, p: [_text(r)]),
    Family("second_largest", "def second_largest(xs: list[int]) -> int | None",
           lambda p: "returns the second largest distinct value in xs, or None when xs has fewer "
                     "than two distinct values",
           lambda p: ("def second_largest(xs):\n    v = sorted(set(xs))\n"
                      "    return v[-2] if len(v) >= 2 else None\n"),
           lambda r: {}, lambda r, p: [_ints(r, 0, 9, (0, 6))]),
    Family("dedupe", "def dedupe(xs: list[int]) -> list[int]",
           lambda p: "returns xs without repeated values, keeping the first occurrence of each "
                     "in the original order",
           lambda p: ("def dedupe(xs):\n    seen = set()\n    out = []\n    for x in xs:\n"
                      "        if x not in seen:\n            seen.add(x)\n"
                      "            out.append(x)\n    return out\n"),
           lambda r: {}, lambda r, p: [_ints(r, 0, 6, (0, 10))]),
    Family("clamp_all", "def clamp_all(xs: list[int]) -> list[int]",
           lambda p: f"returns xs with every value below {p['lo']} replaced by {p['lo']} and "
                     f"every value above {p['hi']} replaced by {p['hi']}",
           lambda p: f"def clamp_all(xs):\n    return [min(max(x, {p['lo']}), {p['hi']}) "
                     "for x in xs]\n",
           lambda r: {"lo": (lo := r.randint(-10, 10)), "hi": lo + r.randint(3, 30)},
           lambda r, p: [_ints(r)]),
    Family("digit_power_sum", "def digit_power_sum(n: int) -> int",
           lambda p: f"returns the sum of the decimal digits of the non-negative integer n, each "
                     f"raised to the power {p['e']}",
           lambda p: f"def digit_power_sum(n):\n    return sum(int(d) ** {p['e']} for d in str(n))\n",
           lambda r: {"e": r.randint(2, 4)}, lambda r, p: [r.randint(0, 99999)]),
    Family("run_length", "def run_length(s: str) -> str",
           lambda p: "returns the run-length encoding of s: each run of equal characters becomes "
                     "the character followed by the run's length (\"aaab\" -> \"a3b1\"; \"\" -> "
                     "\"\")",
           lambda p: ("def run_length(s):\n    out = []\n    i = 0\n    while i < len(s):\n"
                      "        j = i\n        while j < len(s) and s[j] == s[i]:\n"
                      "            j += 1\n        out.append(f'{s[i]}{j - i}')\n        i = j\n"
                      "    return ''.join(out)\n"),
           lambda r: {}, lambda r, p: ["".join(r.choice("aab c") for _ in range(r.randint(0, 9)))]),
    Family("fizz_words", "def fizz_words(n: int) -> list[str]",
           lambda p: f"returns a list for the numbers 1 to n: \"Fizz\" for multiples of {p['a']}, "
                     f"\"Buzz\" for multiples of {p['b']}, \"FizzBuzz\" for multiples of both, "
                     "else the number as a string",
           lambda p: ("def fizz_words(n):\n    out = []\n    for i in range(1, n + 1):\n"
                      f"        w = ('Fizz' if i % {p['a']} == 0 else '') + ('Buzz' if i % "
                      f"{p['b']} == 0 else '')\n        out.append(w or str(i))\n    return out\n"),
           lambda r: {"a": (a := r.randint(2, 4)), "b": r.choice([b for b in range(3, 8) if b != a])},
           lambda r, p: [r.randint(0, 16)]),
    Family("long_words", "def long_words(s: str) -> int",
           lambda p: f"returns how many words of s (split on spaces) have more than {p['k']} "
                     "characters",
           lambda p: f"def long_words(s):\n    return sum(len(w) > {p['k']} for w in s.split())\n",
           lambda r: {"k": r.randint(2, 5)}, lambda r, p: [_text(r)]),
    Family("running_max", "def running_max(xs: list[int]) -> list[int]",
           lambda p: "returns the running maximum of xs: element i is the largest of xs[0..i]",
           lambda p: ("def running_max(xs):\n    out = []\n    for x in xs:\n"
                      "        out.append(x if not out else max(out[-1], x))\n    return out\n"),
           lambda r: {}, lambda r, p: [_ints(r)]),
]
BY_NAME = {f.name: f for f in FAMILIES}


def reference(family: Family, params: Params) -> Callable[..., Any]:
    """The reference solution as a function (our own source, run in this process)."""
    ns: dict[str, Any] = {}
    exec(family.source(params), ns)  # noqa: S102 - trusted: generated from our templates
    return ns[family.fn]  # type: ignore[no-any-return]


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value))


def make_instance(family: Family, rng: random.Random, n_tests: int) -> dict[str, Any]:
    """Parameters, the prompt text, the example and ``n_tests`` hidden tests (distinct inputs)."""
    params = family.params(rng)
    ref = reference(family, params)
    cases: list[list[Any]] = []
    seen: set[str] = set()
    for _ in range(50 * (n_tests + 1)):
        args = family.inputs(rng, params)
        key = json.dumps(args)
        if key in seen:
            continue
        seen.add(key)
        cases.append([args, _json(ref(*args))])
        if len(cases) == n_tests + 1:
            break
    return {"family": family.name, "params": params, "fn": family.fn,
            "signature": family.signature, "description": family.describe(params),
            "solution": family.source(params), "example": cases[0], "tests": cases[1:]}
