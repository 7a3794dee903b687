"""Tools from typed functions, argument validation, ToolEnv failure handling, the calculator and
the python tool."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from envs.base import Tool, ToolEnv, ToolError, validate_arguments
from envs.tools import available_tools, get_tool
from envs.tools.calculator import calculator, evaluate
from envs.tools.python import execute, run_python


def scale(values: list[float], factor: float = 2.0, label: str | None = None) -> str:
    """Scale numbers.

    Args:
        values: The numbers.
        factor: Multiplier.
        label: Optional name.
    """
    return f"{label}: {[v * factor for v in values]}"


async def slow(seconds: float) -> str:
    """Sleep.

    Args:
        seconds: How long.
    """
    await asyncio.sleep(seconds)
    return "woke"


def broken(x: int) -> str:
    """Always fails.

    Args:
        x: Anything.
    """
    raise ValueError(f"bad {x}")


def test_schema_from_typed_function() -> None:
    t = Tool.from_function(scale)
    assert t.name == "scale" and t.description == "Scale numbers."
    assert t.parameters == {
        "type": "object",
        "properties": {
            "values": {"type": "array", "items": {"type": "number"}, "description": "The numbers."},
            "factor": {"type": "number", "description": "Multiplier."},
            "label": {"type": "string", "nullable": True, "description": "Optional name."},
        },
        "required": ["values"],
    }
    assert t.schema == {
        "type": "function",
        "function": {"name": "scale", "description": "Scale numbers.", "parameters": t.parameters},
    }
    assert Tool.from_function(scale, name="scaler").name == "scaler"


def test_validation() -> None:
    p = Tool.from_function(scale).parameters
    assert validate_arguments({"values": [1, 2.5], "factor": 3}, p) == {
        "values": [1, 2.5],
        "factor": 3,
    }
    assert validate_arguments({"values": [], "label": None}, p) == {"values": [], "label": None}
    cases = [
        ({}, "missing required argument"),
        ({"values": [1], "zz": 1}, "unknown argument ['zz']"),
        ({"values": "1,2"}, "argument 'values' must be array, got string"),
        ({"values": [1, "2"]}, "argument 'values'[1] must be number, got string"),
        ({"values": [True]}, "must be number, got boolean"),
        ({"values": [1], "factor": "2"}, "argument 'factor' must be number"),
        ([1], "arguments must be an object"),
    ]
    for args, msg in cases:
        with pytest.raises(ToolError, match=msg.replace("[", r"\[").replace("]", r"\]")):
            validate_arguments(args, p)
    ints = {"type": "object", "properties": {"n": {"type": "integer", "enum": [1, 2]}}}
    assert validate_arguments({"n": 2.0}, ints) == {"n": 2}  # integral float is an integer
    with pytest.raises(ToolError, match="must be integer"):
        validate_arguments({"n": 1.5}, ints)
    with pytest.raises(ToolError, match="one of"):
        validate_arguments({"n": 3}, ints)


def test_call_sync_and_async() -> None:
    assert asyncio.run(Tool.from_function(scale).call({"values": [1, 2]})) == "None: [2.0, 4.0]"
    assert asyncio.run(Tool.from_function(slow).call({"seconds": 0})) == "woke"
    with pytest.raises(ToolError):
        asyncio.run(Tool.from_function(slow).call({"seconds": "soon"}))


def test_tool_env_failures_are_observations() -> None:
    env = ToolEnv([slow, broken], "hermes", timeout_s=0.2, max_calls_per_turn=2)
    call = '<tool_call>{{"name": "{}", "arguments": {}}}</tool_call>'
    action = call.format("slow", '{"seconds": 5}') + call.format("broken", '{"x": 1}')
    t0 = time.monotonic()
    res = asyncio.run(env.step(action))
    assert time.monotonic() - t0 < 2
    assert [m["content"] for m in res.messages] == [
        "Error: slow timed out after 0.2 s",
        "Error: broken failed: ValueError: bad 1",
    ]
    assert res.info["tool_errors"] == 2 and not res.terminated
    # Over the per-turn limit: the extra calls are not run and one note says so.
    res = asyncio.run(env.step(call.format("slow", '{"seconds": 0}') * 3))
    assert [m["content"] for m in res.messages] == [
        "woke",
        "woke",
        "Error: at most 2 tool calls per turn; 1 ignored",
    ]
    assert res.info["tool_errors"] == 1


def test_tool_env_caps_output_and_refuses_duplicates() -> None:
    def shout(text: str) -> str:
        """Repeat.

        Args:
            text: Text.
        """
        return text * 1000

    env = ToolEnv([shout], max_output_chars=50)
    res = asyncio.run(
        env.step('<tool_call>{"name": "shout", "arguments": {"text": "ab"}}</tool_call>')
    )
    assert "[truncated 1950 chars]" in res.messages[0]["content"]
    with pytest.raises(ValueError, match="duplicate"):
        ToolEnv([shout, shout])


def test_tool_registry() -> None:
    assert available_tools() == ["calculator", "python"]
    assert get_tool("python").name == "python"
    with pytest.raises(KeyError, match="available"):
        get_tool("shell")


@pytest.mark.parametrize(
    "expr, expected",
    [
        ("2+3*4", "14"),
        ("(2+3)*4", "20"),
        (" 7 / 2 ", "3.5"),
        ("6/2", "3"),
        ("7//2", "3"),
        ("-7//2", "-4"),
        ("7%3", "1"),
        ("-3**2", "-9"),
        ("2**10", "1024"),
        ("2^10", "1024"),
        ("-(4-6)", "2"),
        ("+5", "5"),
        ("1.5*2", "3"),
        ("0.1+0.2", "0.3"),
        ("10/3", "3.333333333"),
        ("2**-1", "0.5"),
        ("( 56 + -33 ) - 84", "-61"),
        ("12345678901234567890*10", "123456789012345678900"),
    ],
)
def test_calculator_hand_cases(expr: str, expected: str) -> None:
    assert calculator(expr) == expected


@pytest.mark.parametrize(
    "expr, error",
    [
        ("__import__('os')", "unsupported syntax: Call"),
        ("__import__('os').system('echo hi')", "unsupported syntax"),
        ("x+1", "unsupported syntax: Name"),
        ("(1).__class__", "unsupported syntax: Attribute"),
        ("[1][0]", "unsupported syntax"),
        ("'a'*3", "not a number"),
        ("True+1", "not a number"),
        ("1,234", "commas are not allowed"),
        ("9**9**9", "exponent too large"),
        ("10**1000", "result too large"),
        ("2.0**5000", "exponent too large"),
        ("1e308*10", "result too large"),
        ("1e400", "result too large"),
        ("(-8)**0.5", "not a real number"),
        ("1/0", "division by zero"),
        ("5%0", "division by zero"),
        ("0**-1", "division by zero"),
        ("1+", "invalid expression"),
        ("", "invalid expression"),
        ("1+" * 200 + "1", "too long"),
        ("-" * 80 + "1", "nested too deeply"),
    ],
)
def test_calculator_refuses(expr: str, error: str) -> None:
    with pytest.raises(ToolError, match=error.replace("(", r"\(").replace("*", r"\*")):
        evaluate(expr)


def test_python_tool_runs_code_isolated() -> None:
    os.environ["TURNRL_TEST_SECRET"] = "s3cret"
    try:
        out = asyncio.run(
            run_python("import os\nprint(6*7)\nprint(sorted(os.environ))\nprint(os.listdir('.'))")
        )
    finally:
        del os.environ["TURNRL_TEST_SECRET"]
    assert out.splitlines()[0] == "42"
    assert "TURNRL_TEST_SECRET" not in out and "s3cret" not in out
    assert out.splitlines()[2] == "[]"  # an empty temporary working directory
    assert "ZeroDivisionError" in asyncio.run(run_python("1/0"))
    assert asyncio.run(run_python("x = 1")) == "(no output)"
    assert asyncio.run(run_python("import sys; sys.exit(3)")) == "Error: exited with status 3"
    assert asyncio.run(run_python("print(1)\x00")) == "Error: code contains a NUL character"


def test_python_tool_timeout_and_output_cap_are_strings() -> None:
    t0 = time.monotonic()
    out = asyncio.run(
        execute("import time\nprint('start', flush=True)\ntime.sleep(30)", timeout_s=0.5)
    )
    assert out.startswith("start\nError: timed out after 0.5 s") and time.monotonic() - t0 < 5
    out = asyncio.run(execute("while True: print('x' * 100)"))
    assert "[output truncated]" in out and "output limit exceeded" in out
    assert len(out) < 20_000  # the sandbox's visible-output cap (16 KiB) plus the error line


def test_python_tool_through_env() -> None:
    env = ToolEnv([get_tool("python")])
    res = asyncio.run(
        env.step(
            '<tool_call>{"name": "python", "arguments": {"code": "print(2**100)"}}</tool_call>'
        )
    )
    assert res.messages[0]["content"] == f"<tool_response>{2**100}</tool_response>"
