"""Answer equivalence: does a predicted answer string match a task's reference answer?

Used by the envs to give their verdict (``StepResult.success``) and by the outcome reward.

Answer matching (:func:`answers_match`), two paths:

* **Numeric**, when the reference is a plain number (an int or float, or a string holding one
  integer or decimal). The prediction must hold exactly ONE number after a forgiving parse:
  thousands separators ("1,234"), currency signs ("$12"), units or words around it ("12
  apples", "x = 12"), a trailing ".0", the unicode minus, ``\\boxed{}``. "3 + 4 = 7" or a list
  of guesses does not match (no credit for hedging). A number is a number, not an expression: a
  fraction counts only in lowest terms with a denominator > 1 ("3/4", ``\\frac{3}{4}``), so
  echoing the question's "22/2" is not the answer 11. Integer references compare exactly
  (parsed as :class:`fractions.Fraction`, so exact beyond float precision: "1000001" is not
  1000000); other references within relative error ``REL_TOL`` = 1e-9, which accepts the
  calculator's 10 significant digits.
* **Symbolic**, when the reference is a string that is not a plain number (a fraction such as
  "22/7", LaTeX such as ``\\frac{\\sqrt{2}}{2}``, an expression): normalised string equality,
  else equivalence by HF's `math-verify` (``math_verify.parse`` + ``math_verify.verify``:
  LaTeX/expression extraction into sympy and symbolic/numeric comparison, its own rounding to 6
  digits), imported lazily. Its signal-based timeout only works in the main thread, so it is
  disabled elsewhere. References without a digit or a LaTeX command (words: "Paris") match by
  the normalised string only (case, surrounding whitespace, quotes and a final period ignored).
"""

from __future__ import annotations

import math
import re
import threading
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

REL_TOL = 1e-9
"""Relative tolerance for non-integer numeric references (integers compare exactly)."""

_UNSIGNED = r"(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_NUMBER_RE = re.compile(rf"[-+]?{_UNSIGNED}(?:\s*/\s*[-+]?{_UNSIGNED})?")
_INT_RE = re.compile(r"[-+]?\d+")
_THOUSANDS_RE = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_MATHLIKE_RE = re.compile(r"[\d\\]")  # a digit or a LaTeX command
_LATEX_FRAC_RE = re.compile(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}")


def parse_exact(text: str) -> tuple[Fraction, bool] | None:
    """The single number in ``text`` as an exact ``(value, is_fraction)`` (module docstring),
    or None: no number, more than one, or a fraction not in lowest terms (an expression)."""
    text = text.replace("\u2212", "-")
    text = _LATEX_FRAC_RE.sub(r"\1/\2", text)
    text = _THOUSANDS_RE.sub("", text)
    found = _NUMBER_RE.findall(text)
    if len(found) != 1:
        return None
    token = found[0].replace(" ", "")
    if "/" in token:
        num, den = token.split("/")
        if not (_INT_RE.fullmatch(num) and _INT_RE.fullmatch(den)):
            return None  # "3.5/7": an expression
        p, q = int(num), int(den)
        if q < 0:
            p, q = -p, -q
        if q <= 1 or math.gcd(p, q) != 1:
            return None  # "22/2", "11/1", "6/8", "1/0": not a number in lowest terms
        return Fraction(p, q), True
    try:
        value = Decimal(token)
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    return Fraction(value), False


def parse_number(text: str) -> float | None:
    """The single number in ``text`` as a float (see :func:`parse_exact`), or None."""
    parsed = parse_exact(text)
    if parsed is None:
        return None
    value = float(parsed[0])
    return value if math.isfinite(value) else None


def _normalise(text: str) -> str:
    text = " ".join(text.lower().split()).rstrip(".")
    return text.strip("\"'`").rstrip(".").strip()


def _plain_reference(reference: Any) -> Fraction | None:
    """The reference as an exact number when it is a plain number (not a fraction or LaTeX)."""
    if isinstance(reference, bool):
        return None
    if isinstance(reference, int):
        return Fraction(reference)
    if isinstance(reference, float):
        return Fraction(reference) if math.isfinite(reference) else None
    parsed = parse_exact(str(reference))
    if parsed is None or parsed[1] or "\\" in str(reference):
        return None
    return parsed[0]


def _numbers_match(pred: Fraction, ref: Fraction) -> bool:
    if ref.denominator == 1:
        return pred == ref
    return math.isclose(float(pred), float(ref), rel_tol=REL_TOL, abs_tol=0.0)


def _math_verify_match(predicted: str, reference: str) -> bool:
    from math_verify import parse, verify

    timeout = 5 if threading.current_thread() is threading.main_thread() else None

    def parsed(text: str) -> list[Any]:
        # bare LaTeX / expressions parse only inside math delimiters ("1 + x^2" unwrapped
        # extracts just "1"); the bare text is the fallback
        out = [] if "$" in text else parse(f"${text}$", parsing_timeout=timeout)  # type: ignore[arg-type]
        return out or parse(text, parsing_timeout=timeout)  # type: ignore[arg-type]

    gold = parsed(reference)
    if not gold:
        return False
    target = parsed(predicted)
    return bool(target) and verify(gold, target, timeout_seconds=timeout)


def answers_match(predicted: str | None, reference: Any) -> bool:
    """Whether a predicted answer string matches a reference (number or string); see the module
    docstring for the numeric and the symbolic path."""
    if predicted is None or reference is None:
        return False
    if isinstance(reference, bool):
        reference = str(reference)
    ref = _plain_reference(reference)
    if ref is not None:
        pred = parse_exact(predicted)
        return pred is not None and _numbers_match(pred[0], ref)
    if _normalise(predicted) == _normalise(str(reference)):
        return True
    if not _MATHLIKE_RE.search(str(reference)):
        return False  # words ("Paris"): math-verify would read them as a product of symbols
    return _math_verify_match(predicted, str(reference))
