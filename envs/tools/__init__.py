"""Tools the envs can offer, by name: ``get_tool("calculator")``.

A tool is a plain typed Python function (sync or async) with a Google-style docstring; see
:class:`envs.base.Tool`.
"""

from __future__ import annotations

from envs.base import Tool
from envs.tools.calculator import calculator
from envs.tools.python import run_python

_TOOLS: dict[str, Tool] = {
    "calculator": Tool.from_function(calculator),
    "python": Tool.from_function(run_python, name="python"),
}


def get_tool(name: str) -> Tool:
    if name not in _TOOLS:
        raise KeyError(f"unknown tool '{name}'; available: {sorted(_TOOLS)}")
    return _TOOLS[name]


def available_tools() -> list[str]:
    return sorted(_TOOLS)
