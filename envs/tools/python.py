"""A Python tool: model-written code runs in the sandbox (``envs/sandbox``), never in the
trainer's process.

The shared sandbox (``envs.sandbox.get_sandbox``; configure it with ``configure_sandbox``) gives
each call a forked child of a pre-started worker with rlimits, its own quota-limited work dir,
a scrubbed environment, a wall-clock timeout that kills the process group, an output cap, and
kernel isolation where the machine allows it. The result is always a string (never an
exception), so the model sees tracebacks, timeouts and truncation as text it can react to;
NUL bytes, ANSI escapes and other control characters are stripped from it
(``envs.sandbox.result.clean_text``).
"""

from __future__ import annotations

from envs.sandbox import get_sandbox

TIMEOUT_S = 5.0
MAX_CODE_CHARS = 20_000


async def execute(code: str, *, timeout_s: float = TIMEOUT_S, session: str | None = None) -> str:
    """Run ``code`` in the sandbox; return its output (or an ``Error:`` line) as text."""
    if len(code) > MAX_CODE_CHARS:
        return f"Error: code too long (max {MAX_CODE_CHARS} characters)"
    if "\x00" in code:
        return "Error: code contains a NUL character"
    result = await get_sandbox().run(code, timeout=timeout_s, session=session)
    return result.render()


async def run_python(code: str) -> str:
    """Run Python code and return what it prints.

    Args:
        code: A Python program; print() the results you need.
    """
    return await execute(code)
