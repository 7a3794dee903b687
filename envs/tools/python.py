"""A Python tool: runs model-written code in a separate, isolated interpreter process.

First version (the ``envs/sandbox`` package will replace the internals; keep the interface
``async run_python(code) -> str``). Isolation here: a fresh ``python -I`` process (no user site,
no PYTHON* env vars) in its own session/process group, a scrubbed environment, an empty temporary
working directory, a wall-clock timeout that kills the whole process group, and an output cap
(the process is killed as soon as it prints more). It is NOT a security boundary: no seccomp,
no memory or filesystem limits.

The result is always a string (never an exception), so the model sees tracebacks, timeouts and
truncation as text it can react to.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile

TIMEOUT_S = 5.0
MAX_OUTPUT_BYTES = 4000
MAX_CODE_CHARS = 20_000


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # start_new_session: pgid == pid
        except ProcessLookupError:
            pass


async def _read_capped(stream: asyncio.StreamReader, limit: int) -> tuple[bytes, bool]:
    """Read until EOF or until more than ``limit`` bytes arrived; return (data, overflowed)."""
    buf = bytearray()
    while True:
        chunk = await stream.read(4096)
        if not chunk:
            return bytes(buf), False
        buf += chunk
        if len(buf) > limit:
            return bytes(buf[:limit]), True


async def execute(
    code: str, *, timeout_s: float = TIMEOUT_S, max_output_bytes: int = MAX_OUTPUT_BYTES
) -> str:
    """Run ``code`` with ``python -I -c``; return stdout+stderr (interleaved) as text."""
    if len(code) > MAX_CODE_CHARS:
        return f"Error: code too long (max {MAX_CODE_CHARS} characters)"
    if "\x00" in code:
        return "Error: code contains a NUL character"
    with tempfile.TemporaryDirectory(prefix="turnrl-py-") as cwd:
        env = {"PATH": os.defpath, "HOME": cwd, "TMPDIR": cwd, "LANG": "C.UTF-8"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-c", code,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )  # fmt: skip
        stdout = proc.stdout
        assert stdout is not None

        async def communicate() -> tuple[bytes, bool, int]:
            out, overflow = await _read_capped(stdout, max_output_bytes)
            if overflow:
                _kill_group(proc)
            return out, overflow, await proc.wait()

        try:
            out, overflow, rc = await asyncio.wait_for(communicate(), timeout_s)
        except asyncio.TimeoutError:
            _kill_group(proc)
            await proc.wait()
            return f"Error: timed out after {timeout_s:g} s"
        finally:  # also on cancellation (e.g. the env's own per-call timeout)
            _kill_group(proc)
    text = out.decode("utf-8", errors="replace")
    if overflow:
        return text + f"\n[output truncated at {max_output_bytes} bytes]"
    if rc != 0 and not text.strip():
        return f"Error: exit code {rc}"
    return text if text.strip() else "(no output)"


async def run_python(code: str) -> str:
    """Run Python code and return what it prints.

    Args:
        code: A Python program; print() the results you need.
    """
    return await execute(code)
