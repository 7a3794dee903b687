"""A safe arithmetic calculator: the expression is parsed with :mod:`ast` and only numbers,
``+ - * / // % **``, unary ``+``/``-`` and parentheses are evaluated. Nothing is ever passed to
``eval``/``exec``; names, calls, attributes, subscripts etc. are refused. Exponents and result
sizes are bounded so ``9**9**9`` cannot hang the process.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable

from envs.base import ToolError

Number = int | float

MAX_EXPRESSION_CHARS = 300
MAX_INT_BITS = 512  # ~154 decimal digits
MAX_EXPONENT = 1000
MAX_DEPTH = 50

_BINOPS: dict[type[ast.operator], Callable[[Number, Number], Number]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Number], Number]] = {
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}
# Symbols people (and small models) write for arithmetic that Python spells differently.
_ALIASES = {"^": "**", "×": "*", "÷": "/", "−": "-"}


def _check_size(x: Number) -> Number:
    if isinstance(x, int) and x.bit_length() > MAX_INT_BITS:
        raise ToolError("result too large")
    if isinstance(x, float) and not math.isfinite(x):
        raise ToolError("result too large" if math.isinf(x) else "result is not a number")
    return x


def _pow(base: Number, exp: Number) -> Number:
    if abs(exp) > MAX_EXPONENT:
        raise ToolError(f"exponent too large (max {MAX_EXPONENT})")
    if isinstance(base, int) and isinstance(exp, int) and exp > 0 and abs(base) > 1:
        # Bound the size before computing: bits(base**exp) ~ exp * log2|base|.
        if exp * math.log2(abs(base)) > MAX_INT_BITS:
            raise ToolError("result too large")
    if base == 0 and exp < 0:
        raise ToolError("division by zero")
    result = base**exp
    if isinstance(result, complex):
        raise ToolError("result is not a real number")
    return result


def _eval(node: ast.AST, depth: int = 0) -> Number:
    if depth > MAX_DEPTH:
        raise ToolError("expression nested too deeply")
    if isinstance(node, ast.Expression):
        return _eval(node.body, depth + 1)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise ToolError(f"not a number: {node.value!r}")
        return _check_size(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand, depth + 1))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _eval(node.left, depth + 1), _eval(node.right, depth + 1)
        if isinstance(node.op, ast.Pow):
            return _check_size(_pow(left, right))
        if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and right == 0:
            raise ToolError("division by zero")
        try:
            return _check_size(_BINOPS[type(node.op)](left, right))
        except OverflowError as e:
            raise ToolError("result too large") from e
    if isinstance(node, ast.Tuple):
        raise ToolError("commas are not allowed (write 1234, not 1,234)")
    raise ToolError(f"unsupported syntax: {type(node).__name__}; use numbers, + - * / // % ** ( )")


def evaluate(expression: str) -> Number:
    """Evaluate an arithmetic expression; raise :class:`ToolError` if it is not one."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"expression too long (max {MAX_EXPRESSION_CHARS} characters)")
    for k, v in _ALIASES.items():
        expression = expression.replace(k, v)
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as e:
        raise ToolError(f"invalid expression: {e.msg}") from e
    try:
        return _eval(tree)
    except OverflowError as e:
        raise ToolError("result too large") from e


def format_number(x: Number) -> str:
    """Integers (and integral floats) without ``.0``; other floats with 10 significant digits."""
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    if isinstance(x, float):
        return f"{x:.10g}"
    return str(x)


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression.

    Args:
        expression: Arithmetic such as "(3+4)*2".
    """
    return format_number(evaluate(expression))
